//! Where records live: a vault backend behind one trait (docs/design.md, §6).
//!
//! - `file`: a JSON file of Keeper-shaped records, locked for the whole run and
//!   replaced atomically (the default, `--vault`);
//! - `ksm`: Keeper itself, through Keeper Secrets Manager (`--ksm-config`).
//!
//! Both hold records in Keeper's shape, so reading a record and changing its
//! fields are the same code here.

pub mod file;
mod file_lock;
mod json_index;
pub mod keeper_shape;
#[cfg(feature = "ksm")]
pub mod ksm;
pub mod lease;
mod record_json;
pub mod writer;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::record::Record;
use crate::record::StoreField;

pub use file::FileVault;

/// Which vault a command works on: `--vault FILE` or `--ksm-config FILE`.
#[derive(Debug, Clone)]
pub enum VaultSource {
    File(PathBuf),
    #[cfg(feature = "ksm")]
    Ksm(ksm::KsmConfig),
}

impl VaultSource {
    /// Opens it. Both backends read every record, so that a rotation knows
    /// which credentials the other records hold (I6).
    pub fn open(&self, opts: &VaultOptions) -> Result<Box<dyn Vault>, VaultError> {
        match self {
            Self::File(path) => Ok(Box::new(FileVault::open(path, opts)?)),
            #[cfg(feature = "ksm")]
            Self::Ksm(config) => Ok(Box::new(ksm::KsmVault::open(config, opts)?)),
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

    /// Record `uid` as last read, if the vault has it.
    fn record(&self, uid: &str) -> Option<Record>;

    /// Where a missing record was looked for, and where else to look: for
    /// the message that names it.
    fn missing(&self) -> (String, &'static str);

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

    /// Whether each save rewrites the whole vault, so that saves are worth
    /// gathering (the file vault); Keeper updates one record per call.
    fn rewrites_whole(&self) -> bool {
        false
    }
}

impl dyn Vault + '_ {
    /// Record `uid`, given to `named_by` (a flag, or another record's field),
    /// checked to be of type `expected` when given.
    pub fn named(
        &self,
        uid: &str,
        named_by: &'static str,
        expected: Option<&'static str>,
    ) -> Result<Record, VaultError> {
        let Some(record) = self.record(uid) else {
            let (place, hint) = self.missing();
            return Err(VaultError::NoRecord {
                place,
                uid: uid.to_string(),
                named_by,
                hint,
            });
        };
        keeper_shape::of_type(record, uid, named_by, expected)
    }
}

/// Why the vault could not be used. The file vault is unchanged in every
/// case; in Keeper, only `KsmUncertain` leaves a write whose outcome is unknown.
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
        "{path} is readable or writable by group or others (mode {mode:04o}) and holds secrets; run `chmod 600 {path}`, or drop --strict-permissions to only be warned"
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
    #[error("{place} has no record with UID '{uid}' (given to {named_by}): check the UID{hint}")]
    NoRecord {
        place: String,
        uid: String,
        named_by: &'static str,
        hint: &'static str,
    },
    #[error(
        "record '{uid}' is no longer in the vault: someone removed it while it was being \
         rotated. Nothing was written to it; check who removed it"
    )]
    Vanished { uid: String },
    #[error(
        "record '{uid}' (given to {named_by}) has type '{found}', not '{expected}': pass the UID of a {expected} record"
    )]
    WrongType {
        uid: String,
        named_by: &'static str,
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
        "Keeper refused this KSM application's requests as badly signed ({why}): the KSM \
         config's private key is not the one its device was bound with, or the device was \
         removed from the application. Nothing was changed. Redeem a new one-time token (README, \
         'Keeper Secrets Manager') and pass the config it writes"
    )]
    KsmBadSignature { why: String },
    #[error(
        "record '{uid}' is shared with this KSM application read-only, so a new credential could \
         not be stored: nothing was created. Give the application edit rights on the record's \
         shared folder (Can Edit), then run again"
    )]
    KsmReadOnly { uid: String },
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
                | Self::Vanished { .. }
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
