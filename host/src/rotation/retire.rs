//! What becomes of old keys after their rotation (docs/design.md §10): the
//! ledger of keys turned off or kept for consumers, `last-used` for the kept
//! ones, `purge` for those whose time has come, and recording what `finalize`
//! deactivated or kept. The order of a rotation's steps stays in `flow.rs`.

use chrono::{DateTime, Utc};

use crate::fields::labels;
use crate::holdings::Holdings;
use crate::record::StoreField;
use crate::rotation::flow::text_field;
use crate::rotation::grace::{self, Ledger};
use crate::rotation::job::Job;
use crate::rotation::report::{RunError, RunReport};
use crate::rotation::usage::{self, KeyInUse, Policy};
use crate::sandbox::instance::Instance;
use crate::sandbox::plugin::Context;
use crate::text::printable;
use crate::vault::writer::VaultWriter;

/// Asks the plugin when each kept key was last used and judges them (marking
/// the unused for retirement); returns the keys still in use. A failure to
/// ask keeps every kept key (treated as in use), and says why.
pub async fn check_kept(
    instance: &mut Instance,
    ctx: &Context,
    ledger: &mut Ledger,
    policy: Policy,
    now: DateTime<Utc>,
    report: &mut RunReport,
) -> Vec<KeyInUse> {
    if ledger.kept().next().is_none() {
        return vec![];
    }
    let uses = instance.last_used(ctx).await.map_err(|e| e.to_string());
    let (notes, in_use) = usage::judge(ledger, uses, policy, now);
    for k in in_use.iter().filter(|k| k.overdue) {
        tracing::warn!(
            user = ?report.user_uid,
            key = ?printable(&k.id),
            "an old key kept for consumers is still in use after 'Overlap Max Days': {}",
            k.describe()
        );
    }
    report.notes.extend(notes);
    in_use
}

/// `purge`, then the ledger without the entries the plugin is done with.
/// Returns the keys deleted and deactivated, and the plugin's notes.
pub async fn purge(
    instance: &mut Instance,
    writer: &VaultWriter,
    job: &Job,
    ctx: &Context,
    ledger: &mut Ledger,
    now: DateTime<Utc>,
) -> Result<(Vec<String>, Vec<String>, Vec<String>), RunError> {
    let done = instance.purge(ctx).await?;
    let user = printable(&job.user_uid);
    for id in &done.retired {
        tracing::info!(user = ?user, key = %id, "old key deleted after its grace period");
    }
    for id in &done.deactivated {
        tracing::info!(user = ?user, key = %id, "old key kept for consumers is unused: deactivated");
    }
    ledger.after_purge(now, &done.deactivated, &done.retired);
    writer
        .store(&job.user_uid, ledger_fields(ledger), ledger_removal(ledger))
        .await
        .map_err(RunError::Vault)?;
    let deactivated = done
        .deactivated
        .into_iter()
        .filter(|id| ledger.entries.iter().any(|e| e.id == *id && !e.kept))
        .collect();
    Ok((done.retired, deactivated, done.notes))
}

/// Records what `finalize` deactivated, or kept active for consumers, with
/// the time, so a later pass deletes or retires it. Failing to record it
/// loses no key: the next rotation deletes it to make room instead. Ids
/// another record holds are never recorded here (I6).
pub async fn record_finalized(
    writer: &VaultWriter,
    holdings: &Holdings,
    job: &Job,
    ledger: &mut Ledger,
    done: (&[String], &[String]),
    report: &mut RunReport,
) {
    let ours = |ids: &[String]| -> (Vec<String>, usize) {
        let (good, bad): (Vec<String>, Vec<String>) = ids
            .iter()
            .filter(|id| !holdings.held_elsewhere(id, &job.user_uid))
            .cloned()
            .partition(|id| grace::recordable(id));
        (good, bad.len())
    };
    let ((deactivated, bad_off), (kept, bad_kept)) = (ours(done.0), ours(done.1));
    if bad_off + bad_kept > 0 {
        report.notes.push(format!(
            "the plugin retired {} credential(s) whose id the host cannot record; they are not \
             tracked",
            bad_off + bad_kept
        ));
    }
    if deactivated.is_empty() && kept.is_empty() {
        if job.mark_pending {
            writer.remove_later(&job.user_uid, labels::PENDING);
        }
        return;
    }
    let now = Utc::now();
    ledger.add(&deactivated, now, false);
    ledger.add(&kept, now, true);
    let mut remove = ledger_removal(ledger);
    remove.extend(job.mark_pending.then_some(labels::PENDING));
    if let Err(e) = writer
        .store(&job.user_uid, ledger_fields(ledger), remove)
        .await
    {
        report.notes.push(format!(
            "the old key(s) {} were retired, but recording them in '{}' failed ({e}); the next \
             rotation deletes them to make room",
            [deactivated.as_slice(), kept.as_slice()]
                .concat()
                .join(", "),
            labels::DEACTIVATED
        ));
    }
    report.deactivated = deactivated;
    report.kept = kept;
}

pub fn ledger_fields(ledger: &Ledger) -> Vec<StoreField> {
    ledger
        .render()
        .map(|v| text_field(labels::DEACTIVATED, &v))
        .into_iter()
        .collect()
}

pub fn ledger_removal(ledger: &Ledger) -> Vec<&'static str> {
    if ledger.render().is_none() {
        vec![labels::DEACTIVATED]
    } else {
        vec![]
    }
}
