//! Turns the vault records into the settings of one rotation: who signs, which
//! user, which endpoints, which key the vault holds now.

use std::time::Duration;

use crate::endpoints::{self, Endpoints};
use crate::error::PluginError;
use crate::model::{Context, HostCredential, Record, Subject};
use crate::retry::RetryPolicy;
use crate::schema::{
    AWS_REGION, CLIENT_ID, CLIENT_SECRET, ENDPOINT_URL, IAM_USERNAME, MAX_BACKOFF, OLD_KEY_ACTION,
    RETRY_DEADLINE, SESSION_TOKEN, VERIFY_TIMEOUT,
};
use crate::secret::Secret;

/// Label of the stored access key id, and the vendor guide's misspelling of it.
pub const ACCESS_KEY_ID_LABELS: &[&str] = &["aws_access_key_id", "aws_acess_key_id"];
/// Where records hold an access key id, by label or field type (I6): the PAM
/// user's key, the config's Client ID and the provider's key.
pub const CREDENTIAL_ID_FIELDS: &[&str] = &[
    "aws_access_key_id",
    "aws_acess_key_id",
    CLIENT_ID,
    PROVIDER_KEY_ID,
];
/// Label of the stored secret access key.
pub const SECRET_KEY_LABEL: &str = "aws_secret_access_key";
/// Record type of a provider record.
pub const PROVIDER_TYPE: &str = "pamAwsConfiguration";

const PROVIDER_KEY_ID: &str = "pamAwsAccessKeyId";
const PROVIDER_SECRET: &str = "pamAwsAccessSecretKey";
/// A provider record's session token: by either type or label.
const PROVIDER_TOKEN: &[&str] = &["pamAwsSessionToken", "Session Token"];
const PROVIDER_REGION: &str = "pamAwsRegionName";

/// An access key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub key_id: String,
    pub secret: Secret,
    /// Set for temporary credentials (an assumed role); signed as `X-Amz-Security-Token`.
    pub session_token: Option<Secret>,
}

/// What `finalize` does with the vault's old key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKeyAction {
    /// Delete it (the user guide's behaviour).
    Delete,
    /// Set it `Inactive`; the host has it deleted after the grace period.
    Deactivate,
    /// Leave it active until IAM shows no use of it for the config's `Unused
    /// Hours`; then deactivate it, and delete it after the grace period.
    RetireWhenUnused,
}

/// Everything one rotation needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The IAM user whose key is rotated.
    pub user_name: String,
    /// The rotating identity, which signs every IAM request.
    pub credentials: Credentials,
    pub region: String,
    pub endpoints: Endpoints,
    /// The access key id the PAM user record holds now, if any.
    pub vault_key_id: Option<String>,
    pub retry: RetryPolicy,
    pub verify_timeout: Duration,
    /// When the host stops this call; no pause may run past it.
    pub deadline: Option<Duration>,
    pub old_key_action: OldKeyAction,
}

impl Settings {
    /// Reads and checks the settings; every problem found is reported at once.
    pub fn resolve(ctx: &Context) -> Result<Self, PluginError> {
        let config = &ctx.config;
        let provider = ctx.provider.as_ref().map(Provider::read).transpose()?;

        let credentials = credentials(config, provider.as_ref(), ctx.host_credential.as_ref())?;
        let region = config
            .value(&[AWS_REGION])
            .map(str::to_string)
            .or_else(|| provider.as_ref().and_then(|p| p.region.clone()));
        let Some(region) = region else {
            return Err(missing(&[AWS_REGION], provider.is_some()));
        };
        let endpoints = endpoints::resolve(&region, config.value(&[ENDPOINT_URL]))?;

        // Whole numbers only: float parsing and printing would add tens of KiB to the component.
        let retry = RetryPolicy {
            deadline: Duration::from_secs(whole(config, RETRY_DEADLINE, 60, 0, 3600)?),
            max_backoff: Duration::from_millis(whole(config, MAX_BACKOFF, 5000, 1, 600_000)?),
            ..RetryPolicy::default()
        };
        let verify_timeout = Duration::from_secs(whole(config, VERIFY_TIMEOUT, 60, 0, 3600)?);
        let old_key_action = match config.value(&[OLD_KEY_ACTION]) {
            None => OldKeyAction::Delete,
            Some(v) if v.eq_ignore_ascii_case("delete") => OldKeyAction::Delete,
            Some(v) if v.eq_ignore_ascii_case("deactivate") => OldKeyAction::Deactivate,
            Some(v) if v.eq_ignore_ascii_case("retire-when-unused") => {
                OldKeyAction::RetireWhenUnused
            }
            Some(v) => {
                return Err(PluginError::InvalidConfig(format!(
                    "'{OLD_KEY_ACTION}' is '{v}': use 'delete' (the default), 'deactivate' or \
                     'retire-when-unused'"
                )));
            }
        };

        Ok(Self {
            user_name: user_name(&ctx.user, config)?,
            credentials,
            region,
            endpoints,
            vault_key_id: vault_key_id(&ctx.user)?,
            retry,
            verify_timeout,
            deadline: ctx.deadline,
            old_key_action,
        })
    }
}

/// What a rotation of these records would rotate, from the records alone: the
/// IAM endpoint and the signing key name the account as far as records can
/// (two keys of one account are told apart only by IAM, where I6 still holds).
/// The records are checked exactly as `rotate` checks them, so a record that
/// fails here would fail there with the same message. A lent host credential
/// may be a placeholder: only whether it is lent matters here.
pub fn subject(ctx: &Context) -> Result<Subject, PluginError> {
    let settings = Settings::resolve(ctx)?;
    let lent = ctx.host_credential.as_ref().map(|h| h.id.as_str());
    let signer = match settings.credentials.key_id.as_str() {
        id if Some(id) == lent => "the host's identity",
        id => id,
    };
    Ok(Subject {
        service: format!("{} signed by {signer}", settings.endpoints.iam.url),
        login: settings.user_name.to_lowercase(),
        fixed_by_config: ctx.config.value(&[IAM_USERNAME]).is_some(),
    })
}

struct Provider {
    key_id: Option<String>,
    secret: Option<String>,
    token: Option<String>,
    region: Option<String>,
}

impl Provider {
    fn read(record: &Record) -> Result<Self, PluginError> {
        if !record.record_type.eq_ignore_ascii_case(PROVIDER_TYPE) {
            return Err(PluginError::InvalidConfig(format!(
                "record '{}' given as --configuration-uid has type '{}', not '{PROVIDER_TYPE}': \
                 pass the UID of a PAM AWS Configuration record, or drop --configuration-uid",
                record.uid, record.record_type
            )));
        }
        let find = |name: &str| {
            record
                .by_kind(name)
                .or_else(|| record.by_label(&[name]))
                .map(|f| f.values.clone())
                .unwrap_or_default()
        };
        let first = |values: Vec<String>| {
            values
                .iter()
                .flat_map(|v| v.lines())
                .map(str::trim)
                .find(|v| !v.is_empty())
                .map(str::to_string)
        };
        Ok(Self {
            key_id: first(find(PROVIDER_KEY_ID)),
            secret: first(find(PROVIDER_SECRET)),
            token: PROVIDER_TOKEN.iter().find_map(|name| first(find(name))),
            region: first(find(PROVIDER_REGION)),
        })
    }
}

/// The key pair comes whole from one source, in this order: the config record,
/// the provider record, the host's own identity. A Client ID from one with a
/// secret from another would never sign correctly.
fn credentials(
    config: &Record,
    provider: Option<&Provider>,
    host: Option<&HostCredential>,
) -> Result<Credentials, PluginError> {
    let id = config.value(&[CLIENT_ID]);
    let secret = config.value(&[CLIENT_SECRET]);
    let from_provider = provider.and_then(|p| Some((p.key_id.as_ref()?, p.secret.as_ref()?, p)));
    match (id, secret, from_provider, host) {
        (Some(id), Some(secret), _, _) => Ok(Credentials {
            key_id: id.to_string(),
            secret: Secret::new(secret),
            session_token: config.value(&[SESSION_TOKEN]).map(Secret::new),
        }),
        (Some(_), None, _, _) => Err(missing(&[CLIENT_SECRET], false)),
        (None, Some(_), _, _) => Err(missing(&[CLIENT_ID], false)),
        (None, None, Some((id, secret, p)), _) => Ok(Credentials {
            key_id: id.clone(),
            secret: Secret::new(secret.clone()),
            session_token: p.token.clone().map(Secret::new),
        }),
        (None, None, None, Some(h)) => Ok(Credentials {
            key_id: h.id.clone(),
            secret: h.secret.clone(),
            session_token: h.session_token.clone(),
        }),
        (None, None, None, None) => Err(PluginError::InvalidConfig(format!(
            "no AWS credentials to sign with. Give them one of three ways: '{CLIENT_ID}' and \
             '{CLIENT_SECRET}' in the config record; a PAM AWS Configuration record with \
             {PROVIDER_KEY_ID} and {PROVIDER_SECRET} (--configuration-uid); or the host's own \
             identity ('Use Gateway Credentials' in the config record, or --gateway-credentials)"
        ))),
    }
}

fn missing(labels: &[&str], provider_tried: bool) -> PluginError {
    let list = labels
        .iter()
        .map(|l| format!("'{l}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = if provider_tried {
        "set it in the config record or in the PAM AWS Configuration record"
    } else {
        "set it in the config record, or pass --configuration-uid with a PAM AWS Configuration record"
    };
    PluginError::InvalidConfig(format!("missing required config field(s) {list}: {hint}"))
}

/// The key id the PAM user record holds. Several fields may carry it (the
/// label and its misspelling); if they disagree, which key is the vault's is
/// unknown, and guessing could delete the one in use.
fn vault_key_id(user: &Record) -> Result<Option<String>, PluginError> {
    let mut ids: Vec<&str> = Vec::new();
    // Distinct ids in field order; no sort, whose code would cost the component KiBs.
    for id in user
        .fields
        .iter()
        .filter(|f| {
            f.label.as_deref().is_some_and(|l| {
                ACCESS_KEY_ID_LABELS
                    .iter()
                    .any(|want| l.trim().eq_ignore_ascii_case(want))
            })
        })
        .filter_map(|f| f.first_value())
    {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    match ids.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        many => Err(PluginError::InvalidConfig(format!(
            "PAM user record '{}' has {} different access key ids ({}) in fields labelled \
             {}: keep one field, with the key id in use, and run again",
            user.uid,
            many.len(),
            many.join(", "),
            ACCESS_KEY_ID_LABELS.join(" or ")
        ))),
    }
}

fn user_name(user: &Record, config: &Record) -> Result<String, PluginError> {
    let configured = config.value(&[IAM_USERNAME]);
    let login = user.by_kind("login").and_then(|f| f.first_value());
    match (configured, login) {
        // IAM user names are unique regardless of case.
        (Some(c), Some(l)) if !c.eq_ignore_ascii_case(l) => {
            Err(PluginError::InvalidConfig(format!(
                "the config record's '{IAM_USERNAME}' is '{c}' but the PAM user record's login is \
             '{l}': refusing to guess which IAM user to rotate; make them match or clear one"
            )))
        }
        (Some(name), _) | (None, Some(name)) => Ok(name.to_string()),
        (None, None) => Err(PluginError::InvalidConfig(format!(
            "no IAM user to rotate: set the PAM user record's login or the config record's \
             '{IAM_USERNAME}'"
        ))),
    }
}

fn whole(
    config: &Record,
    label: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, PluginError> {
    let Some(raw) = config.value(&[label]) else {
        return Ok(default);
    };
    match raw.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(PluginError::InvalidConfig(format!(
            "'{label}' is '{raw}', which is not a whole number from {min} to {max}: fix it or \
             clear it to use the default ({default})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Field;

    fn field(kind: &str, label: Option<&str>, value: &str) -> Field {
        Field {
            kind: kind.into(),
            label: label.map(Into::into),
            values: vec![value.into()],
        }
    }

    fn config(fields: &[(&str, &str)]) -> Record {
        Record {
            uid: "cfg".into(),
            record_type: "login".into(),
            title: "AWS".into(),
            fields: fields
                .iter()
                .map(|(l, v)| field("text", Some(l), v))
                .collect(),
        }
    }

    fn user(login: &str, key: Option<(&str, &str)>) -> Record {
        let mut fields = vec![field("login", None, login)];
        if let Some((label, id)) = key {
            fields.push(field("text", Some(label), id));
        }
        Record {
            uid: "u".into(),
            record_type: "pamUser".into(),
            title: login.into(),
            fields,
        }
    }

    fn provider(region_values: &[&str]) -> Record {
        Record {
            uid: "prov".into(),
            record_type: "pamAwsConfiguration".into(),
            title: "AWS".into(),
            fields: vec![
                field("pamAwsAccessKeyId", None, "AKIAPROVIDER"),
                field("secret", Some("pamAwsAccessSecretKey"), "provider-secret"),
                Field {
                    kind: "pamAwsRegionName".into(),
                    label: None,
                    values: region_values.iter().map(|s| s.to_string()).collect(),
                },
            ],
        }
    }

    fn ctx(user: Record, config: Record, provider: Option<Record>) -> Context {
        Context {
            user,
            config,
            provider,
            dry_run: false,
            deadline: None,
            ..Context::default()
        }
    }

    const FULL: &[(&str, &str)] = &[
        ("Client ID", "AKIACONFIG"),
        ("Client Secret", "config-secret"),
        ("AWS Region", "eu-west-1"),
    ];

    #[test]
    fn config_record_alone() {
        let s = Settings::resolve(&ctx(
            user("alice", Some(("aws_access_key_id", "AKIAOLD"))),
            config(FULL),
            None,
        ))
        .unwrap();
        assert_eq!(s.user_name, "alice");
        assert_eq!(s.credentials.key_id, "AKIACONFIG");
        assert_eq!(s.credentials.secret.expose(), "config-secret");
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.vault_key_id.as_deref(), Some("AKIAOLD"));
        assert_eq!(s.retry.deadline, Duration::from_secs(60));
    }

    #[test]
    fn config_record_wins_over_provider() {
        let s = Settings::resolve(&ctx(
            user("alice", None),
            config(FULL),
            Some(provider(&["us-west-2"])),
        ))
        .unwrap();
        assert_eq!(s.credentials.key_id, "AKIACONFIG");
        assert_eq!(s.region, "eu-west-1");
    }

    #[test]
    fn provider_fills_gaps_and_its_first_region_is_used() {
        let s = Settings::resolve(&ctx(
            user("alice", None),
            config(&[]),
            Some(provider(&["\n us-west-2\neu-central-1"])),
        ))
        .unwrap();
        assert_eq!(s.credentials.key_id, "AKIAPROVIDER");
        assert_eq!(s.credentials.secret.expose(), "provider-secret");
        assert_eq!(s.region, "us-west-2");
        let s = Settings::resolve(&ctx(
            user("alice", None),
            config(&[]),
            Some(provider(&["", "ap-south-1", "us-east-1"])),
        ))
        .unwrap();
        assert_eq!(s.region, "ap-south-1");
    }

    /// A session token comes with the pair it belongs to: the config's, or the
    /// provider's (by type or label).
    #[test]
    fn session_tokens_follow_their_key_pair() {
        let mut cfg: Vec<(&str, &str)> = FULL.to_vec();
        cfg.push(("Session Token", "config-token"));
        let s = Settings::resolve(&ctx(user("alice", None), config(&cfg), None)).unwrap();
        assert_eq!(
            s.credentials.session_token.as_ref().map(Secret::expose),
            Some("config-token")
        );
        let s = Settings::resolve(&ctx(user("alice", None), config(FULL), None)).unwrap();
        assert!(s.credentials.session_token.is_none());
        let mut p = provider(&["us-east-1"]);
        p.fields.push(crate::model::Field {
            kind: "pamAwsSessionToken".into(),
            label: None,
            values: vec!["provider-token".into()],
        });
        let s = Settings::resolve(&ctx(user("alice", None), config(&[]), Some(p))).unwrap();
        assert_eq!(
            s.credentials.session_token.as_ref().map(Secret::expose),
            Some("provider-token")
        );
    }

    /// The third way: the host's own identity signs only when no record gives a pair.
    #[test]
    fn host_credential_is_the_last_resort() {
        let host = crate::model::HostCredential {
            id: "ASIAHOST".into(),
            secret: Secret::new("host-secret"),
            session_token: Some(Secret::new("host-token")),
        };
        let with_host = |config_fields: &[(&str, &str)], p: Option<Record>| {
            let mut c = ctx(user("alice", None), config(config_fields), p);
            c.host_credential = Some(host.clone());
            Settings::resolve(&c)
        };
        let s = with_host(&[("AWS Region", "us-east-1")], None).unwrap();
        assert_eq!(s.credentials.key_id, "ASIAHOST");
        assert_eq!(
            s.credentials.session_token.as_ref().map(Secret::expose),
            Some("host-token")
        );
        assert_eq!(
            with_host(FULL, None).unwrap().credentials.key_id,
            "AKIACONFIG"
        );
        let s = with_host(&[], Some(provider(&["us-east-1"]))).unwrap();
        assert_eq!(s.credentials.key_id, "AKIAPROVIDER");
        let err = Settings::resolve(&ctx(
            user("alice", None),
            config(&[("AWS Region", "us-east-1")]),
            None,
        ))
        .unwrap_err();
        let PluginError::InvalidConfig(m) = err else {
            panic!("{err:?}")
        };
        for way in ["'Client ID'", "pamAwsAccessKeyId", "--gateway-credentials"] {
            assert!(m.contains(way), "{m}");
        }
    }

    #[test]
    fn old_key_action_is_delete_or_deactivate() {
        let action = |v: &str| {
            let mut cfg: Vec<(&str, &str)> = FULL.to_vec();
            cfg.push(("Old Key Action", v));
            Settings::resolve(&ctx(user("alice", None), config(&cfg), None))
                .map(|s| s.old_key_action)
        };
        assert_eq!(action("Deactivate"), Ok(OldKeyAction::Deactivate));
        assert_eq!(action("delete"), Ok(OldKeyAction::Delete));
        assert_eq!(action(" "), Ok(OldKeyAction::Delete));
        assert!(
            matches!(action("disable"), Err(PluginError::InvalidConfig(m)) if m.contains("'deactivate'"))
        );
    }

    #[test]
    fn provider_of_the_wrong_type_is_refused() {
        let mut p = provider(&["us-east-1"]);
        p.record_type = "login".into();
        let err = Settings::resolve(&ctx(user("alice", None), config(&[]), Some(p))).unwrap_err();
        assert!(matches!(err, PluginError::InvalidConfig(m) if m.contains("pamAwsConfiguration")));
    }

    #[test]
    fn misspelled_label_is_read() {
        let s = Settings::resolve(&ctx(
            user("alice", Some(("AWS_ACESS_KEY_ID", "AKIAOLD"))),
            config(FULL),
            None,
        ))
        .unwrap();
        assert_eq!(s.vault_key_id.as_deref(), Some("AKIAOLD"));
    }

    #[test]
    fn key_id_fields_must_agree() {
        let mut u = user("alice", Some(("aws_access_key_id", "AKIAOLD")));
        u.fields.push(crate::model::Field {
            kind: "text".into(),
            label: Some("aws_acess_key_id".into()),
            values: vec!["AKIAOLD".into()],
        });
        let s = Settings::resolve(&ctx(u.clone(), config(FULL), None)).unwrap();
        assert_eq!(s.vault_key_id.as_deref(), Some("AKIAOLD"));
        u.fields.last_mut().unwrap().values = vec!["AKIAOTHER".into()];
        let err = Settings::resolve(&ctx(u, config(FULL), None)).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidConfig(m) if m.contains("AKIAOLD, AKIAOTHER")),
            "{err:?}"
        );
    }

    #[test]
    fn missing_fields_are_listed() {
        let err = Settings::resolve(&ctx(
            user("alice", None),
            config(&[("AWS Region", "us-east-1")]),
            None,
        ))
        .unwrap_err();
        let PluginError::InvalidConfig(m) = err else {
            panic!("{err:?}")
        };
        assert!(
            m.contains("'Client ID'") && m.contains("'Client Secret'"),
            "{m}"
        );
        let err = Settings::resolve(&ctx(
            user("alice", None),
            config(&[("Client ID", "AKIA"), ("Client Secret", "   ")]),
            None,
        ))
        .unwrap_err();
        assert!(matches!(err, PluginError::InvalidConfig(m) if m.contains("'Client Secret'")));
    }

    #[test]
    fn user_name_rule() {
        let mut cfg = FULL.to_vec();
        cfg.push(("IAM Username", "bob"));
        let err = Settings::resolve(&ctx(user("alice", None), config(&cfg), None)).unwrap_err();
        assert!(matches!(err, PluginError::InvalidConfig(m) if m.contains("refusing to guess")));
        let s = Settings::resolve(&ctx(user("BOB", None), config(&cfg), None)).unwrap();
        assert_eq!(s.user_name, "bob");
        let s = Settings::resolve(&ctx(user("", None), config(&cfg), None)).unwrap();
        assert_eq!(s.user_name, "bob");
    }

    #[test]
    fn numbers_are_checked() {
        let mut cfg = FULL.to_vec();
        cfg.push(("Retry Deadline Seconds", "2"));
        cfg.push(("Max Backoff Milliseconds", "20"));
        let s = Settings::resolve(&ctx(user("a", None), config(&cfg), None)).unwrap();
        assert_eq!(s.retry.deadline, Duration::from_secs(2));
        assert_eq!(s.retry.max_backoff, Duration::from_millis(20));
        cfg.push(("Verify Timeout Seconds", "0.5"));
        let err = Settings::resolve(&ctx(user("a", None), config(&cfg), None)).unwrap_err();
        assert!(matches!(err, PluginError::InvalidConfig(m) if m.contains("Verify Timeout")));
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = Settings::resolve(&ctx(user("a", None), config(FULL), None)).unwrap();
        assert!(!format!("{s:?}").contains("config-secret"));
    }
}
