//! The sandbox: one wasmtime engine, an epoch ticker, memory and time limits,
//! and a WASI context with no files, no environment and no sockets.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::allowlist::AllowList;
use crate::bindings::{self, wit};
use crate::cache;
use crate::http::{HttpConfig, Outbound};
use crate::plugin::{ConfigItem, Context, PluginError, PluginInfo, Rotation};
use crate::secret::Redactor;

/// The WIT package a plugin must implement.
pub const WORLD: &str = "pam:rotation/plugin@0.1.0";

const TICK: Duration = Duration::from_millis(10);
const STDERR_CAP: usize = 64 * 1024;

/// Resource limits of one plugin run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory and tables, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time one export call may take, retries and HTTP included.
    pub call_timeout: Duration,
    pub http: HttpConfig,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(300),
            http: HttpConfig::default(),
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
        "the plugin's `{call}` ran past its time limit of {limit:?} and was stopped; raise --timeout if the service is slow"
    )]
    Timeout { call: &'static str, limit: Duration },
    #[error(
        "the plugin's `{call}` tried to use more than {limit_mib} MiB of memory and was stopped; raise --memory-mib if it needs more"
    )]
    MemoryLimit {
        call: &'static str,
        limit_mib: usize,
    },
    #[error("the plugin crashed in `{call}`: {why}. This is a bug in the plugin")]
    Trap { call: &'static str, why: String },
    #[error("the plugin declares an invalid allowed host: {0}")]
    AllowList(#[from] crate::allowlist::PatternError),
    #[error("the WebAssembly engine failed: {0}")]
    Engine(String),
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

/// `StoreLimits`, remembering whether it refused a memory growth.
struct MemoryLimiter {
    limits: StoreLimits,
    refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.table_growing(current, desired, maximum)?;
        self.refused |= !ok;
        Ok(ok)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Everything one plugin instance may touch.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    stderr: MemoryOutputPipe,
    pub(crate) outbound: Outbound,
    pub(crate) redactor: Redactor,
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
}

impl Plugin {
    /// Reads, compiles (or loads from `cache_dir`) and type-checks a plugin.
    pub fn load(
        path: &Path,
        limits: Limits,
        cache_dir: Option<&Path>,
    ) -> Result<Self, SandboxError> {
        let bytes = std::fs::read(path).map_err(|source| SandboxError::Read {
            path: path.to_path_buf(),
            source,
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
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
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
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh instance in its own store. It can reach nothing until `allow` is called.
    pub fn instantiate(&self) -> Result<Instance, SandboxError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        // No preopens, no environment, no arguments, no sockets, no name lookups.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limiter = MemoryLimiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .table_elements(100_000)
                .instances(64)
                .build(),
            refused: false,
        };
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter,
            stderr,
            outbound: Outbound::new(AllowList::default(), &self.limits.http),
            redactor: Redactor::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks(self.limits.call_timeout));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| SandboxError::WrongWorld {
                path: self.path.clone(),
                why: format!("{e:#}"),
            })?;
        Ok(Instance {
            store,
            bindings,
            limits: self.limits.clone(),
        })
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / TICK.as_millis()).max(1) as u64
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

/// A live plugin instance.
pub struct Instance {
    store: Store<HostState>,
    bindings: bindings::Plugin,
    limits: Limits,
}

impl Instance {
    /// Lets the guest reach `allow`; every other destination is refused.
    pub fn allow(&mut self, allow: AllowList) {
        self.store.data_mut().outbound = Outbound::new(allow, &self.limits.http);
    }

    /// Masks `secret` in everything the guest logs or returns as an error.
    pub fn add_secret(&mut self, secret: &str) {
        self.store.data_mut().redactor.add(secret);
    }

    /// Masks known secrets in `text`.
    pub fn redact(&self, text: &str) -> String {
        self.store.data().redactor.redact(text)
    }

    fn call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, SandboxError> {
        self.store
            .set_epoch_deadline(ticks(self.limits.call_timeout));
        let result = f(&self.bindings, &mut self.store);
        let stderr = self.store.data().stderr.contents();
        if !stderr.is_empty() {
            let text = self.redact(&String::from_utf8_lossy(&stderr));
            tracing::debug!(target: "guest", "stderr: {}", text.trim_end());
        }
        result.map_err(|e| {
            if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                SandboxError::Timeout {
                    call,
                    limit: self.limits.call_timeout,
                }
            } else if self.store.data().limiter.refused {
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
                    why: self.redact(&format!("{}{panic}", e.root_cause())),
                }
            }
        })
    }

    pub fn info(&mut self) -> Result<PluginInfo, SandboxError> {
        self.call("info", |b, s| b.call_info(s)).map(Into::into)
    }

    pub fn config_schema(&mut self) -> Result<Vec<ConfigItem>, SandboxError> {
        self.call("config-schema", |b, s| b.call_config_schema(s))
            .map(|items| items.into_iter().map(Into::into).collect())
    }

    pub fn rotate(&mut self, ctx: &Context) -> Result<Result<Rotation, PluginError>, SandboxError> {
        let ctx = wit::Context::from(ctx);
        let r = self.call("rotate", |b, s| b.call_rotate(s, &ctx))?;
        Ok(r.map(Into::into).map_err(|e| self.plugin_error(e)))
    }

    pub fn finalize(
        &mut self,
        ctx: &Context,
        done: &Rotation,
    ) -> Result<Result<Vec<String>, PluginError>, SandboxError> {
        let (ctx, done) = (wit::Context::from(ctx), wit::Rotation::from(done));
        let r = self.call("finalize", |b, s| b.call_finalize(s, &ctx, &done))?;
        Ok(r.map(|f| f.retired).map_err(|e| self.plugin_error(e)))
    }

    pub fn rollback(
        &mut self,
        ctx: &Context,
        done: &Rotation,
    ) -> Result<Result<(), PluginError>, SandboxError> {
        let (ctx, done) = (wit::Context::from(ctx), wit::Rotation::from(done));
        let r = self.call("rollback", |b, s| b.call_rollback(s, &ctx, &done))?;
        Ok(r.map_err(|e| self.plugin_error(e)))
    }

    fn plugin_error(&self, e: wit::PluginError) -> PluginError {
        PluginError::from(e).map_message(|m| self.redact(m))
    }
}
