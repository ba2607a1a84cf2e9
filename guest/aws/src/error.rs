//! The plugin's typed errors. Messages say what failed, why and what to do; never a secret.

use thiserror::Error;

/// An error handed back to the host; mirrors WIT's `plugin-error`.
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
    /// The same kind of error with `prefix` put before its message.
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        let wrap = |m: String| format!("{prefix}: {m}");
        match self {
            Self::InvalidConfig(m) => Self::InvalidConfig(wrap(m)),
            Self::Denied(m) => Self::Denied(wrap(m)),
            Self::NotFound(m) => Self::NotFound(wrap(m)),
            Self::Conflict(m) => Self::Conflict(wrap(m)),
            Self::Unavailable(m) => Self::Unavailable(wrap(m)),
            Self::Failed(m) => Self::Failed(wrap(m)),
        }
    }
}
