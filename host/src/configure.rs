//! `rotate-host config`: creates a plugin config record from the plugin's schema,
//! asking on a terminal or taking `--field LABEL=VALUE`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::record::ValueKind;
use crate::sandbox::engine::{Limits, Plugin, SandboxError};
use crate::sandbox::plugin::{ConfigItem, ItemType};
use crate::vault::keeper_shape;
use crate::vault::{FileVault, VaultError, VaultOptions, VaultSource};

/// What `rotate-host config` was asked to do.
#[derive(Debug, Clone)]
pub struct ConfigOptions {
    pub guest: PathBuf,
    pub vault: VaultSource,
    pub title: String,
    /// With KSM: the shared folder the record is created in.
    pub ksm_folder: Option<String>,
    /// `LABEL=VALUE` pairs from the command line.
    pub fields: Vec<String>,
    /// Ask for missing values when standard input is a terminal.
    pub interactive: bool,
    pub limits: Limits,
    pub vault_options: VaultOptions,
    pub cache_dir: Option<PathBuf>,
}

/// Why no record was created. The vault is unchanged in every case.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Plugin(#[from] crate::sandbox::engine::CallError),
    // The value may be a secret: name the flag's position, never its text.
    #[error("--field number {0} has no '=': write it as LABEL=VALUE")]
    BadField(usize),
    #[error("--field '{label}' is not a field of this plugin; its fields are: {known}")]
    UnknownLabel { label: String, known: String },
    #[error("'{label}' {why}")]
    BadValue { label: String, why: String },
    #[error(
        "missing required field(s): {0}. Pass them with --field 'LABEL=VALUE' or run on a terminal to be asked"
    )]
    Missing(String),
    #[error("could not read the answer: {0}")]
    Prompt(std::io::Error),
    #[cfg(feature = "ksm")]
    #[error(
        "with --ksm-config, pass --ksm-folder UID: the shared folder of the KSM application to \
         create the config record in"
    )]
    NoFolder,
    #[error(
        "--ksm-folder names a Keeper shared folder, and this vault is a file: drop \
         --ksm-folder, or pass --ksm-config instead of --vault"
    )]
    FolderForFile,
}

impl ConfigError {
    /// Bad input, except a vault or sandbox that failed on its own.
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            Self::Vault(e) => Exit::usage_if(e.is_bad_input()),
            Self::Sandbox(e) => Exit::usage_if(e.is_bad_input()),
            Self::Plugin(e) => Exit::usage_if(e.is_bad_input()),
            _ => Exit::Usage,
        }
    }
}

/// Creates the record and returns its UID.
pub fn configure(opts: &ConfigOptions) -> Result<String, ConfigError> {
    if matches!(opts.vault, VaultSource::File(_)) && opts.ksm_folder.is_some() {
        return Err(ConfigError::FolderForFile);
    }
    let plugin = Plugin::load(&opts.guest, opts.limits.clone(), opts.cache_dir.as_deref())?;
    let (info, schema) = plugin.describe()?;
    let mut values = given_values(&opts.fields, &schema)?;
    if opts.interactive && std::io::stdin().is_terminal() {
        ask_the_rest(&schema, &mut values)?;
    }
    for (i, value) in &mut values {
        check(&schema[*i], value)?;
        // Written the one way every reader takes.
        if schema[*i].item_type == ItemType::Bool {
            *value = crate::fields::parse_bool(value)
                .unwrap_or_default()
                .to_string();
        }
    }
    let missing = missing_required(&schema, &values);
    if !missing.is_empty() {
        return Err(ConfigError::Missing(missing.join(", ")));
    }
    values.sort_by_key(|(i, _)| *i);
    let custom = custom_fields(&info.name, &schema, &values);
    #[cfg(feature = "ksm")]
    if let VaultSource::Ksm(config) = &opts.vault {
        let Some(folder) = &opts.ksm_folder else {
            return Err(ConfigError::NoFolder);
        };
        let uid = crate::vault::ksm::create_record(
            config,
            &opts.vault_options,
            folder,
            &opts.title,
            custom,
        )?;
        tracing::info!(uid = %uid, "config record created in Keeper");
        return Ok(uid);
    }
    #[allow(irrefutable_let_patterns)] // refutable when the `ksm` feature is on
    let VaultSource::File(path) = &opts.vault else {
        unreachable!("the Keeper source returned above")
    };
    add_to_file(path, opts, custom)
}

/// `--field LABEL=VALUE` pairs as (schema index, value); a later pair for an
/// item replaces an earlier one.
fn given_values(
    fields: &[String],
    schema: &[ConfigItem],
) -> Result<Vec<(usize, String)>, ConfigError> {
    let mut values: Vec<(usize, String)> = Vec::new();
    for (n, pair) in fields.iter().enumerate() {
        let (label, value) = pair.split_once('=').ok_or(ConfigError::BadField(n + 1))?;
        let index = schema
            .iter()
            .position(|i| i.label.eq_ignore_ascii_case(label.trim()))
            .ok_or_else(|| ConfigError::UnknownLabel {
                label: label.trim().to_string(),
                known: schema
                    .iter()
                    .map(|i| format!("'{}'", i.label))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        values.retain(|(i, _)| *i != index);
        values.push((index, value.trim().to_string()));
    }
    Ok(values)
}

/// Asks on the terminal for every item not given, required items first, as
/// the vendor's tool asks them.
fn ask_the_rest(
    schema: &[ConfigItem],
    values: &mut Vec<(usize, String)>,
) -> Result<(), ConfigError> {
    let mut order: Vec<usize> = (0..schema.len()).collect();
    order.sort_by_key(|&i| !schema[i].required);
    for i in order {
        if values.iter().any(|(j, _)| *j == i) {
            continue;
        }
        let answer = ask(&schema[i]).map_err(ConfigError::Prompt)?;
        if !answer.is_empty() {
            values.push((i, answer));
        }
    }
    Ok(())
}

/// Adds a `login` record with `custom` fields to the vault file, creating the
/// file if it does not exist; returns the record's new UID.
fn add_to_file(
    path: &Path,
    opts: &ConfigOptions,
    custom: Vec<Value>,
) -> Result<String, ConfigError> {
    let mut vault = FileVault::open_or_create(path, &opts.vault_options)?;
    let uid = loop {
        let uid = new_uid();
        if !vault.has_uid(&uid) {
            break uid;
        }
    };
    let mut record = Map::new();
    record.insert("uid".into(), json!(uid));
    record.insert("type".into(), json!("login"));
    record.insert("title".into(), json!(opts.title));
    record.insert("fields".into(), json!([]));
    record.insert("custom".into(), Value::Array(custom));
    vault.add_record(record);
    vault.persist()?;
    tracing::info!(uid = %uid, vault = %path.display(), "config record created");
    Ok(uid)
}

/// The config record's custom fields: the plugin's name, then each item given.
fn custom_fields(plugin: &str, schema: &[ConfigItem], values: &[(usize, String)]) -> Vec<Value> {
    let mut custom = vec![json!({"type": "text", "label": "SaaS Type", "value": [plugin]})];
    custom.extend(values.iter().filter(|(_, v)| !v.is_empty()).map(|(i, v)| {
        let item = &schema[*i];
        let kind = if item.is_secret {
            ValueKind::Secret
        } else {
            ValueKind::Text
        };
        let field_type = keeper_shape::field_type(kind, Some(item.item_type));
        json!({"type": field_type, "label": item.label, "value": [v]})
    }));
    custom
}

/// The quoted labels of required items without a non-empty value.
fn missing_required(schema: &[ConfigItem], values: &[(usize, String)]) -> Vec<String> {
    schema
        .iter()
        .enumerate()
        .filter(|(i, item)| item.required && !values.iter().any(|(j, v)| j == i && !v.is_empty()))
        .map(|(_, item)| format!("'{}'", item.label))
        .collect()
}

/// A Keeper-style record UID: 16 random bytes, URL-safe base64.
fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn ask(item: &ConfigItem) -> std::io::Result<String> {
    let mut err = std::io::stderr();
    writeln!(
        err,
        "\n{}: {}",
        if item.required {
            "Required"
        } else {
            "Optional"
        },
        item.label
    )?;
    writeln!(err, "{}", item.desc)?;
    if !item.enum_values.is_empty() {
        for (v, d) in &item.enum_values {
            writeln!(err, "  {v}: {d}")?;
        }
    }
    let default = item
        .default_value
        .as_deref()
        .map(|d| format!(" [{d}]"))
        .unwrap_or_default();
    let prompt = format!("Enter Value{default} : > ");
    let answer = if item.is_secret {
        rpassword::prompt_password(prompt)?
    } else {
        write!(err, "{prompt}")?;
        err.flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line
    };
    Ok(answer.trim().to_string())
}

/// Checks a value against its item's type.
fn check(item: &ConfigItem, value: &str) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError::BadValue {
        label: item.label.clone(),
        why,
    };
    // A value is echoed only if it is not a secret, and then escaped.
    let given = if item.is_secret {
        "the value given".to_string()
    } else {
        format!("'{}'", crate::text::printable(value))
    };
    match item.item_type {
        ItemType::Int if value.parse::<i64>().is_err() => {
            Err(bad(format!("must be a whole number, not {given}")))
        }
        ItemType::Number if !value.parse::<f64>().is_ok_and(f64::is_finite) => {
            Err(bad(format!("must be a number, not {given}")))
        }
        ItemType::Bool if crate::fields::parse_bool(value).is_none() => Err(bad(format!(
            "must be true or false (or yes/no), not {given}"
        ))),
        ItemType::Url if crate::sandbox::allowlist::AllowedOrigin::of_url(value).is_err() => Err(
            bad(format!("must be an http:// or https:// URL, not {given}")),
        ),
        ItemType::Enum if !item.enum_values.iter().any(|(v, _)| v == value) => Err(bad(format!(
            "must be one of {}",
            item.enum_values
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(label: &str, item_type: ItemType, required: bool) -> ConfigItem {
        ConfigItem {
            id: label.to_lowercase(),
            label: label.into(),
            desc: String::new(),
            is_secret: item_type == ItemType::Secret,
            item_type,
            default_value: None,
            enum_values: vec![("a".into(), "first".into())],
            required,
        }
    }

    #[test]
    fn lists_every_missing_required_label() {
        let schema = [
            item("Tenant", ItemType::Text, true),
            item("Token", ItemType::Secret, true),
            item("Note", ItemType::Text, false),
        ];
        assert_eq!(missing_required(&schema, &[]), ["'Tenant'", "'Token'"]);
        assert_eq!(
            missing_required(&schema, &[(0, "x".into()), (1, String::new())]),
            ["'Token'"]
        );
        assert!(missing_required(&schema, &[(0, "x".into()), (1, "y".into())]).is_empty());
    }

    #[test]
    fn checks_values_against_their_types() {
        assert!(check(&item("N", ItemType::Int, false), "12").is_ok());
        assert!(check(&item("N", ItemType::Int, false), "1.5").is_err());
        assert!(check(&item("N", ItemType::Number, false), "1.5").is_ok());
        assert!(check(&item("B", ItemType::Bool, false), "TRUE").is_ok());
        assert!(check(&item("B", ItemType::Bool, false), "yes").is_ok());
        assert!(check(&item("B", ItemType::Bool, false), "maybe").is_err());
        assert!(check(&item("U", ItemType::Url, false), "https://h:1").is_ok());
        assert!(check(&item("U", ItemType::Url, false), "h:1").is_err());
        assert!(check(&item("E", ItemType::Enum, false), "a").is_ok());
        assert!(check(&item("E", ItemType::Enum, false), "b").is_err());
    }

    #[test]
    fn a_rejected_value_is_echoed_escaped_and_never_when_secret() {
        let secret_int = ConfigItem {
            is_secret: true,
            ..item("N", ItemType::Int, false)
        };
        let err = check(&secret_int, "s3cr3t-value").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t-value"), "{err}");
        let err = check(&item("N", ItemType::Int, false), "1\u{1b}[2J").unwrap_err();
        assert!(!err.to_string().contains('\u{1b}'), "{err}");
    }

    #[test]
    fn uids_look_like_keepers() {
        let (a, b) = (new_uid(), new_uid());
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
