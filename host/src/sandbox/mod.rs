//! What a plugin may do: the engine that compiles and runs components, the
//! bindings between WIT and host types, the imports it is given (HTTP through
//! the allowlist, TCP, logging, holdings), the compile cache, and the set of
//! plugins a process runs under the operator's policy.

pub mod allowlist;
pub mod bindings;
mod budget;
pub mod cache;
pub mod engine;
pub mod http;
mod imports;
pub mod instance;
pub mod plugin;
pub mod plugin_set;
pub mod runtime;
pub mod tcp;
