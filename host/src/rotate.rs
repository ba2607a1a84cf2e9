//! One rotation, step by step (docs/design.md): read the records, `rotate`, store the
//! new credential durably, then `finalize`, or `rollback` if storing failed.

use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

use crate::allowlist::{AllowList, AllowedOrigin, NetworkPolicy};
use crate::engine::{Instance, Limits, Plugin, SandboxError};
use crate::plugin::{ConfigItem, Context, ItemType, PluginError, ValueKind};
use crate::vault::{Record, Vault, VaultError, VaultOptions};

/// The record type of a PAM user record.
pub const PAM_USER_TYPE: &str = "pamUser";

/// What `rotate-host run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub guest: PathBuf,
    pub vault: PathBuf,
    pub user_uid: String,
    pub config_uid: String,
    pub provider_uid: Option<String>,
    pub dry_run: bool,
    pub limits: Limits,
    pub vault_options: VaultOptions,
    pub cache_dir: Option<PathBuf>,
}

/// What a run did. Holds key ids, never secrets.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `rotated`, or `planned` for a dry run.
    pub status: &'static str,
    pub user_uid: String,
    pub created: Option<String>,
    pub retired: Vec<String>,
    pub notes: Vec<String>,
}

/// Why a run failed. Every message says what happened to the vault and to the
/// service, and what to do next.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
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
        source: Box<VaultError>,
        rollback: String,
    },
    #[error("the new key {created} is stored in the vault, but the rotation did not finish: {why}")]
    NotFinalized { created: String, why: String },
}

impl RunError {
    /// The process exit code: 1 failed (nothing changed or rolled back), 2 bad
    /// input, 3 new key stored but the old one not yet removed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Vault(e) if e.is_bad_input() => 2,
            Self::Sandbox(e) if e.is_bad_input() => 2,
            Self::Plugin {
                error: PluginError::InvalidConfig(_),
                ..
            } => 2,
            Self::NotFinalized { .. } => 3,
            _ => 1,
        }
    }
}

/// Runs one rotation.
pub fn run(opts: &RunOptions) -> Result<RunReport, RunError> {
    crate::engine::block_on(run_async(opts))
}

async fn run_async(opts: &RunOptions) -> Result<RunReport, RunError> {
    // The lock is held until the vault is dropped, at the end of the run.
    let mut vault = Vault::open(&opts.vault, &opts.vault_options)?;
    let user = vault.record(&opts.user_uid, "-u", Some(PAM_USER_TYPE))?;
    let config = vault.record(&opts.config_uid, "-c", None)?;
    let provider = opts
        .provider_uid
        .as_deref()
        .map(|uid| vault.record(uid, "--configuration-uid", None))
        .transpose()?;

    let plugin = Plugin::load(&opts.guest, opts.limits.clone(), opts.cache_dir.as_deref())?;
    let mut instance = plugin.instantiate().await?;
    let info = instance.info().await?;
    let schema = instance.config_schema().await?;
    for secret in secrets(&schema, &user, &config, provider.as_ref()) {
        instance.add_secret(&secret);
    }
    instance.allow(allow_list(
        &info.allowed_hosts,
        &schema,
        &config,
        &opts.limits.network,
    )?);
    let ctx = Context {
        user,
        config,
        provider,
        dry_run: opts.dry_run,
    };
    tracing::info!(plugin = %info.name, user = %opts.user_uid, dry_run = opts.dry_run, "rotating");

    let rotation = match instance.rotate(&ctx).await {
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
        instance.add_secret(f.value.expose());
    }
    let mut report = RunReport {
        status: if opts.dry_run { "planned" } else { "rotated" },
        user_uid: opts.user_uid.clone(),
        created: rotation.created.as_deref().map(|c| instance.clean(c)),
        retired: vec![],
        notes: rotation.notes.clone(),
    };
    if opts.dry_run {
        return Ok(report);
    }
    let Some(created) = report.created.clone() else {
        return Err(RunError::Plugin {
            stage: "rotate",
            error: PluginError::Failed("the plugin returned no new credential".into()),
        });
    };
    tracing::info!(key = %created, "new key created; storing it before anything is deleted");

    // Step 4: store durably before any old key is touched (I1, I2).
    let stored = vault
        .set_fields(&opts.user_uid, &rotation.fields)
        .and_then(|()| vault.save());
    if let Err(source) = stored {
        let rollback = rollback(&mut instance, &ctx, &rotation, &created).await;
        return Err(RunError::StoreFailed {
            created,
            source: Box::new(source),
            rollback,
        });
    }
    tracing::info!(key = %created, vault = %vault.path().display(), "new key stored");

    // Step 5: prove the new key works, then retire the old one.
    match instance.finalize(&ctx, &rotation).await {
        Ok(Ok(retired)) => {
            for id in &retired {
                tracing::info!(key = %id, "old key retired");
            }
            report.retired = retired;
            Ok(report)
        }
        Ok(Err(e)) => Err(RunError::NotFinalized {
            created,
            why: e.to_string(),
        }),
        Err(e) => Err(RunError::NotFinalized {
            created,
            why: e.to_string(),
        }),
    }
}

async fn rollback(
    instance: &mut Instance,
    ctx: &Context,
    rotation: &crate::plugin::Rotation,
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

/// The plugin's declared hosts, plus exactly the origin of every `url` config
/// value, narrowed by the operator's `policy`.
pub fn allow_list(
    declared: &[String],
    schema: &[ConfigItem],
    config: &Record,
    policy: &NetworkPolicy,
) -> Result<AllowList, SandboxError> {
    let mut origins = declared
        .iter()
        .map(|p| AllowedOrigin::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    for item in schema.iter().filter(|i| i.item_type == ItemType::Url) {
        if let Some(url) = config.value(&item.label) {
            // A malformed URL is left for the plugin to report.
            if let Ok(origin) = AllowedOrigin::of_url(url) {
                origins.push(origin);
            }
        }
    }
    Ok(AllowList::new(origins, policy.clone()))
}


/// Values to mask in anything the guest says: the config's secret items (by
/// schema), and elsewhere any field whose type or label says secret or password.
fn secrets(
    schema: &[ConfigItem],
    user: &Record,
    config: &Record,
    provider: Option<&Record>,
) -> Vec<String> {
    let looks_secret = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.contains("secret") || s.contains("password")
    };
    let schema_says = |label: Option<&str>| {
        let label = label?;
        schema
            .iter()
            .find(|i| i.label.eq_ignore_ascii_case(label.trim()))
            .map(|i| i.is_secret)
    };
    let mut out = Vec::new();
    for (record, is_config) in [(Some(user), false), (Some(config), true), (provider, false)] {
        for f in record.into_iter().flat_map(|r| &r.fields) {
            let by_schema = if is_config {
                schema_says(f.label.as_deref())
            } else {
                None
            };
            let secret = by_schema.unwrap_or_else(|| {
                looks_secret(&f.kind) || f.label.as_deref().is_some_and(looks_secret)
            });
            if secret {
                out.extend(f.values.iter().map(|v| v.expose().to_string()));
            }
        }
    }
    out
}
