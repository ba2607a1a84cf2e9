//! The gateway's Prometheus metrics (`/metrics`) and liveness (`/healthz`),
//! served by hyper on the gateway's runtime.
//!
//! Any local user can connect, so no client may stall the endpoint: every
//! connection is a task (not a thread), answers one request and closes, must
//! send its request head within `HEAD_TIMEOUT` and finish within
//! `CONNECTION_DEADLINE`, and past `MAX_CONNECTIONS` the oldest connection
//! makes way for the new one, so idle connections cannot keep a probe out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::fleet::PassReport;

const MAX_CONNECTIONS: usize = 64;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Counters and gauges of a gateway's life.
#[derive(Debug, Default)]
pub struct Metrics {
    rotated: AtomicU64,
    failed: AtomicU64,
    not_finalized: AtomicU64,
    due_records: AtomicU64,
    last_pass: AtomicU64,
    passes: AtomicU64,
    audit_failures: AtomicU64,
    keys_in_use: AtomicU64,
}

impl Metrics {
    /// Adds a finished pass.
    pub fn record_pass(&self, r: &PassReport) {
        let not_finalized = r.rotated.iter().filter(|e| e.exit_code == Some(3)).count() as u64;
        let rotated = r.rotated.len() as u64 - not_finalized;
        self.rotated.fetch_add(rotated, Ordering::Relaxed);
        self.not_finalized
            .fetch_add(not_finalized, Ordering::Relaxed);
        self.failed
            .fetch_add(r.failed.len() as u64, Ordering::Relaxed);
        self.audit_failures
            .fetch_add(r.audit_failures.len() as u64, Ordering::Relaxed);
        self.keys_in_use
            .store(r.keys_in_use() as u64, Ordering::Relaxed);
        self.due_records.store(
            (r.rotated.len() + r.failed.len() + r.planned.len()) as u64,
            Ordering::Relaxed,
        );
        self.last_pass.store(
            chrono::Utc::now().timestamp().max(0) as u64,
            Ordering::Relaxed,
        );
        self.passes.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP rotate_host_rotations_total Rotation attempts by outcome.\n\
             # TYPE rotate_host_rotations_total counter\n\
             rotate_host_rotations_total{{outcome=\"rotated\"}} {}\n\
             rotate_host_rotations_total{{outcome=\"failed\"}} {}\n\
             rotate_host_rotations_total{{outcome=\"not_finalized\"}} {}\n\
             # HELP rotate_host_due_records Records that were due in the last pass.\n\
             # TYPE rotate_host_due_records gauge\n\
             rotate_host_due_records {}\n\
             # HELP rotate_host_last_pass_timestamp_seconds When the last pass ended.\n\
             # TYPE rotate_host_last_pass_timestamp_seconds gauge\n\
             rotate_host_last_pass_timestamp_seconds {}\n\
             # HELP rotate_host_passes_total Passes completed.\n\
             # TYPE rotate_host_passes_total counter\n\
             rotate_host_passes_total {}\n\
             # HELP rotate_host_audit_failures_total Audit lines that could not be written.\n\
             # TYPE rotate_host_audit_failures_total counter\n\
             rotate_host_audit_failures_total {}\n\
             # HELP rotate_host_old_keys_in_use Old keys kept for consumers that IAM showed in use in the last pass.\n\
             # TYPE rotate_host_old_keys_in_use gauge\n\
             rotate_host_old_keys_in_use {}\n",
            g(&self.rotated),
            g(&self.failed),
            g(&self.not_finalized),
            g(&self.due_records),
            g(&self.last_pass),
            g(&self.passes),
            g(&self.audit_failures),
            g(&self.keys_in_use),
        )
    }
}

/// Listens on `addr` and serves `/metrics` and `/healthz` on the current
/// runtime until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("could not listen on --metrics {addr}: {e}; pick a free port"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    tokio::spawn(accept(listener, metrics));
    Ok(())
}

/// The open connections, oldest first, each with the signal that ends it.
type Open = Arc<Mutex<VecDeque<(u64, Arc<Notify>)>>>;

async fn accept(listener: TcpListener, metrics: Arc<Metrics>) {
    let open: Open = Arc::default();
    for id in 0u64.. {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: let connections end.
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let stop = Arc::new(Notify::new());
        let evicted = {
            let mut open = open.lock().expect("never poisoned");
            open.push_back((id, stop.clone()));
            (open.len() > MAX_CONNECTIONS).then(|| open.pop_front())
        };
        if let Some(Some((_, oldest))) = evicted {
            oldest.notify_one();
        }
        let (metrics, open) = (metrics.clone(), open.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_DEADLINE, connection) => {}
                _ = stop.notified() => {}
            }
            open.lock()
                .expect("never poisoned")
                .retain(|(other, _)| *other != id);
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, body, kind) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4",
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "ok\n".into(), "text/plain"),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n".into(),
            "text/plain",
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", kind)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
