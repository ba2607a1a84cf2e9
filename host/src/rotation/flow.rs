//! One rotation, step by step (docs/design.md): read the records, `rotate`, store the
//! new credential durably, then `finalize`, or `rollback` if storing failed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;

use serde::Serialize;
use thiserror::Error;

use crate::fields::PAM_USER_TYPE;
use crate::fields::{BadField, labels, stamp};
use crate::holdings::Holdings;
use crate::record::Record;
use crate::record::{StoreField, ValueKind};
use crate::rotation::exposure::{allow_list, lent_origins_allowed, secrets};
use crate::rotation::grace::Ledger;
use crate::rotation::identity::{GatewayIdentity, IdentityError, Lending};
use crate::rotation::retire;
use crate::rotation::usage::{KeyInUse, Policy};
use crate::rotation::vetting::{self, VetError};
use crate::sandbox::engine::{Instance, Limits, Plugin, SandboxError};
use crate::sandbox::plugin::{Context, PluginError};
use crate::secret::Secret;
use crate::text::printable;
use crate::vault::lease::Lease;
use crate::vault::writer::VaultWriter;
use crate::vault::{Vault, VaultError, VaultOptions, VaultSource};

/// What `rotate-host run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub guest: PathBuf,
    pub vault: VaultSource,
    pub user_uid: String,
    pub config_uid: String,
    pub provider_uid: Option<String>,
    pub dry_run: bool,
    pub limits: Limits,
    pub vault_options: VaultOptions,
    pub cache_dir: Option<PathBuf>,
    /// `--gateway-credentials[-for]`: whom the host's own AWS identity is lent to.
    pub lending: Lending,
}

/// What a run did. Holds key ids, never secrets.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `rotated`, `purged` (only deactivated keys deleted), or `planned` for a dry run.
    pub status: &'static str,
    pub user_uid: String,
    pub created: Option<String>,
    pub retired: Vec<String>,
    /// Old keys turned off and kept for the grace period (`Old Key Action` deactivate).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deactivated: Vec<String>,
    /// Keys deactivated by earlier rotations, deleted now that their grace period ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purged: Vec<String>,
    /// Old keys left active for their consumers (`retire-when-unused`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// Old keys kept earlier that IAM shows still in use (or cannot say).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<KeyInUse>,
    pub notes: Vec<String>,
    /// What `finalize` is to retire (for a dry run's plan and the audit log).
    #[serde(skip)]
    pub planned_retire: Vec<String>,
}

impl RunReport {
    /// An empty report of `job`, starting with `notes`.
    fn new(job: &Job, notes: Vec<String>) -> Self {
        Self {
            status: if job.dry_run { "planned" } else { "rotated" },
            user_uid: printable(&job.user_uid),
            created: None,
            retired: vec![],
            deactivated: vec![],
            purged: vec![],
            kept: vec![],
            in_use: vec![],
            notes,
            planned_retire: vec![],
        }
    }
}

/// Why a run failed. Every message says what happened to the vault and to the
/// service, and what to do next.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("{0}; nothing was changed")]
    BadField(BadField),
    #[error("{0}")]
    Saving(Arc<VaultError>),
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("{stage} failed; the vault was not changed: {error}")]
    Plugin {
        stage: &'static str,
        error: PluginError,
    },
    #[error(
        "{source}. The vault was not changed. A new key created before the plugin stopped \
         is not in the vault: the next run deletes it to make room, or, if it cannot tell \
         which key to keep, names the keys so you can delete the stray one"
    )]
    RotateStopped { source: SandboxError },
    #[error("the new key {created} could not be stored: {source}. {rollback}")]
    StoreFailed {
        created: String,
        source: Arc<VaultError>,
        rollback: String,
    },
    #[error(
        "the new key {created} may or may not be stored: {source}. Nothing was deleted: run \
         again, and the next run keeps the key the vault names and removes the other"
    )]
    StoreUncertain {
        created: String,
        source: Arc<VaultError>,
    },
    #[error("the new key {created} is stored in the vault, but the rotation did not finish: {why}")]
    NotFinalized { created: String, why: String },
    #[error("{0}")]
    Vetting(#[from] VetError),
    #[error(
        "{detail}, so the rotation is refused: a new key needs its place, and deleting it would \
         break whatever still signs with it. Nothing was changed. Move that consumer to the \
         current key; the old key is retired once IAM shows it unused for 'Unused Hours'"
    )]
    OldKeyInUse { detail: String },
    #[error(
        "the gateway is stopping: this record's rotation was not started; the next pass rotates it"
    )]
    Stopping,
    #[error(
        "record '{uid}' holds the credential {id}, which record(s) {others} hold or track too: one \
         credential belongs to one record, or rotating one would break the other. Nothing was \
         changed; keep the credential in one record only"
    )]
    SharedCredential {
        uid: String,
        id: String,
        others: String,
    },
    #[error(
        "config record '{config}' names the origin {origin}, and this rotation is lent the host's \
         own AWS identity: it is never sent where only a record points. Nothing was changed; the \
         operator can allow the origin with --allow-host, or the config can use its own key"
    )]
    LentToRecordOrigin { config: String, origin: String },
}

impl RunError {
    /// The process exit code: 1 failed (nothing changed or rolled back), 2 bad
    /// input, 3 new key stored but the old one not yet removed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Vault(e) if e.is_bad_input() => 2,
            Self::Sandbox(e) if e.is_bad_input() => 2,
            Self::BadField(_) | Self::SharedCredential { .. } | Self::LentToRecordOrigin { .. } => {
                2
            }
            Self::Vetting(e) => e.exit_code(),
            Self::Plugin {
                error: PluginError::InvalidConfig(_),
                ..
            } => 2,
            Self::NotFinalized { .. } | Self::StoreUncertain { .. } => 3,
            _ => 1,
        }
    }
}

/// What every rotation of one run or pass shares.
pub struct Rotator<'a> {
    pub plugin: &'a Plugin,
    pub writer: &'a VaultWriter,
    pub identity: &'a GatewayIdentity,
    /// Who holds which credential in the vault (I6).
    pub holdings: Arc<Holdings>,
    /// Set by SIGTERM or SIGINT: no plugin call that could change something
    /// starts; a key already created is still stored and finalized.
    pub stopping: &'a AtomicBool,
}

/// One record's rotation, as `run`, `due` and `gateway` ask for it.
#[derive(Debug, Clone)]
pub struct Job {
    pub user_uid: String,
    pub config_uid: String,
    pub provider_uid: Option<String>,
    pub dry_run: bool,
    /// Mark the record `Rotation Pending` until `finalize` succeeds, so a fleet
    /// pass killed in between finishes the record at the next pass.
    pub mark_pending: bool,
    /// Rotate; when false, only delete deactivated keys whose grace period ended.
    pub rotate: bool,
}

/// The records of one job, read under the vault lock.
#[derive(Debug, Clone)]
pub struct Records {
    pub user: Record,
    pub config: Record,
    pub provider: Option<Record>,
}

impl Records {
    /// Reads and type-checks the job's records.
    pub fn read(vault: &dyn Vault, job: &Job) -> Result<Self, VaultError> {
        Ok(Self {
            user: vault.record(&job.user_uid, "-u", Some(PAM_USER_TYPE))?,
            config: vault.record(&job.config_uid, "-c", None)?,
            provider: job
                .provider_uid
                .as_deref()
                .map(|uid| vault.record(uid, "--configuration-uid", None))
                .transpose()?,
        })
    }
}

/// Runs one rotation (`rotate-host run`).
pub fn run(opts: &RunOptions) -> Result<RunReport, RunError> {
    crate::sandbox::engine::block_on(async {
        // Compile before taking the lock: others wait on it for no reason otherwise.
        let plugin = Plugin::load(&opts.guest, opts.limits.clone(), opts.cache_dir.as_deref())?;
        let identity = GatewayIdentity::new(opts.lending.clone());
        let job = Job {
            user_uid: opts.user_uid.clone(),
            config_uid: opts.config_uid.clone(),
            provider_uid: opts.provider_uid.clone(),
            dry_run: opts.dry_run,
            mark_pending: false,
            rotate: true,
        };
        // The file vault's lock is held until the writer is dropped, at the end of the run.
        let mut wanted = vec![
            (job.user_uid.as_str(), "-u"),
            (job.config_uid.as_str(), "-c"),
        ];
        if let Some(p) = &job.provider_uid {
            wanted.push((p.as_str(), "--configuration-uid"));
        }
        let vault = opts.vault.open(Some(&wanted), &opts.vault_options)?;
        let records = Records::read(vault.as_ref(), &job)?;
        vetting::check_config(&records.user, &records.config, false)?;
        let holdings = vet_run(&plugin, &identity, vault.as_ref(), &job, &records).await?;
        let writer = VaultWriter::new(vault);
        let core = Rotator {
            plugin: &plugin,
            writer: &writer,
            identity: &identity,
            holdings,
            stopping: &AtomicBool::new(false),
        };
        rotate_record(&core, &job, records).await
    })
}

/// What `run` checks against the whole vault before anything is sent: who
/// holds which credential (I6), the config's scope, and that no fleet record
/// rotates the same credential as this one.
async fn vet_run(
    plugin: &Plugin,
    identity: &GatewayIdentity,
    vault: &dyn Vault,
    job: &Job,
    records: &Records,
) -> Result<Arc<Holdings>, RunError> {
    let info = plugin.info().await?;
    let mut subjects = vetting::Subjects::new(plugin, identity);
    let mine = subjects.of(records).await?;
    vetting::check_scope(&job.user_uid, &mine, &records.config, false)?;
    // One record at a time: a vault is never held in memory twice.
    let holdings = Holdings::default();
    for uid in vault.uids() {
        let Ok(record) = vault.record(&uid, "-u", None) else {
            continue;
        };
        holdings.add_record(&record, &info.credential_id_fields);
        if uid == job.user_uid {
            continue;
        }
        let Some((_, theirs)) = fleet_records(vault, record) else {
            continue;
        };
        if let Ok(s) = subjects.of(&theirs).await
            && let Some(e) =
                vetting::duplicates([(job.user_uid.as_str(), &mine), (uid.as_str(), &s)])
                    .remove(&job.user_uid)
        {
            return Err(e.into());
        }
    }
    Ok(Arc::new(holdings))
}

/// The records a fleet pass would rotate `user` with, if it is a fleet member.
pub fn fleet_records(vault: &dyn Vault, user: Record) -> Option<(String, Records)> {
    if !user.record_type.eq_ignore_ascii_case(PAM_USER_TYPE) {
        return None;
    }
    let config = vault
        .record(user.value(labels::CONFIG)?, labels::CONFIG, None)
        .ok()?;
    let provider = match user.value(labels::PROVIDER) {
        Some(p) => Some(vault.record(p, labels::PROVIDER, None).ok()?),
        None => None,
    };
    Some((
        user.uid.clone(),
        Records {
            user,
            config,
            provider,
        },
    ))
}

/// The rotation core: a fresh instance of `plugin` rotates one record, the new
/// credential is stored through `writer` before anything is retired, then
/// `finalize`, or `rollback` if storing failed. Keys deactivated by earlier
/// rotations whose grace period ended are deleted first (`purge`).
pub async fn rotate_record(
    core: &Rotator<'_>,
    job: &Job,
    mut records: Records,
) -> Result<RunReport, RunError> {
    if job.dry_run {
        // Reads only: another writer's lease does not stop a plan.
        return rotate_once(core, job, records).await;
    }
    if !needs_lease(job, &records) {
        // At most the retirement of an unused kept key, which touches no key
        // a record holds: no lease is written, so a gateway watching kept keys
        // does not update every record each pass. Another writer's live lease
        // still keeps it out.
        core.writer.check_lease(&job.user_uid).await?;
        return rotate_once(core, job, records).await;
    }
    // Every plugin call may take the whole call timeout; a few are made.
    let length = core.plugin.limits().call_timeout * 4 + std::time::Duration::from_secs(60);
    let lease = Lease::mine(Utc::now() + chrono::Duration::from_std(length).unwrap_or_default());
    let leased = match core.writer.lease(&job.user_uid, &lease).await? {
        Some(fresh) => {
            records.user = fresh;
            true
        }
        None => false,
    };
    let result = rotate_once(core, job, records).await;
    if leased && let Err(e) = core.writer.release(&job.user_uid, &lease).await {
        tracing::warn!(
            user = ?printable(&job.user_uid),
            "could not release the rotation lease ({}); it expires at {}",
            printable(&e.to_string()),
            stamp(lease.until)
        );
    }
    result
}

/// Whether the job may create or delete a key: a rotation, or a purge of
/// deactivated keys whose grace period ended.
fn needs_lease(job: &Job, records: &Records) -> bool {
    if job.rotate {
        return true;
    }
    let now = Utc::now();
    Ledger::read(&records.user, &records.config).map_or(true, |ledger| {
        let expired = ledger.expired_ids(now);
        ledger
            .entries
            .iter()
            .any(|e| !e.kept && expired.contains(&e.id))
    })
}

/// `rotate_record` once the record is the run's own (leased where the vault
/// needs it): the one place that knows the order of a rotation's steps.
async fn rotate_once(
    core: &Rotator<'_>,
    job: &Job,
    records: Records,
) -> Result<RunReport, RunError> {
    let mut run = InFlight::start(core, job, records).await?;
    run.old_keys().await?;
    if !job.rotate {
        run.report.status = if job.dry_run { "planned" } else { "purged" };
        return Ok(run.report);
    }
    // The two-key rule: a kept key still in use holds the slot a new key needs.
    if let Some(k) = run.report.in_use.first() {
        let detail = k.describe();
        if job.dry_run {
            run.report
                .notes
                .push(format!("a rotation now would refuse: {detail}"));
            return Ok(run.report);
        }
        return Err(RunError::OldKeyInUse { detail });
    }
    // Between plugin calls: after a purge, no rotation starts once stopping.
    // A key `rotate` created is always stored and finalized.
    run.not_stopping()?;
    let rotation = run.rotate().await?;
    if job.dry_run {
        return Ok(run.report);
    }
    let created = run.store(&rotation).await?;
    run.finalize(&rotation, created).await
}

/// One rotation under way: its instance, the context it hands the plugin,
/// the record's ledger and the report so far.
struct InFlight<'a> {
    core: &'a Rotator<'a>,
    job: &'a Job,
    instance: Instance,
    ctx: Context,
    ledger: Ledger,
    report: RunReport,
    plugin_name: String,
    /// Keys `rotate` deleted to make room.
    deleted: Vec<String>,
}

impl<'a> InFlight<'a> {
    /// Reads the ledger, borrows the host's identity if lent, and prepares an
    /// instance: I6's check, the secrets to mask, the allowlist.
    async fn start(
        core: &'a Rotator<'a>,
        job: &'a Job,
        records: Records,
    ) -> Result<Self, RunError> {
        let Records {
            user,
            config,
            provider,
        } = records;
        let holdings = &core.holdings;
        let mut ledger = Ledger::read(&user, &config).map_err(RunError::BadField)?;
        let ignored = ledger.set_aside(|id| holdings.others(id, &job.user_uid));
        let host_credential = if core.identity.wanted(&config).map_err(RunError::BadField)? {
            Some(core.identity.credential().await?)
        } else {
            None
        };
        let mut instance = core.plugin.instantiate().await?;
        instance.hold(holdings.clone(), &job.user_uid);
        let info = instance.info().await?;
        if let Some((id, others)) = holdings
            .shared(&user, &info.credential_id_fields)
            .into_iter()
            .next()
        {
            return Err(RunError::SharedCredential {
                uid: printable(&job.user_uid),
                id: printable(&id),
                others: quoted(&others),
            });
        }
        let schema = instance.config_schema().await?;
        for secret in secrets(&schema, &user, &config, provider.as_ref()) {
            instance.add_secret(&secret);
        }
        if let Some(h) = &host_credential {
            instance.add_secret(h.secret.expose());
            if let Some(t) = &h.session_token {
                instance.add_secret(t.expose());
            }
        }
        let policy = &core.plugin.limits().network;
        if host_credential.is_some() {
            lent_origins_allowed(&schema, &config, policy)?;
        }
        instance.allow(allow_list(&info.allowed_hosts, &schema, &config, policy)?);
        let ctx = Context {
            user,
            config,
            provider,
            dry_run: job.dry_run,
            host_credential,
            deactivated: ledger.for_plugin(Utc::now()),
        };
        Ok(Self {
            core,
            job,
            instance,
            ctx,
            ledger,
            report: RunReport::new(job, ignored),
            plugin_name: info.name.clone(),
            deleted: vec![],
        })
    }

    fn not_stopping(&self) -> Result<(), RunError> {
        if self.core.stopping.load(Ordering::SeqCst) {
            return Err(RunError::Stopping);
        }
        Ok(())
    }

    /// Old keys first: judges the kept ones by their last use, then deletes
    /// (or deactivates) those whose time has come. A rotation still runs if
    /// this fails: its plan makes room by itself if it must.
    async fn old_keys(&mut self) -> Result<(), RunError> {
        self.not_stopping()?;
        let now = Utc::now();
        let policy = Policy::read(&self.ctx.config).map_err(RunError::BadField)?;
        self.report.in_use = retire::check_kept(
            &mut self.instance,
            &self.ctx,
            &mut self.ledger,
            policy,
            now,
            &mut self.report,
        )
        .await;
        self.ctx.deactivated = self.ledger.for_plugin(now);
        let expired = self.ledger.expired_ids(now);
        if expired.is_empty() {
            return Ok(());
        }
        if self.job.dry_run {
            let off = self
                .ledger
                .entries
                .iter()
                .filter(|e| !e.kept && expired.contains(&e.id));
            let off: Vec<&str> = off.map(|e| e.id.as_str()).collect();
            if !off.is_empty() {
                self.report.notes.push(format!(
                    "delete {}: deactivated by an earlier rotation, and the grace period has \
                     ended (if IAM still shows it inactive)",
                    off.join(", ")
                ));
            }
            return Ok(());
        }
        let (instance, writer) = (&mut self.instance, self.core.writer);
        match retire::purge(instance, writer, self.job, &self.ctx, &mut self.ledger, now).await {
            Ok((purged, deactivated, notes)) => {
                self.report.purged = purged;
                self.report.deactivated = deactivated;
                self.report.notes.extend(notes);
            }
            Err(e) if self.job.rotate => self.report.notes.push(format!(
                "the old keys due to be deleted or deactivated were not ({e}); the next run \
                 tries again"
            )),
            Err(e) => return Err(e),
        }
        self.ctx.deactivated = self.ledger.for_plugin(now);
        Ok(())
    }

    /// `rotate`: the plan, or the new key and what to store. Its secrets are
    /// masked from here on, and its id joins the holdings at once (I6).
    async fn rotate(&mut self) -> Result<crate::sandbox::plugin::Rotation, RunError> {
        let uid = self.job.user_uid.as_str();
        tracing::info!(plugin = %self.plugin_name, user = ?printable(uid), dry_run = self.job.dry_run, "rotating");
        let rotation = match self.instance.rotate(&self.ctx).await {
            Ok(Ok(r)) => r,
            Ok(Err(error)) => {
                return Err(RunError::Plugin {
                    stage: "rotate",
                    error,
                });
            }
            Err(source) => return Err(RunError::RotateStopped { source }),
        };
        for f in rotation
            .fields
            .iter()
            .filter(|f| f.kind == ValueKind::Secret)
        {
            self.instance.add_secret(f.value.expose());
        }
        let holdings = &self.core.holdings;
        if let Some(created) = &rotation.created {
            holdings.add(created, uid);
        }
        let rotation = keep_held_elsewhere(rotation, holdings, uid, &mut self.report.notes);
        let clean = |ids: &[String]| ids.iter().map(|d| self.instance.clean(d)).collect();
        self.report.created = rotation.created.as_deref().map(|c| self.instance.clean(c));
        self.deleted = clean(&rotation.deleted);
        self.report.planned_retire = clean(&rotation.retire);
        self.report.notes.extend(rotation.notes.iter().cloned());
        Ok(rotation)
    }

    /// Stores the new key durably before any old key is touched (I1, I2),
    /// with `Last Rotated` (and, in a pass, `Rotation Pending`) in the same
    /// save; keys deleted to make room leave the ledger in it too. If the save
    /// fails, `rollback` deletes the new key, unless it may have been stored.
    async fn store(
        &mut self,
        rotation: &crate::sandbox::plugin::Rotation,
    ) -> Result<String, RunError> {
        let job = self.job;
        let Some(created) = self.report.created.clone() else {
            return Err(RunError::Plugin {
                stage: "rotate",
                error: PluginError::Failed("the plugin returned no new credential".into()),
            });
        };
        let user = printable(&job.user_uid);
        tracing::info!(user = ?user, key = %created, "new key created; storing it before anything is deleted");
        let mut fields = rotation.fields.clone();
        fields.push(text_field(labels::LAST_ROTATED, &stamp(Utc::now())));
        let mut remove = if job.mark_pending {
            fields.push(text_field(labels::PENDING, "finalize"));
            vec![]
        } else {
            vec![labels::PENDING]
        };
        if self.ledger.forget(&rotation.deleted) {
            fields.extend(retire::ledger_fields(&self.ledger));
            remove.extend(retire::ledger_removal(&self.ledger));
        }
        let writer = self.core.writer;
        if let Err(source) = writer.store_rotation(&job.user_uid, fields, remove).await {
            if source.is_uncertain() {
                // The key may be in the vault now: deleting it could lock the user out.
                return Err(RunError::StoreUncertain { created, source });
            }
            let rollback = rollback(&mut self.instance, &self.ctx, rotation, &created).await;
            return Err(RunError::StoreFailed {
                created,
                source,
                rollback,
            });
        }
        tracing::info!(user = ?user, key = %created, "new key stored");
        Ok(created)
    }

    /// `finalize`: proves the new key works, then retires the old one; what
    /// it deactivated or kept for consumers is recorded in the ledger.
    async fn finalize(
        mut self,
        rotation: &crate::sandbox::plugin::Rotation,
        created: String,
    ) -> Result<RunReport, RunError> {
        let why = match self.instance.finalize(&self.ctx, rotation).await {
            Ok(Ok(done)) => {
                let user = printable(&self.job.user_uid);
                for id in &done.retired {
                    tracing::info!(user = ?user, key = %id, "old key retired");
                }
                self.report.notes.extend(done.notes);
                self.report.retired = [std::mem::take(&mut self.deleted), done.retired].concat();
                retire::record_finalized(
                    self.core.writer,
                    &self.core.holdings,
                    self.job,
                    &mut self.ledger,
                    (&done.deactivated, &done.kept),
                    &mut self.report,
                )
                .await;
                return Ok(self.report);
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        Err(RunError::NotFinalized { created, why })
    }
}

/// The host's own check of I6 on what `rotate` returned: an id another record
/// holds is never handed to `finalize` to retire. One the plugin says it
/// deleted is past saving, and reported.
fn keep_held_elsewhere(
    mut rotation: crate::sandbox::plugin::Rotation,
    holdings: &Holdings,
    uid: &str,
    notes: &mut Vec<String>,
) -> crate::sandbox::plugin::Rotation {
    let (kept, retire): (Vec<String>, Vec<String>) = rotation
        .retire
        .into_iter()
        .partition(|id| holdings.held_elsewhere(id, uid));
    rotation.retire = retire;
    for id in kept {
        let others = quoted(&holdings.others(&id, uid));
        tracing::warn!(user = ?printable(uid), key = ?printable(&id), "the plugin asked to retire a credential record(s) {others} hold; it is kept");
        notes.push(format!(
            "kept {}: the plugin asked to retire it, but record(s) {others} hold or track it",
            printable(&id)
        ));
    }
    for id in rotation
        .deleted
        .iter()
        .filter(|id| holdings.held_elsewhere(id, uid))
    {
        let others = quoted(&holdings.others(id, uid));
        tracing::error!(user = ?printable(uid), key = ?printable(id), "the plugin deleted a credential record(s) {others} hold: this plugin breaks I6");
        notes.push(format!(
            "the plugin reports deleting {}, which record(s) {others} hold: check those records",
            printable(id)
        ));
    }
    rotation
}

/// `'a', 'b'`: record UIDs for a message, escaped.
fn quoted(uids: &[String]) -> String {
    uids.iter()
        .map(|u| format!("'{}'", printable(u)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn text_field(label: &str, value: &str) -> StoreField {
    StoreField {
        label: label.to_string(),
        aliases: vec![],
        kind: ValueKind::Text,
        value: Secret::new(value),
    }
}

async fn rollback(
    instance: &mut Instance,
    ctx: &Context,
    rotation: &crate::sandbox::plugin::Rotation,
    created: &str,
) -> String {
    let failure = match instance.rollback(ctx, rotation).await {
        Ok(Ok(())) => {
            return format!(
                "The new key {created} was deleted again; the vault and the old key are as they were"
            );
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    format!(
        "Deleting the new key {created} failed too ({failure}); the vault and the old key are as \
         they were, and the next run deletes {created} as a leftover"
    )
}
