//! moto's IAM/STS server on 127.0.0.1, with signatures and policies enforced.
//!
//! moto comes from PyPI (`moto[server]`); `.ci/run` and `scripts/test` install it
//! into `.venv`. `MOTO_SERVER` may point at another `moto_server`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running moto server with an administrator for setting up and inspecting it.
pub struct Moto {
    pub url: String,
    child: Child,
    python: PathBuf,
    admin: (String, String),
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn moto_server() -> PathBuf {
    let path = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/moto_server"));
    assert!(
        path.is_file(),
        "moto_server not found at {}: run `scripts/test` (it installs moto into .venv), or set MOTO_SERVER",
        path.display()
    );
    path
}

impl Moto {
    /// Starts moto on a free port; the first three calls bootstrap an administrator.
    pub fn start() -> Self {
        // The port is free when picked, but a parallel test may take it before
        // moto binds it: moto then exits, and is started again on another.
        for _ in 0..5 {
            if let Some(moto) = Self::try_start() {
                return moto;
            }
        }
        panic!("moto_server exited at start five times (ports taken?)");
    }

    fn try_start() -> Option<Self> {
        let server = moto_server();
        let python = server.with_file_name("python");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let url = format!("http://127.0.0.1:{port}");
        let mut moto = Self {
            url,
            child,
            python,
            admin: (String::new(), String::new()),
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if moto.exited() {
                return None;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            sleep(Duration::from_millis(100));
        }
        let admin = match moto.try_helper(&["bootstrap"]) {
            Ok(admin) => admin,
            Err(_) if moto.exited() => return None,
            Err(e) => panic!("moto_iam.py bootstrap failed: {e}"),
        };
        moto.admin = (
            admin["key_id"].as_str().unwrap().into(),
            admin["secret"].as_str().unwrap().into(),
        );
        Some(moto)
    }

    /// Whether the server process has ended.
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn helper(&self, args: &[&str]) -> Value {
        self.try_helper(args)
            .unwrap_or_else(|e| panic!("moto_iam.py {args:?} failed: {e}"))
    }

    fn try_helper(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(&self.python)
            .arg(repo_root().join("tests/moto/moto_iam.py"))
            .args(["--endpoint", &self.url])
            .args(args)
            .env("MOTO_ADMIN_KEY", &self.admin.0)
            .env("MOTO_ADMIN_SECRET", &self.admin.1)
            .output()
            .expect("run tests/moto/moto_iam.py");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).expect("moto_iam.py prints JSON"))
    }

    /// Creates a user; with `policy_on`, it gets the user guide's four actions.
    pub fn user(&self, name: &str, policy_on: Option<&str>) -> String {
        self.user_with(name, policy_on, &[])
    }

    /// Like `user`, with `also` allowed beside the guide's four actions.
    pub fn user_with(&self, name: &str, policy_on: Option<&str>, also: &[&str]) -> String {
        let mut args = vec!["user", name];
        if let Some(target) = policy_on {
            args.extend(["--policy-on", target]);
        }
        for action in also {
            args.extend(["--also", action]);
        }
        self.helper(&args)["arn"].as_str().unwrap().into()
    }

    /// The user's keys with their status (`Active` or `Inactive`).
    pub fn key_statuses(&self, user: &str) -> Vec<(String, String)> {
        self.helper(&["keys", user])
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["id"].as_str().unwrap().to_string(),
                    k["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Creates a key; returns its id and secret.
    pub fn create_key(&self, user: &str) -> (String, String) {
        let k = self.helper(&["create-key", user]);
        (
            k["key_id"].as_str().unwrap().into(),
            k["secret"].as_str().unwrap().into(),
        )
    }

    pub fn deactivate(&self, user: &str, key_id: &str) {
        self.helper(&["deactivate", user, key_id]);
    }

    /// The user's key ids.
    pub fn keys(&self, user: &str) -> Vec<String> {
        self.helper(&["keys", user])
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Creates role `name`, which the key's user may assume and which holds the
    /// guide's four actions, and assumes it with that key: the temporary key id,
    /// secret and session token.
    pub fn assume_role(&self, name: &str, key_id: &str, secret: &str) -> (String, String, String) {
        let c = self.helper(&["assume-role", name, key_id, secret]);
        let field = |k: &str| {
            c[k].as_str()
                .unwrap_or_else(|| panic!("no {k} in {c}"))
                .to_string()
        };
        (field("key_id"), field("secret"), field("token"))
    }

    /// STS GetCallerIdentity with a key: its ARN, or the error code.
    /// Creates role `name` with the guide's four actions, which the key's user
    /// may assume; returns its ARN.
    pub fn role(&self, name: &str, key_id: &str, secret: &str) -> String {
        self.helper(&["role", name, key_id, secret])["arn"]
            .as_str()
            .unwrap()
            .into()
    }

    /// Lets the next `count` requests through without a signature; moto
    /// checks every later one again.
    pub fn unsigned_next(&self, count: u32) {
        self.helper(&["unsigned-next", &count.to_string()]);
    }

    pub fn whoami(&self, key_id: &str, secret: &str) -> Result<String, String> {
        let v = self.helper(&["whoami", key_id, secret]);
        match v["arn"].as_str() {
            Some(arn) => Ok(arn.into()),
            None => Err(v["error"].as_str().unwrap_or("?").into()),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
