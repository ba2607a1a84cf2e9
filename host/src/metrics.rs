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
    purges: AtomicU64,
    pass_millis: AtomicU64,
    next_due: AtomicU64,
    /// Per config record UID: when its oldest recorded key was rotated.
    oldest: Mutex<std::collections::BTreeMap<String, i64>>,
}

impl Metrics {
    /// Adds a finished pass.
    pub fn record_pass(&self, r: &PassReport) {
        let not_finalized = r
            .rotated
            .iter()
            .filter(|e| e.exit_code == Some(crate::exit::Exit::NotFinalized))
            .count() as u64;
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
        let purged: usize = [&r.rotated, &r.purged]
            .iter()
            .flat_map(|l| l.iter())
            .map(|e| e.purged.len())
            .sum();
        self.purges.fetch_add(purged as u64, Ordering::Relaxed);
        self.pass_millis
            .store(r.took.as_millis() as u64, Ordering::Relaxed);
        self.next_due.store(
            r.next_due.map_or(0, |at| at.timestamp().max(0) as u64),
            Ordering::Relaxed,
        );
        *self.oldest.lock().expect("never poisoned") = r
            .oldest_rotation
            .iter()
            .map(|(config, at)| (config.clone(), at.timestamp()))
            .collect();
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
        ) + &self.render_more()
    }

    /// Purges, the pass's duration and next due time, the oldest key per
    /// config, and the build.
    fn render_more(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp();
        let oldest: String = self
            .oldest
            .lock()
            .expect("never poisoned")
            .iter()
            .map(|(config, at)| {
                format!(
                    "rotate_host_oldest_key_age_seconds{{config=\"{}\"}} {}\n",
                    label(config),
                    (now - at).max(0)
                )
            })
            .collect();
        format!(
            "# HELP rotate_host_purges_total Old keys deleted after their grace period.\n\
             # TYPE rotate_host_purges_total counter\n\
             rotate_host_purges_total {}\n\
             # HELP rotate_host_pass_duration_seconds How long the last pass took.\n\
             # TYPE rotate_host_pass_duration_seconds gauge\n\
             rotate_host_pass_duration_seconds {:.3}\n\
             # HELP rotate_host_next_due_timestamp_seconds When the soonest record not due now is due (0: none).\n\
             # TYPE rotate_host_next_due_timestamp_seconds gauge\n\
             rotate_host_next_due_timestamp_seconds {}\n\
             # HELP rotate_host_oldest_key_age_seconds Per config record: the age of its members' oldest recorded key.\n\
             # TYPE rotate_host_oldest_key_age_seconds gauge\n\
             {oldest}\
             # HELP rotate_host_build_info The running build.\n\
             # TYPE rotate_host_build_info gauge\n\
             rotate_host_build_info{{version=\"{}\"}} 1\n",
            g(&self.purges),
            g(&self.pass_millis) as f64 / 1000.0,
            g(&self.next_due),
            env!("CARGO_PKG_VERSION"),
        )
    }
}

/// A Prometheus label value: record text, so controls and bidi characters are
/// escaped first (`text::printable`), then `\\` and `"` as the exposition
/// format asks.
fn label(value: &str) -> String {
    crate::text::printable(value)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
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

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            super::label("a\"b\\c\nd\u{202e}"),
            "a\\\"b\\\\c\\\\u{a}d\\\\u{202e}"
        );
    }
}
