//! The Keeper vault, through Keeper Secrets Manager (`--ksm-config`).
//! keeper-secrets-manager-core does the transport, the crypto and the record
//! decoding; this file maps its records to the host's and decides the order of
//! the writes (docs/design.md, §11).
//!
//! A rotation's store is Keeper's rotation transaction: the update is staged
//! (`update_secret_with_transaction(record, Rotation)`) and completed at once
//! (`complete_transaction(uid, false)`), before `finalize` touches the old key.
//! So whatever readers see while a transaction is open (Keeper does not say),
//! the record always names a key that exists (I1). A stage that fails is rolled
//! back (`complete_transaction(uid, true)`) and tried once more, which also
//! clears a transaction left open by a run that was killed.
//!
//! The SDK is blocking (reqwest) and must not run or be dropped on the async
//! runtime's threads, so every call runs on a scoped thread of its own.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

use super::{
    Change, Record, Vault, VaultError, VaultOptions, apply_fields, of_type, remove_label, to_record,
};

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
    /// The config's keys, for the redactor.
    secrets: Vec<String>,
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
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("it cannot be read ({e})")))?;
        if !meta.is_file() {
            return Err(bad("it is not a regular file".into()));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!(
                "it is {} bytes; a KSM config is under {MAX_CONFIG_BYTES}",
                meta.len()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            if opts.strict_permissions {
                return Err(VaultError::Insecure {
                    path: PathBuf::from(path),
                    mode,
                });
            }
            tracing::warn!(
                "KSM config {origin} is readable by group or others (mode {mode:04o}, owner uid {}); \
                 it holds the application's private key: run `chmod 600 {origin}`",
                meta.uid()
            );
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("it cannot be read ({e})")))?;
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
        let secrets = ["privateKey", "appKey", "clientKey", "clientId"]
            .iter()
            .filter_map(|k| get(k).map(str::to_string))
            .collect();
        Ok(Self {
            origin,
            json,
            secrets,
        })
    }

    /// The config's private values, to mask wherever they might be printed.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
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
    /// Connects and reads `uids` in one `get_secrets` call (every record shared
    /// with the application when `None`). A UID that does not come back is an
    /// error naming it: the SDK drops what it cannot decrypt without a word.
    pub fn open(
        config: &KsmConfig,
        uids: Option<&[(&str, &'static str)]>,
        opts: &VaultOptions,
    ) -> Result<Self, VaultError> {
        // Held by the vault at once, so that its `Drop` releases the client off
        // the runtime's threads on every path.
        let mut vault = Self {
            sm: Some(connect(config, opts)?),
            records: vec![],
        };
        let wanted: Vec<String> = uids
            .unwrap_or_default()
            .iter()
            .map(|(u, _)| u.to_string())
            .collect();
        let sm = vault.sm();
        vault.records = off_runtime(|| sm.get_secrets(wanted.clone()))
            .map_err(|e| ksm_error("reading records", &e))?;
        for (uid, flag) in uids.unwrap_or_default() {
            if vault.find(uid).is_none() {
                return Err(VaultError::KsmNoRecord {
                    uid: uid.to_string(),
                    flag,
                });
            }
        }
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
        let mut record =
            self.find(&change.uid)
                .cloned()
                .ok_or_else(|| VaultError::KsmNoRecord {
                    uid: change.uid.clone(),
                    flag: "-u",
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
            return Err(VaultError::KsmNoRecord {
                uid: uid.to_string(),
                flag: "-u",
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

    /// The rotation transaction: stage, then complete; see the module's notes.
    fn store_rotation(&mut self, change: &Change) -> Result<(), VaultError> {
        let uid = change.uid.as_str();
        let mut staged = Err(KSMRError::CustomError(String::new()));
        for attempt in 0..2 {
            let record = self.changed(change)?;
            let sm = self.sm();
            staged = off_runtime(|| {
                sm.update_secret_with_transaction(record.clone(), UpdateTransactionType::Rotation)
            });
            match &staged {
                Ok(()) => break,
                Err(e) if is_conflict(e) => {
                    let _ = self.complete(uid, true);
                    return Err(VaultError::KsmConflict {
                        uid: uid.to_string(),
                    });
                }
                Err(e) => {
                    // Possibly staged before the failure, or a transaction a
                    // killed run left open: roll it back, then try once more.
                    tracing::warn!(record = %uid, attempt, "staging the rotation in Keeper failed ({}); rolling back any open transaction", ksm_text(e));
                    let _ = self.complete(uid, true);
                }
            }
        }
        if let Err(e) = staged {
            return Err(ksm_error("storing the new credential", &e));
        }
        if let Err(e) = self.complete(uid, false) {
            // Completing may have worked on the server: only a rollback that
            // succeeds proves the record still names the old key.
            return Err(match self.complete(uid, true) {
                Ok(()) => ksm_error("completing the rotation transaction", &e),
                Err(_) => VaultError::KsmUncertain {
                    uid: uid.to_string(),
                    why: ksm_text(&e),
                },
            });
        }
        // The stored data is ours; the revision Keeper gave it is read back.
        if let Err(e) = self.refresh(uid) {
            tracing::warn!(record = %uid, "could not read the record back after storing: {e}");
        }
        Ok(())
    }

    /// A marker or ledger change: the record is read again and updated plainly.
    fn store_plain(&mut self, change: &Change) -> Result<(), VaultError> {
        self.refresh(&change.uid)?;
        let record = self.changed(change)?;
        let sm = self.sm();
        off_runtime(|| sm.update_secret(record.clone()))
            .map_err(|e| ksm_error("updating the record", &e))?;
        self.refresh(&change.uid)
    }
}

impl Drop for KsmVault {
    fn drop(&mut self) {
        // The SDK's blocking client may not be dropped on a runtime thread.
        if let Some(sm) = self.sm.take() {
            std::thread::scope(|s| {
                s.spawn(move || drop(sm));
            });
        }
    }
}

impl Vault for KsmVault {
    fn uids(&self) -> Vec<String> {
        self.records.iter().map(|r| r.uid.clone()).collect()
    }

    fn record(
        &self,
        uid: &str,
        flag: &'static str,
        expected: Option<&'static str>,
    ) -> Result<Record, VaultError> {
        let found = self.find(uid).ok_or_else(|| VaultError::KsmNoRecord {
            uid: uid.to_string(),
            flag,
        })?;
        let mut raw: Map<String, Value> = found
            .record_dict
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        raw.insert("uid".into(), Value::String(found.uid.clone()));
        let record = to_record(&Value::Object(raw));
        of_type(record, uid, flag, expected)
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
    VaultError::Ksm {
        action,
        why: ksm_text(e),
    }
}
