//! `Old Key Action` `retire-when-unused` (issue 18, design §10.1): the old key
//! stays active after a rotation until IAM shows nobody uses it. Against the
//! fake IAM, which records a key's last use on every signed request (as IAM
//! does), can report it with a lag, and lets a test record a consumer's use or
//! move every recorded use back in time (the clock passing). After each pass
//! both IAM and the vault are checked.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;
use test_support::fake_iam::{FakeIam, FaultKind, Key};
use test_support::vault::{VaultFile, fleet_member};

struct Setup {
    iam: FakeIam,
    vault: VaultFile,
    old: Key,
}

/// `alice`'s record `user1` in the fleet, under a config in `retire-when-unused`
/// with `Unused Hours` 1 and `extra` fields.
fn setup(extra: &[(&str, &str)]) -> Setup {
    let iam = FakeIam::start();
    iam.add_user("rotator", &["alice"]);
    iam.add_user("alice", &[]);
    let rotator = iam.add_key("rotator", "2024-01-01T00:00:00Z");
    let old = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let mut cfg = fake_config(&iam.url, &rotator);
    for (l, v) in [
        ("Old Key Action", "retire-when-unused"),
        ("Unused Hours", "1"),
    ]
    .iter()
    .chain(extra)
    {
        cfg.retain(|(_, label, _)| label != l);
        cfg.push(("text".into(), l.to_string(), v.to_string()));
    }
    let user = fleet_member(
        "user1",
        "alice",
        Some(("aws_access_key_id", &old.id)),
        "cfg1",
        &[],
    );
    let vault = VaultFile::new(vec![config_from("cfg1", &cfg), user]);
    Setup { iam, vault, old }
}

impl Setup {
    fn due(&self, extra: &[&str]) -> (Outcome, Value) {
        let mut args = vec![
            "due",
            GUEST_WASM,
            "--vault",
            self.vault.path.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        let out = rotate_host(&args);
        assert_no_leak(&out.all(), &self.iam.all_secrets());
        let v = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
        (out, v)
    }

    /// IAM's keys of alice: (id, active).
    fn keys(&self) -> Vec<(String, bool)> {
        self.iam
            .keys("alice")
            .into_iter()
            .map(|k| (k.id, k.active))
            .collect()
    }

    fn vault_key(&self) -> String {
        self.vault.field("user1", "aws_access_key_id").unwrap()
    }

    fn ledger(&self) -> Option<String> {
        self.vault.field("user1", "Deactivated Keys")
    }

    /// Makes the record due again, as its schedule would.
    fn make_due(&self) {
        self.vault
            .set_field("user1", "Last Rotated", "2020-01-01T00:00:00Z");
    }

    /// The clock moves on by `by`: recorded uses and the ledger's times move back.
    fn time_passes(&self, by: Duration) {
        self.iam.shift_uses(by);
        let ledger = self.ledger().unwrap();
        let shifted: Vec<String> = ledger
            .lines()
            .map(|l| {
                let mut w: Vec<String> = l.split_whitespace().map(str::to_string).collect();
                let at = chrono::DateTime::parse_from_rfc3339(&w[1]).unwrap()
                    - chrono::Duration::from_std(by).unwrap();
                w[1] = at
                    .to_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                w.join(" ")
            })
            .collect();
        self.vault
            .set_field("user1", "Deactivated Keys", &shifted.join("\n"));
    }
}

fn entry<'a>(v: &'a Value, list: &str, uid: &str) -> &'a Value {
    v[list]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["user_uid"] == uid))
        .unwrap_or_else(|| panic!("{uid} not in {list}: {v}"))
}

/// The consumer test: the old key survives pass after pass while a
/// consumer signs with it, and is retired, then deleted, once it stops.
#[test]
fn a_consumer_keeps_the_old_key_alive_pass_after_pass_until_it_stops() {
    let s = setup(&[("Inactive Grace Days", "0")]);
    let (out, v) = s.due(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let new = s.vault_key();
    assert_eq!(entry(&v, "rotated", "user1")["kept"][0], s.old.id.as_str());
    assert_eq!(s.keys(), [(s.old.id.clone(), true), (new.clone(), true)]);
    assert!(s.ledger().unwrap().ends_with(" kept"), "{:?}", s.ledger());

    for _ in 0..3 {
        s.iam.record_use(&s.old.id, SystemTime::now(), "s3");
        let (out, v) = s.due(&[]);
        assert_eq!(out.code, 0, "{}", out.all());
        let e = entry(&v, "not_due", "user1");
        assert_eq!(e["in_use"][0]["id"], s.old.id.as_str(), "{e}");
        assert_eq!(e["in_use"][0]["service"], "s3", "{e}");
        assert_eq!(e["in_use"][0]["region"], "us-east-1", "{e}");
        assert!(e["in_use"][0]["last_used"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            s.keys(),
            [(s.old.id.clone(), true), (new.clone(), true)],
            "retired while in use"
        );
        assert_eq!(s.vault_key(), new);
    }

    // The consumer stops; two hours pass with no use.
    s.time_passes(Duration::from_secs(2 * 3600));
    let (out, v) = s.due(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        entry(&v, "purged", "user1")["deactivated"][0],
        s.old.id.as_str(),
        "{v}"
    );
    assert_eq!(s.keys(), [(s.old.id.clone(), false), (new.clone(), true)]);
    assert!(!s.ledger().unwrap().contains("kept"), "{:?}", s.ledger());

    // Its grace period (0 days) is over: the next pass deletes it.
    let (out, _) = s.due(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(s.keys(), [(new.clone(), true)]);
    assert_eq!(s.ledger(), None);
    assert_eq!(s.vault_key(), new);
}

/// The two-key rule: a rotation that comes due while the kept key is in use
/// refuses (exit 1) and changes nothing; once the key is unused it is retired
/// first, then the rotation runs.
#[test]
fn a_rotation_due_while_the_old_key_is_in_use_refuses_then_retires_it_first() {
    let s = setup(&[]);
    let (out, _) = s.due(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let new = s.vault_key();
    s.make_due();
    s.iam.record_use(&s.old.id, SystemTime::now(), "ec2");
    let creates = s.iam.count("CreateAccessKey");
    let (out, v) = s.due(&[]);
    assert_eq!(out.code, 1, "{}", out.all());
    let error = entry(&v, "failed", "user1")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&s.old.id) && error.contains("with ec2") && error.contains("refused"),
        "{error}"
    );
    assert_eq!(
        s.iam.count("CreateAccessKey"),
        creates,
        "nothing was created"
    );
    assert_eq!(s.keys(), [(s.old.id.clone(), true), (new.clone(), true)]);
    assert_eq!(s.vault_key(), new);

    s.time_passes(Duration::from_secs(2 * 3600));
    let (out, _) = s.due(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let newer = s.vault_key();
    assert_ne!(newer, new);
    assert_eq!(s.keys(), [(new.clone(), true), (newer.clone(), true)]);
    assert_eq!(
        s.ledger().unwrap().split_whitespace().next(),
        Some(new.as_str())
    );
}

/// `--dry-run` says what it would decide and why, and changes nothing.
#[test]
fn a_dry_run_shows_each_decision() {
    let s = setup(&[]);
    s.due(&[]);
    s.make_due();
    s.iam.record_use(&s.old.id, SystemTime::now(), "s3");
    let before = s.vault.bytes();
    let (out, v) = s.due(&["--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let notes = entry(&v, "planned", "user1")["notes"].to_string();
    assert!(
        notes.contains("is still in use") && notes.contains("a rotation now would refuse"),
        "{notes}"
    );
    s.time_passes(Duration::from_secs(2 * 3600));
    let before_shift = s.vault.bytes();
    let (_, v) = s.due(&["--dry-run"]);
    let notes = entry(&v, "planned", "user1")["notes"].to_string();
    assert!(
        notes.contains("retire the old key") && notes.contains("no use of it since"),
        "{notes}"
    );
    assert_eq!(s.vault.bytes(), before_shift);
    assert_ne!(
        before, before_shift,
        "only the test's clock moved the ledger"
    );
    assert!(s.keys().iter().all(|(_, active)| *active));
}

/// IAM's last-use data lags: a use IAM does not report yet does not count,
/// so the key is retired only past the lag the default `Unused Hours` allows
/// for. Here a lag hides a recent use and an older one is reported.
#[test]
fn a_use_iam_has_not_reported_yet_is_not_seen() {
    let s = setup(&[]);
    s.due(&[]);
    s.time_passes(Duration::from_secs(3 * 3600));
    s.iam.record_use(
        &s.old.id,
        SystemTime::now() - Duration::from_secs(1800),
        "s3",
    );
    s.iam.use_lag(Duration::from_secs(3600));
    let (_, v) = s.due(&[]);
    // The half-hour-old use is hidden by the one-hour lag: IAM shows none.
    assert_eq!(
        entry(&v, "purged", "user1")["deactivated"][0],
        s.old.id.as_str(),
        "{v}"
    );
}

/// Without `iam:GetAccessKeyLastUsed` the retirement stops, not the pass: the
/// old key stays, and the report names the action to grant.
#[test]
fn a_missing_last_used_permission_keeps_the_old_key_and_names_the_action() {
    let s = setup(&[]);
    s.due(&[]);
    s.time_passes(Duration::from_secs(2 * 3600));
    s.iam
        .fail("GetAccessKeyLastUsed", FaultKind::AccessDenied, 100);
    let (out, v) = s.due(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let e = entry(&v, "not_due", "user1");
    let notes = e["notes"].to_string();
    assert!(
        notes.contains("iam:GetAccessKeyLastUsed") && notes.contains("treated as in use"),
        "{notes}"
    );
    assert!(e["in_use"][0]["unknown"].is_string(), "{e}");
    assert!(s.keys().iter().all(|(_, active)| *active));
}

/// kill -9 while the retirement's `UpdateAccessKey` is in flight: the vault's
/// key exists (I1), and the next pass finishes the retirement.
#[test]
fn killed_while_retiring_the_old_key_the_next_pass_finishes_it() {
    let s = setup(&[]);
    s.due(&[]);
    let new = s.vault_key();
    s.time_passes(Duration::from_secs(2 * 3600));
    let arrived = s.iam.hold("UpdateAccessKey");
    let path = s.vault.path.to_str().unwrap();
    let out = kill_when_arrived(
        &["due", GUEST_WASM, "--vault", path],
        arrived,
        Duration::ZERO,
        &s.iam,
    );
    assert_eq!(out.code, -1, "{}", out.all());
    assert_key_exists(&s.iam, "alice", &s.vault_key()); // I1
    assert!(
        s.ledger().unwrap().contains("kept"),
        "the ledger was not saved: {:?}",
        s.ledger()
    );
    let (out, _) = s.due(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(s.keys(), [(s.old.id.clone(), false), (new.clone(), true)]);
    assert!(!s.ledger().unwrap().contains("kept"));
}

/// Bad `Unused Hours` or `Overlap Max Days`: named with the reason; exit 2 for
/// `run`, and in a pass only that record fails.
#[test]
fn out_of_range_policy_fields_are_named() {
    for (label, value) in [("Unused Hours", "721"), ("Overlap Max Days", "zero")] {
        let s = setup(&[(label, value)]);
        let out = run(&s.vault, "user1", "cfg1", &[]);
        out.expect(2, &[label, value]);
        let (out, v) = s.due(&[]);
        assert_eq!(out.code, 1, "{}", out.all());
        assert!(
            entry(&v, "failed", "user1")["error"]
                .as_str()
                .unwrap()
                .contains(label)
        );
        assert_eq!(s.keys(), [(s.old.id.clone(), true)]);
    }
}

/// A record moved to this mode with a `Deactivated Keys` ledger from the
/// deactivate mode keeps it working: the old entry is purged on its schedule.
#[test]
fn a_ledger_from_the_deactivate_mode_keeps_working() {
    let s = setup(&[("Inactive Grace Days", "1")]);
    let earlier = s.iam.add_key("alice", "2024-01-01T00:00:00Z");
    s.iam.deactivate("alice", &earlier.id);
    s.vault.set_field(
        "user1",
        "Deactivated Keys",
        &format!("{} 2026-01-01T00:00:00Z", earlier.id),
    );
    let (out, v) = s.due(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let e = entry(&v, "rotated", "user1");
    assert_eq!(e["purged"][0], earlier.id.as_str(), "{e}");
    assert_eq!(e["kept"][0], s.old.id.as_str(), "{e}");
    assert_eq!(s.keys(), [(s.old.id.clone(), true), (s.vault_key(), true)]);
}
