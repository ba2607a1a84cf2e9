//! The fleet: every due PAM user record of a vault, rotated on one compiled
//! plugin, many at once (`due`), and again on an interval (`gateway`).
//!
//! No record is rotated twice at once. In the file vault a pass holds the
//! vault's lock from start to end, so `rotate-host run` on the same vault
//! waits for it (and a pass for a run). Keeper has no lock: each rotation
//! takes a lease on its record instead, and a run or pass that finds another
//! writer's live lease skips that record. Stores go through one
//! `VaultWriter`, so concurrent rotations share rewrites.

mod report;
pub mod schedule;
mod select;
mod vet;

use report::record;
pub use report::{Entry, PassReport};
use select::{Work, select};
use vet::Vetter;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::holdings::Holdings;
use crate::rotation::audit::AuditLog;
use crate::rotation::audit::audit_entry;
use crate::rotation::flow::{Rotator, rotate_record};
use crate::rotation::identity::{GatewayIdentity, Lending};
use crate::rotation::report::{RunError, RunReport};
use crate::rotation::turn::Slots;
use crate::sandbox::engine::{Limits, SandboxError};
use crate::sandbox::plugin_set::{PluginPolicy, PluginSet, PluginSetError, PluginSource};
use crate::vault::writer::{BATCH, Rotating, VaultWriter};
use crate::vault::{VaultError, VaultOptions, VaultSource};

/// What `due` and `gateway` were asked to do.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// One plugin file, or a folder of them (`--plugins`).
    pub plugins: PluginSource,
    /// `[plugin.NAME]` sections of the config file, by plugin name.
    pub policies: BTreeMap<String, PluginPolicy>,
    pub vault: VaultSource,
    pub vault_options: VaultOptions,
    pub limits: Limits,
    pub cache_dir: Option<PathBuf>,
    /// `--max-age-days`: the schedule of records that set none.
    pub max_age: chrono::Duration,
    /// `--jobs`: rotations in plugin calls at once, per plugin.
    pub jobs: usize,
    pub dry_run: bool,
    pub audit: Option<PathBuf>,
    /// `--gateway-credentials[-for]`: whom the host's own AWS identity is lent to.
    pub lending: Lending,
}

/// Why a pass could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Plugin(#[from] crate::sandbox::engine::CallError),
    #[error("{0}")]
    Plugins(#[from] PluginSetError),
    #[error("{0}")]
    Usage(String),
}

impl FleetError {
    /// Bad input for a wrong command or an unusable vault, failed otherwise (a held lock).
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            Self::Vault(e) => Exit::usage_if(e.is_bad_input()),
            Self::Sandbox(e) => Exit::usage_if(e.is_bad_input()),
            Self::Plugin(e) => Exit::usage_if(e.is_bad_input()),
            Self::Plugins(e) => Exit::usage_if(e.is_bad_input()),
            Self::Usage(_) => Exit::Usage,
        }
    }
}

/// Everything one pass shares.
#[derive(Clone)]
pub struct Fleet {
    plugins: Arc<PluginSet>,
    identity: Arc<GatewayIdentity>,
    opts: FleetOptions,
    audit: Option<Arc<AuditLog>>,
    /// Set by SIGTERM or SIGINT: start no new rotation.
    stopping: Arc<AtomicBool>,
}

impl Fleet {
    /// Compiles (or loads) each plugin once for every pass, and opens the audit log.
    /// It asks each plugin's `info` on a runtime of its own, so call it from
    /// blocking code (a command, or `spawn_blocking`), never from async code.
    pub fn new(opts: FleetOptions) -> Result<Self, FleetError> {
        let audit = opts
            .audit
            .as_deref()
            .map(|p| AuditLog::open(p, opts.vault_options.strict_permissions))
            .transpose()
            .map_err(FleetError::Usage)?
            .map(Arc::new);
        let plugins = crate::sandbox::runtime::block_on(PluginSet::load(
            &opts.plugins,
            &opts.limits,
            opts.jobs,
            &opts.policies,
            opts.cache_dir.as_deref(),
        ))?;
        Ok(Self {
            plugins: Arc::new(plugins),
            identity: Arc::new(GatewayIdentity::new(opts.lending.clone())),
            opts,
            audit,
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// One pass: every due record, each plugin's `jobs` at a time (so one
    /// plugin's stuck rotations hold up none of another's); records of one
    /// login one after another. A rotation waiting for a shared save gives
    /// its turn to the next (up to `BATCH` of them wait), so a file vault is
    /// rewritten about once per `BATCH` stores.
    pub async fn pass(&self) -> Result<PassReport, FleetError> {
        let started = Instant::now();
        let opts = self.opts.clone();
        // Waiting for the lock blocks; keep it off the async workers.
        let vault = tokio::task::spawn_blocking(move || opts.vault.open(&opts.vault_options))
            .await
            .expect("the vault opener does not panic")?;
        let mut report = PassReport::default();
        let id_fields = self.plugins.credential_id_fields().await?;
        let mut vetter = Vetter::new(&self.plugins, &self.identity, id_fields);
        let work = select(vault.as_ref(), &self.opts, &mut vetter, &mut report).await;
        let (work, holdings) = vetter.finish(work, &mut report);
        let writer = Arc::new(VaultWriter::new(vault));

        let groups = by_login(work);
        let slots: Arc<Vec<Slots>> = Arc::new(
            self.plugins
                .members()
                .iter()
                .map(|m| Slots::new(m.jobs, BATCH, m.plugin.limits().memory_bytes))
                .collect(),
        );
        let mut tasks = JoinSet::new();
        for (_, group) in groups {
            // Counted before any task runs, so the first save waits for it.
            let first = writer.rotating();
            let (fleet, writer, slots) = (self.clone(), writer.clone(), slots.clone());
            let holdings = holdings.clone();
            tasks.spawn(async move {
                fleet
                    .rotate_group(group, &writer, &slots, holdings, first)
                    .await
            });
        }
        while let Some(group) = tasks.join_next().await {
            for outcome in group.expect("a rotation task does not panic") {
                outcome.report_into(&mut report);
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

    /// The records of one login, one after another, each in its plugin's
    /// turn. `first` counts the first as under way from before the task ran.
    async fn rotate_group(
        &self,
        group: Vec<Work>,
        writer: &VaultWriter,
        slots: &[Slots],
        holdings: Arc<Holdings>,
        first: Rotating,
    ) -> Vec<Done> {
        let mut done = Vec::new();
        let mut counted = Some(first);
        for w in group {
            let under_way = counted.take().unwrap_or_else(|| writer.rotating());
            let turn = slots[w.plugin].begin().await;
            if self.stopping.load(Ordering::SeqCst) {
                done.push(Done::Skipped(w.job.user_uid));
                continue;
            }
            let started = Instant::now();
            let core = Rotator {
                plugin: &self.plugins.members()[w.plugin].plugin,
                writer,
                identity: &self.identity,
                holdings: holdings.clone(),
                stopping: &self.stopping,
                turn: Some(&turn),
            };
            let result = rotate_record(&core, &w.job, w.records.clone(), under_way).await;
            let audit = self.audit(&w, &result, started.elapsed());
            done.push(Done::Ran {
                uid: w.job.user_uid,
                next_due: w.next_due,
                result: Box::new(result),
                audit,
            });
        }
        done
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

    /// This fleet, stopped when `old` is: a reload keeps the signal handler's flag.
    pub fn sharing_stop(mut self, old: &Fleet) -> Self {
        self.stopping = old.stopping.clone();
        self
    }

    /// Stops new rotations; running ones finish.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// What became of one record a pass took on.
enum Done {
    Ran {
        uid: String,
        next_due: Option<String>,
        result: Box<Result<RunReport, RunError>>,
        /// Why its audit line is missing, if it is.
        audit: Option<String>,
    },
    /// Not started: the gateway is stopping.
    Skipped(String),
}

impl Done {
    fn report_into(self, report: &mut PassReport) {
        match self {
            Done::Ran {
                uid,
                next_due,
                result,
                audit,
            } => {
                let mut e = Entry::new(&uid);
                e.next_due = next_due;
                record(report, e, *result);
                report.audit_failures.extend(audit);
            }
            Done::Skipped(uid) => {
                let mut e = Entry::new(&uid);
                e.error = Some("the gateway is stopping; it was not started".into());
                report.skipped.push(e);
            }
        }
    }
}

/// The work grouped by login, each group to run one after another.
/// Rotations of one login never overlap, whatever config or signer they go
/// through: two routes to one IAM user (two signing keys, two spellings of
/// the endpoint) could otherwise delete each other's new key. Logins of
/// different accounts that happen to match only wait.
fn by_login(work: Vec<Work>) -> BTreeMap<(usize, String), Vec<Work>> {
    let mut groups: BTreeMap<(usize, String), Vec<Work>> = BTreeMap::new();
    for w in work {
        // Per plugin, so a plugin naming another's logins cannot queue them behind its own.
        let key = match &w.subject {
            Some(s) => (w.plugin, s.login.clone()),
            None => (w.plugin, format!("\u{0}{}", w.job.user_uid)),
        };
        groups.entry(key).or_default().push(w);
    }
    groups
}
