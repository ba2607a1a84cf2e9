//! A fake Keeper Secrets Manager server on 127.0.0.1, over real HTTPS, for the
//! real SDK inside `rotate-host`. It speaks Keeper's protocol as
//! keeper-secrets-manager-core does (and as the Python SDK's `mock.py` models):
//!
//! - the SDK wraps each request's AES key (the transmission key) for the
//!   server's P-256 key, which the test config names (`serverPublicKey`, the
//!   custom-key setting Keeper uses for its IL5 environment); the fake unwraps
//!   it by ECDH, decrypts the request and encrypts its answer with it. Keeper's
//!   built-in key ids cannot be faked: their private halves are Keeper's;
//! - each request is signed with the client's private key (ECDSA P-256,
//!   SHA-256, DER, over the wrapped transmission key and the encrypted
//!   payload); the fake knows the public key bound to the config's `clientId`
//!   and answers a bad signature or an unknown client as Keeper's server does
//!   (403 `access_denied`, "Signature is invalid", recorded in Keeper's
//!   `sdk/fake_data.json`);
//! - records are encrypted as Keeper does: data under a per-record key, that
//!   key under the application key when the record is shared directly, or
//!   under its shared folder's key, itself under the application key. Records
//!   come through a shared folder unless added directly, as in Keeper's
//!   recorded answers, and a record in two folders comes twice;
//! - a record may be shared read-only (`isEditable` false): its updates are
//!   refused with `access_denied`;
//! - records keep revisions: an update naming an old revision is refused.
//!   Keeper documents no code for this; the fake's answer names neither
//!   `out_of_sync` nor a revision unless a test asks (`stale_answer`);
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

/// The fake's default answer to an update of a stale revision: Keeper
/// documents none, so it is one the host does not recognise as a conflict.
const STALE: (&str, &str) = ("bad_request", "the record was changed by another client");

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
    /// The shared folders it comes through; none: shared directly.
    folders: Vec<String>,
    editable: bool,
}

impl Stored {
    fn new(key: [u8; 32], data: Value, folders: Vec<String>) -> Self {
        Self {
            key,
            data,
            revision: 1,
            staged: None,
            folders,
            editable: true,
        }
    }
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
    /// `clientId` to the public key the client bound when it redeemed its token.
    clients: HashMap<String, PublicKey>,
    /// The answer to a stale revision, when a test names one.
    stale: Option<(String, String)>,
    /// A rollback with no transaction open answers success (what Keeper does
    /// is undocumented; by default it is refused).
    rollback_always_succeeds: bool,
    /// `get_secret` answers `expiresOn: null`, which the SDK cannot read.
    null_expiry: bool,
}

/// The shared folder `add_record` shares records through.
pub const DEFAULT_FOLDER: &str = "shared-folder-1";

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
    client_id: String,
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
        let client_id = STANDARD.encode(random::<32>());
        let client_key = secret_key();
        let mut bound = State::default();
        bound
            .clients
            .insert(client_id.clone(), client_key.public_key());
        bound
            .folders
            .push((DEFAULT_FOLDER.to_string(), random::<32>()));
        let state = Arc::new(Mutex::new(bound));
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
            client_id,
            client_key,
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
            "clientId": self.client_id,
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

    /// The config with the application's private key replaced by another
    /// one, as a config copied from another application would be.
    pub fn config_with_foreign_key(&self) -> Value {
        let mut c = self.config();
        c["privateKey"] = json!(STANDARD.encode(secret_key().to_pkcs8_der().unwrap().as_bytes()));
        c
    }

    /// Adds a record shared with the application through its shared folder
    /// (`DEFAULT_FOLDER`), the README's setup: `data` is Keeper's record data
    /// (`type`, `title`, `fields`, `custom`).
    pub fn add_record(&self, uid: &str, data: Value) {
        self.insert(uid, data, vec![DEFAULT_FOLDER.to_string()]);
    }

    /// Adds a record shared with the application directly, not in a folder.
    pub fn add_record_direct(&self, uid: &str, data: Value) {
        self.insert(uid, data, vec![]);
    }

    fn insert(&self, uid: &str, data: Value, folders: Vec<String>) {
        self.state
            .lock()
            .unwrap()
            .records
            .insert(uid.into(), Stored::new(random::<32>(), data, folders));
    }

    /// Shares record `uid` through shared folder `folder` too (added if new):
    /// Keeper then returns it once per folder.
    pub fn share_in_folder(&self, uid: &str, folder: &str) {
        let mut s = self.state.lock().unwrap();
        if !s.folders.iter().any(|(f, _)| f == folder) {
            s.folders.push((folder.into(), random::<32>()));
        }
        let r = s.records.get_mut(uid).expect("record exists");
        r.folders.push(folder.into());
    }

    /// Record `uid` is shared read-only: `isEditable` false, updates refused.
    pub fn read_only(&self, uid: &str) {
        let mut s = self.state.lock().unwrap();
        s.records.get_mut(uid).expect("record exists").editable = false;
    }

    /// A stale revision is refused with this code and message.
    pub fn stale_answer(&self, code: &str, message: &str) {
        self.state.lock().unwrap().stale = Some((code.into(), message.into()));
    }

    /// A rollback with no transaction open answers success.
    pub fn rollback_always_succeeds(&self) {
        self.state.lock().unwrap().rollback_always_succeeds = true;
    }

    /// `get_secret` answers with `expiresOn: null`.
    pub fn null_expiry(&self) {
        self.state.lock().unwrap().null_expiry = true;
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
    /// `Authorization: Signature BASE64`: the DER signature.
    signature: Option<String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut len, mut transmission_key, mut signature) = (0, None, None);
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
            "authorization" => {
                signature = v.trim().strip_prefix("Signature ").map(str::to_string);
            }
            _ => {}
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        transmission_key,
        signature,
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

/// Whether the request is signed by the key bound to its `clientId`: ECDSA
/// P-256 over the wrapped transmission key and the encrypted payload.
fn signed_by_client(req: &Request, payload: &Value, state: &Mutex<State>) -> bool {
    use p256::ecdsa::signature::Verifier;
    let Some(key) = payload["clientId"]
        .as_str()
        .and_then(|id| state.lock().unwrap().clients.get(id).copied())
    else {
        return false;
    };
    let wrapped = req
        .transmission_key
        .as_deref()
        .and_then(|h| STANDARD.decode(h).ok());
    let signature = req
        .signature
        .as_deref()
        .and_then(|s| STANDARD.decode(s).ok())
        .and_then(|der| p256::ecdsa::Signature::from_der(&der).ok());
    let (Some(wrapped), Some(signature)) = (wrapped, signature) else {
        return false;
    };
    let signed = [wrapped.as_slice(), req.body.as_slice()].concat();
    p256::ecdsa::VerifyingKey::from(key)
        .verify(&signed, &signature)
        .is_ok()
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
    if !signed_by_client(req, &payload, state) {
        state.lock().unwrap().calls.push(endpoint.clone());
        return (
            403,
            json!({
                "path": format!("https://{HOST}/api/rest/sm/v1/{endpoint}, POST"),
                "additional_info": "",
                "location": "default exception manager - api validation exception",
                "error": "access_denied",
                "message": "Signature is invalid",
            })
            .to_string()
            .into_bytes(),
        );
    }
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
            (200, Some(secrets(s, wanted.as_deref(), app_key)))
        }
        "update_secret" => {
            let Some(r) = s.records.get_mut(&uid) else {
                return refuse("not_found", "no such record");
            };
            if !r.editable {
                return (
                    403,
                    Some(
                        json!({"error": "access_denied", "message": "the application may not edit this record"}),
                    ),
                );
            }
            if payload["revision"].as_i64() != Some(r.revision) {
                let (code, message) = s.stale.clone().unwrap_or((STALE.0.into(), STALE.1.into()));
                return refuse(&code, &message);
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
            Some(_) if s.rollback_always_succeeds => (200, None),
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
            let folder = folder.to_string();
            let key = key.try_into().unwrap_or([0; 32]);
            s.records.insert(uid, Stored::new(key, data, vec![folder]));
            (200, None)
        }
        other => refuse("unknown_endpoint", other),
    }
}

/// `get_secret`'s answer, shaped as Keeper's recorded ones: each record once
/// per way it is shared, its key under the application key (shared directly)
/// or under its folder's key; `records` is null when none is shared directly.
fn secrets(s: &State, wanted: Option<&[&str]>, app_key: &[u8; 32]) -> Value {
    let chosen = |uid: &String| wanted.is_none_or(|w| w.contains(&uid.as_str()));
    let entry = |uid: &str, r: &Stored, key_of_key: &[u8]| {
        json!({
            "recordUid": uid,
            "recordKey": STANDARD.encode(seal(key_of_key, &r.key)),
            "data": STANDARD.encode(seal(&r.key, r.visible(s.show_staged).to_string().as_bytes())),
            "revision": r.revision,
            "isEditable": r.editable,
            "files": null,
        })
    };
    let direct: Vec<Value> = s
        .records
        .iter()
        .filter(|(uid, r)| chosen(uid) && r.folders.is_empty())
        .map(|(uid, r)| entry(uid, r, app_key))
        .collect();
    let folders: Vec<Value> = s
        .folders
        .iter()
        .filter_map(|(folder, folder_key)| {
            let records: Vec<Value> = s
                .records
                .iter()
                .filter(|(uid, r)| chosen(uid) && r.folders.contains(folder))
                .map(|(uid, r)| entry(uid, r, folder_key))
                .collect();
            (!records.is_empty()).then(|| {
                json!({
                    "folderUid": folder,
                    "folderKey": STANDARD.encode(seal(app_key, folder_key)),
                    "data": null,
                    "parent": null,
                    "isEditable": true,
                    "records": records,
                })
            })
        })
        .collect();
    let app_data = seal(app_key, br#"{"title":"rotate-host tests","type":"app"}"#);
    json!({
        "appData": URL_SAFE_NO_PAD.encode(app_data),
        "encryptedAppKey": null,
        "appOwnerPublicKey": null,
        "folders": folders,
        "records": if direct.is_empty() { Value::Null } else { Value::Array(direct) },
        "expiresOn": if s.null_expiry { Value::Null } else { json!(0) },
        "warnings": null,
        "extra": null,
    })
}
