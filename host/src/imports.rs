//! The host side of the guest's imports: `outbound` and `log`.
//!
//! Each returns `wasmtime::Result<..>`: a refusal is a typed error handed to the
//! guest; an `Err` of the outer result would be a host bug and traps.

use crate::bindings::{wit, wit_log, wit_outbound};
use crate::engine::HostState;

impl wit_outbound::Host for HostState {
    fn send(
        &mut self,
        req: wit_outbound::Request,
    ) -> wasmtime::Result<Result<wit_outbound::Response, wit_outbound::SendError>> {
        Ok(self.outbound.send(req.into()).map(Into::into).map_err(|e| {
            tracing::debug!("outbound request failed: {e}");
            e.into()
        }))
    }
}

impl wit_log::Host for HostState {
    fn log(&mut self, level: wit_log::Level, message: String) -> wasmtime::Result<()> {
        let message = self.redactor.redact(&message);
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

impl wit::Host for HostState {}
