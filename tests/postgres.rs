//! The PostgreSQL plugin against a real PostgreSQL on 127.0.0.1 (scram-sha-256,
//! TLS from a test CA, every statement logged): the new password logs in and
//! the old one does not, the plaintext never reaches the server, bad input
//! changes nothing, and a run killed or cut off at each step leaves a vault
//! whose live or staged password works, which the next run finishes (I1 for
//! passwords, design §13).

mod common;

use serde_json::{Value, json};

use common::*;
use test_support::fake_iam::FakeIam;
use test_support::postgres::{PgProxy, PgServer, Trap};
use test_support::vault::{VaultFile, config_record, fleet_member, with_custom};

const OLD: &str = "old-Pa55word-for-app";
const ADMIN_PW: &str = "rotator-Adm1n-pw";

/// A server with role `app` (password `OLD`) and `rotator`, which may alter it.
fn server() -> PgServer {
    let pg = PgServer::start();
    pg.sql(&format!("CREATE ROLE app LOGIN PASSWORD '{OLD}'"));
    pg.sql(&format!(
        "CREATE ROLE rotator LOGIN CREATEROLE PASSWORD '{ADMIN_PW}'"
    ));
    pg
}

fn user(uid: &str, login: &str, password: &str) -> Value {
    json!({
        "uid": uid, "type": "pamUser", "title": login,
        "fields": [{"type": "login", "value": [login]}, {"type": "password", "value": [password]}],
        "custom": [], "notes": "kept as is"
    })
}

/// The vault: `user1` for role `login`, config `cfg1` for `url` with `extra` fields.
fn vault(url: &str, login: &str, extra: &[(&str, &str, &str)]) -> VaultFile {
    let mut fields = vec![("url", "PostgreSQL Server", url)];
    fields.extend_from_slice(extra);
    VaultFile::new(vec![
        config_record("cfg1", &fields),
        user("user1", login, OLD),
    ])
}

fn admin() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("text", "Admin Login", "rotator"),
        ("secret", "Admin Password", ADMIN_PW),
    ]
}

fn plain_admin() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut a = admin();
    a.push(("text", "TLS", "disable"));
    a
}

/// The user record's standard (unlabelled) password field.
fn password(v: &VaultFile) -> String {
    password_of(v, "user1")
}

fn password_of(v: &VaultFile, uid: &str) -> String {
    let doc = v.json();
    let user = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["uid"] == uid)
        .unwrap()
        .clone();
    let field = user["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "password")
        .unwrap()
        .clone();
    assert!(
        field.get("label").is_none(),
        "the standard field was relabelled: {field}"
    );
    field["value"][0].as_str().unwrap().to_string()
}

/// The password an unfinished run staged, if any.
fn staged(v: &VaultFile) -> Option<String> {
    let raw = v.field("user1", "Rotation Staged")?;
    let list: Vec<Value> = serde_json::from_str(&raw).unwrap();
    Some(list[0]["value"].as_str().unwrap().to_string())
}

fn run(pg: &PgServer, v: &VaultFile, extra: &[&str]) -> Outcome {
    let ca = pg.ca_file.to_str().unwrap();
    let mut args = vec!["--ca-file", ca];
    args.extend_from_slice(extra);
    run_plugin(POSTGRES_WASM, v, "user1", "cfg1", &args)
}

/// The rotation is done: the vault's password logs in, the old one does
/// not, nothing is staged, and no password reached the output.
fn assert_rotated(pg: &PgServer, v: &VaultFile, out: &Outcome, old: &str) -> String {
    assert_eq!(out.code, 0, "{}", out.all());
    let new = password(v);
    assert_ne!(new, old);
    assert!(
        pg.logs_in("app", &new),
        "the vault's new password does not log in"
    );
    assert!(!pg.logs_in("app", old), "the old password still logs in");
    assert_eq!(staged(v), None, "the staged field was left behind");
    assert!(v.field("user1", "Last Rotated").is_some());
    assert_no_secrets(&out.all(), &[&new, old, ADMIN_PW]);
    new
}

#[test]
fn a_rotation_sets_a_password_that_logs_in_and_the_old_one_no_longer_does() {
    let pg = server();
    let v = vault(&pg.url(), "app", &admin());
    let out = run(&pg, &v, &[]);
    let new = assert_rotated(&pg, &v, &out, OLD);
    assert_eq!(new.len(), 32);
    assert!(
        out.stdout
            .contains("rotated PAM user record user1: new credential stored in"),
        "{}",
        out.stdout
    );
    // The server saw a SCRAM verifier, never the password.
    let log = pg.log();
    assert!(
        log.contains("ALTER ROLE \"app\" PASSWORD 'SCRAM-SHA-256$4096:"),
        "{log}"
    );
    assert!(
        !log.contains(&new),
        "the plaintext reached the server's log"
    );
    // The log sees logins (what the tests that expect none rely on).
    assert!(log.contains("connection authorized: user=rotator"), "{log}");
    assert_eq!(v.json()["records"][1]["notes"], "kept as is");
}

#[test]
fn a_role_without_an_admin_changes_its_own_password_twice() {
    let pg = server();
    let v = vault(
        &pg.url(),
        "app",
        &[("text", "Password Complexity", "20,2,2,2,2")],
    );
    let first = assert_rotated(&pg, &v, &run(&pg, &v, &[]), OLD);
    assert_eq!(first.len(), 20);
    assert_rotated(&pg, &v, &run(&pg, &v, &[]), &first);
}

#[test]
fn a_dry_run_plans_and_changes_nothing() {
    let pg = server();
    let v = vault(&pg.url(), "app", &admin());
    let before = v.bytes();
    let out = run(&pg, &v, &["--dry-run"]);
    out.expect(0, &[]);
    assert!(
        out.all()
            .contains("would set a new 32-character password for role 'app'"),
        "{}",
        out.all()
    );
    assert_eq!(v.bytes(), before);
    assert!(pg.logs_in("app", OLD));
}

/// Nothing changed: the vault is byte-identical and the old password works.
fn assert_untouched(pg: &PgServer, v: &VaultFile, before: &[u8], out: &Outcome) {
    assert_eq!(v.bytes(), before, "the vault changed: {}", out.all());
    assert!(pg.logs_in("app", OLD), "the old password no longer logs in");
    assert!(!pg.log().contains("ALTER ROLE"), "a password was set");
    assert_no_secrets(&out.all(), &[OLD, ADMIN_PW]);
}

#[test]
fn a_wrong_admin_password_is_denied_and_changes_nothing() {
    let pg = server();
    let v = vault(
        &pg.url(),
        "app",
        &[
            ("text", "Admin Login", "rotator"),
            ("secret", "Admin Password", "wrong"),
        ],
    );
    let before = v.bytes();
    let out = run(&pg, &v, &[]);
    out.expect(1, &["logging in as admin role 'rotator'", "28P01"]);
    assert_untouched(&pg, &v, &before, &out);
}

#[test]
fn a_missing_role_is_not_found_and_changes_nothing() {
    let pg = server();
    let v = vault(&pg.url(), "ghost", &admin());
    let before = v.bytes();
    let out = run(&pg, &v, &[]);
    out.expect(1, &["role 'ghost' does not exist"]);
    assert_untouched(&pg, &v, &before, &out);
}

#[test]
fn a_policy_the_generator_cannot_meet_exits_2_and_changes_nothing() {
    let pg = server();
    let mut extra = admin();
    extra.push(("text", "Password Complexity", "16,5,5,5,5"));
    let v = vault(&pg.url(), "app", &extra);
    let before = v.bytes();
    let out = run(&pg, &v, &[]);
    out.expect(
        2,
        &["'Password Complexity' asks for at least 20 characters"],
    );
    assert_untouched(&pg, &v, &before, &out);
    assert!(
        !pg.log().contains("connection authorized: user=rotator"),
        "it connected"
    );
}

#[test]
fn an_untrusted_server_certificate_is_refused_before_any_login() {
    let pg = server();
    let v = vault(&pg.url(), "app", &admin());
    let before = v.bytes();
    let out = run_plugin(POSTGRES_WASM, &v, "user1", "cfg1", &[]);
    out.expect(1, &["TLS to postgresql://127.0.0.1", "--ca-file"]);
    assert_untouched(&pg, &v, &before, &out);
    assert!(!pg.log().contains("connection authorized: user=rotator"));
}

#[test]
fn a_connection_dropped_after_alter_role_is_proved_and_finished_by_the_same_run() {
    let pg = server();
    let (proxy, _) = PgProxy::start(pg.port, "ALTER ROLE", Trap::DropAfter);
    let v = vault(&proxy.url(), "app", &plain_admin());
    let out = run(&pg, &v, &[]);
    assert!(proxy.sprung(), "the connection was never dropped");
    assert_rotated(&pg, &v, &out, OLD);
}

#[test]
fn a_refused_alter_role_leaves_the_staged_password_unset_and_the_old_one_working() {
    let pg = server();
    pg.sql("ALTER ROLE rotator NOCREATEROLE");
    let v = vault(&pg.url(), "app", &admin());
    let out = run(&pg, &v, &[]);
    out.expect(
        3,
        &[
            "setting the password of role 'app'",
            "42501",
            "Rotation Staged",
        ],
    );
    assert_eq!(password(&v), OLD);
    let staged = staged(&v).expect("the new password stays staged");
    assert!(pg.logs_in("app", OLD));
    assert!(!pg.logs_in("app", &staged));
    // Once the admin may, the next run finishes with the staged password.
    pg.sql("ALTER ROLE rotator CREATEROLE");
    let again = run(&pg, &v, &[]);
    assert_eq!(assert_rotated(&pg, &v, &again, OLD), staged);
}

/// `run` of `user1` under `config` with the test CA, as arguments.
fn run_args(pg: &PgServer, v: &VaultFile, config: &str) -> Vec<String> {
    let (path, ca) = (v.path.to_str().unwrap(), pg.ca_file.to_str().unwrap());
    [
        "run",
        POSTGRES_WASM,
        "--vault",
        path,
        "-u",
        "user1",
        "-c",
        config,
        "--ca-file",
        ca,
    ]
    .map(String::from)
    .to_vec()
}

/// `run_args`, killed once the proxy reports `arrived`; then the proxy lets go.
fn killed_run(
    pg: &PgServer,
    v: &VaultFile,
    config: &str,
    proxy: PgProxy,
    arrived: std::sync::mpsc::Receiver<()>,
) -> Outcome {
    let args = run_args(pg, v, config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kill_when(command(&args), arrived, std::time::Duration::ZERO, || {
        proxy.release()
    });
    assert_eq!(
        out.code,
        -1,
        "the run was meant to be killed: {}",
        out.all()
    );
    out
}

/// Killed while the proxy holds `pattern` (`Trap::Withhold`) or its answer (`Trap::Hold`).
fn killed_at(pg: &PgServer, pattern: &'static str, trap: Trap) -> (VaultFile, Outcome) {
    let (proxy, arrived) = PgProxy::start(pg.port, pattern, trap);
    let v = vault(&proxy.url(), "app", &plain_admin());
    let out = killed_run(pg, &v, "cfg1", proxy, arrived);
    (v, out)
}

#[test]
fn killed_during_the_role_lookup_nothing_changes() {
    let pg = server();
    let (v, out) = killed_at(&pg, "rolcanlogin", Trap::Hold);
    assert_eq!(password(&v), OLD);
    assert_eq!(staged(&v), None);
    assert!(pg.logs_in("app", OLD));
    assert!(!pg.log().contains("ALTER ROLE"));
    assert_no_secrets(&out.all(), &[OLD, ADMIN_PW]);
    // The next run rotates (straight to the server, TLS off on loopback).
    assert_rotated(&pg, &v, &run(&pg, &v, &[]), OLD);
}

#[test]
fn killed_after_alter_role_ran_the_staged_password_works_and_the_next_run_finishes() {
    let pg = server();
    let (v, out) = killed_at(&pg, "ALTER ROLE", Trap::Hold);
    // The server ran the statement: the vault's live password is now the
    // old one, and the staged one is what works.
    assert_eq!(password(&v), OLD);
    let staged = staged(&v).expect("staged before the service got it");
    assert!(pg.logs_in("app", &staged));
    assert!(!pg.logs_in("app", OLD));
    assert_no_secrets(&out.all(), &[&staged, OLD, ADMIN_PW]);
    let again = run(&pg, &v, &[]);
    assert_eq!(assert_rotated(&pg, &v, &again, OLD), staged);
}

#[test]
fn killed_after_alter_role_ran_a_role_that_changes_its_own_password_finishes_next_time() {
    let pg = server();
    let (proxy, arrived) = PgProxy::start(pg.port, "ALTER ROLE", Trap::Hold);
    let v = vault(&proxy.url(), "app", &[("text", "TLS", "disable")]);
    killed_run(&pg, &v, "cfg1", proxy, arrived);
    let staged = staged(&v).unwrap();
    assert!(!pg.logs_in("app", OLD));
    // The vault's password no longer logs in: the next run logs in with the staged one.
    let again = run(&pg, &v, &[]);
    assert_eq!(assert_rotated(&pg, &v, &again, OLD), staged);
}

/// `run` under strace, killed at the `when`-th rename: the stage (1) or the promote (2).
fn killed_at_save(pg: &PgServer, v: &VaultFile, when: u32) -> Outcome {
    let args = run_args(pg, v, "cfg1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    under_strace(
        "rename,renameat,renameat2",
        &format!("signal=KILL:when={when}"),
        &args,
    )
}

#[test]
fn killed_before_alter_role_reached_the_server_the_live_password_works_and_the_next_run_finishes() {
    let pg = server();
    let (v, out) = killed_at(&pg, "ALTER ROLE", Trap::Withhold);
    assert_eq!(password(&v), OLD);
    let staged = staged(&v).expect("staged before the service got it");
    assert!(pg.logs_in("app", OLD));
    assert!(!pg.logs_in("app", &staged));
    assert!(!pg.log().contains("ALTER ROLE"));
    assert_no_secrets(&out.all(), &[&staged, OLD, ADMIN_PW]);
    let again = run(&pg, &v, &[]);
    assert_eq!(assert_rotated(&pg, &v, &again, OLD), staged);
}

#[test]
fn killed_at_the_stage_save_nothing_changes_and_the_next_run_rotates() {
    let pg = server();
    let v = vault(&pg.url(), "app", &admin());
    let before = v.bytes();
    let out = killed_at_save(&pg, &v, 1);
    assert_eq!(out.code, -1, "{}", out.all());
    assert_eq!(v.bytes(), before);
    assert!(pg.logs_in("app", OLD));
    assert_rotated(&pg, &v, &run(&pg, &v, &[]), OLD);
}

#[test]
fn killed_at_the_promote_save_the_staged_password_works_and_the_next_run_finishes() {
    let pg = server();
    let v = vault(&pg.url(), "app", &admin());
    let out = killed_at_save(&pg, &v, 2);
    assert_eq!(out.code, -1, "{}", out.all());
    assert_eq!(password(&v), OLD);
    let staged = staged(&v).unwrap();
    assert!(pg.logs_in("app", &staged));
    let again = run(&pg, &v, &[]);
    assert_eq!(assert_rotated(&pg, &v, &again, OLD), staged);
}

/// A config record for the PostgreSQL plugin (`SaaS Type` PostgreSQL).
fn pg_config(uid: &str, url: &str) -> Value {
    let mut fields = vec![("url", "PostgreSQL Server", url)];
    fields.extend(admin());
    let mut c = config_record(uid, &fields);
    c["custom"][0]["value"] = json!(["PostgreSQL"]);
    c
}

fn due(pg: &PgServer, plugins: &std::path::Path, v: &VaultFile) -> Outcome {
    let (dir, path, ca) = (
        plugins.to_str().unwrap(),
        v.path.to_str().unwrap(),
        pg.ca_file.to_str().unwrap(),
    );
    rotate_host(&[
        "due",
        "--plugins",
        dir,
        "--vault",
        path,
        "--ca-file",
        ca,
        "--json",
    ])
}

#[test]
fn one_pass_rotates_a_postgres_role_and_an_aws_key_side_by_side() {
    let pg = server();
    let iam = FakeIam::start();
    iam.add_user("rotator", &["alice"]);
    iam.add_user("alice", &[]);
    let rotator = iam.add_key("rotator", "2024-01-01T00:00:00Z");
    let old = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let mut aws = fake_config(&iam.url, &rotator);
    aws.retain(|(_, l, _)| l != "IAM Username");
    let pg_member = with_custom(user("u-pg", "app", OLD), &[("Rotation Config", "cfg-pg")]);
    let v = VaultFile::new(vec![
        config_from("cfg-aws", &aws),
        fleet_member(
            "u-aws",
            "alice",
            Some(("aws_access_key_id", &old.id)),
            "cfg-aws",
            &[],
        ),
        pg_config("cfg-pg", &pg.url()),
        pg_member,
    ]);
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(GUEST_WASM, plugins.path().join("aws.wasm")).unwrap();
    std::fs::copy(POSTGRES_WASM, plugins.path().join("postgres.wasm")).unwrap();
    let out = due(&pg, plugins.path(), &v);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_record_converged(&iam, &v, "u-aws", "alice");
    let new = password_of(&v, "u-pg");
    assert!(pg.logs_in("app", &new) && !pg.logs_in("app", OLD));
    assert_eq!(v.field("u-pg", "Rotation Pending"), None);
    let mut secrets = iam.all_secrets();
    secrets.extend([new, OLD.to_string(), ADMIN_PW.to_string()]);
    assert_no_leak(&out.all(), &secrets);
}

/// A staged password makes its record due at once, whatever its schedule
/// says: the pass finishes it.
#[test]
fn a_pass_finishes_a_staged_rotation_before_it_is_due() {
    let pg = server();
    let (proxy, arrived) = PgProxy::start(pg.port, "ALTER ROLE", Trap::Hold);
    let mut cfg = pg_config("cfg-pg", &proxy.url());
    cfg["custom"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "text", "label": "TLS", "value": ["disable"]}));
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let member = with_custom(
        user("user1", "app", OLD),
        &[("Rotation Config", "cfg-pg"), ("Last Rotated", &now)],
    );
    let v = VaultFile::new(vec![cfg, member]);
    killed_run(&pg, &v, "cfg-pg", proxy, arrived);
    let staged = staged(&v).unwrap();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(POSTGRES_WASM, plugins.path().join("postgres.wasm")).unwrap();
    let out = due(&pg, plugins.path(), &v);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(password(&v), staged);
    assert_eq!(self::staged(&v), None);
    assert!(pg.logs_in("app", &staged));
}

/// A server on 127.0.0.1 that speaks just enough of PostgreSQL's protocol to
/// misbehave: it answers an `SSLRequest` with `ssl`, reads the startup
/// message, then runs `then` on the connection.
fn hostile_server(ssl: u8, then: fn(&mut std::net::TcpStream)) -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let mut head = [0u8; 8];
            if c.read_exact(&mut head).is_err() {
                continue;
            }
            if head[4..8] == 80877103u32.to_be_bytes() {
                let _ = std::io::Write::write_all(&mut c, &[ssl]);
                continue;
            }
            let len = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
            let mut rest = vec![0u8; len.saturating_sub(8)];
            if c.read_exact(&mut rest).is_ok() {
                then(&mut c);
            }
        }
    });
    format!("tcp://127.0.0.1:{port}")
}

/// `R`, an authentication request of `code` with `body`.
fn auth(code: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend(((8 + body.len()) as u32).to_be_bytes());
    m.extend(code.to_be_bytes());
    m.extend(body);
    m
}

fn write(c: &mut std::net::TcpStream, bytes: &[u8]) {
    let _ = std::io::Write::write_all(c, bytes);
}

/// A run against `url` fails with exit 1 naming `why`, and changes nothing.
fn refused(url: &str, tls: &str, why: &str) {
    let mut extra = admin();
    extra.push(("text", "TLS", tls));
    let v = vault(url, "app", &extra);
    let before = v.bytes();
    let out = run_plugin(POSTGRES_WASM, &v, "user1", "cfg1", &["--http-timeout", "5"]);
    out.expect(1, &[why]);
    assert_eq!(v.bytes(), before, "{why}");
    assert_no_secrets(&out.all(), &[OLD, ADMIN_PW]);
}

#[test]
fn a_server_that_refuses_tls_is_refused() {
    refused(
        &hostile_server(b'N', |_| {}),
        "verify",
        "does not offer TLS",
    );
}

#[test]
fn a_server_asking_for_md5_or_cleartext_is_refused() {
    refused(
        &hostile_server(b'N', |c| write(c, &auth(5, b"salt"))),
        "disable",
        "asked for 'md5' authentication",
    );
    refused(
        &hostile_server(b'N', |c| write(c, &auth(3, b""))),
        "disable",
        "asked for 'password' authentication",
    );
}

#[test]
fn a_server_that_lets_the_admin_in_without_a_password_check_is_refused() {
    let trust = |c: &mut std::net::TcpStream| {
        write(c, &[auth(0, b""), vec![b'Z', 0, 0, 0, 5, b'I']].concat());
    };
    refused(
        &hostile_server(b'N', trust),
        "disable",
        "without a password check",
    );
}

#[test]
fn a_huge_message_or_an_endless_answer_is_cut_off() {
    let huge = |c: &mut std::net::TcpStream| write(c, &[b'R', 0x7f, 0xff, 0xff, 0xf0]);
    refused(
        &hostile_server(b'N', huge),
        "disable",
        "a message of 2147483632 bytes",
    );
    let endless = |c: &mut std::net::TcpStream| {
        let body = [vec![b'M'], vec![b'x'; 1000], vec![0, 0]].concat();
        let notice = [
            vec![b'N'],
            (4 + body.len() as u32).to_be_bytes().to_vec(),
            body,
        ]
        .concat();
        for _ in 0..100_000 {
            let _ = std::io::Write::write_all(c, &notice);
        }
    };
    refused(
        &hostile_server(b'N', endless),
        "disable",
        "more than the host's cap",
    );
}

#[test]
fn a_server_asking_for_one_scram_iteration_is_refused() {
    let cheap = |c: &mut std::net::TcpStream| {
        use std::io::Read;
        write(c, &auth(10, b"SCRAM-SHA-256\0\0"));
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let nonce = text
            .split("r=")
            .nth(1)
            .unwrap_or("")
            .trim_end_matches('\0')
            .to_string();
        let first = format!("r={nonce}srv,s=c2FsdHNhbHQ=,i=1");
        write(c, &auth(11, first.as_bytes()));
    };
    refused(
        &hostile_server(b'N', cheap),
        "disable",
        "SCRAM iteration count Some(1)",
    );
}

#[test]
fn an_admin_config_does_not_rotate_privileged_roles_or_its_own_admin() {
    let pg = server();
    pg.sql("CREATE ROLE boss LOGIN CREATEROLE PASSWORD 'boss-Pa55word-x'");
    for (role, why) in [
        ("boss", "is privileged"),
        ("rotator", "is the config's own admin role"),
    ] {
        let v = vault(&pg.url(), role, &admin());
        let before = v.bytes();
        let out = run(&pg, &v, &[]);
        out.expect(1, &[why]);
        assert_eq!(v.bytes(), before);
    }
    assert!(pg.logs_in("boss", "boss-Pa55word-x"));
    assert!(pg.logs_in("rotator", ADMIN_PW));
    assert!(!pg.log().contains("ALTER ROLE"));
}

#[test]
fn a_role_whose_password_expired_is_refused_before_anything_is_staged() {
    let pg = server();
    pg.sql("ALTER ROLE app VALID UNTIL '2001-01-01'");
    let v = vault(&pg.url(), "app", &admin());
    let before = v.bytes();
    let out = run(&pg, &v, &[]);
    out.expect(1, &["VALID UNTIL"]);
    assert_eq!(v.bytes(), before);
}

/// The PostgreSQL plugin with Keeper as the vault (the fake KSM, real HTTPS):
/// `user1` and `cfg1` live in Keeper; `url` is the server the config names.
struct InKeeper {
    ksm: test_support::fake_ksm::FakeKsm,
    dir: tempfile::TempDir,
}

impl InKeeper {
    fn start(url: &str, extra: &[(&str, &str, &str)]) -> Self {
        let ca = test_support::tls::TestCa::for_name(test_support::fake_ksm::HOST);
        let ksm = test_support::fake_ksm::FakeKsm::start(&ca);
        let mut fields = vec![("url", "PostgreSQL Server", url)];
        fields.extend_from_slice(extra);
        let strip = |mut r: Value| {
            r.as_object_mut().unwrap().remove("uid");
            r
        };
        ksm.add_record("cfg1", strip(config_record("cfg1", &fields)));
        ksm.add_record("user1", strip(user("user1", "app", OLD)));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
        let path = dir.path().join("ksm.json");
        std::fs::write(&path, ksm.config().to_string()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { ksm, dir }
    }

    fn command(&self, pg: &PgServer) -> std::process::Command {
        let config = self.dir.path().join("ksm.json");
        let (config, ca) = (config.to_str().unwrap(), pg.ca_file.to_str().unwrap());
        let args = [
            "run",
            POSTGRES_WASM,
            "--ksm-config",
            config,
            "-u",
            "user1",
            "-c",
            "cfg1",
            "--ca-file",
            ca,
        ];
        let mut cmd = command(&args);
        cmd.env("SSL_CERT_FILE", self.dir.path().join("ca.pem"))
            .env("HTTPS_PROXY", &self.ksm.proxy);
        cmd
    }

    /// The password field Keeper's readers see, and the staged one if any.
    fn passwords(&self) -> (String, Option<String>) {
        let r = self.ksm.record("user1").unwrap();
        let live = r["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["type"] == "password")
            .unwrap()["value"][0]
            .as_str()
            .unwrap()
            .to_string();
        let staged = self.ksm.field("user1", "Rotation Staged").map(|raw| {
            let list: Vec<Value> = serde_json::from_str(&raw).unwrap();
            list[0]["value"].as_str().unwrap().to_string()
        });
        (live, staged)
    }
}

#[test]
fn with_keeper_the_password_is_staged_once_then_made_live() {
    let pg = server();
    let k = InKeeper::start(&pg.url(), &admin());
    let out: Outcome = k.command(&pg).output().unwrap().into();
    assert_eq!(out.code, 0, "{}", out.all());
    let (live, staged) = k.passwords();
    assert_eq!(staged, None);
    assert!(pg.logs_in("app", &live) && !pg.logs_in("app", OLD));
    assert!(!k.ksm.open_transaction("user1"));
    // Keeper saw the staged value first, then the live one.
    let writes: Vec<String> = k.ksm.writes("user1").iter().map(Value::to_string).collect();
    let staged_at = writes
        .iter()
        .position(|w| w.contains("Rotation Staged"))
        .expect("a staged write");
    let live_at = writes
        .iter()
        .position(|w| w.contains(&live) && !w.contains("Rotation Staged"))
        .expect("a live write");
    assert!(staged_at < live_at, "{writes:?}");
    let staged_writes = writes
        .iter()
        .filter(|w| w.contains("Rotation Staged"))
        .count();
    assert_eq!(staged_writes, 1, "{writes:?}");
    let mut secrets = k.ksm.config_secrets();
    secrets.extend([live, OLD.to_string(), ADMIN_PW.to_string()]);
    assert_no_leak(&out.all(), &secrets);
}

#[test]
fn with_keeper_killed_after_alter_role_ran_the_next_run_finishes() {
    let pg = server();
    let (proxy, arrived) = PgProxy::start(pg.port, "ALTER ROLE", Trap::Hold);
    let k = InKeeper::start(&proxy.url(), &plain_admin());
    let out = kill_when(k.command(&pg), arrived, std::time::Duration::ZERO, || {
        proxy.release()
    });
    assert_eq!(out.code, -1, "{}", out.all());
    let (live, staged) = k.passwords();
    assert_eq!(live, OLD);
    let staged = staged.expect("staged in Keeper");
    assert!(pg.logs_in("app", &staged) && !pg.logs_in("app", OLD));
    assert!(!k.ksm.open_transaction("user1"));
    let again: Outcome = k.command(&pg).output().unwrap().into();
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(k.passwords(), (staged.clone(), None));
    assert!(pg.logs_in("app", &staged));
}

/// A user record's editor who forges a staged password and points `login` at
/// a privileged role gets nothing set: `finalize` checks the role again.
#[test]
fn a_forged_staged_password_for_a_privileged_role_sets_nothing() {
    let pg = server();
    pg.sql("CREATE ROLE boss LOGIN CREATEROLE PASSWORD 'boss-Pa55word-x'");
    let v = vault(&pg.url(), "boss", &admin());
    let forged = r#"[{"label":"password","kind":"password","value":"chosen-by-the-editor-1A!"}]"#;
    v.set_field("user1", "Rotation Staged", forged);
    let out = run(&pg, &v, &[]);
    out.expect(3, &["is privileged"]);
    assert!(pg.logs_in("boss", "boss-Pa55word-x"));
    assert!(!pg.logs_in("boss", "chosen-by-the-editor-1A!"));
    assert!(!pg.log().contains("ALTER ROLE"));
}

/// After a crash left a staged password, someone reset the role's password
/// at the server: the run says what happened and what to do, and sets nothing.
#[test]
fn a_password_reset_behind_the_vaults_back_is_named_with_what_to_do() {
    let pg = server();
    let (proxy, arrived) = PgProxy::start(pg.port, "ALTER ROLE", Trap::Withhold);
    let v = vault(&proxy.url(), "app", &[("text", "TLS", "disable")]);
    killed_run(&pg, &v, "cfg1", proxy, arrived);
    let staged = staged(&v).expect("staged");
    pg.sql("ALTER ROLE app PASSWORD 'reset-by-a-dba-Pa55'");
    let out = run(&pg, &v, &[]);
    out.expect(
        3,
        &[
            "neither the vault's password nor the staged one logs in",
            "delete the record's 'Rotation Staged' field",
        ],
    );
    assert_eq!(password(&v), OLD);
    assert!(pg.logs_in("app", "reset-by-a-dba-Pa55"));
    assert_no_secrets(&out.all(), &[&staged, OLD, "reset-by-a-dba-Pa55"]);
}
