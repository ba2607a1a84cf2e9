//! One record's rotation as asked for: the job and the records it reads.

use std::collections::HashMap;

use crate::fields::PAM_USER_TYPE;
use crate::fields::labels;
use crate::record::Record;
use crate::vault::{Vault, VaultError};

/// One record's rotation, as `run`, `due` and `gateway` ask for it.
#[derive(Debug, Clone)]
pub struct Job {
    pub user_uid: String,
    pub config_uid: String,
    pub provider_uid: Option<String>,
    pub dry_run: bool,
    /// Mark the record `Rotation Pending` until `finalize` succeeds, so a fleet
    /// pass killed in between finishes the record at the next pass.
    pub mark_pending: bool,
    /// Rotate; when false, only delete deactivated keys whose grace period ended.
    pub rotate: bool,
}

/// The records of one job, read under the vault lock.
#[derive(Debug, Clone)]
pub struct Records {
    pub user: Record,
    pub config: Record,
    pub provider: Option<Record>,
}

impl Records {
    /// Reads and type-checks the job's records.
    pub fn read(vault: &dyn Vault, job: &Job) -> Result<Self, VaultError> {
        Ok(Self {
            user: vault.named(&job.user_uid, "-u", Some(PAM_USER_TYPE))?,
            config: vault.named(&job.config_uid, "-c", None)?,
            provider: job
                .provider_uid
                .as_deref()
                .map(|uid| vault.named(uid, "--configuration-uid", None))
                .transpose()?,
        })
    }
}

/// The most config and provider records a `FleetReader` keeps.
const MAX_NAMED: usize = 1024;

/// Reads fleet members' records from one vault: each config and provider
/// record is read once, however many members name it (a vault of thousands
/// of members usually names a handful).
pub struct FleetReader<'v> {
    vault: &'v dyn Vault,
    named: HashMap<(&'static str, String), Option<Record>>,
}

impl<'v> FleetReader<'v> {
    pub fn new(vault: &'v dyn Vault) -> Self {
        Self {
            vault,
            named: HashMap::new(),
        }
    }

    /// The records a fleet pass would rotate `user` with, if it is a fleet member.
    pub fn records(&mut self, user: Record) -> Option<(String, Records)> {
        if !user.record_type.eq_ignore_ascii_case(PAM_USER_TYPE) {
            return None;
        }
        let config = self.named(user.value(labels::CONFIG)?, labels::CONFIG)?;
        let provider = self.provider(&user)?;
        Some((
            user.uid.clone(),
            Records {
                user,
                config,
                provider,
            },
        ))
    }

    /// The provider record `user` names, if any; `None` if it names one
    /// that does not read.
    pub fn provider(&mut self, user: &Record) -> Option<Option<Record>> {
        match user.value(labels::PROVIDER) {
            Some(p) => self.named(p, labels::PROVIDER).map(Some),
            None => Some(None),
        }
    }

    /// Record `uid`, as a field labelled `label` names it, if it reads.
    pub fn named(&mut self, uid: &str, label: &'static str) -> Option<Record> {
        // Members that each name a record of their own would otherwise keep
        // a second copy of the vault here.
        if self.named.len() >= MAX_NAMED {
            self.named.clear();
        }
        let vault = self.vault;
        self.named
            .entry((label, uid.to_string()))
            .or_insert_with(|| vault.named(uid, label, None).ok())
            .clone()
    }
}
