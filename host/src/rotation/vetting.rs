//! What a record may rotate, decided before any plugin call can reach the
//! network (docs/design.md §8.1). In a shared vault every field is someone
//! else's input, so a record must not choose whose credential it gets:
//!
//! - a `Rotation Config` names a config record (one with `SaaS Type`), never
//!   the record itself;
//! - a config serves only the logins its `Rotation Scope` names, or the one
//!   login it fixes itself (AWS: `IAM Username`);
//! - two records whose rotations would change one credential (the plugin's
//!   `subject`) are refused together.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::fields::PAM_USER_TYPE;
use crate::fields::labels;
use crate::record::Record;
use crate::rotation::identity::GatewayIdentity;
use crate::rotation::job::Records;
use crate::sandbox::engine::{CallError, Plugin};
use crate::sandbox::instance::Instance;
use crate::sandbox::plugin::{Context, HostCredential, PluginError, Subject};
use crate::sandbox::plugin_set::PluginSet;
use crate::secret::Secret;
use crate::text::printable;

/// The label of a config record's kind, as Keeper writes it.
pub const SAAS_TYPE: &str = "SaaS Type";

/// Why a record may not rotate what it names. Nothing was changed.
#[derive(Debug, Clone, Error)]
pub enum VetError {
    #[error(
        "record '{uid}' names itself as its 'Rotation Config': a record cannot be its own config; \
         set 'Rotation Config' to the UID of a config record"
    )]
    OwnConfig { uid: String },
    #[error(
        "record '{uid}' names '{config}' as its 'Rotation Config', but that is {why}, not a config \
         record (a record with a '{SAAS_TYPE}' field, as `rotate-host config` writes it); fix \
         'Rotation Config'"
    )]
    NotAConfig {
        uid: String,
        config: String,
        why: String,
    },
    #[error(
        "record '{uid}' would rotate login '{login}', which config record '{config}' does not \
         serve: its 'Rotation Scope' names other logins. Nothing was changed; the config's owner \
         can add the login to 'Rotation Scope', or the record can use another config"
    )]
    OutOfScope {
        uid: String,
        login: String,
        config: String,
    },
    #[error(
        "config record '{config}' declares no 'Rotation Scope', so a pass does not know which \
         logins it may rotate (record '{uid}' asks for '{login}'). Nothing was changed; set \
         'Rotation Scope' in '{config}' to one login pattern per line ('*' matches any run of \
         characters; '*' alone serves every record), or name the one user in the config itself"
    )]
    NoScope {
        uid: String,
        login: String,
        config: String,
    },
    #[error(
        "records {} would rotate the same credential (login '{login}', {service}): two records \
         never rotate one credential, since each would delete the other's key. Nothing was \
         changed; keep one record and remove 'Rotation Config' from the others", uids.join(" and ")
    )]
    Duplicate {
        uids: Vec<String>,
        login: String,
        service: String,
    },
    #[error(
        "record '{uid}' names '{provider}' as its 'Rotation Provider', which its config record \
         '{config}' does not name: a record cannot choose whose key signs its rotation. Nothing \
         was changed; the config's owner can set 'Rotation Provider' on '{config}' to the same UID"
    )]
    ProviderNotNamed {
        uid: String,
        provider: String,
        config: String,
    },
    #[error(
        "record '{uid}' uses config record '{config}', {why}, and with --plugins the 'SaaS Type' \
         picks the plugin (the folder's plugins: {known}). Nothing was changed; set 'SaaS Type' \
         in '{config}' to one of them, or add its plugin to the folder"
    )]
    NoPlugin {
        uid: String,
        config: String,
        why: String,
        known: String,
    },
    #[error("{0}; nothing was changed")]
    Field(crate::fields::BadField),
    #[error("{0}")]
    Plugin(PluginError),
    #[error("{0}")]
    Sandbox(String, bool),
}

impl VetError {
    /// Bad input for records to fix; failed when the plugin failed.
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            Self::Plugin(PluginError::InvalidConfig(_)) => Exit::Usage,
            Self::Plugin(_) => Exit::Failed,
            Self::Sandbox(_, bad_input) => Exit::usage_if(*bad_input),
            _ => Exit::Usage,
        }
    }
}

/// Checks that `config` may serve as the config record of `user`. `chosen_by_record`
/// is true for a `Rotation Config` (the operator's `-c` is trusted to be one).
pub fn check_config(
    user: &Record,
    config: &Record,
    chosen_by_record: bool,
) -> Result<(), VetError> {
    let uid = printable(&user.uid);
    if user.uid == config.uid {
        return Err(VetError::OwnConfig { uid });
    }
    if !chosen_by_record {
        return Ok(());
    }
    let why = if config.record_type.eq_ignore_ascii_case(PAM_USER_TYPE) {
        Some("a PAM user record".to_string())
    } else if config.value(SAAS_TYPE).is_none() {
        Some(format!(
            "a '{}' record without '{SAAS_TYPE}'",
            printable(&config.record_type)
        ))
    } else {
        None
    };
    if let Some(why) = why {
        return Err(VetError::NotAConfig {
            uid,
            config: printable(&config.uid),
            why,
        });
    }
    match user.value(labels::PROVIDER) {
        Some(p) if config.value(labels::PROVIDER) != Some(p) => Err(VetError::ProviderNotNamed {
            uid,
            provider: printable(p),
            config: printable(&config.uid),
        }),
        _ => Ok(()),
    }
}

/// The index in `set` of the plugin that serves `config` (its `SaaS Type`).
pub fn plugin_for(set: &PluginSet, uid: &str, config: &Record) -> Result<usize, VetError> {
    set.for_type(config.value(SAAS_TYPE))
        .map_err(|none| VetError::NoPlugin {
            uid: printable(uid),
            config: printable(&config.uid),
            why: match none.saas_type {
                Some(t) => format!("whose '{SAAS_TYPE}' '{t}' names no plugin"),
                None => format!("which has no '{SAAS_TYPE}'"),
            },
            known: none.known,
        })
}

/// Checks `subject` against the config's `Rotation Scope`. Without one, a
/// config that fixes its login passes; any other passes only when the
/// operator named the records (`run`), not in a pass (`require`).
pub fn check_scope(
    uid: &str,
    subject: &Subject,
    config: &Record,
    require: bool,
) -> Result<(), VetError> {
    let patterns: Vec<String> = config
        .fields
        .iter()
        .filter(|f| {
            f.label
                .as_deref()
                .is_some_and(|l| l.trim().eq_ignore_ascii_case(labels::SCOPE))
        })
        .flat_map(|f| f.values.iter())
        .flat_map(|v| {
            v.expose()
                .lines()
                .map(|l| l.trim().to_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect();
    let err = |kind: fn(String, String, String) -> VetError| {
        Err(kind(
            printable(uid),
            printable(&subject.login),
            printable(&config.uid),
        ))
    };
    if patterns.is_empty() {
        if require && !subject.fixed_by_config {
            return err(|uid, login, config| VetError::NoScope { uid, login, config });
        }
        return Ok(());
    }
    let login = subject.login.to_lowercase();
    if patterns.iter().any(|p| glob(p, &login)) {
        Ok(())
    } else {
        err(|uid, login, config| VetError::OutOfScope { uid, login, config })
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// How long one `subject` call (and its instance's start) may take: the
/// answer is a pure function of the records, and a pass waits for it.
const SUBJECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `subject` instances a pass replaces per plugin after they ran out of time
/// or memory; after that, the plugin's remaining records fail without a
/// call, so a plugin that spins there delays the pass by a bounded time
/// however many records name it. A trap is quick and costs one record only.
const SUBJECT_STOPS: usize = 3;

/// Works out records' subjects one at a time on one instance that can reach
/// nothing (a stopped instance is replaced for the next record, up to
/// `SUBJECT_STOPS` times), so a vault is never held in memory whole for this.
pub struct Subjects<'a> {
    plugin: &'a Plugin,
    identity: &'a GatewayIdentity,
    instance: Option<Instance>,
    /// Instances stopped so far.
    stops: usize,
    /// The config schema, for the secrets to mask (I3).
    schema: Vec<crate::sandbox::plugin::ConfigItem>,
}

impl<'a> Subjects<'a> {
    pub fn new(plugin: &'a Plugin, identity: &'a GatewayIdentity) -> Self {
        Self {
            plugin,
            identity,
            instance: None,
            stops: 0,
            schema: vec![],
        }
    }

    /// The subject of a rotation of `records`.
    pub async fn of(&mut self, records: &Records) -> Result<Subject, VetError> {
        // A stopped instance is replaced for the next record: one record that
        // makes the plugin trap fails alone.
        if self.stops >= SUBJECT_STOPS {
            return Err(VetError::Sandbox(
                format!(
                    "the plugin's `subject` was stopped at its time or memory limit \
                     {SUBJECT_STOPS} times in this pass, so its other records are not vetted \
                     until the next; this is a bug in the plugin"
                ),
                false,
            ));
        }
        if self.instance.is_none() {
            let started = async {
                let mut fresh = self.plugin.instantiate_within(SUBJECT_TIMEOUT).await?;
                let schema = fresh.config_schema().await?;
                Ok::<_, CallError>((fresh, schema))
            };
            let (fresh, schema) = started.await.map_err(|e| {
                self.count_stop(&e);
                sandbox(&e)
            })?;
            self.schema = schema;
            self.instance = Some(fresh);
        }
        let instance = self.instance.as_mut().expect("just made");
        // Everything the plugin says is masked, here as in a rotation (I3).
        let provider = records.provider.as_ref();
        for secret in crate::rotation::exposure::secrets(
            &self.schema,
            &records.user,
            &records.config,
            provider,
        ) {
            instance.add_secret(&secret);
        }
        let lent = self
            .identity
            .wanted(&records.config, self.plugin)
            .map_err(VetError::Field)?;
        let ctx = Context {
            user: records.user.clone(),
            config: records.config.clone(),
            provider: records.provider.clone(),
            dry_run: true,
            // Whether the identity is lent decides the subject, not its value:
            // the chain is not resolved for this.
            host_credential: lent.then(|| HostCredential {
                id: "the host's identity".into(),
                secret: Secret::new(""),
                session_token: None,
            }),
            deactivated: vec![],
            staged: vec![],
        };
        match instance.subject(&ctx).await {
            Ok(s) => Ok(s),
            Err(CallError::Refused { error, .. }) => Err(VetError::Plugin(error)),
            Err(e) => {
                self.instance = None;
                self.count_stop(&e);
                Err(sandbox(&e))
            }
        }
    }

    fn count_stop(&mut self, e: &CallError) {
        if matches!(e, CallError::Stopped(_)) {
            self.stops += 1;
        }
    }
}

fn sandbox(e: &CallError) -> VetError {
    VetError::Sandbox(e.to_string(), e.is_bad_input())
}

/// Groups of records with one subject: for each such record, every record of its group.
pub fn duplicates<'a>(
    subjects: impl IntoIterator<Item = (&'a str, &'a Subject)>,
) -> BTreeMap<String, VetError> {
    let mut by_subject: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (uid, s) in subjects {
        by_subject
            .entry((s.service.as_str(), s.login.as_str()))
            .or_default()
            .push(uid);
    }
    let mut out = BTreeMap::new();
    for ((service, login), uids) in by_subject.into_iter().filter(|(_, u)| u.len() > 1) {
        let error = VetError::Duplicate {
            uids: uids.iter().map(|u| format!("'{}'", printable(u))).collect(),
            login: printable(login),
            service: printable(service),
        };
        for uid in uids {
            out.insert(uid.to_string(), error.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_runs_of_characters() {
        assert!(glob("*", "anything"));
        assert!(glob("svc-*", "svc-billing"));
        assert!(!glob("svc-*", "admin"));
        assert!(glob("*-ci", "deploy-ci"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("alice", "alice"));
        assert!(!glob("alice", "alice2"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn equal_subjects_fail_together() {
        let s = |login: &str| Subject {
            service: "iam".into(),
            login: login.into(),
            fixed_by_config: false,
        };
        let (a, b, c) = (s("alice"), s("alice"), s("bob"));
        let d = duplicates([("u1", &a), ("u2", &b), ("u3", &c)]);
        assert_eq!(d.keys().collect::<Vec<_>>(), ["u1", "u2"]);
        assert!(d["u1"].to_string().contains("'u1' and 'u2'"));
    }
}
