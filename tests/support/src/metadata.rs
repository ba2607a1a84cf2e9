//! Fake credential endpoints of the AWS credential chain on 127.0.0.1: ECS
//! container credentials and EC2 IMDSv2. Each serves one temporary
//! credential, and refuses what the real one refuses: ECS a request without
//! the container's authorization token, IMDSv2 a metadata read without the
//! session token from `PUT /latest/api/token` (there is no IMDSv1 here).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::json;
use tiny_http::{Header, Method, Response, Server};

/// The credential a fake hands out.
#[derive(Debug, Clone)]
pub struct Served {
    pub key_id: String,
    pub secret: String,
    pub token: String,
}

/// A running fake; stops when dropped.
pub struct FakeMetadata {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

/// The session token the IMDSv2 fake hands out (a secret, for leak scans).
pub const IMDS_TOKEN: &str = "imds-session-token-0123456789";
const ROLE: &str = "rotator-instance-role";

impl FakeMetadata {
    /// ECS: `GET /creds` with `Authorization: auth` answers the credential.
    pub fn ecs(creds: Served, auth: &str) -> Self {
        Self::ecs_until(creds, auth, FAR_FUTURE)
    }

    /// `ecs`, its credential expiring at `expiration` (RFC 3339).
    pub fn ecs_until(creds: Served, auth: &str, expiration: &str) -> Self {
        let auth = auth.to_string();
        let expiration = expiration.to_string();
        Self::start(move |method, path, header| {
            if method != Method::Get || path != "/creds" {
                return (404, String::new(), None);
            }
            if header("authorization").as_deref() != Some(auth.as_str()) {
                return (401, "missing or wrong authorization token".into(), None);
            }
            (200, credential_json(&creds, &expiration), None)
        })
    }

    /// IMDSv2: the token handshake, the role listing, then the role's credential.
    pub fn imds(creds: Served) -> Self {
        Self::start(move |method, path, header| {
            if method == Method::Put && path == "/latest/api/token" {
                return match header("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(ttl) => (200, IMDS_TOKEN.into(), Some(ttl)),
                    None => (400, "missing token TTL".into(), None),
                };
            }
            if header("x-aws-ec2-metadata-token").as_deref() != Some(IMDS_TOKEN) {
                return (401, String::new(), None);
            }
            match path {
                // No trailing newline: the SDK uses the body as the role name.
                "/latest/meta-data/iam/security-credentials/" => (200, ROLE.into(), None),
                p if p == format!("/latest/meta-data/iam/security-credentials/{ROLE}") => {
                    (200, credential_json(&creds, FAR_FUTURE), None)
                }
                _ => (404, String::new(), None),
            }
        })
    }

    fn start(
        answer: impl Fn(Method, &str, &dyn Fn(&str) -> Option<String>) -> (u16, String, Option<String>)
        + Send
        + 'static,
    ) -> Self {
        let server = Arc::new(Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (srv, seen) = (server.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let header = |name: &str| {
                    request
                        .headers()
                        .iter()
                        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                        .map(|h| h.value.as_str().to_string())
                };
                let (status, body, ttl) = answer(request.method().clone(), request.url(), &header);
                seen.lock().unwrap().push(format!(
                    "{} {} {status}",
                    request.method(),
                    request.url()
                ));
                let mut response = Response::from_string(body).with_status_code(status);
                if let Some(ttl) = ttl {
                    response.add_header(
                        Header::from_bytes("x-aws-ec2-metadata-token-ttl-seconds", ttl).unwrap(),
                    );
                }
                let _ = request.respond(response);
            }
        });
        Self {
            url,
            log,
            server,
            thread: Some(thread),
        }
    }

    /// `METHOD PATH STATUS` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FakeMetadata {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

fn credential_json(c: &Served, expiration: &str) -> String {
    json!({
        "Code": "Success",
        "LastUpdated": "2026-11-26T00:00:00Z",
        "Type": "AWS-HMAC",
        "AccessKeyId": c.key_id,
        "SecretAccessKey": c.secret,
        "Token": c.token,
        "Expiration": expiration,
    })
    .to_string()
}
