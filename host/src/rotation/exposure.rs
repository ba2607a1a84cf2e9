//! What one rotation's plugin instance may reach, and what it must never
//! print: the allowlist (the plugin's declared hosts and the config's `url`
//! origins, narrowed by the operator), the rule that a lent host identity
//! goes only where the operator allows, and the record values to mask.

use crate::record::Record;
use crate::rotation::report::RunError;
use crate::sandbox::allowlist::{AllowList, AllowedOrigin, NetworkPolicy};
use crate::sandbox::engine::SandboxError;
use crate::sandbox::plugin::{ConfigItem, ItemType};
use crate::text::printable;

/// A rotation lent the host's identity may reach only the origins the plugin
/// declares and those the operator allowed: never one that only a record names.
pub fn lent_origins_allowed(
    schema: &[ConfigItem],
    config: &Record,
    policy: &NetworkPolicy,
) -> Result<(), RunError> {
    for item in schema.iter().filter(|i| i.item_type == ItemType::Url) {
        let Some(url) = config.value(&item.label) else {
            continue;
        };
        let allowed = AllowedOrigin::of_url(url).is_ok_and(|o| policy.operator_allows(&o));
        if !allowed {
            return Err(RunError::LentToRecordOrigin {
                config: printable(&config.uid),
                origin: printable(url),
            });
        }
    }
    Ok(())
}

/// The plugin's declared hosts, plus exactly the origin of every `url` config
/// value, narrowed by the operator's `policy`.
pub fn allow_list(
    declared: &[String],
    schema: &[ConfigItem],
    config: &Record,
    policy: &NetworkPolicy,
) -> Result<AllowList, SandboxError> {
    let mut origins = declared
        .iter()
        .map(|p| AllowedOrigin::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    for item in schema.iter().filter(|i| i.item_type == ItemType::Url) {
        if let Some(url) = config.value(&item.label) {
            // A malformed URL is left for the plugin to report.
            if let Ok(origin) = AllowedOrigin::of_url(url) {
                origins.push(origin);
            }
        }
    }
    Ok(AllowList::new(origins, policy.clone()))
}

/// Values to mask in anything the guest says: the config's secret items (by
/// schema), and any field whose type or label says secret, password or token.
pub fn secrets(
    schema: &[ConfigItem],
    user: &Record,
    config: &Record,
    provider: Option<&Record>,
) -> Vec<String> {
    let looks_secret = crate::text::looks_secret;
    let schema_says = |label: Option<&str>| {
        let label = label?;
        schema
            .iter()
            .find(|i| i.label.eq_ignore_ascii_case(label.trim()))
            .map(|i| i.is_secret)
    };
    let mut out = Vec::new();
    for (record, is_config) in [(Some(user), false), (Some(config), true), (provider, false)] {
        for f in record.into_iter().flat_map(|r| &r.fields) {
            let by_schema = if is_config {
                schema_says(f.label.as_deref())
            } else {
                None
            };
            // The schema can add secrets, never take one away: a plugin that
            // calls the Client Secret plain text would otherwise see it printed.
            let secret = by_schema == Some(true)
                || looks_secret(&f.kind)
                || f.label.as_deref().is_some_and(looks_secret);
            if secret {
                out.extend(f.values.iter().map(|v| v.expose().to_string()));
            }
        }
    }
    out
}
