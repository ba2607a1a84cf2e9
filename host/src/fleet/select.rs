//! Which records a pass takes: the vault's fleet members sorted into work to
//! do now and report entries (disabled, bad fields, not due).

use std::collections::HashMap;

use chrono::Utc;

use crate::exit::Exit;
use crate::fields::PAM_USER_TYPE;
use crate::fields::{labels, stamp};
use crate::fleet::schedule::{self, Due, Member};
use crate::fleet::{Entry, FleetOptions, PassReport};
use crate::record::Record;
use crate::rotation::grace::Ledger;
use crate::rotation::job::{Job, Records};
use crate::sandbox::plugin::Subject;
use crate::vault::Vault;

/// A due record, ready to rotate.
pub(super) struct Work {
    pub(super) job: Job,
    pub(super) records: Records,
    pub(super) login: Option<String>,
    /// What it rotates, once vetted.
    pub(super) subject: Option<Subject>,
    /// When it is due, if not now (it then only retires old keys).
    pub(super) next_due: Option<String>,
}

/// The report entry of a record with a field the fleet cannot use.
pub(super) fn bad_field(uid: &str, bad: &crate::fields::BadField) -> Entry {
    let mut e = Entry::new(uid);
    e.exit_code = Some(Exit::Usage);
    e.error = Some(format!(
        "{bad}; this record was not rotated, the rest of the fleet was"
    ));
    e
}

/// Sorts the vault's records into work to do now and report entries.
pub(super) fn select(vault: &dyn Vault, opts: &FleetOptions, report: &mut PassReport) -> Vec<Work> {
    let now = Utc::now();
    let mut configs: HashMap<String, Option<Record>> = HashMap::new();
    let mut work = Vec::new();
    for uid in vault.uids() {
        let Some(user) = vault.record(&uid) else {
            continue;
        };
        if !user.record_type.eq_ignore_ascii_case(PAM_USER_TYPE) {
            continue;
        }
        let config = user.value(labels::CONFIG).and_then(|c| {
            configs
                .entry(c.to_string())
                .or_insert_with(|| vault.named(c, labels::CONFIG, None).ok())
                .clone()
        });
        let entry = match schedule::member(&user, config.as_ref(), opts.max_age) {
            Ok(Member::Outside) => continue,
            Ok(Member::Disabled) => {
                let mut e = Entry::new(&uid);
                e.error = Some("field 'Rotation' is 'disabled'".into());
                report.skipped.push(e);
                continue;
            }
            Err(bad) => {
                report.failed.push(bad_field(&uid, &bad));
                continue;
            }
            Ok(Member::Scheduled(entry)) => entry,
        };
        let config_record = config.as_ref().expect("scheduled records have a config");
        let ledger = match Ledger::read(&user, config_record) {
            Ok(l) => l,
            Err(bad) => {
                report.failed.push(bad_field(&uid, &bad));
                continue;
            }
        };
        let due = entry.due(now);
        if let Some(last) = entry.last_rotated {
            let oldest = report
                .oldest_rotation
                .entry(entry.config_uid.clone())
                .or_insert(last);
            *oldest = (*oldest).min(last);
        }
        // The earlier of the next rotation and the next end of a grace period.
        let next = match due {
            Due::At(at) => Some(ledger.next_expiry(now).map_or(at, |g| g.min(at))),
            Due::Now => None,
        };
        report.next_due = match (report.next_due, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next_due = next.map(stamp);
        // Kept old keys are checked every pass, due or not (retire-when-unused).
        if next_due.is_some()
            && ledger.expired_ids(now).is_empty()
            && ledger.kept().next().is_none()
        {
            let mut e = Entry::new(&uid);
            e.next_due = next_due;
            report.not_due.push(e);
            continue;
        }
        let job = Job {
            user_uid: entry.user_uid.clone(),
            config_uid: entry.config_uid.clone(),
            provider_uid: entry.provider_uid.clone(),
            dry_run: opts.dry_run,
            mark_pending: true,
            rotate: due == Due::Now,
        };
        // The user and config records are read already; only the provider is left.
        let provider = job
            .provider_uid
            .as_deref()
            .map(|p| vault.named(p, labels::PROVIDER, None))
            .transpose();
        match (provider, config) {
            (Ok(provider), Some(config)) => work.push(Work {
                login: user.value_of_type("login").map(str::to_lowercase),
                subject: None,
                next_due,
                job,
                records: Records {
                    user,
                    config,
                    provider,
                },
            }),
            (Err(e), _) => {
                let mut entry = Entry::new(&uid);
                entry.exit_code = Some(Exit::Usage);
                entry.error = Some(e.to_string());
                report.failed.push(entry);
            }
            // `member` schedules a record only when its config record exists.
            (Ok(_), None) => unreachable!("a scheduled record without its config record"),
        }
    }
    work
}
