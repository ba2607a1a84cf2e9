//! What the plugin needs from the outside world: the host's `outbound` and `log`
//! imports, clocks and randomness. Native tests supply their own.

use std::time::{Duration, SystemTime};

/// An HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Never logged: a request body can carry nothing secret today, but a response can.
    pub body: Vec<u8>,
}

/// An HTTP response, whatever its status.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

// A response body may hold a SecretAccessKey: show its size only.
impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Why no response came back; mirrors WIT's `send-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the host refused the destination: {0}")]
    DestinationNotAllowed(String),
    #[error("the request is malformed: {0}")]
    InvalidRequest(String),
    #[error("could not connect: {0}")]
    ConnectFailed(String),
    #[error("the TLS handshake failed: {0}")]
    TlsFailed(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the connection broke: {0}")]
    ConnectionLost(String),
    #[error("the response was larger than the host allows ({0} bytes)")]
    ResponseTooLarge(u64),
}

impl SendError {
    /// True when the request may have reached the server (I5: not safe to repeat blindly).
    /// An answer too large to read was sent and answered: what it did is unknown.
    pub fn maybe_sent(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::ConnectionLost(_) | Self::ResponseTooLarge(_)
        )
    }

    /// True when trying again could help.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            Self::ConnectFailed(_) | Self::Timeout(_) | Self::ConnectionLost(_)
        )
    }
}

/// Log levels of the host's `log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The plugin's window on the world.
pub trait Transport {
    fn send(&self, request: &HttpRequest) -> Result<HttpResponse, SendError>;
    fn log(&self, level: Level, message: &str);
    /// Whether another record of the vault holds or tracks the key `id` (I6).
    fn held_elsewhere(&self, id: &str) -> bool;
    fn sleep(&self, duration: Duration);
    /// Wall-clock time, for signing.
    fn now(&self) -> SystemTime;
    /// Time since an arbitrary fixed point, for deadlines.
    fn elapsed(&self) -> Duration;
    /// A random number, for backoff jitter.
    fn random(&self) -> u64;
}
