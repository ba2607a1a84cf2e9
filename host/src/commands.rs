//! One function per command: options from the parsed flags, the work, and
//! the exit code.

use crate::exit::Exit;
use std::ffi::OsString;
use std::io::Write;

use clap::{CommandFactory, Parser};

use crate::config_file::ConfigFile;
use std::time::Duration;

use crate::cli::*;
use crate::configure::{ConfigOptions, configure};
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::output::JSON_LOGS;
use crate::output::{print_error, print_run};
use crate::rotation::audit::AuditLog;
use crate::rotation::audit::audit_entry;
use crate::rotation::run::{RunOptions, run};
use crate::sandbox::plugin::{ConfigItem, PluginInfo};
use crate::sandbox::plugin_set::{Member, PluginPolicy, PluginSet, PluginSource};
use std::collections::BTreeMap;

/// Runs a parsed command line and returns the exit code.
pub fn execute(cli: Cli) -> Exit {
    let _ = JSON_LOGS.set(cli.log_format == LogFormat::Json);
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::Config(args) => config_command(args),
        Command::Info(args) => info_command(args),
        Command::Due(args) => match with_config(args, "due", |c| match c {
            Command::Due(a) => Some(a),
            _ => None,
        }) {
            Ok((args, policies)) => due_command(args, policies),
            Err(e) => usage_error(&e),
        },
        Command::Gateway(args) => match with_config(args, "gateway", gateway_args) {
            Ok((args, policies)) => gateway_command(args, policies),
            Err(e) => usage_error(&e),
        },
        Command::CheckConfig {
            file,
            strict_permissions,
        } => check_config(&file, strict_permissions),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "rotate-host", &mut std::io::stdout());
            Exit::Ok
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => Exit::Ok,
                Err(e) => {
                    print_error(&format!("could not write the manual page: {e}"));
                    Exit::Failed
                }
            }
        }
    }
}

fn gateway_args(c: Command) -> Option<GatewayArgs> {
    match c {
        Command::Gateway(a) => Some(a),
        _ => None,
    }
}

/// The plugin sections of a config file, by plugin name.
type Policies = BTreeMap<String, PluginPolicy>;

/// A fleet command's arguments, or, with `--config`, the command line parsed
/// again with the file's settings put in first (so the flags win), and the
/// file's plugin sections.
fn with_config<T: HasFleet>(
    args: T,
    sub: &str,
    pick: fn(Command) -> Option<T>,
) -> Result<(T, Policies), String> {
    let Some(path) = args.fleet().config.clone() else {
        return Ok((args, Policies::new()));
    };
    let strict = args.fleet().vault_options.strict_permissions;
    let file = ConfigFile::read(&path, sub, strict).map_err(|e| e.to_string())?;
    let real: Vec<OsString> = std::env::args_os().collect();
    let cli = reparse(&file, &real, sub)?;
    Ok((
        pick(cli.command).expect("the same subcommand"),
        file.policies().clone(),
    ))
}

/// `real` with `file`'s settings merged in, parsed.
fn reparse(file: &ConfigFile, real: &[OsString], sub: &str) -> Result<Cli, String> {
    let shown = crate::text::printable(&file.path().display().to_string());
    let bad = |e: clap::Error| {
        let text = e.render().to_string();
        let line = text.lines().next().unwrap_or_default();
        format!(
            "config file {shown} with the command line: {}",
            crate::text::printable(line.strip_prefix("error: ").unwrap_or(line))
        )
    };
    let given = Cli::command().try_get_matches_from(real).map_err(bad)?;
    let given = given
        .subcommand_matches(sub)
        .expect("the subcommand that is running");
    Cli::try_parse_from(file.merged(real, sub, given)).map_err(bad)
}

/// `check-config FILE`: reads and checks the file as `gateway --config FILE`
/// would, options included, and runs nothing.
fn check_config(path: &std::path::Path, strict: bool) -> Exit {
    let checked = ConfigFile::read(path, "gateway", strict)
        .map_err(|e| e.to_string())
        .and_then(|file| {
            let real: Vec<OsString> = ["rotate-host", "gateway", "--config"]
                .map(OsString::from)
                .into_iter()
                .chain([path.as_os_str().to_os_string()])
                .collect();
            let cli = reparse(&file, &real, "gateway")?;
            let args = gateway_args(cli.command).expect("gateway");
            metrics_allowed(&args)?;
            let opts = args.fleet.options(file.policies().clone())?;
            crate::sandbox::runtime::block_on(PluginSet::load(
                &opts.plugins,
                &opts.limits,
                opts.jobs,
                &opts.policies,
                opts.cache_dir.as_deref(),
            ))
            .map_err(|e| e.to_string())?;
            Ok(file.len())
        });
    match checked {
        Ok(n) => {
            println!(
                "config file {} is valid: {n} setting(s)",
                crate::text::printable(&path.display().to_string())
            );
            Exit::Ok
        }
        Err(e) => usage_error(&e),
    }
}

/// Refuses to serve metrics beyond loopback unless asked to.
fn metrics_allowed(args: &GatewayArgs) -> Result<(), String> {
    match args.metrics {
        Some(addr) if !addr.ip().is_loopback() && !args.metrics_public => Err(format!(
            "--metrics {addr} is not a loopback address: metrics would be served to the network; \
             use 127.0.0.1:PORT, or pass --metrics-public"
        )),
        _ => Ok(()),
    }
}

/// What SIGHUP does: the command line (and its `--config` file, read again)
/// parsed again, and the fleet built from it, the plugins compiled anew.
fn reloader(config: Option<std::path::PathBuf>, strict: bool) -> crate::gateway::Reload {
    let real: Vec<OsString> = std::env::args_os().collect();
    std::sync::Arc::new(move || {
        let (cli, policies) = match &config {
            Some(path) => {
                let file = ConfigFile::read(path, "gateway", strict).map_err(|e| e.to_string())?;
                (reparse(&file, &real, "gateway")?, file.policies().clone())
            }
            None => (
                Cli::try_parse_from(&real).map_err(|e| e.to_string())?,
                Policies::new(),
            ),
        };
        let args = gateway_args(cli.command).expect("gateway");
        let fleet = Fleet::new(args.fleet.options(policies)?).map_err(|e| e.to_string())?;
        Ok((fleet, Duration::from_secs(args.interval)))
    })
}

/// A command that takes the fleet's flags.
trait HasFleet {
    fn fleet(&self) -> &FleetArgs;
}

impl HasFleet for DueArgs {
    fn fleet(&self) -> &FleetArgs {
        &self.fleet
    }
}

impl HasFleet for GatewayArgs {
    fn fleet(&self) -> &FleetArgs {
        &self.fleet
    }
}

pub(crate) fn usage_error(msg: &str) -> Exit {
    print_error(msg);
    Exit::Usage
}

fn run_command(args: RunArgs) -> Exit {
    let limits = match args.sandbox.limits() {
        Ok(l) => l,
        Err(e) => return usage_error(&e),
    };
    let vault_options = args.vault_options.options();
    let vault = match args.source.source(&vault_options) {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let plugins = match args.plugin.source() {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    let opts = RunOptions {
        plugins,
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
            code.or_failed()
        }
        None => code,
    }
}

fn config_command(args: ConfigArgs) -> Exit {
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
            Exit::Ok
        }
        Err(e) => {
            print_error(&e.to_string());
            e.exit()
        }
    }
}

fn info_command(args: InfoArgs) -> Exit {
    let limits = match args.sandbox.limits() {
        Ok(l) => l,
        Err(e) => return usage_error(&e),
    };
    let source = match args.plugin.source() {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let cache_dir = args.sandbox.cache_dir();
    let loaded = crate::sandbox::runtime::block_on(PluginSet::load(
        &source,
        &limits,
        1,
        &Policies::new(),
        cache_dir.as_deref(),
    ));
    let set = match loaded {
        Ok(set) => set,
        Err(e) => {
            print_error(&e.to_string());
            return Exit::usage_if(e.is_bad_input());
        }
    };
    let mut described = Vec::new();
    for m in set.members() {
        match m.plugin.describe() {
            Ok((info, schema)) => described.push((m, info, schema)),
            Err(e) => {
                print_error(&e.to_string());
                return Exit::usage_if(e.is_bad_input());
            }
        }
    }
    if args.json {
        let one = |(m, info, schema): &(&Member, PluginInfo, Vec<ConfigItem>)| {
            serde_json::json!({"info": info, "config_schema": schema,
                "sha256": m.plugin.digest(), "file": m.plugin.path()})
        };
        let body = match source {
            PluginSource::File(_) => one(&described[0]),
            PluginSource::Dir(_) => serde_json::Value::Array(described.iter().map(one).collect()),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&body).expect("serialisable")
        );
        return Exit::Ok;
    }
    for (i, (m, info, schema)) in described.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_info(m, info, schema);
    }
    Exit::Ok
}

/// `info`'s text for one plugin.
fn print_info(m: &Member, info: &PluginInfo, schema: &[ConfigItem]) {
    println!("{} {}", info.name, info.version);
    println!("{}", info.summary);
    println!(
        "file: {}",
        crate::text::printable(&m.plugin.path().display().to_string())
    );
    println!("sha256: {}", m.plugin.digest());
    println!("can rollback: {}", info.can_rollback);
    let own = if info.allowed_hosts.is_empty() {
        "no origin of its own".to_string()
    } else {
        info.allowed_hosts.join(", ")
    };
    println!("may reach: {own}, and the origin of each url field of its config");
    println!("\nconfig record fields:");
    for item in schema {
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
}

/// The plugins compiled once and the fleet's options, or the exit code.
fn fleet(args: &FleetArgs, policies: Policies) -> Result<(Fleet, usize), Exit> {
    let opts = args.options(policies).map_err(|e| usage_error(&e))?;
    let jobs = opts.jobs;
    let fleet = Fleet::new(opts).map_err(|e| {
        print_error(&e.to_string());
        e.exit()
    })?;
    Ok((fleet, jobs))
}

fn due_command(args: DueArgs, policies: Policies) -> Exit {
    let (fleet, jobs) = match fleet(&args.fleet, policies) {
        Ok(f) => f,
        Err(code) => return code,
    };
    match crate::sandbox::runtime::block_on_workers(jobs, fleet.pass()) {
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
            report.exit()
        }
        Err(e) => {
            print_error(&e.to_string());
            e.exit()
        }
    }
}

fn gateway_command(args: GatewayArgs, policies: Policies) -> Exit {
    // SIGHUP's default would kill the gateway while it starts (a reload
    // right after a start); the gateway's own handler replaces this.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    if let Err(e) = metrics_allowed(&args) {
        return usage_error(&e);
    }
    let (fleet, jobs) = match fleet(&args.fleet, policies) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let metrics = args
        .metrics
        .map(|a| (a, std::sync::Arc::new(Metrics::default())));
    let interval = Duration::from_secs(args.interval);
    let reload = reloader(
        args.fleet.config.clone(),
        args.fleet.vault_options.strict_permissions,
    );
    match crate::sandbox::runtime::block_on_workers(
        jobs,
        crate::gateway::gateway(fleet, interval, metrics, reload),
    ) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            print_error(&e.to_string());
            e.exit()
        }
    }
}
