//! Conformance against moto (an independent IAM/STS emulator) with signatures
//! and IAM policies enforced: `INITIAL_NO_AUTH_ACTION_COUNT` is used up by the
//! bootstrap, and the rotating identity holds only the user guide's four actions.

mod common;

use common::*;
use test_support::moto::Moto;
use test_support::vault::{
    VaultFile, config_record, fleet_member, pam_user, provider_record, with_custom,
};

struct MotoSetup {
    moto: Moto,
    rotator: (String, String),
    old: (String, String),
}

fn setup() -> MotoSetup {
    let moto = Moto::start();
    moto.user("alice", None);
    moto.user("rotator", Some("alice"));
    let rotator = moto.create_key("rotator");
    let old = moto.create_key("alice");
    MotoSetup { moto, rotator, old }
}

fn config(url: &str, key: &(String, String)) -> serde_json::Value {
    config_record(
        "cfg1",
        &[
            ("text", "IAM Username", "alice"),
            ("secret", "Client ID", &key.0),
            ("secret", "Client Secret", &key.1),
            ("text", "AWS Region", "us-east-1"),
            ("url", "AWS Endpoint URL", url),
            ("text", "Retry Deadline Seconds", "5"),
        ],
    )
}

fn secrets(s: &MotoSetup, vault: &VaultFile) -> Vec<String> {
    let mut v = vec![s.rotator.1.clone(), s.old.1.clone()];
    v.extend(vault.field("user1", "aws_secret_access_key"));
    v
}

/// I3: none of `secrets` in what the run printed.
fn check_no_leak(s: &MotoSetup, vault: &VaultFile, out: &Outcome) {
    assert_no_leak(&out.all(), &secrets(s, vault));
}

/// The acceptance test: the vault's new key authenticates as the user.
#[test]
fn rotates_and_the_new_key_authenticates_as_the_user() {
    let s = setup();
    let vault = VaultFile::new(vec![
        config(&s.moto.url, &s.rotator),
        pam_user("user1", "alice", Some(("aws_acess_key_id", &s.old.0))),
    ]);
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let (id, _) = assert_vault_key_works(&s.moto, &vault, "user1", "alice");
    assert_ne!(id, s.old.0);
    assert_eq!(s.moto.keys("alice"), vec![id.clone()]);
    assert_eq!(
        s.moto.whoami(&s.old.0, &s.old.1),
        Err("InvalidClientTokenId".into())
    );
    check_no_leak(&s, &vault, &out);

    // And again: the rotated key rotates cleanly.
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(s.moto.keys("alice").len(), 1);
    assert_ne!(s.moto.keys("alice")[0], id);
}

#[test]
fn wrong_secret_is_rejected_by_moto() {
    let s = setup();
    let bad = (
        s.rotator.0.clone(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
    );
    let vault = VaultFile::new(vec![
        config(&s.moto.url, &bad),
        pam_user("user1", "alice", Some(("aws_access_key_id", &s.old.0))),
    ]);
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(1, &["SignatureDoesNotMatch"]);
    assert_eq!(before, vault.bytes());
    assert_eq!(s.moto.keys("alice"), vec![s.old.0.clone()]);
    check_no_leak(&s, &vault, &out);
}

/// A rotating identity without the guide's policy is denied by moto's policy engine.
#[test]
fn identity_without_the_policy_is_denied() {
    let s = setup();
    s.moto.user("intruder", None);
    let intruder = s.moto.create_key("intruder");
    let vault = VaultFile::new(vec![
        config(&s.moto.url, &intruder),
        pam_user("user1", "alice", Some(("aws_access_key_id", &s.old.0))),
    ]);
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(1, &["was denied", "least-privilege policy"]);
    assert_eq!(before, vault.bytes());
    assert_eq!(s.moto.keys("alice"), vec![s.old.0.clone()]);
}

#[test]
fn unknown_user_in_moto() {
    let s = setup();
    let vault = VaultFile::new(vec![
        config_record(
            "cfg1",
            &[
                ("secret", "Client ID", &s.rotator.0),
                ("secret", "Client Secret", &s.rotator.1),
                ("text", "AWS Region", "us-east-1"),
                ("url", "AWS Endpoint URL", &s.moto.url),
            ],
        ),
        pam_user("user1", "nobody", None),
    ]);
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(1, &["'nobody' was not found"]);
}

/// Two keys, both unknown to the vault, one inactive: the inactive one makes room.
#[test]
fn inactive_unknown_key_makes_room() {
    let s = setup();
    let inactive = s.moto.create_key("alice");
    s.moto.deactivate("alice", &inactive.0);
    let vault = VaultFile::new(vec![
        config(&s.moto.url, &s.rotator),
        pam_user("user1", "alice", None),
    ]);
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let keys = s.moto.keys("alice");
    let id = vault.field("user1", "aws_access_key_id").unwrap();
    assert!(
        keys.contains(&id) && keys.contains(&s.old.0) && !keys.contains(&inactive.0),
        "{keys:?}"
    );
    check_no_leak(&s, &vault, &out);
}

#[test]
fn provider_record_against_moto() {
    let s = setup();
    let vault = VaultFile::new(vec![
        config_record("cfg1", &[("url", "AWS Endpoint URL", &s.moto.url)]),
        pam_user("user1", "alice", Some(("aws_access_key_id", &s.old.0))),
        provider_record("prov1", &s.rotator.0, &s.rotator.1, "us-east-1"),
    ]);
    let out = run(&vault, "user1", "cfg1", &["--configuration-uid", "prov1"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_vault_key_works(&s.moto, &vault, "user1", "alice");
    check_no_leak(&s, &vault, &out);
}

/// The user guide's own setup in moto: alice rotates her own second key.
#[test]
fn guide_setup_in_moto() {
    let moto = Moto::start();
    moto.user("alice", Some("alice"));
    let client = moto.create_key("alice");
    let rotated = moto.create_key("alice");
    let vault = VaultFile::new(vec![
        config(&moto.url, &client),
        pam_user("user1", "alice", Some(("aws_acess_key_id", &rotated.0))),
    ]);
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let (id, secret) = assert_vault_key_works(&moto, &vault, "user1", "alice");
    let mut keys = moto.keys("alice");
    keys.sort();
    let mut expected = vec![client.0.clone(), id.clone()];
    expected.sort();
    assert_eq!(keys, expected);
    assert_no_secrets(&out.all(), &[&client.1, &rotated.1, &secret]);
}

/// A fleet pass against moto: three users' keys rotated by `due`, each new key
/// authenticating as its user, the old ones gone.
#[test]
fn a_fleet_pass_rotates_every_due_user() {
    let s = setup();
    let mut records = vec![config_record(
        "cfg1",
        &[
            ("secret", "Client ID", &s.rotator.0),
            ("secret", "Client Secret", &s.rotator.1),
            ("text", "AWS Region", "us-east-1"),
            ("url", "AWS Endpoint URL", &s.moto.url),
        ],
    )];
    let mut old = Vec::new();
    for name in ["ann", "ben", "cat"] {
        s.moto.user(name, None);
        let key = s.moto.create_key(name);
        records.push(fleet_member(
            &format!("u-{name}"),
            name,
            Some(("aws_access_key_id", &key.0)),
            "cfg1",
            &[],
        ));
        old.push((name, key));
    }
    let vault = VaultFile::new(records);
    let out = rotate_host(&[
        "due",
        GUEST_WASM,
        "--vault",
        vault.path.to_str().unwrap(),
        "--jobs",
        "3",
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("3 rotated, 0 failed, 0 skipped, 0 not due"),
        "{}",
        out.stdout
    );
    let mut secrets: Vec<String> = vec![s.rotator.1.clone()];
    for (name, (old_id, old_secret)) in &old {
        let (id, secret) = assert_vault_key_works(&s.moto, &vault, &format!("u-{name}"), name);
        assert_eq!(s.moto.keys(name), vec![id.clone()], "{name}");
        secrets.extend([secret, old_secret.clone()]);
        assert_ne!(&id, old_id);
    }
    assert_no_leak(&out.all(), &secrets);
}

/// Temporary credentials: the rotating identity is a role assumed with
/// `AssumeRole`, signing with its session token; the rotated key authenticates.
#[test]
fn a_session_token_from_assume_role_signs_the_rotation() {
    let s = setup();
    let (id, secret, token) = s
        .moto
        .assume_role("rotator-role", &s.rotator.0, &s.rotator.1);
    let vault = VaultFile::new(vec![
        config_record(
            "cfg1",
            &[
                ("text", "IAM Username", "alice"),
                ("text", "Client ID", &id),
                ("secret", "Client Secret", &secret),
                ("secret", "Session Token", &token),
                ("text", "AWS Region", "us-east-1"),
                ("url", "AWS Endpoint URL", &s.moto.url),
            ],
        ),
        pam_user("user1", "alice", Some(("aws_access_key_id", &s.old.0))),
    ]);
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let (new_id, _) = assert_vault_key_works(&s.moto, &vault, "user1", "alice");
    assert_eq!(s.moto.keys("alice"), vec![new_id.clone()]);
    let mut secrets = secrets(&s, &vault);
    secrets.extend([secret, token]);
    assert_no_leak(&out.all(), &secrets);
}

/// A config record in the deactivate mode, for a fleet too.
fn deactivating_config(url: &str, key: &(String, String)) -> serde_json::Value {
    with_custom(config(url, key), &[("Old Key Action", "deactivate")])
}

/// alice with one key, and a rotator allowed the guide's four actions plus
/// `also`, in the deactivate mode.
fn deactivating_setup(also: &[&str]) -> (MotoSetup, VaultFile) {
    let moto = Moto::start();
    moto.user("alice", None);
    moto.user_with("rotator", Some("alice"), also);
    let rotator = moto.create_key("rotator");
    let old = moto.create_key("alice");
    let s = MotoSetup { moto, rotator, old };
    let vault = VaultFile::new(vec![
        deactivating_config(&s.moto.url, &s.rotator),
        // alice's PAM user record, in the fleet of `cfg1`.
        fleet_member(
            "user1",
            "alice",
            Some(("aws_access_key_id", &s.old.0)),
            "cfg1",
            &[],
        ),
    ]);
    (s, vault)
}

fn statuses(s: &MotoSetup) -> Vec<(String, String)> {
    let mut keys = s.moto.key_statuses("alice");
    keys.sort_by(|a, b| a.1.cmp(&b.1));
    keys
}

fn due(vault: &VaultFile) -> Outcome {
    rotate_host(&["due", GUEST_WASM, "--vault", vault.path.to_str().unwrap()])
}

/// Staged retire, with a rotator holding exactly the README's actions for the
/// mode (the guide's four and iam:UpdateAccessKey): `finalize` deactivates the
/// old key; a `due` pass inside the grace period keeps it; one after deletes it.
#[test]
fn deactivate_then_delete_after_the_grace_period() {
    let (s, vault) = deactivating_setup(&["iam:UpdateAccessKey"]);

    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let new = vault.field("user1", "aws_access_key_id").unwrap();
    assert!(
        out.stdout.contains(&format!(
            "deactivated old key(s), kept for the grace period: {}",
            s.old.0
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        statuses(&s),
        [
            (new.clone(), "Active".into()),
            (s.old.0.clone(), "Inactive".into())
        ]
    );
    let ledger = vault.field("user1", "Deactivated Keys").unwrap();
    assert!(ledger.starts_with(&format!("{} 20", s.old.0)), "{ledger}");

    // Inside the grace period: nothing is due and nothing changes in IAM.
    let out = due(&vault);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("0 rotated, 0 failed, 0 skipped, 1 not due"),
        "{}",
        out.stdout
    );
    assert_eq!(s.moto.keys("alice").len(), 2);

    // Eight days later, as the operator's clock would have it.
    vault.set_field(
        "user1",
        "Deactivated Keys",
        &format!("{} 2020-01-01T00:00:00Z", s.old.0),
    );
    let out = due(&vault);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(&format!(
            "purged user1: deleted {} (grace period ended)",
            s.old.0
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("0 rotated, 1 purged, 0 failed"),
        "{}",
        out.stdout
    );
    assert_eq!(s.moto.keys("alice"), vec![new.clone()]);
    assert_eq!(vault.field("user1", "Deactivated Keys"), None);
    // I1: the vault's key is the one left, and it works.
    let (id, _) = assert_vault_key_works(&s.moto, &vault, "user1", "alice");
    assert_eq!(id, new);
    check_no_leak(&s, &vault, &out);
}

/// With the guide's four actions only, the deactivate mode stops at
/// `UpdateAccessKey`: the new key is stored and works, the old one stays
/// Active, and the error names the action to grant (exit 3).
#[test]
fn deactivate_mode_without_update_access_key_is_denied_after_the_store() {
    let (s, vault) = deactivating_setup(&[]);
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(3, &["UpdateAccessKey", "iam:UpdateAccessKey"]);
    let new = vault.field("user1", "aws_access_key_id").unwrap();
    assert_ne!(new, s.old.0);
    let mut keys = s.moto.key_statuses("alice");
    keys.sort();
    let mut want = vec![
        (new, "Active".to_string()),
        (s.old.0.clone(), "Active".into()),
    ];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(vault.field("user1", "Deactivated Keys"), None);
}

/// The two-key rule with an Inactive key still in its grace period: the next
/// rotation must delete it to make room, and the plan says so first.
#[test]
fn an_inactive_key_in_its_grace_period_makes_room_and_the_plan_says_so() {
    let (s, vault) = deactivating_setup(&["iam:UpdateAccessKey"]);
    assert_eq!(run(&vault, "user1", "cfg1", &[]).code, 0);
    let first = vault.field("user1", "aws_access_key_id").unwrap();

    let plan = run(&vault, "user1", "cfg1", &["--dry-run"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout
            .contains(&format!("delete {} before its grace period ends", s.old.0)),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains(&format!("deactivate the old key {first}")),
        "{}",
        plan.stdout
    );
    assert_eq!(s.moto.keys("alice").len(), 2);

    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("before its grace period ends"),
        "{}",
        out.stdout
    );
    let second = vault.field("user1", "aws_access_key_id").unwrap();
    assert_eq!(
        statuses(&s),
        [
            (second, "Active".into()),
            (first.clone(), "Inactive".into())
        ]
    );
    // The deleted key is no longer tracked; the one just deactivated is.
    let ledger = vault.field("user1", "Deactivated Keys").unwrap();
    assert!(
        ledger.starts_with(&format!("{first} ")) && !ledger.contains('\n'),
        "{ledger}"
    );
}

/// `retire-when-unused` against moto, which records a key's last use on every
/// signed request, with the rotator holding exactly the README's actions for
/// the mode: the old key stays active after the rotation; a consumer signing
/// with it keeps it alive pass after pass, and the pass names its last use.
#[test]
fn retire_when_unused_keeps_the_key_a_consumer_signs_with_in_moto() {
    let (s, vault) = deactivating_setup(&["iam:UpdateAccessKey", "iam:GetAccessKeyLastUsed"]);
    vault.set_field("cfg1", "Old Key Action", "retire-when-unused");
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let new = vault.field("user1", "aws_access_key_id").unwrap();
    assert!(
        out.stdout.contains(&format!(
            "kept old key(s) active until IAM shows them unused: {}",
            s.old.0
        )),
        "{}",
        out.stdout
    );
    assert_both_active(&s, &new);
    for _ in 0..2 {
        // The consumer that still holds the old key signs with it.
        assert!(s.moto.whoami(&s.old.0, &s.old.1).is_ok());
        let out = due(&vault);
        assert_eq!(out.code, 0, "{}", out.all());
        assert!(
            out.stdout.contains(&format!(
                "the old key {} is still in use (last used",
                s.old.0
            )) && out.stdout.contains("kept"),
            "{}",
            out.stdout
        );
        assert_both_active(&s, &new);
    }
    check_no_leak(&s, &vault, &out);
}

/// alice has exactly the new key and the old one, both Active.
fn assert_both_active(s: &MotoSetup, new: &str) {
    let mut keys = s.moto.key_statuses("alice");
    keys.sort();
    let mut want = vec![
        (new.to_string(), "Active".to_string()),
        (s.old.0.clone(), "Active".into()),
    ];
    want.sort();
    assert_eq!(keys, want);
}
