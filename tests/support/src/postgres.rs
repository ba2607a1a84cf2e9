//! A real PostgreSQL on 127.0.0.1 for the PostgreSQL plugin's tests: its own
//! cluster in a temporary folder, run as the `postgres` user when the tests
//! run as root (CI), with scram-sha-256 logins, TLS from a test CA, and every
//! statement logged, so a test can read what reached the server. Also a
//! proxy that withholds the server's answer to a chosen statement.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use crate::tls::TestCa;

/// The superuser's password in every test cluster.
pub const SUPERUSER_PASSWORD: &str = "postgres-superuser-pw";

/// The folder of PostgreSQL's server programs: `$PG_BIN`, else the newest
/// of Debian's `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server (Debian package postgresql; .ci/run installs it)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

/// A running cluster; stopped when dropped.
pub struct PgServer {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// `--ca-file` for the host: the CA that signed the server's certificate.
    pub ca_file: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn checked(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PgServer {
    /// initdb, configure, start. Panics with the server's words if any step fails.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let bin = bin_dir();
        let port = free_port();
        let data = root.join("data");
        std::fs::write(root.join("pw"), SUPERUSER_PASSWORD).unwrap();
        let ca = TestCa::new();
        let ca_file = root.join("ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        if as_root() {
            // The server refuses to run as root: the cluster is `postgres`'s.
            checked(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(&root)
                    .output()
                    .unwrap(),
            );
        }
        let server = Self {
            _dir: dir,
            root,
            bin,
            port,
            ca_file,
        };
        server.as_owner(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", server.root.join("pw").display()),
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        for (name, pem) in [("server.crt", &ca.cert_pem), ("server.key", &ca.key_pem)] {
            server.owned_file(&data.join(name), pem);
        }
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             ssl = on\npassword_encryption = 'scram-sha-256'\nlog_statement = 'all'\n\
             fsync = off\nmax_connections = 20\nlog_connections = on\n",
            server.root.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        f.write_all(conf.as_bytes()).unwrap();
        server.owned_file(
            &data.join("pg_hba.conf"),
            "host all all 127.0.0.1/32 scram-sha-256\n",
        );
        let log = server.root.join("server.log");
        server.as_owner(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        server
    }

    fn owned_file(&self, path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if as_root() {
            checked(
                "chown",
                Command::new("chown")
                    .arg("postgres:")
                    .arg(path)
                    .output()
                    .unwrap(),
            );
        }
    }

    fn as_owner(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let out = if as_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        };
        checked(program, out.expect("run a PostgreSQL program"))
    }

    fn psql(&self, user: &str, password: &str, sql: &str) -> Output {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres sslmode=disable",
                self.port
            ))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql (Debian package postgresql-client)")
    }

    /// Runs `sql` as the superuser; returns its output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        let out = checked(sql, self.psql("postgres", SUPERUSER_PASSWORD, sql));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Whether `role` logs in with `password`.
    pub fn logs_in(&self, role: &str, password: &str) -> bool {
        self.psql(role, password, "SELECT 1").status.success()
    }

    /// Everything the server logged (every statement, with `log_statement = all`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// `tcp://127.0.0.1:PORT`, the config's `PostgreSQL Server`.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.root.join("data");
        let _ = self.as_owner_quiet(&["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]);
    }
}

impl PgServer {
    fn as_owner_quiet(&self, args: &[&str]) -> std::io::Result<Output> {
        let path = self.bin.join("pg_ctl");
        if as_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        }
    }
}

/// What the proxy does once the client sends `pattern`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// Forwards it, and closes both sides once the server has answered (the
    /// statement ran; the client never hears so).
    DropAfter,
    /// Forwards it, reports its arrival, and withholds the server's answer
    /// until `release`: the statement ran, and the client is killed waiting.
    Hold,
    /// Withholds the statement itself, reports its arrival, and closes at
    /// `release`: the server never runs it.
    Withhold,
}

struct Shared {
    released: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    fn wait_release(&self) {
        let mut released = self.released.lock().unwrap();
        while !*released {
            released = self.wake.wait(released).unwrap();
        }
    }
}

/// A plain-TCP proxy to a `PgServer` (TLS off: it reads the statements).
pub struct PgProxy {
    pub port: u16,
    shared: Arc<Shared>,
    sprung: Arc<Mutex<bool>>,
}

impl PgProxy {
    /// Proxies to 127.0.0.1:`to`; the first statement holding `pattern`
    /// springs `trap`. Returns the proxy and the receiver told of its arrival.
    pub fn start(to: u16, pattern: &'static str, trap: Trap) -> (Self, Receiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            released: Mutex::new(false),
            wake: Condvar::new(),
        });
        let (tx, rx) = channel();
        let s = shared.clone();
        let sprung = Arc::new(Mutex::new(false));
        let trap_sprung = sprung.clone();
        thread::spawn(move || {
            let sprung = trap_sprung;
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let (s, tx, sprung) = (s.clone(), tx.clone(), sprung.clone());
                thread::spawn(move || relay(client, server, pattern, trap, s, tx, sprung));
            }
        });
        (
            Self {
                port,
                shared,
                sprung,
            },
            rx,
        )
    }

    /// Whether the trap has sprung.
    pub fn sprung(&self) -> bool {
        *self.sprung.lock().unwrap()
    }

    /// Lets a held answer go: the proxy closes the trapped connection.
    pub fn release(&self) {
        *self.shared.released.lock().unwrap() = true;
        self.shared.wake.notify_all();
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

fn relay(
    client: TcpStream,
    server: TcpStream,
    pattern: &str,
    trap: Trap,
    shared: Arc<Shared>,
    tx: Sender<()>,
    sprung: Arc<Mutex<bool>>,
) {
    let trapped = Arc::new(Mutex::new(false));
    let (c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let t = trapped.clone();
    let pattern = pattern.as_bytes().to_vec();
    let (up_shared, up_tx, up_sprung) = (shared.clone(), tx.clone(), sprung.clone());
    let upstream = thread::spawn(move || {
        pump(c_in, &mut s_out, |chunk| {
            if !chunk
                .windows(pattern.len())
                .any(|w| w == pattern.as_slice())
            {
                return true;
            }
            if trap == Trap::Withhold && spring(&up_sprung) {
                let _ = up_tx.send(());
                up_shared.wait_release();
                return false;
            }
            // Marked before it is forwarded, so the answer comes after.
            *t.lock().unwrap() = true;
            true
        });
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (s_in, mut c_out) = (server, client);
    let s_close = s_in.try_clone().unwrap();
    // The first connection to send the pattern springs the trap: its answer
    // is not forwarded.
    pump(s_in, &mut c_out, |_| {
        if !(*trapped.lock().unwrap() && spring(&sprung)) {
            return true;
        }
        if trap == Trap::Hold {
            let _ = tx.send(());
            shared.wait_release();
        }
        false
    });
    let _ = c_out.shutdown(Shutdown::Both);
    let _ = s_close.shutdown(Shutdown::Both);
    let _ = upstream.join();
}

/// Copies `from` to `to` chunk by chunk until either side ends or `each`
/// returns false for a chunk, which is then not forwarded.
fn pump(mut from: TcpStream, to: &mut TcpStream, mut each: impl FnMut(&[u8]) -> bool) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || !each(&buf[..n]) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Springs the proxy's one trap: true only the first time.
fn spring(sprung: &Mutex<bool>) -> bool {
    !std::mem::replace(&mut *sprung.lock().unwrap(), true)
}
