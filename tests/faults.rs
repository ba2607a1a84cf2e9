//! The fault matrix: every IAM/STS call of the flow crossed with every way the
//! fake can fail it. Each case ends in a converged rotation or a clean failure,
//! asserts I1-I5, and a second, fault-free run must then converge.

mod common;

use std::time::Duration;

use common::*;
use test_support::fake_iam::FaultKind;

/// Longer than the `--http-timeout 1` the runs use.
const HELD: Duration = Duration::from_millis(2500);

fn expected_code(action: &str, kind: FaultKind) -> i32 {
    match (action, kind) {
        // A refused verification or deletion comes after the new key is stored.
        ("GetCallerIdentity" | "DeleteAccessKey", FaultKind::AccessDenied) => 3,
        (_, FaultKind::AccessDenied) => 1,
        // Everything else is transient and retried within the run.
        _ => 0,
    }
}

fn matrix(action: &str) {
    for kind in FaultKind::all(HELD) {
        let s = fake_setup();
        // A leftover key makes `rotate` delete before CreateAccessKey: a
        // one-time fault hits that delete; `finalize`'s delete failing is
        // `a_failed_final_delete_keeps_the_old_key_and_exits_3`.
        if action == "DeleteAccessKey" {
            s.iam.add_key("alice", "2023-01-01T00:00:00Z");
        }
        let times = if kind == FaultKind::AccessDenied {
            usize::MAX
        } else {
            1
        };
        s.iam.fail(action, kind, times);
        let before = s.vault.bytes();
        let out = run(&s.vault, "user1", "cfg1", &["--http-timeout", "1"]);
        let case = format!("{action} x {kind:?}");
        let mut expected = expected_code(action, kind);
        if action == "DeleteAccessKey" && kind == FaultKind::AccessDenied {
            expected = 1; // denied while making room: nothing was created
        }
        check_case(&s, &out, &case, expected, &before);
        // I5: after a create that may have run, the keys are listed and the
        // stray one deleted before anything else; throttling (IAM's, or a
        // proxy's 429) is turned away unprocessed and may be repeated as is.
        let calls = s.iam.calls();
        let ambiguous = !matches!(
            kind,
            FaultKind::Throttle | FaultKind::AccessDenied | FaultKind::TooManyRequests
        );
        if action == "CreateAccessKey" && ambiguous {
            let create = calls.iter().position(|c| c == "CreateAccessKey").unwrap();
            assert_eq!(
                calls.get(create + 1).map(String::as_str),
                Some("ListAccessKeys"),
                "{case}: {calls:?}"
            );
            let carried_out = matches!(
                kind,
                FaultKind::ResetAfterProcessing | FaultKind::Timeout(_) | FaultKind::MalformedXml
            );
            if carried_out {
                assert_eq!(
                    calls.get(create + 2).map(String::as_str),
                    Some("DeleteAccessKey"),
                    "{case}: the stray key was not deleted: {calls:?}"
                );
            }
        }
        converges_after(&s, &case);
    }
}

/// Every fault on the second `ListAccessKeys`, the one that looks for the key
/// an ambiguous create may have made: a transient one is retried and the
/// rotation converges; a denied list fails the run with nothing stored, and
/// the next run converges.
#[test]
fn a_fault_on_the_list_after_an_ambiguous_create() {
    for kind in FaultKind::all(HELD) {
        let s = fake_setup();
        s.iam
            .fail("CreateAccessKey", FaultKind::ResetAfterProcessing, 1);
        let times = if kind == FaultKind::AccessDenied {
            usize::MAX
        } else {
            1
        };
        s.iam.fail_after("ListAccessKeys", 1, kind, times);
        let before = s.vault.bytes();
        let out = run(&s.vault, "user1", "cfg1", &["--http-timeout", "1"]);
        let case = format!("second ListAccessKeys x {kind:?}");
        let calls = s.iam.calls();
        let create = calls.iter().position(|c| c == "CreateAccessKey").unwrap();
        assert_eq!(
            calls[..create]
                .iter()
                .filter(|c| *c == "ListAccessKeys")
                .count(),
            1,
            "{case}: the fault must hit the list after the create: {calls:?}"
        );
        let expected = if kind == FaultKind::AccessDenied {
            1
        } else {
            0
        };
        check_case(&s, &out, &case, expected, &before);
        converges_after(&s, &case);
    }
}

/// I1-I4 after one faulted run that exited `expected`: nothing leaked, the
/// vault's key exists, and a failed run changed nothing.
fn check_case(s: &FakeSetup, out: &Outcome, case: &str, expected: i32, before: &[u8]) {
    s.assert_no_leak(out); // I3
    assert_vault_key_exists(&s.iam, &s.vault, "alice"); // I1
    assert_vault_at_rest(&s.vault); // I4
    assert_eq!(out.code, expected, "{case}: {}", out.all());
    match out.code {
        0 => assert_converged(&s.iam, &s.vault),
        1 => {
            assert_eq!(
                before,
                s.vault.bytes(),
                "{case}: a failed run changed the vault"
            );
            assert!(
                s.iam.keys("alice").iter().any(|k| k.id == s.old.id),
                "{case}: I2"
            );
        }
        3 => {
            assert_ne!(
                before,
                s.vault.bytes(),
                "{case}: exit 3 means the new key is stored"
            );
            assert!(out.stderr.contains("run again"), "{case}: {}", out.stderr);
        }
        _ => unreachable!(),
    }
}

/// A second, fault-free run converges.
fn converges_after(s: &FakeSetup, case: &str) {
    s.iam.clear_faults();
    let again = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{case}, second run: {}", again.all());
    assert_converged(&s.iam, &s.vault);
    s.assert_no_leak(&again);
}

#[test]
fn get_user() {
    matrix("GetUser");
}

#[test]
fn list_access_keys() {
    matrix("ListAccessKeys");
}

#[test]
fn create_access_key() {
    matrix("CreateAccessKey");
}

#[test]
fn get_caller_identity() {
    matrix("GetCallerIdentity");
}

#[test]
fn delete_access_key() {
    matrix("DeleteAccessKey");
}

/// I5 in detail: a create that ran but whose answer was lost leaves a key with
/// an unknown secret; it is found, deleted, and one more attempt is made.
#[test]
fn ambiguous_create_is_cleaned_up_before_one_more_attempt() {
    let s = fake_setup();
    s.iam
        .fail("CreateAccessKey", FaultKind::ResetAfterProcessing, 1);
    let out = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    let calls = s.iam.calls();
    let first = calls.iter().position(|c| c == "CreateAccessKey").unwrap();
    let second = calls.iter().rposition(|c| c == "CreateAccessKey").unwrap();
    assert!(second > first);
    let between = &calls[first + 1..second];
    assert!(between.contains(&"ListAccessKeys".to_string()), "{calls:?}");
    assert!(
        between.contains(&"DeleteAccessKey".to_string()),
        "{calls:?}"
    );
    assert!(
        out.stderr.contains("its secret never arrived"),
        "{}",
        out.stderr
    );
}

/// Throttling that does not stop ends in a clean failure within the deadline.
#[test]
fn persistent_throttling_fails_cleanly() {
    let s = fake_setup();
    s.iam
        .fail("CreateAccessKey", FaultKind::Throttle, usize::MAX);
    let before = s.vault.bytes();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(1, &["run again later"]);
    assert_eq!(before, s.vault.bytes());
    assert_eq!(s.iam.keys("alice").len(), 1);
    let creates = s.iam.count("CreateAccessKey");
    assert!(
        creates > 2,
        "throttling is safe to retry; got {creates} attempts"
    );
}

/// Nothing listens at the endpoint: every request fails before it is sent
/// (connection refused), is retried until the deadline, and the run fails cleanly.
#[test]
fn an_unreachable_endpoint_fails_cleanly() {
    let s = fake_setup();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let vault = vault_with(
        &fake_config(&url, &s.rotator),
        "alice",
        Some(("aws_access_key_id", &s.old.id)),
    );
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(
        1,
        &[
            "GetUser kept failing",
            "could not connect",
            "run again later",
        ],
    );
    assert!(out.stderr.matches("retry").count() >= 2, "{}", out.stderr);
    assert_eq!(before, vault.bytes());
}

/// `finalize`'s delete of the old key fails after the new key is stored: exit
/// 3, the vault holds the new key, IAM still has the old one; the next run
/// removes it. (In the matrix the fault is used up by `rotate`'s delete.)
#[test]
fn a_failed_final_delete_keeps_the_old_key_and_exits_3() {
    let s = fake_setup();
    s.iam
        .fail("DeleteAccessKey", FaultKind::AccessDenied, usize::MAX);
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(3, &["could not be deleted", "run again"]);
    let keys = s.iam.keys("alice");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|k| k.id == s.old.id), "the old key is gone");
    let stored = s.vault.field("user1", "aws_access_key_id").unwrap();
    assert_ne!(stored, s.old.id);
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    assert_vault_at_rest(&s.vault);
    s.assert_no_leak(&out);

    s.iam.clear_faults();
    let again = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_converged(&s.iam, &s.vault);
    assert!(!s.iam.keys("alice").iter().any(|k| k.id == s.old.id));
}

/// `finalize` cut short by `--timeout`: IAM throttles every delete of the old
/// key, and the plugin's retries stop at the call's deadline. Exit 3, the vault
/// holds the new key and IAM still has both; the next run finishes.
#[test]
fn a_finalize_cut_short_by_the_timeout_keeps_both_keys_and_exits_3() {
    let s = fake_setup();
    s.iam
        .fail("DeleteAccessKey", FaultKind::Throttle, usize::MAX);
    let out = run(&s.vault, "user1", "cfg1", &["--timeout", "3"]);
    out.expect(
        3,
        &[
            "is stored in the vault",
            "could not be deleted",
            "--timeout",
        ],
    );
    let keys = s.iam.keys("alice");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|k| k.id == s.old.id), "the old key is gone");
    assert_ne!(
        s.vault.field("user1", "aws_access_key_id").unwrap(),
        s.old.id
    );
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    assert_vault_at_rest(&s.vault);
    s.assert_no_leak(&out);

    s.iam.clear_faults();
    let again = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_converged(&s.iam, &s.vault);
}

/// IAM's read-after-write lag: the listing after an ambiguous create does not
/// show the key it made yet. The plugin cannot see the stray, the second
/// create hits the two-key limit, and the run fails with nothing stored; the
/// stray is an unrecorded key, which the next run deletes as a leftover.
#[test]
fn a_stray_key_hidden_by_listing_lag_is_removed_by_the_next_run() {
    let s = fake_setup();
    s.iam.list_lag(1);
    s.iam
        .fail("CreateAccessKey", FaultKind::ResetAfterProcessing, 1);
    let before = s.vault.bytes();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(1, &["run again"]);
    assert_eq!(before, s.vault.bytes(), "a failed run changed the vault");
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    assert_eq!(s.iam.keys("alice").len(), 2, "the old key and the stray");
    s.assert_no_leak(&out);

    s.iam.list_lag(0);
    let again = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_converged(&s.iam, &s.vault);
}

/// `fake_setup` in the deactivate mode (`Old Key Action` = `deactivate`).
fn deactivating_setup() -> FakeSetup {
    let s = fake_setup();
    s.vault.edit(|doc| {
        let cfg = doc["records"][0].take();
        doc["records"][0] =
            test_support::vault::with_custom(cfg, &[("Old Key Action", "deactivate")]);
    });
    s
}

/// The deactivate mode's `UpdateAccessKey` crossed with every fault: a
/// transient one is retried (the call is idempotent) and the old key ends
/// inactive and in the ledger; a denied one exits 3 with the new key stored
/// and the old one still active; a second run finishes in every case.
#[test]
fn update_access_key() {
    for kind in FaultKind::all(HELD) {
        let s = deactivating_setup();
        let times = if kind == FaultKind::AccessDenied {
            usize::MAX
        } else {
            1
        };
        s.iam.fail("UpdateAccessKey", kind, times);
        let out = run(&s.vault, "user1", "cfg1", &["--http-timeout", "1"]);
        let case = format!("UpdateAccessKey x {kind:?}");
        s.assert_no_leak(&out); // I3
        assert_vault_key_exists(&s.iam, &s.vault, "alice"); // I1
        assert_vault_at_rest(&s.vault); // I4
        let new = s.vault.field("user1", "aws_access_key_id").unwrap();
        assert_ne!(new, s.old.id, "{case}: the new key was not stored");
        let old_active = |s: &FakeSetup| {
            s.iam
                .keys("alice")
                .iter()
                .find(|k| k.id == s.old.id)
                .map(|k| k.active)
        };
        let ledger = || {
            s.vault
                .field("user1", "Deactivated Keys")
                .unwrap_or_default()
        };
        if kind == FaultKind::AccessDenied {
            out.expect(3, &["iam:UpdateAccessKey"]);
            assert_eq!(old_active(&s), Some(true), "{case}");
            assert!(!ledger().contains(&s.old.id), "{case}: {}", ledger());
            s.iam.clear_faults();
            let again = run(&s.vault, "user1", "cfg1", &[]);
            assert_eq!(again.code, 0, "{case}, second run: {}", again.all());
            s.assert_no_leak(&again);
        } else {
            assert_eq!(out.code, 0, "{case}: {}", out.all());
        }
        let keys = s.iam.keys("alice");
        assert!(
            keys.iter().filter(|k| k.active).count() == 1 && keys.len() == 2,
            "{case}: {keys:?}"
        );
        let current = s.vault.field("user1", "aws_access_key_id").unwrap();
        assert!(keys.iter().any(|k| k.id == current && k.active), "{case}");
        let inactive = keys.iter().find(|k| !k.active).unwrap();
        assert!(ledger().contains(&inactive.id), "{case}: {}", ledger());
    }
}

/// A purge that fails (its `ListAccessKeys` denied) does not stop the due
/// rotation behind it: the rotation lists again, makes room with the expired
/// inactive key, and the failed purge is reported.
#[test]
fn a_failed_purge_does_not_block_a_due_rotation() {
    let s = deactivating_setup();
    let expired = s.iam.add_key("alice", "2020-01-01T00:00:00Z");
    s.iam.deactivate("alice", &expired.id);
    s.vault.edit(|doc| {
        let user = doc["records"][1].take();
        let line = format!("{} 2020-01-02T00:00:00Z", expired.id);
        doc["records"][1] = test_support::vault::with_custom(user, &[("Deactivated Keys", &line)]);
    });
    s.iam.fail("ListAccessKeys", FaultKind::AccessDenied, 1);
    let out = run(&s.vault, "user1", "cfg1", &[]);
    s.assert_no_leak(&out);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("purge failed") && out.stdout.contains("the next run tries again"),
        "{}",
        out.stdout
    );
    let calls = s.iam.calls();
    assert!(calls.contains(&"CreateAccessKey".to_string()), "{calls:?}");
    let new = s.vault.field("user1", "aws_access_key_id").unwrap();
    assert_ne!(new, s.old.id);
    assert_vault_key_exists(&s.iam, &s.vault, "alice");
    let keys = s.iam.keys("alice");
    assert!(!keys.iter().any(|k| k.id == expired.id), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.id == s.old.id && !k.active),
        "{keys:?}"
    );
    let ledger = s.vault.field("user1", "Deactivated Keys").unwrap();
    assert!(
        ledger.contains(&s.old.id) && !ledger.contains(&expired.id),
        "{ledger}"
    );
}

/// IAM still counts a key for a moment after deleting it: the create that
/// follows a make-room delete fails `LimitExceeded`, is retried, and the
/// rotation converges. Both ways of making room: a leftover key, and the
/// guide setup's vault key.
#[test]
fn a_just_deleted_key_still_counted_by_iam_is_waited_out() {
    let s = fake_setup();
    let leftover = s.iam.add_key("alice", "2023-01-01T00:00:00Z");
    s.iam.limit_lag(2);
    let out = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr.contains("IAM still counts the deleted key"),
        "{}",
        out.stderr
    );
    assert_eq!(s.iam.count("CreateAccessKey"), 3);
    assert_converged(&s.iam, &s.vault);
    assert!(!s.iam.keys("alice").iter().any(|k| k.id == leftover.id));
    s.assert_no_leak(&out);

    let g = guide_setup("aws_access_key_id");
    g.iam.limit_lag(2);
    let out = run(&g.vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(g.iam.count("CreateAccessKey"), 3);
    assert_vault_key_exists(&g.iam, &g.vault, "alice");
    assert!(g.iam.keys("alice").iter().any(|k| k.id == g.client.id));
    assert_no_leak(&out.all(), &g.iam.all_secrets());
}
