//! A record reaches no further than itself (issue 14, design §3 I6 and §8.1):
//! in a shared vault every field is someone else's input, so a record cannot
//! delete another record's key, choose whose key it gets, borrow the host's
//! identity, forge a ledger, or forge a log line. Against the fake IAM, with
//! the real guest; after each refusal both IAM and the vault are checked.

mod common;

use common::*;
use serde_json::Value;
use test_support::fake_iam::{FakeIam, Key};
use test_support::vault::{VaultFile, config_record, pam_user, with_custom};

/// `alice` managed by `rotator`; `cfg1` (which fixes no user) is the config.
fn setup() -> (FakeIam, Key) {
    let iam = FakeIam::start();
    iam.add_user("alice", &[]);
    iam.add_user("bob", &[]);
    iam.add_user("rotator", &["alice", "bob"]);
    let rotator = iam.add_key("rotator", "2024-01-01T00:00:00Z");
    (iam, rotator)
}

/// `fake_config` without `IAM Username`, plus `extra` `(label, value)` fields.
fn config(iam: &FakeIam, rotator: &Key, uid: &str, extra: &[(&str, &str)]) -> Value {
    let mut cfg = fake_config(&iam.url, rotator);
    cfg.retain(|(_, l, _)| l != "IAM Username");
    for (l, v) in extra {
        cfg.push(("text".into(), l.to_string(), v.to_string()));
    }
    config_from(uid, &cfg)
}

fn user(uid: &str, login: &str, key: Option<&Key>, fields: &[(&str, &str)]) -> Value {
    with_custom(
        pam_user(
            uid,
            login,
            key.map(|k| ("aws_access_key_id", k.id.as_str())),
        ),
        fields,
    )
}

fn ids(keys: &[Key]) -> Vec<String> {
    keys.iter().map(|k| k.id.clone()).collect()
}

fn due(vault: &VaultFile, extra: &[&str]) -> Outcome {
    let mut args = vec!["due", GUEST_WASM, "--vault", vault.path.to_str().unwrap()];
    args.extend(extra);
    rotate_host(&args)
}

/// Issue 14, case 1: two records hold the two keys of one IAM user. `run` of
/// one must not delete the other's key as a "leftover".
#[test]
fn run_never_deletes_a_key_another_record_holds() {
    let (iam, rotator) = setup();
    let (k1, k2) = (
        iam.add_key("alice", "2024-01-01T00:00:00Z"),
        iam.add_key("alice", "2024-02-01T00:00:00Z"),
    );
    let vault = VaultFile::new(vec![
        config(&iam, &rotator, "cfg1", &[]),
        user("user1", "alice", Some(&k1), &[]),
        user("user2", "alice", Some(&k2), &[]),
    ]);
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(1, &[&k2.id, "another record of the vault holds or tracks"]);
    assert_eq!(ids(&iam.keys("alice")), [k1.id.clone(), k2.id.clone()]);
    assert_eq!(vault.bytes(), before, "the vault is untouched");
    assert!(
        !iam.calls()
            .iter()
            .any(|c| c == "DeleteAccessKey" || c == "CreateAccessKey")
    );
}

/// Two fleet records that would rotate one credential fail together, with one
/// message naming both; the rest of the fleet rotates.
#[test]
fn two_members_rotating_one_user_fail_together_and_the_rest_rotate() {
    let (iam, rotator) = setup();
    let k1 = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let kb = iam.add_key("bob", "2024-01-01T00:00:00Z");
    let member = [("Rotation Config", "cfg1")];
    let vault = VaultFile::new(vec![
        config(&iam, &rotator, "cfg1", &[]),
        user("user1", "alice", Some(&k1), &member),
        user("user2", "ALICE", None, &member),
        user("user3", "bob", Some(&kb), &member),
    ]);
    let out = due(&vault, &["--json"]);
    assert_eq!(out.code, 1, "{}", out.all());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{report}");
    for f in failed {
        let error = f["error"].as_str().unwrap();
        assert!(error.contains("'user1' and 'user2'"), "{error}");
        assert_eq!(f["exit_code"], 2);
    }
    assert_eq!(report["rotated"][0]["user_uid"], "user3");
    assert_eq!(ids(&iam.keys("alice")), std::slice::from_ref(&k1.id));
    assert_eq!(vault.field("user1", "aws_access_key_id"), Some(k1.id));
    assert_eq!(vault.field("user2", "aws_access_key_id"), None);
    assert_ne!(vault.field("user3", "aws_access_key_id"), Some(kb.id));
}

/// Issue 14, case 2: a config serves only the logins its scope names; a record
/// cannot name an identity outside it, nor a config that is no config.
#[test]
fn a_record_cannot_make_a_config_rotate_outside_its_scope() {
    let (iam, rotator) = setup();
    let kb = iam.add_key("bob", "2024-01-01T00:00:00Z");
    let vault = VaultFile::new(vec![
        config(
            &iam,
            &rotator,
            "cfg1",
            &[("Rotation Scope", "alice\nsvc-*")],
        ),
        user("user1", "bob", Some(&kb), &[("Rotation Config", "cfg1")]),
        user("self", "alice", None, &[("Rotation Config", "self")]),
        user("pointer", "alice", None, &[("Rotation Config", "user1")]),
    ]);
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(
        2,
        &["login 'bob'", "'cfg1' does not serve", "Rotation Scope"],
    );
    let out = due(&vault, &["--json"]);
    assert_eq!(out.code, 1, "{}", out.all());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let error = |uid: &str| {
        report["failed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["user_uid"] == uid)
            .unwrap_or_else(|| panic!("{uid} not failed: {report}"))["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        error("user1").contains("does not serve"),
        "{}",
        error("user1")
    );
    assert!(
        error("self").contains("cannot be its own config"),
        "{}",
        error("self")
    );
    assert!(error("pointer").contains("a PAM user record, not a config record"));
    assert_eq!(vault.bytes(), before);
    assert_eq!(iam.calls(), Vec::<String>::new(), "nothing reached IAM");
    assert_eq!(ids(&iam.keys("bob")), [kb.id]);
}

/// A pass refuses a config that declares no scope, saying how to set one;
/// `run`, where the operator named the records, still works with it.
#[test]
fn a_pass_needs_a_scope_and_run_does_not() {
    let (iam, rotator) = setup();
    let k1 = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let mut cfg = config(&iam, &rotator, "cfg1", &[]);
    cfg["custom"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["label"] != "Rotation Scope");
    let vault = VaultFile::new(vec![
        cfg,
        user("user1", "alice", Some(&k1), &[("Rotation Config", "cfg1")]),
    ]);
    let out = due(&vault, &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("declares no 'Rotation Scope'")
            && out.stdout.contains("'*' alone serves every record"),
        "{}",
        out.all()
    );
    assert_eq!(ids(&iam.keys("alice")), std::slice::from_ref(&k1.id));
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_ne!(vault.field("user1", "aws_access_key_id"), Some(k1.id));
}

/// Issue 14, case 3: `Use Gateway Credentials` only chooses the host's identity
/// where the operator lends it, and a lent identity never goes to an origin
/// that only a record names.
#[test]
fn the_hosts_identity_is_the_operators_to_lend() {
    let (iam, rotator) = setup();
    let k1 = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let mut cfg = config(
        &iam,
        &rotator,
        "cfg1",
        &[("Use Gateway Credentials", "true")],
    );
    cfg["custom"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["label"] != "Client ID" && f["label"] != "Client Secret");
    let vault = VaultFile::new(vec![cfg, user("user1", "alice", Some(&k1), &[])]);
    let before = vault.bytes();
    let host_env = |mut cmd: std::process::Command| {
        cmd.env("AWS_ACCESS_KEY_ID", &rotator.id)
            .env("AWS_SECRET_ACCESS_KEY", &rotator.secret)
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
        Outcome::from(cmd.output().unwrap())
    };
    let path = vault.path.to_str().unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "run", GUEST_WASM, "--vault", path, "-u", "user1", "-c", "cfg1",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let cmd = |extra: &[&str]| {
        let a = args(extra);
        command(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let out = host_env(cmd(&[]));
    out.expect(
        2,
        &["which the operator does not lend", "--gateway-credentials"],
    );
    let out = host_env(cmd(&[
        "--gateway-credentials",
        "--gateway-credentials-for",
        "other",
    ]));
    out.expect(2, &["which the operator does not lend"]);
    let out = host_env(cmd(&["--gateway-credentials"]));
    out.expect(
        2,
        &[
            "names the origin",
            "never sent where only a record points",
            "--allow-host",
        ],
    );
    assert_eq!(
        iam.calls(),
        Vec::<String>::new(),
        "nothing was sent with the host's identity"
    );
    assert_eq!(vault.bytes(), before);
    assert_no_secrets(&out.all(), &[&rotator.secret]);

    let out = host_env(cmd(&["--gateway-credentials", "--allow-host", &iam.url]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_ne!(vault.field("user1", "aws_access_key_id"), Some(k1.id));
    assert_no_secrets(&out.all(), &[&rotator.secret]);
}

/// Issue 14, case 4: a ledger entry naming a key another record tracks is not
/// believed: the key survives, the entry is reported, and the plan refuses to
/// make room with it.
#[test]
fn a_forged_ledger_entry_deletes_nothing() {
    let (iam, rotator) = setup();
    let current = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let old = iam.add_key("alice", "2024-01-01T00:00:00Z");
    iam.deactivate("alice", &old.id);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let vault = VaultFile::new(vec![
        config(&iam, &rotator, "cfg1", &[]),
        user(
            "owner",
            "alice",
            Some(&current),
            &[("Deactivated Keys", &format!("{} {now}", old.id))],
        ),
        user(
            "forger",
            "alice",
            None,
            &[(
                "Deactivated Keys",
                &format!("{} 2020-01-01T00:00:00Z", old.id),
            )],
        ),
    ]);
    let out = run(&vault, "forger", "cfg1", &[]);
    out.expect(
        1,
        &["entry names a key that record(s) 'owner' hold or track: it is ignored"],
    );
    assert!(out.stderr.contains(&old.id), "{}", out.stderr);
    assert_eq!(
        ids(&iam.keys("alice")),
        [current.id.clone(), old.id.clone()]
    );
    assert_eq!(vault.field("owner", "aws_access_key_id"), Some(current.id));
    assert!(!iam.calls().iter().any(|c| c == "DeleteAccessKey"));
}

/// Two records holding one key id are refused before anything is sent.
#[test]
fn one_key_in_two_records_is_refused_before_any_request() {
    let (iam, rotator) = setup();
    let k1 = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let vault = VaultFile::new(vec![
        config(&iam, &rotator, "cfg1", &[]),
        user("user1", "alice", Some(&k1), &[]),
        user("copy", "alice", Some(&k1), &[]),
    ]);
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(2, &[&k1.id, "record(s) 'copy' hold or track too"]);
    assert_eq!(iam.calls(), Vec::<String>::new());
}

/// The host's own check: a plugin that asks to retire a key another record
/// holds is not given it to retire.
#[test]
fn the_host_withholds_from_finalize_a_key_another_record_holds() {
    let vault = VaultFile::new(vec![
        config_record(
            "cfg1",
            &[
                ("text", "behaviour", "retire-held"),
                ("text", "target", "AKIATHEIRS0000000001,AKIAFREE00000000001"),
            ],
        ),
        pam_user("user1", "alice", None),
        pam_user(
            "user2",
            "bob",
            Some(("aws_access_key_id", "AKIATHEIRS0000000001")),
        ),
    ]);
    let path = vault.path.to_str().unwrap();
    let out = rotate_host(&[
        "run",
        HOSTILE_WASM,
        "--vault",
        path,
        "-u",
        "user1",
        "-c",
        "cfg1",
    ]);
    out.expect(3, &["asked to retire [AKIAFREE00000000001]"]);
    assert!(out.stderr.contains("it is kept"), "{}", out.stderr);
    assert_eq!(
        vault.field("user2", "aws_access_key_id").as_deref(),
        Some("AKIATHEIRS0000000001")
    );
}

/// Issue 14, case 5: record text in `tracing` fields is escaped, so a UID with
/// a newline, an escape sequence or a bidi override forges no log line.
#[test]
fn a_hostile_uid_forges_no_log_line() {
    let (iam, rotator) = setup();
    let k1 = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let uid = "u\n2026-12-01T00:00:00Z  INFO rotate_host::gateway: rotated victim\u{1b}[2K\u{202e}";
    let vault = VaultFile::new(vec![
        config(&iam, &rotator, "cfg1", &[]),
        user(uid, "alice", Some(&k1), &[("Rotation Config", "cfg1")]),
    ]);
    let path = vault.path.to_str().unwrap();
    for out in [
        rotate_host(&["run", GUEST_WASM, "--vault", path, "-u", uid, "-c", "cfg1"]),
        due(&vault, &[]),
    ] {
        assert!(matches!(out.code, 0 | 1), "{}", out.all());
        for text in [&out.stderr, &out.stdout] {
            assert!(!text.contains('\u{1b}'), "raw ESC in:\n{text}");
            assert!(!text.contains('\u{202e}'), "raw U+202E in:\n{text}");
            assert!(
                !text.lines().any(|l| l.starts_with("2026-12-01T00:00:00Z")),
                "a forged line in:\n{text}"
            );
        }
        assert!(out.all().contains("u\\u{a}2026"), "{}", out.all());
    }
}

/// In a pass, the host's identity is lent only to config records the operator
/// names: any record editor could otherwise create a config that borrows it.
#[test]
fn a_pass_lends_the_hosts_identity_only_to_named_configs() {
    let (iam, rotator) = setup();
    let vault = VaultFile::new(vec![config(&iam, &rotator, "cfg1", &[])]);
    let out = due(&vault, &["--gateway-credentials"]);
    out.expect(
        2,
        &[
            "--gateway-credentials-for UID",
            "name the configs you trust",
        ],
    );
    assert_eq!(iam.calls(), Vec::<String>::new());
}

/// A record cannot pick the provider record whose key signs its rotation:
/// its `Rotation Provider` must be the one its config names.
#[test]
fn a_record_cannot_choose_the_provider_that_signs() {
    let (iam, rotator) = setup();
    let k1 = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let vault = VaultFile::new(vec![
        config(&iam, &rotator, "cfg1", &[]),
        test_support::vault::provider_record("prov1", &rotator.id, &rotator.secret, "us-east-1"),
        user(
            "user1",
            "alice",
            Some(&k1),
            &[("Rotation Config", "cfg1"), ("Rotation Provider", "prov1")],
        ),
    ]);
    let out = due(&vault, &["--json"]);
    assert_eq!(out.code, 1, "{}", out.all());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let error = report["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("which its config record 'cfg1' does not name"),
        "{error}"
    );
    assert_eq!(iam.calls(), Vec::<String>::new());
    assert_eq!(ids(&iam.keys("alice")), std::slice::from_ref(&k1.id));
}

/// The provider the config names signs a pass's rotation: the config holds
/// no key of its own, its `Rotation Provider` names `prov1`, and a member
/// naming the same provider is rotated with `prov1`'s key.
#[test]
fn in_a_pass_the_provider_the_config_names_signs() {
    let (iam, rotator) = setup();
    let k1 = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let mut cfg = fake_config_without(
        &iam.url,
        &rotator,
        &["IAM Username", "Client ID", "Client Secret"],
    );
    cfg.push(("text".into(), "Rotation Scope".into(), "alice".into()));
    cfg.push(("text".into(), "Rotation Provider".into(), "prov1".into()));
    let vault = VaultFile::new(vec![
        config_from("cfg1", &cfg),
        test_support::vault::provider_record("prov1", &rotator.id, &rotator.secret, "us-east-1"),
        user(
            "user1",
            "alice",
            Some(&k1),
            &[("Rotation Config", "cfg1"), ("Rotation Provider", "prov1")],
        ),
    ]);
    let out = due(&vault, &["--json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_no_leak(&out.all(), std::slice::from_ref(&rotator.secret));
    assert_record_converged(&iam, &vault, "user1", "alice");
    assert!(
        out.stderr.contains(&format!("as {} ->", rotator.id)),
        "the provider's key did not sign:\n{}",
        out.stderr
    );
}

/// A record editor who adds a `Rotation Staged` field to an AWS record keeps
/// it due every pass no longer than one rotation: the AWS plugin stages
/// nothing, and its store removes the forged field with the rest.
#[test]
fn a_forged_staged_field_on_a_plain_rotation_is_dropped_by_its_store() {
    let s = fake_setup();
    let forged = r#"[{"label":"Rotation Config","kind":"text","value":"cfg-of-another-team"}]"#;
    s.vault.set_field("user1", "Rotation Staged", forged);
    let out = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    assert_eq!(s.vault.field("user1", "Rotation Staged"), None);
    assert_eq!(s.vault.field("user1", "Rotation Config"), None);
}

/// A `Rotation Staged` field that is not the host's JSON stops that record
/// before any request, naming the field, and changes nothing.
#[test]
fn a_garbled_staged_field_is_refused_by_name_and_nothing_is_sent() {
    let s = fake_setup();
    s.vault
        .set_field("user1", "Rotation Staged", "hunter2-not-json");
    let before = s.vault.bytes();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(
        2,
        &["field 'Rotation Staged' is not the host's JSON list of fields"],
    );
    assert!(!out.all().contains("hunter2"), "{}", out.all());
    assert_eq!(s.vault.bytes(), before);
    assert!(s.iam.calls().is_empty(), "{:?}", s.iam.calls());
}

/// A forged staged *password* on an AWS record is kept: a plain rotation
/// would drop it, so the run is refused, and the key it made is deleted again.
#[test]
fn a_plain_rotation_never_drops_a_staged_password() {
    let s = fake_setup();
    let forged = r#"[{"label":"password","kind":"password","value":"maybe-at-the-service"}]"#;
    s.vault.set_field("user1", "Rotation Staged", forged);
    let before = s.vault.bytes();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(1, &["would drop it", "was deleted again"]);
    assert_eq!(s.vault.bytes(), before);
    assert_eq!(ids(&s.iam.keys("alice")), std::slice::from_ref(&s.old.id));
}
