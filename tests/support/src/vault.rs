//! Vault files for tests, in Keeper's record shape (docs/design.md).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A vault file in its own temporary folder.
pub struct VaultFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl VaultFile {
    /// The temporary files a rewrite of the vault makes (`.NAME.XXXXXX.tmp`),
    /// left beside it.
    pub fn temporaries(&self) -> Vec<std::path::PathBuf> {
        let name = self
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::read_dir(self.path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let file = p.file_name().unwrap().to_string_lossy();
                file.starts_with(&format!(".{name}.")) && file.ends_with(".tmp")
            })
            .collect()
    }

    /// Writes `{"records": records}`, mode 0600 as a vault should be.
    pub fn new(records: Vec<Value>) -> Self {
        Self::raw(&serde_json::to_vec_pretty(&json!({ "records": records })).unwrap())
    }

    /// Writes raw bytes as the vault, mode 0600.
    pub fn raw(bytes: &[u8]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.json");
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { dir, path }
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes()).expect("the vault is valid JSON")
    }

    /// The first value of the field labelled `label` (any case) in record `uid`.
    pub fn field(&self, uid: &str, label: &str) -> Option<String> {
        field_of(&self.json(), uid, label)
    }

    pub fn folder(&self) -> &Path {
        self.dir.path()
    }

    /// Reads the vault's JSON, lets `change` edit it, and writes it back
    /// compact, in place (the file keeps its mode), as a tool editing the
    /// file would.
    pub fn edit(&self, change: impl FnOnce(&mut Value)) {
        let mut doc = self.json();
        change(&mut doc);
        std::fs::write(&self.path, serde_json::to_vec(&doc).unwrap()).unwrap();
    }

    /// Rewrites the first value of field `label` of record `uid`, or adds a
    /// custom text field, as an operator editing the file would (the file
    /// keeps its mode).
    pub fn set_field(&self, uid: &str, label: &str, value: &str) {
        let mut doc = self.json();
        let record = doc["records"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|r| r["uid"] == uid)
            .expect("the record exists");
        let field = ["fields", "custom"]
            .iter()
            .filter_map(|s| record[*s].as_array())
            .flatten()
            .position(|f| {
                f["label"]
                    .as_str()
                    .is_some_and(|l| l.eq_ignore_ascii_case(label))
            });
        let (section, index) = match field {
            Some(i) => {
                let in_fields = record["fields"].as_array().map_or(0, Vec::len);
                if i < in_fields {
                    ("fields", i)
                } else {
                    ("custom", i - in_fields)
                }
            }
            None => {
                record["custom"]
                    .as_array_mut()
                    .expect("the record has custom fields")
                    .push(json!({"type": "text", "label": label, "value": [value]}));
                std::fs::write(&self.path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
                return;
            }
        };
        record[section][index]["value"] = json!([value]);
        std::fs::write(&self.path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
}

/// The first value of the field labelled `label` in record `uid` of a vault document.
pub fn field_of(doc: &Value, uid: &str, label: &str) -> Option<String> {
    let record = doc["records"]
        .as_array()?
        .iter()
        .find(|r| r["uid"] == uid)?;
    first_value(record, label)
}

/// The first value of the field labelled `label` (any case) of a Keeper record.
pub fn first_value(record: &Value, label: &str) -> Option<String> {
    ["fields", "custom"]
        .iter()
        .filter_map(|s| record[*s].as_array())
        .flatten()
        .find(|f| {
            f["label"]
                .as_str()
                .is_some_and(|l| l.eq_ignore_ascii_case(label))
        })
        .and_then(|f| f["value"][0].as_str())
        .map(str::to_string)
}

/// A plugin config record with custom fields `(type, label, value)`. Its owner
/// serves every login (`Rotation Scope` `*`), unless `fields` sets a scope.
pub fn config_record(uid: &str, fields: &[(&str, &str, &str)]) -> Value {
    let scoped = fields
        .iter()
        .any(|(_, l, _)| l.eq_ignore_ascii_case("Rotation Scope"));
    let scope =
        (!scoped).then(|| json!({"type": "multiline", "label": "Rotation Scope", "value": ["*"]}));
    let custom: Vec<Value> =
        std::iter::once(json!({"type": "text", "label": "SaaS Type", "value": ["AWS Secret Key"]}))
            .chain(scope)
            .chain(
                fields
                    .iter()
                    .map(|(t, l, v)| json!({"type": t, "label": l, "value": [v]})),
            )
            .collect();
    json!({"uid": uid, "type": "login", "title": "AWS Secret Key Credential", "fields": [], "custom": custom})
}

/// A PAM user record; `key` is `(label, access key id)` when one is recorded.
pub fn pam_user(uid: &str, login: &str, key: Option<(&str, &str)>) -> Value {
    let custom: Vec<Value> = key
        .map(|(label, id)| json!({"type": "text", "label": label, "value": [id]}))
        .into_iter()
        .collect();
    json!({
        "uid": uid, "type": "pamUser", "title": login,
        "fields": [{"type": "login", "value": [login]}, {"type": "password", "value": [""]}],
        "custom": custom,
        "notes": "kept as is"
    })
}

/// `record` with custom text fields `(label, value)` added after its own.
pub fn with_custom(mut record: Value, fields: &[(&str, &str)]) -> Value {
    let custom = record["custom"]
        .as_array_mut()
        .expect("the record has custom fields");
    for (label, value) in fields {
        custom.push(json!({"type": "text", "label": label, "value": [value]}));
    }
    record
}

/// A fleet member: PAM user record `uid` for `login` (recording `key` as
/// `pam_user` does) whose `Rotation Config` names config record `config`,
/// followed by custom text fields `extra` `(label, value)`.
pub fn fleet_member(
    uid: &str,
    login: &str,
    key: Option<(&str, &str)>,
    config: &str,
    extra: &[(&str, &str)],
) -> Value {
    let member = with_custom(pam_user(uid, login, key), &[("Rotation Config", config)]);
    with_custom(member, extra)
}

/// A `pamAwsConfiguration` provider record.
pub fn provider_record(uid: &str, key_id: &str, secret: &str, regions: &str) -> Value {
    json!({
        "uid": uid, "type": "pamAwsConfiguration", "title": "AWS",
        "fields": [
            {"type": "pamAwsAccessKeyId", "value": [key_id]},
            {"type": "pamAwsAccessSecretKey", "value": [secret]},
            {"type": "pamAwsRegionName", "value": [regions]}
        ]
    })
}
