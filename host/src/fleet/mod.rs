//! The fleet: every due PAM user record of a vault, rotated on one compiled
//! plugin, many at once (`due`), and again on an interval (`gateway`).
//!
//! A pass holds the vault lock from start to end, so `rotate-host run` on the
//! same vault waits for it (and a pass waits for a run): no record is ever
//! rotated twice at once. Stores go through one `VaultWriter`, so concurrent
//! rotations share rewrites.

pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::fields::PAM_USER_TYPE;
use crate::fields::{labels, stamp};
use crate::holdings::Holdings;
use crate::metrics::Metrics;
use crate::record::Record;
use crate::rotation::audit::{AuditEntry, AuditLog};
use crate::rotation::flow::{
    Job, Records, Rotator, RunError, RunReport, fleet_records, rotate_record,
};
use crate::rotation::grace::Ledger;
use crate::rotation::identity::{GatewayIdentity, Lending};
use crate::rotation::usage::KeyInUse;
use crate::rotation::vetting::{self, VetError};
use crate::sandbox::engine::{Limits, Plugin, SandboxError};
use crate::sandbox::plugin::Subject;
use crate::vault::writer::VaultWriter;
use crate::vault::{Vault, VaultError, VaultOptions, VaultSource};
use schedule::{Due, Member};

/// What `due` and `gateway` were asked to do.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub guest: PathBuf,
    pub vault: VaultSource,
    pub vault_options: VaultOptions,
    pub limits: Limits,
    pub cache_dir: Option<PathBuf>,
    /// `--max-age-days`: the schedule of records that set none.
    pub max_age: chrono::Duration,
    /// `--jobs`: rotations at once.
    pub jobs: usize,
    pub dry_run: bool,
    pub audit: Option<PathBuf>,
    /// `--gateway-credentials[-for]`: whom the host's own AWS identity is lent to.
    pub lending: Lending,
}

/// One record's line in a pass report. Holds key ids, never secrets.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub user_uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
    /// Old keys turned off and kept for the grace period.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deactivated: Vec<String>,
    /// Keys deleted because their grace period ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purged: Vec<String>,
    /// Old keys left active for their consumers (`retire-when-unused`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// Old keys kept earlier that IAM shows still in use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<KeyInUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Entry {
    fn new(uid: &str) -> Self {
        Self {
            user_uid: uid.to_string(),
            created: None,
            retired: vec![],
            deactivated: vec![],
            purged: vec![],
            kept: vec![],
            in_use: vec![],
            exit_code: None,
            error: None,
            next_due: None,
            notes: vec![],
        }
    }
}

/// What one pass did, record by record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// New key stored: finalized (`exit_code` 0), or not yet (3).
    pub rotated: Vec<Entry>,
    /// Not due, but deactivated keys whose grace period ended were deleted.
    pub purged: Vec<Entry>,
    pub failed: Vec<Entry>,
    /// `Rotation` is `disabled`, or the gateway was stopping.
    pub skipped: Vec<Entry>,
    pub not_due: Vec<Entry>,
    /// With `--dry-run`: what each due record's plugin plans.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<Entry>,
    /// Audit lines that could not be written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit_failures: Vec<String>,
    /// Per config record: when its members' oldest key was rotated, for the
    /// age of the oldest recorded key (the CIS 90-day rule at a glance).
    #[serde(skip)]
    pub oldest_rotation: BTreeMap<String, chrono::DateTime<Utc>>,
    /// The soonest a record not due now is due.
    #[serde(skip)]
    pub next_due: Option<chrono::DateTime<Utc>>,
    /// How long the pass took.
    #[serde(skip)]
    pub took: Duration,
}

impl PassReport {
    /// Old keys kept for consumers that IAM shows still in use, in every list.
    pub fn keys_in_use(&self) -> usize {
        [&self.rotated, &self.purged, &self.not_due, &self.planned]
            .iter()
            .flat_map(|l| l.iter())
            .map(|e| e.in_use.len())
            .sum()
    }
}

impl PassReport {
    /// 0 when every due record rotated, 3 when some are stored but not
    /// finalized and none failed, 1 when any failed or an audit line is missing.
    pub fn exit_code(&self) -> i32 {
        if !self.failed.is_empty() || !self.audit_failures.is_empty() {
            1
        } else if self.rotated.iter().any(|e| e.exit_code == Some(3)) {
            3
        } else {
            0
        }
    }

    /// `N rotated, N failed, N skipped, N not due`, with `N planned` and
    /// `N purged` when there are any.
    pub fn summary(&self) -> String {
        let planned = if self.planned.is_empty() {
            String::new()
        } else {
            format!("{} planned, ", self.planned.len())
        };
        let purged = if self.purged.is_empty() {
            String::new()
        } else {
            format!("{} purged, ", self.purged.len())
        };
        format!(
            "{planned}{} rotated, {purged}{} failed, {} skipped, {} not due",
            self.rotated.len(),
            self.failed.len(),
            self.skipped.len(),
            self.not_due.len()
        )
    }

    /// One line per record, then the summary.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.planned {
            out.push(format!("planned {}: {}", e.user_uid, e.notes.join("; ")));
        }
        let list = |what: &str, ids: &[String]| {
            if ids.is_empty() {
                String::new()
            } else {
                format!(", {what} {}", ids.join(", "))
            }
        };
        for e in &self.rotated {
            let retired = [
                list("deleted after the grace period", &e.purged),
                list("retired", &e.retired),
                list("deactivated", &e.deactivated),
                list("kept for its consumers", &e.kept),
            ]
            .concat();
            match &e.error {
                None => out.push(format!(
                    "rotated {}: new key {}{retired}",
                    e.user_uid,
                    e.created.as_deref().unwrap_or("?")
                )),
                Some(why) => out.push(format!(
                    "rotated {} (not finalized, exit 3): new key {} stored; {why}",
                    e.user_uid,
                    e.created.as_deref().unwrap_or("?")
                )),
            }
        }
        for e in &self.purged {
            out.push(format!(
                "purged {}: deleted {} (grace period ended){}",
                e.user_uid,
                if e.purged.is_empty() {
                    "nothing".to_string()
                } else {
                    e.purged.join(", ")
                },
                if e.notes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", e.notes.join("; "))
                }
            ));
        }
        for e in &self.failed {
            out.push(format!(
                "failed {} (exit {}): {}",
                e.user_uid,
                e.exit_code.unwrap_or(1),
                e.error.as_deref().unwrap_or("")
            ));
        }
        for e in &self.skipped {
            out.push(format!(
                "skipped {}: {}",
                e.user_uid,
                e.error.as_deref().unwrap_or("")
            ));
        }
        for why in &self.audit_failures {
            out.push(format!("audit: {why}"));
        }
        // Not-due lines come last before the summary: the gateway logs them at DEBUG.
        for e in &self.not_due {
            let notes = if e.notes.is_empty() {
                String::new()
            } else {
                format!("; {}", e.notes.join("; "))
            };
            out.push(format!(
                "not due {}: next due {}{notes}",
                e.user_uid,
                e.next_due.as_deref().unwrap_or("never")
            ));
        }
        out.push(self.summary());
        out
    }

    /// Sorts each list by UID and makes every string safe to print: UIDs and
    /// field values come from the vault, which may hold control characters.
    fn finish(&mut self) {
        use crate::text::printable;
        for list in [
            &mut self.rotated,
            &mut self.purged,
            &mut self.failed,
            &mut self.skipped,
            &mut self.not_due,
            &mut self.planned,
        ] {
            list.sort_by(|a, b| a.user_uid.cmp(&b.user_uid));
            for e in list.iter_mut() {
                e.user_uid = printable(&e.user_uid);
                e.error = e.error.as_deref().map(printable);
                e.created = e.created.as_deref().map(printable);
                for ids in [&mut e.retired, &mut e.deactivated, &mut e.purged] {
                    *ids = ids.iter().map(|r| printable(r)).collect();
                }
                e.notes = e.notes.iter().map(|n| printable(n)).collect();
            }
        }
    }
}

/// Why a pass could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Usage(String),
}

impl FleetError {
    /// 2 for a wrong command or an unusable vault, 1 otherwise (a held lock).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Vault(e) if !e.is_bad_input() => 1,
            Self::Sandbox(e) if !e.is_bad_input() => 1,
            _ => 2,
        }
    }
}

/// A due record, ready to rotate.
struct Work {
    job: Job,
    records: Records,
    login: Option<String>,
    /// What it rotates, once vetted.
    subject: Option<Subject>,
    /// When it is due, if not now (it then only retires old keys).
    next_due: Option<String>,
}

/// The report entry of a record with a field the fleet cannot use.
fn bad_field(uid: &str, bad: &crate::fields::BadField) -> Entry {
    let mut e = Entry::new(uid);
    e.exit_code = Some(2);
    e.error = Some(format!(
        "{bad}; this record was not rotated, the rest of the fleet was"
    ));
    e
}

/// Sorts the vault's records into work to do now and report entries.
fn select(vault: &dyn Vault, opts: &FleetOptions, report: &mut PassReport) -> Vec<Work> {
    let now = Utc::now();
    let mut configs: HashMap<String, Option<Record>> = HashMap::new();
    let mut work = Vec::new();
    for uid in vault.uids() {
        let Ok(user) = vault.record(&uid, "-u", None) else {
            continue;
        };
        if !user.record_type.eq_ignore_ascii_case(PAM_USER_TYPE) {
            continue;
        }
        let config = user.value(labels::CONFIG).and_then(|c| {
            configs
                .entry(c.to_string())
                .or_insert_with(|| vault.record(c, labels::CONFIG, None).ok())
                .clone()
        });
        let entry = match schedule::member(&user, config.as_ref(), opts.max_age) {
            Ok(Member::Outside) => continue,
            Ok(Member::Disabled) => {
                let mut e = Entry::new(&uid);
                e.error = Some("field 'Rotation' is 'disabled'".into());
                report.skipped.push(e);
                continue;
            }
            Err(bad) => {
                report.failed.push(bad_field(&uid, &bad));
                continue;
            }
            Ok(Member::Scheduled(entry)) => entry,
        };
        let config_record = config.as_ref().expect("scheduled records have a config");
        let ledger = match Ledger::read(&user, config_record) {
            Ok(l) => l,
            Err(bad) => {
                report.failed.push(bad_field(&uid, &bad));
                continue;
            }
        };
        let due = entry.due(now);
        if let Some(last) = entry.last_rotated {
            let oldest = report
                .oldest_rotation
                .entry(entry.config_uid.clone())
                .or_insert(last);
            *oldest = (*oldest).min(last);
        }
        // The earlier of the next rotation and the next end of a grace period.
        let next = match due {
            Due::At(at) => Some(ledger.next_expiry(now).map_or(at, |g| g.min(at))),
            Due::Now => None,
        };
        report.next_due = match (report.next_due, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next_due = next.map(stamp);
        // Kept old keys are checked every pass, due or not (retire-when-unused).
        if next_due.is_some()
            && ledger.expired_ids(now).is_empty()
            && ledger.kept().next().is_none()
        {
            let mut e = Entry::new(&uid);
            e.next_due = next_due;
            report.not_due.push(e);
            continue;
        }
        let job = Job {
            user_uid: entry.user_uid.clone(),
            config_uid: entry.config_uid.clone(),
            provider_uid: entry.provider_uid.clone(),
            dry_run: opts.dry_run,
            mark_pending: true,
            rotate: due == Due::Now,
        };
        // The user and config records are read already; only the provider is left.
        let provider = job
            .provider_uid
            .as_deref()
            .map(|p| vault.record(p, labels::PROVIDER, None))
            .transpose();
        match (provider, config) {
            (Ok(provider), Some(config)) => work.push(Work {
                login: user.value_of_type("login").map(str::to_lowercase),
                subject: None,
                next_due,
                job,
                records: Records {
                    user,
                    config,
                    provider,
                },
            }),
            (Err(e), _) => {
                let mut entry = Entry::new(&uid);
                entry.exit_code = Some(2);
                entry.error = Some(e.to_string());
                report.failed.push(entry);
            }
            // `member` schedules a record only when its config record exists.
            (Ok(_), None) => unreachable!("a scheduled record without its config record"),
        }
    }
    work
}

/// Everything one pass shares.
#[derive(Clone)]
pub struct Fleet {
    plugin: Arc<Plugin>,
    identity: Arc<GatewayIdentity>,
    opts: FleetOptions,
    audit: Option<Arc<AuditLog>>,
    /// Set by SIGTERM or SIGINT: start no new rotation.
    stopping: Arc<AtomicBool>,
}

impl Fleet {
    /// Compiles (or loads) the plugin once for every pass, and opens the audit log.
    pub fn new(opts: FleetOptions) -> Result<Self, FleetError> {
        let audit = opts
            .audit
            .as_deref()
            .map(|p| AuditLog::open(p, opts.vault_options.strict_permissions))
            .transpose()
            .map_err(FleetError::Usage)?
            .map(Arc::new);
        let plugin = Plugin::load(&opts.guest, opts.limits.clone(), opts.cache_dir.as_deref())?;
        Ok(Self {
            plugin: Arc::new(plugin),
            identity: Arc::new(GatewayIdentity::new(opts.lending.clone())),
            opts,
            audit,
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// One pass: every due record, `--jobs` at a time; records that name the
    /// same user under the same config one after another.
    pub async fn pass(&self) -> Result<PassReport, FleetError> {
        let started = Instant::now();
        let opts = self.opts.clone();
        // Waiting for the lock blocks; keep it off the async workers.
        let vault = tokio::task::spawn_blocking(move || opts.vault.open(None, &opts.vault_options))
            .await
            .expect("the vault opener does not panic")?;
        let mut report = PassReport::default();
        let work = select(vault.as_ref(), &self.opts, &mut report);
        let (work, holdings) = self.vet(vault.as_ref(), work, &mut report).await?;
        let writer = Arc::new(VaultWriter::new(vault));

        // Rotations of one login never overlap, whatever config or signer
        // they go through: two routes to one IAM user (two signing keys, two
        // spellings of the endpoint) could otherwise delete each other's new
        // key. Logins of different accounts that happen to match only wait.
        let mut groups: BTreeMap<String, Vec<Work>> = BTreeMap::new();
        for w in work {
            let key = match &w.subject {
                Some(s) => s.login.clone(),
                None => format!("\u{0}{}", w.job.user_uid),
            };
            groups.entry(key).or_default().push(w);
        }
        let permits = Arc::new(Semaphore::new(self.opts.jobs.max(1)));
        let mut tasks = JoinSet::new();
        for (_, group) in groups {
            let (fleet, writer, permits) = (self.clone(), writer.clone(), permits.clone());
            let holdings = holdings.clone();
            tasks.spawn(async move {
                let mut done = Vec::new();
                for w in group {
                    let _permit = permits.acquire().await.expect("the semaphore stays open");
                    if fleet.stopping.load(Ordering::SeqCst) {
                        done.push(Err(w.job.user_uid));
                        continue;
                    }
                    let started = Instant::now();
                    let core = Rotator {
                        plugin: &fleet.plugin,
                        writer: &writer,
                        identity: &fleet.identity,
                        holdings: holdings.clone(),
                        stopping: &fleet.stopping,
                    };
                    let result = rotate_record(&core, &w.job, w.records.clone()).await;
                    let audit = fleet.audit(&w, &result, started.elapsed());
                    done.push(Ok((w.job.user_uid, w.next_due, result, audit)));
                }
                done
            });
        }
        while let Some(group) = tasks.join_next().await {
            for outcome in group.expect("a rotation task does not panic") {
                match outcome {
                    Ok((uid, next_due, result, audit)) => {
                        let mut e = Entry::new(&uid);
                        e.next_due = next_due;
                        record(&mut report, e, result, self.opts.dry_run);
                        report.audit_failures.extend(audit);
                    }
                    Err(uid) => {
                        let mut e = Entry::new(&uid);
                        e.error = Some("the gateway is stopping; it was not started".into());
                        report.skipped.push(e);
                    }
                }
            }
        }
        // Clears the `Rotation Pending` marks of finished rotations, in one save.
        if let Err(e) = writer.flush().await {
            tracing::warn!(
                "could not clear the marks of finished rotations: {}; the next pass finishes them again",
                crate::text::printable(&e.to_string())
            );
        }
        report.finish();
        report.took = started.elapsed();
        Ok(report)
    }

    /// Who holds which credential (I6), and which members may rotate what they
    /// name: a config record that is one, in scope, and no two members with one
    /// subject. A member that fails here fails alone, due or not.
    async fn vet(
        &self,
        vault: &dyn Vault,
        work: Vec<Work>,
        report: &mut PassReport,
    ) -> Result<(Vec<Work>, Arc<Holdings>), FleetError> {
        let info = self.plugin.info().await?;
        // One record at a time: a vault is never held in memory twice.
        let holdings = Arc::new(Holdings::default());
        let mut failed: BTreeMap<String, VetError> = BTreeMap::new();
        let mut good = BTreeMap::new();
        let mut subjects = vetting::Subjects::new(&self.plugin, &self.identity);
        for uid in vault.uids() {
            let Ok(record) = vault.record(&uid, "-u", None) else {
                continue;
            };
            holdings.add_record(&record, &info.credential_id_fields);
            let Some((uid, records)) = fleet_records(vault, record) else {
                continue;
            };
            let checked = match vetting::check_config(&records.user, &records.config, true) {
                Ok(()) => subjects.of(&records).await.and_then(|s| {
                    vetting::check_scope(&uid, &s, &records.config, true).map(|()| s)
                }),
                Err(e) => Err(e),
            };
            match checked {
                Ok(s) => {
                    good.insert(uid, s);
                }
                Err(e) => {
                    failed.insert(uid, e);
                }
            }
        }
        failed.extend(vetting::duplicates(
            good.iter().map(|(u, s)| (u.as_str(), s)),
        ));
        let entry = |uid: &str, e: &VetError| {
            let mut entry = Entry::new(uid);
            entry.exit_code = Some(e.exit_code());
            entry.error = Some(format!("{e}; the rest of the fleet was rotated"));
            entry
        };
        // A record already reported (a bad field, or disabled) is reported once.
        for e in report.failed.iter().chain(&report.skipped) {
            failed.remove(&e.user_uid);
        }
        report.not_due.retain(|e| !failed.contains_key(&e.user_uid));
        let kept = work
            .into_iter()
            .filter(|w| !failed.contains_key(&w.job.user_uid))
            .map(|mut w| {
                w.subject = good.remove(&w.job.user_uid);
                w
            })
            .collect();
        report
            .failed
            .extend(failed.iter().map(|(uid, e)| entry(uid, e)));
        Ok((kept, holdings))
    }

    /// Writes the attempt's audit line; an error says the line is missing.
    fn audit(
        &self,
        w: &Work,
        result: &Result<RunReport, RunError>,
        took: Duration,
    ) -> Option<String> {
        let log = self.audit.as_ref()?;
        log.write(&audit_entry(&w.job.user_uid, w.login.clone(), result, took))
            .err()
    }

    /// Stops new rotations; running ones finish.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// The audit line of one attempt.
pub fn audit_entry(
    uid: &str,
    user: Option<String>,
    result: &Result<RunReport, RunError>,
    took: Duration,
) -> AuditEntry {
    let mut entry = match result {
        Ok(r) => AuditEntry::now(uid, r.status, 0),
        Err(e @ RunError::NotFinalized { .. }) => {
            AuditEntry::now(uid, "not_finalized", e.exit_code())
        }
        Err(RunError::Stopping) => AuditEntry::now(uid, "skipped", 0),
        // Skipped by a pass, but exit 1 for `run`: the entry says which.
        Err(e @ RunError::Vault(VaultError::Leased { .. })) => {
            AuditEntry::now(uid, "skipped", e.exit_code())
        }
        Err(e) => AuditEntry::now(uid, "failed", e.exit_code()),
    };
    entry.user = user;
    entry.duration_ms = took.as_millis() as u64;
    match result {
        Ok(r) => {
            entry.new_key_id = r.created.clone();
            entry.old_key_ids = if r.retired.is_empty() && r.deactivated.is_empty() {
                r.planned_retire.clone()
            } else {
                [r.retired.clone(), r.deactivated.clone()].concat()
            };
            entry.deactivated_key_ids = r.deactivated.clone();
            entry.purged_key_ids = r.purged.clone();
            entry.kept_key_ids = r.kept.clone();
            entry.old_keys_in_use = r.in_use.clone();
        }
        Err(e) => {
            entry.error = Some(e.to_string());
            if let RunError::NotFinalized { created, .. } | RunError::StoreFailed { created, .. } =
                e
            {
                entry.new_key_id = Some(created.clone());
            }
        }
    }
    entry
}

/// Files one rotation's result, as entry `e`, in the report.
fn record(
    report: &mut PassReport,
    mut e: Entry,
    result: Result<RunReport, RunError>,
    dry_run: bool,
) {
    match result {
        Ok(r) if dry_run => {
            e.notes = r.notes;
            e.retired = r.planned_retire;
            e.in_use = r.in_use;
            report.planned.push(e);
        }
        Ok(r) => {
            let idle = r.purged.is_empty() && r.deactivated.is_empty();
            e.created = r.created;
            e.retired = r.retired;
            e.deactivated = r.deactivated;
            e.kept = r.kept;
            e.in_use = r.in_use;
            e.purged = r.purged;
            e.notes = r.notes;
            match r.status {
                // Not due, and its old keys are still in use: nothing changed.
                "purged" if idle => report.not_due.push(e),
                "purged" => {
                    e.exit_code = Some(0);
                    report.purged.push(e);
                }
                _ => {
                    e.exit_code = Some(0);
                    report.rotated.push(e);
                }
            }
        }
        Err(err @ (RunError::Stopping | RunError::Vault(VaultError::Leased { .. }))) => {
            e.error = Some(err.to_string());
            report.skipped.push(e);
        }
        Err(err) => {
            let code = err.exit_code();
            e.exit_code = Some(code);
            if let RunError::NotFinalized { created, .. } = &err {
                e.created = Some(created.clone());
                e.error = Some(err.to_string());
                report.rotated.push(e);
            } else {
                e.error = Some(err.to_string());
                report.failed.push(e);
            }
        }
    }
}

/// `rotate-host gateway`: a pass every `interval` until SIGTERM or SIGINT.
/// A signal stops new rotations; those running finish, and it exits 0.
pub async fn gateway(
    fleet: Fleet,
    interval: Duration,
    metrics: Option<(SocketAddr, Arc<Metrics>)>,
) -> Result<(), FleetError> {
    let wake = Arc::new(Notify::new());
    {
        let (fleet, wake) = (fleet.clone(), wake.clone());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| FleetError::Usage(format!("could not watch for SIGTERM: {e}")))?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| FleetError::Usage(format!("could not watch for SIGINT: {e}")))?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: starting no new rotation, finishing those running");
            fleet.stop();
            wake.notify_one();
            // A second signal means now: crash safety covers a rotation cut short.
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal received: exiting at once");
            std::process::exit(130);
        });
    }
    let metrics = match metrics {
        Some((addr, m)) => {
            crate::metrics::serve(addr, m.clone())
                .await
                .map_err(FleetError::Usage)?;
            Some(m)
        }
        None => None,
    };
    loop {
        match fleet.pass().await {
            Ok(report) => {
                if let Some(m) = &metrics {
                    m.record_pass(&report);
                }
                // A pass where nothing is due writes only its summary at INFO;
                // a not-due record with something to say (an old key in use) stays.
                let lines = report.lines();
                let (summary, records) = lines.split_last().expect("a summary line");
                let first_not_due = records.len() - report.not_due.len();
                for (i, line) in records.iter().enumerate() {
                    let quiet = i
                        .checked_sub(first_not_due)
                        .is_some_and(|n| report.not_due[n].notes.is_empty());
                    if quiet {
                        tracing::debug!(target: "rotate_host::gateway", "{line}");
                    } else {
                        tracing::info!(target: "rotate_host::gateway", "{line}");
                    }
                }
                tracing::info!(target: "rotate_host::gateway", "{summary}");
            }
            // A bad or locked vault now may be fixed by the next pass.
            Err(e) => tracing::error!(
                "the pass did not run: {}",
                crate::text::printable(&e.to_string())
            ),
        }
        if fleet.stopping() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
        if fleet.stopping() {
            return Ok(());
        }
    }
}
