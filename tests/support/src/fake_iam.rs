//! A fake IAM and STS Query API on 127.0.0.1 that keeps per-user keys, enforces
//! the two-key limit, checks SigV4 signatures, fails any call on demand, and
//! models IAM's eventual consistency on request.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::sigv4;
use crate::tls::TestCa;

/// The account of every fake user.
pub const ACCOUNT: &str = "123456789012";

/// The region every request must be signed for. IAM is signed for us-east-1,
/// the commercial partition's IAM signing region; STS for the config's AWS
/// Region, which is us-east-1 in every test.
pub const SIGNING_REGION: &str = "us-east-1";

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
    /// 503 with an HTML page, as a load balancer in front of the service
    /// answers: no AWS error in it; not carried out.
    HtmlUnavailable,
    /// 429 with a plain-text body, as a proxy in front answers; not carried out.
    TooManyRequests,
}

impl FaultKind {
    /// Every kind, for fault matrices (the timeout is meant to outlast the client's).
    pub fn all(timeout: Duration) -> [FaultKind; 9] {
        [
            Self::Throttle,
            Self::ServerError,
            Self::ResetBeforeProcessing,
            Self::ResetAfterProcessing,
            Self::Timeout(timeout),
            Self::MalformedXml,
            Self::AccessDenied,
            Self::HtmlUnavailable,
            Self::TooManyRequests,
        ]
    }
}

/// One call as the fake received it.
#[derive(Debug, Clone)]
pub struct Call {
    pub action: String,
    /// The `UserName` parameter; blank for STS.
    pub user: String,
    pub at: std::time::Instant,
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
    /// Calls of `action` to let through before the fault starts.
    skip: usize,
    remaining: usize,
}

/// An access key as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub secret: String,
    pub active: bool,
    pub created: String,
    /// A temporary credential's session token: requests must carry it.
    pub token: Option<String>,
}

#[derive(Debug, Default)]
struct User {
    keys: Vec<Key>,
    /// Users whose keys this user may manage.
    manages: Vec<String>,
}

/// What `ListAccessKeys` still shows of a user after a change (IAM's
/// read-after-write lag).
#[derive(Debug)]
struct StaleList {
    /// The keys as they were before the change.
    keys: Vec<Key>,
    /// How many more listings show them.
    remaining: usize,
}

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    faults: Vec<Fault>,
    calls: Vec<String>,
    /// Every call with the user it names (`UserName`, blank for STS) and when it arrived.
    log: Vec<Call>,
    next_key: u64,
    /// How many STS calls each key created by `CreateAccessKey` from now on fails.
    sts_lag: usize,
    /// Key id to the STS calls it still fails as unknown.
    sts_unknown: HashMap<String, usize>,
    /// How many `ListAccessKeys` calls show a user's keys as they were before
    /// a `CreateAccessKey` or `DeleteAccessKey`.
    list_lag: usize,
    /// User name to the stale view of its keys that listings still show.
    stale_lists: HashMap<String, StaleList>,
    hold: Option<Hold>,
    tampers: Vec<(String, Tamper)>,
    /// Every secret this fake ever issued, deleted keys included.
    issued: Vec<String>,
    /// `ListAccessKeys` returns at most this many keys a page (IAM's MaxItems).
    page_size: Option<usize>,
    /// Added to every answer: the network and service time of real IAM.
    latency: Duration,
    /// Key id to every use IAM recorded of it: when, and with which service.
    uses: HashMap<String, Vec<(SystemTime, &'static str)>>,
    /// Uses this recent are not reported yet by `GetAccessKeyLastUsed`
    /// (IAM's last-use data is not real time).
    use_lag: Duration,
    /// How many `CreateAccessKey` calls after a `DeleteAccessKey` still count
    /// the deleted key against the two-key quota.
    limit_lag: usize,
    /// User name to the creates that still count a just-deleted key.
    ghosts: HashMap<String, usize>,
    /// At most this many requests a second; the rest get IAM's `Throttling`.
    rate: Option<usize>,
    /// When the requests of the last second arrived.
    window: std::collections::VecDeque<std::time::Instant>,
    /// How many requests the rate limit turned away.
    throttled: usize,
}

/// An answer to hold back: the fake signals `arrived`, then waits on `release`.
struct Hold {
    action: String,
    /// Only a call for this user, if set.
    user: Option<String>,
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

    /// Temporary credentials of `user` (an `ASIA` id and a session token), as
    /// STS hands out: a request signed with them must carry the token.
    pub fn add_session_key(&self, user: &str) -> Key {
        let mut s = self.state.lock().unwrap();
        let mut key = new_key(&mut s, "2024-01-01T00:00:00Z");
        key.id = key.id.replacen("AKIA", "ASIA", 1);
        let token = format!("FakeSessionToken/{}", key.secret);
        s.issued.push(token.clone());
        key.token = Some(token);
        give(&mut s, user, key)
    }

    /// From now on, after a `DeleteAccessKey`, the next `creates`
    /// `CreateAccessKey` calls for that user still count the deleted key
    /// (IAM's eventual consistency): with two keys left they fail `LimitExceeded`.
    pub fn limit_lag(&self, creates: usize) {
        self.state.lock().unwrap().limit_lag = creates;
    }

    /// From now on, at most `per_second` requests a second are served; the
    /// rest are turned away unprocessed with IAM's `400 Throttling`.
    pub fn rate_limit(&self, per_second: usize) {
        self.state.lock().unwrap().rate = Some(per_second);
    }

    /// How many requests the rate limit turned away.
    pub fn throttled(&self) -> usize {
        self.state.lock().unwrap().throttled
    }

    /// Creates a key for `user`, as an administrator would.
    pub fn add_key(&self, user: &str, created: &str) -> Key {
        let mut s = self.state.lock().unwrap();
        let key = new_key(&mut s, created);
        give(&mut s, user, key)
    }

    /// Records that a consumer used `key_id` at `at` with `service`, as IAM
    /// would after a signed request (a real request records one too).
    pub fn record_use(&self, key_id: &str, at: SystemTime, service: &'static str) {
        let mut s = self.state.lock().unwrap();
        s.uses.entry(key_id.into()).or_default().push((at, service));
    }

    /// The clock moves on by `by`, as far as recorded uses go: each moves back.
    pub fn shift_uses(&self, by: Duration) {
        for uses in self.state.lock().unwrap().uses.values_mut() {
            for (at, _) in uses.iter_mut() {
                *at -= by;
            }
        }
    }

    /// From now on, `GetAccessKeyLastUsed` leaves out uses younger than `lag`.
    pub fn use_lag(&self, lag: Duration) {
        self.state.lock().unwrap().use_lag = lag;
    }

    pub fn deactivate(&self, user: &str, key_id: &str) {
        let mut s = self.state.lock().unwrap();
        for k in &mut s.users.get_mut(user).unwrap().keys {
            if k.id == key_id {
                k.active = false;
            }
        }
    }

    /// Deletes a key, as an administrator would in the console.
    pub fn delete_key(&self, user: &str, key_id: &str) {
        let mut s = self.state.lock().unwrap();
        s.users
            .get_mut(user)
            .unwrap()
            .keys
            .retain(|k| k.id != key_id);
    }

    /// The user's keys now.
    pub fn keys(&self, user: &str) -> Vec<Key> {
        self.state.lock().unwrap().users[user].keys.clone()
    }

    /// Fails the next `times` calls of `action` with `kind`.
    pub fn fail(&self, action: &str, kind: FaultKind, times: usize) {
        self.fail_after(action, 0, kind, times);
    }

    /// Lets the next `skip` calls of `action` through, then fails `times` with `kind`.
    pub fn fail_after(&self, action: &str, skip: usize, kind: FaultKind, times: usize) {
        self.state.lock().unwrap().faults.push(Fault {
            action: action.into(),
            kind,
            skip,
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

    /// Delays every answer by `latency`, as the network and IAM would.
    pub fn latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency = latency;
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

    /// Each key that `CreateAccessKey` creates from now on is unknown to STS
    /// for its first `calls` `GetCallerIdentity` calls (IAM's eventual
    /// consistency): they fail with `InvalidClientTokenId`. Older keys, and
    /// keys from `add_key`, are not affected.
    pub fn sts_lag(&self, calls: usize) {
        self.state.lock().unwrap().sts_lag = calls;
    }

    /// From now on, after each `CreateAccessKey` or `DeleteAccessKey`, the
    /// next `calls` `ListAccessKeys` calls (each page counts) for that user
    /// show its keys as they were before that change (IAM's read-after-write
    /// lag). A later change restarts the lag from the keys just before it.
    /// The two-key limit and every other action see the keys as they are.
    pub fn list_lag(&self, calls: usize) {
        self.state.lock().unwrap().list_lag = calls;
    }

    /// Every action received so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Every call received so far, with its user and arrival time.
    pub fn log(&self) -> Vec<Call> {
        self.state.lock().unwrap().log.clone()
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
        self.hold_call(action, None)
    }

    /// `hold`, for the next `action` on `user` only.
    pub fn hold_for(&self, action: &str, user: &str) -> Receiver<()> {
        self.hold_call(action, Some(user.into()))
    }

    fn hold_call(&self, action: &str, user: Option<String>) -> Receiver<()> {
        let (arrived_tx, arrived_rx) = channel();
        let (release_tx, release_rx) = channel::<()>();
        let mut s = self.state.lock().unwrap();
        // The release sender is parked in the state so `release` can find it.
        s.hold = Some(Hold {
            action: action.into(),
            user,
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

/// Gives `key` to `user`; returns it.
fn give(s: &mut State, user: &str, key: Key) -> Key {
    s.users
        .get_mut(user)
        .expect("user exists")
        .keys
        .push(key.clone());
    key
}

/// Remembers `user`'s keys as they are before a change, for `list_lag`.
fn before_change(s: &mut State, user: &str) {
    if s.list_lag == 0 {
        return;
    }
    let keys = s.users[user].keys.clone();
    let remaining = s.list_lag;
    s.stale_lists
        .insert(user.into(), StaleList { keys, remaining });
}

/// The keys `ListAccessKeys` shows for `user` now: a stale view while one lasts.
fn listed_keys(s: &mut State, user: &str) -> Vec<Key> {
    if let Some(stale) = s.stale_lists.get_mut(user) {
        stale.remaining -= 1;
        let keys = stale.keys.clone();
        if stale.remaining == 0 {
            s.stale_lists.remove(user);
        }
        return keys;
    }
    s.users[user].keys.clone()
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
        token: None,
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
        let latency = state.lock().unwrap().latency;
        if !latency.is_zero() {
            thread::sleep(latency);
        }
        let params: HashMap<String, String> =
            form_urlencoded::parse(&req.body).into_owned().collect();
        let action = params.get("Action").cloned().unwrap_or_default();
        let fault = {
            let mut s = state.lock().unwrap();
            s.calls.push(action.clone());
            s.log.push(Call {
                action: action.clone(),
                user: params.get("UserName").cloned().unwrap_or_default(),
                at: std::time::Instant::now(),
            });
            let f = s
                .faults
                .iter_mut()
                .find(|f| f.action == action && f.remaining > 0);
            f.and_then(|f| {
                if f.skip > 0 {
                    f.skip -= 1;
                    return None;
                }
                f.remaining -= 1;
                Some(f.kind)
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
        let over_rate = over_rate(&mut state.lock().unwrap());
        let (status, body) = match fault {
            _ if over_rate => error(400, "Throttling", "Rate exceeded"),
            None if deny.is_some() => error(403, "AccessDenied", deny.as_deref().unwrap_or("")),
            Some(FaultKind::Throttle) => error(400, "Throttling", "Rate exceeded"),
            Some(FaultKind::HtmlUnavailable) => (
                503,
                "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>".into(),
            ),
            Some(FaultKind::TooManyRequests) => (429, "Too Many Requests\n".into()),
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
                Some(h)
                    if h.action == action
                        && h.user.iter().all(|u| params.get("UserName") == Some(u)) =>
                {
                    s.hold.take()
                }
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
        let content_type = match fault {
            Some(FaultKind::HtmlUnavailable) => "text/html",
            Some(FaultKind::TooManyRequests) => "text/plain",
            _ => "text/xml",
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
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

/// Whether the rate limit turns this request away; counts it if so.
fn over_rate(s: &mut State) -> bool {
    let Some(rate) = s.rate else {
        return false;
    };
    let now = std::time::Instant::now();
    while s
        .window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        s.window.pop_front();
    }
    if s.window.len() >= rate {
        s.throttled += 1;
        return true;
    }
    s.window.push_back(now);
    false
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

/// The answer to a request whose signature `sigv4` refused.
fn refused(
    refusal: sigv4::Refusal,
    auth: &sigv4::Authorization,
    expected: &sigv4::Expected,
    req: &HttpRequest,
) -> (u16, String) {
    match refusal {
        sigv4::Refusal::WrongService => error(
            403,
            "SignatureDoesNotMatch",
            &format!(
                "Credential should be scoped to correct service: '{}'.",
                expected.service
            ),
        ),
        sigv4::Refusal::WrongRegion => error(
            403,
            "SignatureDoesNotMatch",
            &format!(
                "Credential should be scoped to a valid region, not '{}'.",
                auth.region
            ),
        ),
        sigv4::Refusal::BadSignature => error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        ),
        sigv4::Refusal::Expired => {
            let signed = req
                .headers
                .iter()
                .find(|(k, _)| k == "x-amz-date")
                .map_or("", |(_, v)| v.as_str());
            error(
                403,
                "RequestExpired",
                &format!(
                    "Signature expired: {signed} is more than 5 min. from the server's time {}.",
                    sigv4::format_amz_date(expected.now)
                ),
            )
        }
    }
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
    let expected = sigv4::Expected {
        region: SIGNING_REGION,
        service: if action == "GetCallerIdentity" {
            "sts"
        } else {
            "iam"
        },
        now: SystemTime::now(),
    };
    // The scope is checked before the key, as the service always was.
    if let Err(refusal) = sigv4::check_scope(&auth, &expected) {
        return refused(refusal, &auth, &expected, req);
    }
    let signer = s.users.iter().find_map(|(name, u)| {
        u.keys
            .iter()
            .find(|k| k.id == auth.key_id && k.active)
            .map(|k| (name.clone(), k.secret.clone(), k.token.clone()))
    });
    let Some((signer, secret, token)) = signer else {
        return error(
            403,
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
        );
    };
    // Temporary credentials: the session token must come, and be signed.
    if let Some(token) = token {
        let sent = req
            .headers
            .iter()
            .find(|(k, _)| k == "x-amz-security-token")
            .map(|(_, v)| v.as_str());
        let signed = auth
            .signed_headers
            .iter()
            .any(|h| h == "x-amz-security-token");
        if sent != Some(token.as_str()) || !signed {
            return error(
                403,
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            );
        }
    }
    if let Err(refusal) = sigv4::verify(&auth, &secret, &expected, &req.headers, &req.body) {
        return refused(refusal, &auth, &expected, req);
    }
    // IAM records the last use of a key on every authenticated request.
    s.uses
        .entry(auth.key_id.clone())
        .or_default()
        .push((SystemTime::now(), expected.service));
    if action == "GetAccessKeyLastUsed" {
        return last_used(&s, &signer, params);
    }
    if action == "GetCallerIdentity" {
        if let Some(left) = s.sts_unknown.get_mut(&auth.key_id) {
            *left -= 1;
            if *left == 0 {
                s.sts_unknown.remove(&auth.key_id);
            }
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
    // IAM user names are unique without regard to case, and found so.
    let target = match params.get("UserName") {
        Some(asked) => s
            .users
            .keys()
            .find(|name| name.eq_ignore_ascii_case(asked))
            .cloned()
            .unwrap_or_else(|| asked.clone()),
        None => signer.clone(),
    };
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
            let keys = &listed_keys(&mut s, &target);
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
            let ghost = match s.ghosts.get_mut(&target) {
                Some(left) => {
                    *left -= 1;
                    if *left == 0 {
                        s.ghosts.remove(&target);
                    }
                    1
                }
                None => 0,
            };
            if s.users[&target].keys.len() + ghost >= 2 {
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
            if s.sts_lag > 0 {
                let lag = s.sts_lag;
                s.sts_unknown.insert(key.id.clone(), lag);
            }
            before_change(&mut s, &target);
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
            match s.users[&target].keys.iter().position(|k| k.id == id) {
                Some(i) => {
                    before_change(&mut s, &target);
                    s.users.get_mut(&target).unwrap().keys.remove(i);
                    if s.limit_lag > 0 {
                        let lag = s.limit_lag;
                        s.ghosts.insert(target.clone(), lag);
                    }
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
        "UpdateAccessKey" => {
            let id = params.get("AccessKeyId").cloned().unwrap_or_default();
            let active = match params.get("Status").map(String::as_str) {
                Some("Active") => true,
                Some("Inactive") => false,
                _ => return error(400, "ValidationError", "Status must be Active or Inactive"),
            };
            let user = s.users.get_mut(&target).unwrap();
            match user.keys.iter_mut().find(|k| k.id == id) {
                Some(k) => {
                    k.active = active;
                    (
                        200,
                        "<UpdateAccessKeyResponse><ResponseMetadata/></UpdateAccessKeyResponse>"
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

/// `GetAccessKeyLastUsed`: names the key's owner, which `signer` must manage;
/// reports the latest use older than the lag, with `N/A` when there is none.
fn last_used(s: &State, signer: &str, params: &HashMap<String, String>) -> (u16, String) {
    let id = params.get("AccessKeyId").cloned().unwrap_or_default();
    let Some(owner) = s
        .users
        .iter()
        .find(|(_, u)| u.keys.iter().any(|k| k.id == id))
        .map(|(name, _)| name.clone())
    else {
        return error(
            404,
            "NoSuchEntity",
            &format!("The Access Key with id {id} cannot be found."),
        );
    };
    if owner != signer && !s.users[signer].manages.contains(&owner) {
        return error(
            403,
            "AccessDenied",
            &format!(
                "User {} is not authorized to perform iam:GetAccessKeyLastUsed on {}",
                FakeIam::arn(signer),
                FakeIam::arn(&owner)
            ),
        );
    }
    let cutoff = SystemTime::now() - s.use_lag;
    let last = s
        .uses
        .get(&id)
        .into_iter()
        .flatten()
        .filter(|(at, _)| *at <= cutoff)
        .max_by_key(|(at, _)| *at);
    let used = match last {
        Some((at, service)) => format!(
            "<LastUsedDate>{}</LastUsedDate><ServiceName>{service}</ServiceName><Region>{SIGNING_REGION}</Region>",
            iam_date(*at)
        ),
        None => "<ServiceName>N/A</ServiceName><Region>N/A</Region>".into(),
    };
    (
        200,
        format!(
            "<GetAccessKeyLastUsedResponse><GetAccessKeyLastUsedResult><UserName>{owner}</UserName><AccessKeyLastUsed>{used}</AccessKeyLastUsed></GetAccessKeyLastUsedResult></GetAccessKeyLastUsedResponse>"
        ),
    )
}

/// `at` as IAM writes dates: ISO 8601, UTC, whole seconds.
fn iam_date(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    /// Sends `action` signed by `key` for `region` at `at`; returns the status
    /// and the body.
    fn call_at(
        iam: &FakeIam,
        key: &Key,
        region: &str,
        at: SystemTime,
        action: &str,
        params: &[(&str, &str)],
    ) -> (u16, String) {
        let service = if action == "GetCallerIdentity" {
            "sts"
        } else {
            "iam"
        };
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action);
        for (k, v) in params {
            form.append_pair(k, v);
        }
        let body = form.finish();
        let host = iam.url.trim_start_matches("http://");
        let headers = vec![
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("host".to_string(), host.to_string()),
            ("x-amz-date".to_string(), sigv4::format_amz_date(at)),
        ];
        let auth = sigv4::authorization(
            &key.id,
            &key.secret,
            region,
            service,
            &headers,
            body.as_bytes(),
        )
        .expect("signable");
        let mut request = "POST / HTTP/1.1\r\n".to_string();
        for (k, v) in &headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!(
            "authorization: {auth}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
        let mut stream = TcpStream::connect(host).expect("connect to the fake");
        stream.write_all(request.as_bytes()).expect("send");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        let status = status
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length: ") {
                len = v.parse().expect("a length");
            }
        }
        let mut answer = vec![0; len];
        reader.read_exact(&mut answer).expect("body");
        (status, String::from_utf8(answer).expect("UTF-8"))
    }

    fn call(iam: &FakeIam, key: &Key, action: &str, params: &[(&str, &str)]) -> (u16, String) {
        call_at(iam, key, SIGNING_REGION, SystemTime::now(), action, params)
    }

    /// The text of the first `<tag>` in `xml`.
    fn field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
        let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
        let len = xml[start..].find(&format!("</{tag}>"))?;
        Some(&xml[start..start + len])
    }

    /// The key ids a `ListAccessKeys` answer names.
    fn listed(iam: &FakeIam, key: &Key) -> Vec<String> {
        let (status, body) = call(iam, key, "ListAccessKeys", &[]);
        assert_eq!(status, 200, "{body}");
        body.split("<AccessKeyId>")
            .skip(1)
            .filter_map(|s| s.split_once("</AccessKeyId>"))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    fn create(iam: &FakeIam, key: &Key) -> Key {
        let (status, body) = call(iam, key, "CreateAccessKey", &[]);
        assert_eq!(status, 200, "{body}");
        Key {
            id: field(&body, "AccessKeyId").unwrap().into(),
            secret: field(&body, "SecretAccessKey").unwrap().into(),
            active: true,
            created: String::new(),
            token: None,
        }
    }

    fn setup() -> (FakeIam, Key) {
        let iam = FakeIam::start();
        iam.add_user("alice", &[]);
        let old = iam.add_key("alice", "2023-01-01T00:00:00Z");
        (iam, old)
    }

    #[test]
    fn a_signed_call_succeeds() {
        let (iam, old) = setup();
        let (status, body) = call(&iam, &old, "GetCallerIdentity", &[]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(field(&body, "Arn"), Some(FakeIam::arn("alice").as_str()));
    }

    #[test]
    fn another_region_is_refused() {
        let (iam, old) = setup();
        for action in ["GetUser", "GetCallerIdentity"] {
            let (status, body) = call_at(&iam, &old, "us-west-2", SystemTime::now(), action, &[]);
            assert_eq!(status, 403, "{body}");
            assert_eq!(field(&body, "Code"), Some("SignatureDoesNotMatch"));
        }
    }

    #[test]
    fn a_skewed_date_is_refused() {
        let (iam, old) = setup();
        let now = SystemTime::now();
        let minutes = |m: u64| Duration::from_secs(60 * m);
        for at in [now - minutes(10), now + minutes(10)] {
            let (status, body) = call_at(&iam, &old, SIGNING_REGION, at, "GetUser", &[]);
            assert_eq!(status, 403, "{body}");
            assert_eq!(field(&body, "Code"), Some("RequestExpired"));
        }
        let (status, body) = call_at(&iam, &old, SIGNING_REGION, now - minutes(2), "GetUser", &[]);
        assert_eq!(status, 200, "{body}");
    }

    #[test]
    fn sts_lag_holds_back_only_new_keys() {
        let (iam, old) = setup();
        iam.sts_lag(2);
        let new = create(&iam, &old);
        for _ in 0..2 {
            let (status, body) = call(&iam, &new, "GetCallerIdentity", &[]);
            assert_eq!(status, 403, "{body}");
            assert_eq!(field(&body, "Code"), Some("InvalidClientTokenId"));
            // The old key's calls neither fail nor use up the new key's lag.
            assert_eq!(call(&iam, &old, "GetCallerIdentity", &[]).0, 200);
        }
        assert_eq!(call(&iam, &new, "GetCallerIdentity", &[]).0, 200);
        // IAM knows the new key at once.
        assert_eq!(call(&iam, &new, "GetUser", &[]).0, 200);
    }

    #[test]
    fn list_lag_shows_the_keys_from_before_each_change() {
        let (iam, old) = setup();
        assert_eq!(listed(&iam, &old), [old.id.as_str()]);
        iam.list_lag(2);
        let new = create(&iam, &old);
        let both = [old.id.as_str(), new.id.as_str()];
        assert_eq!(listed(&iam, &old), [old.id.as_str()]);
        assert_eq!(listed(&iam, &new), [old.id.as_str()]);
        assert_eq!(listed(&iam, &old), both);
        let (status, body) = call(&iam, &new, "DeleteAccessKey", &[("AccessKeyId", &old.id)]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(listed(&iam, &new), both);
        assert_eq!(listed(&iam, &new), both);
        assert_eq!(listed(&iam, &new), [new.id.as_str()]);
        assert_eq!(iam.keys("alice").len(), 1);
    }
}
