//! The config file's `[plugin.NAME]` sections: the operator's policy for
//! each plugin, by its `info` name. Every value is checked here, so an error
//! names the section, the key and its line.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use crate::sandbox::allowlist::AllowedOrigin;
use crate::sandbox::plugin_set::PluginPolicy;
use crate::text::printable;

/// The keys a section takes.
const KEYS: &str = "sha256, allow-host, memory-mib, timeout, jobs, gateway-credentials";

type Section = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// Only the sections; the other keys are the flags' (see `setting`).
#[derive(serde::Deserialize)]
struct Sections {
    #[serde(default)]
    plugin: BTreeMap<Spanned<String>, Spanned<Section>>,
}

/// The policies of `text`'s sections, or the byte offset of what is wrong and why.
pub(super) fn policies(text: &str) -> Result<BTreeMap<String, PluginPolicy>, (usize, String)> {
    let sections: Sections = toml::from_str(text).map_err(|e| {
        (
            e.span().map_or(0, |s| s.start),
            format!("'plugin': {}", printable(e.message())),
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, section) in sections.plugin {
        let shown = printable(name.get_ref());
        if out
            .keys()
            .any(|n: &String| n.eq_ignore_ascii_case(name.get_ref()))
        {
            return Err((
                name.span().start,
                format!("[plugin.\"{shown}\"] is there twice, in another case"),
            ));
        }
        let mut policy = PluginPolicy::default();
        for (key, value) in section.get_ref() {
            set(&mut policy, key.get_ref(), value.get_ref()).map_err(|why| {
                (
                    key.span().start,
                    format!("[plugin.\"{shown}\"] '{}': {why}", printable(key.get_ref())),
                )
            })?;
        }
        out.insert(name.into_inner(), policy);
    }
    Ok(out)
}

/// Sets `key` of `policy` from `value`, checked.
fn set(policy: &mut PluginPolicy, key: &str, value: &toml::Value) -> Result<(), String> {
    match key {
        "sha256" => policy.sha256 = Some(sha256(value)?),
        "allow-host" => policy.allow_host = Some(origins(value)?),
        "memory-mib" => policy.memory_mib = Some(integer(value, 1, 16_384)?),
        "timeout" => policy.timeout = Some(seconds(value)?),
        "jobs" => policy.jobs = Some(integer(value, 1, 64)? as usize),
        "gateway-credentials" => {
            policy.gateway_credentials = Some(value.as_bool().ok_or("takes true or false")?)
        }
        _ => return Err(format!("unknown key: a plugin's section takes {KEYS}")),
    }
    Ok(())
}

fn sha256(value: &toml::Value) -> Result<String, String> {
    let hex = value
        .as_str()
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("takes the plugin file's SHA-256 as 64 hex digits (`sha256sum FILE`)")?;
    Ok(hex.to_ascii_lowercase())
}

fn origins(value: &toml::Value) -> Result<Vec<AllowedOrigin>, String> {
    let items = value
        .as_array()
        .ok_or("takes a list of origins, like [\"https://iam.amazonaws.com\"]")?;
    if items.len() > super::MAX_VALUES {
        return Err(format!(
            "has {} values; at most {}",
            items.len(),
            super::MAX_VALUES
        ));
    }
    items
        .iter()
        .map(|item| {
            let s = item.as_str().ok_or("takes strings")?;
            AllowedOrigin::parse(s).map_err(|e| printable(&e.to_string()))
        })
        .collect()
}

fn integer(value: &toml::Value, min: i64, max: i64) -> Result<u64, String> {
    match value.as_integer() {
        Some(n) if (min..=max).contains(&n) => Ok(n as u64),
        Some(n) => Err(format!("{n} is not in {min}..={max}")),
        None => Err(format!("takes a whole number in {min}..={max}")),
    }
}

fn seconds(value: &toml::Value) -> Result<Duration, String> {
    let n = match value {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        _ => return Err("takes a number of seconds".into()),
    };
    if !(0.001..=86_400.0).contains(&n) {
        return Err(format!("{n} is not in 0.001..=86400 seconds"));
    }
    Ok(Duration::from_secs_f64(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_sets_each_key_and_refuses_bad_ones() {
        let text = "jobs = 2\n[plugin.\"AWS Secret Key\"]\nsha256 = \"AB\"\n";
        let (at, why) = policies(text).unwrap_err();
        assert_eq!(&text[at..at + 6], "sha256");
        assert!(why.contains("64 hex digits"), "{why}");

        let digest = "a".repeat(64);
        let text = format!(
            "[plugin.Hostile]\nsha256 = \"{}\"\njobs = 1\ntimeout = 2.5\nmemory-mib = 16\n\
             allow-host = [\"https://iam.amazonaws.com\"]\ngateway-credentials = true\n",
            digest.to_uppercase()
        );
        let p = &policies(&text).unwrap()["Hostile"];
        assert_eq!(p.sha256.as_deref(), Some(digest.as_str()));
        assert_eq!(p.jobs, Some(1));
        assert_eq!(p.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(p.memory_mib, Some(16));
        assert_eq!(p.allow_host.as_ref().map(Vec::len), Some(1));
        assert_eq!(p.gateway_credentials, Some(true));

        for (bad, needle) in [
            ("[plugin.x]\njobs = 65\n", "65 is not in 1..=64"),
            ("[plugin.x]\ntimeout = 0\n", "not in 0.001"),
            ("[plugin.x]\nallow-host = [\"ftp://x\"]\n", "ftp://x"),
            ("[plugin.x]\nsandbox = 1\n", "unknown key"),
            (
                "[plugin.x]\ngateway-credentials = \"yes\"\n",
                "true or false",
            ),
            ("[plugin.x]\n[plugin.X]\n", "twice"),
            ("plugin = 3\n", "'plugin'"),
        ] {
            let (_, why) = policies(bad).unwrap_err();
            assert!(why.contains(needle), "{bad}: {why}");
        }
    }
}
