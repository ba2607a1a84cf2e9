//! The record model every layer shares: a record as the host reads it from
//! any vault, and a field as a plugin asks the host to store it.

use crate::secret::Secret;

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

/// How a value is kept in the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Text,
    Secret,
    /// The record's `password` field.
    Password,
}

/// A field the plugin asks the host to store in the PAM user record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreField {
    pub label: String,
    pub aliases: Vec<String>,
    pub kind: ValueKind,
    pub value: Secret,
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

#[cfg(test)]
impl StoreField {
    /// A password field with `value`, as the PostgreSQL plugin returns one.
    pub fn password_for_test(value: &str) -> Self {
        Self {
            label: "password".into(),
            aliases: vec![],
            kind: ValueKind::Password,
            value: Secret::new(value),
        }
    }
}
