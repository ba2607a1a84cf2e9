//! Whether consumers still use an old key kept for them (`Old Key Action`
//! `retire-when-unused`, docs/design.md §10.1). IAM records each key's last
//! use; the host keeps the clock. A kept key is retired (deactivated, then
//! deleted after the grace period) once IAM shows no use of it for the config's
//! `Unused Hours`, counted from its last use or from the rotation that kept
//! it, whichever is later. It is never retired while IAM shows it in use.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::fields::{BadField, labels, stamp};
use crate::record::Record;
use crate::rotation::grace::Ledger;
use crate::sandbox::plugin::CredentialUse;
use crate::text::printable;

/// IAM's last-use data is not real time (AWS documents up to four hours for
/// last-accessed data), so the default waits well past that.
pub const DEFAULT_UNUSED_HOURS: i64 = 24;
const MAX_UNUSED_HOURS: i64 = 720;
pub const DEFAULT_OVERLAP_DAYS: i64 = 30;
const MAX_OVERLAP_DAYS: i64 = 3650;

/// How long a kept key must go unused, and how long an overlap may last
/// before it is worth a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub unused: Duration,
    pub overlap: Duration,
}

impl Policy {
    /// Reads `Unused Hours` and `Overlap Max Days` from the config record.
    pub fn read(config: &Record) -> Result<Self, BadField> {
        let hours = whole(
            config,
            labels::UNUSED_HOURS,
            DEFAULT_UNUSED_HOURS,
            0,
            MAX_UNUSED_HOURS,
            "hours",
        )?;
        let days = whole(
            config,
            labels::OVERLAP_DAYS,
            DEFAULT_OVERLAP_DAYS,
            1,
            MAX_OVERLAP_DAYS,
            "days",
        )?;
        Ok(Self {
            unused: Duration::hours(hours),
            overlap: Duration::days(days),
        })
    }
}

fn whole(
    config: &Record,
    field: &'static str,
    default: i64,
    min: i64,
    max: i64,
    unit: &str,
) -> Result<i64, BadField> {
    let Some(text) = config.value(field) else {
        return Ok(default);
    };
    text.parse::<i64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| BadField {
            field,
            why: format!(
                "in record '{}' is '{}', not a whole number of {unit} from {min} to {max}; fix it \
                 or clear it for the default of {default}",
                printable(&config.uid),
                printable(text)
            ),
        })
}

/// A kept key still in use, or whose use could not be read: key ids, dates,
/// services and regions only, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInUse {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Still in use after `Overlap Max Days`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub overdue: bool,
    /// Why its use is unknown (it is then treated as in use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl KeyInUse {
    /// One sentence for notes and logs.
    pub fn describe(&self) -> String {
        if let Some(why) = &self.unknown {
            return format!(
                "kept the old key {}: when it was last used could not be read ({why}); it is \
                 treated as in use",
                self.id
            );
        }
        let last = match (&self.last_used, &self.service, &self.region) {
            (Some(at), service, region) => format!(
                "last used {at}{}{}",
                service
                    .as_deref()
                    .map(|s| format!(" with {s}"))
                    .unwrap_or_default(),
                region
                    .as_deref()
                    .map(|r| format!(" in {r}"))
                    .unwrap_or_default()
            ),
            (None, ..) => "not used since the rotation".into(),
        };
        format!("the old key {} is still in use ({last}): kept", self.id)
    }
}

/// Judges every kept entry of `ledger` by `uses` (IAM's answer, or why there
/// is none) at `now`: marks the unused and the gone for retirement, and
/// returns the plan's sentences and the keys still in use.
pub fn judge(
    ledger: &mut Ledger,
    uses: Result<Vec<CredentialUse>, String>,
    policy: Policy,
    now: DateTime<Utc>,
) -> (Vec<String>, Vec<KeyInUse>) {
    let kept: Vec<(String, DateTime<Utc>)> =
        ledger.kept().map(|e| (e.id.clone(), e.since)).collect();
    let (mut notes, mut in_use, mut retire) = (Vec::new(), Vec::new(), Vec::new());
    for (id, since) in kept {
        let found = uses.as_ref().map(|u| u.iter().find(|u| u.id == id));
        let unknown = |why: String| KeyInUse {
            id: id.clone(),
            last_used: None,
            service: None,
            region: None,
            overdue: now - since > policy.overlap,
            unknown: Some(why),
        };
        let stays = match found {
            Err(why) => Some(unknown(why.clone())),
            Ok(None) => Some(unknown("the plugin did not report it".into())),
            Ok(Some(u)) if !u.found => {
                notes.push(format!(
                    "the old key {id} is gone from IAM: it is no longer tracked"
                ));
                None
            }
            Ok(Some(u)) => judge_one(&id, since, u, policy, now, &mut notes),
        };
        match stays {
            None => retire.push(id),
            Some(k) => in_use.push(k),
        }
    }
    for id in &retire {
        ledger.retire(id);
    }
    for k in &in_use {
        notes.push(k.describe());
        if k.overdue {
            notes.push(format!(
                "the old key {} has been kept for over {} days and is still in use: find what \
                 signs with it and move it to the new key",
                k.id,
                policy.overlap.num_days()
            ));
        }
    }
    (notes, in_use)
}

/// `None` when `u` shows the key unused for long enough; else why it stays.
fn judge_one(
    id: &str,
    since: DateTime<Utc>,
    u: &CredentialUse,
    policy: Policy,
    now: DateTime<Utc>,
    notes: &mut Vec<String>,
) -> Option<KeyInUse> {
    let clean = |v: &Option<String>| v.as_deref().map(printable);
    let last = match &u.last_used {
        None => None,
        Some(text) => match DateTime::parse_from_rfc3339(text.trim()) {
            Ok(at) => Some(at.with_timezone(&Utc)),
            Err(_) => {
                return Some(KeyInUse {
                    id: id.to_string(),
                    last_used: None,
                    service: None,
                    region: None,
                    overdue: now - since > policy.overlap,
                    unknown: Some(format!("IAM gave the date '{}'", printable(text))),
                });
            }
        },
    };
    let reference = last.map_or(since, |at| at.max(since));
    if now - reference >= policy.unused {
        notes.push(format!(
            "retire the old key {id}: IAM shows no use of it since {} (over 'Unused Hours', {} h); \
             deactivate it now, delete it after 'Inactive Grace Days'",
            stamp(reference),
            policy.unused.num_hours()
        ));
        return None;
    }
    Some(KeyInUse {
        id: id.to_string(),
        last_used: last.map(stamp),
        service: clean(&u.service),
        region: clean(&u.region),
        overdue: now - since > policy.overlap,
        unknown: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[(&str, &str)]) -> Record {
        let fields: Vec<_> = fields.iter().map(|(l, v)| ("text", *l, *v)).collect();
        Record::for_test("u", &fields)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn used(id: &str, when: Option<&str>) -> CredentialUse {
        CredentialUse {
            id: id.into(),
            found: true,
            last_used: when.map(Into::into),
            service: Some("s3".into()),
            region: Some("eu-west-1".into()),
        }
    }

    #[test]
    fn a_kept_key_is_retired_only_after_unused_hours_without_use() {
        let user = record(&[(
            "Deactivated Keys",
            "BUSY 2026-11-01T00:00:00Z kept\nIDLE 2026-11-01T00:00:00Z kept\nGONE 2026-11-01T00:00:00Z kept\nOFF 2026-11-28T00:00:00Z",
        )]);
        let mut ledger = Ledger::read(&user, &record(&[])).unwrap();
        let policy = Policy::read(&record(&[("Unused Hours", "24")])).unwrap();
        let now = at("2026-12-01T12:00:00Z");
        let mut gone = used("GONE", None);
        gone.found = false;
        let uses = vec![
            used("BUSY", Some("2026-12-01T11:00:00Z")),
            used("IDLE", Some("2026-11-29T11:00:00+00:00")),
            gone,
        ];
        let (notes, in_use) = judge(&mut ledger, Ok(uses), policy, now);
        assert_eq!(in_use.len(), 1, "{notes:?}");
        assert_eq!(in_use[0].id, "BUSY");
        assert_eq!(in_use[0].last_used.as_deref(), Some("2026-12-01T11:00:00Z"));
        assert!(in_use[0].overdue, "kept since 2026-11-01, over 30 days");
        let mut expired = ledger.expired_ids(now);
        expired.sort();
        assert_eq!(expired, ["GONE", "IDLE"]);
        ledger.after_purge(now, &["IDLE".into()], &["GONE".into()]);
        assert_eq!(
            ledger.render().unwrap(),
            "BUSY 2026-11-01T00:00:00Z kept\nIDLE 2026-12-01T12:00:00Z\nOFF 2026-11-28T00:00:00Z"
        );
    }

    #[test]
    fn an_unreadable_use_keeps_the_key_and_says_why() {
        let user = record(&[("Deactivated Keys", "K 2026-11-30T00:00:00Z kept")]);
        let mut ledger = Ledger::read(&user, &record(&[])).unwrap();
        let policy = Policy::read(&record(&[])).unwrap();
        let now = at("2026-12-01T12:00:00Z");
        let (notes, in_use) = judge(&mut ledger, Err("AccessDenied".into()), policy, now);
        assert_eq!(in_use[0].unknown.as_deref(), Some("AccessDenied"));
        assert!(notes[0].contains("could not be read"), "{notes:?}");
        assert!(ledger.expired_ids(now).is_empty());
        // Never used, kept 36 hours ago: past the default 24 h.
        let (_, in_use) = judge(&mut ledger, Ok(vec![used("K", None)]), policy, now);
        assert!(in_use.is_empty());
        assert_eq!(ledger.expired_ids(now), ["K"]);
    }

    #[test]
    fn bad_policy_fields_are_named() {
        for (label, value) in [
            ("Unused Hours", "721"),
            ("Unused Hours", "-1"),
            ("Overlap Max Days", "0"),
            ("Overlap Max Days", "x"),
        ] {
            let err = Policy::read(&record(&[(label, value)])).unwrap_err();
            assert_eq!(err.field, label);
            assert!(err.why.contains(value), "{}", err.why);
        }
    }
}
