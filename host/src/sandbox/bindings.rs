//! The `bindgen!` output for `wit/plugin.wit`, and its conversions to the host's types.

use crate::record::Record;
use crate::record::{StoreField, ValueKind};
use crate::sandbox::http::{self, SendError};
use crate::sandbox::plugin::{
    ConfigItem, CredentialUse, Finalized, ItemType, PluginError, PluginInfo, Rotation, Subject,
};
use crate::secret::Secret;

mod generated {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        // `send` waits on the network, so it is async: the call's timeout can
        // then stop a plugin blocked in it. Exports are async for the same reason.
        imports: {
            "pam:rotation/outbound.send": async | trappable,
            "pam:rotation/tcp": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: { "pam:rotation/tcp.connection": crate::sandbox::tcp::Connection },
    });
}

pub use generated::pam::rotation::{
    holdings as wit_holdings, log as wit_log, outbound as wit_outbound, tcp as wit_tcp,
    types as wit,
};
pub use generated::{Plugin, PluginPre};

impl From<crate::sandbox::tcp::TcpError> for wit_tcp::TcpError {
    fn from(e: crate::sandbox::tcp::TcpError) -> Self {
        use crate::sandbox::tcp::TcpError as E;
        match e {
            E::NotAllowed(s) => Self::DestinationNotAllowed(s),
            E::ConnectFailed(s) => Self::ConnectFailed(s),
            E::TlsFailed(s) => Self::TlsFailed(s),
            E::Timeout(s) => Self::Timeout(s),
            E::ConnectionLost(s) => Self::ConnectionLost(s),
            E::TooMuchData(n) => Self::TooMuchData(n),
        }
    }
}

impl From<wit::PluginInfo> for PluginInfo {
    fn from(i: wit::PluginInfo) -> Self {
        Self {
            name: i.name,
            summary: i.summary,
            version: i.version,
            can_rollback: i.can_rollback,
            allowed_hosts: i.allowed_hosts,
            credential_id_fields: i.credential_id_fields,
        }
    }
}

impl From<wit::Subject> for Subject {
    fn from(s: wit::Subject) -> Self {
        Self {
            service: s.service,
            login: s.login,
            fixed_by_config: s.fixed_by_config,
        }
    }
}

impl From<wit::ItemType> for ItemType {
    fn from(t: wit::ItemType) -> Self {
        match t {
            wit::ItemType::Text => Self::Text,
            wit::ItemType::Multiline => Self::Multiline,
            wit::ItemType::Url => Self::Url,
            wit::ItemType::Int => Self::Int,
            wit::ItemType::Number => Self::Number,
            wit::ItemType::Bool => Self::Bool,
            wit::ItemType::Enum => Self::Enum,
            wit::ItemType::Secret => Self::Secret,
        }
    }
}

impl From<wit::ConfigItem> for ConfigItem {
    fn from(i: wit::ConfigItem) -> Self {
        Self {
            id: i.id,
            label: i.label,
            desc: i.desc,
            is_secret: i.is_secret,
            item_type: i.item_type.into(),
            default_value: i.default_value,
            enum_values: i
                .enum_values
                .into_iter()
                .map(|e| (e.value, e.desc))
                .collect(),
            required: i.required,
        }
    }
}

impl From<wit::ValueKind> for ValueKind {
    fn from(k: wit::ValueKind) -> Self {
        match k {
            wit::ValueKind::Text => Self::Text,
            wit::ValueKind::Secret => Self::Secret,
            wit::ValueKind::Password => Self::Password,
        }
    }
}

impl From<ValueKind> for wit::ValueKind {
    fn from(k: ValueKind) -> Self {
        match k {
            ValueKind::Text => Self::Text,
            ValueKind::Secret => Self::Secret,
            ValueKind::Password => Self::Password,
        }
    }
}

impl From<wit::Rotation> for Rotation {
    fn from(r: wit::Rotation) -> Self {
        Self {
            fields: r.fields.into_iter().map(Into::into).collect(),
            created: r.created,
            retire: r.retire,
            deleted: r.deleted,
            notes: r.notes,
            staged: r.staged,
        }
    }
}

impl From<wit::OutputField> for StoreField {
    fn from(f: wit::OutputField) -> Self {
        Self {
            label: f.label,
            aliases: f.aliases,
            kind: f.kind.into(),
            value: Secret::new(f.value),
        }
    }
}

impl From<&StoreField> for wit::OutputField {
    fn from(f: &StoreField) -> Self {
        Self {
            label: f.label.clone(),
            aliases: f.aliases.clone(),
            kind: f.kind.into(),
            value: f.value.expose().to_string(),
        }
    }
}

impl From<&Rotation> for wit::Rotation {
    fn from(r: &Rotation) -> Self {
        Self {
            fields: r.fields.iter().map(Into::into).collect(),
            created: r.created.clone(),
            retire: r.retire.clone(),
            deleted: r.deleted.clone(),
            notes: r.notes.clone(),
            staged: r.staged,
        }
    }
}

impl From<wit::PluginError> for PluginError {
    fn from(e: wit::PluginError) -> Self {
        match e {
            wit::PluginError::InvalidConfig(m) => Self::InvalidConfig(m),
            wit::PluginError::Denied(m) => Self::Denied(m),
            wit::PluginError::NotFound(m) => Self::NotFound(m),
            wit::PluginError::Conflict(m) => Self::Conflict(m),
            wit::PluginError::Unavailable(m) => Self::Unavailable(m),
            wit::PluginError::Failed(m) => Self::Failed(m),
        }
    }
}

impl From<&Record> for wit::VaultRecord {
    fn from(r: &Record) -> Self {
        Self {
            uid: r.uid.clone(),
            record_type: r.record_type.clone(),
            title: r.title.clone(),
            fields: r
                .fields
                .iter()
                .map(|f| wit::Field {
                    kind: f.kind.clone(),
                    label: f.label.clone(),
                    values: f.values.iter().map(|v| v.expose().to_string()).collect(),
                })
                .collect(),
        }
    }
}

impl From<wit_outbound::Request> for http::Request {
    fn from(r: wit_outbound::Request) -> Self {
        Self {
            method: r.method,
            url: r.url,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<http::Response> for wit_outbound::Response {
    fn from(r: http::Response) -> Self {
        Self {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<SendError> for wit_outbound::SendError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::DestinationNotAllowed(m) => Self::DestinationNotAllowed(m),
            SendError::InvalidRequest(m) => Self::InvalidRequest(m),
            SendError::ConnectFailed(m) => Self::ConnectFailed(m),
            SendError::TlsFailed(m) => Self::TlsFailed(m),
            SendError::Timeout(m) => Self::Timeout(m),
            SendError::ConnectionLost(m) => Self::ConnectionLost(m),
            SendError::ResponseTooLarge(n) => Self::ResponseTooLarge(n),
        }
    }
}

/// The WIT context of one call, which must end within `deadline`.
pub fn context(c: &crate::sandbox::plugin::Context, deadline: std::time::Duration) -> wit::Context {
    wit::Context {
        user: (&c.user).into(),
        config: (&c.config).into(),
        provider: c.provider.as_ref().map(Into::into),
        dry_run: c.dry_run,
        deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        host_credential: c.host_credential.as_ref().map(|h| wit::HostCredential {
            id: h.id.clone(),
            secret: h.secret.expose().to_string(),
            session_token: h.session_token.as_ref().map(|t| t.expose().to_string()),
        }),
        deactivated: c
            .deactivated
            .iter()
            .map(|d| wit::DeactivatedCredential {
                id: d.id.clone(),
                since: d.since.clone(),
                kept: d.kept,
                expired: d.expired,
            })
            .collect(),
        staged: c.staged.iter().map(Into::into).collect(),
    }
}

impl From<wit::Finalized> for Finalized {
    fn from(f: wit::Finalized) -> Self {
        Self {
            retired: f.retired,
            deactivated: f.deactivated,
            kept: f.kept,
            notes: f.notes,
        }
    }
}

impl From<wit::CredentialUse> for CredentialUse {
    fn from(u: wit::CredentialUse) -> Self {
        Self {
            id: u.id,
            found: u.found,
            last_used: u.last_used,
            service: u.service,
            region: u.region,
        }
    }
}
