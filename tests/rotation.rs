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
    // The order of the flow: store before delete is visible in the calls.
    let calls = s.iam.calls();
    let create = calls.iter().position(|c| c == "CreateAccessKey").unwrap();
    let verify = calls.iter().position(|c| c == "GetCallerIdentity").unwrap();
    let delete = calls.iter().position(|c| c == "DeleteAccessKey").unwrap();
    assert!(create < verify && verify < delete, "{calls:?}");
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
fn missing_required_config_field_is_bad_input() {
    let s = fake_setup();
    let cfg = fake_config_without(&s.iam.url, &s.rotator, &["Client Secret"]);
    let vault = vault_with(&cfg, "alice", Some(("aws_access_key_id", &s.old.id)));
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("missing required config field(s) 'Client Secret'"),
        "{}",
        out.stderr
    );
    assert_eq!(before, vault.bytes());
    assert!(
        s.iam.calls().is_empty(),
        "nothing may be sent: {:?}",
        s.iam.calls()
    );
}

#[test]
fn malformed_vault_is_bad_input_and_untouched() {
    let vault = VaultFile::raw(b"{\"records\": [ {\"uid\": \"user1\", ");
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(2, &["is malformed"]);
    assert_eq!(vault.bytes(), b"{\"records\": [ {\"uid\": \"user1\", ");
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

#[test]
fn info_describes_the_plugin() {
    let out = rotate_host(&["info", GUEST_WASM, "--json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["info"]["name"], "AWS Secret Key");
    assert_eq!(v["info"]["can_rollback"], false);
    // Exact IAM hosts and region-shaped STS hosts, never all of amazonaws.com.
    assert_eq!(
        v["info"]["allowed_hosts"],
        serde_json::json!([
            "https://iam.amazonaws.com",
            "https://iam.us-gov.amazonaws.com",
            "https://iam.cn-north-1.amazonaws.com.cn",
            "https://sts.{region}.amazonaws.com",
            "https://sts.{region}.amazonaws.com.cn"
        ])
    );
    let labels: Vec<&str> = v["config_schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.starts_with(&[
            "IAM Username",
            "Client ID",
            "Client Secret",
            "Session Token",
            "AWS Region"
        ]),
        "{labels:?}"
    );
}

/// `config` creates a record from --field values; `run` then uses it.
#[test]
fn config_creates_a_usable_record() {
    let s = fake_setup();
    let vault_path = s.vault.path.to_str().unwrap().to_string();
    let mut args = vec![
        "config",
        GUEST_WASM,
        "--vault",
        &vault_path,
        "-t",
        "New Config",
        "--no-input",
    ];
    let fields: Vec<String> = fake_config(&s.iam.url, &s.rotator)
        .iter()
        .map(|(_, l, v)| format!("{}={v}", l.to_lowercase()))
        .collect();
    for f in &fields {
        args.extend(["--field", f]);
    }
    let out = rotate_host(&args);
    assert_eq!(out.code, 0, "{}", out.all());
    let uid = out.stdout.split_whitespace().nth(3).unwrap().to_string();
    assert_eq!(uid.len(), 22, "{}", out.stdout);
    assert_eq!(
        s.vault.field(&uid, "Client Secret").as_deref(),
        Some(s.rotator.secret.as_str())
    );
    let out2 = run(&s.vault, "user1", &uid, &[]);
    assert_eq!(out2.code, 0, "{}", out2.all());
    assert_converged(&s.iam, &s.vault);
    s.assert_no_leak(&out);

    let before = s.vault.bytes();
    let bad = rotate_host(&[
        "config",
        GUEST_WASM,
        "--vault",
        &vault_path,
        "-t",
        "x",
        "--no-input",
        "--field",
        "Colour=blue",
    ]);
    bad.expect(2, &["'Colour' is not a field", "'Client Secret'"]);
    let bad = rotate_host(&[
        "config",
        GUEST_WASM,
        "--vault",
        &vault_path,
        "-t",
        "x",
        "--no-input",
        "--field",
        "Max Backoff Milliseconds=soon",
    ]);
    assert_eq!(bad.code, 2, "{}", bad.all());
    // A typo that drops the '=' must not echo what may be a secret.
    let typo = format!("Client Secret:{}", s.rotator.secret);
    let bad = rotate_host(&[
        "config",
        GUEST_WASM,
        "--vault",
        &vault_path,
        "-t",
        "x",
        "--no-input",
        "--field",
        &typo,
    ]);
    bad.expect(2, &["--field number 1 has no '='"]);
    s.assert_no_leak(&bad);
    assert_eq!(before, s.vault.bytes());
}

/// A second run on a locked vault waits for the lock, then fails clearly.
#[test]
fn a_locked_vault_fails_clearly_after_waiting() {
    let s = fake_setup();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(s.vault.folder().join("vault.json.lock"))
        .unwrap();
    lock.lock().unwrap();
    let before = s.vault.bytes();
    let started = std::time::Instant::now();
    let out = run(&s.vault, "user1", "cfg1", &["--lock-timeout", "0.5"]);
    out.expect(1, &["locked by another rotate-host run"]);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "it must wait first"
    );
    assert_eq!(before, s.vault.bytes());
    assert!(s.iam.calls().is_empty());
}

/// Two runs on one vault at once, for two users: neither update is lost.
#[test]
fn concurrent_runs_on_one_vault_lose_no_update() {
    let s = fake_setup();
    s.iam.add_user("bob", &[]);
    s.iam.add_user("rotator2", &["bob"]);
    let rotator2 = s.iam.add_key("rotator2", "2024-01-01T00:00:00Z");
    let bob_old = s.iam.add_key("bob", "2024-01-01T00:00:00Z");
    let mut bob_cfg = fake_config(&s.iam.url, &rotator2);
    bob_cfg[0].2 = "bob".into();
    let mut doc = s.vault.json();
    let records = doc["records"].as_array_mut().unwrap();
    records.push(config_from("cfg2", &bob_cfg));
    records.push(pam_user(
        "user2",
        "bob",
        Some(("aws_access_key_id", &bob_old.id)),
    ));
    std::fs::write(&s.vault.path, serde_json::to_vec(&doc).unwrap()).unwrap();

    let path = s.vault.path.to_str().unwrap().to_string();
    let children: Vec<_> = [("user1", "cfg1"), ("user2", "cfg2")]
        .iter()
        .map(|(u, c)| {
            command(&["run", GUEST_WASM, "--vault", &path, "-u", u, "-c", c])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out: Outcome = child.wait_with_output().unwrap().into();
        assert_eq!(out.code, 0, "{}", out.all());
    }
    assert_converged(&s.iam, &s.vault);
    let bob_keys = s.iam.keys("bob");
    assert_eq!(bob_keys.len(), 1);
    assert_eq!(
        s.vault.field("user2", "aws_access_key_id").as_deref(),
        Some(bob_keys[0].id.as_str())
    );
}

/// The shipped guest (release profile `guest`) stays within its 400 KiB budget.
#[test]
fn guest_component_fits_its_size_budget() {
    let size = std::fs::metadata(GUEST_WASM).unwrap().len();
    assert!(size <= 400 * 1024, "the guest grew to {} KiB", size / 1024);
}

/// On a terminal, `config` asks for each schema item (here through `script`,
/// which gives it a pseudo-terminal); blank answers keep the defaults.
#[test]
fn config_asks_on_a_terminal() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault.json");
    let cmd = format!(
        "{BIN} config {GUEST_WASM} --vault {} -t Asked --cache-dir {}",
        vault.display(),
        cache_dir().display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux `script`");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Each answer waits for its prompt, so the terminal's echo setting at that
    // moment is what the user would get.
    let secret = "asked-secret-value";
    // IAM Username, Client ID, Client Secret, Session Token (none), AWS Region, then defaults.
    let answers = [
        "alice",
        "AKIAASKED",
        secret,
        "",
        "eu-west-1",
        "",
        "",
        "",
        "",
    ];
    let mut screen = String::new();
    for (i, answer) in answers.iter().enumerate() {
        while screen.matches("Enter Value").count() <= i {
            let chunk = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no prompt #{}: {screen}", i + 1));
            screen.push_str(&String::from_utf8_lossy(&chunk));
        }
        // The prompt is printed just before echo is turned off.
        std::thread::sleep(std::time::Duration::from_millis(200));
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    }
    drop(stdin);
    while let Ok(chunk) = rx.recv_timeout(std::time::Duration::from_secs(60)) {
        screen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{screen}");
    for prompt in ["IAM Username", "Client Secret", "Enter Value [60] : >"] {
        assert!(screen.contains(prompt), "missing prompt {prompt}: {screen}");
    }
    assert!(
        screen.contains("AKIAASKED"),
        "plain answers are echoed: {screen}"
    );
    assert!(!screen.contains(secret), "the secret was echoed: {screen}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&vault).unwrap()).unwrap();
    let uid = doc["records"][0]["uid"].as_str().unwrap();
    let field = |l| test_support::vault::field_of(&doc, uid, l);
    assert_eq!(field("IAM Username").as_deref(), Some("alice"));
    assert_eq!(field("Client Secret").as_deref(), Some(secret));
    assert_eq!(field("AWS Region").as_deref(), Some("eu-west-1"));
    assert_eq!(field("Retry Deadline Seconds"), None);
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
    let keys = s.iam.keys("alice");
    assert_eq!(keys.len(), 1);
    assert_eq!(
        vault.field("-user_1", "aws_access_key_id").as_deref(),
        Some(keys[0].id.as_str())
    );
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
