//! Bad input: each case gets a clear message and exit code 2, sends nothing and
//! changes nothing.

mod common;

use common::*;
use test_support::vault::VaultFile;

/// Runs `args` against the usual setup and checks that nothing moved.
fn refused(s: &FakeSetup, vault: &VaultFile, args: &[&str], expect: &str) {
    let before = vault.bytes();
    let keys = s.iam.keys("alice");
    let out = rotate_host(args);
    assert_eq!(out.code, 2, "{args:?}: {}", out.all());
    assert!(
        out.stderr.contains(expect),
        "{args:?}: expected '{expect}' in:\n{}",
        out.stderr
    );
    assert_eq!(before, vault.bytes(), "{args:?} changed the vault");
    assert_eq!(keys, s.iam.keys("alice"));
    assert!(
        s.iam.calls().is_empty(),
        "{args:?} sent {:?}",
        s.iam.calls()
    );
    s.assert_no_leak(&out);
}

fn args<'a>(guest: &'a str, vault: &'a VaultFile, user: &'a str, config: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        guest,
        "--vault",
        vault.path.to_str().unwrap(),
        "-u",
        user,
        "-c",
        config,
    ]
}

/// Plugin files that are not a pam:rotation component.
#[test]
fn wrong_plugin_files() {
    let s = fake_setup();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "script.wasm",
            b"#!/bin/sh\necho hi\n",
            "is not a WebAssembly component",
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0",
            "core WebAssembly module, not a component",
        ),
        // The smallest valid component: it exports nothing.
        (
            "empty.wasm",
            b"\0asm\x0d\0\x01\0",
            "does not implement pam:rotation/plugin@0.6.0",
        ),
    ];
    for (name, bytes, expect) in cases {
        let file = s.vault.folder().join(name);
        std::fs::write(&file, bytes).unwrap();
        refused(
            &s,
            &s.vault,
            &args(file.to_str().unwrap(), &s.vault, "user1", "cfg1"),
            expect,
        );
    }
    let missing = s.vault.folder().join("missing.wasm");
    refused(
        &s,
        &s.vault,
        &args(missing.to_str().unwrap(), &s.vault, "user1", "cfg1"),
        "could not read plugin",
    );
}

#[test]
fn unknown_uids() {
    let s = fake_setup();
    refused(
        &s,
        &s.vault,
        &args(GUEST_WASM, &s.vault, "nobody", "cfg1"),
        "no record with UID 'nobody' (given to -u)",
    );
    refused(
        &s,
        &s.vault,
        &args(GUEST_WASM, &s.vault, "user1", "nothing"),
        "no record with UID 'nothing' (given to -c)",
    );
    let mut a = args(GUEST_WASM, &s.vault, "user1", "cfg1");
    a.extend(["--configuration-uid", "absent"]);
    refused(
        &s,
        &s.vault,
        &a,
        "no record with UID 'absent' (given to --configuration-uid)",
    );
}

#[test]
fn records_of_the_wrong_type() {
    let s = fake_setup();
    refused(
        &s,
        &s.vault,
        &args(GUEST_WASM, &s.vault, "cfg1", "cfg1"),
        "has type 'login', not 'pamUser'",
    );
    let mut a = args(GUEST_WASM, &s.vault, "user1", "cfg1");
    a.extend(["--configuration-uid", "cfg1"]);
    refused(&s, &s.vault, &a, "not 'pamAwsConfiguration'");
}

#[test]
fn an_empty_required_field() {
    let s = fake_setup();
    let mut cfg = fake_config(&s.iam.url, &s.rotator);
    cfg[1].2 = "   ".into(); // Client ID
    let vault = vault_with(&cfg, "alice", None);
    refused(
        &s,
        &vault,
        &args(GUEST_WASM, &vault, "user1", "cfg1"),
        "missing required config field(s) 'Client ID'",
    );
}

#[test]
fn an_invalid_region() {
    let s = fake_setup();
    let mut cfg = fake_config(&s.iam.url, &s.rotator);
    cfg[3].2 = "us-east".into();
    let vault = vault_with(&cfg, "alice", None);
    refused(
        &s,
        &vault,
        &args(GUEST_WASM, &vault, "user1", "cfg1"),
        "AWS Region 'us-east' is not a region name",
    );
}

#[test]
fn conflicting_user_names() {
    let s = fake_setup();
    let vault = vault_with(&fake_config(&s.iam.url, &s.rotator), "bob", None);
    refused(
        &s,
        &vault,
        &args(GUEST_WASM, &vault, "user1", "cfg1"),
        "refusing to guess which IAM user",
    );
}

#[test]
fn a_vault_path_that_is_a_folder_or_missing() {
    let s = fake_setup();
    let folder = s.vault.folder().to_str().unwrap().to_string();
    let out = rotate_host(&[
        "run", GUEST_WASM, "--vault", &folder, "-u", "user1", "-c", "cfg1",
    ]);
    out.expect(2, &["is a folder"]);
    let missing = format!("{folder}/nope.json");
    let out = rotate_host(&[
        "run", GUEST_WASM, "--vault", &missing, "-u", "user1", "-c", "cfg1",
    ]);
    out.expect(2, &["does not exist"]);
    assert!(!std::path::Path::new(&missing).exists());
    assert!(s.iam.calls().is_empty());
}

#[test]
fn bad_usage() {
    let out = rotate_host(&["run", GUEST_WASM, "--vault", "v.json", "-c", "cfg1"]);
    out.expect(2, &["--user"]);
}

/// Out-of-range numbers exit 2 naming the flag and its range; nothing wraps.
#[test]
fn numeric_flags_are_range_checked() {
    let s = fake_setup();
    let base = args(GUEST_WASM, &s.vault, "user1", "cfg1");
    for (flag, value, range) in [
        ("--timeout", "0", "0.001..=86400"),
        ("--timeout", "184467440737095520", "0.001..=86400"),
        ("--timeout", "NaN", "0.001..=86400"),
        ("--timeout", "soon", "is not a number"),
        ("--memory-mib", "0", "1..=16384"),
        ("--memory-mib", "17592186044416", "1..=16384"),
        ("--http-timeout", "99999", "0.001..=3600"),
        ("--max-response-kib", "18446744073709551615", "1..=1048576"),
        ("--lock-timeout", "1e300", "0.001..=86400"),
    ] {
        let mut a = base.clone();
        a.extend([flag, value]);
        let out = rotate_host(&a);
        out.expect(2, &[flag, range]);
    }
    assert!(s.iam.calls().is_empty(), "sent {:?}", s.iam.calls());
}

#[test]
fn a_malformed_allow_host_is_refused() {
    let s = fake_setup();
    let mut a = args(GUEST_WASM, &s.vault, "user1", "cfg1");
    a.extend(["--allow-host", "https://*.com"]);
    refused(
        &s,
        &s.vault,
        &a,
        "the last two labels of a wildcard host must be literal",
    );
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
