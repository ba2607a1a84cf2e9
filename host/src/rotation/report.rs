//! What a run did, or why it failed: the report and the error every command
//! prints, with the exit code each error maps to.

use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

use crate::exit::Exit;
use crate::fields::BadField;
use crate::rotation::identity::IdentityError;
use crate::rotation::job::Job;
use crate::rotation::usage::KeyInUse;
use crate::rotation::vetting::VetError;
use crate::sandbox::engine::{CallError, SandboxError};
use crate::sandbox::plugin::PluginError;
use crate::text::printable;
use crate::vault::VaultError;

/// How one record's attempt ended: in a run's report, in a pass's lists and
/// in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new credential stored, and the old one retired.
    Rotated,
    /// Not due: only keys whose grace period ended were deleted.
    Purged,
    /// A dry run: what the plugin would do.
    Planned,
    /// The new credential stored, the old one not yet retired (exit 3).
    NotFinalized,
    /// Not attempted: the gateway was stopping, or another writer leases the record.
    Skipped,
    Failed,
}

impl Outcome {
    /// The outcome of one attempt.
    pub fn of(result: &Result<RunReport, RunError>) -> Self {
        match result {
            Ok(r) => r.status,
            Err(
                RunError::NotFinalized { .. }
                | RunError::StagedNotFinished { .. }
                | RunError::PromoteFailed { .. },
            ) => Self::NotFinalized,
            Err(RunError::Stopping) => Self::Skipped,
            Err(RunError::Vault(e)) if matches!(**e, VaultError::Leased { .. }) => Self::Skipped,
            Err(_) => Self::Failed,
        }
    }
}

/// What a run did. Holds key ids, never secrets.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `Rotated`, `Purged` (only deactivated keys deleted), or `Planned` for a dry run.
    pub status: Outcome,
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
    pub(crate) fn new(job: &Job, notes: Vec<String>) -> Self {
        Self {
            status: if job.dry_run {
                Outcome::Planned
            } else {
                Outcome::Rotated
            },
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
    /// Reading, leasing or saving: a save's error is shared by its batch.
    #[error("{0}")]
    Vault(Arc<VaultError>),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Plugins(#[from] crate::sandbox::plugin_set::PluginSetError),
    #[error("{0}; nothing was changed")]
    BadField(BadField),
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
    #[error(
        "the new credential could not be staged in the vault: {source}. Nothing was changed at \
         the service; the vault's credential still works"
    )]
    StageFailed { source: Arc<VaultError> },
    #[error(
        "the new credential is staged in the vault's 'Rotation Staged' field, but the rotation did \
         not finish: {why}. The service may already have it: run again, and the next run \
         finishes the rotation with the staged value"
    )]
    StagedNotFinished { why: String },
    #[error(
        "the service has the new credential, but making it live in the vault failed: {source}. \
         It is kept in the 'Rotation Staged' field: run again, and the next run finishes with it"
    )]
    PromoteFailed { source: Arc<VaultError> },
    #[error(
        "the plugin asked to store field '{label}', which the host keeps on the record; nothing \
         was stored. A plugin that does this is broken or hostile: do not run it"
    )]
    HostField { label: String },
    #[error("the plugin's rotation is refused: {why}. Nothing was stored")]
    BadStaged { why: String },
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

impl From<VaultError> for RunError {
    fn from(e: VaultError) -> Self {
        Self::Vault(Arc::new(e))
    }
}

/// A plugin call's failure, the same way for every call: the plugin's own
/// error names the call; a stopped or broken `rotate` may have created a key.
impl From<CallError> for RunError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Refused { call, error } => Self::Plugin { stage: call, error },
            CallError::Failed(source) | CallError::Stopped(source)
                if source.call() == Some("rotate") =>
            {
                Self::RotateStopped { source }
            }
            CallError::Failed(source) | CallError::Stopped(source) => Self::Sandbox(source),
        }
    }
}

impl RunError {
    /// How the command ends: failed (nothing changed or rolled back), bad
    /// input, or the new key stored but the old one not yet removed.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Vault(e) => Exit::usage_if(e.is_bad_input()),
            Self::Sandbox(e) => Exit::usage_if(e.is_bad_input()),
            Self::Plugins(e) => Exit::usage_if(e.is_bad_input()),
            Self::BadField(_) | Self::SharedCredential { .. } | Self::LentToRecordOrigin { .. } => {
                Exit::Usage
            }
            Self::Vetting(e) => e.exit(),
            Self::Plugin {
                error: PluginError::InvalidConfig(_),
                ..
            } => Exit::Usage,
            Self::NotFinalized { .. }
            | Self::StoreUncertain { .. }
            | Self::StagedNotFinished { .. }
            | Self::PromoteFailed { .. } => Exit::NotFinalized,
            _ => Exit::Failed,
        }
    }
}
