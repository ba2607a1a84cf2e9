//! The host's own words in a record: the field labels it reads and writes,
//! the record type it rotates, the one rule for booleans, and how it writes
//! times. The bottom layer: it uses nothing else of the crate.

use chrono::{DateTime, SecondsFormat, Utc};

/// The record type of a PAM user record.
pub const PAM_USER_TYPE: &str = "pamUser";

/// Field labels the host reads and writes (the plugin's own fields are its business).
pub mod labels {
    pub const CONFIG: &str = "Rotation Config";
    pub const PROVIDER: &str = "Rotation Provider";
    pub const ENABLED: &str = "Rotation";
    pub const SCHEDULE: &str = "Rotation Schedule";
    pub const MAX_AGE_DAYS: &str = "Rotation Max Age Days";
    pub const TIMEZONE: &str = "Rotation Timezone";
    pub const LAST_ROTATED: &str = "Last Rotated";
    pub const PENDING: &str = "Rotation Pending";
    /// On the PAM user record: the fields of a staged rotation not yet made
    /// live (a password set at the service in `finalize`), as JSON.
    pub const STAGED: &str = "Rotation Staged";
    /// On the PAM user record, while a rotation runs (vaults without a lock).
    #[cfg(feature = "ksm")]
    pub const LEASE: &str = "Rotation Lease";
    /// On the PAM user record: `ID SINCE` per credential deactivated by a rotation.
    pub const DEACTIVATED: &str = "Deactivated Keys";
    /// On the config record: days a deactivated credential is kept.
    pub const GRACE_DAYS: &str = "Inactive Grace Days";
    /// On the config record: hours without use before a kept old key is retired.
    pub const UNUSED_HOURS: &str = "Unused Hours";
    /// On the config record: days a kept old key may stay in use before a warning.
    pub const OVERLAP_DAYS: &str = "Overlap Max Days";
    /// On the config record: the logins it serves, one pattern per line.
    pub const SCOPE: &str = "Rotation Scope";
    /// On the config record: lend the host's own AWS identity to the plugin.
    pub const GATEWAY_CREDENTIALS: &str = "Use Gateway Credentials";
}

/// Whether `label` names a field the host keeps on the PAM user record: a
/// plugin may not store it, or it could point the record at another config
/// or forge its schedule.
pub fn is_host_label(label: &str) -> bool {
    const OWN: &[&str] = &[
        labels::CONFIG,
        labels::PROVIDER,
        labels::ENABLED,
        labels::SCHEDULE,
        labels::MAX_AGE_DAYS,
        labels::TIMEZONE,
        labels::LAST_ROTATED,
        labels::PENDING,
        labels::STAGED,
        "Rotation Lease",
        labels::DEACTIVATED,
    ];
    OWN.iter().any(|own| label.trim().eq_ignore_ascii_case(own))
}

/// A field the host could not use: the record is refused (in a pass, it
/// alone), and the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadField {
    pub field: &'static str,
    pub why: String,
}

impl std::fmt::Display for BadField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field '{}' {}", self.field, self.why)
    }
}

/// A yes-or-no value of a record field or a config item, the one rule for
/// both: `true`, `yes`, `on`, `1` or `false`, `no`, `off`, `0`, in any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// `time` as written in `Last Rotated`: RFC 3339, UTC, whole seconds.
pub fn stamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_read_in_any_spelling() {
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool(" yes"), Some(true));
        assert_eq!(parse_bool("no"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn stamps_are_rfc3339_utc_seconds() {
        assert_eq!(
            stamp(
                DateTime::parse_from_rfc3339("2026-11-26T03:04:05.678+01:00")
                    .unwrap()
                    .with_timezone(&Utc)
            ),
            "2026-11-26T02:04:05Z"
        );
    }
}
