//! One record's rotation, step by step (`flow`), with what it reads and keeps:
//! the grace ledger, the audit log, the host's own AWS identity, the checks
//! on a record's trust and on an old key's use.

pub mod audit;
pub mod exposure;
pub mod flow;
pub mod grace;
pub mod identity;
pub mod job;
pub mod report;
pub mod retire;
pub mod run;
pub mod staged;
pub mod turn;
pub mod usage;
pub mod vetting;
