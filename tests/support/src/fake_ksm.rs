//! A fake Keeper Secrets Manager server on 127.0.0.1, over real HTTPS, for the
//! real SDK inside `rotate-host`. It speaks Keeper's protocol as
//! keeper-secrets-manager-core does (and as the Python SDK's `mock.py` models):
//!
//! - the SDK wraps each request's AES key (the transmission key) for the
//!   server's P-256 key, which the test config names (`serverPublicKey`, the
//!   custom-key setting Keeper uses for its IL5 environment); the fake unwraps
//!   it by ECDH, decrypts the request and encrypts its answer with it;
//! - records are encrypted as Keeper does: data under a per-record key, that
//!   key under the application key (AES-256-GCM, nonce first);
//! - records keep revisions: an update naming an old revision is refused;
//! - the rotation transaction stages an update; `finalize_secret_update`
//!   commits it, `rollback_secret_update` drops it, and a second update while
//!   one is open is refused. Keeper does not document what readers see
//!   meanwhile: by default the committed data, and with `show_staged` the
//!   staged data, so tests can hold I1 under both readings;
//! - any endpoint can fail, before or after it takes effect, or be held.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use p256::{PublicKey, SecretKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::tls::TestCa;

/// The answer Keeper's service gives to an update of a stale revision. The
/// real code is not documented; the host recognises it by its words.
pub const CONFLICT_CODE: &str = "out_of_sync";

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("random bytes");
    b
}

fn secret_key() -> SecretKey {
    loop {
        if let Ok(k) = SecretKey::from_slice(&random::<32>()) {
            return k;
        }
    }
}

fn seal(key: &[u8], plain: &[u8]) -> Vec<u8> {
    let nonce = random::<12>();
    let mut out = nonce.to_vec();
    out.extend(
        Aes256Gcm::new_from_slice(key)
            .unwrap()
            .encrypt(Nonce::from_slice(&nonce), plain)
            .expect("encrypt"),
    );
    out
}

fn open(key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 {
        return None;
    }
    Aes256Gcm::new_from_slice(key)
        .ok()?
        .decrypt(Nonce::from_slice(&sealed[..12]), &sealed[12..])
        .ok()
}

/// Decodes base64 the way the SDK writes it: URL-safe or standard, padded or not.
fn unbase64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=').replace('+', "-").replace('/', "_");
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// How an endpoint misbehaves, once per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer 500 without doing anything.
    Before,
    /// Do it, then answer 500 (the client cannot tell it happened).
    After,
    /// Answer 403 `throttled`, asking for a minute's pause (Keeper's throttling).
    Throttle,
    /// Answer this call normally: aims the faults queued after it at later calls.
    Pass,
}

struct Held {
    endpoint: String,
    arrived: Sender<()>,
    release: Receiver<()>,
}

struct Stored {
    key: [u8; 32],
    data: Value,
    revision: i64,
    staged: Option<Value>,
}

impl Stored {
    fn visible(&self, show_staged: bool) -> &Value {
        match &self.staged {
            Some(staged) if show_staged => staged,
            _ => &self.data,
        }
    }
}

#[derive(Default)]
struct State {
    records: BTreeMap<String, Stored>,
    faults: HashMap<String, Vec<Fault>>,
    held: Vec<Held>,
    calls: Vec<String>,
    folders: Vec<(String, [u8; 32])>,
    show_staged: bool,
    /// Per record: the data of every update accepted, staged or not, in order.
    writes: HashMap<String, Vec<Value>>,
}

/// The host name the fake answers for. The SDK always connects to port 443
/// of the config's host, so the test reaches the fake as an HTTPS proxy
/// (`HTTPS_PROXY`, which the SDK's client honours): the fake answers the
/// `CONNECT`, then terminates TLS for this name with the test CA's certificate.
pub const HOST: &str = "fake.ksm.test";

/// A running fake; its threads end with the test process.
pub struct FakeKsm {
    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub proxy: String,
    /// The config's `hostname`.
    pub host: String,
    app_key: [u8; 32],
    client_key: SecretKey,
    server_key: SecretKey,
    state: Arc<Mutex<State>>,
    releases: Arc<Mutex<Vec<Sender<()>>>>,
}

impl FakeKsm {
    /// Starts the server; `ca` must hold a certificate for `HOST` (the SDK
    /// verifies it: the test points `SSL_CERT_FILE` at the CA).
    pub fn start(ca: &TestCa) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let proxy = format!("http://{}", listener.local_addr().unwrap());
        let server_key = secret_key();
        let app_key = random::<32>();
        let state = Arc::new(Mutex::new(State::default()));
        let (shared, key, tls) = (state.clone(), server_key.clone(), ca.server.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, key, tls) = (shared.clone(), key.clone(), tls.clone());
                thread::spawn(move || {
                    let Some(stream) = accept_connect(stream) else {
                        return;
                    };
                    let conn = rustls::ServerConnection::new(tls).expect("TLS session");
                    serve(
                        rustls::StreamOwned::new(conn, stream),
                        &state,
                        &key,
                        &app_key,
                    );
                });
            }
        });
        Self {
            proxy,
            host: HOST.into(),
            app_key,
            client_key: secret_key(),
            server_key,
            state,
            releases: Arc::default(),
        }
    }

    /// A client config for this server, as Keeper's tools write it once a
    /// one-time token is redeemed.
    pub fn config(&self) -> Value {
        let point = self.server_key.public_key().to_encoded_point(false);
        json!({
            "hostname": self.host,
            "clientId": STANDARD.encode(random::<32>()),
            "privateKey": STANDARD.encode(self.client_key.to_pkcs8_der().unwrap().as_bytes()),
            "appKey": STANDARD.encode(self.app_key),
            "serverPublicKeyId": "10",
            "serverPublicKey": URL_SAFE_NO_PAD.encode(point.as_bytes()),
            "appOwnerPublicKey": URL_SAFE_NO_PAD.encode(
                secret_key().public_key().to_encoded_point(false).as_bytes()
            ),
        })
    }

    /// The config's private values, for leak scans.
    pub fn config_secrets(&self) -> Vec<String> {
        let c = self.config();
        vec![
            c["privateKey"].as_str().unwrap().to_string(),
            c["appKey"].as_str().unwrap().to_string(),
        ]
    }

    /// Adds a record shared with the application: `data` is Keeper's record
    /// data (`type`, `title`, `fields`, `custom`).
    pub fn add_record(&self, uid: &str, data: Value) {
        self.state.lock().unwrap().records.insert(
            uid.into(),
            Stored {
                key: random::<32>(),
                data,
                revision: 1,
                staged: None,
            },
        );
    }

    /// Adds a shared folder the application may create records in.
    pub fn add_folder(&self, uid: &str) {
        self.state
            .lock()
            .unwrap()
            .folders
            .push((uid.into(), random::<32>()));
    }

    /// Readers see a staged rotation before it is committed.
    pub fn show_staged(&self) {
        self.state.lock().unwrap().show_staged = true;
    }

    /// Record `uid` as readers see it.
    pub fn record(&self, uid: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        s.records.get(uid).map(|r| r.visible(s.show_staged).clone())
    }

    /// The first value of the field labelled `label` in record `uid`.
    pub fn field(&self, uid: &str, label: &str) -> Option<String> {
        crate::vault::first_value(&self.record(uid)?, label)
    }

    pub fn revision(&self, uid: &str) -> i64 {
        self.state.lock().unwrap().records[uid].revision
    }

    /// The data of every update of `uid` the fake accepted, staged or not, in order.
    pub fn writes(&self, uid: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.writes.get(uid).cloned().unwrap_or_default()
    }

    /// Whether a rotation transaction is open on `uid`.
    pub fn open_transaction(&self, uid: &str) -> bool {
        self.state.lock().unwrap().records[uid].staged.is_some()
    }

    /// Someone else edits record `uid` (a note), so its revision moves.
    pub fn touch(&self, uid: &str) {
        let mut s = self.state.lock().unwrap();
        let r = s.records.get_mut(uid).expect("record exists");
        r.data["notes"] = json!("edited by someone else");
        r.revision += 1;
    }

    /// The next call to `endpoint` fails this way.
    pub fn fail(&self, endpoint: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(endpoint.into())
            .or_default()
            .push(fault);
    }

    /// Holds the next call to `endpoint` before it takes effect: `arrived`
    /// fires, and it waits for `release`.
    pub fn hold(&self, endpoint: &str) -> Receiver<()> {
        let (arrived_tx, arrived_rx) = channel();
        let (release_tx, release_rx) = channel();
        self.state.lock().unwrap().held.push(Held {
            endpoint: endpoint.into(),
            arrived: arrived_tx,
            release: release_rx,
        });
        self.releases.lock().unwrap().push(release_tx);
        arrived_rx
    }

    /// Lets every held call go.
    pub fn release(&self) {
        self.releases.lock().unwrap().clear();
    }

    /// The endpoints called so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
}

/// Reads a proxy `CONNECT` for `HOST:443` and agrees to it.
fn accept_connect(mut stream: std::net::TcpStream) -> Option<std::net::TcpStream> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
        if head.len() > 8192 {
            return None;
        }
    }
    let line = String::from_utf8_lossy(&head);
    if !line.starts_with(&format!("CONNECT {HOST}:443 ")) {
        let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n");
        return None;
    }
    stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .ok()?;
    Some(stream)
}

struct Request {
    path: String,
    transmission_key: Option<String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut len, mut transmission_key) = (0, None);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "transmissionkey" => transmission_key = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        transmission_key,
        body,
    })
}

fn respond(stream: &mut impl Write, status: u16, body: &[u8]) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

fn serve(
    stream: impl Read + Write,
    state: &Mutex<State>,
    server_key: &SecretKey,
    app_key: &[u8; 32],
) {
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader) {
        let (status, body) = answer(&req, state, server_key, app_key);
        if respond(reader.get_mut(), status, &body).is_err() {
            return;
        }
    }
}

/// The transmission key, unwrapped as the SDK's `public_encrypt` wrapped it:
/// ephemeral point (65 bytes), then AES-GCM under SHA-256 of the ECDH secret.
fn transmission_key(header: &str, server_key: &SecretKey) -> Option<Vec<u8>> {
    let wrapped = STANDARD.decode(header).ok()?;
    let point = PublicKey::from_sec1_bytes(wrapped.get(..65)?).ok()?;
    let shared = p256::ecdh::diffie_hellman(server_key.to_nonzero_scalar(), point.as_affine());
    let key = Sha256::digest(shared.raw_secret_bytes());
    open(&key, &wrapped[65..])
}

fn error(code: &str, message: &str) -> (u16, Vec<u8>) {
    (
        400,
        json!({"result_code": code, "message": message})
            .to_string()
            .into_bytes(),
    )
}

fn answer(
    req: &Request,
    state: &Mutex<State>,
    server_key: &SecretKey,
    app_key: &[u8; 32],
) -> (u16, Vec<u8>) {
    let endpoint = req.path.rsplit('/').next().unwrap_or_default().to_string();
    let Some(tk) = req
        .transmission_key
        .as_deref()
        .and_then(|h| transmission_key(h, server_key))
    else {
        // Not "key": the SDK answers that by retrying with another server key, forever.
        return error("bad_request", "the transmission key could not be unwrapped");
    };
    let Some(payload) = open(&tk, &req.body).and_then(|p| serde_json::from_slice::<Value>(&p).ok())
    else {
        return error("bad_request", "the payload could not be decrypted");
    };
    let held = {
        let mut s = state.lock().unwrap();
        s.calls.push(endpoint.clone());
        s.held
            .iter()
            .position(|h| h.endpoint == endpoint)
            .map(|i| s.held.remove(i))
    };
    if let Some(h) = held {
        let _ = h.arrived.send(());
        let _ = h.release.recv();
    }
    let mut s = state.lock().unwrap();
    let fault = s.faults.get_mut(&endpoint).and_then(|f| {
        if f.is_empty() {
            None
        } else {
            Some(f.remove(0))
        }
    });
    if fault == Some(Fault::Before) {
        return (
            500,
            b"{\"result_code\":\"error\",\"message\":\"injected\"}".to_vec(),
        );
    }
    if fault == Some(Fault::Throttle) {
        return (403, br#"{"error":"throttled","retry_after":60}"#.to_vec());
    }
    let (status, plain) = handle(&endpoint, &payload, &mut s, app_key);
    if fault == Some(Fault::After) {
        return (
            500,
            b"{\"result_code\":\"error\",\"message\":\"injected\"}".to_vec(),
        );
    }
    match (status, plain) {
        (200, Some(v)) => (200, seal(&tk, v.to_string().as_bytes())),
        (200, None) => (200, vec![]),
        (status, Some(v)) => (status, v.to_string().into_bytes()),
        (status, None) => (status, vec![]),
    }
}

fn handle(
    endpoint: &str,
    payload: &Value,
    s: &mut State,
    app_key: &[u8; 32],
) -> (u16, Option<Value>) {
    let refuse =
        |code: &str, message: &str| (400, Some(json!({"result_code": code, "message": message})));
    let uid = payload["recordUid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match endpoint {
        "get_secret" => {
            let wanted: Option<Vec<&str>> = payload["requestedRecords"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect());
            let show_staged = s.show_staged;
            let records: Vec<Value> = s
                .records
                .iter()
                .filter(|(uid, _)| wanted.as_ref().is_none_or(|w| w.contains(&uid.as_str())))
                .map(|(uid, r)| {
                    json!({
                        "recordUid": uid,
                        "recordKey": STANDARD.encode(seal(app_key, &r.key)),
                        "data": STANDARD.encode(seal(&r.key, r.visible(show_staged).to_string().as_bytes())),
                        "revision": r.revision,
                        "isEditable": true,
                        "files": null,
                    })
                })
                .collect();
            (200, Some(json!({"records": records, "folders": []})))
        }
        "update_secret" => {
            let Some(r) = s.records.get_mut(&uid) else {
                return refuse("not_found", "no such record");
            };
            if payload["revision"].as_i64() != Some(r.revision) {
                return refuse(
                    CONFLICT_CODE,
                    "the record's revision does not match: it changed",
                );
            }
            if r.staged.is_some() {
                return refuse("transaction_in_progress", "a rotation transaction is open");
            }
            let Some(data) = payload["data"]
                .as_str()
                .and_then(unbase64)
                .and_then(|d| open(&r.key, &d))
                .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
            else {
                return refuse("bad_request", "record data could not be decrypted");
            };
            s.writes.entry(uid.clone()).or_default().push(data.clone());
            let r = s.records.get_mut(&uid).expect("checked above");
            match payload["transactionType"].as_str() {
                Some(t) if !t.is_empty() => r.staged = Some(data),
                _ => {
                    r.data = data;
                    r.revision += 1;
                }
            }
            (200, None)
        }
        "finalize_secret_update" => match s.records.get_mut(&uid) {
            Some(r) if r.staged.is_some() => {
                r.data = r.staged.take().unwrap();
                r.revision += 1;
                (200, None)
            }
            _ => refuse("not_found", "no open transaction"),
        },
        "rollback_secret_update" => match s.records.get_mut(&uid) {
            Some(r) if r.staged.is_some() => {
                r.staged = None;
                (200, None)
            }
            _ => refuse("not_found", "no open transaction"),
        },
        "get_folders" => {
            let folders: Vec<Value> = s
                .folders
                .iter()
                .map(|(uid, key)| {
                    json!({
                        "folderUid": uid,
                        "folderKey": STANDARD.encode(seal(app_key, key)),
                        "parent": null,
                        "data": null,
                    })
                })
                .collect();
            (200, Some(json!({"folders": folders})))
        }
        "create_secret" => {
            let folder = payload["folderUid"].as_str().unwrap_or_default();
            let Some((_, folder_key)) = s.folders.iter().find(|(f, _)| f == folder) else {
                return refuse("not_found", "no such shared folder");
            };
            // `recordKey` is for the owner; `folderKey` is the record key under the folder's.
            let key = payload["folderKey"]
                .as_str()
                .and_then(unbase64)
                .and_then(|k| open(folder_key, &k));
            let data = key.as_ref().and_then(|k| {
                payload["data"]
                    .as_str()
                    .and_then(unbase64)
                    .and_then(|d| open(k, &d))
                    .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
            });
            let (Some(key), Some(data)) = (key, data) else {
                return refuse("bad_request", "record key or data could not be decrypted");
            };
            s.records.insert(
                uid,
                Stored {
                    key: key.try_into().unwrap_or([0; 32]),
                    data,
                    revision: 1,
                    staged: None,
                },
            );
            (200, None)
        }
        other => refuse("unknown_endpoint", other),
    }
}
