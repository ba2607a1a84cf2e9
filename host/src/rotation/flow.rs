//! One rotation, step by step (docs/design.md): read the records, `rotate`, store the
//! new credential durably, then `finalize`, or `rollback` if storing failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;

use crate::fields::{is_host_label, labels, stamp};
use crate::holdings::Holdings;
use crate::record::{StoreField, ValueKind};
use crate::rotation::exposure::{allow_list, lent_origins_allowed, secrets};
use crate::rotation::grace::Ledger;
use crate::rotation::identity::GatewayIdentity;
use crate::rotation::job::{Job, Records};
use crate::rotation::report::{Outcome, RunError, RunReport};
use crate::rotation::retire;
use crate::rotation::staged;
use crate::rotation::turn::Turn;
use crate::rotation::usage::Policy;
use crate::sandbox::engine::Plugin;
use crate::sandbox::instance::Instance;
use crate::sandbox::plugin::{Context, PluginError};
use crate::secret::Secret;
use crate::text::printable;
use crate::vault::lease::Lease;
use crate::vault::writer::{Rotating, VaultWriter};

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
    /// In a pass, the rotation's turn among its plugin's jobs: given up while
    /// its store waits for others' to share a save.
    pub turn: Option<&'a Turn<'a>>,
}

impl Rotator<'_> {
    /// `save(wait)`, a store through `writer`. In a pass over a file vault it
    /// waits (`wait`) for others' stores to share its rewrite, without its
    /// turn, if the plugin's waiting instances have room for one holding
    /// `memory` bytes; otherwise it saves at once.
    async fn saved<T, F>(&self, memory: usize, save: impl FnOnce(bool) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let room = match self.turn {
            Some(turn) if self.writer.lingers() => turn.room(memory),
            _ => None,
        };
        match room {
            Some(room) => room.aside(save(true)).await,
            None => save(false).await,
        }
    }
}

/// The rotation core: a fresh instance of `plugin` rotates one record, the new
/// credential is stored through `writer` before anything is retired, then
/// `finalize`, or `rollback` if storing failed. Keys deactivated by earlier
/// rotations whose grace period ended are deleted first (`purge`).
/// `under_way` counts the rotation as one whose store a save may wait for,
/// from before it begins.
pub async fn rotate_record(
    core: &Rotator<'_>,
    job: &Job,
    mut records: Records,
    under_way: Rotating,
) -> Result<RunReport, RunError> {
    if job.dry_run {
        // Reads only: another writer's lease does not stop a plan.
        return rotate_once(core, job, records, under_way).await;
    }
    if !needs_lease(job, &records) {
        // At most the retirement of an unused kept key, which touches no key
        // a record holds: no lease is written, so a gateway watching kept keys
        // does not update every record each pass. Another writer's live lease
        // still keeps it out.
        core.writer.check_lease(&job.user_uid).await?;
        return rotate_once(core, job, records, under_way).await;
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
    let result = rotate_once(core, job, records, under_way).await;
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
    under_way: Rotating,
) -> Result<RunReport, RunError> {
    let mut run = InFlight::start(core, job, records).await?;
    run.old_keys().await?;
    if !job.rotate {
        run.report.status = if job.dry_run {
            Outcome::Planned
        } else {
            Outcome::Purged
        };
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
    if rotation.staged {
        // Finishing an earlier run's: its fields are staged already.
        if run.ctx.staged.is_empty() {
            run.stage(&rotation, under_way).await?;
        } else {
            // Nothing to stage: no save should wait for this one.
            drop(under_way);
        }
        return run.finalize_staged(&rotation).await;
    }
    let created = run.store(&rotation, under_way).await?;
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
        let staged = staged::read(&user).map_err(RunError::BadField)?;
        let ignored = ledger.set_aside(|id| holdings.others(id, &job.user_uid));
        let host_credential = if core
            .identity
            .wanted(&config, core.plugin)
            .map_err(RunError::BadField)?
        {
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
        for f in staged.iter().filter(|f| f.kind != ValueKind::Text) {
            instance.add_secret(f.value.expose());
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
            staged,
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
        let rotation = self.instance.rotate(&self.ctx).await?;
        for f in rotation.fields.iter().filter(|f| f.kind != ValueKind::Text) {
            self.instance.add_secret(f.value.expose());
        }
        if let Some(label) = host_field(&rotation) {
            return Err(RunError::HostField { label });
        }
        if let Some(why) = staged::refusal(&rotation, &self.ctx.staged) {
            // What a plain rotation created is deleted again, as after a failed store.
            let created = rotation.created.clone().filter(|_| !rotation.staged);
            let why = match created {
                Some(created) => {
                    let undone = rollback(&mut self.instance, &self.ctx, &rotation, &created).await;
                    format!("{why}. {undone}")
                }
                None => why,
            };
            return Err(RunError::BadStaged { why });
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
        under_way: Rotating,
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
        // A plain rotation supersedes anything staged (and a forged staged
        // field cannot keep the record due).
        let mut remove = vec![labels::STAGED];
        if job.mark_pending {
            fields.push(text_field(labels::PENDING, "finalize"));
        } else {
            remove.push(labels::PENDING);
        }
        if self.ledger.forget(&rotation.deleted) {
            fields.extend(retire::ledger_fields(&self.ledger));
            remove.extend(retire::ledger_removal(&self.ledger));
        }
        let writer = self.core.writer;
        let saved = |wait| writer.store_rotation(&job.user_uid, fields, remove, under_way, wait);
        if let Err(source) = self.core.saved(self.instance.memory_used(), saved).await {
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
            Ok(done) => {
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
            Err(e) => e.to_string(),
        };
        Err(RunError::NotFinalized { created, why })
    }
}

impl InFlight<'_> {
    /// A staged rotation's first store (design §13): the new credential goes
    /// into `Rotation Staged`, beside the live one, which still works. Nothing
    /// is set at the service yet, so a failed store needs no rollback.
    async fn stage(
        &mut self,
        rotation: &crate::sandbox::plugin::Rotation,
        under_way: Rotating,
    ) -> Result<(), RunError> {
        let job = self.job;
        let mut fields = vec![staged::field(&rotation.fields)];
        let mut remove = vec![];
        if job.mark_pending {
            fields.push(text_field(labels::PENDING, "finalize"));
        } else {
            remove.push(labels::PENDING);
        }
        let user = printable(&job.user_uid);
        tracing::info!(user = ?user, "new credential made; staging it in the vault before the service gets it");
        let writer = self.core.writer;
        let staged = |wait| writer.store_rotation(&job.user_uid, fields, remove, under_way, wait);
        (self.core.saved(self.instance.memory_used(), staged).await)
            .map_err(|source| RunError::StageFailed { source })?;
        tracing::info!(user = ?user, "new credential staged");
        Ok(())
    }

    /// A staged rotation's `finalize` sets the staged credential at the
    /// service and proves it; only then is it made live, with `Last Rotated`,
    /// and `Rotation Staged` removed in the same save.
    async fn finalize_staged(
        mut self,
        rotation: &crate::sandbox::plugin::Rotation,
    ) -> Result<RunReport, RunError> {
        let done = (self.instance.finalize(&self.ctx, rotation).await)
            .map_err(|e| RunError::StagedNotFinished { why: e.to_string() })?;
        let mut fields = rotation.fields.clone();
        fields.push(text_field(labels::LAST_ROTATED, &stamp(Utc::now())));
        let mut remove = vec![labels::STAGED];
        remove.extend(self.job.mark_pending.then_some(labels::PENDING));
        // The save that makes the credential live: a rotation's store (KSM's
        // rotation transaction).
        let writer = self.core.writer;
        let uid = &self.job.user_uid;
        let promoted = |wait| writer.store_rotation(uid, fields, remove, writer.rotating(), wait);
        (self.core.saved(self.instance.memory_used(), promoted).await)
            .map_err(|source| RunError::PromoteFailed { source })?;
        tracing::info!(user = ?printable(&self.job.user_uid), "new credential set at the service and stored");
        self.report.notes.extend(done.notes);
        self.report.retired = done.retired;
        Ok(self.report)
    }
}

/// The first label or alias of `rotation`'s fields that the host keeps, escaped.
fn host_field(rotation: &crate::sandbox::plugin::Rotation) -> Option<String> {
    let mut names =
        (rotation.fields.iter()).flat_map(|f| std::iter::once(&f.label).chain(&f.aliases));
    names.find(|l| is_host_label(l)).map(|l| printable(l))
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
        Ok(()) => {
            return format!(
                "The new key {created} was deleted again; the vault and the old key are as they were"
            );
        }
        Err(e) => e.to_string(),
    };
    format!(
        "Deleting the new key {created} failed too ({failure}); the vault and the old key are as \
         they were, and the next run deletes {created} as a leftover"
    )
}
