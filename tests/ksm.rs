//! The Keeper backend (`--ksm-config`): the real SDK inside `rotate-host`, over
//! real HTTPS, against the fake KSM (`tests/support/src/fake_ksm.rs`), with the
//! fake IAM on the other side. Each fault is checked in both places afterwards:
//! what IAM holds, and what Keeper's readers see (docs/design.md, §13).

mod common;

use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::Value;
use test_support::fake_iam::{FakeIam, FaultKind, Key};
use test_support::fake_ksm::{FakeKsm, Fault};
use test_support::tls::TestCa;
use test_support::vault::{fleet_member, pam_user, with_custom};

struct Setup {
    iam: FakeIam,
    ksm: FakeKsm,
    rotator: Key,
    old: Key,
    dir: tempfile::TempDir,
}

/// Keeper's record data: a test record without its `uid`, which Keeper keeps apart.
fn data(mut record: Value) -> Value {
    record.as_object_mut().unwrap().remove("uid");
    record
}

fn setup() -> Setup {
    let ca = TestCa::for_name(test_support::fake_ksm::HOST);
    let ksm = FakeKsm::start(&ca);
    let iam = FakeIam::start();
    iam.add_user("rotator", &["alice"]);
    iam.add_user("alice", &[]);
    let rotator = iam.add_key("rotator", "2024-01-01T00:00:00Z");
    let old = iam.add_key("alice", "2024-01-01T00:00:00Z");
    ksm.add_record(
        "cfg1",
        data(config_from("cfg1", &fake_config(&iam.url, &rotator))),
    );
    ksm.add_record(
        "user1",
        data(pam_user(
            "user1",
            "alice",
            Some(("aws_access_key_id", &old.id)),
        )),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
    write_config(&dir, &ksm.config());
    Setup {
        iam,
        ksm,
        rotator,
        old,
        dir,
    }
}

fn write_config(dir: &tempfile::TempDir, config: &Value) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("ksm.json");
    std::fs::write(&path, config.to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Setup {
    fn config_path(&self) -> String {
        self.dir
            .path()
            .join("ksm.json")
            .to_str()
            .unwrap()
            .to_string()
    }

    /// `rotate-host ARGS` reaching Keeper through the fake as its HTTPS proxy
    /// and trusting the fake's CA, as an operator behind a TLS-inspecting proxy
    /// would (`HTTPS_PROXY`, `SSL_CERT_FILE`).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = command(args);
        cmd.env("SSL_CERT_FILE", self.dir.path().join("ca.pem"))
            .env("HTTPS_PROXY", &self.ksm.proxy);
        cmd
    }

    fn output(&self, args: &[&str]) -> Outcome {
        self.command(args).output().unwrap().into()
    }

    /// `run` of user1 under cfg1 with the KSM config, and `extra`.
    fn run_command(&self, extra: &[&str]) -> Command {
        let config = self.config_path();
        let mut args = vec![
            "run",
            GUEST_WASM,
            "--ksm-config",
            &config,
            "-u",
            "user1",
            "-c",
            "cfg1",
        ];
        args.extend(extra);
        self.command(&args)
    }

    fn run(&self, extra: &[&str]) -> Outcome {
        self.run_command(extra).output().unwrap().into()
    }

    /// `run` on user1, started and left running, its output piped.
    fn spawn_run(&self) -> std::process::Child {
        self.run_command(&[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// user1 joins the fleet of cfg1, in place (one record per key: a second
    /// holder would be refused).
    fn join_fleet(&self, extra: &[(&str, &str)]) {
        let member = fleet_member(
            "user1",
            "alice",
            Some(("aws_access_key_id", &self.old.id)),
            "cfg1",
            extra,
        );
        self.ksm.add_record("user1", data(member));
    }

    /// The key id Keeper's readers see on the PAM user record.
    fn vault_key(&self) -> String {
        self.ksm.field("user1", "aws_access_key_id").unwrap()
    }

    fn iam_keys(&self) -> Vec<String> {
        self.iam.keys("alice").into_iter().map(|k| k.id).collect()
    }

    /// I1 at rest: the key Keeper shows exists in IAM; no transaction is open.
    fn assert_at_rest(&self) {
        assert_key_exists(&self.iam, "alice", &self.vault_key());
        assert!(!self.ksm.open_transaction("user1"));
    }

    /// No secret of IAM's, of the records' or of the KSM config in `out`.
    fn assert_no_leak(&self, out: &Outcome) {
        let mut secrets = vec![self.rotator.secret.clone(), self.old.secret.clone()];
        secrets.extend(self.iam.all_secrets());
        secrets.extend(self.ksm.config_secrets());
        secrets.extend(self.ksm.field("user1", "aws_secret_access_key"));
        assert_no_leak(&out.all(), &secrets);
    }
}

#[test]
fn a_rotation_against_keeper_stores_the_new_key_in_a_rotation_transaction() {
    let s = setup();
    let before = s.ksm.revision("user1");
    let out = s.run(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let new = s.vault_key();
    assert_ne!(new, s.old.id);
    assert_eq!(s.iam_keys(), vec![new.clone()]);
    let secret = s.ksm.field("user1", "aws_secret_access_key").unwrap();
    assert!(s.iam.all_secrets().contains(&secret));
    assert!(s.ksm.field("user1", "Last Rotated").is_some());
    assert!(s.ksm.revision("user1") > before);
    // The rest of the record is as it was.
    assert_eq!(s.ksm.record("user1").unwrap()["notes"], "kept as is");
    let calls = s.ksm.calls();
    assert_eq!(calls[0], "get_secret", "{calls:?}");
    // A read; the lease (read again, no transaction left open to roll back,
    // written, read back); the rotation transaction (stage, complete, read back); the lease
    // given back (read, written, read back).
    assert_eq!(
        calls,
        [
            "get_secret",
            "get_secret",
            "rollback_secret_update",
            "update_secret",
            "get_secret",
            "update_secret",
            "finalize_secret_update",
            "get_secret",
            "get_secret",
            "update_secret",
            "get_secret"
        ],
        "{calls:?}"
    );
    assert!(out.stdout.contains("stored in Keeper"), "{}", out.stdout);
    s.assert_at_rest();
    s.assert_no_leak(&out);
}

/// The deactivate mode against Keeper: the old key is deactivated, not
/// deleted, and the ledger (`Deactivated Keys`) is saved to the Keeper record;
/// once its grace period is over, a pass purges it and Keeper forgets it.
#[test]
fn deactivate_with_keeper_records_the_key_and_a_later_pass_purges_it() {
    let s = setup();
    let config = data(with_custom(
        config_from("cfg1", &fake_config(&s.iam.url, &s.rotator)),
        &[
            ("Old Key Action", "deactivate"),
            ("Inactive Grace Days", "0"),
        ],
    ));
    s.ksm.add_record("cfg1", config);
    s.join_fleet(&[]);
    let out = s.run(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    s.assert_no_leak(&out);
    let new = s.vault_key();
    let keys = s.iam.keys("alice");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().any(|k| k.id == s.old.id && !k.active),
        "{keys:?}"
    );
    let ledger = s.ksm.field("user1", "Deactivated Keys").unwrap();
    assert!(ledger.starts_with(&s.old.id), "{ledger}");

    // With no grace, the entry has expired: the pass purges the key.
    let cfg = s.config_path();
    let out = s.output(&["due", GUEST_WASM, "--ksm-config", &cfg]);
    assert_eq!(out.code, 0, "{}", out.all());
    s.assert_no_leak(&out);
    assert_eq!(s.iam_keys(), vec![new.clone()]);
    assert_eq!(s.vault_key(), new);
    assert_eq!(s.ksm.field("user1", "Deactivated Keys"), None);
    s.assert_at_rest();
}

#[test]
fn the_config_may_come_from_ksm_config_as_base64() {
    let s = setup();
    let b64 = base64::engine::general_purpose::STANDARD.encode(s.ksm.config().to_string());
    let out: Outcome = s
        .command(&["run", GUEST_WASM, "-u", "user1", "-c", "cfg1"])
        .env("KSM_CONFIG", &b64)
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.all());
    s.assert_at_rest();
    assert_ne!(s.vault_key(), s.old.id);
}

#[test]
fn a_uid_keeper_does_not_return_is_named() {
    let s = setup();
    let config = s.config_path();
    let out = s.output(&[
        "run",
        GUEST_WASM,
        "--ksm-config",
        &config,
        "-u",
        "user1",
        "-c",
        "nosuchcfg",
    ]);
    out.expect(
        2,
        &[
            "no record with UID 'nosuchcfg' (given to -c)",
            "shared folder",
        ],
    );
    assert_eq!(s.iam.calls(), Vec::<String>::new());
    assert_eq!(s.vault_key(), s.old.id);
}

#[test]
fn exactly_one_vault_and_no_weakening_environment() {
    let s = setup();
    let config = s.config_path();
    let both = s.output(&[
        "run",
        GUEST_WASM,
        "--vault",
        "v.json",
        "--ksm-config",
        &config,
        "-u",
        "user1",
        "-c",
        "cfg1",
    ]);
    assert_eq!(both.code, 2, "{}", both.all());
    let neither = s.output(&["run", GUEST_WASM, "-u", "user1", "-c", "cfg1"]);
    neither.expect(2, &["--vault FILE", "--ksm-config FILE"]);
    let unsafe_tls: Outcome = s
        .run_command(&[])
        .env("KSM_SKIP_VERIFY", "true")
        .output()
        .unwrap()
        .into();
    unsafe_tls.expect(2, &["KSM_SKIP_VERIFY is set", "TLS"]);
    let unredeemed = serde_json::json!({"hostname": s.ksm.host, "clientKey": "one-time-token"});
    write_config(&s.dir, &unredeemed);
    let out = s.run(&[]);
    out.expect(2, &["one-time access token", "redeem"]);
    assert!(!out.all().contains("one-time-token"), "{}", out.all());
    assert!(s.ksm.calls().is_empty());
    assert_eq!(s.iam.calls(), Vec::<String>::new());
}

/// `KSM_HOSTNAME` would send the application's requests to another host than
/// its config names: refused before anything is sent.
#[test]
fn ksm_hostname_in_the_environment_is_refused() {
    let s = setup();
    let out: Outcome = s
        .run_command(&[])
        .env("KSM_HOSTNAME", "elsewhere.example.com")
        .output()
        .unwrap()
        .into();
    out.expect(
        2,
        &["KSM_HOSTNAME is set", "put the hostname in the config"],
    );
    assert!(s.ksm.calls().is_empty());
    assert_eq!(s.iam.calls(), Vec::<String>::new());
}

/// A KSM config others may read holds the application's private key: a run
/// warns and names the fix; `--strict-permissions` refuses it, sending nothing.
#[test]
fn a_readable_ksm_config_is_warned_about_and_refused_when_strict() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    let config = s.config_path();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let strict = s.run(&["--strict-permissions"]);
    strict.expect(2, &[&config, "(mode 0644)", "chmod 600"]);
    assert!(s.ksm.calls().is_empty());
    assert_eq!(s.vault_key(), s.old.id);
    let warned = s.run(&[]);
    warned.expect(0, &[&config, "(mode 0644)", "chmod 600"]);
    s.assert_at_rest();
}

/// The SDK keeps what it learns (the server's key id, the app key) in the
/// config; the host hands it an in-memory copy, so the file is never rewritten.
#[test]
fn the_ksm_config_file_is_never_rewritten() {
    let s = setup();
    let config = s.config_path();
    let before = std::fs::read(&config).unwrap();
    let modified = std::fs::metadata(&config).unwrap().modified().unwrap();
    let out = s.run(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(std::fs::read(&config).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&config).unwrap().modified().unwrap(),
        modified
    );
    let files: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 2, "nothing new beside the config: {files:?}");
}

/// Someone edits the record while `finalize` runs: the marker's removal
/// reads the record again and keeps the edit.
#[test]
fn a_marker_update_keeps_an_edit_made_meanwhile() {
    let s = setup();
    s.join_fleet(&[]);
    let arrived = s.iam.hold("DeleteAccessKey");
    let config = s.config_path();
    let child = s
        .command(&["due", GUEST_WASM, "--ksm-config", &config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    arrived.recv_timeout(Duration::from_secs(120)).unwrap();
    assert_eq!(
        s.ksm.field("user1", "Rotation Pending").as_deref(),
        Some("finalize")
    );
    s.ksm.touch("user1");
    s.iam.release();
    let out: Outcome = child.wait_with_output().unwrap().into();
    assert_eq!(out.code, 0, "{}", out.all());
    let record = s.ksm.record("user1").unwrap();
    assert_eq!(record["notes"], "edited by someone else");
    assert_eq!(s.ksm.field("user1", "Rotation Pending"), None);
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    s.assert_at_rest();
}

/// `gateway` against Keeper: its first pass rotates the due record, and
/// SIGTERM ends it with exit 0.
#[test]
fn the_gateway_rotates_keeper_records() {
    let s = setup();
    s.join_fleet(&[]);
    let config = s.config_path();
    let mut gw = Watched::new(
        s.command(&[
            "gateway",
            GUEST_WASM,
            "--ksm-config",
            &config,
            "--interval",
            "3600",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    gw.wait_line("1 rotated, 0 failed");
    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(gw.child.id() as i32, libc::SIGTERM) },
        0
    );
    let (code, stderr) = gw.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_ne!(s.vault_key(), s.old.id);
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    s.assert_at_rest();
    let mut secrets = vec![s.rotator.secret.clone(), s.old.secret.clone()];
    secrets.extend(s.iam.all_secrets());
    secrets.extend(s.ksm.config_secrets());
    assert_no_leak(&stderr, &secrets);
}

/// Storing fails: the new key is deleted again; Keeper and IAM are as before.
#[test]
fn a_failed_store_rolls_the_new_key_back() {
    let s = setup();
    let before = s.ksm.record("user1");
    // The lease is written; the stage fails (the host makes no second try).
    s.ksm.fail("update_secret", Fault::Pass);
    s.ksm.fail("update_secret", Fault::Before);
    let out = s.run(&[]);
    out.expect(1, &["could not be stored", "deleted again"]);
    assert_eq!(s.iam_keys(), vec![s.old.id.clone()]);
    assert_eq!(s.vault_key(), s.old.id);
    // Only the lease came and went (its revisions moved).
    assert_eq!(s.ksm.record("user1"), before);
    s.assert_at_rest();
    s.assert_no_leak(&out);
}

/// Someone edits the record between the read and the store: it is not
/// overwritten; the new key is deleted again (what keeps two gateways on one
/// Keeper vault from losing a key). Keeper documents no code for a stale
/// revision, so both ways are tried: words the host does not know (it sees
/// the record read again at a later revision), and words naming the revision.
#[test]
fn a_revision_conflict_is_not_overwritten() {
    for named in [false, true] {
        let s = setup();
        if named {
            s.ksm
                .stale_answer("out_of_sync", "the record's revision does not match");
        }
        let arrived = s.iam.hold("CreateAccessKey");
        let child = s.spawn_run();
        arrived.recv_timeout(Duration::from_secs(120)).unwrap();
        s.ksm.touch("user1");
        s.iam.release();
        let out: Outcome = child.wait_with_output().unwrap().into();
        out.expect(1, &["changed in Keeper since it was read", "deleted again"]);
        let calls = s.ksm.calls();
        let last_rollback = calls.iter().rposition(|c| c == "rollback_secret_update");
        let first_update = calls.iter().position(|c| c == "update_secret");
        if named {
            // The only rollback is the one taking the lease sends for a dead
            // writer's transaction: the refused stage opened none, and one
            // open may be another run's (design §11).
            assert!(last_rollback < first_update, "{calls:?}");
        }
        assert_eq!(s.iam_keys(), vec![s.old.id.clone()], "named: {named}");
        let record = s.ksm.record("user1").unwrap();
        assert_eq!(record["notes"], "edited by someone else");
        assert_eq!(s.vault_key(), s.old.id);
        s.assert_at_rest();
    }
}

/// Completing the transaction fails cleanly: it is rolled back, and so is the key.
#[test]
fn a_failed_completion_is_rolled_back() {
    let s = setup();
    s.ksm.fail("finalize_secret_update", Fault::Before);
    let out = s.run(&[]);
    out.expect(
        1,
        &[
            "completing the rotation transaction failed",
            "deleted again",
        ],
    );
    assert_eq!(s.iam_keys(), vec![s.old.id.clone()]);
    assert_eq!(s.vault_key(), s.old.id);
    assert!(
        s.ksm
            .calls()
            .contains(&"rollback_secret_update".to_string())
    );
    s.assert_at_rest();
}

/// Completing took effect but the answer was lost, and there is nothing to
/// roll back: the key may be stored, so nothing is deleted (exit 3), and the
/// next run converges.
#[test]
fn an_ambiguous_completion_deletes_nothing_and_the_next_run_converges() {
    let s = setup();
    s.ksm.fail("finalize_secret_update", Fault::After);
    let out = s.run(&[]);
    out.expect(3, &["may or may not be stored", "Nothing was deleted"]);
    let new = s.vault_key();
    assert_ne!(new, s.old.id);
    let mut keys = s.iam_keys();
    keys.sort();
    let mut want = vec![new.clone(), s.old.id.clone()];
    want.sort();
    assert_eq!(keys, want);
    s.assert_at_rest();
    let again = s.run(&[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    s.assert_at_rest();
}

/// Row 3 of design §11: the completion takes effect but its answer is lost,
/// and the rollback that follows answers success (Keeper does not say what a
/// rollback after a commit does). Readers see the new key, so it is stored:
/// `finalize` retires the old one, exit 0.
#[test]
fn a_lost_completion_answer_whose_rollback_succeeds_counts_as_stored() {
    let s = setup();
    s.ksm.fail("finalize_secret_update", Fault::After);
    s.ksm.rollback_always_succeeds();
    let out = s.run(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    s.assert_no_leak(&out);
    assert_ne!(s.vault_key(), s.old.id);
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    s.assert_at_rest();
}

/// The stage takes effect but its answer is lost: the host rolls it back,
/// reads the record, sees the old data, and deletes the new key (exit 1);
/// nothing stays staged.
#[test]
fn a_lost_staging_answer_is_rolled_back_with_the_key() {
    let s = setup();
    s.ksm.fail("update_secret", Fault::Pass);
    s.ksm.fail("update_secret", Fault::After);
    let out = s.run(&[]);
    out.expect(1, &["storing the new credential failed", "deleted again"]);
    s.assert_no_leak(&out);
    assert_eq!(s.iam_keys(), vec![s.old.id.clone()]);
    assert_eq!(s.vault_key(), s.old.id);
    let staged: Vec<_> = s.ksm.writes("user1");
    assert!(
        staged.len() >= 2,
        "the stage never reached the fake: {staged:?}"
    );
    s.assert_at_rest();
}

/// A config whose private key is not the one the application bound: Keeper
/// refuses every request as badly signed, and nothing is sent to IAM.
#[test]
fn a_config_with_another_private_key_is_refused_as_badly_signed() {
    let s = setup();
    write_config(&s.dir, &s.ksm.config_with_foreign_key());
    let out = s.run(&[]);
    out.expect(2, &["Signature is invalid", "one-time token"]);
    assert_eq!(s.ksm.calls(), ["get_secret"]);
    assert_eq!(s.iam.calls(), Vec::<String>::new());
    assert_eq!(s.vault_key(), s.old.id);
}

/// A record shared read-only: refused before any key is created, naming
/// the record and the fix; Keeper and IAM as they were.
#[test]
fn a_read_only_record_is_refused_before_anything_is_created() {
    let s = setup();
    s.ksm.read_only("user1");
    let before = s.ksm.revision("user1");
    let out = s.run(&[]);
    out.expect(2, &["'user1'", "read-only", "edit"]);
    assert_eq!(s.iam.count("CreateAccessKey"), 0);
    assert_eq!(s.iam_keys(), vec![s.old.id.clone()]);
    assert_eq!(s.ksm.revision("user1"), before);
    assert!(
        !s.ksm.calls().iter().any(|c| c == "update_secret"),
        "{:?}",
        s.ksm.calls()
    );
}

/// A record shared through two folders comes back twice, and a config
/// shared directly comes with its key under the application key: the
/// record is rotated once, not refused as holding another record's key.
#[test]
fn a_record_shared_twice_is_rotated_once() {
    let s = setup();
    s.ksm.share_in_folder("user1", "shared-folder-2");
    let config = data(config_from("cfg1", &fake_config(&s.iam.url, &s.rotator)));
    s.ksm.add_record_direct("cfg1", config);
    let out = s.run(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    s.assert_no_leak(&out);
    assert_eq!(s.iam.count("CreateAccessKey"), 1);
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    s.assert_at_rest();
}

/// An answer the SDK cannot read makes it panic (here `expiresOn: null`):
/// the host turns that into an error, and nothing is sent to IAM.
#[test]
fn a_panic_in_the_sdk_becomes_an_error() {
    let s = setup();
    s.ksm.null_expiry();
    let out = s.run(&[]);
    out.expect(1, &["reading records failed", "could not read"]);
    assert_eq!(s.iam.calls(), Vec::<String>::new());
}

/// `finalize` fails after the store: the transaction is already complete, so
/// Keeper shows the new, working key; the old one stays until the next run.
#[test]
fn a_failed_finalize_leaves_the_new_key_in_keeper_and_the_next_run_finishes() {
    let s = setup();
    s.iam
        .fail("DeleteAccessKey", FaultKind::AccessDenied, usize::MAX);
    let out = s.run(&[]);
    out.expect(3, &["stored in the vault"]);
    let new = s.vault_key();
    assert_ne!(new, s.old.id);
    assert_eq!(s.iam_keys().len(), 2);
    s.assert_at_rest();
    s.iam.clear_faults();
    let again = s.run(&[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    assert!(!s.iam_keys().contains(&s.old.id));
    s.assert_at_rest();
}

/// kill -9 while the transaction is open (staged, not completed): whatever
/// readers see meanwhile, the old key (committed) or the new one (staged), it
/// exists in IAM. The next run rolls the open transaction back before it
/// plans, deletes the orphan and rotates.
fn killed_with_the_transaction_open(readers_see_staged: bool) {
    let s = setup();
    if readers_see_staged {
        s.ksm.show_staged();
    }
    let arrived: Receiver<()> = s.ksm.hold("finalize_secret_update");
    // When let go after the kill, the held completion never takes effect.
    s.ksm.fail("finalize_secret_update", Fault::Before);
    let cmd = s.run_command(&[]);
    let out = kill_when(cmd, arrived, Duration::from_millis(50), || s.ksm.release());
    assert_eq!(out.code, -1, "{}", out.all());
    assert!(s.ksm.open_transaction("user1"));
    assert_eq!(s.vault_key() == s.old.id, !readers_see_staged);
    assert_key_exists(&s.iam, "alice", &s.vault_key()); // I1 after the kill
    assert_eq!(s.iam_keys().len(), 2);

    let again = s.run(&[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        s.ksm
            .calls()
            .contains(&"rollback_secret_update".to_string())
    );
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    assert_ne!(s.vault_key(), s.old.id);
    s.assert_at_rest();
    s.assert_no_leak(&again);
}

#[test]
fn killed_with_the_transaction_open_readers_seeing_the_committed_key() {
    killed_with_the_transaction_open(false);
}

#[test]
fn killed_with_the_transaction_open_readers_seeing_the_staged_key() {
    killed_with_the_transaction_open(true);
}

/// `due` against Keeper: the fleet's records come from one `get_secrets`.
#[test]
fn a_due_pass_rotates_keeper_records() {
    let s = setup();
    s.join_fleet(&[]);
    let config = s.config_path();
    let out = s.output(&["due", GUEST_WASM, "--ksm-config", &config]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("1 rotated, 0 failed"), "{}", out.stdout);
    let key = s.ksm.field("user1", "aws_access_key_id").unwrap();
    assert_eq!(s.iam_keys(), vec![key]);
    // The marker went in with the new key, and out once the rotation finished.
    let pending: Vec<Option<String>> = s
        .ksm
        .writes("user1")
        .iter()
        .map(|d| test_support::vault::first_value(d, "Rotation Pending"))
        .collect();
    assert!(
        pending.iter().any(|p| p.as_deref() == Some("finalize")),
        "the marker was never written: {pending:?}"
    );
    assert_eq!(pending.last(), Some(&None), "{pending:?}");
    assert!(s.ksm.field("user1", "Rotation Pending").is_none());
    assert!(!s.ksm.open_transaction("user1"));
}

/// `config` creates the config record in a shared folder of the application.
#[test]
fn config_creates_the_record_in_a_shared_folder() {
    let s = setup();
    s.ksm.add_folder("folder1");
    let config = s.config_path();
    let out = s.output(&[
        "config",
        GUEST_WASM,
        "--ksm-config",
        &config,
        "--ksm-folder",
        "folder1",
        "-t",
        "AWS rotation",
        "--no-input",
        "--field",
        "Client ID=AKIAEXAMPLE000000001",
        "--field",
        "Client Secret=created-secret-value",
        "--field",
        "AWS Region=eu-west-1",
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    let uid = out
        .stdout
        .split_whitespace()
        .nth(3)
        .expect("created config record UID in ...")
        .to_string();
    assert_eq!(
        s.ksm.field(&uid, "AWS Region").as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(
        s.ksm.field(&uid, "Client Secret").as_deref(),
        Some("created-secret-value")
    );
    assert!(!out.all().contains("created-secret-value"));
    let without = s.output(&[
        "config",
        GUEST_WASM,
        "--ksm-config",
        &config,
        "-t",
        "x",
        "--no-input",
    ]);
    without.expect(2, &["--ksm-folder"]);
}

/// Keeper throttles every call, asking for a minute's pause each time: the
/// SDK makes its first call and its 5 retries (`MAX_THROTTLE_RETRIES`), the run
/// fails cleanly and changes nothing. The host caps the SDK's pauses at
/// `--lock-timeout` in total: the run waits about that second, not the
/// SDK's 5 x 11 s or Keeper's 5 minutes.
#[test]
fn a_throttled_keeper_exhausts_the_sdks_five_retries_and_nothing_changes() {
    let s = setup();
    for _ in 0..6 {
        s.ksm.fail("get_secret", Fault::Throttle);
    }
    let started = std::time::Instant::now();
    let out = s.run(&["--lock-timeout", "1"]);
    let took = started.elapsed();
    out.expect(1, &["Keeper Secrets Manager: reading records failed"]);
    assert_eq!(s.ksm.calls(), ["get_secret"; 6]);
    assert!(
        took >= Duration::from_secs(1),
        "the pauses were skipped: {took:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "the pauses were not capped: {took:?}"
    );
    assert_eq!(s.iam.calls(), Vec::<String>::new());
    assert_eq!(s.vault_key(), s.old.id);
}

/// Throttled five times, then answered: the SDK's last retry succeeds, and
/// the rotation goes through.
#[test]
fn a_keeper_throttling_five_calls_is_retried_through() {
    let s = setup();
    for _ in 0..5 {
        s.ksm.fail("get_secret", Fault::Throttle);
    }
    let out = s.run(&["--lock-timeout", "1"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let reads = s.ksm.calls().iter().filter(|c| *c == "get_secret").count();
    assert!(reads >= 6, "{:?}", s.ksm.calls());
    assert_ne!(s.vault_key(), s.old.id);
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    s.assert_at_rest();
}

/// A config given in `KSM_CONFIG` is taken out of the environment at start:
/// a child process (here the AWS chain's `credential_process`) never sees the
/// Keeper application's keys.
#[test]
fn a_child_process_does_not_inherit_ksm_config() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    let dump = s.dir.path().join("child-env.txt");
    let script = s.dir.path().join("creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"AKIAPROCESS000000000\", \"SecretAccessKey\": \"process-secret\"}}'\n",
            dump.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let aws_config = s.dir.path().join("aws-config");
    std::fs::write(
        &aws_config,
        format!("[default]\ncredential_process = {}\n", script.display()),
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(s.ksm.config().to_string());
    let mut cmd = s.command(&[
        "run",
        GUEST_WASM,
        "-u",
        "user1",
        "-c",
        "cfg1",
        "--gateway-credentials",
        "--allow-host",
        &s.iam.url,
    ]);
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    let out: Outcome = cmd
        .env("KSM_CONFIG", &b64)
        .env("HOME", s.dir.path())
        .env("AWS_CONFIG_FILE", &aws_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", s.dir.path().join("absent"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
        .into();
    // The config record's own key signs; the host's identity was resolved all the same.
    assert_eq!(out.code, 0, "{}", out.all());
    let child_env = std::fs::read_to_string(&dump).expect("the credential process ran");
    assert!(child_env.contains("AWS_REGION=us-east-1"), "{child_env}");
    assert!(
        !child_env.contains("KSM_CONFIG"),
        "the child saw KSM_CONFIG"
    );
    assert!(!child_env.contains(&b64));
    s.assert_at_rest();
}

/// I6 with Keeper, which has no vault lock: `run` reads every shared record,
/// so a second record holding alice's other key is seen, and its key is not
/// deleted to make room.
#[test]
fn run_against_keeper_keeps_a_key_another_record_holds() {
    let s = setup();
    let theirs = s.iam.add_key("alice", "2024-02-01T00:00:00Z");
    s.ksm.add_record(
        "user2",
        data(pam_user(
            "user2",
            "alice",
            Some(("aws_access_key_id", &theirs.id)),
        )),
    );
    let out = s.run(&[]);
    out.expect(
        1,
        &[&theirs.id, "another record of the vault holds or tracks"],
    );
    assert_eq!(s.iam_keys(), [s.old.id.clone(), theirs.id.clone()]);
    assert_eq!(s.vault_key(), s.old.id);
    assert_eq!(s.ksm.field("user2", "aws_access_key_id"), Some(theirs.id));
    s.assert_at_rest();
    s.assert_no_leak(&out);
}

/// Keeper has no vault lock: two writers on one record. The first holds its
/// `CreateAccessKey`; the second sees the first's lease, sends nothing to IAM
/// and exits 1; then the first finishes, I1 holds, and the lease is gone.
#[test]
fn a_second_writer_sees_the_lease_and_changes_nothing() {
    let s = setup();
    let arrived = s.iam.hold("CreateAccessKey");
    let first = s.spawn_run();
    arrived
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the first writer never created a key");
    assert!(s.ksm.field("user1", "Rotation Lease").is_some());
    let sent = s.iam.log().len();
    let second = s.run(&[]);
    second.expect(1, &["is being rotated by", "nothing was changed"]);
    assert_eq!(
        s.iam.log().len(),
        sent,
        "the second writer sent nothing to IAM"
    );
    assert_eq!(s.vault_key(), s.old.id);
    s.iam.release();
    let first: Outcome = first.wait_with_output().unwrap().into();
    assert_eq!(first.code, 0, "{}", first.all());
    s.assert_at_rest();
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    assert_ne!(s.vault_key(), s.old.id);
    assert!(
        s.ksm.field("user1", "Rotation Lease").is_none(),
        "the lease was released"
    );
    s.assert_no_leak(&second);
}

/// A pass skips a record another writer holds the lease of.
#[test]
fn a_pass_skips_a_record_leased_by_another_writer() {
    let s = setup();
    let until = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let lease = format!("elsewhere:1:00 {until}");
    s.join_fleet(&[("Rotation Lease", &lease)]);
    let config = s.config_path();
    let out = s.output(&["due", GUEST_WASM, "--ksm-config", &config]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("skipped user1: record 'user1' is being rotated by elsewhere:1:00"),
        "{}",
        out.stdout
    );
    assert!(s.iam.log().is_empty(), "nothing was sent to IAM");
    assert_eq!(s.vault_key(), s.old.id);
    // A dry run only reads: another writer's lease does not stop the plan.
    let out = s.output(&["due", GUEST_WASM, "--ksm-config", &config, "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("planned user1:"), "{}", out.stdout);
}

/// A writer killed while it holds the lease: its process is gone from this
/// host, so the next run takes the lease over at once and converges.
#[test]
fn a_killed_writers_lease_is_taken_over_on_the_same_host() {
    let s = setup();
    let arrived = s.iam.hold("CreateAccessKey");
    let cmd = s.run_command(&[]);
    let killed = kill_when(cmd, arrived, std::time::Duration::ZERO, || s.iam.release());
    assert_eq!(killed.code, -1, "{}", killed.all());
    assert!(
        s.ksm.field("user1", "Rotation Lease").is_some(),
        "the lease outlived its writer"
    );
    s.assert_at_rest();
    let out = s.run(&[]);
    assert_eq!(out.code, 0, "{}", out.all());
    s.assert_at_rest();
    assert_eq!(s.iam_keys(), vec![s.vault_key()]);
    assert!(s.ksm.field("user1", "Rotation Lease").is_none());
}

/// A pass that only checks a kept old key (`retire-when-unused`) still in use
/// writes nothing to Keeper: no lease, no update. A gateway watching kept keys
/// does not update every record each pass.
#[test]
fn a_pass_that_only_watches_a_kept_key_writes_nothing_to_keeper() {
    let s = setup();
    let current = s.iam.add_key("alice", "2024-02-01T00:00:00Z");
    s.iam
        .record_use(&s.old.id, std::time::SystemTime::now(), "s3");
    let config = data(with_custom(
        config_from("cfg1", &fake_config(&s.iam.url, &s.rotator)),
        &[("Old Key Action", "retire-when-unused")],
    ));
    s.ksm.add_record("cfg1", config);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ledger = format!("{} {now} kept", s.old.id);
    let user = data(fleet_member(
        "user1",
        "alice",
        Some(("aws_access_key_id", &current.id)),
        "cfg1",
        &[("Last Rotated", &now), ("Deactivated Keys", &ledger)],
    ));
    s.ksm.add_record("user1", user);
    let config = s.config_path();
    let out = s.output(&["due", GUEST_WASM, "--ksm-config", &config]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("is still in use"), "{}", out.stdout);
    assert_eq!(s.ksm.calls(), ["get_secret"], "one read, no write");
    assert!(s.iam.calls().contains(&"GetAccessKeyLastUsed".to_string()));
    assert_eq!(s.iam.keys("alice").len(), 2);
}
