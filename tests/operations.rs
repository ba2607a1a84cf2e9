//! What an operator sees: JSON log lines, shell completions and the manual
//! page (issue 17, logs and CLI).

mod common;

use common::*;

/// With `--log-format json`, every line on standard error is one JSON object
/// with its level, at TRACE and for an error alike; with the environment
/// variable too.
#[test]
fn json_logs_make_every_stderr_line_a_json_object_with_its_level() {
    let s = fake_setup();
    let out = run(&s.vault, "user1", "cfg1", &["--log-format", "json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let levels = json_levels(&out.stderr);
    assert!(
        levels.contains(&"TRACE".to_string()) && levels.contains(&"INFO".to_string()),
        "{levels:?}"
    );
    s.assert_no_leak(&out);

    let path = s.vault.path.to_str().unwrap();
    let out: Outcome = command(&[
        "run", GUEST_WASM, "--vault", path, "-u", "nobody", "-c", "cfg1",
    ])
    .env("ROTATE_HOST_LOG_FORMAT", "json")
    .output()
    .unwrap()
    .into();
    assert_eq!(out.code, 2, "{}", out.all());
    assert_eq!(
        json_levels(&out.stderr).last().map(String::as_str),
        Some("ERROR")
    );
    assert!(
        out.stderr.contains("no record with UID 'nobody'"),
        "{}",
        out.stderr
    );
}

/// Each stderr line's level; panics on a line that is not a JSON object.
fn json_levels(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            v["level"]
                .as_str()
                .unwrap_or_else(|| panic!("no level: {l}"))
                .to_string()
        })
        .collect()
}

/// `completions SHELL` and `man` describe the commands and their flags.
#[test]
fn completions_and_the_manual_page_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = rotate_host(&["completions", shell]);
        assert_eq!(out.code, 0, "{}", out.all());
        for word in ["gateway", "due", "gateway-credentials-for", "log-format"] {
            assert!(out.stdout.contains(word), "{shell}: no {word}");
        }
    }
    let out = rotate_host(&["man"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(".TH rotate-host 1"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    assert!(out.stdout.contains("gateway") && out.stdout.contains("completions"));
    let out = rotate_host(&["gateway", "--help"]);
    assert!(
        out.stdout.contains("sleep after a pass ends"),
        "{}",
        out.stdout
    );
}

/// The sample settings shipped in `deploy/` pass `check-config` (with the
/// plugin it names replaced by the one built here), at the mode the README
/// gives them; one that others may change is refused.
#[test]
fn the_shipped_gateway_settings_pass_check_config() {
    use std::os::unix::fs::PermissionsExt;
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/gateway.toml"
    ))
    .unwrap();
    let plugin = "/usr/local/lib/rotate-host/aws_key_rotation.wasm";
    assert!(shipped.contains(plugin), "{shipped}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gateway.toml");
    std::fs::write(&copy, shipped.replace(plugin, GUEST_WASM)).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = rotate_host(&["check-config", copy.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("is valid"), "{}", out.stdout);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o664)).unwrap();
    let out = rotate_host(&["check-config", copy.to_str().unwrap()]);
    out.expect(2, &["can be changed by group or others"]);
}
