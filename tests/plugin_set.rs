//! A plugin set (`--plugins DIR`): the AWS plugin and the hostile plugin side
//! by side in one pass, each record rotated by the plugin its config's `SaaS
//! Type` names, each plugin under its own section of the config file (pin,
//! limits, jobs, allowlist), and a stuck, spinning or hungry plugin holding up
//! only its own records. Against the fake IAM, with the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use test_support::fake_iam::{FakeIam, Key};
use test_support::vault::{VaultFile, config_record, fleet_member};

const HOSTILE: &str = "Hostile";

/// A folder holding the AWS plugin and the hostile plugin.
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(GUEST_WASM, dir.path().join("aws.wasm")).unwrap();
    std::fs::copy(HOSTILE_WASM, dir.path().join("hostile.wasm")).unwrap();
    dir
}

/// A config record for the hostile plugin: `SaaS Type` Hostile, `behaviour`.
fn hostile_config(uid: &str, behaviour: &str, endpoint: &str) -> Value {
    let mut c = config_record(
        uid,
        &[
            ("text", "behaviour", behaviour),
            ("url", "AWS Endpoint URL", endpoint),
        ],
    );
    c["custom"][0]["value"] = json!([HOSTILE]);
    c
}

/// The fake with a rotator managing `users` (each with one key), config
/// `cfg-aws` for the AWS plugin and a fleet record `u-NAME` per user.
struct Aws {
    iam: FakeIam,
    records: Vec<Value>,
    keys: Vec<(String, Key)>,
}

fn aws(users: &[&str]) -> Aws {
    let iam = FakeIam::start();
    iam.add_user("rotator", users);
    let rotator = iam.add_key("rotator", "2024-01-01T00:00:00Z");
    let mut cfg = fake_config(&iam.url, &rotator);
    cfg.retain(|(_, l, _)| l != "IAM Username");
    let mut records = vec![config_from("cfg-aws", &cfg)];
    let mut keys = Vec::new();
    for name in users {
        iam.add_user(name, &[]);
        let key = iam.add_key(name, "2024-01-01T00:00:00Z");
        records.push(fleet_member(
            &format!("u-{name}"),
            name,
            Some(("aws_access_key_id", &key.id)),
            "cfg-aws",
            &[],
        ));
        keys.push((name.to_string(), key));
    }
    Aws { iam, records, keys }
}

impl Aws {
    fn assert_rotated(&self, vault: &VaultFile) {
        for (name, old) in &self.keys {
            let uid = format!("u-{name}");
            assert_record_converged(&self.iam, vault, &uid, name);
            assert_ne!(
                vault.field(&uid, "aws_access_key_id").as_deref(),
                Some(old.id.as_str())
            );
        }
    }

    fn secrets(&self) -> Vec<String> {
        let mut s = self.iam.all_secrets();
        s.extend(self.keys.iter().map(|(_, k)| k.secret.clone()));
        s
    }
}

/// A hostile fleet record `uid` under config `config`.
fn hostile_member(uid: &str, config: &str) -> Value {
    fleet_member(uid, uid, None, config, &[])
}

/// A gateway config file (mode 0600) with `body`, in a folder of its own.
fn config_file(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, path)
}

fn due_with(dir: &Path, vault: &VaultFile, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "due",
        "--plugins",
        dir.to_str().unwrap(),
        "--vault",
        vault.path.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    rotate_host(&args)
}

fn report(out: &Outcome) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()))
}

/// The `error` of `uid` in a pass report's `failed` list.
fn failure(report: &Value, uid: &str) -> String {
    report["failed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["user_uid"] == uid)
        .unwrap_or_else(|| panic!("{uid} did not fail: {report:#}"))["error"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn each_record_is_rotated_by_the_plugin_its_saas_type_names() {
    let dir = plugin_dir();
    let mut a = aws(&["ann"]);
    a.records
        .push(hostile_config("cfg-h", "no-such-behaviour", &a.iam.url));
    a.records.push(hostile_member("h-1", "cfg-h"));
    let mut okta = config_record("cfg-okta", &[]);
    okta["custom"][0]["value"] = json!(["Okta"]);
    a.records.push(okta);
    a.records.push(hostile_member("o-1", "cfg-okta"));
    let vault = VaultFile::new(a.records.clone());

    let out = due_with(dir.path(), &vault, &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert_no_leak(&out.all(), &a.secrets());
    let r = report(&out);
    a.assert_rotated(&vault);
    // Only the hostile plugin says this: the AWS plugin never saw h-1.
    assert!(
        failure(&r, "h-1").contains("unknown behaviour 'no-such-behaviour'"),
        "{r:#}"
    );
    let okta = failure(&r, "o-1");
    for needle in ["'Okta' names no plugin", "'AWS Secret Key'", "'Hostile'"] {
        assert!(okta.contains(needle), "{needle} in {okta}");
    }

    // `run` picks the same way.
    let plugins = format!("--plugins={}", dir.path().display());
    let run = |user: &str, config: &str| run_plugin(&plugins, &vault, user, config, &[]);
    run("h-1", "cfg-h").expect(2, &["unknown behaviour 'no-such-behaviour'"]);
    run("o-1", "cfg-okta").expect(2, &["'Okta' names no plugin"]);
    let before = vault.field("u-ann", "aws_access_key_id").unwrap();
    run("u-ann", "cfg-aws").expect(0, &[]);
    assert_ne!(vault.field("u-ann", "aws_access_key_id").unwrap(), before);
    assert_record_converged(&a.iam, &vault, "u-ann", "ann");
}

/// A loopback server that takes one request and answers it only when told.
/// Returns its URL, a receiver that fires when the request has arrived, and
/// the sender that releases the answer.
fn held_server() -> (String, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (arrived_tx, arrived) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        arrived_tx.send(()).unwrap();
        let _ = release_rx.recv();
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    });
    (url, arrived, release)
}

#[test]
fn a_stuck_or_hungry_plugin_holds_up_only_its_own_records() {
    let dir = plugin_dir();
    let mut a = aws(&["yan", "zoe"]);
    // Two held requests fill a shared queue of `--jobs 2`: if the plugins
    // shared one, the AWS records would wait for the release, which comes
    // only after they are seen rotated (nothing else ends the hold: its
    // plugin's time limit and the HTTP timeout are 600 s). Hostile logins
    // sort first, so a shared queue would give them the first turns.
    let (held_1, arrived_1, release_1) = held_server();
    let (held_2, arrived_2, release_2) = held_server();
    for (uid, behaviour, endpoint) in [
        ("held-1", "fetch", held_1.as_str()),
        ("held-2", "fetch", held_2.as_str()),
        ("hog", "hog", a.iam.url.as_str()),
    ] {
        let config = format!("cfg-{uid}");
        a.records.push(hostile_config(&config, behaviour, endpoint));
        a.records.push(hostile_member(uid, &config));
    }
    let vault = VaultFile::new(a.records.clone());
    let (_cfg_dir, cfg) = config_file(
        "[plugin.Hostile]\njobs = 3\ntimeout = 600\nmemory-mib = 16\n\n\
         [plugin.\"AWS Secret Key\"]\njobs = 1\n",
    );
    let out_dir = tempfile::tempdir().unwrap();
    let stdout = std::fs::File::create(out_dir.path().join("out")).unwrap();
    let child = command(&[
        "due",
        "--plugins",
        dir.path().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--vault",
        vault.path.to_str().unwrap(),
        "--jobs",
        "2",
        "--http-timeout",
        "600",
    ])
    .stdout(stdout)
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut pass = Watched::new(child);
    for arrived in [&arrived_1, &arrived_2] {
        arrived
            .recv_timeout(Duration::from_secs(120))
            .expect("the held plugin's request arrives");
    }
    // Both AWS records finish while the hostile ones are still held.
    pass.wait_line("old key retired user=\"u-yan\"");
    pass.wait_line("old key retired user=\"u-zoe\"");
    a.assert_rotated(&vault);
    release_1.send(()).unwrap();
    release_2.send(()).unwrap();
    let (code, stderr) = pass.finish();
    let stdout = std::fs::read_to_string(out_dir.path().join("out")).unwrap();
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert_no_leak(&format!("{stdout}{stderr}"), &a.secrets());
    for needle in ["2 rotated, 3 failed", "more than 16 MiB of memory"] {
        assert!(stdout.contains(needle), "{needle} in:\n{stdout}");
    }
    a.assert_rotated(&vault);
    assert_eq!(vault.field("held-1", "aws_access_key_id"), None);
}

#[test]
fn a_spinning_plugin_is_stopped_at_its_sections_time_limit_and_the_others_rotate() {
    let dir = plugin_dir();
    let mut a = aws(&["yan"]);
    a.records
        .push(hostile_config("cfg-spin", "spin", &a.iam.url));
    a.records.push(hostile_member("spin", "cfg-spin"));
    let vault = VaultFile::new(a.records.clone());
    let (_d, cfg) = config_file("[plugin.Hostile]\ntimeout = 2\n");
    let out = due_with(dir.path(), &vault, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        failure(&report(&out), "spin").contains("ran past its time limit of 2s"),
        "{}",
        out.all()
    );
    a.assert_rotated(&vault);
}

#[test]
fn a_plugin_folder_with_what_is_not_a_plugin_one_name_twice_or_open_to_others_is_refused_naming_the_files()
 {
    let a = aws(&["ann"]);
    let vault = VaultFile::new(a.records.clone());
    let before = vault.bytes();
    // (case, extra files as (name, bytes; empty: the AWS plugin again), what the error names)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a [u8])], &'a [&'a str]);
    let cases: [Case; 4] = [
        ("empty", &[], &["holds no plugin"]),
        (
            "a note",
            &[("notes.txt", b"hello")],
            &["notes.txt (not a .wasm file)"],
        ),
        (
            "a core module",
            &[("core.wasm", b"\0asm\x01\0\0\0")],
            &["core.wasm is a core WebAssembly module"],
        ),
        (
            "two of one name",
            &[("aws-copy.wasm", b"")],
            &["both named 'AWS Secret Key'", "aws.wasm", "aws-copy.wasm"],
        ),
    ];
    for (case, files, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        if case != "empty" {
            std::fs::copy(GUEST_WASM, dir.path().join("aws.wasm")).unwrap();
        }
        for (name, bytes) in files {
            if bytes.is_empty() {
                std::fs::copy(GUEST_WASM, dir.path().join(name)).unwrap();
            } else {
                std::fs::write(dir.path().join(name), bytes).unwrap();
            }
        }
        // Editors' files are passed over.
        std::fs::write(dir.path().join(".aws.wasm.swp"), b"x").unwrap();
        let out = due_with(dir.path(), &vault, &[]);
        assert_eq!(out.code, 2, "{case}: {}", out.all());
        for n in needles {
            assert!(out.stderr.contains(n), "{case}: '{n}' in {}", out.stderr);
        }
        assert_eq!(vault.bytes(), before, "{case}");
    }
    // What decides what runs is the operator's alone: no links, nothing others may change.
    let links = plugin_dir();
    std::os::unix::fs::symlink(GUEST_WASM, links.path().join("link.wasm")).unwrap();
    due_with(links.path(), &vault, &[]).expect(2, &["link.wasm (a symbolic link)"]);
    let open = plugin_dir();
    let file = open.path().join("hostile.wasm");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    due_with(open.path(), &vault, &[]).expect(2, &["hostile.wasm (group or others may change it"]);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    due_with(open.path(), &vault, &[]).expect(2, &["group or others may change it (mode 0777)"]);
    assert_eq!(vault.bytes(), before);
    assert_eq!(a.iam.calls().len(), 0, "nothing was sent");
}

/// The digest `rotate-host info --json` reports for `wasm`.
fn digest_of(wasm: &str) -> String {
    let out = rotate_host(&["info", wasm, "--json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let info: Value = serde_json::from_str(&out.stdout).unwrap();
    info["sha256"].as_str().unwrap().to_string()
}

#[test]
fn a_pinned_plugin_of_another_build_is_refused_naming_both_digests() {
    let dir = plugin_dir();
    let a = aws(&["ann"]);
    let vault = VaultFile::new(a.records.clone());
    let before = vault.bytes();
    let real = digest_of(GUEST_WASM);
    assert_eq!(real.len(), 64);
    let wrong = "0".repeat(64);
    let (_d, cfg) = config_file(&format!(
        "plugins = \"{}\"\nvault = \"{}\"\n[plugin.\"AWS Secret Key\"]\nsha256 = \"{wrong}\"\n",
        dir.path().display(),
        vault.path.display()
    ));
    let cfg = cfg.to_str().unwrap();
    let out = due_with(dir.path(), &vault, &["--config", cfg]);
    out.expect(2, &[&real, &wrong, "aws.wasm", "nothing starts"]);
    assert_eq!(vault.bytes(), before);
    rotate_host(&["check-config", cfg]).expect(2, &[&real, &wrong]);

    let (_d, cfg) = config_file(&format!(
        "[plugin.\"aws secret key\"]\nsha256 = \"{}\"\n[plugin.Hostile]\njobs = 1\n",
        real.to_uppercase()
    ));
    let out = due_with(dir.path(), &vault, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    a.assert_rotated(&vault);

    let (_d, cfg) = config_file("[plugin.Okta]\njobs = 1\n");
    let out = due_with(dir.path(), &vault, &["--config", cfg.to_str().unwrap()]);
    out.expect(2, &["[plugin.\"Okta\"]", "no plugin loaded is named so"]);
}

#[test]
fn a_plugins_section_narrows_what_it_may_reach_and_nothing_is_sent_outside() {
    let dir = plugin_dir();
    let a = aws(&["ann"]);
    let vault = VaultFile::new(a.records.clone());
    let before = vault.bytes();
    let (_d, cfg) =
        config_file("[plugin.\"AWS Secret Key\"]\nallow-host = [\"https://iam.amazonaws.com\"]\n");
    let out = due_with(dir.path(), &vault, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        failure(&report(&out), "u-ann").contains("allow-host list of this plugin's section"),
        "{}",
        out.all()
    );
    assert_eq!(a.iam.calls().len(), 0, "nothing was sent");
    assert_eq!(vault.bytes(), before);
}

#[test]
fn a_bad_plugin_section_exits_2_naming_the_key_and_its_line() {
    for (body, needles) in [
        (
            "jobs = 2\n\n[plugin.Hostile]\njobs = 100\n",
            &["line 4", "[plugin.\"Hostile\"] 'jobs'", "not in 1..=64"][..],
        ),
        (
            "[plugin.Hostile]\nsandbox = \"off\"\n",
            &["line 2", "unknown key", "sha256, allow-host"][..],
        ),
        (
            "[plugin.Hostile]\nsha256 = \"abc\"\n",
            &["line 2", "64 hex digits"][..],
        ),
    ] {
        let (_d, cfg) = config_file(body);
        let out = rotate_host(&["check-config", cfg.to_str().unwrap()]);
        out.expect(2, needles);
    }
}

#[test]
fn another_plugins_claimed_subject_fails_none_of_this_plugins_records() {
    let dir = plugin_dir();
    let mut a = aws(&["ann"]);
    // The AWS plugin's subject of u-ann, as its twin check words it.
    let mut twin = a.records[1].clone();
    twin["uid"] = json!("u-ann-twin");
    let twins = VaultFile::new([a.records.clone(), vec![twin]].concat());
    let out = due_with(dir.path(), &twins, &["--dry-run"]);
    let words = failure(&report(&out), "u-ann");
    let service = words
        .split("(login 'ann', ")
        .nth(1)
        .and_then(|rest| rest.split("): two records").next())
        .unwrap_or_else(|| panic!("no subject in {words}"))
        .to_string();

    let mut claim = hostile_config("cfg-claim", "no-such-behaviour", &a.iam.url);
    claim["custom"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "text", "label": "subject-as", "value": [format!("{service}|ann")]}));
    a.records.push(claim);
    a.records.push(hostile_member("claim", "cfg-claim"));
    let vault = VaultFile::new(a.records.clone());
    let out = due_with(dir.path(), &vault, &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    let r = report(&out);
    a.assert_rotated(&vault);
    assert!(failure(&r, "claim").contains("unknown behaviour"), "{r:#}");
}

#[test]
fn a_plugin_spinning_in_subject_is_given_up_on_after_three_stops() {
    let dir = plugin_dir();
    let mut a = aws(&["yan"]);
    for i in 1..=5 {
        let config = format!("cfg-spin-{i}");
        a.records
            .push(hostile_config(&config, "subject-spin", &a.iam.url));
        a.records
            .push(hostile_member(&format!("spin-{i}"), &config));
    }
    let vault = VaultFile::new(a.records.clone());
    let (_d, cfg) = config_file("[plugin.Hostile]\ntimeout = 1\n");
    let out = due_with(dir.path(), &vault, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    let r = report(&out);
    a.assert_rotated(&vault);
    let errors: Vec<String> = (1..=5).map(|i| failure(&r, &format!("spin-{i}"))).collect();
    let timed_out = errors
        .iter()
        .filter(|e| e.contains("`subject` ran past its time limit of 1s"))
        .count();
    let given_up = errors
        .iter()
        .filter(|e| e.contains("stopped at its time or memory limit 3 times"))
        .count();
    assert_eq!((timed_out, given_up), (3, 2), "{errors:#?}");
}

#[test]
fn info_lists_every_plugin_of_a_folder_with_its_file_and_digest() {
    let dir = plugin_dir();
    let out = rotate_host(&["info", "--plugins", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    let names: Vec<&str> = listed
        .iter()
        .map(|p| p["info"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["AWS Secret Key", HOSTILE]);
    assert_eq!(listed[0]["sha256"], digest_of(GUEST_WASM));
    assert_eq!(listed[1]["sha256"], digest_of(HOSTILE_WASM));
    assert!(listed[0]["file"].as_str().unwrap().ends_with("/aws.wasm"));

    let text = rotate_host(&["info", "--plugins", dir.path().to_str().unwrap()]);
    assert_eq!(text.code, 0, "{}", text.all());
    for needle in ["AWS Secret Key", "Hostile 0", "hostile.wasm", "sha256: "] {
        assert!(text.stdout.contains(needle), "{needle} in {}", text.stdout);
    }
}
