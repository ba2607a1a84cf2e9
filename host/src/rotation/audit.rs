//! The audit log (`--audit FILE`): one JSON line per rotation attempt, in the
//! spirit of Vault's file audit device. It holds key ids and outcomes, never a
//! secret. The file is created 0600, refused if it is not a regular file or is a
//! link, appended to with `O_APPEND`, and synced after every line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::exit::Exit;
use crate::rotation::report::{Outcome, RunError, RunReport};

/// One attempt, as written.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub time: String,
    pub record_uid: String,
    /// The PAM user record's login.
    pub user: Option<String>,
    pub old_key_ids: Vec<String>,
    pub new_key_id: Option<String>,
    /// Old keys turned off and kept for the grace period (a subset of `old_key_ids`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deactivated_key_ids: Vec<String>,
    /// Keys deactivated earlier, deleted because their grace period ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purged_key_ids: Vec<String>,
    /// Old keys left active for their consumers (`retire-when-unused`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_key_ids: Vec<String>,
    /// Old keys kept earlier that IAM shows still in use, with their last use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub old_keys_in_use: Vec<crate::rotation::usage::KeyInUse>,
    pub outcome: Outcome,
    pub exit_code: Exit,
    pub duration_ms: u64,
    pub error: Option<String>,
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(record_uid: &str, outcome: Outcome, exit_code: Exit) -> Self {
        Self {
            time: crate::fields::stamp(Utc::now()),
            record_uid: record_uid.to_string(),
            user: None,
            old_key_ids: vec![],
            new_key_id: None,
            deactivated_key_ids: vec![],
            purged_key_ids: vec![],
            kept_key_ids: vec![],
            old_keys_in_use: vec![],
            outcome,
            exit_code,
            duration_ms: 0,
            error: None,
        }
    }
}

/// An open audit log.
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (or creates, 0600) `path` for appending. An existing file owned by
    /// another user is refused (they could read it, or plant lines in it); one
    /// readable by group or others is warned about, or refused when `strict`.
    pub fn open(path: &Path, strict: bool) -> Result<Self, String> {
        let shown = crate::text::printable(&path.display().to_string());
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(crate::fsguard::SAFE_OPEN)
            .open(path)
            .map_err(|e| {
                let what = match e.raw_os_error() {
                    Some(libc::ELOOP) => "it is a symbolic link, which could point the host's writes anywhere".to_string(),
                    Some(libc::ENXIO) => "it is a FIFO or a device, not a regular file".to_string(),
                    _ => e.to_string(),
                };
                format!(
                    "could not open the audit log {shown}: {what}; pass a regular file you can write to --audit"
                )
            })?;
        let meta = file
            .metadata()
            .map_err(|e| format!("could not inspect the audit log {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!(
                "the audit log {shown} is {}, not a regular file; pass a regular file to --audit",
                crate::fsguard::kind_of(&meta)
            ));
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(format!(
                "the audit log {shown} is owned by uid {}, not this user ({me}): its owner could \
                 rewrite the record of rotations; pass a file of this user's to --audit",
                meta.uid()
            ));
        }
        let what = format!("the audit log {shown}");
        crate::fsguard::private_or_warn(&meta, &what, "the record of rotations", strict).map_err(
            |mode| {
                format!(
                    "{what} is readable or writable by group or others (mode {mode:04o}); run \
                     `chmod 600 {shown}`, or drop --strict-permissions to only be warned"
                )
            },
        )?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends `entry` as one line and syncs it. A failed append (a full disk,
    /// `ulimit -f`) is cut back to the last whole line and reported: the
    /// rotation it records has already happened, so the caller counts it.
    pub fn write(&self, entry: &AuditEntry) -> Result<(), String> {
        let mut line = serde_json::to_vec(entry).expect("audit entries serialise");
        line.push(b'\n');
        let mut file = self.file.lock().expect("audit lock");
        let whole = file.metadata().map(|m| m.len());
        let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) else {
            return Ok(());
        };
        let cut = whole.and_then(|len| file.set_len(len));
        let record = crate::text::printable(&entry.record_uid);
        tracing::error!(record = ?record, "could not write the audit log: {e}");
        Err(match cut {
            Ok(()) => format!(
                "the audit line for record '{record}' could not be written ({e}); the log ends at \
                 the last whole line: free space or raise the file size limit"
            ),
            Err(cut) => format!(
                "the audit line for record '{record}' could not be written ({e}), and cutting the \
                 partial line off failed too ({cut}): the log's last line is partial"
            ),
        })
    }
}

/// The audit line of one attempt.
pub fn audit_entry(
    uid: &str,
    user: Option<String>,
    result: &Result<RunReport, RunError>,
    took: Duration,
) -> AuditEntry {
    // A leased record is skipped by a pass, but exit 1 for `run`: the entry says which.
    let exit = match result {
        Ok(_) | Err(RunError::Stopping) => Exit::Ok,
        Err(e) => e.exit(),
    };
    let mut entry = AuditEntry::now(uid, Outcome::of(result), exit);
    entry.user = user;
    entry.duration_ms = took.as_millis() as u64;
    match result {
        Ok(r) => {
            entry.new_key_id = r.created.clone();
            entry.old_key_ids = if r.retired.is_empty() && r.deactivated.is_empty() {
                r.planned_retire.clone()
            } else {
                [r.retired.clone(), r.deactivated.clone()].concat()
            };
            entry.deactivated_key_ids = r.deactivated.clone();
            entry.purged_key_ids = r.purged.clone();
            entry.kept_key_ids = r.kept.clone();
            entry.old_keys_in_use = r.in_use.clone();
        }
        Err(e) => {
            entry.error = Some(e.to_string());
            if let RunError::NotFinalized { created, .. } | RunError::StoreFailed { created, .. } =
                e
            {
                entry.new_key_id = Some(created.clone());
            }
        }
    }
    entry
}
