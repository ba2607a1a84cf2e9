//! The sandbox: one wasmtime engine per process, a fresh store per plugin
//! instance, a hard wall-clock limit on every call, one memory budget for the
//! whole plugin, and a WASI context with no files, no environment and no sockets.
//!
//! Time: every export call runs under `tokio::time::timeout`. Host calls that
//! wait (WASI sleeps and polls, `outbound.send`) are async, and WebAssembly code
//! yields to the executor at every epoch tick, so the timeout fires whatever the
//! plugin is doing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::sandbox::allowlist::{AllowList, NetworkPolicy};
use crate::sandbox::bindings;
use crate::sandbox::budget::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, MemoryBudget};
use crate::sandbox::cache;
use crate::sandbox::http::{HttpConfig, Outbound};
use crate::sandbox::instance::{HostState, Instance};
use crate::sandbox::plugin::{ConfigItem, PluginError, PluginInfo};
use crate::sandbox::runtime::block_on;
use crate::secret::Redactor;

/// The WIT package a plugin must implement.
pub const WORLD: &str = "pam:rotation/plugin@0.6.0";

/// The largest plugin file read: the AWS plugin is under 400 KiB.
const MAX_PLUGIN_BYTES: u64 = 256 << 20;
/// How often WebAssembly code yields to the executor, so a timeout can fire.
const TICK: Duration = Duration::from_millis(10);
const STDERR_CAP: usize = 64 * 1024;
/// Bytes one import call may pass to the host.
const HOSTCALL_BYTES: usize = 4 << 20;
/// Live WASI handles (pollables, streams) per instance.
const MAX_HANDLES: usize = 1_000;

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
        "the plugin's `{call}` ran past its time limit of {limit:?} (--timeout, or `timeout` in its [plugin.NAME] section) and was stopped; raise it if the service is slow"
    )]
    Timeout { call: &'static str, limit: Duration },
    #[error(
        "the plugin's `{call}` tried to use more than {limit_mib} MiB of memory in all (--memory-mib, or `memory-mib` in its [plugin.NAME] section) and was stopped; raise it if the plugin needs more"
    )]
    MemoryLimit {
        call: &'static str,
        limit_mib: usize,
    },
    #[error("the plugin crashed in `{call}`: {why}. This is a bug in the plugin")]
    Trap { call: &'static str, why: String },
    #[error(
        "the plugin needs more than the sandbox allows ({why}): at most {MAX_INSTANCES} core \
         instances, {MAX_TABLES} tables and {MAX_MEMORIES} memories. It cannot run here; ask its \
         author for a smaller build"
    )]
    TooLarge { why: String },
    #[error("the plugin declares an invalid allowed host: {0}")]
    AllowList(#[from] crate::sandbox::allowlist::PatternError),
    #[error("the WebAssembly engine failed: {0}")]
    Engine(String),
    #[error(
        "the plugin's `{call}` cannot run: an earlier call was stopped part-way. This is a bug in rotate-host"
    )]
    Stopped { call: &'static str },
    #[error("the plugin's `{call}` answered out of bounds ({why}): this is a bug in the plugin")]
    BadAnswer { call: &'static str, why: String },
}

impl SandboxError {
    /// The plugin call it happened in, if it happened in one.
    pub fn call(&self) -> Option<&'static str> {
        match self {
            Self::Timeout { call, .. }
            | Self::MemoryLimit { call, .. }
            | Self::Trap { call, .. }
            | Self::Stopped { call }
            | Self::BadAnswer { call, .. } => Some(call),
            _ => None,
        }
    }
}

/// Why a plugin call did not return what was asked: the plugin refused (and
/// said why), failed (crashed, or broke the contract), or was stopped.
#[derive(Debug, Error)]
pub enum CallError {
    /// The plugin's own error: it refused, or could not do the work.
    #[error("{error}")]
    Refused {
        call: &'static str,
        error: PluginError,
    },
    /// The plugin crashed, could not start, or answered out of bounds.
    #[error("{0}")]
    Failed(SandboxError),
    /// The sandbox stopped it: its time or memory limit, or an earlier stop.
    #[error("{0}")]
    Stopped(SandboxError),
}

impl From<SandboxError> for CallError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Timeout { .. }
            | SandboxError::MemoryLimit { .. }
            | SandboxError::Stopped { .. } => Self::Stopped(e),
            other => Self::Failed(other),
        }
    }
}

impl CallError {
    /// The user's input is wrong (the plugin file, or a config the plugin
    /// calls invalid), rather than the plugin or the service failing.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Refused { error, .. } => matches!(error, PluginError::InvalidConfig(_)),
            Self::Failed(e) | Self::Stopped(e) => e.is_bad_input(),
        }
    }
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

/// A compiled plugin, ready to instantiate.
pub struct Plugin {
    path: PathBuf,
    engine: Engine,
    pre: bindings::PluginPre<HostState>,
    limits: Limits,
    /// `info`, asked once per process.
    info: tokio::sync::OnceCell<PluginInfo>,
    /// The component file's SHA-256, lowercase hex.
    digest: String,
    /// Whether the operator lets it be lent the host's own identity.
    lendable: bool,
}

/// The process's one engine: every plugin compiles and runs on it, under
/// one epoch ticker.
fn shared_engine() -> Result<Engine, SandboxError> {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine.clone());
    }
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    // Copy-on-write memory images pay off when instantiating many times; a
    // run instantiates once, and the images' memfds count against RLIMIT_FSIZE.
    config.memory_init_cow(false);
    let engine = Engine::new(&config).map_err(|e| SandboxError::Engine(e.to_string()))?;
    let shared = ENGINE.get_or_init(|| {
        start_epoch_ticker(&engine);
        engine
    });
    Ok(shared.clone())
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
        let engine = shared_engine()?;
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
            digest: cache::sha256_hex(&bytes),
            lendable: true,
        })
    }

    /// The limits every instance of this plugin runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The same plugin under the operator's `limits`, lendable the host's
    /// identity or not (its section of the config file).
    pub fn under(mut self, limits: Limits, lendable: bool) -> Self {
        self.limits = limits;
        self.lendable = lendable;
        self
    }

    /// Its `info` name, once `info` has been asked.
    pub fn name(&self) -> Option<&str> {
        self.info.get().map(|i| i.name.as_str())
    }

    /// The component file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The component file's SHA-256, lowercase hex, as a pin names it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether the operator lets it be lent the host's own identity.
    pub fn lendable(&self) -> bool {
        self.lendable
    }

    /// What the plugin says about itself, from a throwaway instance, once.
    pub async fn info(&self) -> Result<&PluginInfo, CallError> {
        self.info
            .get_or_try_init(|| async { self.instantiate().await?.info().await })
            .await
    }

    /// What the plugin says about itself and its config fields, from a
    /// throwaway instance (for `info` and `config`).
    pub fn describe(&self) -> Result<(PluginInfo, Vec<ConfigItem>), CallError> {
        block_on(async {
            let mut instance = self.instantiate().await?;
            Ok((instance.info().await?, instance.config_schema().await?))
        })
    }

    /// A fresh instance in its own store. It can reach nothing until `allow` is called.
    pub async fn instantiate(&self) -> Result<Instance, SandboxError> {
        self.instantiate_within(self.limits.call_timeout).await
    }

    /// `instantiate`, with every call of the instance (instantiation
    /// included) held to `call_timeout` or the plugin's own, the shorter.
    pub async fn instantiate_within(
        &self,
        call_timeout: Duration,
    ) -> Result<Instance, SandboxError> {
        let mut limits = self.limits.clone();
        limits.call_timeout = limits.call_timeout.min(call_timeout);
        let state = fresh_state(&limits);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.budget);
        // What one import call may hand the host (a request, a log line): the
        // host's copies count against no budget, so keep them small.
        store.set_hostcall_fuel(HOSTCALL_BYTES);
        store.data_mut().table.set_max_capacity(MAX_HANDLES);
        // Yield to the executor at every tick, so the call's timeout can fire.
        store.epoch_deadline_async_yield_and_update(1);
        let instantiated =
            tokio::time::timeout(limits.call_timeout, self.pre.instantiate_async(&mut store)).await;
        let bindings = match instantiated {
            Ok(Ok(b)) => b,
            Err(_) => {
                return Err(SandboxError::Timeout {
                    call: "instantiate",
                    limit: limits.call_timeout,
                });
            }
            Ok(Err(_)) if store.data().budget.refused => {
                return Err(SandboxError::MemoryLimit {
                    call: "instantiate",
                    limit_mib: limits.memory_bytes >> 20,
                });
            }
            // wasmtime's words for a count past the limiter's `instances`,
            // `tables` or `memories` (a test notices if they change).
            Ok(Err(e)) if e.to_string().starts_with("resource limit exceeded") => {
                return Err(SandboxError::TooLarge { why: e.to_string() });
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
            limits: limits.clone(),
            stopped: false,
        })
    }
}

/// What a new instance may touch: a WASI context with no preopens, no
/// environment, no arguments, no sockets and no name lookups, its budget,
/// and an outbound side that reaches nothing until `Instance::allow`.
fn fresh_state(limits: &Limits) -> HostState {
    let stderr = MemoryOutputPipe::new(STDERR_CAP);
    let wasi = WasiCtx::builder()
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    HostState {
        wasi,
        table: ResourceTable::new(),
        budget: MemoryBudget {
            limit: limits.memory_bytes,
            used: 0,
            refused: false,
        },
        stderr,
        outbound: Arc::new(Outbound::new(AllowList::default(), &limits.http)),
        redactor: Redactor::default(),
        deadline: None,
        holdings: Arc::default(),
        holder: String::new(),
        tcp_open: 0,
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
