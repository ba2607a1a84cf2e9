//! A staged rotation's fields in the PAM user record (design §13): a new
//! password takes effect only when `finalize` sets it, so it is stored in
//! `Rotation Staged` first and made live after `finalize` succeeded. A run
//! that finds the field finishes the rotation with it.

use serde::{Deserialize, Serialize};

use crate::fields::{BadField, labels};
use crate::record::{Record, StoreField, ValueKind};
use crate::sandbox::plugin::Rotation;
use crate::secret::Secret;

/// At most this many fields are staged at once; a record editor's larger
/// list is refused, not read.
const MAX_FIELDS: usize = 16;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    label: String,
    #[serde(default)]
    aliases: Vec<String>,
    kind: Kind,
    value: String,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Text,
    Secret,
    Password,
}

/// The staged fields of `user`: none when it has no `Rotation Staged` field.
pub fn read(user: &Record) -> Result<Vec<StoreField>, BadField> {
    let Some(raw) = user.value(labels::STAGED) else {
        return Ok(vec![]);
    };
    let bad = |why: &str| BadField {
        field: labels::STAGED,
        why: format!(
            "{why}; it is the host's record of an unfinished rotation: restore it from the \
             vault's history, or delete it and set the service's password to the vault's by hand"
        ),
    };
    let entries: Vec<Entry> =
        serde_json::from_str(raw).map_err(|_| bad("is not the host's JSON list of fields"))?;
    if entries.is_empty() || entries.len() > MAX_FIELDS {
        return Err(bad(&format!(
            "holds {} fields, not 1 to {MAX_FIELDS}",
            entries.len()
        )));
    }
    Ok(entries
        .into_iter()
        .map(|e| StoreField {
            label: e.label,
            aliases: e.aliases,
            kind: match e.kind {
                Kind::Text => ValueKind::Text,
                Kind::Secret => ValueKind::Secret,
                Kind::Password => ValueKind::Password,
            },
            value: Secret::new(e.value),
        })
        .collect())
}

/// Why the host refuses the staged rotation `r` that `rotate` returned, given
/// what an earlier run staged: a plugin that forgot the staged value would
/// replace a password the service may already have.
pub fn refusal(r: &Rotation, earlier: &[StoreField]) -> Option<String> {
    if !r.staged {
        // A plain rotation's store drops what is staged: never a password
        // the service may already have.
        let password = earlier.iter().any(|f| f.kind == ValueKind::Password);
        return (password && !r.fields.is_empty()).then(|| {
            format!(
                "an earlier run staged a password the service may already have, and this \
                 rotation would drop it; it is kept in '{}'. If it is forged, delete it once \
                 you know which password the service has",
                labels::STAGED
            )
        });
    }
    if r.fields.is_empty() || r.fields.len() > MAX_FIELDS {
        return Some(format!(
            "it staged {} fields, not 1 to {MAX_FIELDS}",
            r.fields.len()
        ));
    }
    if r.created.is_some() || !r.retire.is_empty() || !r.deleted.is_empty() {
        return Some("a staged rotation may not create, retire or delete credentials".into());
    }
    if !earlier.is_empty() && r.fields != earlier {
        return Some(format!(
            "an earlier run staged a credential the service may already have, and the plugin \
             returned another; the staged one is kept in '{}' for the next run",
            labels::STAGED
        ));
    }
    None
}

/// The `Rotation Staged` field that keeps `fields` (a secret: it holds the
/// new password).
pub fn field(fields: &[StoreField]) -> StoreField {
    let entries: Vec<Entry> = fields
        .iter()
        .map(|f| Entry {
            label: f.label.clone(),
            aliases: f.aliases.clone(),
            kind: match f.kind {
                ValueKind::Text => Kind::Text,
                ValueKind::Secret => Kind::Secret,
                ValueKind::Password => Kind::Password,
            },
            value: f.value.expose().to_string(),
        })
        .collect();
    StoreField {
        label: labels::STAGED.to_string(),
        aliases: vec![],
        kind: ValueKind::Secret,
        value: Secret::new(serde_json::to_string(&entries).expect("strings serialise")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(v: &str) -> StoreField {
        StoreField::password_for_test(v)
    }

    #[test]
    fn staged_fields_read_back_as_stored() {
        let f = field(&[password("n3w\"pa$$")]);
        let user = Record::for_test("u", &[("secret", labels::STAGED, f.value.expose())]);
        assert_eq!(read(&user).unwrap(), vec![password("n3w\"pa$$")]);
    }

    #[test]
    fn a_staged_rotation_must_finish_what_an_earlier_run_staged() {
        let earlier = vec![password("first")];
        let again = Rotation {
            fields: earlier.clone(),
            staged: true,
            ..Rotation::default()
        };
        assert_eq!(refusal(&again, &earlier), None);
        let fresh = Rotation {
            fields: vec![password("second")],
            ..again.clone()
        };
        assert!(
            refusal(&fresh, &earlier)
                .unwrap()
                .contains("returned another")
        );
        assert_eq!(refusal(&fresh, &[]), None);
        let plain = Rotation {
            staged: false,
            ..fresh.clone()
        };
        assert!(refusal(&plain, &earlier).unwrap().contains("would drop it"));
        let planned = Rotation {
            fields: vec![],
            ..plain
        };
        assert_eq!(refusal(&planned, &earlier), None);
        let empty = Rotation {
            fields: vec![],
            ..again.clone()
        };
        assert!(refusal(&empty, &[]).unwrap().contains("0 fields"));
        let creating = Rotation {
            created: Some("id".into()),
            ..again
        };
        assert!(refusal(&creating, &earlier).is_some());
    }

    #[test]
    fn no_staged_field_is_nothing_staged() {
        assert!(read(&Record::for_test("u", &[])).unwrap().is_empty());
    }

    #[test]
    fn an_edited_staged_field_is_refused_by_name() {
        for raw in [
            "hunter2",
            "[]",
            r#"[{"label":"p","kind":"text","value":"v","x":1}]"#,
        ] {
            let user = Record::for_test("u", &[("secret", labels::STAGED, raw)]);
            let e = read(&user).unwrap_err();
            assert_eq!(e.field, labels::STAGED);
            assert!(!e.why.contains("hunter2"), "{}", e.why);
        }
    }
}
