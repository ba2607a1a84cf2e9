//! The plugins' `tcp` import, proved with the hostile plugin against real
//! servers on loopback: the allowlist before any connection, the cap on what
//! one connection receives, the call's time limit, the cap on open
//! connections, and TLS done by the host with certificates checked.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use common::*;
use test_support::tls::TestCa;
use test_support::vault::{VaultFile, config_record, pam_user};

/// A vault whose config makes the hostile plugin do `behaviour` to `target`,
/// with `AWS Endpoint URL` (a `url` field, so its origin is allowed) `endpoint`.
fn vault(behaviour: &str, target: &str, endpoint: &str) -> VaultFile {
    VaultFile::new(vec![
        config_record(
            "cfg1",
            &[
                ("text", "behaviour", behaviour),
                ("text", "target", target),
                ("url", "AWS Endpoint URL", endpoint),
            ],
        ),
        pam_user("user1", "alice", None),
    ])
}

fn run(vault: &VaultFile, extra: &[&str]) -> Outcome {
    run_plugin(HOSTILE_WASM, vault, "user1", "cfg1", extra)
}

/// A server that runs `serve` on each connection, and counts them.
fn server(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let serve = serve.clone();
            thread::spawn(move || serve(stream));
        }
    });
    (addr, count)
}

/// Reads a line, answers `pong`, closes.
fn pong(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    let _ = stream.read(&mut buf);
    let _ = stream.write_all(b"pong\n");
}

#[test]
fn a_plugin_reaches_the_tcp_destination_its_config_names_and_no_other() {
    let (addr, hits) = server(pong);
    let (other, other_hits) = server(pong);
    let endpoint = format!("tcp://{addr}");
    run(&vault("tcp", &addr, &endpoint), &[]).expect(1, &["tcp got 5 bytes: pong"]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    run(&vault("tcp", &other, &endpoint), &[]).expect(
        1,
        &[
            "DestinationNotAllowed",
            "neither among the origins the plugin declares",
        ],
    );
    // The operator's list narrows what the config names.
    run(
        &vault("tcp", &addr, &endpoint),
        &["--allow-host", "https://iam.amazonaws.com"],
    )
    .expect(1, &["DestinationNotAllowed", "--allow-host"]);
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "nothing reached it");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the refused run sent nothing"
    );
}

#[test]
fn an_endless_answer_is_cut_at_the_response_cap() {
    let (addr, _) = server(|mut stream| {
        let junk = [0xA5u8; 8192];
        while stream.write_all(&junk).is_ok() {}
    });
    let v = vault("tcp", &addr, &format!("tcp://{addr}"));
    run(&v, &["--max-response-kib", "64"]).expect(1, &["TooMuchData(65536)"]);
}

#[test]
fn a_silent_server_is_given_up_on_within_the_call() {
    let (addr, _) = server(|stream| {
        // Holds the connection open and says nothing, until the client goes.
        let mut stream = stream;
        let _ = stream.read_to_end(&mut Vec::new());
    });
    let v = vault("tcp", &addr, &format!("tcp://{addr}"));
    // The receive gets three quarters of what is left of the 2 s call, so
    // the plugin hears of the timeout itself, before the sandbox stops it.
    run(&v, &["--timeout", "2"]).expect(1, &["TcpError::Timeout", "did not answer in time"]);
}

#[test]
fn a_plugin_may_hold_at_most_eight_connections() {
    let (addr, hits) = server(|stream| {
        let mut stream = stream;
        let _ = stream.read_to_end(&mut Vec::new());
    });
    let v = vault("tcp-many", &addr, &format!("tcp://{addr}"));
    run(&v, &[]).expect(1, &["ConnectFailed", "already has 8 connections open"]);
    // The kernel may have completed a connection the server has not accepted yet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hits.load(Ordering::SeqCst) < 8 && std::time::Instant::now() < deadline {
        thread::yield_now();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 8);
}

/// A TLS server for 127.0.0.1 under `ca`: reads a line, answers `pong`.
fn tls_server(ca: &TestCa) -> String {
    let config = ca.server.clone();
    server(move |tcp| {
        let conn = rustls::ServerConnection::new(config.clone()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 64];
        if tls.read(&mut buf).is_ok() {
            let _ = tls.write_all(b"pong\n");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    })
    .0
}

#[test]
fn tls_is_done_by_the_host_and_an_untrusted_certificate_is_refused() {
    let ca = TestCa::new();
    let addr = tls_server(&ca);
    let v = vault("tcp-tls", &addr, &format!("tcp://{addr}"));
    run(&v, &[]).expect(1, &["TlsFailed", "UnknownIssuer"]);

    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, &ca.ca_pem).unwrap();
    run(&v, &["--ca-file", pem.to_str().unwrap()]).expect(1, &["tcp got 5 bytes: pong"]);

    // A certificate for another name is refused even from the trusted CA.
    let other = TestCa::for_name("db.example.com");
    let wrong = tls_server(&other);
    std::fs::write(&pem, &other.ca_pem).unwrap();
    let v = vault("tcp-tls", &wrong, &format!("tcp://{wrong}"));
    run(&v, &["--ca-file", pem.to_str().unwrap()])
        .expect(1, &["TlsFailed", "certificate not valid for name"]);
}
