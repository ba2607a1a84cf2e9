//! Helpers shared by the integration tests: run the real `rotate-host` binary on
//! the real guest component, and check the invariants of docs/design.md afterwards.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use test_support::fake_iam::{FakeIam, Key};
use test_support::moto::Moto;
use test_support::vault::{VaultFile, config_record, pam_user};

#[allow(unused_imports)]
pub use test_artifacts::*;
#[allow(unused_imports)]
pub use test_support::{assert_no_leak, assert_no_secrets};

pub const BIN: &str = env!("CARGO_BIN_EXE_rotate-host");

/// One compile cache for every test binary (cargo runs them one after another),
/// so each guest is compiled once per build of the host, not once per binary.
pub fn cache_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-cache"))
}

/// What one `rotate-host` run printed and returned.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts the exit code, and that standard error says each of `needles`.
    pub fn expect(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "{}", self.all());
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "expected '{n}' in:\n{}",
                self.stderr
            );
        }
    }
}

impl From<Output> for Outcome {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Records that `test` did not run here, and why: `scripts/test` lists every
/// such test after its summary, so a skip is never mistaken for a pass.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let list = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&list)
        .expect("open the list of skipped tests");
    writeln!(file, "{test}: {why}").expect("write the list of skipped tests");
    eprintln!("skipped {test}: {why}");
}

/// `rotate-host ARGS` at `RUST_LOG=trace`, so every test also checks I3 at the
/// most verbose level.
pub fn command(args: &[&str]) -> Command {
    wrapped(&[], args)
}

/// `command`, run by `wrapper` (a program and its arguments) if any.
fn wrapped(wrapper: &[&str], args: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(BIN);
            cmd
        }
        None => Command::new(BIN),
    };
    cmd.args(args)
        .env("RUST_LOG", "trace")
        .env("ROTATE_HOST_CACHE_DIR", cache_dir())
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    // The KSM SDK reads these whatever it is told (a config, TLS checks, a host).
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("KSM_")) {
        cmd.env_remove(k);
    }
    cmd
}

/// `rotate-host ARGS` under strace, which does `inject` (say
/// `error=ENOSPC:when=1` or `signal=KILL:when=2`) at a call of one of
/// `syscalls`: a real kernel error, or a kill at an exact point.
pub fn under_strace(syscalls: &str, inject: &str, args: &[&str]) -> Outcome {
    strace_command(syscalls, inject, args)
        .output()
        .expect("strace (Debian package strace; .ci/run installs it)")
        .into()
}

/// The command `under_strace` runs, for a test that watches it run.
pub fn strace_command(syscalls: &str, inject: &str, args: &[&str]) -> Command {
    let trace = format!("trace={syscalls}");
    let inject = format!("inject={syscalls}:{inject}");
    let strace = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        &trace,
        "-e",
        &inject,
    ];
    wrapped(&strace, args)
}

/// Starts `rotate-host ARGS`, waits until the fake signals that the held call
/// `arrived` (plus `settle`), kills the run with SIGKILL, then lets the fake's
/// held answers go. The outcome's code is -1 when the kill landed.
pub fn kill_when_arrived(
    args: &[&str],
    arrived: std::sync::mpsc::Receiver<()>,
    settle: std::time::Duration,
    iam: &FakeIam,
) -> Outcome {
    kill_when(command(args), arrived, settle, || iam.release())
}

/// `kill_when_arrived` for any command and any fake: `release` lets it go.
pub fn kill_when(
    mut cmd: Command,
    arrived: std::sync::mpsc::Receiver<()>,
    settle: std::time::Duration,
    release: impl FnOnce(),
) -> Outcome {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rotate-host");
    arrived
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the held call never arrived");
    std::thread::sleep(settle);
    child.kill().expect("SIGKILL");
    let out: Outcome = child.wait_with_output().expect("wait").into();
    release();
    out
}

/// A running `rotate-host`'s standard error, read line by line as it comes, so a
/// test can wait for what the gateway says instead of sleeping.
pub struct Watched {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    pub fn new(mut child: std::process::Child) -> Self {
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: vec![],
        }
    }

    /// Blocks until a line containing `needle` arrives (or panics after two minutes).
    pub fn wait_line(&mut self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with '{needle}' in:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits for the exit; returns its code and everything it wrote to stderr.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status.code(), self.seen.join("\n"))
    }
}

pub fn rotate_host(args: &[&str]) -> Outcome {
    command(args).output().expect("run rotate-host").into()
}

/// `rotate-host run GUEST --vault V -u USER -c CONFIG EXTRA...`
pub fn run(vault: &VaultFile, user: &str, config: &str, extra: &[&str]) -> Outcome {
    run_plugin(GUEST_WASM, vault, user, config, extra)
}

/// `rotate-host run WASM --vault V -u USER -c CONFIG EXTRA...`
pub fn run_plugin(
    wasm: &str,
    vault: &VaultFile,
    user: &str,
    config: &str,
    extra: &[&str],
) -> Outcome {
    let path = vault.path.to_str().unwrap();
    let mut args = vec!["run", wasm, "--vault", path, "-u", user, "-c", config];
    args.extend(extra);
    rotate_host(&args)
}

/// The usual setup against the fake: `rotator` manages `alice`, who has one key
/// that the vault records.
pub struct FakeSetup {
    pub iam: FakeIam,
    pub vault: VaultFile,
    pub rotator: Key,
    pub old: Key,
}

impl FakeSetup {
    /// Every secret the run must never print: every key the fake ever issued,
    /// deleted ones included, and what the vault holds.
    pub fn secrets(&self) -> Vec<String> {
        let mut s = vec![self.rotator.secret.clone(), self.old.secret.clone()];
        s.extend(self.iam.all_secrets());
        if let Some(v) = self.vault.field("user1", "aws_secret_access_key") {
            s.push(v);
        }
        s
    }

    /// I3: none of `secrets()` in what the run printed.
    pub fn assert_no_leak(&self, out: &Outcome) {
        assert_no_leak(&out.all(), &self.secrets());
    }
}

/// Config fields for the fake at `url`, with short retry budgets for tests.
pub fn fake_config(url: &str, key: &Key) -> Vec<(String, String, String)> {
    [
        ("text", "IAM Username", "alice"),
        ("secret", "Client ID", key.id.as_str()),
        ("secret", "Client Secret", key.secret.as_str()),
        ("text", "AWS Region", "us-east-1"),
        ("url", "AWS Endpoint URL", url),
        ("text", "Retry Deadline Seconds", "3"),
        ("text", "Max Backoff Milliseconds", "50"),
        ("text", "Verify Timeout Seconds", "2"),
    ]
    .iter()
    .map(|(t, l, v)| (t.to_string(), l.to_string(), v.to_string()))
    .collect()
}

/// `fake_config` without the fields labelled `drop`.
pub fn fake_config_without(url: &str, key: &Key, drop: &[&str]) -> Vec<(String, String, String)> {
    fake_config(url, key)
        .into_iter()
        .filter(|(_, l, _)| !drop.contains(&l.as_str()))
        .collect()
}

pub fn config_from(uid: &str, fields: &[(String, String, String)]) -> serde_json::Value {
    let f: Vec<(&str, &str, &str)> = fields
        .iter()
        .map(|(t, l, v)| (t.as_str(), l.as_str(), v.as_str()))
        .collect();
    config_record(uid, &f)
}

/// A vault with config record `cfg1` holding `cfg`, and PAM user record `user1`
/// for `login` recording `key` as `(label, access key id)`.
pub fn vault_with(
    cfg: &[(String, String, String)],
    login: &str,
    key: Option<(&str, &str)>,
) -> VaultFile {
    VaultFile::new(vec![
        config_from("cfg1", cfg),
        pam_user("user1", login, key),
    ])
}

pub fn fake_setup() -> FakeSetup {
    setup_on(FakeIam::start())
}

/// The usual setup on a given fake (for example one speaking HTTPS).
pub fn setup_on(iam: FakeIam) -> FakeSetup {
    iam.add_user("rotator", &["alice"]);
    iam.add_user("alice", &[]);
    let rotator = iam.add_key("rotator", "2024-01-01T00:00:00Z");
    let old = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let vault = vault_with(
        &fake_config(&iam.url, &rotator),
        "alice",
        Some(("aws_access_key_id", &old.id)),
    );
    FakeSetup {
        iam,
        vault,
        rotator,
        old,
    }
}

/// The user guide's own setup: one IAM user `alice` holds both the config's
/// key (`client`) and the rotated key, which the vault records under `label`.
pub struct GuideSetup {
    pub iam: FakeIam,
    pub vault: VaultFile,
    pub client: Key,
    pub rotated: Key,
}

pub fn guide_setup(label: &str) -> GuideSetup {
    let iam = FakeIam::start();
    iam.add_user("alice", &[]);
    let client = iam.add_key("alice", "2024-01-01T00:00:00Z");
    let rotated = iam.add_key("alice", "2024-02-01T00:00:00Z");
    let vault = vault_with(
        &fake_config(&iam.url, &client),
        "alice",
        Some((label, &rotated.id)),
    );
    GuideSetup {
        iam,
        vault,
        client,
        rotated,
    }
}

/// I1: key `id`, which a record holds, exists in IAM for `user`.
pub fn assert_key_exists(iam: &FakeIam, user: &str, id: &str) {
    let ids: Vec<String> = iam.keys(user).into_iter().map(|k| k.id).collect();
    assert!(
        ids.iter().any(|k| k.as_str() == id),
        "I1 violated: a record holds {id}, which IAM does not have for {user}: {ids:?}"
    );
}

/// I1 at rest for record `uid`: the key it records exists in IAM for `user`
/// (or nothing is recorded).
pub fn assert_record_key_exists(iam: &FakeIam, vault: &VaultFile, uid: &str, user: &str) {
    if let Some(id) = vault.field(uid, "aws_access_key_id") {
        assert_key_exists(iam, user, &id);
    }
}

/// I1 at rest for the usual setup: the key record `user1` records exists in
/// IAM for `user` (or nothing is recorded).
pub fn assert_vault_key_exists(iam: &FakeIam, vault: &VaultFile, user: &str) {
    assert_record_key_exists(iam, vault, "user1", user);
}

/// I1 against moto, which checks signatures: the key record `uid` holds
/// authenticates as IAM user `user`. Returns that key's id and secret.
pub fn assert_vault_key_works(
    moto: &Moto,
    vault: &VaultFile,
    uid: &str,
    user: &str,
) -> (String, String) {
    let id = vault
        .field(uid, "aws_access_key_id")
        .unwrap_or_else(|| panic!("{uid} records no key"));
    let secret = vault
        .field(uid, "aws_secret_access_key")
        .unwrap_or_else(|| panic!("{uid} records no secret"));
    let arn = moto
        .whoami(&id, &secret)
        .expect("the vault's key authenticates");
    assert!(arn.ends_with(&format!(":user/{user}")), "{uid}: {arn}");
    (id, secret)
}

/// I4 at rest: the vault is valid JSON, and still 0600 and owned by this user
/// (the fixtures' mode and owner; `local_files.rs` checks that other owners
/// and modes survive too).
pub fn assert_vault_at_rest(vault: &VaultFile) {
    use std::os::unix::fs::MetadataExt;
    let _: serde_json::Value = vault.json();
    let meta = std::fs::metadata(&vault.path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "I4: the vault's mode changed");
    // SAFETY: no preconditions.
    assert_eq!(
        meta.uid(),
        unsafe { libc::geteuid() },
        "I4: the vault's owner changed"
    );
}

/// A converged rotation of record `uid`: IAM user `user` has exactly one key,
/// the one the record holds, and the record holds its real secret.
pub fn assert_record_converged(iam: &FakeIam, vault: &VaultFile, uid: &str, user: &str) {
    let keys = iam.keys(user);
    assert_eq!(
        keys.len(),
        1,
        "{uid}: expected one key for {user}, got {keys:?}"
    );
    assert_eq!(
        vault.field(uid, "aws_access_key_id").as_deref(),
        Some(keys[0].id.as_str()),
        "{uid}: the vault's key is not IAM's"
    );
    assert_eq!(
        vault.field(uid, "aws_secret_access_key").as_deref(),
        Some(keys[0].secret.as_str()),
        "{uid}: the vault's secret does not match IAM's"
    );
}

/// `assert_record_converged` for the usual setup: `alice`'s record `user1`.
pub fn assert_converged(iam: &FakeIam, vault: &VaultFile) {
    assert_record_converged(iam, vault, "user1", "alice");
}
