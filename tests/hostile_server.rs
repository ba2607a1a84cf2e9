//! A server that lies: answers the plugin must not trust, checked end to end
//! with the real guest against the fake IAM. Each case checks IAM and the vault.

mod common;

use common::*;
use test_support::fake_iam::{FaultKind, Tamper};

/// The vault is as it was, and IAM holds only alice's old key.
fn assert_untouched(s: &FakeSetup, before: &[u8]) {
    assert_eq!(before, s.vault.bytes(), "the vault changed");
    let keys = s.iam.keys("alice");
    assert_eq!(keys.len(), 1, "IAM has {keys:?}");
    assert_eq!(keys[0].id, s.old.id);
}

fn run_setup(s: &FakeSetup, extra: &[&str]) -> Outcome {
    let out = run(&s.vault, "user1", "cfg1", extra);
    assert_no_leak(&out.all(), &s.iam.all_secrets());
    out
}

/// I5 as a sequence: after the ambiguous create, list the keys and delete the
/// stray one before anything else happens.
fn assert_listed_then_deleted_after_create(s: &FakeSetup) {
    let calls = s.iam.calls();
    let create = calls.iter().position(|c| c == "CreateAccessKey").unwrap();
    assert_eq!(
        &calls[create..create + 3],
        ["CreateAccessKey", "ListAccessKeys", "DeleteAccessKey"],
        "{calls:?}"
    );
}

/// A 200 answer larger than `--max-response-kib`: the key was created in IAM,
/// its secret never arrived. It is deleted and the message says so.
#[test]
fn an_oversized_create_answer_is_ambiguous_and_cleaned_up() {
    let s = fake_setup();
    s.iam.tamper("CreateAccessKey", Tamper::Oversize(8 << 10));
    let before = s.vault.bytes();
    let out = run_setup(&s, &["--max-response-kib", "4"]);
    out.expect(
        1,
        &[
            "CreateAccessKey gave no usable answer twice",
            "were deleted again",
        ],
    );
    assert_listed_then_deleted_after_create(&s);
    assert_untouched(&s, &before);
}

/// An answer naming another user's key is never stored.
#[test]
fn a_create_answer_naming_another_users_key_is_not_stored() {
    let s = fake_setup();
    s.iam.add_user("bob", &[]);
    let bobs = s.iam.add_key("bob", "2024-01-01T00:00:00Z");
    s.iam.tamper(
        "CreateAccessKey",
        Tamper::ForeignKey {
            user: "bob".into(),
            id: bobs.id.clone(),
        },
    );
    let before = s.vault.bytes();
    let out = run_setup(&s, &[]);
    out.expect(1, &["were deleted again"]);
    assert_listed_then_deleted_after_create(&s);
    assert_untouched(&s, &before);
    assert_eq!(s.iam.keys("bob"), vec![bobs], "bob's key was touched");
}

/// Key ids that are not IAM's format (and could forge output) are never stored
/// or printed raw.
#[test]
fn odd_key_ids_are_not_stored_or_printed_raw() {
    for odd in [
        "AKIAFAKE0000000001\nINFO forged line",
        "AKIAFAKE\u{9b}31m00000001",
        "AKIAFAKE\u{202e}0000000001",
        "akiafake0000000001",
        "AKIA1",
    ] {
        let s = fake_setup();
        s.iam.tamper("CreateAccessKey", Tamper::KeyId(odd.into()));
        let before = s.vault.bytes();
        let out = run_setup(&s, &[]);
        out.expect(1, &["were deleted again"]);
        let printed = out.all();
        for raw in ['\n', '\u{9b}', '\u{202e}']
            .iter()
            .filter(|c| odd.contains(**c))
        {
            let forged = odd.split(*raw).nth(1).unwrap();
            assert!(
                !printed.contains(&format!("{raw}{forged}")),
                "{odd:?} printed raw:\n{printed}"
            );
        }
        assert_untouched(&s, &before);
    }
}

#[test]
fn endless_pages_are_an_error() {
    for (repeat_marker, expect) in [
        (false, "went on past 10 pages"),
        (true, "had already returned"),
    ] {
        let s = fake_setup();
        s.iam
            .tamper("ListAccessKeys", Tamper::EndlessPages { repeat_marker });
        let before = s.vault.bytes();
        let out = run_setup(&s, &[]);
        out.expect(1, &[expect]);
        assert!(s.iam.count("ListAccessKeys") <= 10, "{:?}", s.iam.calls());
        assert_eq!(s.iam.count("CreateAccessKey"), 0);
        assert_untouched(&s, &before);
    }
}

/// IAM pages with `Marker`; a user's keys split over pages are all seen.
#[test]
fn paged_key_listings_are_followed() {
    let s = fake_setup();
    let leftover = s.iam.add_key("alice", "2023-01-01T00:00:00Z");
    s.iam.page_size(1);
    let out = run_setup(&s, &[]);
    out.expect(0, &[]);
    assert_converged(&s.iam, &s.vault);
    // The leftover was only on the second page, and was deleted to make room.
    assert!(
        out.stderr
            .contains(&format!("deleted access key {}", leftover.id)),
        "{}",
        out.stderr
    );
    assert!(s.iam.count("ListAccessKeys") >= 2, "{:?}", s.iam.calls());
}

/// STS naming another account, or the user in another case, is not the user:
/// the new key stays stored (it exists), the old one is kept, exit 3.
#[test]
fn the_new_key_must_authenticate_as_exactly_the_user() {
    for arn in [
        "arn:aws:iam::999999999999:user/alice".to_string(),
        "arn:aws:iam::123456789012:user/ALICE".to_string(),
        "arn:aws-us-gov:iam::123456789012:user/alice".to_string(),
    ] {
        let s = fake_setup();
        s.iam.tamper("GetCallerIdentity", Tamper::Arn(arn.clone()));
        let out = run_setup(&s, &[]);
        out.expect(
            3,
            &[&format!(
                "authenticates as {arn}, not as arn:aws:iam::123456789012:user/alice"
            )],
        );
        assert_vault_key_exists(&s.iam, &s.vault, "alice");
        let keys = s.iam.keys("alice");
        assert_eq!(keys.len(), 2, "the old key was deleted: {keys:?}");
        assert!(keys.iter().any(|k| k.id == s.old.id));
    }
}

/// Control characters and bidi overrides in AWS's error text are escaped in the
/// text output, the logs and --json.
#[test]
fn control_characters_in_error_messages_are_escaped() {
    // ESC itself cannot appear in XML 1.0; U+009B (the 8-bit CSI) can.
    let forged = "denied\nINFO rotated PAM user record user1\u{9b}2J\u{202e}gnp.exe";
    for json in [false, true] {
        let s = fake_setup();
        s.iam
            .tamper("GetUser", Tamper::DenyWithMessage(forged.into()));
        let before = s.vault.bytes();
        let extra: &[&str] = if json { &["--json"] } else { &[] };
        let out = run_setup(&s, extra);
        out.expect(1, &["denied\\u{a}INFO rotated PAM user record user1"]);
        let printed = out.all();
        for raw in ["\nINFO rotated", "\u{9b}", "\u{202e}"] {
            assert!(!printed.contains(raw), "{raw:?} printed raw:\n{printed}");
        }
        if json {
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            assert!(v["error"].as_str().unwrap().contains("\\u{202e}"), "{v}");
        }
        assert_untouched(&s, &before);
    }
}

/// A failed name lookup sent nothing: it is "could not connect", which is safe
/// to retry, never "the connection broke".
#[test]
fn a_dns_failure_is_reported_as_not_sent() {
    let s = fake_setup();
    let cfg: Vec<_> = fake_config(&s.iam.url, &s.rotator)
        .into_iter()
        .map(|(t, l, v)| {
            if l == "AWS Endpoint URL" {
                (t, l, "https://no-such-host.invalid".to_string())
            } else {
                (t, l, v)
            }
        })
        .collect();
    let vault = vault_with(&cfg, "alice", Some(("aws_access_key_id", &s.old.id)));
    let before = vault.bytes();
    let out = run(&vault, "user1", "cfg1", &[]);
    out.expect(1, &["could not connect"]);
    assert!(!out.stderr.contains("connection broke"), "{}", out.stderr);
    assert_eq!(before, vault.bytes());
}

/// The plugin's own backoff never sleeps past the call's time limit: with a
/// ten-minute maximum backoff and a server that always fails, the plugin gives
/// up by itself, with a message about the service, before the host stops it.
#[test]
fn the_plugins_backoff_ends_within_the_time_limit() {
    let s = fake_setup();
    let cfg: Vec<_> = fake_config(&s.iam.url, &s.rotator)
        .into_iter()
        .map(|(t, l, v)| match l.as_str() {
            "Retry Deadline Seconds" => (t, l, "3600".to_string()),
            "Max Backoff Milliseconds" => (t, l, "600000".to_string()),
            _ => (t, l, v),
        })
        .collect();
    let vault = vault_with(&cfg, "alice", Some(("aws_access_key_id", &s.old.id)));
    s.iam.fail("GetUser", FaultKind::ServerError, 10_000);
    let out = run(&vault, "user1", "cfg1", &["--timeout", "5"]);
    out.expect(1, &["GetUser kept failing", "not retrying: a"]);
    assert!(
        !out.stderr.contains("ran past its time limit"),
        "{}",
        out.stderr
    );
    assert!(s.iam.count("GetUser") >= 2, "{:?}", s.iam.calls());
}

/// A request ends before the plugin's call does: with `--http-timeout` far
/// beyond `--timeout`, a `CreateAccessKey` whose answer never comes still
/// times out inside the call, so the plugin lists, deletes the key it made,
/// tries again, and the rotation completes.
#[test]
fn a_request_never_outlives_the_plugins_call() {
    let s = fake_setup();
    s.iam.fail(
        "CreateAccessKey",
        FaultKind::Timeout(std::time::Duration::from_secs(30)),
        1,
    );
    let out = run_setup(&s, &["--timeout", "6", "--http-timeout", "30"]);
    out.expect(0, &["may or may not have run"]);
    assert_listed_then_deleted_after_create(&s);
    assert_converged(&s.iam, &s.vault);
}
