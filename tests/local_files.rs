//! Files a local attacker or an admin can touch: a symlinked vault, its owner
//! and mode, the lock file, FIFOs and devices, the size cap, what a rewrite
//! keeps, and the precompiled cache. Each refusal is exit 2 with nothing sent.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn run_at(vault: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "run",
        GUEST_WASM,
        "--vault",
        vault.to_str().unwrap(),
        "-u",
        "user1",
        "-c",
        "cfg1",
    ];
    args.extend(extra);
    rotate_host(&args)
}

/// A run through `app/vault.json -> ../real/vault.json` rotates the real file,
/// keeps the link, and locks beside the real file.
#[test]
fn a_symlinked_vault_is_resolved_and_stays_a_link() {
    let s = fake_setup();
    let app = s.vault.folder().join("app");
    fs::create_dir(&app).unwrap();
    let link = app.join("vault.json");
    symlink("../vault.json", &link).unwrap();

    // A lock held on the real file holds runs through the link too.
    let lock = File::create(s.vault.folder().join("vault.json.lock")).unwrap();
    lock.lock().unwrap();
    let out = run_at(&link, &["--lock-timeout", "0.3"]);
    out.expect(1, &["is locked by another rotate-host run"]);
    assert!(s.iam.calls().is_empty());
    drop(lock);

    let out = run_at(&link, &[]);
    out.expect(0, &[]);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was replaced"
    );
    assert_converged(&s.iam, &s.vault);
    assert!(
        !app.join("vault.json.lock").exists(),
        "locked beside the link, not the file"
    );
    s.assert_no_leak(&out);
}

/// As root, a vault owned by another user and group with mode 0640 keeps all
/// three; the group-readable mode draws a warning naming the file and the fix.
#[test]
fn owner_group_and_mode_survive_a_rewrite() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(
            "owner_group_and_mode_survive_a_rewrite",
            "giving a file to another user needs root",
        );
        return;
    }
    let s = fake_setup();
    std::os::unix::fs::chown(&s.vault.path, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&s.vault.path, fs::Permissions::from_mode(0o640)).unwrap();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(
        0,
        &[
            "is readable or writable by group or others (mode 0640)",
            "chmod 600",
        ],
    );
    assert_converged(&s.iam, &s.vault);
    let meta = fs::metadata(&s.vault.path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1234, 5678, 0o640)
    );
}

#[test]
fn strict_permissions_refuse_a_readable_vault() {
    let s = fake_setup();
    fs::set_permissions(&s.vault.path, fs::Permissions::from_mode(0o644)).unwrap();
    let before = s.vault.bytes();
    let out = run(&s.vault, "user1", "cfg1", &["--strict-permissions"]);
    out.expect(2, &["mode 0644", "chmod 600"]);
    assert_eq!(before, s.vault.bytes());
    assert!(s.iam.calls().is_empty());
}

/// A FIFO as vault or lock file would block a reader forever; both are refused at once.
#[test]
fn fifos_as_vault_or_lock_are_refused_without_waiting() {
    let s = fake_setup();
    let fifo = s.vault.folder().join("fifo.json");
    mkfifo(&fifo);
    let started = Instant::now();
    run_at(&fifo, &["--lock-timeout", "1"]).expect(2, &["is a FIFO, not a regular file"]);
    fs::remove_file(&fifo).unwrap();
    mkfifo(&s.vault.folder().join("vault.json.lock"));
    run(&s.vault, "user1", "cfg1", &["--lock-timeout", "1"])
        .expect(2, &["lock file", "not a regular file"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a FIFO blocked the run"
    );
    assert!(s.iam.calls().is_empty());
}

/// `rotate-host ARGS`, killed if it is still running after a minute: a run
/// blocked on a FIFO would otherwise hang the suite.
fn run_unblocked(args: &[&str]) -> Outcome {
    let mut child = command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("rotate-host {args:?} blocked on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap().into()
}

/// A FIFO given as the plugin, `--ca-file` or `--ksm-config` is refused at
/// once, naming what it is, with nothing sent.
#[test]
fn fifos_as_plugin_ca_file_or_ksm_config_are_refused_without_blocking() {
    let s = fake_setup();
    let fifo = s.vault.folder().join("fifo");
    mkfifo(&fifo);
    let (fifo, vault) = (fifo.to_str().unwrap(), s.vault.path.to_str().unwrap());
    let base = ["-u", "user1", "-c", "cfg1"];
    let out = run_unblocked(&[&["run", fifo, "--vault", vault][..], &base].concat());
    out.expect(
        2,
        &["could not read plugin", "it is a FIFO, not a regular file"],
    );
    let out = run_unblocked(
        &[
            &["run", GUEST_WASM, "--vault", vault, "--ca-file", fifo][..],
            &base,
        ]
        .concat(),
    );
    out.expect(2, &["--ca-file", "it is a FIFO, not a regular file"]);
    let out = run_unblocked(&[&["run", GUEST_WASM, "--ksm-config", fifo][..], &base].concat());
    out.expect(2, &["it is a FIFO, not a regular file"]);
    assert!(s.iam.calls().is_empty());
}

/// A lock file planted as a link must not make the run create a file elsewhere.
#[test]
fn a_lock_file_that_is_a_link_is_refused() {
    let s = fake_setup();
    let target = s.vault.folder().join("planted");
    symlink(&target, s.vault.folder().join("vault.json.lock")).unwrap();
    let before = s.vault.bytes();
    run(&s.vault, "user1", "cfg1", &[]).expect(2, &["lock file", "is a symbolic link"]);
    assert!(!target.exists(), "the run created the link's target");
    assert_eq!(before, s.vault.bytes());
}

#[test]
fn a_vault_linked_to_a_device_or_over_the_size_cap_is_refused() {
    let s = fake_setup();
    let link = s.vault.folder().join("zero.json");
    symlink("/dev/zero", &link).unwrap();
    run_at(&link, &[]).expect(2, &["is a device, not a regular file"]);
    let out = run(&s.vault, "user1", "cfg1", &["--max-vault-mib", "1"]);
    out.expect(0, &[]); // a small vault is under the cap
    let big = VaultFileExt::padded(&s, 2 << 20);
    let before = fs::read(&big).unwrap();
    run_at(&big, &["--max-vault-mib", "1"])
        .expect(2, &["over the 1048576-byte cap", "--max-vault-mib"]);
    assert_eq!(before, fs::read(&big).unwrap());
}

struct VaultFileExt;
impl VaultFileExt {
    /// A copy of the setup's vault with a top-level member of `bytes` bytes.
    fn padded(s: &FakeSetup, bytes: usize) -> std::path::PathBuf {
        let mut doc = s.vault.json();
        doc["padding"] = serde_json::Value::String("x".repeat(bytes));
        let path = s.vault.folder().join("big.json");
        fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

/// Numbers, key order and unknown content survive a real rotation exactly; a
/// byte-order mark is accepted; the file is written compact.
#[test]
fn a_rotation_rewrites_the_vault_faithfully() {
    let s = fake_setup();
    let text = String::from_utf8(s.vault.bytes()).unwrap();
    let marked = format!(
        "\u{feff}{{\"serial\": 12345678901234567890123, \"zero\": -0, \"ratio\": 1.50,{}",
        text.trim_start().strip_prefix('{').unwrap()
    );
    fs::write(&s.vault.path, &marked).unwrap();
    let out = run(&s.vault, "user1", "cfg1", &[]);
    out.expect(0, &[]);
    assert_converged(&s.iam, &s.vault);
    let after = String::from_utf8(s.vault.bytes()).unwrap();
    assert!(
        after
            .starts_with(r#"{"serial":12345678901234567890123,"zero":-0,"ratio":1.50,"records":["#),
        "{after}"
    );
    assert!(after.contains(r#""notes":"kept as is""#), "{after}");
    // Compact: no larger than the input, though the record gained a field.
    assert!(
        after.len() < marked.len(),
        "{} >= {}",
        after.len(),
        marked.len()
    );
}

#[test]
fn duplicate_keys_are_refused_not_dropped() {
    let s = fake_setup();
    let text = String::from_utf8(s.vault.bytes()).unwrap();
    let doubled = text.replacen(
        "\"notes\": \"kept as is\"",
        "\"notes\": \"a\", \"notes\": \"b\"",
        1,
    );
    assert_ne!(doubled, text);
    fs::write(&s.vault.path, &doubled).unwrap();
    run(&s.vault, "user1", "cfg1", &[]).expect(2, &["\"notes\" appears twice"]);
    assert_eq!(doubled.as_bytes(), s.vault.bytes());
    assert!(s.iam.calls().is_empty());
}

/// Two fields hold the key id: when they agree, both get the new id; when they
/// disagree, the run refuses before anything is sent.
#[test]
fn every_key_id_field_is_updated_or_the_record_is_refused() {
    for agree in [true, false] {
        let s = fake_setup();
        let second = if agree {
            s.old.id.clone()
        } else {
            "AKIAOTHERKEY00000001".to_string()
        };
        s.vault.edit(|doc| {
            let user = doc["records"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|r| r["uid"] == "user1")
                .unwrap();
            user["fields"].as_array_mut().unwrap().push(
                serde_json::json!({"type": "text", "label": "aws_acess_key_id", "value": [second]}),
            );
        });
        let out = run(&s.vault, "user1", "cfg1", &[]);
        if agree {
            out.expect(0, &[]);
            let new = s.iam.keys("alice")[0].id.clone();
            let doc = s.vault.json();
            let text = doc.to_string();
            assert_eq!(text.matches(&new).count(), 2, "{text}");
            assert!(!text.contains(&s.old.id), "{text}");
        } else {
            out.expect(2, &["different access key ids"]);
            assert!(!s.iam.calls().contains(&"CreateAccessKey".to_string()));
        }
    }
}

/// The cache folder's entries, named by the plugin's hash.
fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

fn info_name(cache: &Path) -> Outcome {
    let out = common::command(&[
        "info",
        GUEST_WASM,
        "--json",
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .env_remove("ROTATE_HOST_CACHE_DIR")
    .output()
    .unwrap();
    out.into()
}

/// Another plugin's native code planted under this plugin's name (as if the
/// folder had once been writable by others) is never loaded: its MAC is not
/// this user's. Nor is an entry with a loose mode, or a link.
#[test]
fn planted_or_loose_cache_entries_are_ignored_and_recompiled() {
    let victim = tempfile::tempdir().unwrap();
    let attacker = tempfile::tempdir().unwrap();
    assert_eq!(info_name(victim.path()).code, 0);
    let [entry] = entries(victim.path()).try_into().unwrap();
    let out = common::command(&[
        "info",
        HOSTILE_WASM,
        "--cache-dir",
        attacker.path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success());
    let [planted] = entries(attacker.path()).try_into().unwrap();

    fs::copy(&planted, &entry).unwrap();
    fs::set_permissions(&entry, fs::Permissions::from_mode(0o600)).unwrap();
    let out = info_name(victim.path());
    out.expect(0, &["its MAC does not match"]);
    assert!(out.stdout.contains("AWS Secret Key"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("Hostile"),
        "the planted plugin ran: {}",
        out.stdout
    );

    // Recompiled and rewritten: the next load uses the cache without a warning.
    let out = info_name(victim.path());
    out.expect(0, &["loaded precompiled plugin"]);

    fs::set_permissions(&entry, fs::Permissions::from_mode(0o644)).unwrap();
    info_name(victim.path()).expect(0, &["its mode is 0644, not 0600"]);

    fs::remove_file(&entry).unwrap();
    symlink(&planted, &entry).unwrap();
    let out = info_name(victim.path());
    out.expect(0, &["it is a symbolic link"]);
    assert!(!out.stdout.contains("Hostile"), "{}", out.stdout);
}

/// An entry of this user's own cache, for another plugin, renamed to this
/// plugin's name: the MAC covers the name, so it is refused.
#[test]
fn a_valid_entry_renamed_to_another_plugins_name_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(info_name(cache.path()).code, 0);
    let [entry] = entries(cache.path()).try_into().unwrap();
    fs::remove_file(&entry).unwrap();
    let out = common::command(&[
        "info",
        HOSTILE_WASM,
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success());
    let [hostile] = entries(cache.path()).try_into().unwrap();
    fs::rename(&hostile, &entry).unwrap();
    let out = info_name(cache.path());
    out.expect(0, &["its MAC does not match"]);
    assert!(out.stdout.contains("AWS Secret Key"), "{}", out.stdout);
}

/// A cache folder under a parent anyone can write is not used at all.
#[test]
fn a_cache_under_a_shared_parent_is_not_used() {
    let base = tempfile::tempdir().unwrap();
    let shared = base.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let cache = shared.join("cache");
    let out = info_name(&cache);
    out.expect(0, &["can be changed by other users"]);
    assert!(entries(&cache).is_empty(), "it wrote to the unsafe cache");
}
