//! Who holds which credential (invariant I6, docs/design.md §3).
//!
//! Every record of the vault may hold credential ids, in the fields the plugin
//! names (`credential-id-fields`), and may track deactivated ones in its
//! `Deactivated Keys` ledger. A record's rotation must leave every id that
//! another record holds or tracks alone: the plugin asks `held-elsewhere`, and
//! the host checks what the plugin returns against the same map.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use crate::fields::labels;
use crate::record::Record;

/// Credential id → the UIDs of the records that hold or track it. Rotations
/// add the ids they create, so a concurrent rotation in the same pass sees them.
#[derive(Debug, Default)]
pub struct Holdings {
    by_id: RwLock<BTreeMap<String, BTreeSet<String>>>,
}

impl Holdings {
    /// Adds `record`'s ids: values of fields whose label or type is one of
    /// `id_fields` (any case), and the first word of each ledger line.
    pub fn add_record(&self, record: &Record, id_fields: &[String]) {
        let mut by_id = self.by_id.write().expect("never poisoned");
        for id in held_ids(record, id_fields) {
            by_id.entry(id).or_default().insert(record.uid.clone());
        }
    }

    /// Record `uid` holds `id` from now on (a credential its rotation created).
    pub fn add(&self, id: &str, uid: &str) {
        self.by_id
            .write()
            .expect("never poisoned")
            .entry(id.trim().to_string())
            .or_default()
            .insert(uid.to_string());
    }

    /// Whether a record other than `uid` holds or tracks `id`.
    pub fn held_elsewhere(&self, id: &str, uid: &str) -> bool {
        !self.others(id, uid).is_empty()
    }

    /// The other records that hold or track `id`.
    pub fn others(&self, id: &str, uid: &str) -> Vec<String> {
        self.by_id
            .read()
            .expect("never poisoned")
            .get(id.trim())
            .map(|h| h.iter().filter(|h| *h != uid).cloned().collect())
            .unwrap_or_default()
    }

    /// The ids `record` holds in its credential fields (not its ledger) that
    /// another record also holds or tracks, with those records.
    pub fn shared(&self, record: &Record, id_fields: &[String]) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = field_ids(record, id_fields)
            .filter_map(|id| {
                let others = self.others(&id, &record.uid);
                (!others.is_empty()).then_some((id, others))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Ids in `record`'s credential fields.
fn field_ids<'a>(record: &'a Record, id_fields: &'a [String]) -> impl Iterator<Item = String> + 'a {
    // A secret is never an id: else a plugin naming `password` among its id
    // fields could test guesses at every record's secrets through
    // `held-elsewhere`. A label decides (Keeper keeps a `Client ID` in a
    // field of type secret); an unlabelled field, its type.
    let named = move |f: &crate::record::Field| {
        let secret = match f.label.as_deref() {
            // The host's staged fields hold a new password.
            Some(label)
                if label
                    .trim()
                    .eq_ignore_ascii_case(crate::fields::labels::STAGED) =>
            {
                true
            }
            Some(label) => crate::text::looks_secret(label),
            None => crate::text::looks_secret(&f.kind),
        };
        !secret
            && id_fields.iter().any(|want| {
                f.kind.eq_ignore_ascii_case(want)
                    || f.label
                        .as_deref()
                        .is_some_and(|l| l.trim().eq_ignore_ascii_case(want))
            })
    };
    record
        .fields
        .iter()
        .filter(move |f| named(f))
        .flat_map(|f| f.values.iter())
        .flat_map(|v| {
            v.expose()
                .lines()
                .map(str::trim)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
}

/// Field ids and the ids its ledger tracks. A malformed ledger line still
/// protects its first word: a record's own problem never exposes another's key.
fn held_ids(record: &Record, id_fields: &[String]) -> Vec<String> {
    let ledger = record
        .value(labels::DEACTIVATED)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect::<Vec<_>>();
    field_ids(record, id_fields).chain(ledger).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str, fields: &[(&str, &str, &str)]) -> Record {
        Record::for_test(uid, fields)
    }

    #[test]
    fn a_secret_is_never_an_id_whatever_the_plugin_names() {
        let fields = vec![
            "password".to_string(),
            "Client Secret".into(),
            "Client ID".into(),
        ];
        let r = record(
            "a",
            &[
                ("password", "", "hunter2"),
                ("secret", "Client Secret", "s3cret"),
                ("secret", "Client ID", "AKIAC"),
            ],
        );
        let ids: Vec<String> = field_ids(&r, &fields).collect();
        assert_eq!(ids, ["AKIAC"]);
    }

    #[test]
    fn ids_in_named_fields_and_ledgers_are_held() {
        let fields = vec!["aws_access_key_id".to_string(), "pamAwsAccessKeyId".into()];
        let a = record("a", &[("text", "AWS_Access_Key_Id ", " AKIAA ")]);
        let b = record(
            "b",
            &[
                (
                    "text",
                    "Deactivated Keys",
                    "AKIAOLD 2026-11-01T00:00:00Z\ngarbage",
                ),
                ("pamAwsAccessKeyId", "", "AKIAPROV"),
                ("text", "aws_access_key_id", "AKIAA"),
            ],
        );
        let h = Holdings::default();
        h.add_record(&a, &fields);
        h.add_record(&b, &fields);
        assert!(h.held_elsewhere("AKIAA", "a"));
        assert!(h.held_elsewhere("AKIAOLD", "a"));
        assert!(h.held_elsewhere("garbage", "a"));
        assert!(h.held_elsewhere("AKIAPROV", "a"));
        assert!(!h.held_elsewhere("AKIAOLD", "b"));
        assert!(!h.held_elsewhere("AKIANONE", "a"));
        assert_eq!(
            h.shared(&a, &fields),
            [("AKIAA".to_string(), vec!["b".to_string()])]
        );
    }
}
