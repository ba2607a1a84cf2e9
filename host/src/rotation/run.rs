//! `rotate-host run`: one record, vetted against the whole vault, rotated
//! under the vault's lock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::holdings::Holdings;
use crate::rotation::flow::{Rotator, rotate_record};
use crate::rotation::identity::{GatewayIdentity, Lending};
use crate::rotation::job::{FleetReader, Job, Records};
use crate::rotation::report::{RunError, RunReport};
use crate::rotation::vetting::{self};
use crate::sandbox::engine::Limits;
use crate::sandbox::plugin_set::{PluginSet, PluginSource};
use crate::vault::writer::VaultWriter;
use crate::vault::{Vault, VaultOptions, VaultSource};

/// What `rotate-host run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// One plugin file, or a folder whose plugin the config's `SaaS Type` picks.
    pub plugins: PluginSource,
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

/// Runs one rotation (`rotate-host run`).
pub fn run(opts: &RunOptions) -> Result<RunReport, RunError> {
    crate::sandbox::runtime::block_on(async {
        // Compile before taking the lock: others wait on it for no reason otherwise.
        let plugins = PluginSet::load(
            &opts.plugins,
            &opts.limits,
            1,
            &BTreeMap::new(),
            opts.cache_dir.as_deref(),
        )
        .await?;
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
        let vault = opts.vault.open(&opts.vault_options)?;
        let records = Records::read(vault.as_ref(), &job)?;
        vetting::check_config(&records.user, &records.config, false)?;
        let mine = vetting::plugin_for(&plugins, &job.user_uid, &records.config)?;
        let holdings = vet_run(&plugins, mine, &identity, vault.as_ref(), &job, &records).await?;
        let writer = VaultWriter::new(vault);
        let core = Rotator {
            plugin: &plugins.members()[mine].plugin,
            writer: &writer,
            identity: &identity,
            holdings,
            stopping: &AtomicBool::new(false),
            turn: None,
        };
        rotate_record(&core, &job, records, writer.rotating()).await
    })
}

/// What `run` checks against the whole vault before anything is sent: who
/// holds which credential (I6), the config's scope, and that no fleet record
/// rotates the same credential as this one.
async fn vet_run(
    plugins: &PluginSet,
    plugin: usize,
    identity: &GatewayIdentity,
    vault: &dyn Vault,
    job: &Job,
    records: &Records,
) -> Result<Arc<Holdings>, RunError> {
    let id_fields = plugins.credential_id_fields().await?;
    let mut subjects = vetting::Subjects::new(&plugins.members()[plugin].plugin, identity);
    let mine = subjects.of(records).await?;
    vetting::check_scope(&job.user_uid, &mine, &records.config, false)?;
    // One record at a time: a vault is never held in memory twice.
    let holdings = Holdings::default();
    let mut reader = FleetReader::new(vault);
    for uid in vault.uids() {
        let Some(record) = vault.record(&uid) else {
            continue;
        };
        holdings.add_record(&record, &id_fields);
        if uid == job.user_uid {
            continue;
        }
        let Some((_, theirs)) = reader.records(record) else {
            continue;
        };
        // Only the same plugin's records compete: another plugin's subjects
        // are its own words and cannot fail this record.
        if vetting::plugin_for(plugins, &uid, &theirs.config).ok() != Some(plugin) {
            continue;
        }
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
