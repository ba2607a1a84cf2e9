//! The grace period of deactivated credentials (docs/design.md, "Staged retire").
//!
//! A plugin may retire an old credential by deactivating it instead of
//! deleting it. The host records each one on the PAM user record, one line
//! `ID SINCE` in the field `Deactivated Keys`, and keeps the clock: the plugin
//! learns which have passed the config's `Inactive Grace Days` and may be deleted.

use chrono::{DateTime, Duration, Utc};

use crate::fields::{BadField, labels, stamp};
use crate::record::Record;
use crate::sandbox::plugin::Deactivated;

/// The grace period when the config record sets none.
pub const DEFAULT_DAYS: i64 = 7;
/// The longest grace period accepted, in days (ten years).
const MAX_DAYS: i64 = 3650;

/// One credential the host saw a plugin deactivate, or keep for its consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub since: DateTime<Utc>,
    /// Still active, kept until IAM shows it unused (`retire-when-unused`):
    /// written `ID SINCE kept`.
    pub kept: bool,
    /// This run found a kept key unused long enough: deactivate it now.
    pub retire: bool,
}

/// The deactivated credentials of one PAM user record, and its grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub entries: Vec<Entry>,
    pub grace: Duration,
    /// Entries for keys another record holds or tracks: kept in the field, but
    /// never believed (I6), so never handed to the plugin.
    pub aside: Vec<Entry>,
}

impl Ledger {
    /// Reads `Deactivated Keys` from `user` and `Inactive Grace Days` from `config`.
    pub fn read(user: &Record, config: &Record) -> Result<Self, BadField> {
        let grace = match config.value(labels::GRACE_DAYS) {
            None => DEFAULT_DAYS,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|d| (0..=MAX_DAYS).contains(d))
                .ok_or_else(|| BadField {
                    field: labels::GRACE_DAYS,
                    why: format!(
                        "in record '{}' is '{text}', not a whole number of days from 0 to {MAX_DAYS}; \
                         fix it or clear it for the default of {DEFAULT_DAYS}",
                        config.uid
                    ),
                })?,
        };
        let mut entries = Vec::new();
        for line in user
            .value(labels::DEACTIVATED)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            entries.push(parse_line(line).ok_or_else(|| BadField {
                field: labels::DEACTIVATED,
                why: format!(
                    "has the line '{line}', not 'KEY-ID TIME' (or 'KEY-ID TIME kept') with an \
                     RFC 3339 time like AKIAEXAMPLE 2026-11-26T03:00:00Z; fix or remove that line"
                ),
            })?);
        }
        Ok(Self {
            entries,
            grace: Duration::days(grace),
            aside: vec![],
        })
    }

    /// Sets aside every entry for which `others` names other records that hold
    /// or track the key, and says so, once per entry.
    pub fn set_aside(&mut self, others: impl Fn(&str) -> Vec<String>) -> Vec<String> {
        let mut notes = Vec::new();
        let (aside, keep): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| !others(&e.id).is_empty());
        for e in &aside {
            let who: Vec<String> = others(&e.id)
                .iter()
                .map(|u| format!("'{}'", crate::text::printable(u)))
                .collect();
            tracing::warn!(key = ?crate::text::printable(&e.id), "a '{}' entry names a key that record(s) {} hold or track: it is ignored", labels::DEACTIVATED, who.join(", "));
            notes.push(format!(
                "ignored the '{}' entry for {}: record(s) {} hold or track that key too, so this \
                 record's word on it is not believed; remove the line from the record that does \
                 not own the key",
                labels::DEACTIVATED,
                crate::text::printable(&e.id),
                who.join(", ")
            ));
        }
        self.entries = keep;
        self.aside = aside;
        notes
    }

    /// The entries as the plugin sees them at `now`.
    pub fn for_plugin(&self, now: DateTime<Utc>) -> Vec<Deactivated> {
        self.entries
            .iter()
            .map(|e| Deactivated {
                id: e.id.clone(),
                since: stamp(e.since),
                kept: e.kept,
                expired: self.expired(e, now),
            })
            .collect()
    }

    /// Whether the plugin is to act on `e` now: delete it (turned off, grace
    /// period over) or deactivate it (kept, and found unused this run).
    fn expired(&self, e: &Entry, now: DateTime<Utc>) -> bool {
        if e.kept {
            e.retire
        } else {
            now >= e.since + self.grace
        }
    }

    /// The entries kept active for their consumers.
    pub fn kept(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kept)
    }

    /// Marks the kept entry `id` to be deactivated by the next `purge`.
    pub fn retire(&mut self, id: &str) {
        for e in self.entries.iter_mut().filter(|e| e.kept && e.id == id) {
            e.retire = true;
        }
    }

    /// The ids whose grace period has ended at `now`.
    pub fn expired_ids(&self, now: DateTime<Utc>) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| self.expired(e, now))
            .map(|e| e.id.clone())
            .collect()
    }

    /// When the next grace period ends, if any entry is still in one.
    pub fn next_expiry(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.entries
            .iter()
            .filter(|e| !e.kept)
            .map(|e| e.since + self.grace)
            .filter(|at| *at > now)
            .min()
    }

    /// After a `purge` that `deactivated` and `retired` what it lists: a kept
    /// entry it deactivated is now turned off, from `now`; one it found gone is
    /// forgotten; one it left alone stays kept. Every other expired entry the
    /// plugin did not list as still deactivated is forgotten.
    pub fn after_purge(&mut self, now: DateTime<Utc>, deactivated: &[String], retired: &[String]) {
        let grace = self.grace;
        self.entries.retain_mut(|e| {
            if !e.kept {
                return now < e.since + grace || deactivated.contains(&e.id);
            }
            if std::mem::take(&mut e.retire) && deactivated.contains(&e.id) {
                e.kept = false;
                e.since = now;
            }
            !retired.contains(&e.id)
        });
    }

    /// Stops tracking `ids` (deleted to make room); true if any was tracked.
    pub fn forget(&mut self, ids: &[String]) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !ids.contains(&e.id));
        self.entries.len() != before
    }

    /// After a `finalize` that deactivated `ids` (or, when `kept`, left them
    /// active for their consumers) at `now`.
    pub fn add(&mut self, ids: &[String], now: DateTime<Utc>, kept: bool) {
        self.forget(ids);
        self.entries.extend(ids.iter().map(|id| Entry {
            id: id.clone(),
            since: now,
            kept,
            retire: false,
        }));
    }

    /// The field's new value; `None` when nothing is left to track.
    pub fn render(&self) -> Option<String> {
        (!self.entries.is_empty() || !self.aside.is_empty()).then(|| {
            self.entries
                .iter()
                .chain(&self.aside)
                .map(|e| {
                    let kept = if e.kept { " kept" } else { "" };
                    format!("{} {}{kept}", e.id, stamp(e.since))
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
    }
}

/// Whether the host can record `id`: a plugin's id goes into a vault field,
/// so one that could break the line format (or hide text) is refused.
pub fn recordable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut parts = line.split_whitespace();
    let (id, since) = (parts.next()?, parts.next()?);
    let kept = match (parts.next(), parts.next()) {
        (None, _) => false,
        (Some(word), None) if word.eq_ignore_ascii_case("kept") => true,
        _ => return None,
    };
    if !recordable(id) {
        return None;
    }
    let since = DateTime::parse_from_rfc3339(since)
        .ok()?
        .with_timezone(&Utc);
    Some(Entry {
        id: id.to_string(),
        since,
        kept,
        retire: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str, fields: &[(&str, &str)]) -> Record {
        let fields: Vec<_> = fields.iter().map(|(l, v)| ("text", *l, *v)).collect();
        Record::for_test(uid, &fields)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn entries_expire_after_the_configs_grace_days() {
        let user = record(
            "u",
            &[(
                "Deactivated Keys",
                "AKIAOLD1 2026-11-01T00:00:00Z\n\n  AKIAOLD2 2026-11-20T12:00:00Z ",
            )],
        );
        let config = record("c", &[("Inactive Grace Days", "10")]);
        let ledger = Ledger::read(&user, &config).unwrap();
        let now = at("2026-11-26T00:00:00Z");
        assert_eq!(ledger.expired_ids(now), ["AKIAOLD1"]);
        let seen = ledger.for_plugin(now);
        assert_eq!(seen[1].since, "2026-11-20T12:00:00Z");
        assert!(seen[0].expired && !seen[1].expired);
        assert_eq!(ledger.next_expiry(now), Some(at("2026-11-30T12:00:00Z")));
        let default = Ledger::read(&user, &record("c", &[])).unwrap();
        assert_eq!(default.grace, Duration::days(DEFAULT_DAYS));
    }

    #[test]
    fn purge_forgets_expired_entries_unless_kept_and_add_restamps() {
        let user = record(
            "u",
            &[(
                "Deactivated Keys",
                "A1 2026-11-01T00:00:00Z\nA2 2026-11-02T00:00:00Z\nA3 2026-11-25T00:00:00Z",
            )],
        );
        let mut ledger = Ledger::read(&user, &record("c", &[])).unwrap();
        let now = at("2026-11-26T00:00:00Z");
        ledger.after_purge(now, &["A2".to_string()], &[]);
        let ids: Vec<_> = ledger.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["A2", "A3"]);
        ledger.add(&["A3".to_string(), "B".to_string()], now, false);
        assert_eq!(
            ledger.render().unwrap(),
            "A2 2026-11-02T00:00:00Z\nA3 2026-11-26T00:00:00Z\nB 2026-11-26T00:00:00Z"
        );
        ledger.entries.clear();
        assert_eq!(ledger.render(), None);
    }

    #[test]
    fn malformed_fields_are_named() {
        let config = record("c", &[]);
        for bad in [
            "AKIA",
            "AKIA yesterday",
            "AKIA 2026-11-01T00:00:00Z extra",
            "AK;IA 2026-11-01T00:00:00Z",
        ] {
            let err =
                Ledger::read(&record("u", &[("Deactivated Keys", bad)]), &config).unwrap_err();
            assert_eq!(err.field, "Deactivated Keys", "{bad}");
        }
        for bad in ["-1", "3651", "seven", "1.5"] {
            let err = Ledger::read(
                &record("u", &[]),
                &record("c", &[("Inactive Grace Days", bad)]),
            )
            .unwrap_err();
            assert_eq!(err.field, "Inactive Grace Days", "{bad}");
            assert!(err.why.contains("from 0 to 3650"), "{}", err.why);
        }
    }
}
