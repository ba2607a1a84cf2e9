//! The record shape both vault backends share: Keeper's JSON (`uid`, `type`,
//! `title`, `fields`, `custom`), read into `Record`s and changed field by field.

use serde_json::{Map, Value, json};

use super::VaultError;
use crate::record::{Field, Record, StoreField, ValueKind};
use crate::sandbox::plugin::ItemType;
use crate::secret::Secret;

/// The Keeper field type that holds a value of `kind`, or of a config item
/// of type `item`: secrets in `secret` fields (masked in Keeper's apps), URLs
/// in `url`, long text in `multiline`, the rest in `text`.
pub fn field_type(kind: ValueKind, item: Option<ItemType>) -> &'static str {
    match (kind, item) {
        (ValueKind::Password, _) => "password",
        (ValueKind::Secret, _) | (_, Some(ItemType::Secret)) => "secret",
        (_, Some(ItemType::Url)) => "url",
        (_, Some(ItemType::Multiline)) => "multiline",
        _ => "text",
    }
}

/// Sets `fields` on a Keeper-shaped record: every field labelled with the label
/// or an alias (any case) is replaced and relabelled, and a password also
/// replaces the unlabelled field of type `password` (Keeper's standard one,
/// which stays unlabelled); if there is none, a custom field is added.
/// Nothing else in the record changes.
pub fn apply_fields(record: &mut Map<String, Value>, fields: &[StoreField]) {
    for f in fields {
        let names = std::iter::once(&f.label).chain(&f.aliases);
        let unlabelled = |v: &Value| {
            v.get("label")
                .and_then(Value::as_str)
                .is_none_or(|l| l.trim().is_empty())
        };
        let matches = |v: &Value| {
            let by_label = v
                .get("label")
                .and_then(Value::as_str)
                .is_some_and(|l| names.clone().any(|n| l.trim().eq_ignore_ascii_case(n)));
            // Only a password: else a plugin could overwrite the `login`
            // that names whose credential rotates.
            let by_type = f.kind == ValueKind::Password
                && unlabelled(v)
                && v.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("password"));
            by_label || by_type
        };
        let new_field = |old: Option<&Value>| {
            let keep_unlabelled = old.is_some_and(unlabelled);
            let mut obj = old.and_then(Value::as_object).cloned().unwrap_or_default();
            obj.insert("type".into(), json!(field_type(f.kind, None)));
            if !keep_unlabelled {
                obj.insert("label".into(), json!(f.label));
            }
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

/// `record` (read for `uid`, given to `named_by`), if it is of type `expected` when given.
pub fn of_type(
    record: Record,
    uid: &str,
    named_by: &'static str,
    expected: Option<&'static str>,
) -> Result<Record, VaultError> {
    match expected {
        Some(expected) if !record.record_type.eq_ignore_ascii_case(expected) => {
            Err(VaultError::WrongType {
                uid: uid.to_string(),
                named_by,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn password(v: &str) -> StoreField {
        StoreField::password_for_test(v)
    }

    #[test]
    fn a_password_replaces_the_standard_unlabelled_field_and_keeps_it_unlabelled() {
        let mut r = json!({"fields": [{"type": "login", "value": ["app"]}, {"type": "password", "value": ["old"]}], "custom": []});
        apply_fields(r.as_object_mut().unwrap(), &[password("new")]);
        assert_eq!(
            r["fields"][1],
            json!({"type": "password", "value": ["new"]})
        );
        assert_eq!(r["custom"], json!([]));
    }

    #[test]
    fn a_labelled_field_of_that_type_is_not_taken_for_it() {
        let mut r =
            json!({"fields": [{"type": "password", "label": "Recovery", "value": ["keep"]}]});
        apply_fields(r.as_object_mut().unwrap(), &[password("new")]);
        assert_eq!(r["fields"][0]["value"], json!(["keep"]));
        assert_eq!(
            r["custom"][0],
            json!({"type": "password", "label": "password", "value": ["new"]})
        );
    }
}
