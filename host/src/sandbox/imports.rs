//! The host side of the guest's imports: `outbound`, `log` and `holdings`.
//!
//! Each returns `wasmtime::Result<..>`: a refusal is a typed error handed to the
//! guest; an `Err` of the outer result would be a host bug and traps. Whatever
//! the guest wrote (URLs, messages) is cleaned before it is logged.

use crate::sandbox::bindings::{wit, wit_holdings, wit_log, wit_outbound};
use crate::sandbox::http::{Request, SendError};
use crate::sandbox::instance::HostState;

impl wit_outbound::Host for HostState {
    async fn send(
        &mut self,
        req: wit_outbound::Request,
    ) -> wasmtime::Result<Result<wit_outbound::Response, wit_outbound::SendError>> {
        let request = Request::from(req);
        let method = self.redactor.clean(&request.method);
        let url = self.redactor.clean(&request.url);
        let outbound = self.outbound.clone();
        if let Some(rate) = &outbound.rate {
            rate.acquire().await;
        }
        let started = std::time::Instant::now();
        // A request may use three quarters of what is left of the call, so that
        // a plugin whose request timed out still has time to clean up (I5).
        let limit = self
            .deadline
            .map(|d| d.saturating_duration_since(started).mul_f64(0.75));
        // ureq blocks; on its own thread, the call's timeout can still end the plugin.
        let result = tokio::task::spawn_blocking(move || outbound.send(request, limit)).await?;
        let ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(r) => {
                tracing::debug!(%method, %url, status = r.status, bytes = r.body.len(), ms, "outbound request")
            }
            Err(SendError::DestinationNotAllowed(why)) => {
                tracing::warn!(%url, "refused an outbound request: {}", self.redactor.clean(why))
            }
            Err(e) => {
                tracing::debug!(%method, %url, ms, "outbound request failed: {}", self.redactor.clean(&e.to_string()))
            }
        }
        Ok(result.map(Into::into).map_err(Into::into))
    }
}

impl wit_log::Host for HostState {
    fn log(&mut self, level: wit_log::Level, message: String) -> wasmtime::Result<()> {
        let message = self.redactor.clean(crate::text::truncate(
            &message,
            crate::sandbox::instance::MAX_TEXT_BYTES,
        ));
        match level {
            wit_log::Level::Trace => tracing::trace!(target: "guest", "{message}"),
            wit_log::Level::Debug => tracing::debug!(target: "guest", "{message}"),
            wit_log::Level::Info => tracing::info!(target: "guest", "{message}"),
            wit_log::Level::Warn => tracing::warn!(target: "guest", "{message}"),
            wit_log::Level::Error => tracing::error!(target: "guest", "{message}"),
        }
        Ok(())
    }
}

impl wit_holdings::Host for HostState {
    fn held_elsewhere(&mut self, id: String) -> wasmtime::Result<bool> {
        Ok(self.holdings.held_elsewhere(&id, &self.holder))
    }
}

impl wit::Host for HostState {}
