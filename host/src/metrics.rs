//! The gateway's Prometheus metrics (`/metrics`) and liveness (`/healthz`),
//! served by tiny_http on a thread of their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fleet::PassReport;

/// Counters and gauges of a gateway's life.
#[derive(Debug, Default)]
pub struct Metrics {
    rotated: AtomicU64,
    failed: AtomicU64,
    not_finalized: AtomicU64,
    due_records: AtomicU64,
    last_pass: AtomicU64,
    passes: AtomicU64,
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
             rotate_host_passes_total {}\n",
            g(&self.rotated),
            g(&self.failed),
            g(&self.not_finalized),
            g(&self.due_records),
            g(&self.last_pass),
            g(&self.passes),
        )
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the process ends.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), String> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| format!("could not listen on --metrics {addr}: {e}; pick a free port"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, body, kind) = match (request.method(), request.url()) {
                    (tiny_http::Method::Get, "/metrics") => {
                        (200, metrics.render(), "text/plain; version=0.0.4")
                    }
                    (tiny_http::Method::Get, "/healthz") => (200, "ok\n".into(), "text/plain"),
                    _ => (
                        404,
                        "not found: try /metrics or /healthz\n".into(),
                        "text/plain",
                    ),
                };
                let header =
                    tiny_http::Header::from_bytes("content-type", kind).expect("a valid header");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                let _ = request.respond(response);
            }
        })
        .map_err(|e| format!("could not start the metrics thread: {e}"))?;
    Ok(())
}
