//! A live plugin instance: its store, every export call under the call's
//! time limit, and what the plugin returns, bounded and cleaned.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::holdings::Holdings;
use crate::sandbox::allowlist::AllowList;
use crate::sandbox::bindings;
use crate::sandbox::budget::MemoryBudget;
use crate::sandbox::engine::{CallError, Limits, SandboxError};
use crate::sandbox::http::Outbound;
use crate::sandbox::plugin::{
    ConfigItem, Context, CredentialUse, Finalized, PluginError, PluginInfo, Rotation, Subject,
};
use crate::secret::Redactor;

/// An answer the host refuses to take: a bug in the plugin.
fn bad_answer(call: &'static str, why: &str) -> CallError {
    CallError::Failed(SandboxError::BadAnswer {
        call,
        why: why.to_string(),
    })
}

/// Limits on what `rotate` may return: a real plugin needs a handful of short fields.
const MAX_FIELDS: usize = 32;

const MAX_LABEL_BYTES: usize = 256;

const MAX_VALUE_BYTES: usize = 64 << 10;

const MAX_NOTES: usize = 64;

/// Text from the plugin (notes, errors, log lines) is cut to this before it is cleaned.
pub const MAX_TEXT_BYTES: usize = 16 << 10;

/// Everything one plugin instance may touch.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) budget: MemoryBudget,
    pub(super) stderr: MemoryOutputPipe,
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) redactor: Redactor,
    /// When the running call will be stopped: HTTP requests end before it.
    pub(crate) deadline: Option<std::time::Instant>,
    /// Who holds which credential in the vault, and the record this instance rotates (I6).
    pub(crate) holdings: Arc<Holdings>,
    pub(crate) holder: String,
    /// `tcp` connections open now.
    pub(crate) tcp_open: usize,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Why a rotation result is too large to take, if it is.
fn oversized(r: &Rotation) -> Option<String> {
    if r.fields.len() > MAX_FIELDS {
        return Some(format!("{} fields, at most {MAX_FIELDS}", r.fields.len()));
    }
    for f in &r.fields {
        let names = std::iter::once(&f.label).chain(&f.aliases);
        if f.aliases.len() > 8 || names.clone().any(|n| n.len() > MAX_LABEL_BYTES) {
            return Some(format!(
                "a field has more than 8 aliases or a label over {MAX_LABEL_BYTES} bytes"
            ));
        }
        if f.value.expose().len() > MAX_VALUE_BYTES {
            return Some(format!("a value over {MAX_VALUE_BYTES} bytes"));
        }
    }
    if r.notes.len() > MAX_NOTES || r.retire.len() + r.deleted.len() > MAX_FIELDS {
        return Some(format!(
            "{} notes and {} keys to retire",
            r.notes.len(),
            r.retire.len()
        ));
    }
    let ids = r.created.iter().chain(&r.retire);
    if ids.into_iter().any(|id| id.len() > MAX_LABEL_BYTES) {
        return Some(format!("a key id over {MAX_LABEL_BYTES} bytes"));
    }
    None
}

/// A live plugin instance.
pub struct Instance {
    pub(super) store: Store<HostState>,
    pub(super) bindings: bindings::Plugin,
    pub(super) limits: Limits,
    /// An earlier call was cut short: the instance's state is unknown.
    pub(super) stopped: bool,
}

impl Instance {
    /// The bytes its memories and tables hold now, as the budget counts them.
    pub fn memory_used(&self) -> usize {
        self.store.data().budget.used
    }

    /// Lets the guest reach `allow`; every other destination is refused.
    pub fn allow(&mut self, allow: AllowList) {
        self.store.data_mut().outbound = Arc::new(Outbound::new(allow, &self.limits.http));
    }

    /// Tells the guest, through `held-elsewhere`, which credentials records
    /// other than `uid` hold (I6). Until called, it is told none are.
    pub fn hold(&mut self, holdings: Arc<Holdings>, uid: &str) {
        let state = self.store.data_mut();
        state.holdings = holdings;
        state.holder = uid.to_string();
    }

    /// Masks `secret` (and its encoded forms) in everything the guest says.
    pub fn add_secret(&mut self, secret: &str) {
        self.store.data_mut().redactor.add(secret);
    }

    /// `text` from the guest or the network, safe to print: known secrets
    /// masked, control and bidi characters escaped.
    pub fn clean(&self, text: &str) -> String {
        self.store.data().redactor.clean(text)
    }

    fn start(&mut self, call: &'static str) -> Result<Duration, SandboxError> {
        if self.stopped {
            return Err(SandboxError::Stopped { call });
        }
        self.store.data_mut().deadline = Some(std::time::Instant::now() + self.limits.call_timeout);
        Ok(self.limits.call_timeout)
    }

    /// Maps the end of a call: its time limit, the memory budget, or a trap.
    fn finish<R>(
        &mut self,
        call: &'static str,
        result: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    ) -> Result<R, SandboxError> {
        let stderr = self.store.data().stderr.contents();
        if !stderr.is_empty() {
            for line in String::from_utf8_lossy(&stderr).lines() {
                tracing::debug!(target: "guest", "stderr: {}", self.clean(line));
            }
        }
        let result = match result {
            Ok(r) => r,
            Err(_) => {
                self.stopped = true;
                return Err(SandboxError::Timeout {
                    call,
                    limit: self.limits.call_timeout,
                });
            }
        };
        result.map_err(|e| {
            self.stopped = true;
            if self.store.data().budget.refused {
                SandboxError::MemoryLimit {
                    call,
                    limit_mib: self.limits.memory_bytes >> 20,
                }
            } else {
                let panic = String::from_utf8_lossy(&stderr)
                    .lines()
                    .find(|l| l.contains("panicked"))
                    .map(|l| format!(" ({})", l.trim()))
                    .unwrap_or_default();
                SandboxError::Trap {
                    call,
                    why: self.clean(&format!("{}{panic}", e.root_cause())),
                }
            }
        })
    }

    /// What the plugin says about itself, its text cleaned and bounded.
    pub async fn info(&mut self) -> Result<PluginInfo, CallError> {
        let limit = self.start("info")?;
        let r = tokio::time::timeout(limit, self.bindings.call_info(&mut self.store)).await;
        let info = PluginInfo::from(self.finish("info", r)?);
        Ok(PluginInfo {
            name: self.clean(&info.name),
            summary: self.clean(&info.summary),
            version: self.clean(&info.version),
            allowed_hosts: info.allowed_hosts.iter().map(|h| self.clean(h)).collect(),
            credential_id_fields: info
                .credential_id_fields
                .iter()
                .take(MAX_FIELDS)
                .map(|f| crate::text::truncate(f, MAX_LABEL_BYTES).to_string())
                .collect(),
            ..info
        })
    }

    /// The plugin's config fields, their text cleaned.
    pub async fn config_schema(&mut self) -> Result<Vec<ConfigItem>, CallError> {
        let limit = self.start("config-schema")?;
        let r =
            tokio::time::timeout(limit, self.bindings.call_config_schema(&mut self.store)).await;
        let items = self.finish("config-schema", r)?;
        Ok(items
            .into_iter()
            .map(|i| {
                let i = ConfigItem::from(i);
                ConfigItem {
                    id: self.clean(&i.id),
                    label: self.clean(&i.label),
                    desc: self.clean(&i.desc),
                    default_value: i.default_value.as_deref().map(|d| self.clean(d)),
                    enum_values: i
                        .enum_values
                        .iter()
                        .map(|(v, d)| (self.clean(v), self.clean(d)))
                        .collect(),
                    ..i
                }
            })
            .collect())
    }

    /// What a rotation of `ctx`'s records would rotate. Call it before
    /// `allow`: the plugin can then reach nothing.
    pub async fn subject(&mut self, ctx: &Context) -> Result<Subject, CallError> {
        let call = "subject";
        let limit = self.start(call)?;
        let ctx = bindings::context(ctx, limit);
        let r =
            tokio::time::timeout(limit, self.bindings.call_subject(&mut self.store, &ctx)).await;
        let s = self.finish(call, r)?.map_err(|e| self.refused(call, e))?;
        if s.service.len() + s.login.len() > MAX_TEXT_BYTES {
            return Err(bad_answer(call, "a subject longer than the host accepts"));
        }
        Ok(Subject::from(s))
    }

    /// The plan, or the new credential and the fields to store.
    pub async fn rotate(&mut self, ctx: &Context) -> Result<Rotation, CallError> {
        let call = "rotate";
        let limit = self.start(call)?;
        let ctx = bindings::context(ctx, limit);
        let r = tokio::time::timeout(limit, self.bindings.call_rotate(&mut self.store, &ctx)).await;
        let r = Rotation::from(self.finish(call, r)?.map_err(|e| self.refused(call, e))?);
        match oversized(&r) {
            Some(why) => Err(bad_answer(call, &why)),
            None => Ok(self.clean_rotation(r)),
        }
    }

    /// Proves the new credential works, then retires the old one.
    pub async fn finalize(
        &mut self,
        ctx: &Context,
        done: &Rotation,
    ) -> Result<Finalized, CallError> {
        let call = "finalize";
        let limit = self.start(call)?;
        let (ctx, done) = (bindings::context(ctx, limit), done.into());
        let r = tokio::time::timeout(
            limit,
            self.bindings.call_finalize(&mut self.store, &ctx, &done),
        )
        .await;
        let r = self.finish(call, r)?;
        self.finalized(call, r)
    }

    /// Deletes the deactivated credentials of `ctx` whose grace period ended.
    pub async fn purge(&mut self, ctx: &Context) -> Result<Finalized, CallError> {
        let call = "purge";
        let limit = self.start(call)?;
        let ctx = bindings::context(ctx, limit);
        let r = tokio::time::timeout(limit, self.bindings.call_purge(&mut self.store, &ctx)).await;
        let r = self.finish(call, r)?;
        self.finalized(call, r)
    }

    /// When each kept credential of `ctx` was last used, as the service says.
    pub async fn last_used(&mut self, ctx: &Context) -> Result<Vec<CredentialUse>, CallError> {
        let call = "last-used";
        let limit = self.start(call)?;
        let ctx = bindings::context(ctx, limit);
        let r =
            tokio::time::timeout(limit, self.bindings.call_last_used(&mut self.store, &ctx)).await;
        let uses = self.finish(call, r)?.map_err(|e| self.refused(call, e))?;
        if uses.len() > MAX_FIELDS {
            return Err(bad_answer(call, "more credentials than it was asked about"));
        }
        let cut =
            |v: Option<String>| v.map(|v| self.clean(crate::text::truncate(&v, MAX_LABEL_BYTES)));
        Ok(uses
            .into_iter()
            .map(|u| {
                let u = CredentialUse::from(u);
                CredentialUse {
                    last_used: u
                        .last_used
                        .map(|v| crate::text::truncate(&v, MAX_LABEL_BYTES).to_string()),
                    service: cut(u.service),
                    region: cut(u.region),
                    ..u
                }
            })
            .collect())
    }

    /// Ids are cleaned and notes cut: both are printed, and ids are stored.
    fn finalized(
        &self,
        call: &'static str,
        r: Result<bindings::wit::Finalized, bindings::wit::PluginError>,
    ) -> Result<Finalized, CallError> {
        let f = Finalized::from(r.map_err(|e| self.refused(call, e))?);
        if f.retired.len() + f.deactivated.len() + f.kept.len() > MAX_FIELDS
            || f.notes.len() > MAX_NOTES
        {
            return Err(bad_answer(
                call,
                "more credentials or notes than the host accepts",
            ));
        }
        let ids = |v: &[String]| v.iter().map(|id| self.clean(id)).collect();
        Ok(Finalized {
            retired: ids(&f.retired),
            deactivated: ids(&f.deactivated),
            kept: ids(&f.kept),
            notes: f
                .notes
                .iter()
                .map(|n| self.clean(crate::text::truncate(n, MAX_TEXT_BYTES)))
                .collect(),
        })
    }

    /// Deletes the new credential again after its store failed.
    pub async fn rollback(&mut self, ctx: &Context, done: &Rotation) -> Result<(), CallError> {
        let call = "rollback";
        let limit = self.start(call)?;
        let (ctx, done) = (bindings::context(ctx, limit), done.into());
        let r = tokio::time::timeout(
            limit,
            self.bindings.call_rollback(&mut self.store, &ctx, &done),
        )
        .await;
        self.finish(call, r)?.map_err(|e| self.refused(call, e))
    }

    /// Notes are only for printing, so they are cut and cleaned here. Key ids go back
    /// to the plugin as it gave them and are cleaned where they are printed.
    fn clean_rotation(&self, r: Rotation) -> Rotation {
        Rotation {
            notes: r
                .notes
                .iter()
                .map(|n| self.clean(crate::text::truncate(n, MAX_TEXT_BYTES)))
                .collect(),
            ..r
        }
    }

    /// The plugin's own error, its message cut and cleaned.
    fn refused(&self, call: &'static str, e: bindings::wit::PluginError) -> CallError {
        let error = PluginError::from(e)
            .map_message(|m| self.clean(crate::text::truncate(m, MAX_TEXT_BYTES)));
        CallError::Refused { call, error }
    }
}
