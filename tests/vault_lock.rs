//! The vault lock: a run on a locked vault waits, then fails clearly, and runs
//! on one vault at once are serialised so that no update is lost. Against the
//! fake IAM, with the real guest.

mod common;

use common::*;
use test_support::vault::pam_user;

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

/// Two runs on one vault, forced to overlap: the first holds the lock while
/// its `CreateAccessKey` answer is held at the fake; the second says it waits
/// for the lock and sends nothing until the first ends; neither update is lost.
#[test]
fn a_second_run_waits_for_the_lock_and_loses_no_update() {
    let s = fake_setup();
    s.iam.add_user("bob", &[]);
    s.iam.add_user("rotator2", &["bob"]);
    let rotator2 = s.iam.add_key("rotator2", "2024-01-01T00:00:00Z");
    let bob_old = s.iam.add_key("bob", "2024-01-01T00:00:00Z");
    let mut bob_cfg = fake_config(&s.iam.url, &rotator2);
    bob_cfg[0].2 = "bob".into();
    s.vault.edit(|doc| {
        let records = doc["records"].as_array_mut().unwrap();
        records.push(config_from("cfg2", &bob_cfg));
        records.push(pam_user(
            "user2",
            "bob",
            Some(("aws_access_key_id", &bob_old.id)),
        ));
    });

    let path = s.vault.path.to_str().unwrap().to_string();
    let start = |user: &str, config: &str| {
        Watched::new(
            command(&[
                "run", GUEST_WASM, "--vault", &path, "-u", user, "-c", config,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        )
    };
    let arrived = s.iam.hold("CreateAccessKey");
    let first = start("user1", "cfg1");
    arrived
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the first run never created its key");
    let calls = s.iam.calls().len();
    let mut second = start("user2", "cfg2");
    second.wait_line("waiting for the vault lock");
    assert_eq!(
        s.iam.calls().len(),
        calls,
        "the second run reached IAM while the first held the lock"
    );
    s.iam.release();
    for run in [first, second] {
        let (code, stderr) = run.finish();
        assert_eq!(code, Some(0), "{stderr}");
    }
    assert_converged(&s.iam, &s.vault);
    assert_record_converged(&s.iam, &s.vault, "user2", "bob");
}
