//! The command line: `run`, `config` and `info`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::configure::{ConfigOptions, configure};
use crate::fleet::{Fleet, FleetOptions};
use crate::metrics::Metrics;
use crate::rotation::audit::AuditLog;
use crate::rotation::audit::audit_entry;
use crate::rotation::flow::{RunError, RunOptions, RunReport, run};
use crate::rotation::identity::Lending;
use crate::sandbox::allowlist::{AllowedOrigin, NetworkPolicy};
use crate::sandbox::engine::{Limits, Plugin};
use crate::sandbox::http::{HttpConfig, read_ca_file};
use crate::vault::{VaultOptions, VaultSource};

/// Runs credential-rotation plugins (WASI 0.2 components) in a sandbox against a vault file.
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
    Gateway(GatewayArgs),
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
    /// The plugin component (.wasm), compiled once for the whole process.
    #[arg(value_name = "GUEST.wasm")]
    pub guest: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Rotate records whose key is this old, when neither the record nor its
    /// config record sets a schedule [1-36500].
    #[arg(long, value_name = "DAYS", default_value_t = 90, value_parser = clap::value_parser!(i64).range(1..=36_500))]
    pub max_age_days: i64,
    /// Rotations at once [1-64].
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
    fn lending(&self) -> Lending {
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
    /// The plugin component (.wasm).
    #[arg(value_name = "GUEST.wasm")]
    pub guest: PathBuf,
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
    /// The plugin component (.wasm).
    #[arg(value_name = "GUEST.wasm")]
    pub guest: PathBuf,
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
    fn options(&self) -> VaultOptions {
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
    fn limits(&self) -> Result<Limits, String> {
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
                allow_http: self.allow_http,
            },
        })
    }

    fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(crate::sandbox::cache::default_dir)
        }
    }
}

/// Runs a parsed command line and returns the exit code.
/// Set once from `--log-format`: errors are then log lines too.
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Prints an error for the user, escaped, whatever RUST_LOG says: `error: ...`
/// on standard error, or, with `--log-format json`, one line shaped like the
/// JSON log lines, at ERROR.
fn print_error(msg: &str) {
    let msg = crate::text::printable(msg);
    if JSON_LOGS.get().copied().unwrap_or(false) {
        // Written directly, in the log lines' shape: RUST_LOG must not hide it.
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "fields": {"message": msg},
            "target": "rotate_host",
        });
        eprintln!("{line}");
    } else {
        eprintln!("error: {msg}");
    }
}

pub fn execute(cli: Cli) -> i32 {
    let _ = JSON_LOGS.set(cli.log_format == LogFormat::Json);
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::Config(args) => config_command(args),
        Command::Info(args) => info_command(args),
        Command::Due(args) => due_command(args),
        Command::Gateway(args) => gateway_command(args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "rotate-host", &mut std::io::stdout());
            0
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                Err(e) => {
                    print_error(&format!("could not write the manual page: {e}"));
                    1
                }
            }
        }
    }
}

fn usage_error(msg: &str) -> i32 {
    print_error(msg);
    2
}

fn run_command(args: RunArgs) -> i32 {
    let limits = match args.sandbox.limits() {
        Ok(l) => l,
        Err(e) => return usage_error(&e),
    };
    let vault_options = args.vault_options.options();
    let vault = match args.source.source(&vault_options) {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let opts = RunOptions {
        guest: args.guest,
        vault,
        user_uid: args.user,
        config_uid: args.config,
        provider_uid: args.configuration_uid,
        dry_run: args.dry_run,
        limits,
        vault_options,
        cache_dir: args.sandbox.cache_dir(),
        lending: args.lend.lending(),
    };
    let strict = opts.vault_options.strict_permissions;
    let audit = match args
        .audit
        .as_deref()
        .map(|p| AuditLog::open(p, strict))
        .transpose()
    {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let started = std::time::Instant::now();
    let result = run(&opts);
    let audit_failed = audit.as_ref().and_then(|log| {
        log.write(&audit_entry(
            &opts.user_uid,
            None,
            &result,
            started.elapsed(),
        ))
        .err()
    });
    let code = print_run(&opts, result, args.json);
    match audit_failed {
        Some(why) => {
            print_error(&why);
            code.max(1)
        }
        None => code,
    }
}

/// Prints a run's report or error; returns the exit code.
fn print_run(opts: &RunOptions, result: Result<RunReport, RunError>, json: bool) -> i32 {
    let mut out = std::io::stdout().lock();
    match (result, json) {
        (Ok(report), true) => {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&report).expect("serialisable")
            );
            0
        }
        (Ok(report), false) => {
            if report.status == "planned" {
                let _ = writeln!(
                    out,
                    "dry run for PAM user record {}: nothing was changed. The plan:",
                    report.user_uid
                );
                for n in &report.notes {
                    let _ = writeln!(out, "  - {n}");
                }
            } else {
                let _ = writeln!(
                    out,
                    "rotated PAM user record {}: new key {} stored in {}",
                    report.user_uid,
                    report.created.as_deref().unwrap_or("?"),
                    opts.vault.describe()
                );
                if !report.purged.is_empty() {
                    let _ = writeln!(
                        out,
                        "deleted key(s) whose grace period ended: {}",
                        report.purged.join(", ")
                    );
                }
                if !report.retired.is_empty() {
                    let _ = writeln!(out, "retired old key(s): {}", report.retired.join(", "));
                }
                if !report.deactivated.is_empty() {
                    let _ = writeln!(
                        out,
                        "deactivated old key(s), kept for the grace period: {}",
                        report.deactivated.join(", ")
                    );
                }
                if !report.kept.is_empty() {
                    let _ = writeln!(
                        out,
                        "kept old key(s) active until IAM shows them unused: {}",
                        report.kept.join(", ")
                    );
                }
                for n in &report.notes {
                    let _ = writeln!(out, "note: {n}");
                }
            }
            0
        }
        (Err(e), json) => {
            let code = e.exit_code();
            if json {
                let body = serde_json::json!({"status": "failed", "exit_code": code, "error": e.to_string()});
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&body).expect("serialisable")
                );
            }
            print_error(&e.to_string());
            code
        }
    }
}

fn config_command(args: ConfigArgs) -> i32 {
    let limits = match args.sandbox.limits() {
        Ok(l) => l,
        Err(e) => return usage_error(&e),
    };
    let vault_options = args.vault_options.options();
    let vault = match args.source.source(&vault_options) {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let opts = ConfigOptions {
        guest: args.guest,
        vault,
        title: args.title,
        ksm_folder: args.ksm_folder,
        fields: args.fields,
        interactive: !args.no_input,
        limits,
        vault_options,
        cache_dir: args.sandbox.cache_dir(),
    };
    match configure(&opts) {
        Ok(uid) => {
            println!("created config record {uid} in {}", opts.vault.describe());
            0
        }
        Err(e) => {
            print_error(&e.to_string());
            e.exit_code()
        }
    }
}

fn info_command(args: InfoArgs) -> i32 {
    let limits = match args.sandbox.limits() {
        Ok(l) => l,
        Err(e) => return usage_error(&e),
    };
    let described = Plugin::load(&args.guest, limits, args.sandbox.cache_dir().as_deref())
        .and_then(|p| p.describe());
    let (info, schema) = match described {
        Ok(d) => d,
        Err(e) => {
            print_error(&e.to_string());
            return if e.is_bad_input() { 2 } else { 1 };
        }
    };
    if args.json {
        let body = serde_json::json!({"info": info, "config_schema": schema});
        println!(
            "{}",
            serde_json::to_string_pretty(&body).expect("serialisable")
        );
        return 0;
    }
    println!("{} {}", info.name, info.version);
    println!("{}", info.summary);
    println!("can rollback: {}", info.can_rollback);
    println!("may reach: {}", info.allowed_hosts.join(", "));
    println!("\nconfig record fields:");
    for item in &schema {
        let default = item
            .default_value
            .as_deref()
            .map(|d| format!(", default {d}"))
            .unwrap_or_default();
        println!(
            "  {:<26} {:?}{}{}{}\n      {}",
            item.label,
            item.item_type,
            if item.required { ", required" } else { "" },
            if item.is_secret { ", secret" } else { "" },
            default,
            item.desc
        );
    }
    0
}

impl FleetArgs {
    fn options(&self) -> Result<FleetOptions, String> {
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
            guest: self.guest.clone(),
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

/// The plugin compiled once and the fleet's options, or the exit code.
fn fleet(args: &FleetArgs) -> Result<(Fleet, usize), i32> {
    let opts = args.options().map_err(|e| usage_error(&e))?;
    let jobs = opts.jobs;
    let fleet = Fleet::new(opts).map_err(|e| {
        print_error(&e.to_string());
        e.exit_code()
    })?;
    Ok((fleet, jobs))
}

fn due_command(args: DueArgs) -> i32 {
    let (fleet, jobs) = match fleet(&args.fleet) {
        Ok(f) => f,
        Err(code) => return code,
    };
    match crate::sandbox::engine::block_on_workers(jobs, fleet.pass()) {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            if args.json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serialisable")
                );
            } else {
                for line in report.lines() {
                    let _ = writeln!(out, "{line}");
                }
            }
            report.exit_code()
        }
        Err(e) => {
            print_error(&e.to_string());
            e.exit_code()
        }
    }
}

fn gateway_command(args: GatewayArgs) -> i32 {
    if let Some(addr) = args.metrics
        && !addr.ip().is_loopback()
        && !args.metrics_public
    {
        return usage_error(&format!(
            "--metrics {addr} is not a loopback address: metrics would be served to the network; \
             use 127.0.0.1:PORT, or pass --metrics-public"
        ));
    }
    let (fleet, jobs) = match fleet(&args.fleet) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let metrics = args
        .metrics
        .map(|a| (a, std::sync::Arc::new(Metrics::default())));
    let interval = Duration::from_secs(args.interval);
    match crate::sandbox::engine::block_on_workers(
        jobs,
        crate::gateway::gateway(fleet, interval, metrics),
    ) {
        Ok(()) => 0,
        Err(e) => {
            print_error(&e.to_string());
            e.exit_code()
        }
    }
}
