//! End-to-end rotations: the real guest under wasmtime, driven by the real
//! `rotate-host` binary, against the fake IAM on 127.0.0.1. After every case:
//! IAM's keys, the vault file, and no secret in the output.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use test_support::vault::{VaultFile, pam_user, provider_record};

#[test]
fn plain_rotation() {
    let s = fake_setup();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_converged(&s.iam, &s.vault);
    let new = s.vault.field("user1", "aws_access_key_id").unwrap();
    assert_ne!(new, s.old.id);
    assert!(out.stdout.contains(&new) && out.stdout.contains(&s.old.id), "{}", out.stdout);
    // Unknown content is kept, and the file is private.
    assert_eq!(s.vault.json()["records"][1]["notes"], "kept as is");
    let mode = std::fs::metadata(&s.vault.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The order of the flow: store before delete is visible in the calls.
    let calls = s.iam.calls();
    let create = calls.iter().position(|c| c == "CreateAccessKey").unwrap();
    let verify = calls.iter().position(|c| c == "GetCallerIdentity").unwrap();
    let delete = calls.iter().position(|c| c == "DeleteAccessKey").unwrap();
    assert!(create < verify && verify < delete, "{calls:?}");
    s.assert_no_leak(&out);
}
