//! The plugin's own view of the WIT types, free of bindings so the logic is testable natively.

use crate::secret::Secret;

/// One field of a vault record (`fields` then `custom`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Field {
    pub kind: String,
    pub label: Option<String>,
    pub values: Vec<String>,
}

impl Field {
    /// The first value, trimmed; blank means absent.
    pub fn first_value(&self) -> Option<&str> {
        self.values.iter().map(|v| v.trim()).find(|v| !v.is_empty())
    }
}

/// A vault record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub uid: String,
    pub record_type: String,
    pub title: String,
    pub fields: Vec<Field>,
}

impl Record {
    /// The first field whose label is one of `labels`, compared case-insensitively.
    pub fn by_label(&self, labels: &[&str]) -> Option<&Field> {
        self.fields.iter().find(|f| {
            f.label.as_deref().is_some_and(|l| {
                labels
                    .iter()
                    .any(|want| l.trim().eq_ignore_ascii_case(want))
            })
        })
    }

    /// The first field of type `kind`, compared case-insensitively.
    pub fn by_kind(&self, kind: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|f| f.kind.eq_ignore_ascii_case(kind))
    }

    /// The trimmed, non-blank first value of the field labelled one of `labels`.
    pub fn value(&self, labels: &[&str]) -> Option<&str> {
        self.by_label(labels).and_then(Field::first_value)
    }
}

/// The host's own AWS identity, lent to the plugin (the third way to sign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCredential {
    pub id: String,
    pub secret: Secret,
    pub session_token: Option<Secret>,
}

/// A key an earlier `finalize` deactivated, as the host recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deactivated {
    pub id: String,
    /// When, as the host wrote it.
    pub since: String,
    /// Still active, kept for its consumers (`retire-when-unused`).
    pub kept: bool,
    /// Act now: delete it (turned off, grace period over), or deactivate it
    /// (kept, and unused for long enough).
    pub expired: bool,
}

/// A kept key's last use, as IAM reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredentialUse {
    pub id: String,
    pub found: bool,
    pub last_used: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
}

/// What the host hands to `rotate`, `finalize`, `rollback` and `purge`.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub user: Record,
    pub config: Record,
    pub provider: Option<Record>,
    pub dry_run: bool,
    /// How long this call may run before the host stops it; `None` means no limit.
    pub deadline: Option<std::time::Duration>,
    pub host_credential: Option<HostCredential>,
    pub deactivated: Vec<Deactivated>,
}

impl Context {
    /// The host's record of `id`, if an earlier rotation deactivated it.
    pub fn deactivated(&self, id: &str) -> Option<&Deactivated> {
        self.deactivated.iter().find(|d| d.id == id)
    }
}

/// How the vault stores a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Text,
    Secret,
}

/// A value the host stores in the PAM user record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputField {
    pub label: String,
    pub aliases: Vec<String>,
    pub kind: ValueKind,
    pub value: Secret,
}

/// The outcome of `rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rotation {
    pub fields: Vec<OutputField>,
    pub created: Option<String>,
    pub retire: Vec<String>,
    /// Keys `rotate` deleted to make room.
    pub deleted: Vec<String>,
    pub notes: Vec<String>,
}

impl Rotation {
    /// The stored value of the field labelled `label`.
    pub fn field(&self, label: &str) -> Option<&Secret> {
        self.fields
            .iter()
            .find(|f| f.label.eq_ignore_ascii_case(label))
            .map(|f| &f.value)
    }
}

/// What a record's rotation would change, from the records alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub service: String,
    pub login: String,
    pub fixed_by_config: bool,
}

/// The outcome of `finalize` and `purge`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Finalized {
    /// Keys deleted (or found gone).
    pub retired: Vec<String>,
    /// Keys set `Inactive` and kept for the grace period.
    pub deactivated: Vec<String>,
    /// Old keys left active for their consumers (`retire-when-unused`).
    pub kept: Vec<String>,
    pub notes: Vec<String>,
}
