//! Which PAM user records belong to the fleet, and when each is due.
//!
//! A `pamUser` record joins the fleet with a custom field `Rotation Config`
//! naming its config record (and optionally `Rotation Provider`). Its schedule
//! is its own `Rotation Schedule` (5-field cron, in `Rotation Timezone` or UTC)
//! or `Rotation Max Age Days`; failing both, the config record's; failing
//! those, `--max-age-days`. `Last Rotated` (RFC 3339) says when it last got a
//! new key; `Rotation Pending` marks a rotation whose finalize has not run.

use std::str::FromStr;

use chrono::{DateTime, Duration as Days, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::fields::{BadField, labels};
use crate::record::Record;

/// When a record is rotated.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// At every instant of a cron expression.
    Cron { expr: Box<Cron>, tz: Tz },
    /// When the key is this old.
    MaxAge(Days),
}

/// What the fleet makes of one record.
#[derive(Debug, Clone)]
pub enum Member {
    /// Not a fleet record (no `Rotation Config`, or not a `pamUser`).
    Outside,
    /// `Rotation` is `disabled`.
    Disabled,
    /// In the fleet, with its schedule.
    Scheduled(Box<FleetEntry>),
}

/// A fleet record and when it is due.
#[derive(Debug, Clone)]
pub struct FleetEntry {
    pub user_uid: String,
    pub config_uid: String,
    pub provider_uid: Option<String>,
    pub schedule: Schedule,
    pub last_rotated: Option<DateTime<Utc>>,
    /// An earlier rotation stored its key, or staged its credential, but did
    /// not finish.
    pub pending: bool,
}

/// Whether a record is due now, and if not, when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Now,
    At(DateTime<Utc>),
}

/// Parses a 5-field cron expression (minute hour day-of-month month day-of-week).
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "'{text}' has {fields} fields; it must be a 5-field cron expression like '0 3 * * 1' \
             (minute, hour, day of month, month, day of week)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("'{text}' is not a valid cron expression ({e})"))
}

/// Reads a record's place in the fleet. `config` is the record `Rotation
/// Config` names, when the vault has it; `default_age` is `--max-age-days`.
pub fn member(
    user: &Record,
    config: Option<&Record>,
    default_age: Days,
) -> Result<Member, BadField> {
    if !user
        .record_type
        .eq_ignore_ascii_case(crate::fields::PAM_USER_TYPE)
    {
        return Ok(Member::Outside);
    }
    let Some(config_uid) = user.value(labels::CONFIG) else {
        return Ok(Member::Outside);
    };
    if user
        .value(labels::ENABLED)
        .is_some_and(|v| v.eq_ignore_ascii_case("disabled"))
    {
        return Ok(Member::Disabled);
    }
    let Some(config) = config else {
        return Err(BadField {
            field: labels::CONFIG,
            why: format!("names record '{config_uid}', which the vault does not have"),
        });
    };
    // The record's own schedule wins as a whole; then the config record's.
    let own = schedule_of(user)?;
    let schedule = match own {
        Some(s) => s,
        None => schedule_of(config)?.unwrap_or(Schedule::MaxAge(default_age)),
    };
    let last_rotated = user
        .value(labels::LAST_ROTATED)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| BadField {
                    field: labels::LAST_ROTATED,
                    why: format!(
                        "is '{v}', not an RFC 3339 time like 2026-11-26T03:00:00Z ({e}); fix or clear it"
                    ),
                })
        })
        .transpose()?;
    Ok(Member::Scheduled(Box::new(FleetEntry {
        user_uid: user.uid.clone(),
        config_uid: config_uid.to_string(),
        provider_uid: user.value(labels::PROVIDER).map(str::to_string),
        schedule,
        last_rotated,
        pending: user.value(labels::PENDING).is_some() || user.value(labels::STAGED).is_some(),
    })))
}

/// A record's own schedule fields, if it has any.
fn schedule_of(record: &Record) -> Result<Option<Schedule>, BadField> {
    let tz = match record.value(labels::TIMEZONE) {
        None => Tz::UTC,
        Some(name) => Tz::from_str(name).map_err(|_| BadField {
            field: labels::TIMEZONE,
            why: format!("is '{name}', not an IANA time zone name like 'Europe/Berlin' or 'UTC'"),
        })?,
    };
    if let Some(text) = record.value(labels::SCHEDULE) {
        let expr = parse_cron(text).map_err(|why| BadField {
            field: labels::SCHEDULE,
            why: format!("in record '{}': {why}", record.uid),
        })?;
        return Ok(Some(Schedule::Cron {
            expr: Box::new(expr),
            tz,
        }));
    }
    if let Some(text) = record.value(labels::MAX_AGE_DAYS) {
        let days = text
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=36_500).contains(d))
            .ok_or_else(|| BadField {
                field: labels::MAX_AGE_DAYS,
                why: format!(
                    "in record '{}' is '{text}', not a whole number of days from 1 to 36500",
                    record.uid
                ),
            })?;
        return Ok(Some(Schedule::MaxAge(Days::days(days))));
    }
    Ok(None)
}

impl FleetEntry {
    /// Due when it never rotated, when an earlier rotation did not finish,
    /// when a scheduled instant passed since `Last Rotated`, or when the key
    /// reached its maximum age.
    pub fn due(&self, now: DateTime<Utc>) -> Due {
        let Some(last) = self.last_rotated else {
            return Due::Now;
        };
        if self.pending {
            return Due::Now;
        }
        match &self.schedule {
            Schedule::MaxAge(age) => {
                let at = last + *age;
                if now >= at { Due::Now } else { Due::At(at) }
            }
            Schedule::Cron { expr, tz } => {
                let next = expr.find_next_occurrence(&last.with_timezone(tz), false);
                match next {
                    Ok(at) if at.with_timezone(&Utc) <= now => Due::Now,
                    Ok(at) => Due::At(at.with_timezone(&Utc)),
                    // No instant ever again (for example 30 February): never due.
                    Err(_) => Due::At(DateTime::<Utc>::MAX_UTC),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Field;
    use crate::secret::Secret;

    fn record(uid: &str, kind: &str, fields: &[(&str, &str)]) -> Record {
        Record {
            uid: uid.into(),
            record_type: kind.into(),
            title: uid.into(),
            fields: fields
                .iter()
                .map(|(l, v)| Field {
                    kind: "text".into(),
                    label: Some(l.to_string()),
                    values: vec![Secret::new(*v)],
                })
                .collect(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn entry(user: &[(&str, &str)], config: &[(&str, &str)]) -> Result<Member, BadField> {
        let mut fields = vec![(labels::CONFIG, "cfg")];
        fields.extend_from_slice(user);
        member(
            &record("u", "pamUser", &fields),
            Some(&record("cfg", "login", config)),
            Days::days(90),
        )
    }

    fn scheduled(m: Result<Member, BadField>) -> FleetEntry {
        match m {
            Ok(Member::Scheduled(e)) => *e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn membership_and_disabled() {
        let cfg = record("cfg", "login", &[]);
        let d = Days::days(90);
        let plain = record("u", "pamUser", &[]);
        assert!(matches!(member(&plain, None, d), Ok(Member::Outside)));
        let login = record("u", "login", &[(labels::CONFIG, "cfg")]);
        assert!(matches!(member(&login, Some(&cfg), d), Ok(Member::Outside)));
        let off = record(
            "u",
            "pamUser",
            &[(labels::CONFIG, "cfg"), ("rotation", " DISABLED ")],
        );
        assert!(matches!(member(&off, Some(&cfg), d), Ok(Member::Disabled)));
        let missing = record("u", "pamUser", &[(labels::CONFIG, "nope")]);
        let err = member(&missing, None, d).unwrap_err();
        assert_eq!(err.field, labels::CONFIG);
        assert!(err.why.contains("'nope'"), "{err}");
    }

    #[test]
    fn never_rotated_is_due() {
        let e = scheduled(entry(&[], &[]));
        assert_eq!(e.due(at("2026-01-01T00:00:00Z")), Due::Now);
    }

    #[test]
    fn max_age_from_the_record_the_config_or_the_default() {
        let now = at("2026-11-26T12:00:00Z");
        let last = (labels::LAST_ROTATED, "2026-11-16T12:00:00Z");
        // Own 10 days: due exactly at 10 days.
        let e = scheduled(entry(&[last, (labels::MAX_AGE_DAYS, "10")], &[]));
        assert_eq!(e.due(now), Due::Now);
        // Config's 30 days.
        let e = scheduled(entry(&[last], &[(labels::MAX_AGE_DAYS, "30")]));
        assert_eq!(e.due(now), Due::At(at("2026-12-16T12:00:00Z")));
        // Default 90 days.
        let e = scheduled(entry(&[last], &[]));
        assert_eq!(e.due(now), Due::At(at("2027-02-14T12:00:00Z")));
        // The record's own schedule wins over the config's.
        let e = scheduled(entry(
            &[last, (labels::MAX_AGE_DAYS, "60")],
            &[(labels::MAX_AGE_DAYS, "1")],
        ));
        assert_eq!(e.due(now), Due::At(at("2027-01-15T12:00:00Z")));
    }

    #[test]
    fn cron_is_due_when_an_instant_passed_since_the_last_rotation() {
        // Mondays at 03:00.
        let sched = (labels::SCHEDULE, "0 3 * * 1");
        let last = (labels::LAST_ROTATED, "2026-11-23T03:00:00Z"); // a Monday, at the instant
        let e = scheduled(entry(&[sched, last], &[]));
        assert_eq!(
            e.due(at("2026-11-30T02:59:59Z")),
            Due::At(at("2026-11-30T03:00:00Z"))
        );
        assert_eq!(e.due(at("2026-11-30T03:00:00Z")), Due::Now);
        // In a time zone: 03:00 in Berlin is 02:00 UTC in winter.
        let e = scheduled(entry(
            &[sched, last, (labels::TIMEZONE, "Europe/Berlin")],
            &[],
        ));
        assert_eq!(
            e.due(at("2026-11-29T12:00:00Z")),
            Due::At(at("2026-11-30T02:00:00Z"))
        );
        // Inherited from the config record.
        let e = scheduled(entry(&[last], &[sched]));
        assert_eq!(e.due(at("2026-12-01T00:00:00Z")), Due::Now);
    }

    #[test]
    fn a_pending_rotation_is_due_at_once() {
        let e = scheduled(entry(
            &[
                (labels::LAST_ROTATED, "2026-11-26T00:00:00Z"),
                (labels::PENDING, "finalize"),
            ],
            &[],
        ));
        assert_eq!(e.due(at("2026-11-26T00:00:01Z")), Due::Now);
    }

    #[test]
    fn malformed_fields_name_the_field_and_the_reason() {
        for (fields, field, says) in [
            (
                vec![(labels::SCHEDULE, "0 3 * *")],
                labels::SCHEDULE,
                "has 4 fields",
            ),
            (
                vec![(labels::SCHEDULE, "0 3 * * 1 2026")],
                labels::SCHEDULE,
                "has 6 fields",
            ),
            (
                vec![(labels::SCHEDULE, "61 3 * * *")],
                labels::SCHEDULE,
                "not a valid cron",
            ),
            (
                vec![(labels::MAX_AGE_DAYS, "ninety")],
                labels::MAX_AGE_DAYS,
                "whole number",
            ),
            (
                vec![(labels::MAX_AGE_DAYS, "0")],
                labels::MAX_AGE_DAYS,
                "from 1 to 36500",
            ),
            (
                vec![(labels::TIMEZONE, "Mars/Olympus")],
                labels::TIMEZONE,
                "IANA",
            ),
            (
                vec![(labels::LAST_ROTATED, "yesterday")],
                labels::LAST_ROTATED,
                "RFC 3339",
            ),
        ] {
            let err = entry(&fields, &[]).unwrap_err();
            assert_eq!(err.field, field, "{fields:?}");
            assert!(err.why.contains(says), "{fields:?}: {err}");
        }
    }
}
