//! `--config FILE`: the fleet's settings in TOML, one key per long flag of
//! `due` and `gateway` (`jobs = 8`, `allow-host = ["https://iam.amazonaws.com"]`,
//! `vault = "vault.json"`, and `guest` for the plugin), and a `[plugin.NAME]`
//! section of policy per plugin (`plugin_sections`). A flag given on the
//! command line, or through its environment variable, overrides the file.
//!
//! Every value is checked by the same parser as its flag, so an error names
//! the key and its line. Relative paths are taken from the file's folder.
//! The file is the operator's and picks the plugin, so one owned by another
//! user than this one or root, or one that group or others may change, is
//! refused; one others may read is warned about (refused under
//! `--strict-permissions`). `due` passes over the gateway-only keys, so one
//! file serves both.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap::parser::{ArgMatches, ValueSource};
use thiserror::Error;

use crate::cli::Cli;
use crate::sandbox::plugin_set::PluginPolicy;
use crate::text::printable;

mod plugin_sections;

/// The largest config file read: a real one is a few hundred bytes.
const MAX_BYTES: u64 = 1 << 20;

/// Keys of `gateway` that `due` has no flag for.
const GATEWAY_ONLY: &[&str] = &["interval", "metrics", "metrics-public"];

/// The most values one key takes (a list of origins or of config UIDs).
const MAX_VALUES: usize = 256;

/// Keys whose values are paths, taken from the file's folder when relative.
const PATH_KEYS: &[&str] = &[
    "guest",
    "plugins",
    "vault",
    "ksm-config",
    "audit",
    "ca-file",
    "cache-dir",
];

/// Why a config file cannot be used. Every case exits 2; nothing was run.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("could not read config file {file}: {why}; pass the path of a TOML file to --config")]
    Read { file: String, why: String },
    #[error("config file {file} line {line}: {why}")]
    At {
        file: String,
        line: usize,
        why: String,
    },
    #[error(
        "config file {file} is readable by others (mode {mode:04o}): it says which plugin runs \
         and whom the host's identity is lent to; run `chmod o-r {file}`, or drop \
         --strict-permissions to only be warned"
    )]
    Insecure { file: String, mode: u32 },
    #[error(
        "config file {file} can be changed by group or others (mode {mode:04o}): it says which \
         plugin runs and whom the host's identity is lent to; run `chmod go-w {file}`"
    )]
    Writable { file: String, mode: u32 },
    #[error(
        "config file {file} is owned by uid {uid}, not this user or root: its owner could choose \
         the plugin this gateway runs; use a file of this user's or root's"
    )]
    Foreign { file: String, uid: u32 },
}

/// One setting of the file, as the flags it stands for.
#[derive(Debug, Clone)]
struct Setting {
    /// The clap id of the flag it sets.
    id: String,
    /// `--flag VALUE`..., or the plugin's path alone for `guest`.
    args: Vec<OsString>,
}

/// A read and checked config file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    settings: Vec<Setting>,
    /// `[plugin.NAME]` sections, by name.
    policies: BTreeMap<String, PluginPolicy>,
}

impl ConfigFile {
    /// Reads `path` and checks every key against the flags of subcommand `sub`.
    pub fn read(path: &Path, sub: &str, strict: bool) -> Result<Self, ConfigFileError> {
        let file = printable(&path.display().to_string());
        let (text, meta) = read_checked(path, &file)?;
        let table: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> =
            toml::from_str(&text).map_err(|e| ConfigFileError::At {
                file: file.clone(),
                line: line_of(&text, e.span().map_or(0, |s| s.start)),
                why: format!("not valid TOML: {}", printable(e.message())),
            })?;
        let base = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // Built once: each value is checked against this subcommand's flags.
        let cli = Cli::command();
        let sub_cmd = cli.find_subcommand(sub).expect("a fleet subcommand");
        let policies =
            plugin_sections::policies(&text).map_err(|(at, why)| ConfigFileError::At {
                file: file.clone(),
                line: line_of(&text, at),
                why,
            })?;
        let mut settings = Vec::new();
        let mut strict_in_file = false;
        for (key, value) in &table {
            // One file serves both: `due` passes over what only the gateway takes.
            if sub == "due" && GATEWAY_ONLY.contains(&key.get_ref().as_str())
                || key.get_ref() == "plugin"
            {
                continue;
            }
            let at = |why: String| ConfigFileError::At {
                file: file.clone(),
                line: line_of(&text, key.span().start),
                why: format!("'{}': {why}", printable(key.get_ref())),
            };
            let setting = setting(sub_cmd, key.get_ref(), value.get_ref(), base).map_err(at)?;
            strict_in_file |=
                key.get_ref() == "strict-permissions" && value.get_ref().as_bool() == Some(true);
            settings.push(setting);
        }
        // Others may read it (group may: `0640 root:rotate-host` is how /etc
        // keeps a service's settings, and a systemd credential reads as 0440).
        if meta.mode() & 0o004 != 0 {
            let what = format!("config file {file}");
            crate::fsguard::private_or_warn(
                &meta,
                &what,
                "the gateway's settings",
                strict || strict_in_file,
            )
            .map_err(|mode| ConfigFileError::Insecure {
                file: file.clone(),
                mode,
            })?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            settings,
            policies,
        })
    }

    /// Its `[plugin.NAME]` sections, by plugin name.
    pub fn policies(&self) -> &BTreeMap<String, PluginPolicy> {
        &self.policies
    }

    /// The command line `real` with the file's settings put in after the
    /// subcommand `sub`; settings whose flag `given` has from the command
    /// line or the environment are left out, so those win.
    pub fn merged(&self, real: &[OsString], sub: &str, given: &ArgMatches) -> Vec<OsString> {
        let at = real
            .iter()
            .skip(1)
            .position(|a| a == sub)
            .map_or(real.len(), |i| i + 2);
        let mut out = real[..at].to_vec();
        for s in &self.settings {
            let overridden = matches!(
                given.value_source(&s.id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if !overridden {
                out.extend(s.args.iter().cloned());
            }
        }
        out.extend_from_slice(&real[at..]);
        out
    }

    /// Its path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many settings it makes, a plugin's section counting as one.
    pub fn len(&self) -> usize {
        self.settings.len() + self.policies.len()
    }
}

/// The file's text and what it is, from one open file: a regular file, this
/// user's or root's, that no one else may change.
fn read_checked(path: &Path, file: &str) -> Result<(String, std::fs::Metadata), ConfigFileError> {
    let read = |why: String| ConfigFileError::Read {
        file: file.to_string(),
        why,
    };
    let (handle, meta) = crate::fsguard::open_regular(path).map_err(|e| read(e.to_string()))?;
    check_owner(&meta, file)?;
    if meta.len() > MAX_BYTES {
        return Err(read(format!("it is over {MAX_BYTES} bytes")));
    }
    let mut text = String::new();
    handle
        .take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| read(format!("it is not UTF-8 text ({e})")))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(read(format!("it is over {MAX_BYTES} bytes")));
    }
    Ok((text, meta))
}

/// Refuses a file of another user than this one or root, and one that group
/// or others may change: it picks the plugin and whom the identity is lent to.
fn check_owner(meta: &std::fs::Metadata, file: &str) -> Result<(), ConfigFileError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(ConfigFileError::Foreign {
            file: file.to_string(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(ConfigFileError::Writable {
            file: file.to_string(),
            mode,
        });
    }
    Ok(())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The flags a key stands for, each value checked by its flag's own parser.
fn setting(
    sub_cmd: &clap::Command,
    key: &str,
    value: &toml::Value,
    base: &Path,
) -> Result<Setting, String> {
    let arg = sub_cmd
        .get_arguments()
        .find(|a| {
            key != "config" && (a.get_long() == Some(key) || (a.is_positional() && key == "guest"))
        })
        .ok_or_else(|| unknown_key(sub_cmd))?;
    let id = arg.get_id().to_string();
    if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        return match value.as_bool() {
            Some(true) => Ok(Setting {
                id,
                args: vec![format!("--{key}").into()],
            }),
            Some(false) => Ok(Setting { id, args: vec![] }),
            None => Err("takes true or false".into()),
        };
    }
    let many = matches!(arg.get_action(), clap::ArgAction::Append);
    let values: Vec<String> = match value {
        toml::Value::Array(items) if items.len() > MAX_VALUES => {
            return Err(format!("has {} values; at most {MAX_VALUES}", items.len()));
        }
        toml::Value::Array(items) if many => items.iter().map(scalar).collect::<Result<_, _>>()?,
        toml::Value::Array(_) => return Err("takes one value, not a list".into()),
        other => vec![scalar(other)?],
    };
    let mut args: Vec<OsString> = Vec::new();
    for v in values {
        let v = if PATH_KEYS.contains(&key) && Path::new(&v).is_relative() {
            base.join(&v).display().to_string()
        } else {
            v
        };
        check_value(sub_cmd, key, arg.is_positional(), &v)?;
        // Attached, so a value that starts with '-' (a Keeper UID may) stays a value.
        if arg.is_positional() {
            args.push(v.into());
        } else {
            args.push(format!("--{key}={v}").into());
        }
    }
    Ok(Setting { id, args })
}

/// A TOML string, number or boolean as the text a flag would be given.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err("takes a string or a number".into()),
    }
}

/// Parses `value` as the flag alone would be parsed, for its error.
fn check_value(
    sub_cmd: &clap::Command,
    key: &str,
    positional: bool,
    value: &str,
) -> Result<(), String> {
    let mut argv: Vec<OsString> = vec![sub_cmd.get_name().into(), "--config".into(), "-".into()];
    if positional {
        argv.push("--".into());
        argv.push(value.into());
    } else {
        argv.push(format!("--{key}={value}").into());
    }
    match sub_cmd.clone().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        // A flag that needs another (`gateway-credentials-for`): the whole file is parsed later.
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => Ok(()),
        Err(e) => Err(first_line(&e.render().to_string())),
    }
}

/// A clap message's first line, without its `error: ` prefix.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    printable(line.strip_prefix("error: ").unwrap_or(line))
}

fn unknown_key(sub: &clap::Command) -> String {
    let mut keys: Vec<String> = sub
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help"))
        .map(str::to_string)
        .collect();
    keys.insert(0, "guest".into());
    format!(
        "unknown key: the keys are the long flags of `rotate-host {}` and [plugin.NAME] \
         sections: {}",
        sub.get_name(),
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_from_one() {
        assert_eq!(line_of("a = 1\nb = 2\n", 0), 1);
        assert_eq!(line_of("a = 1\nb = 2\n", 6), 2);
        assert_eq!(line_of("a", 99), 1);
    }

    fn gateway() -> clap::Command {
        Cli::command().find_subcommand("gateway").unwrap().clone()
    }

    #[test]
    fn values_are_checked_by_their_flags_parser() {
        let base = Path::new("/etc/rotate-host");
        let jobs = setting(&gateway(), "jobs", &toml::Value::Integer(8), base).unwrap();
        assert_eq!(jobs.args, vec![OsString::from("--jobs=8")]);
        let uid = toml::Value::Array(vec![toml::Value::String("-AbC".into())]);
        let lent = setting(&gateway(), "gateway-credentials-for", &uid, base).unwrap();
        assert_eq!(
            lent.args,
            vec![OsString::from("--gateway-credentials-for=-AbC")]
        );
        let err = setting(&gateway(), "jobs", &toml::Value::Integer(100), base).unwrap_err();
        assert!(err.contains("100"), "{err}");
        let err = setting(&gateway(), "nope", &toml::Value::Integer(1), base).unwrap_err();
        assert!(
            err.starts_with("unknown key") && err.contains("interval"),
            "{err}"
        );
        let vault = setting(
            &gateway(),
            "vault",
            &toml::Value::String("v.json".into()),
            base,
        )
        .unwrap();
        assert_eq!(
            vault.args[0],
            OsString::from("--vault=/etc/rotate-host/v.json")
        );
        let off = setting(&gateway(), "dry-run", &toml::Value::Boolean(false), base).unwrap();
        assert!(off.args.is_empty());
        assert!(setting(&gateway(), "dry-run", &toml::Value::Integer(1), base).is_err());
        assert!(setting(&gateway(), "jobs", &toml::Value::Array(vec![]), base).is_err());
    }
}
