//! The plugins a process runs: one file, or a folder of components
//! (`--plugins DIR`), each compiled once and run under the operator's policy
//! for it (its `[plugin.NAME]` section of the config file). A config record's
//! `SaaS Type` picks the plugin whose `info` name it is, as in Keeper.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::sandbox::allowlist::AllowedOrigin;
use crate::sandbox::engine::{CallError, Limits, Plugin, SandboxError};
use crate::text::printable;

/// Where the plugins come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// `GUEST.wasm`: one plugin serves every config record.
    File(PathBuf),
    /// `--plugins DIR`: each config record's `SaaS Type` picks one.
    Dir(PathBuf),
}

/// The operator's policy for one plugin, from `[plugin.NAME]` in the config
/// file. What is unset falls back to the flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginPolicy {
    /// The component file's SHA-256 (lowercase hex): any other build is refused.
    pub sha256: Option<String>,
    /// Narrows what it may reach, beyond `--allow-host`.
    pub allow_host: Option<Vec<AllowedOrigin>>,
    pub memory_mib: Option<u64>,
    pub timeout: Option<Duration>,
    /// Its rotations in plugin calls at once, apart from every other plugin's.
    pub jobs: Option<usize>,
    /// May it be lent the host's own identity? Unset: yes for a single file
    /// (the operator picked it), no in a folder.
    pub gateway_credentials: Option<bool>,
}

/// One loaded plugin and the share of the pass it may take.
pub struct Member {
    pub plugin: Arc<Plugin>,
    /// Its `info` name: the `SaaS Type` that picks it.
    pub name: String,
    pub jobs: usize,
}

/// Why the plugins could not be loaded. Nothing was run; every case is the
/// operator's to fix, and exits 2 unless a plugin itself failed.
#[derive(Debug, Error)]
pub enum PluginSetError {
    #[error(
        "could not read plugin folder {dir}: {why}; pass --plugins a folder of plugin components (.wasm)"
    )]
    Dir { dir: String, why: String },
    #[error(
        "plugin folder {dir} holds no plugin: put the component (.wasm) of each plugin to run in it"
    )]
    Empty { dir: String },
    #[error(
        "plugin folder {dir} holds what is not a plugin: {list}. A plugin folder holds plugin \
         components only (files starting with '.' are passed over); move the others out"
    )]
    NotPlugins { dir: String, list: String },
    #[error(
        "plugins {first} and {second} are both named '{name}': a SaaS Type picks exactly one \
         plugin; keep one of them in the folder"
    )]
    SameName {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "plugin {file} names itself '{name}', which a SaaS Type cannot name safely: a name is \
         1 to 64 printable ASCII characters with no spaces around them; ask its author for a \
         fixed build"
    )]
    BadName { file: String, name: String },
    #[error(
        "plugin {file} ('{name}') has SHA-256 {got}, but its section of the config file pins \
         {want}: it is not the build the operator approved, so nothing starts (it was compiled \
         and asked its name in the sandbox, nothing more). If it is the build you mean to run, \
         set `sha256 = \"{got}\"` in [plugin.\"{name}\"]"
    )]
    Pin {
        file: String,
        name: String,
        want: String,
        got: String,
    },
    #[error(
        "the config file has a section [plugin.\"{name}\"], but no plugin loaded is named so \
         (loaded: {known}); name the section after the plugin's `rotate-host info` name"
    )]
    UnknownSection { name: String, known: String },
    #[error("{0}")]
    Load(#[from] SandboxError),
    #[error("plugin {file} could not say what it is: {error}")]
    Info { file: String, error: CallError },
}

impl PluginSetError {
    /// Whether the operator's input is wrong rather than a plugin failing.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Load(e) => e.is_bad_input(),
            Self::Info { error, .. } => error.is_bad_input(),
            _ => true,
        }
    }
}

/// Why no plugin serves a config record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoPlugin {
    /// The record's `SaaS Type`, if it has one.
    pub saas_type: Option<String>,
    /// The names the set knows, for the message.
    pub known: String,
}

/// The loaded plugins, by name.
pub struct PluginSet {
    source: PluginSource,
    members: Vec<Member>,
}

impl PluginSet {
    /// Loads every plugin of `source` (each compiled once, or taken from the
    /// cache), checks each against its policy and applies it.
    pub async fn load(
        source: &PluginSource,
        limits: &Limits,
        jobs: usize,
        policies: &BTreeMap<String, PluginPolicy>,
        cache_dir: Option<&Path>,
    ) -> Result<Self, PluginSetError> {
        let files = match source {
            PluginSource::File(path) => vec![path.clone()],
            PluginSource::Dir(dir) => components_in(dir)?,
        };
        let mut plugins = Vec::new();
        let mut bad = Vec::new();
        for file in &files {
            match Plugin::load(file, limits.clone(), cache_dir) {
                Ok(p) => plugins.push(p),
                Err(e) if e.is_bad_input() && matches!(source, PluginSource::Dir(_)) => {
                    bad.push(e.to_string())
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let PluginSource::Dir(dir) = source
            && !bad.is_empty()
        {
            return Err(PluginSetError::NotPlugins {
                dir: shown(dir),
                list: bad.join("; "),
            });
        }
        let mut members: Vec<Member> = Vec::new();
        for plugin in plugins {
            let name = plugin
                .info()
                .await
                .map_err(|error| PluginSetError::Info {
                    file: shown(plugin.path()),
                    error,
                })?
                .name
                .clone();
            if !good_name(&name) {
                return Err(PluginSetError::BadName {
                    file: shown(plugin.path()),
                    name: printable(&name),
                });
            }
            if let Some(other) = members.iter().find(|m| m.name.eq_ignore_ascii_case(&name)) {
                return Err(PluginSetError::SameName {
                    name: printable(&name),
                    first: shown(other.plugin.path()),
                    second: shown(plugin.path()),
                });
            }
            let policy = policy_of(policies, &name).cloned().unwrap_or_default();
            let folder = matches!(source, PluginSource::Dir(_));
            members.push(apply(plugin, name, &policy, limits, jobs, folder)?);
        }
        let set = Self {
            source: source.clone(),
            members,
        };
        if let Some(name) = policies.keys().find(|n| set.index_of(n).is_none()) {
            return Err(PluginSetError::UnknownSection {
                name: printable(name),
                known: set.known(),
            });
        }
        Ok(set)
    }

    /// Which member serves a config record whose `SaaS Type` is `saas_type`.
    /// A single file serves every record; in a folder, the type must name one.
    pub fn for_type(&self, saas_type: Option<&str>) -> Result<usize, NoPlugin> {
        if let PluginSource::File(_) = self.source {
            return Ok(0);
        }
        saas_type
            .and_then(|t| self.index_of(t.trim()))
            .ok_or_else(|| NoPlugin {
                saas_type: saas_type.map(printable),
                known: self.known(),
            })
    }

    /// Every loaded plugin.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The labels of credential-id fields of every plugin (I6 counts them all).
    pub async fn credential_id_fields(&self) -> Result<Vec<String>, CallError> {
        let mut fields: Vec<String> = Vec::new();
        for m in &self.members {
            for f in &m.plugin.info().await?.credential_id_fields {
                if !fields.contains(f) {
                    fields.push(f.clone());
                }
            }
        }
        Ok(fields)
    }

    /// The member called `name`, in any case.
    fn index_of(&self, name: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.name.eq_ignore_ascii_case(name))
    }

    fn known(&self) -> String {
        let names: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("'{}'", printable(&m.name)))
            .collect();
        names.join(", ")
    }
}

fn policy_of<'a>(
    policies: &'a BTreeMap<String, PluginPolicy>,
    name: &str,
) -> Option<&'a PluginPolicy> {
    policies
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, p)| p)
}

/// `plugin` checked against its pin and put under its policy.
fn apply(
    plugin: Plugin,
    name: String,
    policy: &PluginPolicy,
    limits: &Limits,
    jobs: usize,
    folder: bool,
) -> Result<Member, PluginSetError> {
    if let Some(want) = &policy.sha256
        && !want.eq_ignore_ascii_case(plugin.digest())
    {
        return Err(PluginSetError::Pin {
            file: shown(plugin.path()),
            name: printable(&name),
            want: want.clone(),
            got: plugin.digest().to_string(),
        });
    }
    let mut limits = limits.clone();
    if let Some(mib) = policy.memory_mib {
        limits.memory_bytes = usize::try_from(mib << 20).unwrap_or(usize::MAX);
    }
    if let Some(t) = policy.timeout {
        limits.call_timeout = t;
    }
    if policy.allow_host.is_some() {
        limits.network.section = policy.allow_host.clone();
    }
    let lendable = policy.gateway_credentials.unwrap_or(!folder);
    Ok(Member {
        plugin: Arc::new(plugin.under(limits, lendable)),
        name,
        jobs: policy.jobs.unwrap_or(jobs).max(1),
    })
}

/// The folder's plugin files, sorted by name. Files starting with '.' are
/// passed over (an editor's); everything else must be a `.wasm` file. The
/// folder and its files decide what runs, so they must be the operator's
/// alone, like the config file: no links, nothing others may change.
fn components_in(dir: &Path) -> Result<Vec<PathBuf>, PluginSetError> {
    let err = |why: String| PluginSetError::Dir {
        dir: shown(dir),
        why,
    };
    let meta = std::fs::metadata(dir).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("it is not a folder".into()));
    }
    if let Some(why) = crate::fsguard::not_operators(&meta) {
        return Err(err(format!(
            "it is {why}, and its contents decide what this host runs"
        )));
    }
    let mut files = Vec::new();
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| err(e.to_string()))? {
        let entry = entry.map_err(|e| err(e.to_string()))?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        // The entry itself, not what a link points at.
        let problem = match entry.metadata() {
            Err(e) => Some(e.to_string()),
            Ok(m) if !m.is_file() => Some(crate::fsguard::kind_of(&m).to_string()),
            Ok(_) if path.extension().is_none_or(|e| e != "wasm") => {
                Some("not a .wasm file".into())
            }
            Ok(m) => crate::fsguard::not_operators(&m),
        };
        match problem {
            Some(why) => bad.push(format!("{} ({why})", shown(&path))),
            None => files.push(path),
        }
    }
    if !bad.is_empty() {
        bad.sort();
        return Err(PluginSetError::NotPlugins {
            dir: shown(dir),
            list: bad.join("; "),
        });
    }
    if files.is_empty() {
        return Err(PluginSetError::Empty { dir: shown(dir) });
    }
    files.sort();
    Ok(files)
}

/// Whether a plugin's name can be told apart from every other in a `SaaS
/// Type` and in messages: printable ASCII, no spaces around, at most 64 bytes.
fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.trim() == name
        && name.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

fn shown(path: &Path) -> String {
    printable(&path.display().to_string())
}
