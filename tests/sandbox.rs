//! The sandbox, proved with a purpose-built hostile plugin (tests/guests/hostile):
//! CPU time, memory, the outbound allowlist, response size and time limits, no
//! ambient authority, and no secret leaking through logs, errors or panics.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

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
    let path = vault.path.to_str().unwrap();
    let mut args = vec![
        "run",
        HOSTILE_WASM,
        "--vault",
        path,
        "-u",
        "user1",
        "-c",
        "cfg1",
    ];
    args.extend(extra);
    let out = rotate_host(&args);
    assert_no_secrets(&out.all(), &[SECRET]);
    out
}

/// A server on 127.0.0.1 that answers every request with `body`, after `delay`.
fn serve(body: Vec<u8>, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let body = body.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                thread::sleep(delay);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    url
}

#[test]
fn an_endless_loop_is_stopped() {
    let vault = hostile_vault("spin", &[]);
    let before = vault.bytes();
    let out = run_hostile(&vault, &["--timeout", "1"]);
    out.expect(1, &["ran past its time limit of 1s"]);
    assert_eq!(before, vault.bytes());
}

#[test]
fn a_memory_hog_is_stopped() {
    let vault = hostile_vault("hog", &[]);
    let out = run_hostile(&vault, &["--memory-mib", "16"]);
    out.expect(1, &["more than 16 MiB"]);
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
