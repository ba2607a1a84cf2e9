//! `rotate-host`: runs credential-rotation plugins (WASI 0.2 components) in a
//! sandbox against a vault (a JSON file, or Keeper through KSM).
//!
//! The host knows vaults, files and sandboxes, and nothing about the service a
//! plugin rotates. See `docs/design.md` for the steps and invariants.

mod cli;
mod commands;
mod config_file;
mod configure;
mod exit;
mod fields;
mod fleet;
mod fsguard;
mod gateway;
mod holdings;
mod metrics;
mod output;
mod record;
mod rotation;
mod sandbox;
mod secret;
mod text;
mod vault;

// Only what the binary uses: everything else is the crate's own, so rustc
// reports what nothing uses.
pub use cli::{Cli, LogFormat, take_ksm_config_env};
pub use commands::execute;
