//! What a pass did, record by record: the report `due` prints and the gateway
//! logs and counts.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::exit::Exit;
use crate::rotation::report::Outcome;
use crate::rotation::report::{RunError, RunReport};
use crate::rotation::usage::KeyInUse;

/// One record's line in a pass report. Holds key ids, never secrets.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub user_uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
    /// Old keys turned off and kept for the grace period.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deactivated: Vec<String>,
    /// Keys deleted because their grace period ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purged: Vec<String>,
    /// Old keys left active for their consumers (`retire-when-unused`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// Old keys kept earlier that IAM shows still in use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<KeyInUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<Exit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Entry {
    pub(super) fn new(uid: &str) -> Self {
        Self {
            user_uid: uid.to_string(),
            created: None,
            retired: vec![],
            deactivated: vec![],
            purged: vec![],
            kept: vec![],
            in_use: vec![],
            exit_code: None,
            error: None,
            next_due: None,
            notes: vec![],
        }
    }
}

/// What one pass did, record by record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// New key stored: finalized (`exit_code` 0), or not yet (3).
    pub rotated: Vec<Entry>,
    /// Not due, but deactivated keys whose grace period ended were deleted.
    pub purged: Vec<Entry>,
    pub failed: Vec<Entry>,
    /// `Rotation` is `disabled`, or the gateway was stopping.
    pub skipped: Vec<Entry>,
    pub not_due: Vec<Entry>,
    /// With `--dry-run`: what each due record's plugin plans.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<Entry>,
    /// Audit lines that could not be written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit_failures: Vec<String>,
    /// Per config record: when its members' oldest key was rotated, for the
    /// age of the oldest recorded key (the CIS 90-day rule at a glance).
    #[serde(skip)]
    pub oldest_rotation: BTreeMap<String, chrono::DateTime<Utc>>,
    /// The soonest a record not due now is due.
    #[serde(skip)]
    pub next_due: Option<chrono::DateTime<Utc>>,
    /// How long the pass took.
    #[serde(skip)]
    pub took: Duration,
}

impl PassReport {
    /// Old keys kept for consumers that IAM shows still in use, in every list.
    pub fn keys_in_use(&self) -> usize {
        [&self.rotated, &self.purged, &self.not_due, &self.planned]
            .iter()
            .flat_map(|l| l.iter())
            .map(|e| e.in_use.len())
            .sum()
    }
}

impl PassReport {
    /// Ok when every due record rotated, not finalized when some are stored
    /// but not finalized and none failed, failed when any failed or an audit
    /// line is missing.
    pub fn exit(&self) -> Exit {
        if !self.failed.is_empty() || !self.audit_failures.is_empty() {
            Exit::Failed
        } else if self
            .rotated
            .iter()
            .any(|e| e.exit_code == Some(Exit::NotFinalized))
        {
            Exit::NotFinalized
        } else {
            Exit::Ok
        }
    }

    /// `N rotated, N failed, N skipped, N not due`, with `N planned` and
    /// `N purged` when there are any.
    pub fn summary(&self) -> String {
        let planned = if self.planned.is_empty() {
            String::new()
        } else {
            format!("{} planned, ", self.planned.len())
        };
        let purged = if self.purged.is_empty() {
            String::new()
        } else {
            format!("{} purged, ", self.purged.len())
        };
        format!(
            "{planned}{} rotated, {purged}{} failed, {} skipped, {} not due",
            self.rotated.len(),
            self.failed.len(),
            self.skipped.len(),
            self.not_due.len()
        )
    }

    /// One line per record, then the summary.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.planned {
            out.push(format!("planned {}: {}", e.user_uid, e.notes.join("; ")));
        }
        out.extend(self.rotated.iter().map(rotated_line));
        out.extend(self.purged.iter().map(purged_line));
        for e in &self.failed {
            out.push(format!(
                "failed {} (exit {}): {}",
                e.user_uid,
                e.exit_code.unwrap_or(Exit::Failed).code(),
                e.error.as_deref().unwrap_or("")
            ));
        }
        for e in &self.skipped {
            out.push(format!(
                "skipped {}: {}",
                e.user_uid,
                e.error.as_deref().unwrap_or("")
            ));
        }
        for why in &self.audit_failures {
            out.push(format!("audit: {why}"));
        }
        // Not-due lines come last before the summary: the gateway logs them at DEBUG.
        out.extend(self.not_due.iter().map(not_due_line));
        out.push(self.summary());
        out
    }

    /// Sorts each list by UID and makes every string safe to print: UIDs and
    /// field values come from the vault, which may hold control characters.
    pub(super) fn finish(&mut self) {
        use crate::text::printable;
        for list in [
            &mut self.rotated,
            &mut self.purged,
            &mut self.failed,
            &mut self.skipped,
            &mut self.not_due,
            &mut self.planned,
        ] {
            list.sort_by(|a, b| a.user_uid.cmp(&b.user_uid));
            for e in list.iter_mut() {
                e.user_uid = printable(&e.user_uid);
                e.error = e.error.as_deref().map(printable);
                e.created = e.created.as_deref().map(printable);
                for ids in [&mut e.retired, &mut e.deactivated, &mut e.purged] {
                    *ids = ids.iter().map(|r| printable(r)).collect();
                }
                e.notes = e.notes.iter().map(|n| printable(n)).collect();
            }
        }
    }
}

/// `, WHAT ID, ID` when there are ids.
fn listed(what: &str, ids: &[String]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(", {what} {}", ids.join(", "))
    }
}

/// `; NOTE; NOTE` when there are notes.
fn noted(notes: &[String]) -> String {
    if notes.is_empty() {
        String::new()
    } else {
        format!("; {}", notes.join("; "))
    }
}

fn rotated_line(e: &Entry) -> String {
    let retired = [
        listed("deleted after the grace period", &e.purged),
        listed("retired", &e.retired),
        listed("deactivated", &e.deactivated),
        listed("kept for its consumers", &e.kept),
    ]
    .concat();
    let created = e.created.as_deref().unwrap_or("?");
    match &e.error {
        None => format!("rotated {}: new key {created}{retired}", e.user_uid),
        Some(why) => format!(
            "rotated {} (not finalized, exit 3): new key {created} stored; {why}",
            e.user_uid
        ),
    }
}

fn purged_line(e: &Entry) -> String {
    let purged = if e.purged.is_empty() {
        "nothing".to_string()
    } else {
        e.purged.join(", ")
    };
    format!(
        "purged {}: deleted {purged} (grace period ended){}",
        e.user_uid,
        noted(&e.notes)
    )
}

fn not_due_line(e: &Entry) -> String {
    format!(
        "not due {}: next due {}{}",
        e.user_uid,
        e.next_due.as_deref().unwrap_or("never"),
        noted(&e.notes)
    )
}

/// Files one rotation's result, as entry `e`, in the report's list for its outcome.
pub(super) fn record(report: &mut PassReport, mut e: Entry, result: Result<RunReport, RunError>) {
    let outcome = Outcome::of(&result);
    match result {
        Ok(r) if outcome == Outcome::Planned => {
            e.notes = r.notes;
            e.retired = r.planned_retire;
            e.in_use = r.in_use;
            report.planned.push(e);
        }
        Ok(r) => {
            let idle = r.purged.is_empty() && r.deactivated.is_empty();
            e.created = r.created;
            e.retired = r.retired;
            e.deactivated = r.deactivated;
            e.kept = r.kept;
            e.in_use = r.in_use;
            e.purged = r.purged;
            e.notes = r.notes;
            match outcome {
                // Not due, and its old keys are still in use: nothing changed.
                Outcome::Purged if idle => report.not_due.push(e),
                Outcome::Purged => {
                    e.exit_code = Some(Exit::Ok);
                    report.purged.push(e);
                }
                _ => {
                    e.exit_code = Some(Exit::Ok);
                    report.rotated.push(e);
                }
            }
        }
        Err(err) => {
            e.error = Some(err.to_string());
            match outcome {
                Outcome::Skipped => report.skipped.push(e),
                Outcome::NotFinalized => {
                    if let RunError::NotFinalized { created, .. } = &err {
                        e.created = Some(created.clone());
                    }
                    e.exit_code = Some(err.exit());
                    report.rotated.push(e);
                }
                _ => {
                    e.exit_code = Some(err.exit());
                    report.failed.push(e);
                }
            }
        }
    }
}
