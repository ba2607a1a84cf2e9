//! The command line: its commands and flags, and the options they make.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fleet::FleetOptions;
use crate::rotation::identity::Lending;
use crate::sandbox::allowlist::{AllowedOrigin, NetworkPolicy};
use crate::sandbox::engine::Limits;
use crate::sandbox::http::{HttpConfig, read_ca_file};
use crate::sandbox::plugin_set::{PluginPolicy, PluginSource};
use crate::vault::{VaultOptions, VaultSource};

/// Runs credential-rotation plugins (WASI 0.2 components) in a sandbox against a vault: a JSON file, or Keeper.
#[derive(Debug, Parser)]
#[command(name = "rotate-host", version, about, long_about = None)]
pub struct Cli {
    /// How log lines on standard error look: `text`, or `json` (one JSON
    /// object a line, with its level). Filtered by RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ROTATE_HOST_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rotate the credential of a PAM user record.
    ///
    /// Exit codes: 0 rotated; 1 failed and nothing changed (or this run's new key
    /// was rolled back); 2 bad usage or input; 3 new key stored but the old key
    /// not yet removed (run again).
    Run(RunArgs),
    /// Create a plugin config record, asking for each field on a terminal.
    Config(ConfigArgs),
    /// Show what a plugin is, what it may reach and its config fields.
    Info(InfoArgs),
    /// Rotate every due PAM user record of the vault once, then exit.
    ///
    /// A record is in the fleet when it has a custom field 'Rotation Config'
    /// (a config record UID). Exit codes: 0 every due record rotated (or none
    /// was due); 3 some are stored but not finalized and none failed; 1 any
    /// failed; 2 bad flags or an unusable vault.
    Due(DueArgs),
    /// Run a `due` pass, then sleep --interval seconds, until SIGTERM or SIGINT.
    ///
    /// SIGHUP re-reads --config and the plugin between passes; a running
    /// pass finishes on what it started with.
    Gateway(GatewayArgs),
    /// Check a gateway config file (TOML, one key per long flag of `gateway`)
    /// and the plugin it names, without running anything. The vault, the
    /// audit log and the metrics port are not opened.
    CheckConfig {
        /// The config file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Refuse a config file that group or others can read, instead of warning.
        #[arg(long)]
        strict_permissions: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), for `man -l -` or a man directory.
    Man,
}

/// The fleet's flags, shared by `due` and `gateway`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The plugin component (.wasm), compiled once for the whole process; it
    /// serves every config record.
    #[arg(
        value_name = "GUEST.wasm",
        required_unless_present_any = ["config", "plugins"],
        conflicts_with = "plugins"
    )]
    pub guest: Option<PathBuf>,
    /// A folder of plugin components, each compiled once: a config record's
    /// 'SaaS Type' picks the plugin of that name.
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Read settings from this TOML file: one key per long flag (`jobs = 8`,
    /// `allow-host = [...]`), `guest` for the plugin, and a `[plugin.NAME]`
    /// section of policy per plugin. Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Rotate records whose key is this old, when neither the record nor its
    /// config record sets a schedule [1-36500].
    #[arg(long, value_name = "DAYS", default_value_t = 90, value_parser = clap::value_parser!(i64).range(1..=36_500))]
    pub max_age_days: i64,
    /// Rotations in plugin calls at once, per plugin [1-64]; those waiting
    /// for a shared save do not count.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub jobs: u64,
    /// The plugins' outbound requests per second, across all jobs [1-10000].
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rps: u32,
    /// Plan every due record; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Append one JSON line per rotation attempt to this file (0600).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    #[command(flatten)]
    pub lend: LendArgs,
    #[command(flatten)]
    pub vault_options: VaultArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Whether the host's own AWS identity is lent, and to which configs.
#[derive(Debug, Args)]
pub struct LendArgs {
    /// Lend the host's own AWS identity (environment, profile, web identity,
    /// container or instance role) to rotations; the plugin signs with it
    /// only where the records give no credentials. A config record can
    /// decline it, never take it unlent.
    #[arg(long)]
    pub gateway_credentials: bool,
    /// Lend it only to rotations under this config record (repeatable);
    /// required by `due` and `gateway`.
    #[arg(long, value_name = "UID", requires = "gateway_credentials")]
    pub gateway_credentials_for: Vec<String>,
}

impl LendArgs {
    pub(crate) fn lending(&self) -> Lending {
        Lending {
            enabled: self.gateway_credentials,
            only: self.gateway_credentials_for.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct DueArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Print the result as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Seconds to sleep after a pass ends before the next one starts [1-86400].
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub interval: u64,
    /// Serve Prometheus metrics at /metrics and liveness at /healthz on this
    /// address, like 127.0.0.1:9187. Loopback only, unless --metrics-public.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Let --metrics listen on an address other than loopback.
    #[arg(long)]
    pub metrics_public: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub plugin: PluginArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// UID of the PAM user record whose credential is rotated.
    // Keeper UIDs are URL-safe base64 and may start with '-'.
    #[arg(
        short = 'u',
        long = "user",
        value_name = "PAM_USER_UID",
        allow_hyphen_values = true
    )]
    pub user: String,
    /// UID of the plugin config record.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "CONFIG_UID",
        allow_hyphen_values = true
    )]
    pub config: String,
    /// UID of a provider record (for AWS, a pamAwsConfiguration record) that
    /// supplies what the config record leaves blank.
    #[arg(
        long = "configuration-uid",
        value_name = "UID",
        allow_hyphen_values = true
    )]
    pub configuration_uid: Option<String>,
    /// Decide and print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// Append one JSON line for this rotation attempt to this file (0600).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    #[command(flatten)]
    pub lend: LendArgs,
    #[command(flatten)]
    pub vault_options: VaultArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// One plugin file, or a folder of them (`run` and `info`).
#[derive(Debug, Args)]
pub struct PluginArgs {
    /// The plugin component (.wasm).
    #[arg(
        value_name = "GUEST.wasm",
        required_unless_present = "plugins",
        conflicts_with = "plugins"
    )]
    pub guest: Option<PathBuf>,
    /// A folder of plugin components: a config record's 'SaaS Type' picks
    /// the plugin of that name.
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
}

impl PluginArgs {
    pub(crate) fn source(&self) -> Result<PluginSource, String> {
        plugin_source(self.guest.as_ref(), self.plugins.as_ref())
    }
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The plugin component (.wasm).
    #[arg(value_name = "GUEST.wasm")]
    pub guest: PathBuf,
    /// The vault: a file (created 0600 if it does not exist), or Keeper.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Title of the new record.
    #[arg(short = 't', long, value_name = "TITLE")]
    pub title: String,
    /// With --ksm-config: the UID of the shared folder to create the record in.
    #[arg(long, value_name = "UID")]
    pub ksm_folder: Option<String>,
    /// A field value, as LABEL=VALUE; repeat for each field. Labels match any case.
    #[arg(long = "field", value_name = "LABEL=VALUE")]
    pub fields: Vec<String>,
    /// Never ask; fail if a required field is missing.
    #[arg(long)]
    pub no_input: bool,
    #[command(flatten)]
    pub vault_options: VaultArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub plugin: PluginArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// `KSM_CONFIG` as it was when the process started (see `take_ksm_config_env`).
static KSM_CONFIG_ENV: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Takes `KSM_CONFIG` out of the process environment, so that no child process
/// (an AWS `credential_process`, say) inherits the Keeper application's keys.
///
/// # Safety
/// Call it before any other thread exists: it changes the environment.
pub unsafe fn take_ksm_config_env() {
    let value = std::env::var("KSM_CONFIG").ok();
    if value.is_some() {
        // SAFETY: the caller guarantees no other thread reads the environment.
        unsafe { std::env::remove_var("KSM_CONFIG") };
    }
    let _ = KSM_CONFIG_ENV.set(value);
}

fn ksm_config_env() -> Option<String> {
    match KSM_CONFIG_ENV.get() {
        Some(taken) => taken.clone(),
        None => std::env::var("KSM_CONFIG").ok(),
    }
}

/// Which vault: a JSON file or Keeper (exactly one).
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The vault file.
    #[arg(long, value_name = "FILE", conflicts_with = "ksm_config")]
    pub vault: Option<PathBuf>,
    /// A Keeper Secrets Manager client config (JSON, or its base64 form), instead
    /// of --vault; KSM_CONFIG may hold it when neither flag is given.
    #[arg(long, value_name = "FILE")]
    pub ksm_config: Option<PathBuf>,
}

impl SourceArgs {
    /// The vault to use, or a message for exit 2.
    pub fn source(&self, opts: &VaultOptions) -> Result<VaultSource, String> {
        match (&self.vault, &self.ksm_config) {
            (Some(path), None) => Ok(VaultSource::File(path.clone())),
            (None, Some(path)) => ksm_source(Some(path), opts),
            (None, None) if ksm_config_env().is_some() => ksm_source(None, opts),
            (None, None) => Err(
                "no vault given: pass --vault FILE (a JSON vault) or --ksm-config FILE (a Keeper \
                 Secrets Manager config; KSM_CONFIG may hold it instead)"
                    .into(),
            ),
            (Some(_), Some(_)) => Err("pass --vault or --ksm-config, not both".into()),
        }
    }
}

#[cfg(feature = "ksm")]
fn ksm_source(path: Option<&PathBuf>, opts: &VaultOptions) -> Result<VaultSource, String> {
    use crate::vault::ksm::KsmConfig;
    let config = match path {
        Some(path) => KsmConfig::from_file(path, opts),
        None => KsmConfig::from_env(&ksm_config_env().unwrap_or_default()),
    };
    config.map(VaultSource::Ksm).map_err(|e| e.to_string())
}

#[cfg(not(feature = "ksm"))]
fn ksm_source(_: Option<&PathBuf>, _: &VaultOptions) -> Result<VaultSource, String> {
    Err(
        "this rotate-host was built without Keeper Secrets Manager (the `ksm` feature): \
         use --vault, or a build with the feature"
            .into(),
    )
}

/// How the vault is opened.
#[derive(Debug, Args)]
pub struct VaultArgs {
    /// How long to wait for another run's lock on the vault, in seconds [0.001-86400].
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds_in(86_400.0))]
    pub lock_timeout: Duration,
    /// The largest vault file to read, in MiB [1-4096].
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_vault_mib: u64,
    /// Refuse a vault that group or others can read, instead of warning.
    #[arg(long)]
    pub strict_permissions: bool,
}

impl VaultArgs {
    pub(crate) fn options(&self) -> VaultOptions {
        VaultOptions {
            lock_timeout: self.lock_timeout,
            max_bytes: self.max_vault_mib << 20,
            strict_permissions: self.strict_permissions,
        }
    }
}

/// Limits of the sandbox.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Wall-clock limit of one plugin call, in seconds, whatever the plugin is
    /// doing (computing, sleeping or waiting on the network) [0.001-86400].
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = seconds_in(86_400.0))]
    pub timeout: Duration,
    /// Memory limit of the plugin, in MiB: all its memories and tables together [1-16384].
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=16_384))]
    pub memory_mib: u64,
    /// Timeout of one HTTP request, in seconds [0.001-3600].
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds_in(3_600.0))]
    pub http_timeout: Duration,
    /// Largest HTTP response body the plugin may receive, in KiB [1-1048576].
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_response_kib: u64,
    /// Trust only the CA certificates in this PEM file for HTTPS (a private
    /// endpoint, or a TLS-inspecting proxy) instead of the built-in Mozilla roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Narrow what plugins may reach to these origins (repeat the flag), like
    /// 'https://iam.amazonaws.com' or 'https://sts.{region}.amazonaws.com'. A plugin
    /// never reaches more than it declares, whatever is listed here.
    #[arg(long = "allow-host", value_name = "ORIGIN", value_parser = origin)]
    pub allow_host: Vec<AllowedOrigin>,
    /// Let plugins use plain http:// to hosts that are not loopback addresses.
    /// Secrets then cross the network unencrypted.
    #[arg(long)]
    pub allow_http: bool,
    /// Folder of precompiled plugins [default: $XDG_CACHE_HOME/rotate-host or ~/.cache/rotate-host].
    #[arg(long, value_name = "DIR", env = "ROTATE_HOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile the plugin every time; use no cache folder.
    #[arg(long)]
    pub no_cache: bool,
}

/// A clap parser for a number of seconds in `[0.001, max]`.
fn seconds_in(max: f64) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s: &str| {
        let n: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number of seconds"))?;
        if !(0.001..=max).contains(&n) {
            return Err(format!("{n} is not in 0.001..={max} seconds"));
        }
        Ok(Duration::from_secs_f64(n))
    }
}

fn origin(s: &str) -> Result<AllowedOrigin, String> {
    AllowedOrigin::parse(s).map_err(|e| e.to_string())
}

impl SandboxArgs {
    pub(crate) fn limits(&self) -> Result<Limits, String> {
        Ok(Limits {
            // In range by the parser: at most 16 GiB.
            memory_bytes: usize::try_from(self.memory_mib << 20)
                .map_err(|_| "--memory-mib is too large for this machine".to_string())?,
            call_timeout: self.timeout,
            http: HttpConfig {
                timeout: self.http_timeout,
                connect_timeout: self.http_timeout.min(Duration::from_secs(10)),
                max_response_bytes: self.max_response_kib * 1024,
                ca_certs: self
                    .ca_file
                    .as_deref()
                    .map(read_ca_file)
                    .transpose()?
                    .map(std::sync::Arc::new),
                rate: None,
            },
            network: NetworkPolicy {
                operator: (!self.allow_host.is_empty()).then(|| self.allow_host.clone()),
                section: None,
                allow_http: self.allow_http,
            },
        })
    }

    pub(crate) fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(crate::sandbox::cache::default_dir)
        }
    }
}

/// The plugins a command names: one file, or `--plugins DIR`.
pub(crate) fn plugin_source(
    guest: Option<&PathBuf>,
    plugins: Option<&PathBuf>,
) -> Result<PluginSource, String> {
    match (guest, plugins) {
        (Some(file), None) => Ok(PluginSource::File(file.clone())),
        (None, Some(dir)) => Ok(PluginSource::Dir(dir.clone())),
        (None, None) => Err(
            "no plugin given: pass GUEST.wasm or --plugins DIR (or set `guest` or `plugins` in \
             the --config file)"
                .into(),
        ),
        (Some(_), Some(_)) => Err("pass GUEST.wasm or --plugins DIR, not both".into()),
    }
}

impl FleetArgs {
    /// The fleet's options; `policies` are the config file's plugin sections.
    pub(crate) fn options(
        &self,
        policies: BTreeMap<String, PluginPolicy>,
    ) -> Result<FleetOptions, String> {
        if self.lend.gateway_credentials && self.lend.gateway_credentials_for.is_empty() {
            // In a pass, any record editor could create a config record that
            // borrows it, with a scope of its own choosing.
            return Err(
                "in a pass, --gateway-credentials lends the host's identity only to the \
                        config records named with --gateway-credentials-for UID (repeatable); \
                        name the configs you trust"
                    .into(),
            );
        }
        let mut limits = self.sandbox.limits()?;
        limits.http.rate = Some(std::sync::Arc::new(crate::sandbox::http::RateLimiter::new(
            self.rps,
        )));
        let vault_options = self.vault_options.options();
        Ok(FleetOptions {
            plugins: plugin_source(self.guest.as_ref(), self.plugins.as_ref())?,
            policies,
            vault: self.source.source(&vault_options)?,
            vault_options,
            limits,
            cache_dir: self.sandbox.cache_dir(),
            max_age: chrono::Duration::days(self.max_age_days),
            jobs: self.jobs as usize,
            dry_run: self.dry_run,
            audit: self.audit.clone(),
            lending: self.lend.lending(),
        })
    }
}
