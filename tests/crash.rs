//! Crash safety: `kill -9` while each IAM/STS call is in flight, and while the
//! vault is being written. Afterwards the vault is valid and the key it records
//! exists in IAM (I1, I4), and the next run converges.

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::*;

fn crash_while(action: &str) {
    let s = fake_setup();
    // The fake carries the call out, then holds its answer until released.
    let arrived = s.iam.hold(action);
    let path = s.vault.path.to_str().unwrap().to_string();
    let args = [
        "run", GUEST_WASM, "--vault", &path, "-u", "user1", "-c", "cfg1",
    ];
    let out = kill_when_arrived(&args, arrived, Duration::ZERO, &s.iam);
    assert_eq!(out.code, -1, "{action}: the run was meant to be killed");

    assert_vault_at_rest(&s.vault);
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    s.assert_no_leak(&out);

    let again = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{action}: {}", again.all());
    assert_converged(&s.iam, &s.vault);
    s.assert_no_leak(&again);
}

#[test]
fn killed_during_get_user() {
    crash_while("GetUser");
}

#[test]
fn killed_during_list_access_keys() {
    crash_while("ListAccessKeys");
}

#[test]
fn killed_during_create_access_key() {
    crash_while("CreateAccessKey");
}

#[test]
fn killed_during_get_caller_identity() {
    crash_while("GetCallerIdentity");
}

#[test]
fn killed_during_delete_access_key() {
    crash_while("DeleteAccessKey");
}

/// `rotate-host run` with files limited to half the vault's size, so writing the
/// new vault fails, started with SIGXFSZ ignored or at its default (kill).
fn run_with_small_files(s: &FakeSetup, ignore_sigxfsz: bool) -> Outcome {
    let path = s.vault.path.to_str().unwrap().to_string();
    let mut cmd = command(&[
        "run",
        GUEST_WASM,
        "--vault",
        &path,
        "-u",
        "user1",
        "-c",
        "cfg1",
        "--no-cache",
    ]);
    let limit = (s.vault.bytes().len() / 2) as libc::rlim_t;
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            if ignore_sigxfsz {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            }
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.output().unwrap().into()
}

/// Storing fails (EFBIG) under `ulimit -f`: the host ignores SIGXFSZ, so it is
/// not killed mid-write whatever the disposition it inherits. `rollback` deletes
/// the new key, exit 1; the vault and IAM are as they were, and no temporary
/// file (which would hold the new secret) is left beside the vault.
#[test]
fn a_file_size_limit_fails_the_store_and_rolls_back_whatever_sigxfsz_does() {
    for inherited_ignore in [false, true] {
        let s = fake_setup();
        let before = s.vault.bytes();
        let out = run_with_small_files(&s, inherited_ignore);
        out.expect(1, &["could not be stored", "was deleted again"]);
        assert_eq!(before, s.vault.bytes());
        let keys = s.iam.keys("alice");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id, s.old.id);
        let leftovers: Vec<_> = std::fs::read_dir(s.vault.folder())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        s.assert_no_leak(&out);
    }
}

/// A failed store whose rollback fails too (IAM refuses the delete): exit 1,
/// the vault and the old key as they were, the message names the new key as a
/// leftover, and the next run deletes it and rotates.
#[test]
fn a_failed_store_whose_rollback_fails_leaves_a_leftover_the_next_run_removes() {
    let s = fake_setup();
    let before = s.vault.bytes();
    s.iam.fail(
        "DeleteAccessKey",
        test_support::fake_iam::FaultKind::AccessDenied,
        usize::MAX,
    );
    let out = run_with_small_files(&s, true);
    out.expect(1, &["could not be stored", "failed too", "as a leftover"]);
    assert_eq!(before, s.vault.bytes(), "the vault changed");
    let keys = s.iam.keys("alice");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|k| k.id == s.old.id), "the old key is gone");
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    s.assert_no_leak(&out);

    s.iam.clear_faults();
    let again = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_converged(&s.iam, &s.vault);
}

/// The guide's setup, its run killed once `action` took effect at the fake.
fn guide_setup_killed_at(action: &str) -> (GuideSetup, Outcome) {
    let setup = guide_setup("aws_access_key_id");
    let arrived = setup.iam.hold(action);
    let path = setup.vault.path.to_str().unwrap();
    let args = [
        "run", GUEST_WASM, "--vault", path, "-u", "user1", "-c", "cfg1",
    ];
    let out = kill_when_arrived(&args, arrived, Duration::ZERO, &setup.iam);
    (setup, out)
}

/// The user guide's setup, where one IAM user holds both the signing key and
/// the vault's key: `rotate` must delete the vault's key to make room. Killed
/// while that delete is in flight, the vault names a deleted key (the one
/// documented exception to I1, warned about in the plan), and the next run
/// creates and stores a new key and converges.
#[test]
fn killed_during_rotates_delete_in_the_guide_setup() {
    let (
        GuideSetup {
            iam,
            vault,
            client,
            rotated,
        },
        out,
    ) = guide_setup_killed_at("DeleteAccessKey");
    assert_eq!(out.code, -1, "the run was meant to be killed");
    assert_vault_at_rest(&vault);
    assert_eq!(
        vault.field("user1", "aws_access_key_id"),
        Some(rotated.id.clone())
    );
    assert_eq!(
        iam.keys("alice").iter().map(|k| &k.id).collect::<Vec<_>>(),
        [&client.id],
        "only the signing key is left"
    );

    let again = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    let keys = iam.keys("alice");
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter().any(|k| k.id == client.id),
        "the signing key must survive"
    );
    assert_vault_key_exists(&iam, &vault, "alice");
    assert_no_leak(&again.all(), &iam.all_secrets());
}

/// The guide's setup, killed once `rotate` deleted the vault's key and
/// created the new one (its answer held at the fake): IAM holds the signing
/// key and a key whose secret nobody has, the vault a deleted key. The next
/// run refuses with both keys named (design §12, limit 2) and touches no key;
/// once the operator deletes the stray key, a run converges.
#[test]
fn killed_after_the_create_in_the_guide_setup_the_next_run_names_both_keys() {
    let (
        GuideSetup {
            iam,
            vault,
            client,
            rotated,
        },
        out,
    ) = guide_setup_killed_at("CreateAccessKey");
    assert_eq!(out.code, -1, "the run was meant to be killed");
    assert_eq!(
        vault.field("user1", "aws_access_key_id"),
        Some(rotated.id.clone())
    );
    let keys = iam.keys("alice");
    assert_eq!(keys.len(), 2, "{keys:?}");
    let stray = keys.iter().find(|k| k.id != client.id).unwrap().id.clone();
    assert_ne!(stray, rotated.id);
    let calls = iam.calls().len();

    let again = run(&vault, "user1", "cfg1", &[]);
    // The Client ID is a `secret` field, so its id is masked: it is named by its role.
    again.expect(1, &["the config's Client ID", &stray]);
    assert_no_leak(&again.all(), &iam.all_secrets());
    assert_eq!(
        iam.log()[calls..]
            .iter()
            .filter(|c| c.action != "GetUser" && c.action != "ListAccessKeys")
            .map(|c| c.action.as_str())
            .collect::<Vec<_>>(),
        Vec::<&str>::new(),
        "the refusing run changed a key"
    );
    assert_eq!(iam.keys("alice").len(), 2);

    iam.delete_key("alice", &stray);
    let fixed = run(&vault, "user1", "cfg1", &[]);
    assert_eq!(fixed.code, 0, "{}", fixed.all());
    assert_vault_key_exists(&iam, &vault, "alice");
    assert!(iam.keys("alice").iter().any(|k| k.id == client.id));
}

/// The deactivate mode, killed once `finalize`'s `UpdateAccessKey` took
/// effect (its answer held): the old key is inactive but in no ledger, the
/// vault's new key exists (I1); the next run deletes the unrecorded inactive
/// key to make room, and records the key it deactivates.
#[test]
fn killed_between_update_access_key_and_the_ledger_save() {
    let s = fake_setup();
    s.vault.edit(|doc| {
        let cfg = doc["records"][0].take();
        doc["records"][0] =
            test_support::vault::with_custom(cfg, &[("Old Key Action", "deactivate")]);
    });
    let arrived = s.iam.hold("UpdateAccessKey");
    let path = s.vault.path.to_str().unwrap();
    let args = [
        "run", GUEST_WASM, "--vault", path, "-u", "user1", "-c", "cfg1",
    ];
    let out = kill_when_arrived(&args, arrived, Duration::ZERO, &s.iam);
    assert_eq!(out.code, -1, "the run was meant to be killed");
    let new = s.vault.field("user1", "aws_access_key_id").unwrap();
    assert_ne!(new, s.old.id);
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    let old = s
        .iam
        .keys("alice")
        .into_iter()
        .find(|k| k.id == s.old.id)
        .unwrap();
    assert!(!old.active, "the deactivation did not take effect");
    assert_eq!(s.vault.field("user1", "Deactivated Keys"), None);

    let again = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    s.assert_no_leak(&again);
    let keys = s.iam.keys("alice");
    assert!(!keys.iter().any(|k| k.id == s.old.id), "{keys:?}");
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    let ledger = s.vault.field("user1", "Deactivated Keys").unwrap();
    assert!(ledger.contains(&new), "{ledger}");
    assert!(keys.iter().any(|k| k.id == new && !k.active), "{keys:?}");
}

/// `rotate-host run` under strace, killed with SIGKILL when it enters the
/// `when`-th call of one of `syscalls`: a crash at an exact point of the store.
fn killed_at_syscall(s: &FakeSetup, syscalls: &str, when: u32) -> Outcome {
    let path = s.vault.path.to_str().unwrap();
    let args = [
        "run",
        GUEST_WASM,
        "--vault",
        path,
        "-u",
        "user1",
        "-c",
        "cfg1",
        "--no-cache",
    ];
    under_strace(syscalls, &format!("signal=KILL:when={when}"), &args)
}

/// Killed before the temporary file is synced, and as the rename starts: the
/// vault is byte-identical, and the next run deletes the orphan and converges.
#[test]
fn killed_before_the_rename() {
    for (syscalls, when) in [("fsync", 1), ("rename,renameat,renameat2", 1)] {
        let s = fake_setup();
        let before = s.vault.bytes();
        let out = killed_at_syscall(&s, syscalls, when);
        assert_eq!(
            out.code,
            -1,
            "{syscalls}: the run was meant to be killed: {}",
            out.all()
        );
        assert!(
            s.iam.calls().contains(&"CreateAccessKey".to_string()),
            "{syscalls}"
        );
        assert_eq!(before, s.vault.bytes(), "{syscalls}: the vault changed");
        assert_vault_at_rest(&s.vault);
        assert_vault_key_exists(&s.iam, &s.vault, "alice");
        s.assert_no_leak(&out);
        // The kill left the rewrite's temporary file beside the vault, with
        // the new secret in it; the next run removes it.
        let left = s.vault.temporaries();
        let new_secrets: Vec<String> = s
            .iam
            .all_secrets()
            .into_iter()
            .filter(|secret| !String::from_utf8_lossy(&before).contains(secret.as_str()))
            .collect();
        assert!(
            left.iter().any(|t| {
                let text = std::fs::read_to_string(t).unwrap_or_default();
                new_secrets
                    .iter()
                    .any(|secret| text.contains(secret.as_str()))
            }),
            "{syscalls}: no temporary file holds the new secret: {left:?}"
        );
        let again = run(&s.vault, "user1", "cfg1", &[]);
        assert_eq!(again.code, 0, "{syscalls}: {}", again.all());
        assert_converged(&s.iam, &s.vault);
        assert_eq!(
            s.vault.temporaries(),
            Vec::<std::path::PathBuf>::new(),
            "{syscalls}"
        );
    }
}

/// Killed at the folder's fsync, after the rename: the vault already holds the
/// new key, which exists; the next run retires the old key and converges.
#[test]
fn killed_after_the_rename() {
    let s = fake_setup();
    let out = killed_at_syscall(&s, "fsync", 2);
    assert_eq!(
        out.code,
        -1,
        "the run was meant to be killed: {}",
        out.all()
    );
    assert!(
        !s.iam.calls().contains(&"GetCallerIdentity".to_string()),
        "finalize ran: the kill came too late"
    );
    assert_ne!(
        s.vault.field("user1", "aws_access_key_id"),
        Some(s.old.id.clone())
    );
    assert_vault_at_rest(&s.vault);
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    let again = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_converged(&s.iam, &s.vault);
}
