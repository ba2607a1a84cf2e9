//! The wit-bindgen glue: the WIT types in and out, and the host's `tcp`
//! import as the `Network` the flow runs on.

use crate::policy::{DEFAULT_COMPLEXITY, DEFAULT_SPECIALS};
use crate::settings::{self as names, Field, PASSWORD_FIELD, Settings};
use crate::wire::{NetError, Network, Stream};
use crate::{Failure, Kind, Secret, rotation};

mod bindings {
    wit_bindgen::generate!({ world: "plugin", path: "../../wit" });
}

use bindings::Guest;
use bindings::pam::rotation::{log, tcp, types as wit};

struct Plugin;

impl From<Failure> for wit::PluginError {
    fn from(f: Failure) -> Self {
        let m = f.message;
        match f.kind {
            Kind::InvalidConfig => Self::InvalidConfig(m),
            Kind::Denied => Self::Denied(m),
            Kind::NotFound => Self::NotFound(m),
            Kind::Conflict => Self::Conflict(m),
            Kind::Unavailable => Self::Unavailable(m),
            Kind::Failed => Self::Failed(m),
        }
    }
}

fn fields(r: &wit::VaultRecord) -> Vec<Field> {
    r.fields
        .iter()
        .map(|f| Field {
            kind: f.kind.clone(),
            label: f.label.clone(),
            value: Secret::new(f.values.first().cloned().unwrap_or_default()),
        })
        .collect()
}

fn settings(ctx: &wit::Context) -> Result<Settings, wit::PluginError> {
    Settings::resolve(&fields(&ctx.user), &fields(&ctx.config)).map_err(Into::into)
}

/// The password among `list`, as `rotate` returned or the host staged it.
fn password(list: &[wit::OutputField]) -> Option<Secret> {
    list.iter()
        .find(|f| f.kind == wit::ValueKind::Password && !f.value.is_empty())
        .map(|f| Secret::new(f.value.clone()))
}

fn item(
    label: &str,
    desc: &str,
    item_type: wit::ItemType,
    default: Option<&str>,
    required: bool,
) -> wit::ConfigItem {
    wit::ConfigItem {
        id: label.to_ascii_lowercase().replace(' ', "_"),
        label: label.into(),
        desc: desc.into(),
        is_secret: item_type == wit::ItemType::Secret,
        item_type,
        default_value: default.map(Into::into),
        enum_values: vec![],
        required,
    }
}

impl Guest for Plugin {
    fn info() -> wit::PluginInfo {
        wit::PluginInfo {
            name: crate::NAME.into(),
            summary: crate::SUMMARY.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            can_rollback: false,
            // Only the config's own `tcp://` server, which the host allows.
            allowed_hosts: vec![],
            // A password has no id another record could hold.
            credential_id_fields: vec![],
        }
    }

    fn config_schema() -> Vec<wit::ConfigItem> {
        use wit::ItemType::{Secret as S, Text as T, Url as U};
        let mut tls = item(
            names::TLS,
            "verify: TLS with the certificate checked by the host (--ca-file); disable: plain TCP, only on a trusted network",
            wit::ItemType::Enum,
            Some("verify"),
            false,
        );
        tls.enum_values = ["verify", "disable"]
            .map(|v| wit::EnumValue {
                value: v.into(),
                desc: String::new(),
            })
            .into();
        vec![
            item(
                names::SERVER,
                "tcp://HOST:PORT of the server",
                U,
                None,
                true,
            ),
            item(
                names::DATABASE,
                "The database to log in to",
                T,
                Some("postgres"),
                false,
            ),
            tls,
            item(
                names::ADMIN_LOGIN,
                "A role with CREATEROLE (and ADMIN OPTION on the rotated role from PostgreSQL 16); empty: each role changes its own password",
                T,
                None,
                false,
            ),
            item(
                names::ADMIN_PASSWORD,
                "The admin role's password",
                S,
                None,
                false,
            ),
            item(
                names::COMPLEXITY,
                "LENGTH,UPPER,LOWER,DIGITS,SPECIAL: the length and the least of each class",
                T,
                Some(DEFAULT_COMPLEXITY),
                false,
            ),
            item(
                names::SPECIALS,
                "The special characters a password may hold",
                T,
                Some(DEFAULT_SPECIALS),
                false,
            ),
            item(
                names::EXCLUDED,
                "Characters a password never holds",
                T,
                None,
                false,
            ),
        ]
    }

    fn subject(ctx: wit::Context) -> Result<wit::Subject, wit::PluginError> {
        let s = settings(&ctx)?;
        Ok(wit::Subject {
            service: s.service(),
            login: s.role,
            fixed_by_config: false,
        })
    }

    fn rotate(ctx: wit::Context) -> Result<wit::Rotation, wit::PluginError> {
        let s = settings(&ctx)?;
        let mut fill = |b: &mut [u8]| getrandom::fill(b).expect("wasi:random answers");
        let done = rotation::rotate(&Host, &s, password(&ctx.staged), ctx.dry_run, &mut fill)?;
        let fields = done.password.map(|p| wit::OutputField {
            label: PASSWORD_FIELD.into(),
            aliases: vec![],
            kind: wit::ValueKind::Password,
            value: p.expose().into(),
        });
        Ok(wit::Rotation {
            staged: fields.is_some(),
            fields: fields.into_iter().collect(),
            created: None,
            retire: vec![],
            deleted: vec![],
            notes: done.notes,
        })
    }

    fn finalize(
        ctx: wit::Context,
        done: wit::Rotation,
    ) -> Result<wit::Finalized, wit::PluginError> {
        let s = settings(&ctx)?;
        let new = password(&done.fields).ok_or_else(|| {
            wit::PluginError::Failed("finalize was given no password to set".into())
        })?;
        let notes = rotation::finalize(&Host, &s, &new)?;
        log::log(
            log::Level::Info,
            &format!(
                "role '{}' at {}: new password set and proved",
                s.role.escape_debug(),
                s.service()
            ),
        );
        Ok(wit::Finalized {
            retired: vec![],
            deactivated: vec![],
            kept: vec![],
            notes,
        })
    }

    /// Nothing to undo: `rotate` set nothing at the server.
    fn rollback(_: wit::Context, _: wit::Rotation) -> Result<(), wit::PluginError> {
        Ok(())
    }

    /// A password leaves nothing deactivated to delete.
    fn purge(_: wit::Context) -> Result<wit::Finalized, wit::PluginError> {
        Ok(wit::Finalized {
            retired: vec![],
            deactivated: vec![],
            kept: vec![],
            notes: vec![],
        })
    }

    fn last_used(_: wit::Context) -> Result<Vec<wit::CredentialUse>, wit::PluginError> {
        Ok(vec![])
    }
}

bindings::export!(Plugin with_types_in bindings);

/// The host's `tcp` import.
struct Host;

impl From<tcp::TcpError> for NetError {
    fn from(e: tcp::TcpError) -> Self {
        match e {
            tcp::TcpError::DestinationNotAllowed(m) => Self::NotAllowed(m),
            tcp::TcpError::ConnectFailed(m) => Self::Connect(m),
            tcp::TcpError::TlsFailed(m) => Self::Tls(m),
            tcp::TcpError::Timeout(m) => Self::Timeout(m),
            tcp::TcpError::ConnectionLost(m) => Self::Lost(m),
            tcp::TcpError::TooMuchData(n) => Self::TooMuch(n),
        }
    }
}

impl Stream for tcp::Connection {
    fn send(&mut self, data: &[u8]) -> Result<(), NetError> {
        tcp::Connection::send(self, data).map_err(Into::into)
    }

    fn receive(&mut self, max: u32) -> Result<Vec<u8>, NetError> {
        tcp::Connection::receive(self, max).map_err(Into::into)
    }

    fn start_tls(&mut self) -> Result<(), NetError> {
        tcp::Connection::start_tls(self).map_err(Into::into)
    }
}

impl Network for Host {
    type Stream = tcp::Connection;

    fn connect(&self, host: &str, port: u16) -> Result<tcp::Connection, NetError> {
        tcp::connect(host, port).map_err(Into::into)
    }
}
