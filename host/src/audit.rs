//! The audit log (`--audit FILE`): one JSON line per rotation attempt, in the
//! spirit of Vault's file audit device. It holds key ids and outcomes, never a
//! secret. The file is created 0600, refused if it is not a regular file or is a
//! link, appended to with `O_APPEND`, and synced after every line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use chrono::Utc;
use serde::Serialize;

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
    /// `rotated`, `purged`, `planned`, `failed` or `not_finalized`.
    pub outcome: &'static str,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub error: Option<String>,
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(record_uid: &str, outcome: &'static str, exit_code: i32) -> Self {
        Self {
            time: crate::schedule::stamp(Utc::now()),
            record_uid: record_uid.to_string(),
            user: None,
            old_key_ids: vec![],
            new_key_id: None,
            deactivated_key_ids: vec![],
            purged_key_ids: vec![],
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
    /// Opens (or creates, 0600) `path` for appending.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                format!(
                    "could not open the audit log {}: {e}; pass a regular file you can write to --audit",
                    path.display()
                )
            })?;
        let meta = file
            .metadata()
            .map_err(|e| format!("could not inspect the audit log {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "the audit log {} is not a regular file; pass a regular file to --audit",
                path.display()
            ));
        }
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends `entry` as one line and syncs it. A failure is logged, not fatal:
    /// the rotation it records has already happened.
    pub fn write(&self, entry: &AuditEntry) {
        let mut line = serde_json::to_vec(entry).expect("audit entries serialise");
        line.push(b'\n');
        let mut file = self.file.lock().expect("audit lock");
        if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
            tracing::error!(record = %crate::text::printable(&entry.record_uid), "could not write the audit log: {e}");
        }
    }
}
