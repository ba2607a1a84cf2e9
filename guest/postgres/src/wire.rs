//! PostgreSQL's wire protocol over the host's `tcp` import: `SSLRequest` and
//! TLS, the startup message, SCRAM-SHA-256 authentication and simple
//! queries. The messages themselves are rust-postgres's `postgres-protocol`.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};

use crate::Secret;

/// Why the connection failed, as the host's `tcp` import says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// Not in the allowlist: nothing was sent.
    NotAllowed(String),
    /// No connection (name lookup, refused, unreachable).
    Connect(String),
    /// The certificate was not trusted, or the handshake failed.
    Tls(String),
    /// No answer in time: what was sent may have reached the server.
    Timeout(String),
    /// The connection broke: what was sent may have reached the server.
    Lost(String),
    /// More bytes came than the host lets one connection receive.
    TooMuch(u64),
}

/// One open connection, as the host's `tcp.connection` resource offers it.
pub trait Stream {
    fn send(&mut self, data: &[u8]) -> Result<(), NetError>;
    fn receive(&mut self, max: u32) -> Result<Vec<u8>, NetError>;
    fn start_tls(&mut self) -> Result<(), NetError>;
}

/// Opens connections: the host's `tcp.connect`.
pub trait Network {
    type Stream: Stream;
    fn connect(&self, host: &str, port: u16) -> Result<Self::Stream, NetError>;
}

/// Why a session or a query failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgError {
    Net(NetError),
    /// The server's `ErrorResponse`: its SQLSTATE and message.
    Server {
        code: String,
        message: String,
    },
    /// The server refused TLS (`SSLRequest` answered `N`).
    NoTls,
    /// The server asked for an authentication method other than SCRAM-SHA-256.
    Method(&'static str),
    /// The server let the user in without checking a password (`trust`).
    NoPasswordCheck,
    /// The server broke the protocol (or SCRAM's proof of the server failed).
    Protocol(String),
}

/// The largest message the plugin takes from a server: PostgreSQL's answers
/// to its few statements are small, and the length would otherwise be
/// reserved before the host's cap on received bytes applies.
const MAX_MESSAGE: usize = 1024 * 1024;

/// SCRAM iteration counts the plugin accepts: PostgreSQL's default is the
/// floor (a server asking for fewer would make the password cheap to guess
/// from what it saw), and the ceiling bounds the work a server can demand.
const ITERATIONS: std::ops::RangeInclusive<u32> = 4096..=1_000_000;

impl From<NetError> for PgError {
    fn from(e: NetError) -> Self {
        Self::Net(e)
    }
}

fn protocol(e: impl std::fmt::Display) -> PgError {
    PgError::Protocol(e.to_string())
}

/// Where and as whom to log in.
pub struct Login<'a> {
    pub host: &'a str,
    pub port: u16,
    pub tls: bool,
    pub database: &'a str,
    pub user: &'a str,
    pub password: &'a Secret,
}

/// A logged-in session: the server checked the password with SCRAM-SHA-256.
pub struct Session<S: Stream> {
    stream: S,
    buf: BytesMut,
}

impl<S: Stream> Session<S> {
    /// Connects, asks for TLS if wanted, and logs in with SCRAM-SHA-256.
    pub fn open(net: &impl Network<Stream = S>, to: &Login<'_>) -> Result<Self, PgError> {
        let mut s = Self {
            stream: net.connect(to.host, to.port)?,
            buf: BytesMut::new(),
        };
        if to.tls {
            let mut out = BytesMut::new();
            frontend::ssl_request(&mut out);
            s.stream.send(&out)?;
            match s.stream.receive(1)?.as_slice() {
                b"S" => s.stream.start_tls()?,
                b"N" => return Err(PgError::NoTls),
                [] => return Err(NetError::Lost("the server closed the connection".into()).into()),
                _ => {
                    return Err(PgError::Protocol(
                        "the server's answer to SSLRequest is not S or N".into(),
                    ));
                }
            }
        }
        let mut out = BytesMut::new();
        let params = [
            ("user", to.user),
            ("database", to.database),
            ("application_name", "rotate-host"),
        ];
        frontend::startup_message(params, &mut out).map_err(protocol)?;
        s.stream.send(&out)?;
        s.authenticate(to.password)?;
        s.until_ready()?;
        Ok(s)
    }

    fn next(&mut self) -> Result<Message, PgError> {
        loop {
            if let Some(len) = self.buf.get(1..5) {
                let len = u32::from_be_bytes(len.try_into().expect("four bytes")) as usize;
                if len > MAX_MESSAGE {
                    return Err(PgError::Protocol(format!(
                        "a message of {len} bytes, over the plugin's {MAX_MESSAGE}"
                    )));
                }
            }
            if let Some(m) = Message::parse(&mut self.buf).map_err(protocol)? {
                return Ok(m);
            }
            let chunk = self.stream.receive(64 * 1024)?;
            if chunk.is_empty() {
                return Err(NetError::Lost("the server closed the connection".into()).into());
            }
            self.buf.extend_from_slice(&chunk);
        }
    }

    fn authenticate(&mut self, password: &Secret) -> Result<(), PgError> {
        let mut checked = false;
        loop {
            match self.next()? {
                Message::AuthenticationOk if checked => return Ok(()),
                Message::AuthenticationOk => return Err(PgError::NoPasswordCheck),
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram = false;
                    while let Some(m) = mechanisms.next().map_err(protocol)? {
                        scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(PgError::Method("SASL without SCRAM-SHA-256"));
                    }
                    self.scram(password)?;
                    checked = true;
                }
                Message::AuthenticationMd5Password(_) => return Err(PgError::Method("md5")),
                Message::AuthenticationCleartextPassword => {
                    return Err(PgError::Method("password"));
                }
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::NoticeResponse(_) => {}
                _ => {
                    return Err(PgError::Protocol(
                        "unexpected message during authentication".into(),
                    ));
                }
            }
        }
    }

    /// SCRAM-SHA-256 without channel binding (the host holds the TLS
    /// session); the server's final message proves it knew the verifier.
    fn scram(&mut self, password: &Secret) -> Result<(), PgError> {
        let mut scram =
            ScramSha256::new(password.expose().as_bytes(), ChannelBinding::unsupported());
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut out)
            .map_err(protocol)?;
        self.stream.send(&out)?;
        let body = match self.next()? {
            Message::AuthenticationSaslContinue(b) => b,
            Message::ErrorResponse(b) => return Err(server_error(&b)),
            _ => return Err(PgError::Protocol("expected SASL continue".into())),
        };
        let iterations = std::str::from_utf8(body.data())
            .ok()
            .and_then(|m| m.split(',').find_map(|a| a.strip_prefix("i=")))
            .and_then(|i| i.parse::<u32>().ok());
        match iterations {
            Some(i) if ITERATIONS.contains(&i) => {}
            other => {
                return Err(PgError::Protocol(format!(
                    "SCRAM iteration count {other:?}, outside {ITERATIONS:?}"
                )));
            }
        }
        scram.update(body.data()).map_err(protocol)?;
        let mut out = BytesMut::new();
        frontend::sasl_response(scram.message(), &mut out).map_err(protocol)?;
        self.stream.send(&out)?;
        let body = match self.next()? {
            Message::AuthenticationSaslFinal(b) => b,
            Message::ErrorResponse(b) => return Err(server_error(&b)),
            _ => return Err(PgError::Protocol("expected SASL final".into())),
        };
        scram.finish(body.data()).map_err(protocol)
    }

    fn until_ready(&mut self) -> Result<(), PgError> {
        loop {
            match self.next()? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    /// Runs one simple query; returns its rows, each column as text (or
    /// none for NULL). An error is returned once the server is ready again.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(protocol)?;
        self.stream.send(&out)?;
        let mut rows = vec![];
        let mut error = None;
        loop {
            match self.next()? {
                Message::DataRow(body) => {
                    let buffer = body.buffer();
                    let row = body
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                        .collect()
                        .map_err(protocol)?;
                    rows.push(row);
                }
                Message::ErrorResponse(body) => error = Some(server_error(&body)),
                Message::ReadyForQuery(_) => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}

impl<S: Stream> Drop for Session<S> {
    fn drop(&mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.stream.send(&out);
    }
}

fn server_error(body: &postgres_protocol::message::backend::ErrorResponseBody) -> PgError {
    let (mut code, mut message) = (String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => {
                message = String::from_utf8_lossy(f.value_bytes())
                    .chars()
                    .take(300)
                    .collect()
            }
            _ => {}
        }
    }
    PgError::Server { code, message }
}
