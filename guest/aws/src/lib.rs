//! An AWS access key rotation plugin for `rotate-host`.
//!
//! Everything but `component` is plain Rust, tested natively; `component` is the
//! thin wit-bindgen glue compiled only for `wasm32`.

pub mod endpoints;
pub mod error;
pub mod iam;
pub mod model;
pub mod plan;
pub mod query;
pub mod retry;
pub mod rotation;
pub mod schema;
pub mod secret;
pub mod settings;
pub mod transport;
pub mod xml;

#[cfg(target_arch = "wasm32")]
mod component;

/// The plugin's name, as `info` reports it.
pub const NAME: &str = "AWS Secret Key";
/// One line on what the plugin does.
pub const SUMMARY: &str = "Rotates an AWS IAM user's access key: creates a new key, has the host store it, \
     proves it works with STS, then deletes the old one.";
