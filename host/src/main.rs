//! `rotate-host`: parses the command line, sets up logging, and hands over
//! to the library (`rotate_host::execute`).

use std::io::IsTerminal;

use clap::Parser;
use rotate_host::LogFormat;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

/// Crates of the AWS credential chain print request bodies (a web identity
/// token) and headers (the IMDS session token) at TRACE: they stop at DEBUG,
/// whatever `RUST_LOG` says.
const CAPPED_AT_DEBUG: &[&str] = &["aws_", "hyper", "h2", "tower"];

fn main() {
    // SAFETY: first thing in `main`, before any thread is started.
    unsafe { rotate_host::take_ksm_config_env() };
    // A write past `ulimit -f` then fails with EFBIG instead of killing the
    // process mid-line: the vault's save rolls back, the audit log cuts the
    // partial line off, and the run says so.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let cli = rotate_host::Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let capped = filter_fn(|meta| {
        *meta.level() != tracing::Level::TRACE
            || !CAPPED_AT_DEBUG.iter().any(|p| meta.target().starts_with(p))
    });
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let registry = tracing_subscriber::registry();
    match cli.log_format {
        LogFormat::Text => registry
            .with(text.with_filter(filter).with_filter(capped))
            .init(),
        LogFormat::Json => registry
            .with(text.json().with_filter(filter).with_filter(capped))
            .init(),
    }
    std::process::exit(rotate_host::execute(cli).code());
}
