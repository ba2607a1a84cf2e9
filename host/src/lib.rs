//! `rotate-host`: runs credential-rotation plugins (WASI 0.2 components) in a
//! sandbox against a vault file.
//!
//! The host knows vaults, files and sandboxes, and nothing about the service a
//! plugin rotates. See `docs/design.md` for the steps and invariants.

pub mod allowlist;
pub mod audit;
pub mod aws_identity;
pub mod bindings;
pub mod cache;
pub mod cli;
pub mod configure;
pub mod engine;
pub mod exposure;
pub mod fleet;
pub mod fsguard;
pub mod grace;
pub mod holdings;
pub mod http;
mod imports;
pub mod metrics;
pub mod plugin;
pub mod retire;
pub mod rotate;
pub mod schedule;
pub mod secret;
pub mod text;
pub mod usage;
pub mod vault;
pub mod vetting;
pub mod writer;
