//! What commands print: reports as text or JSON on standard output, errors
//! on standard error.

use crate::exit::Exit;
use crate::rotation::report::Outcome;
use std::io::Write;

use crate::rotation::report::{RunError, RunReport};
use crate::rotation::run::RunOptions;

/// Set once from `--log-format`: errors are then log lines too.
pub(crate) static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Prints an error for the user, escaped, whatever RUST_LOG says: `error: ...`
/// on standard error, or, with `--log-format json`, one line shaped like the
/// JSON log lines, at ERROR.
pub(crate) fn print_error(msg: &str) {
    let msg = crate::text::printable(msg);
    if JSON_LOGS.get().copied().unwrap_or(false) {
        // Written directly, in the log lines' shape: RUST_LOG must not hide it.
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "fields": {"message": msg},
            "target": "rotate_host",
        });
        eprintln!("{line}");
    } else {
        eprintln!("error: {msg}");
    }
}

/// Prints a run's report or error; returns the exit code.
pub(crate) fn print_run(
    opts: &RunOptions,
    result: Result<RunReport, RunError>,
    json: bool,
) -> Exit {
    let mut out = std::io::stdout().lock();
    match (result, json) {
        (Ok(report), true) => {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&report).expect("serialisable")
            );
            Exit::Ok
        }
        (Ok(report), false) => {
            print_report(&mut out, &report, &opts.vault.describe());
            Exit::Ok
        }
        (Err(e), json) => {
            let code = e.exit();
            if json {
                let body = serde_json::json!({"status": "failed", "exit_code": code.code(), "error": e.to_string()});
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&body).expect("serialisable")
                );
            }
            print_error(&e.to_string());
            code
        }
    }
}

/// A run's report as text: the plan of a dry run, or what was rotated and retired.
fn print_report(out: &mut impl Write, report: &RunReport, vault: &str) {
    if report.status == Outcome::Planned {
        let _ = writeln!(
            out,
            "dry run for PAM user record {}: nothing was changed. The plan:",
            report.user_uid
        );
        for n in &report.notes {
            let _ = writeln!(out, "  - {n}");
        }
    } else {
        // A staged rotation (a password) has no id to show.
        let what = report
            .created
            .as_deref()
            .map_or("new credential".to_string(), |id| format!("new key {id}"));
        let _ = writeln!(
            out,
            "rotated PAM user record {}: {what} stored in {}",
            report.user_uid, vault
        );
        if !report.purged.is_empty() {
            let _ = writeln!(
                out,
                "deleted key(s) whose grace period ended: {}",
                report.purged.join(", ")
            );
        }
        if !report.retired.is_empty() {
            let _ = writeln!(out, "retired old key(s): {}", report.retired.join(", "));
        }
        if !report.deactivated.is_empty() {
            let _ = writeln!(
                out,
                "deactivated old key(s), kept for the grace period: {}",
                report.deactivated.join(", ")
            );
        }
        if !report.kept.is_empty() {
            let _ = writeln!(
                out,
                "kept old key(s) active until IAM shows them unused: {}",
                report.kept.join(", ")
            );
        }
        for n in &report.notes {
            let _ = writeln!(out, "note: {n}");
        }
    }
}
