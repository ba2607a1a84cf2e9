//! The host side of the guest's imports: `outbound`, `tcp`, `log` and `holdings`.
//!
//! Each returns `wasmtime::Result<..>`: a refusal is a typed error handed to the
//! guest; an `Err` of the outer result would be a host bug and traps. Whatever
//! the guest wrote (URLs, messages) is cleaned before it is logged.

use wasmtime::component::Resource;

use crate::sandbox::bindings::{wit, wit_holdings, wit_log, wit_outbound, wit_tcp};
use crate::sandbox::http::{Request, SendError};
use crate::sandbox::instance::HostState;
use crate::sandbox::tcp::{Connection, MAX_CONNECTIONS, TcpError};

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
        let limit = self.io_left();
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

impl HostState {
    /// What is left of the running call, three quarters of it: a plugin whose
    /// I/O timed out still has time to clean up (I5).
    fn io_left(&self) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        self.deadline
            .map(|d| d.saturating_duration_since(now).mul_f64(0.75))
    }

    /// Runs `f` on the connection `conn` on a blocking thread.
    async fn on_connection<T: Send + 'static>(
        &mut self,
        conn: &Resource<Connection>,
        f: impl FnOnce(&Connection, std::time::Duration) -> Result<T, TcpError> + Send + 'static,
    ) -> wasmtime::Result<Result<T, wit_tcp::TcpError>> {
        let connection = self.table.get(conn)?.clone();
        let limit = self.outbound.tcp_limit(self.io_left());
        let result = tokio::task::spawn_blocking(move || f(&connection, limit)).await?;
        if let Err(e) = &result {
            tracing::debug!("tcp: {}", self.redactor.clean(&e.to_string()));
        }
        Ok(result.map_err(Into::into))
    }
}

impl wit_tcp::Host for HostState {
    async fn connect(
        &mut self,
        host: String,
        port: u16,
    ) -> wasmtime::Result<Result<Resource<Connection>, wit_tcp::TcpError>> {
        let shown = format!("{}:{port}", self.redactor.clean(&host));
        if self.tcp_open >= MAX_CONNECTIONS {
            return Ok(Err(wit_tcp::TcpError::ConnectFailed(format!(
                "the plugin already has {MAX_CONNECTIONS} connections open; close one first"
            ))));
        }
        let outbound = self.outbound.clone();
        // Checked before any name lookup or rate slot: a refused destination costs nothing.
        if let Err(why) = outbound.check_tcp(&host, port) {
            tracing::warn!(destination = %shown, "refused a tcp connection: {}", self.redactor.clean(&why));
            return Ok(Err(wit_tcp::TcpError::DestinationNotAllowed(why)));
        }
        if let Some(rate) = &outbound.rate {
            rate.acquire().await;
        }
        let opened = tokio::task::spawn_blocking(move || outbound.connect(&host, port)).await?;
        match opened {
            Ok(connection) => {
                tracing::debug!(destination = %shown, "tcp connection opened");
                self.tcp_open += 1;
                Ok(Ok(self.table.push(connection)?))
            }
            Err(e) => {
                tracing::debug!(destination = %shown, "tcp connect failed: {}", self.redactor.clean(&e.to_string()));
                Ok(Err(e.into()))
            }
        }
    }
}

impl wit_tcp::HostConnection for HostState {
    async fn send(
        &mut self,
        conn: Resource<Connection>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit_tcp::TcpError>> {
        self.on_connection(&conn, move |c, limit| c.send(&data, limit))
            .await
    }

    async fn receive(
        &mut self,
        conn: Resource<Connection>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, wit_tcp::TcpError>> {
        self.on_connection(&conn, move |c, limit| c.receive(max as usize, limit))
            .await
    }

    async fn start_tls(
        &mut self,
        conn: Resource<Connection>,
    ) -> wasmtime::Result<Result<(), wit_tcp::TcpError>> {
        let config = self.outbound.tcp_tls();
        self.on_connection(&conn, move |c, limit| c.start_tls(config, limit))
            .await
    }

    async fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        self.tcp_open = self.tcp_open.saturating_sub(1);
        Ok(())
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
