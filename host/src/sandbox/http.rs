//! Serves the guest's `outbound.send`: allowlist and header checks first, then
//! HTTPS with rustls, timeouts, no redirects and a capped response body.

use std::io::ErrorKind;
use std::time::Duration;

use std::sync::Arc;
use thiserror::Error;

use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use url::Url;

use crate::sandbox::allowlist::AllowList;
use crate::sandbox::tcp::{Connection, TcpError};

/// A request from the guest.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response for the guest.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

// A body can hold a new secret access key: show only its size.
impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Why no response was handed back; the WIT `send-error`, host side.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    #[error("destination not allowed: {0}")]
    DestinationNotAllowed(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("connect failed: {0}")]
    ConnectFailed(String),
    #[error("TLS failed: {0}")]
    TlsFailed(String),
    #[error("timeout: {0}")]
    Timeout(String),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("response larger than {0} bytes")]
    ResponseTooLarge(u64),
}

/// Outbound HTTP limits and trust.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Whole-request timeout: connect, send, and read the response.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_response_bytes: u64,
    /// CA certificates (DER) to trust instead of the built-in Mozilla roots.
    pub ca_certs: Option<Arc<Vec<Certificate<'static>>>>,
    /// Shared by every instance: caps requests per second across concurrent rotations.
    pub rate: Option<Arc<RateLimiter>>,
}

/// Spaces requests evenly: at most `per_second` start in any second, across
/// every plugin instance that shares it. The plugin's own backoff is the last
/// line of defence against throttling, not the first.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: std::sync::Mutex<std::time::Instant>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Waits for the next free slot.
    pub async fn acquire(&self) {
        let wait = {
            let mut next = self.next.lock().expect("rate lock");
            let now = std::time::Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
            ca_certs: None,
            rate: None,
        }
    }
}

/// A bundle of every public root CA is about 250 KiB.
const MAX_CA_FILE_BYTES: u64 = 16 << 20;

/// ureq's buffers, each way.
const BUFFER_BYTES: usize = 32 * 1024;

/// The most an answer's status line and headers may take.
const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// Reads the PEM certificates of a `--ca-file`.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<Certificate<'static>>, String> {
    let pem = crate::fsguard::read_regular(path, MAX_CA_FILE_BYTES)
        .map_err(|e| format!("could not read --ca-file {}: {e}", path.display()))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--ca-file {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--ca-file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The guest's one way out.
pub struct Outbound {
    allow: AllowList,
    timeout: Duration,
    https: Agent,
    http: Agent,
    max_response_bytes: u64,
    pub(crate) rate: Option<Arc<RateLimiter>>,
    connect_timeout: Duration,
    ca_certs: Option<Arc<Vec<Certificate<'static>>>>,
    /// The TLS client config for `tcp` connections, made at the first `start-tls`.
    tcp_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
}

impl Outbound {
    pub fn new(allow: AllowList, config: &HttpConfig) -> Self {
        let roots = match &config.ca_certs {
            Some(certs) => RootCerts::Specific(certs.clone()),
            None => RootCerts::WebPki,
        };
        // Only HTTPS goes through a proxy, and only the one HTTPS_PROXY names:
        // plain http is for loopback endpoints, which must never leave the host.
        let proxy = ["HTTPS_PROXY", "https_proxy"]
            .iter()
            .find_map(|v| std::env::var(v).ok())
            .filter(|v| !v.trim().is_empty())
            .and_then(|v| match ureq::Proxy::new(&v) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("ignoring HTTPS_PROXY: {e}");
                    None
                }
            });
        let agent = |proxy: Option<ureq::Proxy>| -> Agent {
            Agent::config_builder()
                .tls_config(TlsConfig::builder().root_certs(roots.clone()).build())
                .proxy(proxy)
                .timeout_global(Some(config.timeout))
                .timeout_connect(Some(config.connect_timeout))
                .http_status_as_error(false)
                // A redirect could lead outside the allowlist.
                .max_redirects(0)
                .max_redirects_will_error(false)
                // ureq's default zero-fills 128 KiB each way per connection,
                // and a rotation's connections are new: 10-15 % of a pass's
                // samples in `perf`. A plugin's requests and answer heads are small.
                .input_buffer_size(BUFFER_BYTES)
                .output_buffer_size(BUFFER_BYTES)
                // Below the buffer's size, so that a longer head is named
                // as such (ureq reads a full buffer as the peer's end).
                .max_response_header_size(MAX_RESPONSE_HEAD_BYTES)
                .build()
                .into()
        };
        let (https, http) = (agent(proxy), agent(None));
        Self {
            allow,
            timeout: config.timeout,
            https,
            http,
            max_response_bytes: config.max_response_bytes,
            rate: config.rate.clone(),
            connect_timeout: config.connect_timeout,
            ca_certs: config.ca_certs.clone(),
            tcp_tls: std::sync::OnceLock::new(),
        }
    }

    /// Whether the allowlist lets the plugin open `host:port`.
    pub fn check_tcp(&self, host: &str, port: u16) -> Result<(), String> {
        self.allow.check_tcp(host, port)
    }

    /// Checks a `tcp.connect` destination, then opens it. Blocks.
    pub fn connect(&self, host: &str, port: u16) -> Result<Connection, TcpError> {
        self.check_tcp(host, port).map_err(TcpError::NotAllowed)?;
        Connection::open(host, port, self.connect_timeout, self.max_response_bytes)
    }

    /// How long one `tcp` call may wait: `--http-timeout`, within `left` of the plugin's call.
    pub fn tcp_limit(&self, left: Option<Duration>) -> Duration {
        left.map_or(self.timeout, |l| l.min(self.timeout))
    }

    /// The TLS client config of `start-tls`, on the same roots as HTTPS.
    pub fn tcp_tls(&self) -> Arc<rustls::ClientConfig> {
        self.tcp_tls
            .get_or_init(|| {
                crate::sandbox::tcp::tls_config(self.ca_certs.as_deref().map(|v| &v[..]))
            })
            .clone()
    }

    /// Checks the destination and the headers, then sends; the whole request
    /// ends within `limit` when given (what is left of the plugin's call).
    pub fn send(&self, req: Request, limit: Option<Duration>) -> Result<Response, SendError> {
        let url = Url::parse(&req.url)
            .map_err(|e| SendError::InvalidRequest(format!("the URL is malformed: {e}")))?;
        self.allow
            .check(&url)
            .map_err(SendError::DestinationNotAllowed)?;
        let mut builder = ureq::http::Request::builder()
            .method(req.method.as_str())
            .uri(url.as_str());
        for (name, value) in &req.headers {
            if HOST_OWNED_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name.trim()))
            {
                return Err(SendError::InvalidRequest(format!(
                    "header '{name}' is set by the host, not the plugin"
                )));
            }
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .body(req.body)
            .map_err(|e| SendError::InvalidRequest(e.to_string()))?;
        let agent = if url.scheme() == "https" {
            &self.https
        } else {
            &self.http
        };
        let request = match limit {
            Some(limit) if limit.is_zero() => {
                return Err(SendError::Timeout(
                    "the plugin's call has no time left for a request".into(),
                ));
            }
            Some(limit) => agent
                .configure_request(request)
                .timeout_global(Some(limit.min(self.timeout)))
                .build(),
            None => request,
        };
        let response = agent.run(request).map_err(classify)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .with_config()
            .limit(self.max_response_bytes)
            .read_to_vec()
            .map_err(classify)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Headers that describe the connection or its framing, which the host owns:
/// from a plugin they could smuggle a second request, or reach a proxy.
const HOST_OWNED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// Sorts ureq's errors by whether the request can have reached the server (I5).
fn classify(e: ureq::Error) -> SendError {
    use ureq::Error as E;
    use ureq::Timeout as T;
    match e {
        E::Timeout(T::Resolve | T::Connect) | E::HostNotFound | E::ConnectionFailed => {
            SendError::ConnectFailed(e.to_string())
        }
        // A failed name lookup: nothing was sent.
        E::Io(io) if is_resolve_failure(&io) => SendError::ConnectFailed(io.to_string()),
        E::Tls(_) | E::Rustls(_) => SendError::TlsFailed(e.to_string()),
        E::Timeout(_) => SendError::Timeout(e.to_string()),
        E::BodyExceedsLimit(n) => SendError::ResponseTooLarge(n),
        E::Io(io) if handshake_failure(&io) => SendError::TlsFailed(io.to_string()),
        E::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused | ErrorKind::NotFound | ErrorKind::AddrNotAvailable => {
                SendError::ConnectFailed(io.to_string())
            }
            ErrorKind::TimedOut | ErrorKind::WouldBlock => SendError::Timeout(io.to_string()),
            _ => SendError::ConnectionLost(io.to_string()),
        },
        E::BadUri(_) | E::Http(_) => SendError::InvalidRequest(e.to_string()),
        other => SendError::ConnectionLost(other.to_string()),
    }
}

/// The system resolver's "no such host" and "try again" errors, which std
/// reports as uncategorised I/O errors.
fn is_resolve_failure(io: &std::io::Error) -> bool {
    let text = io.to_string();
    text.contains("failed to lookup address information")
        || text.contains("Name or service not known")
        || text.contains("Temporary failure in name resolution")
        || text.contains("No address associated with hostname")
}

/// A TLS error that can only happen in the handshake, before anything is sent.
/// Other TLS errors may come after the request went out, so they stay ambiguous.
fn handshake_failure(io: &std::io::Error) -> bool {
    use rustls::Error as R;
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<R>())
        .is_some_and(|e| {
            matches!(
                e,
                R::InvalidCertificate(_)
                    | R::NoCertificatesPresented
                    | R::PeerIncompatible(_)
                    | R::InappropriateHandshakeMessage { .. }
                    | R::UnsupportedNameType
                    | R::AlertReceived(rustls::AlertDescription::HandshakeFailure)
            )
        })
}
