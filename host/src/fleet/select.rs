//! Which records a pass takes: the vault's fleet members sorted into work to
//! do now and report entries (disabled, bad fields, not due).

use chrono::{DateTime, Utc};

use crate::exit::Exit;
use crate::fields::PAM_USER_TYPE;
use crate::fields::{labels, stamp};
use crate::fleet::schedule::{self, Due, FleetEntry, Member};
use crate::fleet::vet::Vetter;
use crate::fleet::{Entry, FleetOptions, PassReport};
use crate::record::Record;
use crate::rotation::grace::Ledger;
use crate::rotation::job::{FleetReader, Job, Records};
use crate::sandbox::plugin::Subject;
use crate::vault::Vault;

/// A due record, ready to rotate.
pub(super) struct Work {
    pub(super) job: Job,
    pub(super) records: Records,
    pub(super) login: Option<String>,
    /// What it rotates, once vetted.
    pub(super) subject: Option<Subject>,
    /// Which of the set's plugins rotates it, once vetted.
    pub(super) plugin: usize,
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

/// Sorts the vault's records into work to do now and report entries, and
/// has `vetter` vet them: each record is read once.
pub(super) async fn select(
    vault: &dyn Vault,
    opts: &FleetOptions,
    vetter: &mut Vetter<'_>,
    report: &mut PassReport,
) -> Vec<Work> {
    let now = Utc::now();
    let mut reader = FleetReader::new(vault);
    let mut work = Vec::new();
    for uid in vault.uids() {
        let Some(user) = vault.record(&uid) else {
            continue;
        };
        vetter.hold(&user);
        if !user.record_type.eq_ignore_ascii_case(PAM_USER_TYPE) {
            continue;
        }
        let config = (user.value(labels::CONFIG)).and_then(|c| reader.named(c, labels::CONFIG));
        let read = match (config, reader.provider(&user)) {
            (Some(config), Some(provider)) => {
                let records = Records {
                    user,
                    config,
                    provider,
                };
                vetter.member(&records).await;
                Read::Member(records)
            }
            (config, _) => Read::Partly(user, config),
        };
        if let Some(w) = consider(vault, opts, report, now, read) {
            work.push(w);
        }
    }
    work
}

/// A PAM user record as read: a member's records, or what of them reads.
enum Read {
    Member(Records),
    Partly(Record, Option<Record>),
}

/// One PAM user record: work to do now, or an entry in the report.
fn consider(
    vault: &dyn Vault,
    opts: &FleetOptions,
    report: &mut PassReport,
    now: DateTime<Utc>,
    read: Read,
) -> Option<Work> {
    let (user, config, provider) = match read {
        Read::Member(r) => (r.user, Some(r.config), r.provider),
        Read::Partly(user, config) => (user, config, None),
    };
    let uid = user.uid.clone();
    let entry = match schedule::member(&user, config.as_ref(), opts.max_age) {
        Ok(Member::Outside) => return None,
        Ok(Member::Disabled) => {
            let mut e = Entry::new(&uid);
            e.error = Some("field 'Rotation' is 'disabled'".into());
            report.skipped.push(e);
            return None;
        }
        Err(bad) => {
            report.failed.push(bad_field(&uid, &bad));
            return None;
        }
        Ok(Member::Scheduled(entry)) => entry,
    };
    // `member` schedules a record only when its config record exists.
    let config = config.expect("scheduled records have a config");
    let ledger = match Ledger::read(&user, &config) {
        Ok(l) => l,
        Err(bad) => {
            report.failed.push(bad_field(&uid, &bad));
            return None;
        }
    };
    let due = entry.due(now);
    let next_due = note_schedule(report, &entry, &ledger, due, now);
    // Kept old keys are checked every pass, due or not (retire-when-unused).
    if next_due.is_some() && ledger.expired_ids(now).is_empty() && ledger.kept().next().is_none() {
        let mut e = Entry::new(&uid);
        e.next_due = next_due;
        report.not_due.push(e);
        return None;
    }
    let job = Job {
        user_uid: entry.user_uid.clone(),
        config_uid: entry.config_uid.clone(),
        provider_uid: entry.provider_uid.clone(),
        dry_run: opts.dry_run,
        mark_pending: true,
        rotate: due == Due::Now,
    };
    match provider_of(vault, &job, provider) {
        Ok(provider) => Some(Work {
            login: user.value_of_type("login").map(str::to_lowercase),
            subject: None,
            plugin: 0,
            next_due,
            job,
            records: Records {
                user,
                config,
                provider,
            },
        }),
        Err(e) => {
            let mut entry = Entry::new(&uid);
            entry.exit_code = Some(Exit::Usage);
            entry.error = Some(e.to_string());
            report.failed.push(entry);
            None
        }
    }
}

/// The job's provider record: the one read already, or, if it did not
/// read, read again for the error that says why.
fn provider_of(
    vault: &dyn Vault,
    job: &Job,
    read: Option<Record>,
) -> Result<Option<Record>, crate::vault::VaultError> {
    match (job.provider_uid.as_deref(), read) {
        (Some(_), Some(p)) => Ok(Some(p)),
        (Some(p), None) => vault.named(p, labels::PROVIDER, None).map(Some),
        (None, _) => Ok(None),
    }
}

/// Notes a member's schedule in the pass's figures (its config's oldest
/// rotation, the pass's next due time); returns when it is due, if not now:
/// the earlier of its next rotation and the next end of a grace period.
fn note_schedule(
    report: &mut PassReport,
    entry: &FleetEntry,
    ledger: &Ledger,
    due: Due,
    now: DateTime<Utc>,
) -> Option<String> {
    if let Some(last) = entry.last_rotated {
        let oldest = report
            .oldest_rotation
            .entry(entry.config_uid.clone())
            .or_insert(last);
        *oldest = (*oldest).min(last);
    }
    let next = match due {
        Due::At(at) => Some(ledger.next_expiry(now).map_or(at, |g| g.min(at))),
        Due::Now => None,
    };
    report.next_due = match (report.next_due, next) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    next.map(stamp)
}
