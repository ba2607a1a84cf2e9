//! The Keeper vault, through Keeper Secrets Manager (`--ksm-config`).
//! keeper-secrets-manager-core does the transport, the crypto and the record
//! decoding; this file maps its records to the host's and decides the order of
//! the writes (docs/design.md, §11).
//!
//! A rotation's store is Keeper's rotation transaction: the update is staged
//! (`update_secret_with_transaction(record, Rotation)`) and completed at once
//! (`complete_transaction(uid, false)`), before `finalize` touches the old key.
//! So whatever readers see while a transaction is open (Keeper does not say),
//! the record always names a key that exists (I1). A stage or completion that
//! fails is rolled back (`complete_transaction(uid, true)`) and the record read
//! again to tell stored from not stored (`settle`); a transaction a killed run
//! left open is rolled back before the next rotation of its record is planned.
//!
//! The SDK is blocking (reqwest) and must not run or be dropped on the async
//! runtime's threads, so every call runs on a scoped thread of its own.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use keeper_secrets_manager_core::dto::dtos::RecordCreate;
use keeper_secrets_manager_core::dto::field_structs::KeeperField;
use keeper_secrets_manager_core::dto::payload::UpdateTransactionType;
use keeper_secrets_manager_core::{
    ClientOptions, InMemoryKeyValueStorage, KSMRError, KvStoreType, Record as KeeperRecord,
    SecretsManager,
};
use serde_json::{Map, Value};

use chrono::Utc;

use super::keeper_shape::{apply_fields, remove_label, to_record};
use super::lease::Lease;
use super::{Change, Vault, VaultError, VaultOptions};
use crate::fields::{labels, stamp};
use crate::record::Record;
use crate::record::{StoreField, ValueKind};
use crate::secret::Secret;

/// The largest KSM config file read.
const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// Environment variables the SDK reads that would weaken or redirect it.
const REFUSED_ENV: &[(&str, &str)] = &[
    (
        "KSM_SKIP_VERIFY",
        "it turns off TLS certificate checks; rotate-host always verifies Keeper's certificate",
    ),
    (
        "KSM_HOSTNAME",
        "it would send requests to another host than the KSM config names; put the hostname in the config",
    ),
];

/// A KSM client config: the JSON that Keeper's tools write, held in memory so
/// the SDK never rewrites the file. `Debug` shows where it came from, never its keys.
#[derive(Clone)]
pub struct KsmConfig {
    /// `--ksm-config FILE` or `KSM_CONFIG`, for messages.
    pub origin: String,
    json: String,
}

impl std::fmt::Debug for KsmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KsmConfig")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl KsmConfig {
    /// Reads `--ksm-config FILE`: a regular file (a link to one is followed,
    /// as Kubernetes mounts secrets), at most 64 KiB, JSON or its base64 form.
    pub fn from_file(path: &Path, opts: &VaultOptions) -> Result<Self, VaultError> {
        let origin = path.display().to_string();
        let bad = |why: String| VaultError::KsmConfig {
            origin: origin.clone(),
            why,
        };
        // One open file: what is checked is what is read.
        let (file, meta) = crate::fsguard::open_regular(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => bad(e.to_string()),
            _ => bad(format!("it cannot be read ({e})")),
        })?;
        let what = format!("KSM config {origin}");
        crate::fsguard::private_or_warn(
            &meta,
            &what,
            "the application's private key",
            opts.strict_permissions,
        )
        .map_err(|mode| VaultError::Insecure {
            path: PathBuf::from(path),
            mode,
        })?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("it cannot be read as text ({e})")))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(bad(format!(
                "it is over {MAX_CONFIG_BYTES} bytes, and a KSM config is far smaller"
            )));
        }
        Self::parse(origin.clone(), &text).map_err(bad)
    }

    /// Reads `KSM_CONFIG`: the base64 form (or the JSON itself).
    pub fn from_env(value: &str) -> Result<Self, VaultError> {
        let origin = "the KSM_CONFIG environment variable".to_string();
        Self::parse(origin.clone(), value).map_err(|why| VaultError::KsmConfig { origin, why })
    }

    fn parse(origin: String, text: &str) -> Result<Self, String> {
        let text = text.trim();
        let json = if text.starts_with('{') {
            text.to_string()
        } else {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .map_err(|_| "it is neither JSON nor base64 of JSON".to_string())?;
            String::from_utf8(bytes)
                .map_err(|_| "its base64 does not decode to text".to_string())?
        };
        let map: Map<String, Value> =
            serde_json::from_str(&json).map_err(|e| format!("it is not a JSON object ({e})"))?;
        let get = |k: &str| map.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
        if get("clientKey").is_some() && get("appKey").is_none() {
            return Err(
                "it still holds a one-time access token: redeem it first (see the \
                        README, 'Keeper Secrets Manager'), then pass the config that writes"
                    .into(),
            );
        }
        let missing: Vec<&str> = ["clientId", "privateKey", "appKey"]
            .into_iter()
            .filter(|k| get(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "it lacks {}: pass a config written by redeeming a one-time token",
                missing.join(", ")
            ));
        }
        Ok(Self { origin, json })
    }
}

/// A client for `config`, refusing environment variables that would weaken it.
fn connect(config: &KsmConfig, opts: &VaultOptions) -> Result<SecretsManager, VaultError> {
    for (var, why) in REFUSED_ENV {
        if std::env::var_os(var).is_some() {
            return Err(VaultError::KsmEnv { var, why });
        }
    }
    let json = config.json.clone();
    // Throttling pauses end within the lock timeout in total: the time a run
    // is prepared to wait for its vault.
    let budget = Arc::new(Mutex::new(opts.lock_timeout));
    off_runtime(move || {
        let store = KvStoreType::InMemory(InMemoryKeyValueStorage::new(Some(json))?);
        let mut sm = SecretsManager::new(ClientOptions::new_client_options(store))?;
        sm.set_custom_sleep_function(move |wanted| {
            let pause = {
                let mut left = budget.lock().expect("budget lock");
                let pause = wanted.min(*left);
                *left -= pause;
                pause
            };
            std::thread::sleep(pause);
        });
        Ok(sm)
    })
    .map_err(|e| ksm_error("connecting", &e))
}

/// Creates a record of type `login` titled `title` with `custom` fields (in
/// Keeper's shape) in the shared folder `folder`; returns its UID.
pub fn create_record(
    config: &KsmConfig,
    opts: &VaultOptions,
    folder: &str,
    title: &str,
    custom: Vec<Value>,
) -> Result<String, VaultError> {
    let mut record = RecordCreate::new("login", title, None);
    for f in custom {
        let text = |k: &str| {
            f.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        record.append_custom_field(KeeperField {
            field_type: text("type"),
            label: text("label"),
            value: f.get("value").cloned().unwrap_or(Value::Array(vec![])),
            required: false,
            privacy_screen: false,
        });
    }
    let sm = connect(config, opts)?;
    let folder = folder.to_string();
    let mut holder = KsmVault {
        sm: Some(sm),
        records: vec![],
    };
    let sm = holder.sm();
    off_runtime(move || sm.create_secret(&folder, record))
        .map_err(|e| ksm_error("creating the config record", &e))
}

/// Runs `f` on a thread of its own: the SDK's blocking client must not run on
/// the async runtime's threads. A panic in the SDK (it unwraps some of the
/// server's answers) becomes an error.
fn off_runtime<T: Send>(f: impl FnOnce() -> Result<T, KSMRError> + Send) -> Result<T, KSMRError> {
    std::thread::scope(|s| {
        s.spawn(f).join().unwrap_or_else(|_| {
            Err(KSMRError::CustomError(
                "the KSM library stopped on an answer it could not read".into(),
            ))
        })
    })
}

/// An open connection to Keeper and the records read through it.
pub struct KsmVault {
    sm: Option<SecretsManager>,
    /// In the order Keeper returned them.
    records: Vec<KeeperRecord>,
}

impl KsmVault {
    /// Connects and reads every record shared with the application in one
    /// `get_secrets` call. The SDK drops what it cannot decrypt without a
    /// word, so the message for a missing record says so (`missing`).
    pub fn open(config: &KsmConfig, opts: &VaultOptions) -> Result<Self, VaultError> {
        // Held by the vault at once, so that its `Drop` releases the client off
        // the runtime's threads on every path.
        let mut vault = Self {
            sm: Some(connect(config, opts)?),
            records: vec![],
        };
        // Every shared record, even for `run`: I6 needs to know which keys the
        // other records hold. One call either way; the answer is larger.
        let sm = vault.sm();
        vault.records = unique(
            off_runtime(|| sm.get_secrets(Vec::new()))
                .map_err(|e| ksm_error("reading records", &e))?,
        );
        Ok(vault)
    }

    fn find(&self, uid: &str) -> Option<&KeeperRecord> {
        self.records.iter().find(|r| r.uid == uid)
    }

    fn sm(&mut self) -> &mut SecretsManager {
        self.sm.as_mut().expect("open until dropped")
    }

    /// The record as Keeper returned it last, with `change` applied.
    fn changed(&self, change: &Change) -> Result<KeeperRecord, VaultError> {
        let mut record = self
            .find(&change.uid)
            .cloned()
            .ok_or_else(|| VaultError::Vanished {
                uid: crate::text::printable(&change.uid),
            })?;
        // The record's data is edited as data: the SDK's setters would add a
        // stray `record_type` key and nest arrays.
        let mut data: Map<String, Value> = record.record_dict.drain().collect();
        data.remove("record_type");
        apply_fields(&mut data, &change.fields);
        for label in &change.remove {
            remove_label(&mut data, label);
        }
        record.record_dict = data.into_iter().collect::<HashMap<_, _>>();
        Ok(record)
    }

    /// Reads `uid` again, for its current revision and content.
    fn refresh(&mut self, uid: &str) -> Result<(), VaultError> {
        let wanted = vec![uid.to_string()];
        let sm = self.sm();
        let fresh = off_runtime(|| sm.get_secrets(wanted.clone()))
            .map_err(|e| ksm_error("reading the record back", &e))?;
        let Some(fresh) = fresh.into_iter().find(|r| r.uid == uid) else {
            return Err(VaultError::Vanished {
                uid: crate::text::printable(uid),
            });
        };
        if let Some(slot) = self.records.iter_mut().find(|r| r.uid == uid) {
            *slot = fresh;
        }
        Ok(())
    }

    fn complete(&mut self, uid: &str, rollback: bool) -> Result<(), KSMRError> {
        let uid = uid.to_string();
        let sm = self.sm();
        off_runtime(|| sm.complete_transaction(uid.clone(), rollback))
    }

    /// `Leased` when the record, as last read, carries a live lease of an
    /// owner other than `mine`.
    fn refuse_others(&self, uid: &str, mine: Option<&str>) -> Result<(), VaultError> {
        let held = Vault::record(self, uid)
            .ok_or_else(|| VaultError::Vanished {
                uid: crate::text::printable(uid),
            })?
            .value(labels::LEASE)
            .and_then(Lease::parse);
        match held.filter(|h| Some(h.owner.as_str()) != mine && h.live(Utc::now())) {
            Some(other) => Err(VaultError::Leased {
                uid: crate::text::printable(uid),
                owner: crate::text::printable(&other.owner),
                until: stamp(other.until),
            }),
            None => Ok(()),
        }
    }

    /// The rotation transaction: stage, then complete; see the module's notes.
    fn store_rotation(&mut self, change: &Change) -> Result<(), VaultError> {
        let uid = change.uid.as_str();
        let record = self.changed(change)?;
        let sm = self.sm();
        let staged = off_runtime(|| {
            sm.update_secret_with_transaction(record.clone(), UpdateTransactionType::Rotation)
        });
        if let Err(e) = staged {
            if is_conflict(&e) {
                // Refused: nothing of ours is staged, and a transaction that
                // may be someone else's is left alone.
                return Err(VaultError::KsmConflict {
                    uid: uid.to_string(),
                });
            }
            return self.settle(change, "storing the new credential", &e);
        }
        if let Err(e) = self.complete(uid, false) {
            return self.settle(change, "completing the rotation transaction", &e);
        }
        // The stored data is ours; the revision Keeper gave it is read back.
        if let Err(e) = self.refresh(uid) {
            tracing::warn!(record = ?crate::text::printable(uid), "could not read the record back after storing: {e}");
        }
        Ok(())
    }

    /// After a stage or completion that failed: roll back what may be open,
    /// then read the record back and decide from what readers see.
    /// - Our data is not there: not stored, whatever else is staged and unseen.
    /// - It is there after a rollback that worked: it was committed, so stored.
    /// - It is there and the rollback failed, or nothing can be read: unknown,
    ///   so the caller must delete nothing.
    ///
    /// Not there, with a revision past the one our update named: someone
    /// changed the record meanwhile, whatever words Keeper used (it documents
    /// no code for a stale revision).
    fn settle(
        &mut self,
        change: &Change,
        action: &'static str,
        e: &KSMRError,
    ) -> Result<(), VaultError> {
        let uid = change.uid.as_str();
        let sent = self.find(uid).and_then(|r| r.revision);
        tracing::warn!(record = ?crate::text::printable(uid), "{action} in Keeper failed ({}); rolling back and reading the record again", ksm_text(e));
        let rolled_back = self.complete(uid, true).is_ok();
        let uncertain = || VaultError::KsmUncertain {
            uid: uid.to_string(),
            why: ksm_text(e),
        };
        if self.refresh(uid).is_err() {
            return Err(uncertain());
        }
        let moved = self.moved_past(uid, sent);
        match (self.holds(change), rolled_back) {
            (false, _) if moved => Err(VaultError::KsmConflict {
                uid: uid.to_string(),
            }),
            (false, _) => Err(ksm_error(action, e)),
            (true, true) => Ok(()),
            (true, false) => Err(uncertain()),
        }
    }

    /// Whether record `uid`, as last read, is at a later revision than `sent`:
    /// someone changed it since an update that named `sent`.
    fn moved_past(&self, uid: &str, sent: Option<i64>) -> bool {
        self.find(uid).and_then(|r| r.revision) > sent
    }

    /// Whether Keeper's copy of the record carries every field of `change`.
    fn holds(&self, change: &Change) -> bool {
        let Some(record) = Vault::record(self, &change.uid) else {
            return false;
        };
        change.fields.iter().all(|f| {
            let want = Some(f.value.expose().trim());
            record.value(&f.label) == want
                || (f.kind == ValueKind::Password && record.value_of_type("password") == want)
        })
    }

    /// A marker or ledger change, as a plain update of the revision last read:
    /// an edit someone made meanwhile is refused, not overwritten.
    fn store_plain(&mut self, change: &Change) -> Result<(), VaultError> {
        let record = self.changed(change)?;
        let sent = record.revision;
        let sm = self.sm();
        if let Err(e) = off_runtime(|| sm.update_secret(record.clone())) {
            let conflict = VaultError::KsmConflict {
                uid: change.uid.clone(),
            };
            if is_conflict(&e) {
                return Err(conflict);
            }
            // Keeper's words for a stale revision are undocumented: a record
            // read again at a later revision says it.
            let moved = self.refresh(&change.uid).is_ok() && self.moved_past(&change.uid, sent);
            return Err(if moved {
                conflict
            } else {
                ksm_error("updating the record", &e)
            });
        }
        self.refresh(&change.uid)
    }

    /// Rolls back a rotation transaction a killed run left open on `uid`, so
    /// the plan is made from what readers will see; true if one was (the
    /// record is then read again).
    fn settle_open(&mut self, uid: &str) -> Result<bool, VaultError> {
        if self.complete(uid, true).is_err() {
            // Usually: none was open.
            return Ok(false);
        }
        tracing::warn!(record = ?crate::text::printable(uid), "rolled back a rotation transaction left open in Keeper");
        self.refresh(uid)?;
        Ok(true)
    }
}

impl Drop for KsmVault {
    fn drop(&mut self) {
        // The SDK's blocking client may not be dropped on a runtime thread;
        // its records hold clones of it too.
        let (sm, records) = (self.sm.take(), std::mem::take(&mut self.records));
        std::thread::scope(|s| {
            s.spawn(move || drop((sm, records)));
        });
    }
}

impl Vault for KsmVault {
    fn uids(&self) -> Vec<String> {
        self.records.iter().map(|r| r.uid.clone()).collect()
    }

    fn record(&self, uid: &str) -> Option<Record> {
        let found = self.find(uid)?;
        let mut raw: Map<String, Value> = found
            .record_dict
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        raw.insert("uid".into(), Value::String(found.uid.clone()));
        Some(to_record(&Value::Object(raw)))
    }

    fn missing(&self) -> (String, &'static str) {
        (
            "Keeper".into(),
            ", and that the record is in a shared folder of this KSM application (a record \
             Keeper cannot decrypt for it is left out too)",
        )
    }

    fn check_lease(&self, uid: &str) -> Result<(), VaultError> {
        self.refuse_others(uid, None)
    }

    /// Reads the record again; refuses a live lease of another writer; rolls
    /// back a transaction a dead writer left open; then writes ours with the
    /// revision just read, so of two writers racing for it, Keeper refuses
    /// the second.
    fn lease(&mut self, uid: &str, lease: &Lease) -> Result<bool, VaultError> {
        // The lease is judged on the record as it is now, not as the pass
        // first read it: another writer may have taken it since.
        self.refresh(uid)?;
        if !self.find(uid).is_some_and(|r| r.is_editable) {
            return Err(VaultError::KsmReadOnly {
                uid: crate::text::printable(uid),
            });
        }
        self.refuse_others(uid, Some(&lease.owner))?;
        let leased = |owner: &str, until: &str| VaultError::Leased {
            uid: crate::text::printable(uid),
            owner: crate::text::printable(owner),
            until: until.to_string(),
        };
        // No live writer holds the record: a transaction open on it is a dead one's.
        self.settle_open(uid)?;
        let change = Change {
            uid: uid.to_string(),
            fields: vec![StoreField {
                label: labels::LEASE.into(),
                aliases: vec![],
                kind: ValueKind::Text,
                value: Secret::new(lease.render()),
            }],
            remove: vec![],
            rotation: false,
        };
        self.store_plain(&change).map_err(|e| match e {
            VaultError::KsmConflict { .. } => leased("another writer", "it ends"),
            other => other,
        })?;
        Ok(true)
    }

    /// Removes our lease from the record as it is now, unless it is no longer
    /// ours (it expired and another writer took it).
    fn release(&mut self, uid: &str, lease: &Lease) -> Result<(), VaultError> {
        self.refresh(uid)?;
        let held = Vault::record(self, uid)
            .ok_or_else(|| VaultError::Vanished {
                uid: crate::text::printable(uid),
            })?
            .value(labels::LEASE)
            .and_then(Lease::parse);
        if held.is_none_or(|h| h.owner != lease.owner) {
            return Ok(());
        }
        self.store_plain(&Change {
            uid: uid.to_string(),
            fields: vec![],
            remove: vec![labels::LEASE],
            rotation: false,
        })
    }

    /// One update per change: Keeper has no multi-record transaction.
    fn save(&mut self, batch: &[Change]) -> Vec<Result<(), Arc<VaultError>>> {
        batch
            .iter()
            .map(|c| {
                if c.rotation {
                    self.store_rotation(c)
                } else {
                    self.store_plain(c)
                }
                .map_err(Arc::new)
            })
            .collect()
    }
}

/// Each UID once: Keeper returns a record once per way it is shared (a folder,
/// a shortcut), and two copies would be rotated twice.
fn unique(mut records: Vec<KeeperRecord>) -> Vec<KeeperRecord> {
    let mut seen = std::collections::HashSet::new();
    records.retain(|r| seen.insert(r.uid.clone()));
    records
}

/// A revision conflict: the record changed since it was read.
fn is_conflict(e: &KSMRError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("out_of_sync") || text.contains("revision")
}

/// The SDK's message, on one printable line.
fn ksm_text(e: &KSMRError) -> String {
    crate::text::printable(crate::text::truncate(&e.to_string(), 500))
}

fn ksm_error(action: &'static str, e: &KSMRError) -> VaultError {
    let why = ksm_text(e);
    // Keeper's server answers a bad signature or an unknown client so
    // (403 `access_denied`, recorded in Keeper's sdk/fake_data.json).
    if why.contains("Signature is invalid") {
        return VaultError::KsmBadSignature { why };
    }
    VaultError::Ksm { action, why }
}
