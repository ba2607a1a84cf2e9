//! End-to-end rotations: the real guest under wasmtime, driven by the real
//! `rotate-host` binary, against the fake IAM on 127.0.0.1. After every case:
//! IAM's keys, the vault file, and no secret in the output.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use test_support::fake_iam::FaultKind;
use test_support::vault::{VaultFile, pam_user, provider_record};

#[test]
fn plain_rotation() {
    let s = fake_setup();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    let new = s.vault.field("user1", "aws_access_key_id").unwrap();
    assert_ne!(new, s.old.id);
    assert!(
        out.stdout.contains(&new) && out.stdout.contains(&s.old.id),
        "{}",
        out.stdout
    );
    // Unknown content is kept, and the file is private.
    assert_eq!(s.vault.json()["records"][1]["notes"], "kept as is");
    let mode = std::fs::metadata(&s.vault.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The new key is proved to work before the old one is deleted.
    let calls = s.iam.calls();
    let create = calls.iter().position(|c| c == "CreateAccessKey").unwrap();
    let verify = calls.iter().position(|c| c == "GetCallerIdentity").unwrap();
    let delete = calls.iter().position(|c| c == "DeleteAccessKey").unwrap();
    assert!(create < verify && verify < delete, "{calls:?}");
    s.assert_no_leak(&out);
}

/// Store before delete (I1): while the old key's `DeleteAccessKey` answer is
/// held at the fake (the delete done), the vault already holds the new key,
/// and IAM has it.
#[test]
fn the_vault_holds_the_new_key_before_the_old_one_is_deleted() {
    let s = fake_setup();
    let arrived = s.iam.hold("DeleteAccessKey");
    let path = s.vault.path.to_str().unwrap();
    let child = command(&[
        "run", GUEST_WASM, "--vault", path, "-u", "user1", "-c", "cfg1",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    arrived
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the old key was never deleted");
    let held = s.vault.field("user1", "aws_access_key_id").unwrap();
    assert_ne!(
        held, s.old.id,
        "the vault still held the old key as it was deleted"
    );
    assert_key_exists(&s.iam, "alice", &held);
    s.iam.release();
    let out: Outcome = child.wait_with_output().unwrap().into();
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    s.assert_no_leak(&out);
}

/// Two keys where the vault's key is the newer one: the older leftover goes.
#[test]
fn two_keys_vault_key_newer() {
    let s = fake_setup();
    let leftover = s.iam.add_key("alice", "2023-01-01T00:00:00Z");
    let before = s.vault.bytes();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    assert!(
        !s.iam
            .keys("alice")
            .iter()
            .any(|k| k.id == leftover.id || k.id == s.old.id)
    );
    assert_ne!(before, s.vault.bytes());
    s.assert_no_leak(&out);
}

/// Two keys where the vault's key is the older one and CreateAccessKey is
/// denied: the vault's key survives, the vault is untouched.
#[test]
fn two_keys_vault_key_older_and_create_denied() {
    let s = fake_setup();
    s.iam.add_key("alice", "2025-06-01T00:00:00Z");
    s.iam
        .fail("CreateAccessKey", FaultKind::AccessDenied, usize::MAX);
    let before = s.vault.bytes();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(1, &["CreateAccessKey", "denied"]);
    assert!(
        s.iam.keys("alice").iter().any(|k| k.id == s.old.id),
        "the vault's key was deleted"
    );
    assert_eq!(before, s.vault.bytes());
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    s.assert_no_leak(&out);
}

/// Two keys that the vault does not know: refused, with both ids, nothing changed.
#[test]
fn two_unknown_keys_are_refused() {
    let s = fake_setup();
    let other = s.iam.add_key("alice", "2025-01-01T00:00:00Z");
    let vault = VaultFile::new(vec![
        config_from("cfg1", &fake_config(&s.iam.url, &s.rotator)),
        pam_user(
            "user1",
            "alice",
            Some(("aws_access_key_id", "AKIANOTINIAM00000000")),
        ),
    ]);
    let keys_before = s.iam.keys("alice");
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains(&s.old.id) && out.stderr.contains(&other.id),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Nothing was changed"), "{}", out.stderr);
    assert_eq!(s.iam.keys("alice"), keys_before);
    assert_eq!(before, vault.bytes());
    assert!(!s.iam.calls().contains(&"CreateAccessKey".to_string()));
    s.assert_no_leak(&out);
}

/// The user guide's own setup: one IAM user holds the config's key and the
/// rotated key. The vault's key must go first (the one I2 exception), with a warning.
#[test]
fn guide_setup_one_user_holds_both_keys() {
    let GuideSetup {
        iam,
        vault,
        client,
        rotated,
    } = guide_setup("aws_acess_key_id");
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr.contains("no spare"),
        "the I2 exception must be logged: {}",
        out.stderr
    );
    let keys = iam.keys("alice");
    let new = vault.field("user1", "aws_access_key_id").unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter().any(|k| k.id == client.id),
        "the signing key must survive"
    );
    assert!(keys.iter().any(|k| k.id == new
        && Some(&k.secret) == vault.field("user1", "aws_secret_access_key").as_ref()));
    assert!(!keys.iter().any(|k| k.id == rotated.id));
    let secrets = [
        client.secret.as_str(),
        rotated.secret.as_str(),
        &keys[1].secret,
    ];
    assert_no_secrets(&out.all(), &secrets);
}

#[test]
fn wrong_secret_changes_nothing() {
    let s = fake_setup();
    let mut cfg = fake_config(&s.iam.url, &s.rotator);
    cfg[2].2 = "not-the-right-secret-value-0000000000000".into();
    let vault = vault_with(&cfg, "alice", Some(("aws_access_key_id", &s.old.id)));
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(1, &["Client Secret does not match"]);
    assert_eq!(before, vault.bytes());
    assert_eq!(s.iam.keys("alice").len(), 1);
    s.assert_no_leak(&out);
    assert_no_secrets(&out.all(), &["not-the-right-secret-value-0000000000000"]);
}

#[test]
fn unknown_iam_user_changes_nothing() {
    let s = fake_setup();
    let mut cfg = fake_config(&s.iam.url, &s.rotator);
    cfg[0].2 = "bob".into();
    let vault = vault_with(&cfg, "bob", None);
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(1, &["'bob' was not found"]);
    assert_eq!(before, vault.bytes());
    s.assert_no_leak(&out);
}

/// Credentials and region from a pamAwsConfiguration record; the first region wins.
#[test]
fn provider_record_supplies_credentials() {
    let s = fake_setup();
    let cfg = fake_config_without(
        &s.iam.url,
        &s.rotator,
        &["Client ID", "Client Secret", "AWS Region"],
    );
    let vault = VaultFile::new(vec![
        config_from("cfg1", &cfg),
        pam_user("user1", "alice", Some(("aws_access_key_id", &s.old.id))),
        provider_record(
            "prov1",
            &s.rotator.id,
            &s.rotator.secret,
            "us-east-1\nus-west-2",
        ),
    ]);
    let out = run(&vault, "user1", "cfg1", &["--configuration-uid", "prov1"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &vault);
    s.assert_no_leak(&out);
    // Without the provider, the same config lacks credentials: bad input.
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(2, &["'Client ID'"]);
}

/// The vendor guide's misspelled label is read, and written back spelled right.
#[test]
fn misspelled_label_is_read_and_corrected() {
    let s = fake_setup();
    let vault = vault_with(
        &fake_config(&s.iam.url, &s.rotator),
        "alice",
        Some(("aws_acess_key_id", &s.old.id)),
    );
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &vault);
    let custom = vault.json()["records"][1]["custom"].clone();
    let labels: Vec<&str> = custom
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["label"].as_str())
        .collect();
    // The misspelled field is relabelled in place, not duplicated; the run
    // also records when it rotated, for the fleet's schedules.
    assert_eq!(
        labels,
        ["aws_access_key_id", "aws_secret_access_key", "Last Rotated"]
    );
    s.assert_no_leak(&out);
}

#[test]
fn dry_run_changes_nothing() {
    let s = fake_setup();
    s.iam.add_key("alice", "2023-01-01T00:00:00Z");
    let before = s.vault.bytes();
    let keys = s.iam.keys("alice");
    let out = run(&s.vault, "user1", "cfg1", &["--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("nothing was changed") && out.stdout.contains("leftover"),
        "{}",
        out.stdout
    );
    assert_eq!(before, s.vault.bytes());
    assert_eq!(keys, s.iam.keys("alice"));
}

/// IAM is eventually consistent: STS may not know the new key at first.
#[test]
fn verification_waits_for_the_new_key() {
    let s = fake_setup();
    s.iam.sts_lag(3);
    let out = run(&s.vault, "user1", "cfg1", &["--json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["status"], "rotated");
    assert_eq!(report["retired"][0], s.old.id.as_str());
    assert_eq!(
        report["created"].as_str(),
        s.vault.field("user1", "aws_access_key_id").as_deref()
    );
    assert_eq!(s.iam.count("GetCallerIdentity"), 4);
    s.assert_no_leak(&out);
}

/// Keeper UIDs are URL-safe base64: they may start with '-'.
#[test]
fn uids_may_start_with_a_hyphen() {
    let s = fake_setup();
    let vault = VaultFile::new(vec![
        config_from("-cfg_1", &fake_config(&s.iam.url, &s.rotator)),
        pam_user("-user_1", "alice", Some(("aws_access_key_id", &s.old.id))),
    ]);
    let out = run(&vault, "-user_1", "-cfg_1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_record_converged(&s.iam, &vault, "-user_1", "alice");
    s.assert_no_leak(&out);
}

/// Real HTTPS (rustls) to an endpoint whose certificate comes from a private CA,
/// trusted with --ca-file.
#[test]
fn rotates_over_https_with_a_private_ca() {
    let ca = test_support::tls::TestCa::new();
    let s = setup_on(test_support::fake_iam::FakeIam::start_tls(&ca));
    assert!(s.iam.url.starts_with("https://"));
    let ca_file = s.vault.folder().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let out = run(
        &s.vault,
        "user1",
        "cfg1",
        &["--ca-file", ca_file.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    s.assert_no_leak(&out);
}

/// The plugin's HTTPS goes through the proxy `HTTPS_PROXY` names (a
/// `CONNECT` tunnel, TLS end to end); plain http never does.
#[test]
fn plugin_https_goes_through_https_proxy_and_plain_http_does_not() {
    let proxy = test_support::proxy::ConnectProxy::start();
    let ca = test_support::tls::TestCa::new();
    let s = setup_on(test_support::fake_iam::FakeIam::start_tls(&ca));
    let ca_file = s.vault.folder().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let path = s.vault.path.to_str().unwrap();
    let args = [
        "run", GUEST_WASM, "--vault", path, "-u", "user1", "-c", "cfg1",
    ];
    let out: Outcome = command(&args)
        .args(["--ca-file", ca_file.to_str().unwrap()])
        .env("HTTPS_PROXY", &proxy.url)
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    s.assert_no_leak(&out);
    let endpoint = s.iam.url.trim_start_matches("https://").to_string();
    let targets = proxy.targets();
    assert!(
        !targets.is_empty() && targets.iter().all(|t| *t == endpoint),
        "{targets:?}"
    );

    let plain = fake_setup();
    let path = plain.vault.path.to_str().unwrap();
    let args = [
        "run", GUEST_WASM, "--vault", path, "-u", "user1", "-c", "cfg1",
    ];
    let out: Outcome = command(&args)
        .env("HTTPS_PROXY", &proxy.url)
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&plain.iam, &plain.vault);
    assert_eq!(
        proxy.targets(),
        targets,
        "plain http went through the proxy"
    );
}

/// Without the CA, the handshake fails: nothing is sent, nothing is retried, and
/// the message says how to fix it.
#[test]
fn an_untrusted_certificate_fails_at_once_and_clearly() {
    let ca = test_support::tls::TestCa::new();
    let s = setup_on(test_support::fake_iam::FakeIam::start_tls(&ca));
    let before = s.vault.bytes();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(1, &["TLS handshake", "--ca-file"]);
    assert!(
        !out.stderr.contains("retry"),
        "a certificate error is not transient: {}",
        out.stderr
    );
    assert!(s.iam.calls().is_empty());
    assert_eq!(before, s.vault.bytes());
}

/// Temporary credentials sign only with their session token: from the config
/// record's `Session Token`, and from the host's identity (`AWS_SESSION_TOKEN`).
/// A wrong token is refused by IAM, and nothing changes.
#[test]
fn temporary_credentials_sign_with_their_session_token() {
    let iam = test_support::fake_iam::FakeIam::start();
    iam.add_user("alice", &[]);
    iam.add_user("rotator", &["alice"]);
    let session = iam.add_session_key("rotator");
    let token = session.token.clone().unwrap();
    let mut secrets = iam.all_secrets();
    secrets.push(token.clone());

    for (given, works) in [(token.as_str(), true), ("FakeSessionToken/wrong", false)] {
        let old = iam.add_key("alice", "2024-01-01T00:00:00Z");
        let mut cfg = fake_config(&iam.url, &session);
        cfg.push(("secret".into(), "Session Token".into(), given.into()));
        let vault = vault_with(&cfg, "alice", Some(("aws_access_key_id", &old.id)));
        let before = vault.bytes();
        let out = run(&vault, "user1", "cfg1", &[]);
        assert_no_leak(&out.all(), &secrets);
        if works {
            assert_eq!(out.code, 0, "{}", out.all());
            assert_record_converged(&iam, &vault, "user1", "alice");
        } else {
            out.expect(1, &["InvalidClientTokenId"]);
            assert_eq!(before, vault.bytes());
            assert_eq!(iam.keys("alice"), vec![old]);
        }
        iam.keys("alice")
            .iter()
            .for_each(|k| iam.delete_key("alice", &k.id));
    }

    let old = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let cfg = fake_config_without(&iam.url, &session, &["Client ID", "Client Secret"]);
    let vault = vault_with(&cfg, "alice", Some(("aws_access_key_id", &old.id)));
    let path = vault.path.to_str().unwrap();
    let args = [
        "run", GUEST_WASM, "--vault", path, "-u", "user1", "-c", "cfg1",
    ];
    let home = tempfile::tempdir().unwrap();
    let absent = home.path().join("absent");
    let mut cmd = command(&args);
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    let out: Outcome = cmd
        .args(["--gateway-credentials", "--allow-host", &iam.url])
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", &absent)
        .env("AWS_SHARED_CREDENTIALS_FILE", &absent)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", &session.id)
        .env("AWS_SECRET_ACCESS_KEY", &session.secret)
        .env("AWS_SESSION_TOKEN", &token)
        .output()
        .unwrap()
        .into();
    assert_no_leak(&out.all(), &secrets);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_record_converged(&iam, &vault, "user1", "alice");
}
