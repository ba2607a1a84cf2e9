//! `rotate-host`: runs credential-rotation plugins (WASI 0.2 components) in a
//! sandbox against a vault file.
//!
//! The host knows vaults, files and sandboxes, and nothing about the service a
//! plugin rotates. See `docs/design.md` for the steps and invariants.

pub mod cli;
pub mod commands;
pub mod configure;
pub mod exit;
pub mod fields;
pub mod fleet;
pub mod fsguard;
pub mod gateway;
pub mod holdings;
pub mod metrics;
pub mod output;
pub mod record;
pub mod rotation;
pub mod sandbox;
pub mod secret;
pub mod text;
pub mod vault;
