//! The plugin's API in the host's own types (see `bindings` for the conversions).

use thiserror::Error;

use crate::record::StoreField;
use crate::secret::Secret;

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub summary: String,
    pub version: String,
    pub can_rollback: bool,
    pub allowed_hosts: Vec<String>,
    /// Labels or field types of the fields that hold a credential id (I6).
    pub credential_id_fields: Vec<String>,
}

/// What a record's rotation would rotate, as the plugin reads the records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    /// The service account, as far as the records tell.
    pub service: String,
    /// The login whose credential rotates, normalised by the plugin.
    pub login: String,
    /// The config record names the login itself: it serves that one only.
    pub fixed_by_config: bool,
}

/// The type of a config value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    Text,
    Multiline,
    Url,
    Int,
    Number,
    Bool,
    Enum,
    Secret,
}

/// One item of a plugin's config schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigItem {
    pub id: String,
    pub label: String,
    pub desc: String,
    pub is_secret: bool,
    pub item_type: ItemType,
    pub default_value: Option<String>,
    /// Allowed values of an `enum` item, with their descriptions.
    pub enum_values: Vec<(String, String)>,
    pub required: bool,
}

/// The outcome of `rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rotation {
    pub fields: Vec<StoreField>,
    pub created: Option<String>,
    pub retire: Vec<String>,
    /// Credentials `rotate` deleted to make room.
    pub deleted: Vec<String>,
    pub notes: Vec<String>,
    /// The new credential takes effect only in `finalize` (a password): it is
    /// stored as staged first, and made live after `finalize` (design §13).
    pub staged: bool,
}

/// A plugin's refusal, handed back through WIT. The message stands alone: it
/// says what failed, why, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PluginError {
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl PluginError {
    /// The same error with its message passed through `f` (used for redaction).
    pub fn map_message(self, f: impl Fn(&str) -> String) -> Self {
        match self {
            Self::InvalidConfig(m) => Self::InvalidConfig(f(&m)),
            Self::Denied(m) => Self::Denied(f(&m)),
            Self::NotFound(m) => Self::NotFound(f(&m)),
            Self::Conflict(m) => Self::Conflict(f(&m)),
            Self::Unavailable(m) => Self::Unavailable(f(&m)),
            Self::Failed(m) => Self::Failed(f(&m)),
        }
    }
}

/// The host's own credential, lent to the plugin. `Debug` redacts the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCredential {
    pub id: String,
    pub secret: Secret,
    pub session_token: Option<Secret>,
}

/// A credential an earlier `finalize` deactivated, as the plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deactivated {
    pub id: String,
    /// RFC 3339, UTC.
    pub since: String,
    /// Still active, kept for its consumers (`retire-when-unused`).
    pub kept: bool,
    /// Act on it now: delete it (turned off), or deactivate it (kept).
    pub expired: bool,
}

/// A kept credential's last use, as the plugin reports it from the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUse {
    pub id: String,
    pub found: bool,
    pub last_used: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
}

/// The outcome of `finalize` and `purge`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Finalized {
    /// Deleted, or found gone.
    pub retired: Vec<String>,
    /// Turned off and kept for the grace period.
    pub deactivated: Vec<String>,
    /// Left active for their consumers (`retire-when-unused`).
    pub kept: Vec<String>,
    pub notes: Vec<String>,
}

/// What the host hands the plugin: the records of one rotation.
#[derive(Debug, Clone)]
pub struct Context {
    pub user: crate::record::Record,
    pub config: crate::record::Record,
    pub provider: Option<crate::record::Record>,
    pub dry_run: bool,
    pub host_credential: Option<HostCredential>,
    pub deactivated: Vec<Deactivated>,
    /// Fields an unfinished staged rotation left, to finish with.
    pub staged: Vec<crate::record::StoreField>,
}
