//! The commands that rotate nothing: `info` describes the plugin, and `config`
//! creates a config record from `--field` values or by asking on a terminal
//! (the record it makes is then used by a real `run` against the fake IAM).

mod common;

use common::*;

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
    // A Keeper folder for a file vault is a mistake, not something to ignore.
    let bad = rotate_host(&[
        "config",
        GUEST_WASM,
        "--vault",
        &vault_path,
        "-t",
        "x",
        "--no-input",
        "--ksm-folder",
        "folder1",
        "--field",
        "IAM Username=alice",
    ]);
    bad.expect(2, &["--ksm-folder", "this vault is a file"]);
    assert_eq!(before, s.vault.bytes());
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
