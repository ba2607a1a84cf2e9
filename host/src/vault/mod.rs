//! Where records live: a vault backend behind one trait (docs/design.md, §6).
//!
//! - `file`: a JSON file of Keeper-shaped records, locked for the whole run and
//!   replaced atomically (the default, `--vault`);
//! - `ksm`: Keeper itself, through Keeper Secrets Manager (`--ksm-config`).
//!
//! Both hold records in Keeper's shape, so reading a record and changing its
//! fields are the same code here.

pub mod file;
#[cfg(feature = "ksm")]
pub mod ksm;
pub mod lease;
pub mod writer;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::sandbox::plugin::StoreField;
use crate::secret::Secret;

pub use file::{FileVault, UndoPoint};

/// Which vault a command works on: `--vault FILE` or `--ksm-config FILE`.
#[derive(Debug, Clone)]
pub enum VaultSource {
    File(PathBuf),
    #[cfg(feature = "ksm")]
    Ksm(ksm::KsmConfig),
}

impl VaultSource {
    /// Opens it, checking that `records` (UID and the flag that named it)
    /// exist. Both backends read every record, so that a rotation knows which
    /// credentials the other records hold (I6).
    pub fn open(
        &self,
        records: Option<&[(&str, &'static str)]>,
        opts: &VaultOptions,
    ) -> Result<Box<dyn Vault>, VaultError> {
        let _ = records;
        match self {
            Self::File(path) => Ok(Box::new(FileVault::open(path, opts)?)),
            #[cfg(feature = "ksm")]
            Self::Ksm(config) => Ok(Box::new(ksm::KsmVault::open(config, records, opts)?)),
        }
    }

    /// Where the records are, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            #[cfg(feature = "ksm")]
            Self::Ksm(config) => format!("Keeper (KSM config {})", config.origin),
        }
    }
}

/// A change to one record: fields to set and labels to remove.
#[derive(Debug, Clone)]
pub struct Change {
    pub uid: String,
    pub fields: Vec<StoreField>,
    pub remove: Vec<&'static str>,
    /// The store that carries a rotation's new credential (KSM records it as a
    /// rotation transaction); markers and ledgers are plain updates.
    pub rotation: bool,
}

/// A vault backend: reads records, and writes changes as durably as it can.
pub trait Vault: Send {
    /// The UIDs of every record it can show, in its order.
    fn uids(&self) -> Vec<String>;

    /// Record `uid` (given to `flag`), checked to be of type `expected` when given.
    fn record(
        &self,
        uid: &str,
        flag: &'static str,
        expected: Option<&'static str>,
    ) -> Result<Record, VaultError>;

    /// Takes the rotation lease on `uid` before anything is created, and
    /// settles what a dead writer left half-done (Keeper: an open rotation
    /// transaction); true when it was written (the record changed: read it
    /// again, and release it when the rotation ends). A vault with a lock of its own needs none: the
    /// file vault's lock excludes every other writer on this host, and the
    /// file vault is single-host.
    fn lease(&mut self, uid: &str, lease: &lease::Lease) -> Result<bool, VaultError> {
        let _ = (uid, lease);
        Ok(false)
    }

    /// Refuses `uid` when another writer holds a live lease on it, as last
    /// read; writes nothing.
    fn check_lease(&self, uid: &str) -> Result<(), VaultError> {
        let _ = uid;
        Ok(())
    }

    /// Removes the lease `lease` from `uid` if it still holds it.
    fn release(&mut self, uid: &str, lease: &lease::Lease) -> Result<(), VaultError> {
        let _ = (uid, lease);
        Ok(())
    }

    /// Writes `batch` and returns each change's outcome; `Ok` means durable.
    /// A change that failed is not visible in later reads or writes.
    fn save(&mut self, batch: &[Change]) -> Vec<Result<(), Arc<VaultError>>>;
}

/// Why the vault could not be used. The file is unchanged in every case.
#[derive(Debug, Error)]
pub enum VaultError {
    #[error("vault {path} does not exist: check --vault, or create it with `rotate-host config`")]
    NotFound { path: PathBuf },
    #[error("vault {path} is a folder: pass the path of the vault file to --vault")]
    IsFolder { path: PathBuf },
    #[error(
        "vault {path} is {what}, not a regular file: refusing to read or replace it; pass the path of the vault file itself"
    )]
    NotRegular { path: PathBuf, what: &'static str },
    #[error(
        "vault {path} is {size} bytes, over the {max}-byte cap: if it really is this large, raise --max-vault-mib"
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error(
        "vault {path} is readable or writable by group or others (mode {mode:04o}) and holds secrets; run `chmod 600 {path}`, or drop --strict-permissions to only be warned"
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error(
        "vault {path} is owned by uid {uid} and gid {gid}, which this user cannot give a rewritten file; run as its owner (or root) so the owner, group and mode survive the rewrite"
    )]
    Ownership { path: PathBuf, uid: u32, gid: u32 },
    #[error("could not read vault {path}: {source}; check the path and its permissions")]
    Read { path: PathBuf, source: io::Error },
    #[error("vault {path} is malformed: {why}. It was left untouched; fix it or restore a backup")]
    Malformed { path: PathBuf, why: String },
    #[error("vault {path} has no record with UID '{uid}' (given to {flag}): check the UID")]
    NoRecord {
        path: PathBuf,
        uid: String,
        flag: &'static str,
    },
    #[error(
        "record '{uid}' (given to {flag}) has type '{found}', not '{expected}': pass the UID of a {expected} record"
    )]
    WrongType {
        uid: String,
        flag: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error(
        "vault {path} is locked by another rotate-host run; waited {waited:?}. Try again when it \
         finishes, or raise --lock-timeout"
    )]
    Locked { path: PathBuf, waited: Duration },
    #[error(
        "lock file {path} is {what}, not a regular file: someone may be interfering with the vault's folder; remove it and check who can write there"
    )]
    LockNotRegular { path: PathBuf, what: &'static str },
    #[error(
        "could not lock vault {path}: {source}; check that its folder is writable by this user"
    )]
    Lock { path: PathBuf, source: io::Error },
    #[error("could not write vault {path}: {source}. The vault file was left as it was")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "KSM config {origin} is unusable: {why}. Get one by creating an application in Keeper, \
         sharing the folder with it and redeeming a one-time token (README, 'Keeper Secrets Manager')"
    )]
    KsmConfig { origin: String, why: String },
    #[error("{var} is set, and {why}: unset it to use --ksm-config")]
    KsmEnv {
        var: &'static str,
        why: &'static str,
    },
    #[error(
        "Keeper Secrets Manager: {action} failed: {why}. Check the network and that the KSM \
         application may use the record's shared folder, then run again"
    )]
    Ksm { action: &'static str, why: String },
    #[error(
        "Keeper returned no record with UID '{uid}' (given to {flag}): check the UID, and that the \
         record is in a shared folder of this KSM application (a record Keeper cannot decrypt for \
         it is left out too)"
    )]
    KsmNoRecord { uid: String, flag: &'static str },
    #[error(
        "record '{uid}' changed in Keeper since it was read (its revision moved): it was not \
         overwritten. Someone or another gateway edited it; run again"
    )]
    KsmConflict { uid: String },
    #[error(
        "storing record '{uid}' in Keeper may or may not have taken effect ({why}), and rolling \
         it back failed too"
    )]
    KsmUncertain { uid: String, why: String },
    #[error(
        "record '{uid}' is being rotated by {owner} (its lease runs until {until}): nothing was \
         changed. Run again after that; a writer that died leaves its lease to expire then, or at \
         once if it ran on this host"
    )]
    Leased {
        uid: String,
        owner: String,
        until: String,
    },
}

impl VaultError {
    /// True when the file or the command line is wrong (exit 2), rather than a
    /// passing condition such as a held lock or a full disk.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            Self::Read { .. }
                | Self::Locked { .. }
                | Self::Lock { .. }
                | Self::Write { .. }
                | Self::Ksm { .. }
                | Self::KsmConflict { .. }
                | Self::KsmUncertain { .. }
                | Self::Leased { .. }
        )
    }

    /// The write may have taken effect although it reported failure: the new
    /// credential may be stored, so it must not be deleted.
    pub fn is_uncertain(&self) -> bool {
        matches!(self, Self::KsmUncertain { .. })
    }
}

/// How to open a vault.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// How long to wait for another run's lock.
    pub lock_timeout: Duration,
    /// The largest vault file read, in bytes.
    pub max_bytes: u64,
    /// Refuse a vault that group or others may read, instead of warning.
    pub strict_permissions: bool,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(30),
            max_bytes: 64 << 20,
            strict_permissions: false,
        }
    }
}

/// One field of a record, from `fields` or `custom`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub kind: String,
    pub label: Option<String>,
    /// Every value is treated as secret: the host never prints record values.
    pub values: Vec<Secret>,
}

/// A record as the host hands it to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: String,
    pub record_type: String,
    pub title: String,
    pub fields: Vec<Field>,
}

#[cfg(test)]
impl Record {
    /// A PAM user record `uid` with one-value fields `(kind, label, value)`
    /// (an empty label is none), for unit tests.
    pub fn for_test(uid: &str, fields: &[(&str, &str, &str)]) -> Self {
        Self {
            uid: uid.into(),
            record_type: "pamUser".into(),
            title: String::new(),
            fields: fields
                .iter()
                .map(|(kind, label, value)| Field {
                    kind: kind.to_string(),
                    label: (!label.is_empty()).then(|| label.to_string()),
                    values: vec![Secret::new(*value)],
                })
                .collect(),
        }
    }
}

impl Record {
    /// The first non-blank value of the first field labelled `label`, trimmed.
    /// Labels match in any case and around spaces: the one place that decides it.
    pub fn value(&self, label: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| {
                f.label
                    .as_deref()
                    .is_some_and(|l| l.trim().eq_ignore_ascii_case(label))
            })
            .and_then(|f| {
                f.values
                    .iter()
                    .map(|v| v.expose().trim())
                    .find(|v| !v.is_empty())
            })
    }

    /// The first value of the first field of type `kind`, trimmed.
    pub fn value_of_type(&self, kind: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.kind.eq_ignore_ascii_case(kind))
            .and_then(|f| f.values.first())
            .map(|v| v.expose().trim())
            .filter(|v| !v.is_empty())
    }
}

/// Sets `fields` on a Keeper-shaped record: every field labelled with the label
/// or an alias (any case) is replaced and relabelled; if there is none, a custom
/// field is added. Nothing else in the record changes.
pub fn apply_fields(record: &mut Map<String, Value>, fields: &[StoreField]) {
    for f in fields {
        let names = std::iter::once(&f.label).chain(&f.aliases);
        let matches = |v: &Value| {
            v.get("label")
                .and_then(Value::as_str)
                .is_some_and(|l| names.clone().any(|n| l.trim().eq_ignore_ascii_case(n)))
        };
        let new_field = |old: Option<&Value>| {
            let mut obj = old.and_then(Value::as_object).cloned().unwrap_or_default();
            obj.insert("type".into(), json!(f.kind.field_type()));
            obj.insert("label".into(), json!(f.label));
            obj.insert("value".into(), json!([f.value.expose()]));
            Value::Object(obj)
        };
        let mut found = false;
        for section in ["fields", "custom"] {
            if let Some(list) = record.get_mut(section).and_then(Value::as_array_mut) {
                for item in list.iter_mut().filter(|v| matches(v)) {
                    *item = new_field(Some(item));
                    found = true;
                }
            }
        }
        if !found {
            let custom = record
                .entry("custom")
                .or_insert_with(|| Value::Array(vec![]));
            if !custom.is_array() {
                *custom = Value::Array(vec![]);
            }
            custom.as_array_mut().expect("array").push(new_field(None));
        }
    }
}

/// Removes every field labelled `label` (any case); returns whether one was.
pub fn remove_label(record: &mut Map<String, Value>, label: &str) -> bool {
    let mut removed = false;
    for section in ["fields", "custom"] {
        if let Some(list) = record.get_mut(section).and_then(Value::as_array_mut) {
            let before = list.len();
            list.retain(|v| {
                !v.get("label")
                    .and_then(Value::as_str)
                    .is_some_and(|l| l.trim().eq_ignore_ascii_case(label))
            });
            removed |= list.len() != before;
        }
    }
    removed
}

/// `record` (read for `uid`, given to `flag`), if it is of type `expected` when given.
pub fn of_type(
    record: Record,
    uid: &str,
    flag: &'static str,
    expected: Option<&'static str>,
) -> Result<Record, VaultError> {
    match expected {
        Some(expected) if !record.record_type.eq_ignore_ascii_case(expected) => {
            Err(VaultError::WrongType {
                uid: uid.to_string(),
                flag,
                found: record.record_type,
                expected,
            })
        }
        _ => Ok(record),
    }
}

/// A record in Keeper's shape (`uid`, `type`, `title`, `fields`, `custom`) as the
/// host sees it: every value as text, non-string values as their JSON.
pub fn to_record(raw: &Value) -> Record {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let fields = ["fields", "custom"]
        .iter()
        .filter_map(|s| raw.get(*s).and_then(Value::as_array))
        .flatten()
        .map(|f| Field {
            kind: f.get("type").map(text).unwrap_or_default(),
            label: f.get("label").and_then(Value::as_str).map(str::to_string),
            values: match f.get("value") {
                Some(Value::Array(vs)) => vs.iter().map(|v| Secret::new(text(v))).collect(),
                Some(v) => vec![Secret::new(text(v))],
                None => vec![],
            },
        })
        .collect();
    Record {
        uid: raw.get("uid").map(text).unwrap_or_default(),
        record_type: raw.get("type").map(text).unwrap_or_default(),
        title: raw.get("title").map(text).unwrap_or_default(),
        fields,
    }
}
