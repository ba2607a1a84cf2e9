//! The wit-bindgen glue: converts between the generated types and the plugin's own.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime};

use crate::model::{
    Context, CredentialUse, Deactivated, Field, Finalized, HostCredential, OutputField, Record,
    Rotation, Subject, ValueKind,
};
use crate::schema::{ConfigItem, ItemType, SCHEMA};
use crate::secret::Secret;
use crate::transport::{HttpRequest, HttpResponse, Level, SendError, Transport};
use crate::{endpoints, error::PluginError, rotation, settings};

mod bindings {
    wit_bindgen::generate!({ world: "plugin", path: "../../wit" });
}

use bindings::Guest;
use bindings::pam::rotation::{holdings, log, outbound, types as wit};

struct Plugin;

impl Guest for Plugin {
    fn info() -> wit::PluginInfo {
        wit::PluginInfo {
            name: crate::NAME.into(),
            summary: crate::SUMMARY.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            can_rollback: false,
            allowed_hosts: endpoints::ALLOWED_HOSTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            credential_id_fields: settings::CREDENTIAL_ID_FIELDS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    fn subject(ctx: wit::Context) -> Result<wit::Subject, wit::PluginError> {
        settings::subject(&ctx.into())
            .map(|s: Subject| wit::Subject {
                service: s.service,
                login: s.login,
                fixed_by_config: s.fixed_by_config,
            })
            .map_err(Into::into)
    }

    fn config_schema() -> Vec<wit::ConfigItem> {
        SCHEMA.iter().map(Into::into).collect()
    }

    fn rotate(ctx: wit::Context) -> Result<wit::Rotation, wit::PluginError> {
        rotation::rotate(&Host::new(), &ctx.into())
            .map(Into::into)
            .map_err(Into::into)
    }

    fn finalize(
        ctx: wit::Context,
        done: wit::Rotation,
    ) -> Result<wit::Finalized, wit::PluginError> {
        rotation::finalize(&Host::new(), &ctx.into(), &done.into())
            .map(Into::into)
            .map_err(Into::into)
    }

    fn purge(ctx: wit::Context) -> Result<wit::Finalized, wit::PluginError> {
        rotation::purge(&Host::new(), &ctx.into())
            .map(Into::into)
            .map_err(Into::into)
    }

    fn last_used(ctx: wit::Context) -> Result<Vec<wit::CredentialUse>, wit::PluginError> {
        rotation::last_used(&Host::new(), &ctx.into())
            .map(|uses| {
                uses.into_iter()
                    .map(|u: CredentialUse| wit::CredentialUse {
                        id: u.id,
                        found: u.found,
                        last_used: u.last_used,
                        service: u.service,
                        region: u.region,
                    })
                    .collect()
            })
            .map_err(Into::into)
    }

    fn rollback(ctx: wit::Context, done: wit::Rotation) -> Result<(), wit::PluginError> {
        rotation::rollback(&Host::new(), &ctx.into(), &done.into()).map_err(Into::into)
    }
}

bindings::export!(Plugin with_types_in bindings);

/// The host's imports as a `Transport`.
struct Host {
    started: Instant,
}

impl Host {
    fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }
}

impl Transport for Host {
    fn send(&self, r: &HttpRequest) -> Result<HttpResponse, SendError> {
        let request = outbound::Request {
            method: r.method.clone(),
            url: r.url.clone(),
            headers: r.headers.clone(),
            body: r.body.clone(),
        };
        outbound::send(&request)
            .map(|resp| HttpResponse {
                status: resp.status,
                body: resp.body,
            })
            .map_err(|e| match e {
                outbound::SendError::DestinationNotAllowed(m) => {
                    SendError::DestinationNotAllowed(m)
                }
                outbound::SendError::InvalidRequest(m) => SendError::InvalidRequest(m),
                outbound::SendError::ConnectFailed(m) => SendError::ConnectFailed(m),
                outbound::SendError::TlsFailed(m) => SendError::TlsFailed(m),
                outbound::SendError::Timeout(m) => SendError::Timeout(m),
                outbound::SendError::ConnectionLost(m) => SendError::ConnectionLost(m),
                outbound::SendError::ResponseTooLarge(n) => SendError::ResponseTooLarge(n),
            })
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }

    fn held_elsewhere(&self, id: &str) -> bool {
        holdings::held_elsewhere(id)
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn random(&self) -> u64 {
        // std seeds RandomState from wasi:random; no extra crate needed for jitter.
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    }
}

impl From<wit::Field> for Field {
    fn from(f: wit::Field) -> Self {
        Self {
            kind: f.kind,
            label: f.label,
            values: f.values,
        }
    }
}

impl From<wit::VaultRecord> for Record {
    fn from(r: wit::VaultRecord) -> Self {
        Self {
            uid: r.uid,
            record_type: r.record_type,
            title: r.title,
            fields: r.fields.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<wit::Context> for Context {
    fn from(c: wit::Context) -> Self {
        Self {
            user: c.user.into(),
            config: c.config.into(),
            provider: c.provider.map(Into::into),
            dry_run: c.dry_run,
            deadline: Some(Duration::from_millis(c.deadline_ms)),
            host_credential: c.host_credential.map(|h| HostCredential {
                id: h.id,
                secret: Secret::new(h.secret),
                session_token: h.session_token.map(Secret::new),
            }),
            deactivated: c
                .deactivated
                .into_iter()
                .map(|d| Deactivated {
                    id: d.id,
                    since: d.since,
                    kept: d.kept,
                    expired: d.expired,
                })
                .collect(),
        }
    }
}

impl From<Finalized> for wit::Finalized {
    fn from(f: Finalized) -> Self {
        Self {
            retired: f.retired,
            deactivated: f.deactivated,
            kept: f.kept,
            notes: f.notes,
        }
    }
}

impl From<wit::Rotation> for Rotation {
    fn from(r: wit::Rotation) -> Self {
        Self {
            fields: r
                .fields
                .into_iter()
                .map(|f| OutputField {
                    label: f.label,
                    aliases: f.aliases,
                    kind: match f.kind {
                        wit::ValueKind::Text => ValueKind::Text,
                        // The AWS plugin stores no password: its own
                        // rotations come back as it gave them.
                        wit::ValueKind::Secret | wit::ValueKind::Password => ValueKind::Secret,
                    },
                    value: Secret::new(f.value),
                })
                .collect(),
            created: r.created,
            retire: r.retire,
            deleted: r.deleted,
            notes: r.notes,
        }
    }
}

impl From<Rotation> for wit::Rotation {
    fn from(r: Rotation) -> Self {
        Self {
            fields: r
                .fields
                .into_iter()
                .map(|f| wit::OutputField {
                    label: f.label,
                    aliases: f.aliases,
                    kind: match f.kind {
                        ValueKind::Text => wit::ValueKind::Text,
                        ValueKind::Secret => wit::ValueKind::Secret,
                    },
                    value: f.value.expose().to_string(),
                })
                .collect(),
            created: r.created,
            retire: r.retire,
            deleted: r.deleted,
            notes: r.notes,
            staged: false,
        }
    }
}

impl From<PluginError> for wit::PluginError {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::InvalidConfig(m) => Self::InvalidConfig(m),
            PluginError::Denied(m) => Self::Denied(m),
            PluginError::NotFound(m) => Self::NotFound(m),
            PluginError::Conflict(m) => Self::Conflict(m),
            PluginError::Unavailable(m) => Self::Unavailable(m),
            PluginError::Failed(m) => Self::Failed(m),
        }
    }
}

impl From<&ConfigItem> for wit::ConfigItem {
    fn from(i: &ConfigItem) -> Self {
        Self {
            id: i.id.into(),
            label: i.label.into(),
            desc: i.desc.into(),
            is_secret: i.is_secret,
            item_type: match i.item_type {
                ItemType::Text => wit::ItemType::Text,
                ItemType::Multiline => wit::ItemType::Multiline,
                ItemType::Url => wit::ItemType::Url,
                ItemType::Int => wit::ItemType::Int,
                ItemType::Number => wit::ItemType::Number,
                ItemType::Bool => wit::ItemType::Bool,
                ItemType::Enum => wit::ItemType::Enum,
                ItemType::Secret => wit::ItemType::Secret,
            },
            default_value: i.default_value.map(Into::into),
            enum_values: i
                .enum_values
                .iter()
                .map(|(value, desc)| wit::EnumValue {
                    value: value.to_string(),
                    desc: desc.to_string(),
                })
                .collect(),
            required: i.required,
        }
    }
}
