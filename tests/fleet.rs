//! The fleet: `due` and `gateway` over a vault of many PAM user records,
//! against the fake IAM: schedules, inheritance, `disabled`, malformed fields,
//! dry runs, failures that do not block others, per-user serialisation, the
//! rate cap, `kill -9` mid-pass, the gateway's interval, metrics and signals,
//! `run` racing the gateway, and the audit log.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use test_support::fake_iam::{FakeIam, FaultKind, Key};
use test_support::vault::{VaultFile, fleet_member};

/// The fake with a rotator managing `users`, each with one key; a vault with
/// config record `cfg1` and one fleet record per user (`u-<name>`).
struct Fleet {
    iam: FakeIam,
    vault: VaultFile,
    keys: Vec<(String, Key)>,
}

fn fleet(users: &[(&str, &[(&str, &str)])], config_extra: &[(&str, &str)]) -> Fleet {
    let iam = FakeIam::start();
    let names: Vec<&str> = users.iter().map(|(n, _)| *n).collect();
    iam.add_user("rotator", &names);
    let rotator = iam.add_key("rotator", "2024-01-01T00:00:00Z");
    let mut cfg = fake_config(&iam.url, &rotator);
    cfg.retain(|(_, l, _)| l != "IAM Username");
    for (l, v) in config_extra {
        cfg.push(("text".into(), l.to_string(), v.to_string()));
    }
    let mut records = vec![config_from("cfg1", &cfg)];
    let mut keys = Vec::new();
    for (name, extra) in users {
        iam.add_user(name, &[]);
        let key = iam.add_key(name, "2024-01-01T00:00:00Z");
        records.push(fleet_member(
            &format!("u-{name}"),
            name,
            Some(("aws_access_key_id", &key.id)),
            "cfg1",
            extra,
        ));
        keys.push((name.to_string(), key));
    }
    Fleet {
        iam,
        vault: VaultFile::new(records),
        keys,
    }
}

impl Fleet {
    fn secrets(&self) -> Vec<String> {
        let mut s = self.iam.all_secrets();
        s.extend(self.keys.iter().map(|(_, k)| k.secret.clone()));
        s
    }

    /// I3: none of `secrets()` in `text`.
    fn assert_no_leak(&self, text: &str) {
        assert_no_leak(text, &self.secrets());
    }

    /// The user's key is the one its record holds, and the only one.
    fn assert_converged(&self, name: &str) {
        assert_record_converged(&self.iam, &self.vault, &format!("u-{name}"), name);
    }

    /// I1 for every user: the key each record holds exists.
    fn assert_recorded_keys_exist(&self) {
        for (name, _) in &self.keys {
            assert_record_key_exists(&self.iam, &self.vault, &format!("u-{name}"), name);
        }
    }
}

/// Adds a copy of ann's record (the vault's second) as `uid`, holding no
/// key, with `fields` for its standard fields.
fn add_keyless_copy_of_ann(f: &Fleet, uid: &str, fields: Value) {
    f.vault.edit(|doc| {
        let mut twin = doc["records"][1].clone();
        twin["uid"] = json!(uid);
        twin["fields"] = fields;
        twin["custom"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c["label"] != "aws_access_key_id");
        doc["records"].as_array_mut().unwrap().push(twin);
    });
}

fn due(vault: &VaultFile, extra: &[&str]) -> Outcome {
    let mut args = vec!["due", GUEST_WASM, "--vault", vault.path.to_str().unwrap()];
    args.extend(extra);
    rotate_host(&args)
}

fn due_json(f: &Fleet, extra: &[&str]) -> (Outcome, Value) {
    let mut a = vec!["--json"];
    a.extend(extra);
    let out = due(&f.vault, &a);
    f.assert_no_leak(&out.all());
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    (out, v)
}

fn uids(v: &Value, list: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|e| e["user_uid"].as_str().unwrap().to_string())
        .collect()
}

/// `Last Rotated` as the host writes it, `days` days and a minute ago.
fn ago(days: i64) -> String {
    let t = chrono::Utc::now() - chrono::Duration::days(days) - chrono::Duration::minutes(1);
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn a_pass_rotates_what_is_due_and_reports_every_record() {
    let recent = ago(1);
    let f = fleet(
        &[
            ("ann", &[]),
            ("ben", &[("Last Rotated", &ago(120))]),
            ("cat", &[("Last Rotated", &recent)]),
            ("dan", &[("Rotation", "Disabled")]),
            ("eve", &[("Rotation Schedule", "0 3 * *")]),
            (
                "fay",
                &[("Last Rotated", &ago(3)), ("Rotation Max Age Days", "2")],
            ),
        ],
        &[],
    );
    let (out, v) = due_json(&f, &[]);
    assert_eq!(
        out.code,
        1,
        "a malformed record fails the pass: {}",
        out.all()
    );
    assert_eq!(uids(&v, "rotated"), ["u-ann", "u-ben", "u-fay"]);
    assert_eq!(uids(&v, "not_due"), ["u-cat"]);
    assert_eq!(uids(&v, "skipped"), ["u-dan"]);
    assert_eq!(uids(&v, "failed"), ["u-eve"]);
    let failed = &v["failed"][0];
    assert_eq!(failed["exit_code"], 2);
    let why = failed["error"].as_str().unwrap();
    assert!(
        why.contains("'Rotation Schedule'") && why.contains("has 4 fields"),
        "{why}"
    );
    assert!(
        v["not_due"][0]["next_due"].as_str().unwrap().ends_with('Z'),
        "{v}"
    );
    for name in ["ann", "ben", "fay"] {
        f.assert_converged(name);
        let stamp = f.vault.field(&format!("u-{name}"), "Last Rotated").unwrap();
        assert!(stamp.len() == 20 && stamp.ends_with('Z'), "{stamp}");
        assert!(
            f.vault
                .field(&format!("u-{name}"), "Rotation Pending")
                .is_none()
        );
    }
    for name in ["cat", "dan", "eve"] {
        assert_eq!(f.iam.keys(name).len(), 1);
        assert_eq!(
            f.iam.keys(name)[0].id,
            f.keys.iter().find(|(n, _)| n == name).unwrap().1.id
        );
    }
    // The text form: a line per record and the summary.
    let out = due(&f.vault, &[]);
    assert!(
        out.stdout
            .contains("skipped u-dan: field 'Rotation' is 'disabled'"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .trim_end()
            .ends_with("0 rotated, 1 failed, 1 skipped, 4 not due"),
        "{}",
        out.stdout
    );
}

/// UIDs and field values are the vault's: control and bidi characters in them
/// are escaped in the report, never printed raw.
#[test]
fn vault_text_in_the_report_is_escaped() {
    let f = fleet(&[("ann", &[("Rotation Schedule", "0 3 * *\u{202e}")])], &[]);
    f.vault.edit(|doc| {
        doc["records"][1]["uid"] = json!("u-ann\nrotated u-x: new key AKIAFORGED");
    });
    let out = due(&f.vault, &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(!out.stdout.contains("\nrotated u-x"), "{}", out.stdout);
    assert!(!out.stdout.contains('\u{202e}'), "{}", out.stdout);
    assert!(
        out.stdout.contains("failed u-ann\\u{a}rotated u-x"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\\u{202e}"), "{}", out.stdout);
}

/// A record without a schedule of its own takes its config record's, in the
/// config's `Rotation Timezone`: the daily instant chosen here passed an hour
/// ago in Tokyo and is eight hours away in UTC.
#[test]
fn the_config_records_schedule_applies_when_the_record_has_none() {
    use chrono::Timelike;
    let now = chrono::Utc::now();
    // Tokyo is UTC+9 all year.
    let hour = ((now - chrono::Duration::hours(1)).hour() + 9) % 24;
    let schedule = format!("0 {hour} * * *");
    let two_hours_ago =
        (now - chrono::Duration::hours(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let users: &[(&str, &[(&str, &str)])] = &[
        ("ann", &[("Last Rotated", &two_hours_ago)]),
        (
            "ben",
            &[("Last Rotated", &ago(10)), ("Rotation Max Age Days", "30")],
        ),
    ];
    let f = fleet(
        users,
        &[
            ("Rotation Schedule", &schedule),
            ("Rotation Timezone", "Asia/Tokyo"),
        ],
    );
    let (out, v) = due_json(&f, &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(uids(&v, "rotated"), ["u-ann"]);
    assert_eq!(uids(&v, "not_due"), ["u-ben"]);
    // The same schedule in UTC: ann's next instant has not come yet.
    let utc = fleet(users, &[("Rotation Schedule", &schedule)]);
    let (_, v) = due_json(&utc, &[]);
    assert_eq!(uids(&v, "not_due"), ["u-ann", "u-ben"], "{v}");
    // --max-age-days applies when neither sets a schedule.
    let g = fleet(&[("cat", &[("Last Rotated", &ago(10))])], &[]);
    let (_, v) = due_json(&g, &["--max-age-days", "30"]);
    assert_eq!(uids(&v, "not_due"), ["u-cat"]);
    let (_, v) = due_json(&g, &["--max-age-days", "5"]);
    assert_eq!(uids(&v, "rotated"), ["u-cat"]);
}

#[test]
fn a_dry_run_plans_every_due_record_and_changes_nothing() {
    let f = fleet(&[("ann", &[]), ("ben", &[])], &[]);
    let before = f.vault.bytes();
    let (out, v) = due_json(&f, &["--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(uids(&v, "planned"), ["u-ann", "u-ben"]);
    assert!(v["rotated"].as_array().unwrap().is_empty());
    assert_eq!(
        v["planned"][0]["retired"][0],
        f.keys[0].1.id.as_str(),
        "{v}"
    );
    assert_eq!(before, f.vault.bytes(), "a dry run changed the vault");
    assert!(
        !f.iam
            .calls()
            .iter()
            .any(|c| c == "CreateAccessKey" || c == "DeleteAccessKey")
    );
}

/// One user IAM does not know fails; the others rotate.
#[test]
fn one_failing_user_does_not_block_the_others() {
    let f = fleet(&[("ann", &[]), ("ben", &[]), ("cat", &[])], &[]);
    // ben's record names an IAM user that does not exist.
    f.vault.edit(|doc| {
        for r in doc["records"].as_array_mut().unwrap() {
            if r["uid"] == "u-ben" {
                r["fields"][0]["value"][0] = json!("nobody");
            }
        }
    });
    let (out, v) = due_json(&f, &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(uids(&v, "rotated"), ["u-ann", "u-cat"]);
    assert_eq!(uids(&v, "failed"), ["u-ben"]);
    assert!(
        v["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("'nobody' was not found"),
        "{v}"
    );
    f.assert_converged("ann");
    f.assert_converged("cat");
    f.assert_recorded_keys_exist();
}

/// Two records that would rotate one IAM user under one config fail
/// together (issue 14: each would delete the other's key); the user's keys
/// are untouched and the rest of the fleet rotates.
#[test]
fn twin_records_of_one_user_fail_together() {
    let f = fleet(&[("ann", &[]), ("ben", &[]), ("cat", &[])], &[]);
    f.vault.edit(|doc| {
        let mut twin = doc["records"][1].clone();
        twin["uid"] = json!("u-ann-twin");
        doc["records"].as_array_mut().unwrap().push(twin);
    });
    let (out, v) = due_json(&f, &["--jobs", "4"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(uids(&v, "failed"), ["u-ann", "u-ann-twin"]);
    assert_eq!(uids(&v, "rotated"), ["u-ben", "u-cat"]);
    let ann = &f.keys[0].1;
    assert_eq!(
        f.iam.keys("ann").iter().map(|k| &k.id).collect::<Vec<_>>(),
        [&ann.id]
    );
    assert!(
        !f.iam.log().iter().any(|c| c.user == "ann"),
        "nothing was sent for ann"
    );
    f.assert_recorded_keys_exist();
}

/// A store that fails inside a pass (the vault's rename fails with ENOSPC,
/// injected by strace): that record is rolled back, and the next record's
/// save writes it as it was, never the key its rollback deleted (I1). Ben's
/// new key is held at IAM until ann's save has failed, so ann's save goes
/// alone (after the linger) and ben's is the next one.
#[test]
fn a_failed_store_in_a_pass_is_not_written_by_the_next_save() {
    let f = fleet(&[("ann", &[]), ("ben", &[])], &[]);
    let path = f.vault.path.to_str().unwrap();
    let arrived = f.iam.hold_for("CreateAccessKey", "ben");
    let mut cmd = strace_command(
        "rename,renameat,renameat2",
        "error=ENOSPC:when=1",
        &[
            "due",
            GUEST_WASM,
            "--vault",
            path,
            "--json",
            "--jobs",
            "1",
            "--no-cache",
        ],
    );
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace (Debian package strace; .ci/run installs it)");
    let mut stdout = child.stdout.take().unwrap();
    let mut watched = Watched::new(child);
    arrived
        .recv_timeout(Duration::from_secs(120))
        .expect("ben's CreateAccessKey never arrived");
    watched.wait_line("stores=1 ok=false");
    f.iam.release();
    let (code, stderr) = watched.finish();
    let mut json = String::new();
    stdout.read_to_string(&mut json).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    f.assert_no_leak(&format!("{json}{stderr}"));
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(uids(&v, "failed"), ["u-ann"]);
    assert_eq!(uids(&v, "rotated"), ["u-ben"]);
    let ann = &f.keys[0].1;
    assert_eq!(
        f.vault.field("u-ann", "aws_access_key_id"),
        Some(ann.id.clone())
    );
    assert_eq!(
        f.iam.keys("ann").iter().map(|k| &k.id).collect::<Vec<_>>(),
        [&ann.id],
        "the failed store's key was not rolled back"
    );
    assert_eq!(
        f.iam.count("DeleteAccessKey"),
        2,
        "ann's rollback, ben's finalize"
    );
    f.assert_converged("ben");
    f.assert_recorded_keys_exist();
    assert_vault_at_rest(&f.vault);
    assert_eq!(f.vault.temporaries(), Vec::<std::path::PathBuf>::new());
}

/// IAM user names are unique without regard to case (the fake finds them
/// so): records for `ann` and `ANN` under one config are one user's twins,
/// and fail together before anything is sent.
#[test]
fn twin_records_whose_logins_differ_in_case_fail_together() {
    let f = fleet(&[("ann", &[]), ("ben", &[])], &[]);
    // A new record for the same user, holding no key yet.
    let fields = json!([{"type": "login", "value": ["ANN"]}, {"type": "password", "value": [""]}]);
    add_keyless_copy_of_ann(&f, "u-ANN", fields);
    let (out, v) = due_json(&f, &["--jobs", "4"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(uids(&v, "failed"), ["u-ANN", "u-ann"]);
    let error = v["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("would rotate the same credential (login 'ann'"),
        "{error}"
    );
    assert_eq!(uids(&v, "rotated"), ["u-ben"]);
    assert!(
        !f.iam
            .log()
            .iter()
            .any(|c| c.user.eq_ignore_ascii_case("ann")),
        "something was sent for ann"
    );
    f.assert_recorded_keys_exist();
}

/// A fake IAM that throttles past 10 requests a second, as IAM does under
/// load without any injected fault: eight records at eight jobs are
/// throttled, retried, and all rotate; with `--rps 8` none is throttled.
#[test]
fn iams_own_rate_limit_is_retried_through_and_rps_stays_under_it() {
    let names = ["ann", "ben", "cat", "dan", "eve", "fay", "gus", "hal"];
    let users: Vec<(&str, &[(&str, &str)])> = names.iter().map(|n| (*n, &[][..])).collect();
    for (rps, throttled) in [(None, true), (Some("8"), false)] {
        let f = fleet(&users, &[]);
        f.iam.rate_limit(10);
        let mut extra = vec!["--jobs", "8"];
        if let Some(rps) = rps {
            extra.extend(["--rps", rps]);
        }
        let (out, v) = due_json(&f, &extra);
        assert_eq!(out.code, 0, "{}", out.all());
        assert_eq!(uids(&v, "rotated").len(), names.len(), "{v}");
        assert_eq!(
            f.iam.throttled() > 0,
            throttled,
            "{rps:?}: {}",
            f.iam.throttled()
        );
        for name in names {
            f.assert_converged(name);
        }
    }
}

/// A record without a login rotates the user its config names: with a record
/// of that user under the same config, both fail together.
#[test]
fn a_login_less_record_and_its_configs_user_fail_together() {
    let f = fleet(&[("ann", &[])], &[("IAM Username", "ann")]);
    add_keyless_copy_of_ann(&f, "u-ann-nologin", json!([]));
    let (out, v) = due_json(&f, &["--jobs", "4"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(uids(&v, "failed"), ["u-ann", "u-ann-nologin"]);
    assert!(
        v["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("login 'ann'"),
        "{v}"
    );
    assert!(f.iam.log().is_empty(), "nothing was sent");
}

/// `--rps` spaces requests across all jobs.
#[test]
fn the_rate_cap_spaces_requests_across_jobs() {
    let f = fleet(
        &[("ann", &[]), ("ben", &[]), ("cat", &[]), ("dan", &[])],
        &[],
    );
    let (out, _) = due_json(&f, &["--jobs", "4", "--rps", "10"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let log = f.iam.log();
    assert!(log.len() >= 24, "{}", log.len());
    let span = log.last().unwrap().at - log.first().unwrap().at;
    // n requests at 10 per second take at least (n - 1) / 10 s.
    let least = Duration::from_millis((log.len() as u64 - 1) * 100);
    assert!(
        span + Duration::from_millis(50) >= least,
        "{} requests in {span:?}",
        log.len()
    );
    // And they are spaced, not a burst then a pause: any five in a row take
    // at least 0.4 s (0.3 s here, for a request that left its slot late).
    let mut at: Vec<Instant> = log.iter().map(|e| e.at).collect();
    at.sort();
    for five in at.windows(5) {
        let span = five[4] - five[0];
        assert!(
            span >= Duration::from_millis(300),
            "five requests in {span:?}"
        );
    }
}

/// Six users, each due, with one key that its record holds.
const SIX: [&str; 6] = ["ann", "ben", "cat", "dan", "eve", "fay"];

fn six_users() -> Fleet {
    let users: Vec<(&str, &[(&str, &str)])> = SIX.iter().map(|n| (*n, &[][..])).collect();
    fleet(&users, &[])
}

/// Kills `due --jobs JOBS` `settle` after the fake holds `action`, then
/// checks I3 in its output and I1 in the vault it left.
fn kill_pass_when_held(f: &Fleet, action: &str, jobs: &str, settle: Duration) {
    let arrived = f.iam.hold(action);
    let path = f.vault.path.to_str().unwrap();
    let args = ["due", GUEST_WASM, "--vault", path, "--jobs", jobs];
    let out = kill_when_arrived(&args, arrived, settle, &f.iam);
    assert_eq!(out.code, -1, "the pass was meant to be killed");
    f.assert_no_leak(&out.all());
    assert_vault_at_rest(&f.vault);
    f.assert_recorded_keys_exist();
}

/// The next pass at `--jobs JOBS` converges every user, and leaves no
/// record marked `Rotation Pending`.
fn assert_next_pass_converges(f: &Fleet, jobs: &str) {
    let (again, v) = due_json(f, &["--jobs", jobs]);
    assert_eq!(again.code, 0, "{}", again.all());
    for n in SIX {
        f.assert_converged(n);
        let pending = f.vault.field(&format!("u-{n}"), "Rotation Pending");
        assert!(pending.is_none(), "{n}: {v}");
    }
}

/// Killed mid-pass with four jobs: every key a record holds exists, and the
/// next pass converges every record.
#[test]
fn killed_mid_pass_the_next_pass_converges() {
    let f = six_users();
    // The first finalize is held: that record is stored, others are in flight or done.
    kill_pass_when_held(&f, "GetCallerIdentity", "4", Duration::from_millis(100));
    assert!(
        SIX.iter().any(|n| f
            .vault
            .field(&format!("u-{n}"), "Rotation Pending")
            .is_some()),
        "no record was stored before its finalize"
    );
    assert_next_pass_converges(&f, "4");
}

/// A store waiting for a shared save gives its turn to the next rotation:
/// at `--jobs 2`, six due records are all stored, in one save, before the
/// first old key is deleted (I1 for anyone reading the file, and one
/// rewrite for six stores).
#[test]
fn a_pass_stores_every_due_key_in_one_save_before_it_deletes_any_old_one() {
    let f = six_users();
    let arrived = f.iam.hold("DeleteAccessKey");
    let path = f.vault.path.to_str().unwrap();
    let child = command(&["due", GUEST_WASM, "--vault", path, "--jobs", "2"])
        .env("RUST_LOG", "rotate_host=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    arrived
        .recv_timeout(Duration::from_secs(120))
        .expect("no old key was deleted");
    for (name, old) in &f.keys {
        let held = f.vault.field(&format!("u-{name}"), "aws_access_key_id");
        let held = held.unwrap();
        assert_ne!(
            held, old.id,
            "{name}'s new key was not stored before the first delete"
        );
        assert_key_exists(&f.iam, name, &held);
    }
    f.iam.release();
    let out: Outcome = child.wait_with_output().unwrap().into();
    assert_eq!(out.code, 0, "{}", out.all());
    let saves: Vec<&str> = (out.stderr.lines())
        .filter(|l| l.contains("vault group commit"))
        .collect();
    assert!(saves[0].contains("stores=6"), "{saves:#?}");
    for n in SIX {
        f.assert_converged(n);
    }
    f.assert_no_leak(&out.all());
}

/// Killed while stores wait for a rotation held in `rotate`: every key a
/// record holds exists, and the next pass removes the keys made but never
/// stored and converges every record.
#[test]
fn killed_while_stores_wait_for_a_held_rotation_the_next_pass_converges() {
    let f = six_users();
    kill_pass_when_held(&f, "CreateAccessKey", "2", Duration::from_millis(300));
    assert_next_pass_converges(&f, "2");
}

/// The audit log: one line per attempt, mode 0600, no secret.
#[test]
fn the_audit_log_records_every_attempt_and_no_secret() {
    use std::os::unix::fs::PermissionsExt;
    let f = fleet(&[("ann", &[]), ("ben", &[])], &[]);
    let audit = f.vault.folder().join("audit.jsonl");
    let (out, _) = due_json(&f, &["--audit", audit.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    let s = fake_setup();
    let run_out = run(
        &s.vault,
        "user1",
        "cfg1",
        &["--audit", audit.to_str().unwrap()],
    );
    assert_eq!(run_out.code, 0, "{}", run_out.all());
    let text = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for l in &lines {
        assert_eq!(l["outcome"], "rotated", "{l}");
        assert_eq!(l["exit_code"], 0);
        assert!(l["new_key_id"].as_str().unwrap().starts_with("AKIA"), "{l}");
        assert_eq!(l["old_key_ids"].as_array().unwrap().len(), 1, "{l}");
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
        assert!(l["duration_ms"].is_u64());
    }
    let ann = lines
        .iter()
        .find(|l| l["record_uid"] == "u-ann")
        .expect("ann's line");
    assert_eq!(ann["user"], "ann");
    assert_eq!(ann["old_key_ids"][0], f.keys[0].1.id.as_str());
    f.assert_no_leak(&text);
    assert_no_leak(&text, &s.secrets());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn start_gateway(f: &Fleet, port: u16, extra: &[&str]) -> Child {
    start_gateway_every("1", f, port, extra)
}

/// `start_gateway` with `--interval interval`.
fn start_gateway_every(interval: &str, f: &Fleet, port: u16, extra: &[&str]) -> Child {
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec![
        "gateway",
        GUEST_WASM,
        "--vault",
        f.vault.path.to_str().unwrap(),
        "--interval",
        interval,
        "--metrics",
        &addr,
    ];
    args.extend(extra);
    command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `/metrics` satisfies `ok`, or panics after a minute.
fn wait_for(port: u16, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        if let Some(text) = get(port, "/metrics")
            && ok(&text)
        {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends SIGTERM, then `wait_gateway`.
fn stop_gateway(child: Child) -> String {
    sigterm(&child);
    wait_gateway(child)
}

/// Checks the gateway exits 0, and returns what it logged.
fn wait_gateway(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stderr
}

fn sigterm(child: &Child) {
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// The gateway's first pass rotates what is due and its metrics say so; a
/// record added while it runs is rotated by a later pass (woken by SIGHUP, so
/// no second pass can change the first one's gauges before they are read);
/// it serves liveness, and stops on SIGTERM.
#[test]
fn the_gateway_serves_metrics_and_a_later_pass_rotates_an_added_record() {
    let f = fleet(&[("ann", &[]), ("ben", &[]), ("cat", &[])], &[]);
    let full = f.vault.json();
    f.vault.edit(|doc| {
        doc["records"]
            .as_array_mut()
            .unwrap()
            .retain(|r| r["uid"] != "u-cat");
    });

    let port = free_port();
    let child = start_gateway_every("3600", &f, port, &[]);
    let text = wait_for(port, "the first pass", |t| {
        metric(t, "rotate_host_passes_total").is_some_and(|n| n >= 1)
    });
    assert_eq!(
        metric(&text, "rotate_host_rotations_total{outcome=\"rotated\"}"),
        Some(2)
    );
    assert!(metric(&text, "rotate_host_last_pass_timestamp_seconds").unwrap() > 1_700_000_000);
    assert_eq!(metric(&text, "rotate_host_due_records"), Some(2));
    assert!(get(port, "/healthz").unwrap().ends_with("ok\n"));
    assert!(get(port, "/nope").unwrap().contains("404"));
    f.assert_converged("ann");

    // A record added between passes, under the vault lock as a tool should.
    {
        let lock = std::fs::File::create(f.vault.folder().join("vault.json.lock")).unwrap();
        lock.lock().unwrap();
        let cat = full["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["uid"] == "u-cat")
            .unwrap();
        f.vault.edit(|doc| {
            doc["records"].as_array_mut().unwrap().push(cat.clone());
        });
    }
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    wait_for(port, "the new record's rotation", |t| {
        metric(t, "rotate_host_rotations_total{outcome=\"rotated\"}") == Some(3)
    });
    f.assert_converged("cat");
    let stderr = stop_gateway(child);
    f.assert_no_leak(&stderr);
}

/// SIGTERM or SIGINT while a rotation is in flight: it finishes (stored and
/// finalized), no other starts, and the gateway exits 0.
#[test]
fn a_stop_signal_lets_the_running_rotation_finish_and_starts_no_more() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        stop_signal_lets_the_running_rotation_finish(signal);
    }
}

fn stop_signal_lets_the_running_rotation_finish(signal: i32) {
    let f = fleet(&[("ann", &[]), ("ben", &[]), ("cat", &[])], &[]);
    let arrived = f.iam.hold("CreateAccessKey");
    let mut gw = Watched::new(start_gateway(&f, free_port(), &["--jobs", "1"]));
    arrived
        .recv_timeout(Duration::from_secs(120))
        .expect("no rotation started");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(gw.child.id() as i32, signal) }, 0);
    gw.wait_line("signal received");
    f.iam.release();
    let (code, stderr) = gw.finish();
    assert_eq!(code, Some(0), "{stderr}");
    f.assert_converged("ann");
    for (name, key) in &f.keys[1..] {
        let keys = f.iam.keys(name);
        assert_eq!(keys.len(), 1, "{name}");
        assert_eq!(keys[0].id, key.id, "{name} was rotated after the signal");
    }
    f.assert_no_leak(&stderr);
}

/// SIGTERM during a record's `purge`: the purge finishes, but the record's
/// rotation, the next plugin call, never starts.
#[test]
fn sigterm_between_purge_and_rotate_starts_no_rotation() {
    let f = fleet(&[("ann", &[])], &[]);
    let old = f.iam.add_key("ann", "2020-01-01T00:00:00Z");
    f.iam.deactivate("ann", &old.id);
    f.vault.edit(|doc| {
        doc["records"][1]["custom"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "text", "label": "Deactivated Keys", "value": [format!("{} 2020-01-02T00:00:00Z", old.id)]}));
    });
    let arrived = f.iam.hold("DeleteAccessKey");
    let mut gw = Watched::new(start_gateway(&f, free_port(), &[]));
    arrived
        .recv_timeout(Duration::from_secs(120))
        .expect("no purge started");
    sigterm(&gw.child);
    gw.wait_line("signal received");
    f.iam.release();
    let (code, stderr) = gw.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        f.iam.count("CreateAccessKey"),
        0,
        "a rotation started: {stderr}"
    );
    let keys = f.iam.keys("ann");
    assert_eq!(
        keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
        [&f.keys[0].1.id]
    );
    assert_eq!(
        f.vault.field("u-ann", "aws_access_key_id"),
        Some(f.keys[0].1.id.clone())
    );
    assert_eq!(
        f.vault.field("u-ann", "Deactivated Keys"),
        None,
        "the purge was recorded"
    );
    assert!(stderr.contains("the gateway is stopping"), "{stderr}");
}

/// A second signal ends the gateway at once, a request still in flight; crash
/// safety holds (I1), and the next pass converges.
#[test]
fn a_second_signal_exits_at_once_and_the_next_pass_converges() {
    let f = fleet(&[("ann", &[])], &[]);
    let arrived = f.iam.hold("CreateAccessKey");
    let mut gw = Watched::new(start_gateway(&f, free_port(), &[]));
    arrived
        .recv_timeout(Duration::from_secs(120))
        .expect("no rotation started");
    sigterm(&gw.child);
    gw.wait_line("signal received");
    sigterm(&gw.child);
    let (code, stderr) = gw.finish();
    f.iam.release();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("second signal"), "{stderr}");
    f.assert_recorded_keys_exist();
    let out = due(&f.vault, &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    f.assert_converged("ann");
}

/// `run` is the on-demand path: while a gateway pass holds the vault lock
/// (its `CreateAccessKey` answer held at the fake), a `run` of a record says
/// it waits for the lock and sends nothing; released, both finish and no key
/// is lost.
#[test]
fn a_run_waits_for_the_gateways_pass_and_no_key_is_lost() {
    let f = fleet(&[("ann", &[]), ("ben", &[])], &[]);
    let arrived = f.iam.hold("CreateAccessKey");
    let gw = Watched::new(start_gateway(&f, free_port(), &["--jobs", "1"]));
    arrived
        .recv_timeout(Duration::from_secs(120))
        .expect("the pass never created a key");
    let calls = f.iam.calls().len();
    let path = f.vault.path.to_str().unwrap();
    let mut run = Watched::new(
        command(&[
            "run", GUEST_WASM, "--vault", path, "-u", "u-ann", "-c", "cfg1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    run.wait_line("waiting for the vault lock");
    assert_eq!(
        f.iam.calls().len(),
        calls,
        "the run reached IAM while the pass held the lock"
    );
    f.iam.release();
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
    f.assert_no_leak(&stderr);
    sigterm(&gw.child);
    let (code, stderr) = gw.finish();
    assert_eq!(code, Some(0), "{stderr}");
    f.assert_no_leak(&stderr);
    f.assert_converged("ann");
    f.assert_converged("ben");
}

#[test]
fn metrics_listen_on_loopback_unless_metrics_public_is_passed() {
    let f = fleet(&[("ann", &[])], &[]);
    let out = rotate_host(&[
        "gateway",
        GUEST_WASM,
        "--vault",
        f.vault.path.to_str().unwrap(),
        "--metrics",
        "0.0.0.0:9187",
    ]);
    out.expect(2, &["not a loopback address", "--metrics-public"]);
    assert!(f.iam.calls().is_empty());

    // With --metrics-public it serves on every address, loopback included.
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let path = f.vault.path.to_str().unwrap();
    let args = ["gateway", GUEST_WASM, "--vault", path, "--interval", "3600"];
    let child = command(&args)
        .args(["--metrics", &any, "--metrics-public"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(port, "the first pass", |t| {
        metric(t, "rotate_host_passes_total").is_some_and(|n| n >= 1)
    });
    let stderr = stop_gateway(child);
    assert!(stderr.contains(&format!("addr={any}")), "{stderr}");
    f.assert_converged("ann");
}

/// `command(args)` with files limited to `limit` bytes (`ulimit -f`) and
/// SIGXFSZ at its default, which kills a process that writes past the limit.
fn limited(args: &[&str], limit: u64) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = command(args);
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            let rl = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// An audit log that `ulimit -f` stops mid-line: the pass survives, the
/// partial line is cut off (the log holds whole lines only), and the missing
/// line is reported and counted in the exit code and the metrics.
#[test]
fn an_audit_append_past_the_file_size_limit_is_cut_back_and_counted() {
    let f = fleet(&[("ann", &[])], &[]);
    let audit = f.vault.folder().join("audit.jsonl");
    let limit = 8 * f.vault.bytes().len() as u64;
    let filler = "{\"earlier\":true}\n".repeat((limit as usize - 40) / 17);
    std::fs::write(&audit, &filler).unwrap();
    let path = f.vault.path.to_str().unwrap();
    let audit_arg = audit.to_str().unwrap();
    let out: Outcome = limited(
        &["due", GUEST_WASM, "--vault", path, "--audit", audit_arg],
        limit,
    )
    .output()
    .unwrap()
    .into();
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout
            .contains("audit: the audit line for record 'u-ann' could not be written"),
        "{}",
        out.all()
    );
    assert_eq!(
        std::fs::read_to_string(&audit).unwrap(),
        filler,
        "the partial line was not cut off"
    );
    f.assert_converged("ann");

    // The gateway counts it in its metrics.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    f.vault
        .set_field("u-ann", "Last Rotated", "2020-01-01T00:00:00Z");
    let child = limited(
        &[
            "gateway",
            GUEST_WASM,
            "--vault",
            path,
            "--audit",
            audit_arg,
            "--interval",
            "1",
            "--metrics",
            &addr,
        ],
        limit,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(port, "an audit failure", |m| {
        metric(m, "rotate_host_audit_failures_total").is_some_and(|n| n >= 1)
    });
    stop_gateway(child);
    assert_eq!(std::fs::read_to_string(&audit).unwrap(), filler);
}

/// A pass's other outcomes in the report, the exit code and the audit log: a
/// dry run writes `planned` lines; a failed record `failed` (exit 1); a
/// record whose old key could not be deleted is rotated but `not_finalized`
/// (exit 3, the new key stored, both keys in IAM).
#[test]
fn a_pass_reports_and_audits_planned_failed_and_not_finalized_records() {
    let f = fleet(&[("ann", &[]), ("ben", &[])], &[]);
    let audit = f.vault.folder().join("audit.jsonl");
    let a = audit.to_str().unwrap();
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let (out, v) = due_json(&f, &["--audit", a, "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(uids(&v, "planned"), ["u-ann", "u-ben"]);
    let planned = lines();
    assert_eq!(planned.len(), 2, "{planned:?}");
    assert!(
        planned
            .iter()
            .all(|l| l["outcome"] == "planned" && l["exit_code"] == 0),
        "{planned:?}"
    );

    f.iam.fail("CreateAccessKey", FaultKind::AccessDenied, 1);
    f.iam
        .fail("DeleteAccessKey", FaultKind::AccessDenied, usize::MAX);
    let (out, v) = due_json(&f, &["--audit", a, "--jobs", "1"]);
    assert_eq!(
        out.code,
        1,
        "a failed record makes the pass fail: {}",
        out.all()
    );
    // Whichever record created first met the refusal.
    let (failed, rotated) = (uids(&v, "failed"), uids(&v, "rotated"));
    assert_eq!((failed.len(), rotated.len()), (1, 1), "{v}");
    assert_ne!(failed[0], rotated[0]);
    assert_eq!(v["rotated"][0]["exit_code"], 3, "{v}");
    let name = rotated[0].strip_prefix("u-").unwrap();
    assert_eq!(f.iam.keys(name).len(), 2, "{name}'s old key was deleted");
    assert_record_key_exists(&f.iam, &f.vault, &rotated[0], name);
    let all = lines();
    let outcome = |uid: &str| {
        all[2..]
            .iter()
            .find(|l| l["record_uid"] == uid)
            .map(|l| (l["outcome"].clone(), l["exit_code"].clone()))
    };
    assert_eq!(
        outcome(&failed[0]),
        Some((json!("failed"), json!(1))),
        "{all:?}"
    );
    assert_eq!(
        outcome(&rotated[0]),
        Some((json!("not_finalized"), json!(3))),
        "{all:?}"
    );
    f.assert_no_leak(&std::fs::read_to_string(&audit).unwrap());

    // Only a not-finalized record: the pass exits 3.
    let fresh = fleet(&[("cat", &[])], &[]);
    fresh
        .iam
        .fail("DeleteAccessKey", FaultKind::AccessDenied, usize::MAX);
    let (out, _) = due_json(&fresh, &[]);
    assert_eq!(out.code, 3, "{}", out.all());
}

/// An existing audit log owned by another user is refused; one others can read
/// is warned about, and refused under `--strict-permissions`.
#[test]
fn an_audit_log_of_another_user_or_readable_by_others_is_treated_like_such_a_vault() {
    use std::os::unix::fs::PermissionsExt;
    let f = fleet(&[("ann", &[])], &[]);
    let audit = f.vault.folder().join("audit.jsonl");
    std::fs::write(&audit, "").unwrap();
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o644)).unwrap();
    let a = audit.to_str().unwrap();
    let out = due(&f.vault, &["--audit", a, "--strict-permissions"]);
    out.expect(
        2,
        &[
            "audit log",
            "readable or writable by group or others",
            "chmod 600",
        ],
    );
    assert!(f.iam.log().is_empty());
    let out = due(&f.vault, &["--audit", a, "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr
            .contains("readable or writable by group or others"),
        "{}",
        out.stderr
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED the other-owner half: changing a file's owner needs root");
        return;
    }
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&audit, Some(65534), None).unwrap();
    let sent = f.iam.log().len();
    let out = due(&f.vault, &["--audit", a]);
    out.expect(2, &["is owned by uid 65534, not this user"]);
    assert_eq!(f.iam.log().len(), sent, "nothing was sent");
}

/// An audit log that is a symbolic link, or a FIFO, is refused before anything
/// is sent, and what the link points at is not written.
#[test]
fn an_audit_log_that_is_a_link_or_a_fifo_is_refused() {
    let f = fleet(&[("ann", &[])], &[]);
    let target = f.vault.folder().join("elsewhere.jsonl");
    std::fs::write(&target, "").unwrap();
    let link = f.vault.folder().join("audit.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = due(&f.vault, &["--audit", link.to_str().unwrap()]);
    out.expect(
        2,
        &[
            "could not open the audit log",
            "is a symbolic link",
            "--audit",
        ],
    );
    assert!(f.iam.log().is_empty(), "a request was sent");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"",
        "the link's target was written"
    );

    let fifo = f.vault.folder().join("fifo.jsonl");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = due(&f.vault, &["--audit", fifo.to_str().unwrap()]);
    out.expect(
        2,
        &["could not open the audit log", "FIFO", "not a regular file"],
    );
    assert!(f.iam.log().is_empty(), "a request was sent");
}

/// One local client cannot stall `/healthz`: idle connections past the cap and
/// a client that pipelines requests and never reads leave a new probe answered,
/// and connections are tasks, not threads.
#[test]
fn idle_and_unread_clients_do_not_stall_healthz() {
    let f = fleet(&[("ann", &[])], &[]);
    let port = free_port();
    let child = start_gateway(&f, port, &[]);
    wait_for(port, "the first pass", |m| {
        metric(m, "rotate_host_passes_total").is_some_and(|n| n >= 1)
    });
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut greedy = TcpStream::connect(("127.0.0.1", port)).unwrap();
    greedy.set_nonblocking(true).unwrap();
    let pipeline = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
    let _ = greedy.write(pipeline.as_bytes());
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(probe, "GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    probe
        .read_to_string(&mut answer)
        .expect("/healthz answered");
    assert!(
        answer.starts_with("HTTP/1.") && answer.ends_with("ok\n"),
        "{answer}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        threads < 64,
        "{threads} threads for {} connections",
        idle.len() + 1
    );
    drop((idle, greedy));
    stop_gateway(child);
}

/// A gateway pass where nothing is due writes its summary at INFO, and the
/// per-record "not due" lines only at DEBUG.
#[test]
fn a_quiet_pass_logs_only_its_summary_at_info() {
    let f = fleet(&[("ann", &[("Last Rotated", "2099-01-01T00:00:00Z")])], &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let path = f.vault.path.to_str().unwrap();
    let child = command(&[
        "gateway",
        GUEST_WASM,
        "--vault",
        path,
        "--interval",
        "1",
        "--metrics",
        &addr,
    ])
    .env("RUST_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(port, "two passes", |m| {
        metric(m, "rotate_host_passes_total").is_some_and(|n| n >= 2)
    });
    let stderr = stop_gateway(child);
    assert!(
        stderr.contains("0 rotated, 0 failed, 0 skipped, 1 not due"),
        "{stderr}"
    );
    assert!(!stderr.contains("not due u-ann"), "{stderr}");
}

/// The gateway's metrics carry purges, the pass's duration, when the next
/// record is due, the age of each config's oldest recorded key, and the build.
#[test]
fn metrics_show_purges_pass_time_next_due_oldest_key_and_build() {
    let f = fleet(
        &[
            ("ann", &[]),
            ("ben", &[("Last Rotated", "2026-11-01T00:00:00Z")]),
        ],
        &[],
    );
    let old = f.iam.add_key("ann", "2020-01-01T00:00:00Z");
    f.iam.deactivate("ann", &old.id);
    f.vault.set_field(
        "u-ann",
        "Deactivated Keys",
        &format!("{} 2020-01-02T00:00:00Z", old.id),
    );
    let port = free_port();
    let child = start_gateway(&f, port, &[]);
    let text = wait_for(port, "a pass that purged", |m| {
        metric(m, "rotate_host_purges_total").is_some_and(|n| n >= 1)
    });
    stop_gateway(child);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        text.contains("rotate_host_pass_duration_seconds "),
        "{text}"
    );
    let next = metric(&text, "rotate_host_next_due_timestamp_seconds").unwrap();
    assert!(next > now, "{text}");
    let age = metric(&text, "rotate_host_oldest_key_age_seconds{config=\"cfg1\"}").unwrap();
    assert!(
        age >= 29 * 86_400,
        "ben's key dates from 2026-11-01: {text}"
    );
    assert!(text.contains("rotate_host_build_info{version=\""), "{text}");
    assert!(!f.iam.keys("ann").iter().any(|k| k.id == old.id), "purged");
}

/// SIGINT (Ctrl-C) stops the gateway as SIGTERM does: it says so and exits 0,
/// with the record it had rotated converged.
#[test]
fn sigint_stops_the_gateway_like_sigterm() {
    let f = fleet(&[("ann", &[])], &[]);
    let port = free_port();
    let child = start_gateway(&f, port, &[]);
    wait_for(port, "the first pass", |m| {
        metric(m, "rotate_host_passes_total").is_some_and(|n| n >= 1)
    });
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let stderr = wait_gateway(child);
    assert!(stderr.contains("signal received"), "{stderr}");
    f.assert_converged("ann");
}

/// Writes a gateway config file (mode 0600) beside the fleet's vault.
fn config_file(f: &Fleet, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = f.vault.dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `due --config FILE` takes its settings from the file (a relative path
/// from the file's folder), and a flag on the command line overrides one.
#[test]
fn a_config_file_sets_a_pass_and_flags_override_it() {
    let f = fleet(&[("ann", &[]), ("ben", &[])], &[]);
    let path = config_file(
        &f,
        &format!("guest = {GUEST_WASM:?}\nvault = \"missing.json\"\ndry-run = true\njobs = 2\n"),
    );
    let config = path.to_str().unwrap();
    // The gateway's own keys are passed over by `due`, so one file serves both.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}interval = 30\nmetrics = \"127.0.0.1:9\"\n"),
    )
    .unwrap();
    let out = rotate_host(&["due", "--config", config]);
    out.expect(2, &["missing.json", "does not exist"]);

    let vault = f.vault.path.to_str().unwrap();
    let out = rotate_host(&["due", "--config", config, "--vault", vault, "--json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(uids(&v, "planned"), ["u-ann", "u-ben"], "{v}");
    for (name, key) in &f.keys {
        assert_eq!(
            f.iam.keys(name)[0].id,
            key.id,
            "{name} changed in a dry run"
        );
    }
    f.assert_no_leak(&out.all());
}

/// A config file that is missing, not a file, not TOML, or has an unknown
/// key, a wrong type or a value out of range exits 2, naming the key and its
/// line; a good one is reported valid. Nothing runs either way.
#[test]
fn a_bad_config_file_exits_2_naming_the_key_and_its_line() {
    let f = fleet(&[("ann", &[])], &[]);
    let vault = f.vault.path.to_str().unwrap();
    let good = format!("guest = {GUEST_WASM:?}\nvault = {vault:?}\ninterval = 30\n");
    let cases: &[(&str, &[&str])] = &[
        ("\njobs = \n", &["line 2", "not valid TOML"]),
        (
            "max-age-days = 30\njobs = 100\n",
            &["line 2", "'jobs'", "100"],
        ),
        (
            "# comment\n\njobz = 1\n",
            &["line 3", "'jobz'", "unknown key", "interval"],
        ),
        (
            "dry-run = \"yes\"\n",
            &["line 1", "'dry-run'", "true or false"],
        ),
        (
            "allow-host = [\"ftp://x\"]\n",
            &["line 1", "'allow-host'", "http, https or tcp"],
        ),
        ("jobs = [1, 2]\n", &["line 1", "'jobs'", "one value"]),
    ];
    for (text, needles) in cases {
        let path = config_file(&f, &format!("{good}{text}"));
        let out = rotate_host(&["check-config", path.to_str().unwrap()]);
        // The good lines come first: count them into the expected line.
        let shifted: Vec<String> = needles
            .iter()
            .map(|n| match n.strip_prefix("line ") {
                Some(k) => format!("line {}", k.parse::<usize>().unwrap() + 3),
                None => n.to_string(),
            })
            .collect();
        let shifted: Vec<&str> = shifted.iter().map(String::as_str).collect();
        out.expect(2, &shifted);
        let out = rotate_host(&["gateway", "--config", path.to_str().unwrap()]);
        out.expect(2, &shifted);
    }
    let out = rotate_host(&["check-config", "/nonexistent/gateway.toml"]);
    out.expect(2, &["could not read config file", "--config"]);
    let fifo = f.vault.dir.path().join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = rotate_host(&["check-config", fifo.to_str().unwrap()]);
    out.expect(2, &["FIFO"]);

    let path = config_file(&f, &good);
    let out = rotate_host(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("is valid: 3 setting(s)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        f.iam.keys("ann")[0].id,
        f.keys[0].1.id,
        "check-config rotated"
    );
}

/// A config file that others may read is warned about, and refused under
/// --strict-permissions or its own `strict-permissions = true`; one that
/// group or others may change is refused; group read is the /etc norm.
#[test]
fn a_config_file_readable_by_others_is_warned_about_or_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = fleet(&[("ann", &[])], &[]);
    let vault = f.vault.path.to_str().unwrap();
    let path = config_file(&f, &format!("guest = {GUEST_WASM:?}\nvault = {vault:?}\n"));
    let config = path.to_str().unwrap();
    let mode = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
    mode(0o640);
    let out = rotate_host(&["check-config", config, "--strict-permissions"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.stderr.contains("readable"), "{}", out.stderr);
    for writable in [0o660, 0o602] {
        mode(writable);
        let out = rotate_host(&["check-config", config]);
        out.expect(2, &["can be changed by group or others", "chmod go-w"]);
    }
    mode(0o644);
    let out = rotate_host(&["check-config", config]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr
            .contains("readable or writable by group or others (mode 0644)"),
        "{}",
        out.stderr
    );
    let out = rotate_host(&["check-config", config, "--strict-permissions"]);
    out.expect(2, &["readable by others (mode 0644)", "chmod o-r"]);
    std::fs::write(
        &path,
        format!("guest = {GUEST_WASM:?}\nvault = {vault:?}\nstrict-permissions = true\n"),
    )
    .unwrap();
    let out = rotate_host(&["due", "--config", config]);
    out.expect(2, &["readable by others (mode 0644)"]);
    assert_eq!(
        f.iam.keys("ann")[0].id,
        f.keys[0].1.id,
        "a refused config rotated"
    );
}

/// SIGHUP reads the config file again between passes: a broken file is
/// reported and the running settings kept; a fixed one takes effect at the
/// next pass (here: dry run off, so the planned records rotate).
#[test]
fn sighup_reads_the_config_file_again_between_passes() {
    let f = fleet(&[("ann", &[]), ("ben", &[])], &[]);
    let vault = f.vault.path.to_str().unwrap();
    let settings = format!("guest = {GUEST_WASM:?}\nvault = {vault:?}\ninterval = 3600\n");
    let path = config_file(&f, &format!("{settings}dry-run = true\n"));
    let child = command(&["gateway", "--config", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gw = Watched::new(child);
    gw.wait_line("2 planned, 0 rotated");
    let hup = |gw: &Watched| {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(gw.child.id() as i32, libc::SIGHUP) }, 0);
    };
    std::fs::write(&path, "jobs = \n").unwrap();
    hup(&gw);
    gw.wait_line("could not read the settings again");
    for (name, key) in &f.keys {
        assert_eq!(
            f.iam.keys(name)[0].id,
            key.id,
            "{name} rotated in a dry run"
        );
    }
    std::fs::write(&path, &settings).unwrap();
    hup(&gw);
    gw.wait_line("settings and plugin read again");
    gw.wait_line("2 rotated");
    sigterm(&gw.child);
    let (code, stderr) = gw.finish();
    assert_eq!(code, Some(0), "{stderr}");
    f.assert_converged("ann");
    f.assert_converged("ben");
    f.assert_no_leak(&stderr);
}
