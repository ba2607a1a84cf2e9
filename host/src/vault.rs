//! The vault: a JSON file of Keeper-shaped records, locked for the whole run and
//! replaced atomically (DESIGN.md I4).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::plugin::StoreField;
use crate::secret::Secret;

/// Why the vault could not be used. The file is unchanged in every case.
#[derive(Debug, Error)]
pub enum VaultError {
    #[error("vault {path} does not exist: check --vault, or create it with `rotate-host config`")]
    NotFound { path: PathBuf },
    #[error("vault {path} is a folder: pass the path of the vault file to --vault")]
    IsFolder { path: PathBuf },
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
    #[error("could not lock vault {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("could not write vault {path}: {source}. The vault file was left as it was")]
    Write { path: PathBuf, source: io::Error },
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

/// An open, locked vault file.
pub struct Vault {
    path: PathBuf,
    doc: Value,
    // Held until the vault is dropped; a separate file, since the vault itself is
    // replaced by rename.
    _lock: File,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Takes the exclusive lock on `path`'s lock file, waiting at most `timeout`.
fn lock(path: &Path, timeout: Duration) -> Result<File, VaultError> {
    let lock_file = lock_path(path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_file)
        .map_err(|source| VaultError::Lock {
            path: lock_file.clone(),
            source,
        })?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(VaultError::Locked {
                    path: path.to_path_buf(),
                    waited: timeout,
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(VaultError::Lock {
                    path: lock_file,
                    source,
                });
            }
        }
    }
}

impl Vault {
    /// Locks and reads an existing vault.
    pub fn open(path: &Path, lock_timeout: Duration) -> Result<Self, VaultError> {
        Self::open_inner(path, lock_timeout, false)
    }

    /// Locks and reads a vault, starting an empty one if the file does not exist.
    pub fn open_or_create(path: &Path, lock_timeout: Duration) -> Result<Self, VaultError> {
        Self::open_inner(path, lock_timeout, true)
    }

    fn open_inner(path: &Path, lock_timeout: Duration, create: bool) -> Result<Self, VaultError> {
        if path.is_dir() {
            return Err(VaultError::IsFolder {
                path: path.to_path_buf(),
            });
        }
        if !create && !path.exists() {
            return Err(VaultError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let lock = lock(path, lock_timeout)?;
        let doc = match fs::read(path) {
            Ok(bytes) => parse(path, &bytes)?,
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => json!({ "records": [] }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VaultError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(VaultError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            doc,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn records(&self) -> &Vec<Value> {
        self.doc["records"].as_array().expect("checked by parse")
    }

    fn records_mut(&mut self) -> &mut Vec<Value> {
        self.doc["records"]
            .as_array_mut()
            .expect("checked by parse")
    }

    /// The record `uid`, checked to be of type `expected` when given.
    pub fn record(
        &self,
        uid: &str,
        flag: &'static str,
        expected: Option<&'static str>,
    ) -> Result<Record, VaultError> {
        let raw = self
            .records()
            .iter()
            .find(|r| r["uid"] == uid)
            .ok_or_else(|| VaultError::NoRecord {
                path: self.path.clone(),
                uid: uid.to_string(),
                flag,
            })?;
        let record = to_record(raw);
        if let Some(expected) = expected
            && !record.record_type.eq_ignore_ascii_case(expected)
        {
            return Err(VaultError::WrongType {
                uid: uid.to_string(),
                flag,
                found: record.record_type,
                expected,
            });
        }
        Ok(record)
    }

    /// Sets `fields` on record `uid` in memory: a field labelled with the label or
    /// an alias (any case) is replaced and relabelled; otherwise a custom field is
    /// added. Nothing else in the record changes.
    pub fn set_fields(&mut self, uid: &str, fields: &[StoreField]) -> Result<(), VaultError> {
        let path = self.path.clone();
        let record = self
            .records_mut()
            .iter_mut()
            .find(|r| r["uid"] == uid)
            .ok_or_else(|| VaultError::NoRecord {
                path,
                uid: uid.to_string(),
                flag: "-u",
            })?;
        let record = record.as_object_mut().expect("checked by parse");
        for f in fields {
            let names = std::iter::once(&f.label).chain(&f.aliases);
            let matches = |v: &Value| {
                v.get("label")
                    .and_then(Value::as_str)
                    .is_some_and(|l| names.clone().any(|n| l.trim().eq_ignore_ascii_case(n)))
            };
            let existing = ["fields", "custom"].into_iter().find_map(|section| {
                record
                    .get(section)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().position(&matches))
                    .map(|i| (section, i))
            });
            let new_field = |old: Option<&Value>| {
                let mut obj = old.and_then(Value::as_object).cloned().unwrap_or_default();
                obj.insert("type".into(), json!(f.kind.field_type()));
                obj.insert("label".into(), json!(f.label));
                obj.insert("value".into(), json!([f.value.expose()]));
                Value::Object(obj)
            };
            match existing {
                Some((section, i)) => {
                    let list = record[section].as_array_mut().expect("found above");
                    list[i] = new_field(Some(&list[i]));
                }
                None => {
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
        Ok(())
    }

    /// Adds a record in memory.
    pub fn add_record(&mut self, record: Map<String, Value>) {
        self.records_mut().push(Value::Object(record));
    }

    /// Whether a record with this UID exists.
    pub fn has_uid(&self, uid: &str) -> bool {
        self.records().iter().any(|r| r["uid"] == uid)
    }

    /// Writes the vault: a temporary file beside it, fsync, rename, fsync of the
    /// folder. The file ends up 0600. A failure leaves the old file as it was.
    pub fn save(&self) -> Result<(), VaultError> {
        let err = |source| VaultError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut bytes = serde_json::to_vec_pretty(&self.doc).expect("JSON values serialise");
        bytes.push(b'\n');
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(
                ".{}.",
                self.path.file_name().unwrap_or_default().to_string_lossy()
            ))
            .suffix(".tmp")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(err)?;
        tmp.write_all(&bytes).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&self.path).map_err(|e| err(e.error))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        tracing::debug!(path = %self.path.display(), bytes = bytes.len(), "vault saved");
        Ok(())
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Value, VaultError> {
    let bad = |why: String| VaultError::Malformed {
        path: path.to_path_buf(),
        why,
    };
    // serde_json's messages give a position, never the content.
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
    let records = doc
        .get("records")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the top level must be an object with a \"records\" array".into()))?;
    let mut seen = std::collections::HashSet::new();
    for (i, r) in records.iter().enumerate() {
        let uid = r
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| bad(format!("record #{} has no \"uid\" string", i + 1)))?;
        if !seen.insert(uid) {
            return Err(bad(format!("two records have the UID '{uid}'")));
        }
        for section in ["fields", "custom"] {
            if let Some(s) = r.get(section)
                && !s.is_array()
            {
                return Err(bad(format!(
                    "record '{uid}': \"{section}\" must be an array"
                )));
            }
        }
    }
    Ok(doc)
}

fn to_record(raw: &Value) -> Record {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::ValueKind;

    const T: Duration = Duration::from_secs(1);

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("vault.json");
        fs::write(&p, body).unwrap();
        p
    }

    fn field(label: &str, kind: ValueKind, value: &str) -> StoreField {
        StoreField {
            label: label.into(),
            aliases: vec!["aws_acess_key_id".into()],
            kind,
            value: Secret::new(value),
        }
    }

    #[test]
    fn updates_fields_and_keeps_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"version": 7, "records": [{"uid": "u", "type": "pamUser", "title": "a", "extra": {"x": 1},
              "fields": [{"type": "login", "value": ["alice"]}],
              "custom": [{"type": "text", "label": "AWS_ACESS_KEY_ID", "value": ["OLD"], "note": "keep"}]}]}"#,
        );
        let mut v = Vault::open(&p, T).unwrap();
        v.set_fields(
            "u",
            &[
                field("aws_access_key_id", ValueKind::Text, "NEW"),
                field("aws_secret_access_key", ValueKind::Secret, "S3CRET"),
            ],
        )
        .unwrap();
        v.save().unwrap();
        drop(v);
        let doc: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        let r = &doc["records"][0];
        assert_eq!(doc["version"], 7);
        assert_eq!(r["extra"]["x"], 1);
        assert_eq!(r["custom"][0]["label"], "aws_access_key_id");
        assert_eq!(r["custom"][0]["value"][0], "NEW");
        assert_eq!(r["custom"][0]["note"], "keep");
        assert_eq!(r["custom"][1]["type"], "secret");
        assert_eq!(r["custom"][1]["value"][0], "S3CRET");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn reads_records_and_checks_types() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"records": [{"uid": "u", "type": "pamUser", "title": "a",
               "fields": [{"type": "login", "value": ["alice"]}, {"type": "host", "value": [{"hostName": "h"}]}]}]}"#,
        );
        let v = Vault::open(&p, T).unwrap();
        let r = v.record("u", "-u", Some("pamUser")).unwrap();
        assert_eq!(r.fields[0].values[0].expose(), "alice");
        assert_eq!(r.fields[1].values[0].expose(), r#"{"hostName":"h"}"#);
        assert!(matches!(
            v.record("u", "-c", Some("login")),
            Err(VaultError::WrongType { .. })
        ));
        assert!(matches!(
            v.record("nope", "-c", None),
            Err(VaultError::NoRecord { .. })
        ));
    }

    #[test]
    fn malformed_vaults_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for body in [
            "{not json",
            "[]",
            r#"{"records": {}}"#,
            r#"{"records": [{"type": "x"}]}"#,
            r#"{"records": [{"uid": "a"}, {"uid": "a"}]}"#,
            r#"{"records": [{"uid": "a", "custom": {}}]}"#,
        ] {
            let p = write(dir.path(), body);
            let e = Vault::open(&p, T).unwrap_err();
            assert!(matches!(e, VaultError::Malformed { .. }), "{body}: {e}");
        }
        assert!(matches!(
            Vault::open(dir.path(), T),
            Err(VaultError::IsFolder { .. })
        ));
        assert!(matches!(
            Vault::open(&dir.path().join("missing.json"), T),
            Err(VaultError::NotFound { .. })
        ));
    }

    #[test]
    fn a_second_opener_waits_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), r#"{"records": []}"#);
        let first = Vault::open(&p, T).unwrap();
        let e = Vault::open(&p, Duration::from_millis(120)).unwrap_err();
        assert!(matches!(e, VaultError::Locked { .. }), "{e}");
        drop(first);
        assert!(Vault::open(&p, T).is_ok());
    }
}
