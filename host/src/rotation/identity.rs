//! The gateway's own AWS identity, the third way a rotation gets credentials
//! (docs/design.md, "Credentials"). The only AWS code in the host.
//!
//! When the operator passes `--gateway-credentials`, or a config record sets
//! `Use Gateway Credentials`, the host resolves the standard AWS credential
//! chain with `aws-config`, in the SDK's order: environment variables, the
//! shared config and credentials files (`AWS_PROFILE`, including `role_arn`
//! with `source_profile`), a web identity token file, ECS container
//! credentials, then EC2 IMDSv2. The result is lent to the plugin for one
//! call at a time; it is never written to the vault or logged.

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_http_client::tls;
use thiserror::Error;

use crate::fields::{BadField, labels};
use crate::record::Record;
use crate::sandbox::engine::Plugin;
use crate::sandbox::plugin::HostCredential;
use crate::secret::Secret;

/// How long resolving the chain may take: IMDS and STS are network calls.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
/// A cached credential is renewed this long before it expires, so a rotation
/// never starts with one about to lapse.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Why the host's identity could not be had.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error(
        "the host's own AWS identity was asked for (--gateway-credentials or 'Use Gateway \
         Credentials'), but no source of the AWS credential chain has one ({tried}). Give the \
         host credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; AWS_PROFILE with \
         ~/.aws/config; AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN; a container or instance \
         role), or give the plugin its own: 'Client ID' and 'Client Secret' in the config record, \
         or a PAM AWS Configuration record"
    )]
    NotFound { tried: String },
    #[error(
        "the host's own AWS identity could not be resolved: {why}. Check the AWS_* environment \
         variables, the profile in ~/.aws/config, and that STS or the instance metadata service \
         is reachable"
    )]
    Failed { why: String },
}

/// The host's identity, resolved when first needed and renewed before it expires.
pub struct GatewayIdentity {
    lend: Lending,
    cache: tokio::sync::Mutex<Option<(HostCredential, Option<SystemTime>)>>,
}

/// The operator's choice of whom the host's identity is lent to: it is the
/// operator's to lend, never a record's to take (issue 14).
#[derive(Debug, Clone, Default)]
pub struct Lending {
    /// `--gateway-credentials`.
    pub enabled: bool,
    /// `--gateway-credentials-for UID`: only these config records; empty is all.
    pub only: Vec<String>,
}

impl GatewayIdentity {
    pub fn new(lend: Lending) -> Self {
        Self {
            lend,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether a rotation under `config`, run by `plugin`, is lent the
    /// identity. The operator lends it (`--gateway-credentials`, perhaps
    /// limited to named configs, and only to plugins its policy lets have it);
    /// a config's `Use Gateway Credentials` can decline it, and asking for it
    /// where it is not lent is an error rather than a silent fallback.
    pub fn wanted(&self, config: &Record, plugin: &Plugin) -> Result<bool, BadField> {
        let for_config = self.lend.enabled
            && (self.lend.only.is_empty() || self.lend.only.contains(&config.uid));
        let lent = for_config && plugin.lendable();
        let asked = match config.value(labels::GATEWAY_CREDENTIALS) {
            None => None,
            Some(v) => Some(crate::fields::parse_bool(v).ok_or_else(|| BadField {
                field: labels::GATEWAY_CREDENTIALS,
                why: format!(
                    "in record '{}' is '{}', not true or false",
                    crate::text::printable(&config.uid),
                    crate::text::printable(v)
                ),
            })?),
        };
        match asked {
            Some(false) => Ok(false),
            Some(true) if for_config && !lent => Err(BadField {
                field: labels::GATEWAY_CREDENTIALS,
                why: format!(
                    "in record '{}' asks for the host's own AWS identity, which the operator's \
                     policy does not lend to plugin '{}': a plugin from a --plugins folder has it \
                     only in a pass whose config file sets `gateway-credentials = true` in \
                     [plugin.\"{}\"] (`run --plugins` lends it to none; `run GUEST.wasm` can), \
                     or the config can have its own key",
                    crate::text::printable(&config.uid),
                    crate::text::printable(plugin.name().unwrap_or("?")),
                    crate::text::printable(plugin.name().unwrap_or("?")),
                ),
            }),
            Some(true) if !lent => Err(BadField {
                field: labels::GATEWAY_CREDENTIALS,
                why: format!(
                    "in record '{}' asks for the host's own AWS identity, which the operator does \
                     not lend to this config: the operator can pass --gateway-credentials (and \
                     --gateway-credentials-for {}), or give the config its own key",
                    crate::text::printable(&config.uid),
                    crate::text::printable(&config.uid)
                ),
            }),
            _ => Ok(lent),
        }
    }

    /// The identity's credential, from the cache while it has time left.
    pub async fn credential(&self) -> Result<HostCredential, IdentityError> {
        let mut cache = self.cache.lock().await;
        if let Some((credential, expiry)) = cache.as_ref() {
            let fresh = expiry.is_none_or(|at| {
                at.duration_since(SystemTime::now())
                    .is_ok_and(|left| left > RENEW_BEFORE)
            });
            if fresh {
                return Ok(credential.clone());
            }
        }
        let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, resolve())
            .await
            .map_err(|_| IdentityError::Failed {
                why: format!(
                    "the credential chain gave no answer within {} s",
                    RESOLVE_TIMEOUT.as_secs()
                ),
            })??;
        tracing::info!(key = %resolved.0.id, "using the host's own AWS identity");
        *cache = Some(resolved.clone());
        Ok(resolved.0)
    }
}

/// Runs the default chain once.
async fn resolve() -> Result<(HostCredential, Option<SystemTime>), IdentityError> {
    // ring, as the rest of the host; the SDK's default client would bring aws-lc.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let chain = DefaultCredentialsChain::builder()
        .configure(ProviderConfig::default().with_http_client(http))
        .build()
        .await;
    let credentials = chain.provide_credentials().await.map_err(explain)?;
    Ok((
        HostCredential {
            id: credentials.access_key_id().to_string(),
            secret: Secret::new(credentials.secret_access_key()),
            session_token: credentials.session_token().map(Secret::new),
        },
        credentials.expiry(),
    ))
}

/// The chain's error as one sentence: every source tried when none had
/// credentials, or the failing source's reason. The SDK's messages name files,
/// roles and endpoints, never a secret.
fn explain(err: CredentialsError) -> IdentityError {
    if let CredentialsError::CredentialsNotLoaded(_) = &err {
        let tried = err
            .source()
            .and_then(|s| {
                s.downcast_ref::<aws_config::meta::ProviderChainError<CredentialsError>>()
            })
            .map(|chain| {
                chain
                    .attempts()
                    .iter()
                    .map(|a| format!("{}: {}", a.name(), chain_of(a.error())))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|| chain_of(&err));
        return IdentityError::NotFound {
            tried: crate::text::printable(&tried),
        };
    }
    IdentityError::Failed {
        why: crate::text::printable(&chain_of(&err)),
    }
}

/// An error and its sources, joined.
fn chain_of(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
