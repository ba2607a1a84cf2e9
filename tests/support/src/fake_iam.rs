//! A fake IAM and STS Query API on 127.0.0.1 that keeps per-user keys, enforces
//! the two-key limit, checks SigV4 signatures, and fails any call on demand.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::sigv4;
use crate::tls::TestCa;

/// The account of every fake user.
pub const ACCOUNT: &str = "123456789012";

/// One way to fail a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// 400 `Throttling`; the call is not carried out.
    Throttle,
    /// 500 `InternalFailure`; the call is not carried out.
    ServerError,
    /// The connection is closed after the request is read; not carried out.
    ResetBeforeProcessing,
    /// The call is carried out, then the connection is closed without an answer.
    ResetAfterProcessing,
    /// The call is carried out, then the answer is held back for this long.
    Timeout(Duration),
    /// The call is carried out, then answered 200 with broken XML.
    MalformedXml,
    /// 403 `AccessDenied`; not carried out.
    AccessDenied,
}

impl FaultKind {
    /// Every kind, for fault matrices (the timeout is meant to outlast the client's).
    pub fn all(timeout: Duration) -> [FaultKind; 7] {
        [
            Self::Throttle,
            Self::ServerError,
            Self::ResetBeforeProcessing,
            Self::ResetAfterProcessing,
            Self::Timeout(timeout),
            Self::MalformedXml,
            Self::AccessDenied,
        ]
    }
}

/// A lie or an oddity in an answer, modelling a broken or hostile endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    /// The call is carried out, then its answer is padded to `bytes` with whitespace.
    Oversize(usize),
    /// `CreateAccessKey` is carried out for the caller's user, but the answer
    /// names `user` and its key `id`.
    ForeignKey { user: String, id: String },
    /// `CreateAccessKey` creates its key with this id.
    KeyId(String),
    /// `ListAccessKeys` says every page is truncated: with a fresh marker each
    /// time, or with the same marker again.
    EndlessPages { repeat_marker: bool },
    /// `GetCallerIdentity` answers with this ARN.
    Arn(String),
    /// An `AccessDenied` whose message is this text.
    DenyWithMessage(String),
}

#[derive(Debug, Clone)]
struct Fault {
    action: String,
    kind: FaultKind,
    remaining: usize,
}

/// An access key as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub secret: String,
    pub active: bool,
    pub created: String,
}

#[derive(Debug, Default)]
struct User {
    keys: Vec<Key>,
    /// Users whose keys this user may manage.
    manages: Vec<String>,
}

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    faults: Vec<Fault>,
    calls: Vec<String>,
    next_key: u64,
    /// STS answers InvalidClientTokenId for this many calls with a new key.
    sts_lag: usize,
    hold: Option<Hold>,
    tampers: Vec<(String, Tamper)>,
    /// Every secret this fake ever issued, deleted keys included.
    issued: Vec<String>,
    /// `ListAccessKeys` returns at most this many keys a page (IAM's MaxItems).
    page_size: Option<usize>,
}

/// An answer to hold back: the fake signals `arrived`, then waits on `release`.
struct Hold {
    action: String,
    arrived: Sender<()>,
    release: Receiver<()>,
}

/// The fake server. Dropping it stops nothing: its threads end with the test.
#[derive(Clone)]
pub struct FakeIam {
    pub url: String,
    state: Arc<Mutex<State>>,
    releases: Arc<Mutex<Vec<Sender<()>>>>,
}

impl FakeIam {
    /// Starts a server on a free port of 127.0.0.1, speaking plain HTTP.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server speaking HTTPS with a certificate from `ca`.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::start_with(Some(ca.server.clone()))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                let tls = tls.clone();
                thread::spawn(move || match tls {
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).expect("TLS session");
                        serve(rustls::StreamOwned::new(conn, stream), state);
                    }
                    None => serve(stream, state),
                });
            }
        });
        Self {
            url,
            state,
            releases: Arc::default(),
        }
    }

    /// Creates a user; `manages` lists the users whose keys it may rotate.
    pub fn add_user(&self, name: &str, manages: &[&str]) {
        self.state.lock().unwrap().users.insert(
            name.into(),
            User {
                keys: vec![],
                manages: manages.iter().map(|s| s.to_string()).collect(),
            },
        );
    }

    /// Creates a key for `user`, as an administrator would.
    pub fn add_key(&self, user: &str, created: &str) -> Key {
        let mut s = self.state.lock().unwrap();
        let key = new_key(&mut s, created);
        s.users
            .get_mut(user)
            .expect("user exists")
            .keys
            .push(key.clone());
        key
    }

    pub fn deactivate(&self, user: &str, key_id: &str) {
        let mut s = self.state.lock().unwrap();
        for k in &mut s.users.get_mut(user).unwrap().keys {
            if k.id == key_id {
                k.active = false;
            }
        }
    }

    /// The user's keys now.
    pub fn keys(&self, user: &str) -> Vec<Key> {
        self.state.lock().unwrap().users[user].keys.clone()
    }

    /// Fails the next `times` calls of `action` with `kind`.
    pub fn fail(&self, action: &str, kind: FaultKind, times: usize) {
        self.state.lock().unwrap().faults.push(Fault {
            action: action.into(),
            kind,
            remaining: times,
        });
    }

    /// Tampers with every answer to `action` from now on.
    pub fn tamper(&self, action: &str, tamper: Tamper) {
        self.state
            .lock()
            .unwrap()
            .tampers
            .push((action.into(), tamper));
    }

    /// Pages `ListAccessKeys` answers, `size` keys a page.
    pub fn page_size(&self, size: usize) {
        self.state.lock().unwrap().page_size = Some(size);
    }

    /// Every secret access key the fake ever issued, deleted ones included.
    pub fn all_secrets(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// New keys fail STS for this many calls (IAM's eventual consistency).
    pub fn sts_lag(&self, calls: usize) {
        self.state.lock().unwrap().sts_lag = calls;
    }

    /// Every action received so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// How many times `action` was received.
    pub fn count(&self, action: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| *c == action)
            .count()
    }

    /// Holds the answer to the next `action` after carrying it out; the returned
    /// receiver fires when the call is in flight. `release` lets it go.
    pub fn hold(&self, action: &str) -> Receiver<()> {
        let (arrived_tx, arrived_rx) = channel();
        let (release_tx, release_rx) = channel::<()>();
        let mut s = self.state.lock().unwrap();
        // The release sender is parked in the state so `release` can find it.
        s.hold = Some(Hold {
            action: action.into(),
            arrived: arrived_tx,
            release: release_rx,
        });
        self.releases.lock().unwrap().push(release_tx);
        arrived_rx
    }

    /// Lets every held answer go.
    pub fn release(&self) {
        self.releases.lock().unwrap().clear();
    }

    /// The ARN of a fake user.
    pub fn arn(user: &str) -> String {
        format!("arn:aws:iam::{ACCOUNT}:user/{user}")
    }
}

fn new_key(s: &mut State, created: &str) -> Key {
    s.next_key += 1;
    let n = s.next_key;
    let secret = format!("fakeSecret{n:04}/{}", "x".repeat(26));
    s.issued.push(secret.clone());
    Key {
        id: format!("AKIAFAKE{n:012}"),
        secret,
        active: true,
        created: created.into(),
    }
}

struct HttpRequest {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<impl Read>) -> Option<HttpRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(HttpRequest { headers, body })
}

/// Serves requests one after another on one connection; returning drops (closes) it.
fn serve(stream: impl Read + Write, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader) {
        let params: HashMap<String, String> =
            form_urlencoded::parse(&req.body).into_owned().collect();
        let action = params.get("Action").cloned().unwrap_or_default();
        let fault = {
            let mut s = state.lock().unwrap();
            s.calls.push(action.clone());
            let f = s
                .faults
                .iter_mut()
                .find(|f| f.action == action && f.remaining > 0);
            f.map(|f| {
                f.remaining -= 1;
                f.kind
            })
        };
        let tampers: Vec<Tamper> = state
            .lock()
            .unwrap()
            .tampers
            .iter()
            .filter(|(a, _)| *a == action)
            .map(|(_, t)| t.clone())
            .collect();
        let deny = tampers.iter().find_map(|t| match t {
            Tamper::DenyWithMessage(m) => Some(m.clone()),
            _ => None,
        });
        let (status, body) = match fault {
            None if deny.is_some() => error(403, "AccessDenied", deny.as_deref().unwrap_or("")),
            Some(FaultKind::Throttle) => error(400, "Throttling", "Rate exceeded"),
            Some(FaultKind::ServerError) => error(500, "InternalFailure", "injected failure"),
            Some(FaultKind::AccessDenied) => error(403, "AccessDenied", "injected denial"),
            Some(FaultKind::ResetBeforeProcessing) => return,
            _ => handle(&state, &action, &params, &req, &tampers),
        };
        match fault {
            Some(FaultKind::ResetAfterProcessing) => return,
            Some(FaultKind::Timeout(d)) => {
                thread::sleep(d);
                return;
            }
            _ => {}
        }
        let hold = {
            let mut s = state.lock().unwrap();
            match &s.hold {
                Some(h) if h.action == action => s.hold.take(),
                _ => None,
            }
        };
        if let Some(hold) = hold {
            let _ = hold.arrived.send(());
            // Blocks until `release` drops the sender (or the test ends).
            let _ = hold.release.recv();
        }
        let mut body = if fault == Some(FaultKind::MalformedXml) {
            format!("<{action}Response><{action}Result><Broken").into_bytes()
        } else {
            body.into_bytes()
        };
        for t in &tampers {
            if let Tamper::Oversize(bytes) = t {
                body.resize((*bytes).max(body.len()), b' ');
            }
        }
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let out = reader.get_mut();
        if out
            .write_all(head.as_bytes())
            .and_then(|()| out.write_all(&body))
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Escapes text for an XML element; control characters become character references.
fn xml_escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            c if c.is_control() => format!("&#x{:x};", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>fake</RequestId></ErrorResponse>",
            xml_escape(message)
        ),
    )
}

fn handle(
    state: &Arc<Mutex<State>>,
    action: &str,
    params: &HashMap<String, String>,
    req: &HttpRequest,
    tampers: &[Tamper],
) -> (u16, String) {
    let mut s = state.lock().unwrap();
    // Authenticate: a known, active key with a valid signature.
    let Some(auth) = req
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .and_then(|(_, v)| sigv4::parse(v))
    else {
        return error(
            403,
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        );
    };
    let expected_service = if action == "GetCallerIdentity" {
        "sts"
    } else {
        "iam"
    };
    if auth.service != expected_service {
        return error(
            403,
            "SignatureDoesNotMatch",
            "wrong service in credential scope",
        );
    }
    let signer = s.users.iter().find_map(|(name, u)| {
        u.keys
            .iter()
            .find(|k| k.id == auth.key_id && k.active)
            .map(|k| (name.clone(), k.secret.clone()))
    });
    let Some((signer, secret)) = signer else {
        return error(
            403,
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
        );
    };
    if !sigv4::verify(&auth, &secret, &req.headers, &req.body) {
        return error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    if action == "GetCallerIdentity" {
        if s.sts_lag > 0 {
            s.sts_lag -= 1;
            return error(
                403,
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            );
        }
        let arn = tampers
            .iter()
            .find_map(|t| match t {
                Tamper::Arn(a) => Some(a.clone()),
                _ => None,
            })
            .unwrap_or_else(|| FakeIam::arn(&signer));
        return (
            200,
            format!(
                "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AID</UserId><Account>{ACCOUNT}</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"
            ),
        );
    }
    let target = params.get("UserName").cloned().unwrap_or(signer.clone());
    let allowed = signer == target || s.users[&signer].manages.contains(&target);
    if !s.users.contains_key(&target) {
        return error(
            404,
            "NoSuchEntity",
            &format!("The user with name {target} cannot be found."),
        );
    }
    if !allowed {
        return error(
            403,
            "AccessDenied",
            &format!(
                "User {} is not authorized to perform iam:{action} on {}",
                FakeIam::arn(&signer),
                FakeIam::arn(&target)
            ),
        );
    }
    match action {
        "GetUser" => (
            200,
            format!(
                "<GetUserResponse><GetUserResult><User><Path>/</Path><UserName>{target}</UserName><UserId>AID</UserId><Arn>{}</Arn><CreateDate>2024-01-01T00:00:00Z</CreateDate></User></GetUserResult></GetUserResponse>",
                FakeIam::arn(&target)
            ),
        ),
        "ListAccessKeys" => {
            let keys = &s.users[&target].keys;
            let start: usize = params
                .get("Marker")
                .and_then(|m| m.strip_prefix("page-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let end = s
                .page_size
                .map_or(keys.len(), |n| (start + n).min(keys.len()));
            let endless = tampers.iter().find_map(|t| match t {
                Tamper::EndlessPages { repeat_marker } => Some(*repeat_marker),
                _ => None,
            });
            let next = match endless {
                Some(true) => Some("page-0".to_string()),
                Some(false) => Some(format!("page-{}", start + 1)),
                None => (end < keys.len()).then(|| format!("page-{end}")),
            };
            let page = if endless.is_some() {
                &keys[..0]
            } else {
                &keys[start.min(end)..end]
            };
            let members: String = page
                .iter()
                .map(|k| {
                    format!(
                        "<member><UserName>{target}</UserName><AccessKeyId>{}</AccessKeyId><Status>{}</Status><CreateDate>{}</CreateDate></member>",
                        xml_escape(&k.id),
                        if k.active { "Active" } else { "Inactive" },
                        k.created
                    )
                })
                .collect();
            (
                200,
                format!(
                    "<ListAccessKeysResponse><ListAccessKeysResult><UserName>{target}</UserName><AccessKeyMetadata>{members}</AccessKeyMetadata>{}</ListAccessKeysResult></ListAccessKeysResponse>",
                    match next {
                        Some(m) => format!("<IsTruncated>true</IsTruncated><Marker>{m}</Marker>"),
                        None => "<IsTruncated>false</IsTruncated>".to_string(),
                    }
                ),
            )
        }
        "CreateAccessKey" => {
            if s.users[&target].keys.len() >= 2 {
                return error(
                    409,
                    "LimitExceeded",
                    "Cannot exceed quota for AccessKeysPerUser: 2",
                );
            }
            let mut key = new_key(&mut s, "2026-11-24T00:00:00Z");
            for t in tampers {
                if let Tamper::KeyId(id) = t {
                    key.id = id.clone();
                }
            }
            s.users.get_mut(&target).unwrap().keys.push(key.clone());
            let (user, id) = tampers
                .iter()
                .find_map(|t| match t {
                    Tamper::ForeignKey { user, id } => Some((user.clone(), id.clone())),
                    _ => None,
                })
                .unwrap_or((target.clone(), key.id.clone()));
            (
                200,
                format!(
                    "<CreateAccessKeyResponse><CreateAccessKeyResult><AccessKey><UserName>{}</UserName><AccessKeyId>{}</AccessKeyId><Status>Active</Status><SecretAccessKey>{}</SecretAccessKey></AccessKey></CreateAccessKeyResult></CreateAccessKeyResponse>",
                    xml_escape(&user),
                    xml_escape(&id),
                    key.secret
                ),
            )
        }
        "DeleteAccessKey" => {
            let id = params.get("AccessKeyId").cloned().unwrap_or_default();
            let keys = &mut s.users.get_mut(&target).unwrap().keys;
            match keys.iter().position(|k| k.id == id) {
                Some(i) => {
                    keys.remove(i);
                    (
                        200,
                        "<DeleteAccessKeyResponse><ResponseMetadata/></DeleteAccessKeyResponse>"
                            .into(),
                    )
                }
                None => error(
                    404,
                    "NoSuchEntity",
                    &format!("The Access Key with id {id} cannot be found."),
                ),
            }
        }
        _ => error(400, "InvalidAction", "unknown action"),
    }
}
