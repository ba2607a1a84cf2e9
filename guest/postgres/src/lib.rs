//! A `pam:rotation` plugin that rotates a PostgreSQL role's password.
//!
//! `rotate` makes a password to the config's policy (WASI random) and returns
//! it as a *staged* rotation: the host stores it beside the live one first.
//! `finalize` then sets it with `ALTER ROLE ... PASSWORD` and a SCRAM-SHA-256
//! verifier computed here, so the plaintext never reaches the server or its
//! logs, and proves that the new password logs in and the old one does not.
//! The only way out is the host's `tcp` import; the host does TLS.

pub mod policy;
pub mod rotation;
pub mod settings;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod component;

/// The plugin's name: a config record's `SaaS Type` selects it.
pub const NAME: &str = "PostgreSQL";
pub const SUMMARY: &str = "Rotates a PostgreSQL role's password (SCRAM-SHA-256), staged so the vault never loses a working one.";

use std::fmt;

/// A password or other secret. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the wire and for the host's vault.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What kind of failure a `Failure` is: the WIT `plugin-error` case it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The records are wrong: the user fixes the vault.
    InvalidConfig,
    /// The server refused the login or the change.
    Denied,
    /// The role does not exist.
    NotFound,
    /// The server's state rules out a safe rotation.
    Conflict,
    /// The network or server failed; try again later.
    Unavailable,
    Failed,
}

/// A failure with a message that says what failed, why and what to do; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
