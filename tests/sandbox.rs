//! The sandbox, proved with a purpose-built hostile plugin (tests/guests/hostile):
//! wall-clock time whatever the plugin does, total memory, the outbound
//! allowlist and the operator's narrowing of it, plain http, host-owned headers,
//! response size and time limits, no ambient authority, and no secret leaking
//! through URLs, headers, logs, errors or panics, encoded or not.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use test_support::fake_iam::FakeIam;
use test_support::vault::{VaultFile, config_record, pam_user};

const SECRET: &str = "hostileTestSecret/0123456789abcdefABCDEF";

fn hostile_vault(behaviour: &str, extra: &[(&str, &str, &str)]) -> VaultFile {
    let mut fields = vec![
        ("text", "behaviour", behaviour),
        ("secret", "Client Secret", SECRET),
    ];
    fields.extend_from_slice(extra);
    VaultFile::new(vec![
        config_record("cfg1", &fields),
        pam_user("user1", "alice", None),
    ])
}

fn run_hostile(vault: &VaultFile, extra: &[&str]) -> Outcome {
    run_component(HOSTILE_WASM, vault, extra)
}

fn run_component(wasm: &str, vault: &VaultFile, extra: &[&str]) -> Outcome {
    let out = run_plugin(wasm, vault, "user1", "cfg1", extra);
    assert_no_secrets(&out.all(), &[SECRET]);
    out
}

/// A server on 127.0.0.1 that answers every request with `body`, after `delay`.
fn serve(body: Vec<u8>, delay: Duration) -> String {
    serve_status(200, body, delay).0
}

/// Like `serve`, with a status; also counts the requests it received.
fn serve_status(status: u16, body: Vec<u8>, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let body = body.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                thread::sleep(delay);
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    (url, hits)
}

/// Runs the hostile plugin with `--timeout 2` and checks that it was stopped by
/// that limit: the whole run, start-up and compile included, within 5 s, so a
/// host that ignored the limit fails. `scripts/bench` measures the real
/// overshoot (~20 ms).
fn assert_stopped_by_the_timeout(vault: &VaultFile) {
    let before = vault.bytes();
    let started = Instant::now();
    let out = run_hostile(vault, &["--timeout", "2"]);
    let took = started.elapsed();
    out.expect(1, &["ran past its time limit of 2s (--timeout"]);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(before, vault.bytes(), "the vault changed");
}

/// `info` and `config-schema` take no config, so these components loop there
/// whatever the record says: `run` (which calls both) and `info` stop them.
#[test]
fn a_plugin_spinning_in_info_or_config_schema_is_stopped_by_the_timeout() {
    for (wasm, call) in [
        (SPIN_IN_INFO_WASM, "info"),
        (SPIN_IN_CONFIG_SCHEMA_WASM, "config-schema"),
    ] {
        let vault = hostile_vault("unknown", &[]);
        let before = vault.bytes();
        let out = run_component(wasm, &vault, &["--timeout", "2"]);
        out.expect(
            1,
            &[
                &format!("`{call}`"),
                "ran past its time limit of 2s (--timeout",
            ],
        );
        assert_eq!(before, vault.bytes(), "{call}: the vault changed");
        let out = rotate_host(&["info", wasm, "--timeout", "2"]);
        out.expect(
            1,
            &[
                &format!("`{call}`"),
                "ran past its time limit of 2s (--timeout",
            ],
        );
    }
}

/// A core instance whose start function loops forever: instantiation itself
/// is stopped by the time limit.
#[test]
fn a_plugin_spinning_while_it_is_instantiated_is_stopped_by_the_timeout() {
    let vault = hostile_vault("unknown", &[]);
    let before = vault.bytes();
    let out = run_component(SPIN_AT_START_WASM, &vault, &["--timeout", "2"]);
    out.expect(
        1,
        &["`instantiate`", "ran past its time limit of 2s (--timeout"],
    );
    assert_eq!(before, vault.bytes(), "the vault changed");
}

/// `finalize` looping forever after the new key is stored: stopped, exit 3,
/// and the vault holds the new key for the next run to finish with.
#[test]
fn a_plugin_spinning_in_finalize_is_stopped_and_the_run_exits_3() {
    let vault = hostile_vault("finalize-spin", &[]);
    let out = run_hostile(&vault, &["--timeout", "2"]);
    out.expect(
        3,
        &["`finalize`", "ran past its time limit of 2s (--timeout"],
    );
    assert_eq!(
        vault.field("user1", "aws_access_key_id").as_deref(),
        Some("AKIAHOSTILE000000002")
    );
}

/// `rollback` looping forever after a failed store (the vault's rename fails
/// with ENOSPC, injected by strace): stopped, exit 1, the vault as it was.
#[test]
fn a_plugin_spinning_in_rollback_is_stopped_and_the_vault_is_unchanged() {
    let vault = hostile_vault("rollback-spin", &[]);
    let before = vault.bytes();
    let path = vault.path.to_str().unwrap();
    let out = under_strace(
        "rename,renameat,renameat2",
        "error=ENOSPC:when=1",
        &[
            "run",
            HOSTILE_WASM,
            "--vault",
            path,
            "-u",
            "user1",
            "-c",
            "cfg1",
            "--timeout",
            "2",
            "--no-cache",
        ],
    );
    out.expect(
        1,
        &[
            "could not be stored",
            "failed too",
            "ran past its time limit of 2s",
        ],
    );
    assert_no_secrets(&out.all(), &[SECRET]);
    assert_eq!(before, vault.bytes(), "the vault changed");
}

#[test]
fn a_plugin_asleep_forever_is_stopped_by_the_timeout() {
    assert_stopped_by_the_timeout(&hostile_vault("sleep", &[]));
}

#[test]
fn a_plugin_retrying_with_huge_backoff_is_stopped_by_the_timeout() {
    let (url, hits) = serve_status(503, b"busy".to_vec(), Duration::ZERO);
    assert_stopped_by_the_timeout(&hostile_vault(
        "hammer",
        &[("url", "AWS Endpoint URL", &url)],
    ));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the plugin was not stopped mid-pause"
    );
}

/// A request to a server that answers after a minute, with `--http-timeout`
/// at its default of 30 s: it still ends inside the plugin's 2 s call (at three
/// quarters of the time left), and the plugin gets a timeout it can act on.
#[test]
fn a_slow_request_ends_inside_the_calls_time_limit() {
    let url = serve(b"late".to_vec(), Duration::from_secs(60));
    let vault = hostile_vault("fetch", &[("url", "AWS Endpoint URL", &url)]);
    let before = vault.bytes();
    let started = Instant::now();
    let out = run_hostile(&vault, &["--timeout", "2"]);
    out.expect(1, &["send error: SendError::Timeout"]);
    assert!(
        !out.stderr.contains("ran past its time limit"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(before, vault.bytes());
}

/// Eight core instances of 10 MiB each: each memory is under the cap, the total is not.
#[test]
fn memory_is_capped_across_all_memories_and_instances() {
    let vault = hostile_vault("unknown", &[]);
    let out = run_component(MANY_MEMORIES_WASM, &vault, &["--memory-mib", "64"]);
    out.expect(1, &["more than 64 MiB of memory in all (--memory-mib"]);
    // With room for them all, the same component runs.
    let out = run_component(MANY_MEMORIES_WASM, &vault, &["--memory-mib", "128"]);
    out.expect(2, &["unknown behaviour 'unknown'"]);
}

/// Tables count against the memory budget: a table of 5,000,000 elements
/// (80 MiB at 16 bytes each) is refused under 64 MiB and allowed under 128.
#[test]
fn a_huge_table_counts_against_the_memory_cap() {
    let vault = hostile_vault("unknown", &[]);
    let out = run_component(BIG_TABLE_WASM, &vault, &["--memory-mib", "64"]);
    out.expect(1, &["more than 64 MiB of memory in all (--memory-mib"]);
    let out = run_component(BIG_TABLE_WASM, &vault, &["--memory-mib", "128"]);
    out.expect(2, &["unknown behaviour 'unknown'"]);
}

/// More than 64 core instances are refused when the plugin is instantiated.
#[test]
fn more_than_64_core_instances_are_refused() {
    let vault = hostile_vault("unknown", &[]);
    let before = vault.bytes();
    let out = run_component(MANY_INSTANCES_WASM, &vault, &[]);
    out.expect(1, &["at most 64 core instances", "instance count too high"]);
    assert_eq!(before, vault.bytes(), "the vault changed");
}

#[test]
fn an_endless_loop_is_stopped() {
    let vault = hostile_vault("spin", &[]);
    let before = vault.bytes();
    let started = Instant::now();
    let out = run_hostile(&vault, &["--timeout", "1"]);
    out.expect(1, &["ran past its time limit of 1s (--timeout"]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(before, vault.bytes());
}

#[test]
fn a_memory_hog_is_stopped() {
    let vault = hostile_vault("hog", &[]);
    let out = run_hostile(&vault, &["--memory-mib", "16"]);
    out.expect(1, &["more than 16 MiB of memory in all"]);
}

#[test]
fn a_foreign_host_is_refused_before_any_io() {
    let foreign = FakeIam::start();
    let allowed = FakeIam::start();
    let vault = hostile_vault(
        "foreign",
        &[
            ("text", "target", &foreign.url),
            ("url", "AWS Endpoint URL", &allowed.url),
        ],
    );
    let out = run_hostile(&vault, &[]);
    out.expect(1, &["DestinationNotAllowed"]);
    assert!(
        out.stderr.contains("refused an outbound request"),
        "the refusal is logged: {}",
        out.stderr
    );
    assert!(foreign.calls().is_empty(), "the foreign host was reached");
}

#[test]
fn the_configured_endpoint_is_reachable() {
    let url = serve(b"hello".to_vec(), Duration::ZERO);
    let vault = hostile_vault("fetch", &[("url", "AWS Endpoint URL", &url)]);
    let out = run_hostile(&vault, &[]);
    assert!(
        out.stderr.contains("status 200 with 5 bytes"),
        "{}",
        out.stderr
    );
}

/// A redirect is handed to the plugin as it is, never followed: the server
/// it points to, outside the allowlist, gets no request.
#[test]
fn redirects_are_not_followed() {
    let (target, target_hits) = serve_status(200, b"followed".to_vec(), Duration::ZERO);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let location = format!("{target}/next");
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!(
                "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
        }
    });
    let vault = hostile_vault("fetch", &[("url", "AWS Endpoint URL", &url)]);
    let out = run_hostile(&vault, &[]);
    assert!(
        out.stderr.contains("status 302 with 0 bytes"),
        "{}",
        out.stderr
    );
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

/// An answer whose status line and headers run past 16 KiB is refused, by
/// that name, as a lost connection (the request went out), not buffered.
#[test]
fn an_oversized_response_head_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        // Held open: the head alone must be refused, not the connection's end.
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let filler = "x".repeat(1000);
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..40 {
                head.push_str(&format!("x-filler-{i}: {filler}\r\n"));
            }
            head.push_str("content-length: 0\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            held.push(stream);
        }
    });
    let vault = hostile_vault("fetch", &[("url", "AWS Endpoint URL", &url)]);
    let out = run_hostile(&vault, &[]);
    assert!(
        out.stderr
            .contains("send error: SendError::ConnectionLost(\"response header is too big"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("status 200"), "{}", out.stderr);
}

#[test]
fn response_bodies_are_capped() {
    let url = serve(vec![b'x'; 2 << 20], Duration::ZERO);
    let vault = hostile_vault("fetch", &[("url", "AWS Endpoint URL", &url)]);
    let out = run_hostile(&vault, &["--max-response-kib", "64"]);
    assert!(
        out.stderr.contains("ResponseTooLarge(65536)"),
        "{}",
        out.stderr
    );
}

#[test]
fn requests_time_out() {
    let url = serve(b"late".to_vec(), Duration::from_secs(5));
    let vault = hostile_vault("fetch", &[("url", "AWS Endpoint URL", &url)]);
    let out = run_hostile(&vault, &["--http-timeout", "1"]);
    assert!(
        out.stderr.contains("send error: SendError::Timeout"),
        "{}",
        out.stderr
    );
}

/// No files, no environment, no sockets.
#[test]
fn no_ambient_authority() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let vault = hostile_vault("ambient", &[("text", "target", &target)]);
    let out = common::command(&[
        "run",
        HOSTILE_WASM,
        "--vault",
        vault.path.to_str().unwrap(),
        "-u",
        "user1",
        "-c",
        "cfg1",
    ])
    .env("SOME_HOST_VARIABLE", "visible?")
    .output()
    .unwrap();
    let out: Outcome = out.into();
    out.expect(1, &["files: Err("]);
    assert!(out.stderr.contains("env: 0;"), "{}", out.stderr);
    assert!(out.stderr.contains("socket: Err("), "{}", out.stderr);
    assert!(out.stderr.contains("lookup: Err("), "{}", out.stderr);
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "the plugin's socket reached the listener"
    );
}

/// Secrets a plugin logs, returns or panics with are masked by the host.
#[test]
fn secrets_in_guest_logs_errors_and_panics_are_masked() {
    for behaviour in ["log-secret", "panic-secret"] {
        let vault = hostile_vault(behaviour, &[]);
        let out = run_hostile(&vault, &[]); // asserts the secret is absent
        assert_eq!(out.code, 1, "{behaviour}: {}", out.all());
        assert!(out.stderr.contains("***"), "{behaviour}: {}", out.stderr);
    }
}

/// The operator can narrow the plugin's allowlist, never widen it.
#[test]
fn the_operator_narrows_the_allowlist() {
    let url = serve(b"hello".to_vec(), Duration::ZERO);
    let other = serve(b"other".to_vec(), Duration::ZERO);
    let vault = hostile_vault("fetch", &[("url", "AWS Endpoint URL", &url)]);
    let out = run_hostile(&vault, &["--allow-host", &other]);
    assert!(
        out.stderr
            .contains("outside the operator's --allow-host list"),
        "{}",
        out.stderr
    );
    let out = run_hostile(&vault, &["--allow-host", &url]);
    assert!(
        out.stderr.contains("status 200 with 5 bytes"),
        "{}",
        out.stderr
    );
    // Listing a host the plugin did not declare does not open it.
    let foreign = FakeIam::start();
    let vault = hostile_vault(
        "foreign",
        &[
            ("text", "target", &foreign.url),
            ("url", "AWS Endpoint URL", &url),
        ],
    );
    let out = run_hostile(&vault, &["--allow-host", &foreign.url]);
    out.expect(1, &["DestinationNotAllowed"]);
    assert!(foreign.calls().is_empty(), "the foreign host was reached");
}

/// `localhost` is a name, not a loopback address: plain http to it needs `--allow-http`.
#[test]
fn plain_http_to_a_name_needs_the_operators_opt_in() {
    let url = serve(b"hello".to_vec(), Duration::ZERO);
    let by_name = url.replace("127.0.0.1", "localhost");
    let vault = hostile_vault("fetch", &[("url", "AWS Endpoint URL", &by_name)]);
    let out = run_hostile(&vault, &[]);
    assert!(
        out.stderr.contains("DestinationNotAllowed"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--allow-http"), "{}", out.stderr);
    let out = run_hostile(&vault, &["--allow-http"]);
    assert!(
        out.stderr.contains("status 200 with 5 bytes"),
        "{}",
        out.stderr
    );
}

#[test]
fn all_12_host_owned_headers_are_refused_before_any_io() {
    // Every header the host owns, in mixed case as a plugin may send it.
    for header in [
        "Host",
        "Connection",
        "Keep-Alive",
        "proxy-authorization",
        "Proxy-Authenticate",
        "proxy-connection",
        "TE",
        "trailer",
        "transfer-encoding",
        "Upgrade",
        "content-length",
        "Expect",
    ] {
        let (url, hits) = serve_status(200, b"hello".to_vec(), Duration::ZERO);
        let vault = hostile_vault(
            "header",
            &[
                ("text", "target", header),
                ("url", "AWS Endpoint URL", &url),
            ],
        );
        let out = run_hostile(&vault, &[]);
        assert!(
            out.stderr.contains("InvalidRequest") && out.stderr.contains("is set by the host"),
            "{header}: {}",
            out.stderr
        );
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "{header} reached the server"
        );
    }
}

/// The secret, percent-encoded in URLs (one allowed, one refused), raw in a
/// header, \u-escaped in a log line and encoded in the error: none of it is
/// printed, at `RUST_LOG=trace`.
#[test]
fn secrets_smuggled_in_urls_headers_logs_and_errors_are_masked() {
    let url = serve(b"hello".to_vec(), Duration::ZERO);
    let vault = hostile_vault("smuggle", &[("url", "AWS Endpoint URL", &url)]);
    let out = run_hostile(&vault, &[]); // asserts every encoded form is absent
    // Both the refused URL and the allowed one (with the encoded secret) were logged, masked.
    out.expect(
        1,
        &["refused an outbound request", "outbound request method=GET"],
    );
    assert!(out.stderr.contains("***"), "{}", out.stderr);
}

/// A plugin that writes a megabyte to stderr: the host keeps 64 KiB of it.
#[test]
fn the_plugins_stderr_is_kept_to_64_kib() {
    let out = run_hostile(&hostile_vault("chatter", &[]), &[]);
    out.expect(1, &["chattered"]);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("stderr: xxxx"))
        .map(|l| l.rsplit("stderr: ").next().unwrap())
        .collect();
    assert!(!lines.is_empty(), "no stderr was logged");
    // Each line had its newline, but the last, cut at the cap.
    let kept = lines.iter().map(|l| l.len()).sum::<usize>() + lines.len() - 1;
    assert!(
        kept <= 64 * 1024,
        "{kept} bytes of the plugin's stderr were kept"
    );
}

/// The `subject` call, made before any rotation, masks the records' secrets
/// like every other call (I3).
#[test]
fn secrets_a_plugin_says_in_subject_are_masked() {
    let out = run_hostile(&hostile_vault("subject-leak", &[]), &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("leaked ***"), "{}", out.stderr);
    assert_no_secrets(&out.all(), &[SECRET]);
}

/// A plugin may not store a field the host keeps: one aliased `Rotation
/// Config` would point the record at another team's config in the next pass.
#[test]
fn a_plugin_storing_a_host_field_is_refused_and_nothing_is_stored() {
    let vault = hostile_vault("host-field", &[("text", "target", "cfg-of-another-team")]);
    let before = vault.bytes();
    let out = run_hostile(&vault, &[]);
    out.expect(
        1,
        &["the plugin asked to store field 'rotation config', which the host keeps"],
    );
    assert_eq!(vault.bytes(), before);
}
