//! Serves the guest's `tcp` interface: the allowlist before any name lookup,
//! connections under timeouts, TLS by the host (rustls, on the same roots as
//! HTTPS, certificates checked), and a cap on what one connection receives.
//! Calls block, so the import runs them on a blocking thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use thiserror::Error;

/// Connections one instance may have open at once.
pub const MAX_CONNECTIONS: usize = 8;
/// The most one `receive` returns.
pub const MAX_READ: usize = 64 * 1024;

/// Why a connection or one of its calls failed; each maps to the WIT variant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TcpError {
    #[error("destination not allowed: {0}")]
    NotAllowed(String),
    #[error("connect failed: {0}")]
    ConnectFailed(String),
    #[error("TLS failed: {0}")]
    TlsFailed(String),
    #[error("timeout: {0}")]
    Timeout(String),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("received more than {0} bytes")]
    TooMuchData(u64),
}

/// One open connection: the guest's `connection` resource.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Mutex<Conn>>,
}

struct Conn {
    /// The host name it was opened with, for the certificate check.
    host: String,
    stream: Stream,
    received: u64,
    max_bytes: u64,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// Closed by the cap, or broken by a failed handshake.
    Closed,
}

impl Connection {
    /// Looks `host` up and connects to the first address that answers. The
    /// allowlist was checked before.
    pub fn open(
        host: &str,
        port: u16,
        connect_timeout: Duration,
        max_bytes: u64,
    ) -> Result<Self, TcpError> {
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| TcpError::ConnectFailed(format!("could not look up {host}: {e}")))?
            .collect();
        let mut last = format!("{host} has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, connect_timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Self {
                        inner: Arc::new(Mutex::new(Conn {
                            host: host.to_string(),
                            stream: Stream::Plain(stream),
                            received: 0,
                            max_bytes,
                        })),
                    });
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(TcpError::ConnectFailed(last))
    }

    /// Sends all of `data` within `limit`.
    pub fn send(&self, data: &[u8], limit: Duration) -> Result<(), TcpError> {
        let mut conn = self.inner.lock().expect("connection lock");
        conn.timeouts(limit)?;
        let written = match &mut conn.stream {
            Stream::Plain(s) => s.write_all(data).and_then(|()| s.flush()),
            Stream::Tls(s) => s.write_all(data).and_then(|()| s.flush()),
            Stream::Closed => return Err(closed()),
        };
        written.map_err(io_error)
    }

    /// At most `max` bytes (and `MAX_READ`), waiting up to `limit` for the
    /// first; empty at the end of the stream.
    pub fn receive(&self, max: usize, limit: Duration) -> Result<Vec<u8>, TcpError> {
        let mut conn = self.inner.lock().expect("connection lock");
        conn.timeouts(limit)?;
        let mut buf = vec![0u8; max.clamp(1, MAX_READ)];
        let n = match &mut conn.stream {
            Stream::Plain(s) => s.read(&mut buf),
            Stream::Tls(s) => s.read(&mut buf),
            Stream::Closed => return Err(closed()),
        }
        .map_err(io_error)?;
        conn.received += n as u64;
        if conn.received > conn.max_bytes {
            conn.stream = Stream::Closed;
            return Err(TcpError::TooMuchData(conn.max_bytes));
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Turns the connection into TLS for its host name, handshake done
    /// within `limit`.
    pub fn start_tls(&self, config: Arc<ClientConfig>, limit: Duration) -> Result<(), TcpError> {
        let mut conn = self.inner.lock().expect("connection lock");
        conn.timeouts(limit)?;
        let name = ServerName::try_from(conn.host.clone())
            .map_err(|e| TcpError::TlsFailed(format!("'{}' is not a host name: {e}", conn.host)))?;
        let Stream::Plain(tcp) = std::mem::replace(&mut conn.stream, Stream::Closed) else {
            return Err(TcpError::TlsFailed(
                "the connection is already TLS, or closed".into(),
            ));
        };
        let client =
            ClientConnection::new(config, name).map_err(|e| TcpError::TlsFailed(e.to_string()))?;
        let mut tls = StreamOwned::new(client, tcp);
        // The handshake now, so a bad certificate fails here and not in a later send.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| match io_error(e) {
                    TcpError::ConnectionLost(why) => TcpError::TlsFailed(why),
                    other => other,
                })?;
        }
        conn.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }
}

impl Conn {
    fn timeouts(&mut self, limit: Duration) -> Result<(), TcpError> {
        if limit.is_zero() {
            return Err(TcpError::Timeout(
                "the plugin's call has no time left".into(),
            ));
        }
        let tcp = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
            Stream::Closed => return Err(closed()),
        };
        tcp.set_read_timeout(Some(limit))
            .and_then(|()| tcp.set_write_timeout(Some(limit)))
            .map_err(io_error)
    }
}

fn closed() -> TcpError {
    TcpError::ConnectionLost("the connection is closed".into())
}

fn io_error(e: std::io::Error) -> TcpError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TcpError::Timeout(
            "the server did not answer in time (--http-timeout, within what is left of the \
             plugin's --timeout)"
                .into(),
        ),
        ErrorKind::InvalidData => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            Some(tls) => TcpError::TlsFailed(tls.to_string()),
            None => TcpError::ConnectionLost(e.to_string()),
        },
        _ => TcpError::ConnectionLost(e.to_string()),
    }
}

/// The TLS client config for `start-tls`: the built-in Mozilla roots, or
/// only `--ca-file`'s, as for HTTPS.
pub fn tls_config(ca_certs: Option<&[ureq::tls::Certificate<'static>]>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca_certs {
        Some(certs) => {
            for c in certs {
                // A certificate rustls cannot use as a root is left out.
                let _ = roots.add(CertificateDer::from(c.der().to_vec()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
