//! The sandbox: one wasmtime engine per process, a fresh store per plugin
//! instance, a hard wall-clock limit on every call, one memory budget for the
//! whole plugin, and a WASI context with no files, no environment and no sockets.
//!
//! Time: every export call runs under `tokio::time::timeout`. Host calls that
//! wait (WASI sleeps and polls, `outbound.send`) are async, and WebAssembly code
//! yields to the executor at every epoch tick, so the timeout fires whatever the
//! plugin is doing.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::holdings::Holdings;
use crate::sandbox::allowlist::{AllowList, NetworkPolicy};
use crate::sandbox::bindings;
use crate::sandbox::cache;
use crate::sandbox::http::{HttpConfig, Outbound};
use crate::sandbox::plugin::{
    ConfigItem, Context, CredentialUse, Finalized, PluginError, PluginInfo, Rotation, Subject,
};
use crate::secret::Redactor;

/// The WIT package a plugin must implement.
pub const WORLD: &str = "pam:rotation/plugin@0.4.0";

/// The largest plugin file read: the AWS plugin is under 400 KiB.
const MAX_PLUGIN_BYTES: u64 = 256 << 20;
/// How often WebAssembly code yields to the executor, so a timeout can fire.
const TICK: Duration = Duration::from_millis(10);
const STDERR_CAP: usize = 64 * 1024;
/// Counted against the memory budget for each table element (a pointer and its type).
const TABLE_ELEMENT_BYTES: usize = 16;
/// Bytes one import call may pass to the host.
const HOSTCALL_BYTES: usize = 4 << 20;
/// Live WASI handles (pollables, streams) per instance.
const MAX_HANDLES: usize = 1_000;
/// Limits on what `rotate` may return: a real plugin needs a handful of short fields.
const MAX_FIELDS: usize = 32;
const MAX_LABEL_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 64 << 10;
const MAX_NOTES: usize = 64;
/// Text from the plugin (notes, errors, log lines) is cut to this before it is cleaned.
pub const MAX_TEXT_BYTES: usize = 16 << 10;

/// Resource limits of one plugin run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// All linear memories and tables of the plugin together, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time one export call may take, whatever the plugin is doing.
    pub call_timeout: Duration,
    pub http: HttpConfig,
    /// What the operator lets plugins reach, on top of what they declare.
    pub network: NetworkPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(300),
            http: HttpConfig::default(),
            network: NetworkPolicy::default(),
        }
    }
}

/// Why the sandbox could not run the plugin, or stopped it.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("could not read plugin {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is a core WebAssembly module, not a component: build the plugin for the wasm32-wasip2 target"
    )]
    CoreModule { path: PathBuf },
    #[error("{path} is not a WebAssembly component: pass the plugin's .wasm file ({why})")]
    NotComponent { path: PathBuf, why: String },
    #[error(
        "{path} does not implement {WORLD}: {why}. Rebuild the plugin against this host's wit/"
    )]
    WrongWorld { path: PathBuf, why: String },
    #[error(
        "the plugin's `{call}` ran past its time limit of {limit:?} (--timeout) and was stopped; raise --timeout if the service is slow"
    )]
    Timeout { call: &'static str, limit: Duration },
    #[error(
        "the plugin's `{call}` tried to use more than {limit_mib} MiB of memory in all (--memory-mib) and was stopped; raise --memory-mib if it needs more"
    )]
    MemoryLimit {
        call: &'static str,
        limit_mib: usize,
    },
    #[error("the plugin crashed in `{call}`: {why}. This is a bug in the plugin")]
    Trap { call: &'static str, why: String },
    #[error("the plugin declares an invalid allowed host: {0}")]
    AllowList(#[from] crate::sandbox::allowlist::PatternError),
    #[error("the WebAssembly engine failed: {0}")]
    Engine(String),
    #[error(
        "the plugin's `{call}` cannot run: an earlier call was stopped part-way. This is a bug in rotate-host"
    )]
    Stopped { call: &'static str },
}

impl SandboxError {
    /// True when the user passed the wrong file, rather than the plugin misbehaving.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Read { .. }
                | Self::CoreModule { .. }
                | Self::NotComponent { .. }
                | Self::WrongWorld { .. }
        )
    }
}

/// One memory budget for everything a plugin instance allocates: every linear
/// memory and table of every core instance counts against the same total.
struct MemoryBudget {
    limit: usize,
    used: usize,
    /// Whether a growth was refused, to name the limit when the plugin traps.
    refused: bool,
}

impl MemoryBudget {
    fn grow(&mut self, bytes: usize) -> bool {
        match self.used.checked_add(bytes).filter(|n| *n <= self.limit) {
            Some(n) => {
                self.used = n;
                true
            }
            None => {
                self.refused = true;
                false
            }
        }
    }
}

impl ResourceLimiter for MemoryBudget {
    // Also called with `current == 0` when a memory is created.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current)))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        64
    }
}

/// Everything one plugin instance may touch.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    budget: MemoryBudget,
    stderr: MemoryOutputPipe,
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) redactor: Redactor,
    /// When the running call will be stopped: HTTP requests end before it.
    pub(crate) deadline: Option<std::time::Instant>,
    /// Who holds which credential in the vault, and the record this instance rotates (I6).
    pub(crate) holdings: Arc<Holdings>,
    pub(crate) holder: String,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A compiled plugin, ready to instantiate.
pub struct Plugin {
    path: PathBuf,
    engine: Engine,
    pre: bindings::PluginPre<HostState>,
    limits: Limits,
    /// `info`, asked once per process.
    info: tokio::sync::OnceCell<PluginInfo>,
}

impl Plugin {
    /// Reads, compiles (or loads from `cache_dir`) and type-checks a plugin.
    pub fn load(
        path: &Path,
        limits: Limits,
        cache_dir: Option<&Path>,
    ) -> Result<Self, SandboxError> {
        let bytes = crate::fsguard::read_regular(path, MAX_PLUGIN_BYTES).map_err(|source| {
            SandboxError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
        // A core module starts with version 1; a component with its layer byte set.
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(SandboxError::CoreModule {
                path: path.to_path_buf(),
            });
        }
        if bytes.len() < 8 || bytes[..4] != *b"\0asm" {
            return Err(SandboxError::NotComponent {
                path: path.to_path_buf(),
                why: "it does not start with the WebAssembly magic bytes".into(),
            });
        }
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        // Copy-on-write memory images pay off when instantiating many times; a
        // run instantiates once, and the images' memfds count against RLIMIT_FSIZE.
        config.memory_init_cow(false);
        let engine = Engine::new(&config).map_err(|e| SandboxError::Engine(e.to_string()))?;
        start_epoch_ticker(&engine);

        let started = std::time::Instant::now();
        let component =
            cache::load(&engine, &bytes, cache_dir).map_err(|e| SandboxError::NotComponent {
                path: path.to_path_buf(),
                why: format!("{e:#}"),
            })?;
        tracing::debug!(
            us = started.elapsed().as_micros() as u64,
            "plugin compiled or loaded"
        );

        let mut linker = Linker::<HostState>::new(&engine);
        let wrong_world = |e: wasmtime::Error| SandboxError::WrongWorld {
            path: path.to_path_buf(),
            why: format!("{e:#}"),
        };
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        let pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = bindings::PluginPre::new(pre).map_err(wrong_world)?;
        Ok(Self {
            path: path.to_path_buf(),
            engine,
            pre,
            limits,
            info: tokio::sync::OnceCell::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The limits every instance of this plugin runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What the plugin says about itself, from a throwaway instance, once.
    pub async fn info(&self) -> Result<&PluginInfo, SandboxError> {
        self.info
            .get_or_try_init(|| async { self.instantiate().await?.info().await })
            .await
    }

    /// What the plugin says about itself and its config fields, from a
    /// throwaway instance (for `info` and `config`).
    pub fn describe(&self) -> Result<(PluginInfo, Vec<ConfigItem>), SandboxError> {
        block_on(async {
            let mut instance = self.instantiate().await?;
            Ok((instance.info().await?, instance.config_schema().await?))
        })
    }

    /// A fresh instance in its own store. It can reach nothing until `allow` is called.
    pub async fn instantiate(&self) -> Result<Instance, SandboxError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        // No preopens, no environment, no arguments, no sockets, no name lookups.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            budget: MemoryBudget {
                limit: self.limits.memory_bytes,
                used: 0,
                refused: false,
            },
            stderr,
            outbound: Arc::new(Outbound::new(AllowList::default(), &self.limits.http)),
            redactor: Redactor::default(),
            deadline: None,
            holdings: Arc::default(),
            holder: String::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.budget);
        // What one import call may hand the host (a request, a log line): the
        // host's copies count against no budget, so keep them small.
        store.set_hostcall_fuel(HOSTCALL_BYTES);
        store.data_mut().table.set_max_capacity(MAX_HANDLES);
        // Yield to the executor at every tick, so the call's timeout can fire.
        store.epoch_deadline_async_yield_and_update(1);
        let instantiated = tokio::time::timeout(
            self.limits.call_timeout,
            self.pre.instantiate_async(&mut store),
        )
        .await;
        let bindings = match instantiated {
            Ok(Ok(b)) => b,
            Err(_) => {
                return Err(SandboxError::Timeout {
                    call: "instantiate",
                    limit: self.limits.call_timeout,
                });
            }
            Ok(Err(_)) if store.data().budget.refused => {
                return Err(SandboxError::MemoryLimit {
                    call: "instantiate",
                    limit_mib: self.limits.memory_bytes >> 20,
                });
            }
            // The plugin's start code trapped: a bug in the plugin, not the wrong file.
            Ok(Err(e)) if e.downcast_ref::<wasmtime::Trap>().is_some() => {
                return Err(SandboxError::Trap {
                    call: "instantiate",
                    why: format!("{}", e.root_cause()),
                });
            }
            Ok(Err(e)) => {
                return Err(SandboxError::WrongWorld {
                    path: self.path.clone(),
                    why: format!("{e:#}"),
                });
            }
        };
        Ok(Instance {
            store,
            bindings,
            limits: self.limits.clone(),
            stopped: false,
        })
    }
}

/// Bumps the engine's epoch every tick until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(TICK);
            }
        })
        .expect("spawn the epoch ticker");
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

/// Runs `future` to completion on a runtime of its own: the command-line
/// entry into the async engine. Blocking work still running at the end (an
/// HTTP request of a stopped plugin) is abandoned, not waited for.
pub fn block_on<F: Future>(future: F) -> F::Output {
    block_on_workers(1, future)
}

/// `block_on` with up to `jobs` worker threads (one per core at most), for
/// concurrent rotations.
pub fn block_on_workers<F: Future>(jobs: usize, future: F) -> F::Output {
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, jobs.max(1));
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("start the async runtime");
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    output
}

/// A live plugin instance.
pub struct Instance {
    store: Store<HostState>,
    bindings: bindings::Plugin,
    limits: Limits,
    /// An earlier call was cut short: the instance's state is unknown.
    stopped: bool,
}

impl Instance {
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

    pub async fn info(&mut self) -> Result<PluginInfo, SandboxError> {
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

    pub async fn config_schema(&mut self) -> Result<Vec<ConfigItem>, SandboxError> {
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
    pub async fn subject(
        &mut self,
        ctx: &Context,
    ) -> Result<Result<Subject, PluginError>, SandboxError> {
        let limit = self.start("subject")?;
        let ctx = bindings::context(ctx, limit);
        let r =
            tokio::time::timeout(limit, self.bindings.call_subject(&mut self.store, &ctx)).await;
        Ok(match self.finish("subject", r)? {
            Ok(s) if s.service.len() + s.login.len() > MAX_TEXT_BYTES => Err(PluginError::Failed(
                "the plugin's subject is longer than the host accepts: this is a bug in the plugin"
                    .into(),
            )),
            Ok(s) => Ok(Subject::from(s)),
            Err(e) => Err(self.plugin_error(e)),
        })
    }

    pub async fn rotate(
        &mut self,
        ctx: &Context,
    ) -> Result<Result<Rotation, PluginError>, SandboxError> {
        let limit = self.start("rotate")?;
        let ctx = bindings::context(ctx, limit);
        let r = tokio::time::timeout(limit, self.bindings.call_rotate(&mut self.store, &ctx)).await;
        let r = self.finish("rotate", r)?;
        Ok(match r {
            Ok(r) => {
                let r = Rotation::from(r);
                match oversized(&r) {
                    Some(why) => Err(PluginError::Failed(format!(
                        "the plugin's rotation result is out of bounds ({why}): this is a bug in \
                         the plugin; nothing was stored"
                    ))),
                    None => Ok(self.clean_rotation(r)),
                }
            }
            Err(e) => Err(self.plugin_error(e)),
        })
    }

    pub async fn finalize(
        &mut self,
        ctx: &Context,
        done: &Rotation,
    ) -> Result<Result<Finalized, PluginError>, SandboxError> {
        let limit = self.start("finalize")?;
        let (ctx, done) = (bindings::context(ctx, limit), done.into());
        let r = tokio::time::timeout(
            limit,
            self.bindings.call_finalize(&mut self.store, &ctx, &done),
        )
        .await;
        let r = self.finish("finalize", r)?;
        Ok(self.finalized(r))
    }

    /// Deletes the deactivated credentials of `ctx` whose grace period ended.
    pub async fn purge(
        &mut self,
        ctx: &Context,
    ) -> Result<Result<Finalized, PluginError>, SandboxError> {
        let limit = self.start("purge")?;
        let ctx = bindings::context(ctx, limit);
        let r = tokio::time::timeout(limit, self.bindings.call_purge(&mut self.store, &ctx)).await;
        let r = self.finish("purge", r)?;
        Ok(self.finalized(r))
    }

    /// When each kept credential of `ctx` was last used, as the service says.
    pub async fn last_used(
        &mut self,
        ctx: &Context,
    ) -> Result<Result<Vec<CredentialUse>, PluginError>, SandboxError> {
        let limit = self.start("last-used")?;
        let ctx = bindings::context(ctx, limit);
        let r =
            tokio::time::timeout(limit, self.bindings.call_last_used(&mut self.store, &ctx)).await;
        Ok(match self.finish("last-used", r)? {
            Ok(uses) if uses.len() > MAX_FIELDS => Err(PluginError::Failed(
                "the plugin reported more credentials than it was asked about: this is a bug in                  the plugin"
                    .into(),
            )),
            Ok(uses) => Ok(uses
                .into_iter()
                .map(|u| {
                    let u = CredentialUse::from(u);
                    let cut = |v: Option<String>| {
                        v.map(|v| self.clean(crate::text::truncate(&v, MAX_LABEL_BYTES)))
                    };
                    CredentialUse {
                        last_used: u
                            .last_used
                            .map(|v| crate::text::truncate(&v, MAX_LABEL_BYTES).to_string()),
                        service: cut(u.service),
                        region: cut(u.region),
                        ..u
                    }
                })
                .collect()),
            Err(e) => Err(self.plugin_error(e)),
        })
    }

    /// Ids are cleaned and notes cut: both are printed, and ids are stored.
    fn finalized(
        &self,
        r: Result<bindings::wit::Finalized, bindings::wit::PluginError>,
    ) -> Result<Finalized, PluginError> {
        let f = Finalized::from(r.map_err(|e| self.plugin_error(e))?);
        if f.retired.len() + f.deactivated.len() + f.kept.len() > MAX_FIELDS
            || f.notes.len() > MAX_NOTES
        {
            return Err(PluginError::Failed(
                "the plugin's answer lists more credentials or notes than the host accepts: this \
                 is a bug in the plugin"
                    .into(),
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

    pub async fn rollback(
        &mut self,
        ctx: &Context,
        done: &Rotation,
    ) -> Result<Result<(), PluginError>, SandboxError> {
        let limit = self.start("rollback")?;
        let (ctx, done) = (bindings::context(ctx, limit), done.into());
        let r = tokio::time::timeout(
            limit,
            self.bindings.call_rollback(&mut self.store, &ctx, &done),
        )
        .await;
        let r = self.finish("rollback", r)?;
        Ok(r.map_err(|e| self.plugin_error(e)))
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

    fn plugin_error(&self, e: bindings::wit::PluginError) -> PluginError {
        PluginError::from(e).map_message(|m| self.clean(crate::text::truncate(m, MAX_TEXT_BYTES)))
    }
}
