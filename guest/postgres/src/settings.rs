//! The records a rotation reads, turned into settings: the server and TLS
//! from the config record, the role and its password from the PAM user
//! record, the admin login (or none: the role changes its own password), and
//! the password policy. Reads only.

use crate::policy::Policy;
use crate::{Failure, Kind, Secret};

pub const SERVER: &str = "PostgreSQL Server";
pub const DATABASE: &str = "Database";
pub const TLS: &str = "TLS";
pub const ADMIN_LOGIN: &str = "Admin Login";
pub const ADMIN_PASSWORD: &str = "Admin Password";
pub const COMPLEXITY: &str = "Password Complexity";
pub const SPECIALS: &str = "Special Characters";
pub const EXCLUDED: &str = "Excluded Characters";

/// The label the new password is stored under: the PAM user record's
/// standard `password` field (unlabelled, of type `password`).
pub const PASSWORD_FIELD: &str = "password";

/// One record field as the plugin reads it: its type, label and first value.
#[derive(Debug, Clone)]
pub struct Field {
    pub kind: String,
    pub label: Option<String>,
    pub value: Secret,
}

/// Who logs in to change the password.
#[derive(Debug, Clone)]
pub enum Changer {
    /// An admin role from the config record, with CREATEROLE (and, from
    /// PostgreSQL 16, ADMIN OPTION on the role).
    Admin { login: String, password: Secret },
    /// The role itself, with its current password: any role may change its own.
    Itself,
}

/// Everything a rotation needs, read from the records.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    /// TLS inside PostgreSQL's protocol, the certificate checked by the host.
    pub tls: bool,
    pub database: String,
    pub changer: Changer,
    /// The role whose password rotates (the user record's `login`).
    pub role: String,
    /// Its password as the vault records it (none before the first rotation).
    pub current: Option<Secret>,
    pub policy: Policy,
}

fn labelled<'a>(fields: &'a [Field], label: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| {
            f.label
                .as_deref()
                .is_some_and(|l| l.trim().eq_ignore_ascii_case(label))
        })
        .map(|f| f.value.expose().trim())
        .filter(|v| !v.is_empty())
}

fn of_type<'a>(fields: &'a [Field], kind: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| {
            f.kind.eq_ignore_ascii_case(kind)
                && f.label
                    .as_deref()
                    .is_none_or(|l| l.trim().is_empty() || l.trim().eq_ignore_ascii_case(kind))
        })
        .map(|f| f.value.expose())
        .filter(|v| !v.trim().is_empty())
}

fn invalid(message: String) -> Failure {
    Failure::new(Kind::InvalidConfig, message)
}

/// `tcp://host:port`: the only form, so the host's allowlist names exactly
/// what the plugin connects to.
fn server(value: &str) -> Result<(String, u16), Failure> {
    let bad = || {
        invalid(format!(
            "config field '{SERVER}' is '{}', not tcp://HOST:PORT (for example tcp://db.example.com:5432)",
            value.escape_debug()
        ))
    };
    let rest = value.strip_prefix("tcp://").ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    if !valid {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Whether `host` is this machine: the only place plain TCP is allowed.
fn loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A role name as PostgreSQL takes it: 1 to 63 bytes, no NUL or controls.
fn role(value: &str) -> Result<String, Failure> {
    if value.is_empty() || value.len() > 63 || value.chars().any(char::is_control) {
        return Err(invalid(format!(
            "the user record's login '{}' is not a PostgreSQL role name (1 to 63 bytes, no control characters)",
            value.escape_debug()
        )));
    }
    Ok(value.to_string())
}

impl Settings {
    /// Reads the user and config records' fields. Every problem is
    /// `invalid-config` and names the field.
    pub fn resolve(user: &[Field], config: &[Field]) -> Result<Self, Failure> {
        let (host, port) = server(labelled(config, SERVER).ok_or_else(|| {
            invalid(format!(
                "config field '{SERVER}' is missing: set it to tcp://HOST:PORT"
            ))
        })?)?;
        let tls = match labelled(config, TLS)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("verify") => true,
            Some("disable") => false,
            Some(other) => {
                return Err(invalid(format!(
                    "config field '{TLS}' is '{}': use 'verify' (the default) or 'disable'",
                    other.escape_debug()
                )));
            }
        };
        if !tls && !loopback(&host) {
            return Err(invalid(format!(
                "config field '{TLS}' is 'disable' for {host}, which is not this machine: without TLS \
                 anyone on the path sees the SCRAM verifier and the logins, and can forge the proof. \
                 Plain TCP is only for 127.0.0.1, ::1 or localhost"
            )));
        }
        let changer = match (
            labelled(config, ADMIN_LOGIN),
            labelled(config, ADMIN_PASSWORD),
        ) {
            (Some(login), Some(password)) => Changer::Admin {
                login: role(login)?,
                password: Secret::new(password),
            },
            (None, None) => Changer::Itself,
            _ => {
                return Err(invalid(format!(
                    "config fields '{ADMIN_LOGIN}' and '{ADMIN_PASSWORD}' go together: set both, or neither for a role that changes its own password"
                )));
            }
        };
        let login = of_type(user, "login").ok_or_else(|| {
            invalid("the user record has no login: set it to the role's name".into())
        })?;
        let current = of_type(user, "password").map(Secret::new);
        if matches!(changer, Changer::Itself) && current.is_none() {
            return Err(invalid(format!(
                "the user record has no password, and the config names no '{ADMIN_LOGIN}': a role can change only its own password, which needs the current one"
            )));
        }
        let policy = Policy::parse(
            labelled(config, COMPLEXITY),
            labelled(config, SPECIALS),
            labelled(config, EXCLUDED),
        )
        .map_err(invalid)?;
        Ok(Self {
            host,
            port,
            tls,
            database: labelled(config, DATABASE).unwrap_or("postgres").to_string(),
            changer,
            role: role(login.trim())?,
            current,
            policy,
        })
    }

    /// The server as the subject names it.
    pub fn service(&self) -> String {
        format!("postgresql://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: &str, label: &str, value: &str) -> Field {
        Field {
            kind: kind.into(),
            label: (!label.is_empty()).then(|| label.into()),
            value: Secret::new(value),
        }
    }

    fn user() -> Vec<Field> {
        vec![f("login", "", "app"), f("password", "", "old-pass")]
    }

    #[test]
    fn a_config_without_admin_lets_the_role_change_its_own_password() {
        let s =
            Settings::resolve(&user(), &[f("url", SERVER, "tcp://DB.example.com:5433")]).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls),
            ("db.example.com", 5433, true)
        );
        assert!(matches!(s.changer, Changer::Itself));
        assert_eq!(s.role, "app");
        assert_eq!(s.database, "postgres");
        assert_eq!(s.service(), "postgresql://db.example.com:5433");
    }

    #[test]
    fn plain_tcp_is_for_this_machine_only() {
        for host in ["127.0.0.1", "127.1.2.3", "[::1]", "localhost"] {
            let config = [
                f("url", SERVER, &format!("tcp://{host}:5432")),
                f("text", TLS, "disable"),
            ];
            assert!(!Settings::resolve(&user(), &config).unwrap().tls, "{host}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(Vec<Field>, Vec<Field>, &str)> = vec![
            (user(), vec![], SERVER),
            (user(), vec![f("url", SERVER, "postgres://db:5432")], SERVER),
            (user(), vec![f("url", SERVER, "tcp://db:0")], SERVER),
            (user(), vec![f("url", SERVER, "tcp://db;rm:5432")], SERVER),
            (
                user(),
                vec![f("url", SERVER, "tcp://db:5432"), f("text", TLS, "prefer")],
                TLS,
            ),
            (
                user(),
                vec![f("url", SERVER, "tcp://db:5432"), f("text", TLS, "disable")],
                "not this machine",
            ),
            (
                user(),
                vec![
                    f("url", SERVER, "tcp://db:5432"),
                    f("text", ADMIN_LOGIN, "admin"),
                ],
                ADMIN_PASSWORD,
            ),
            (
                vec![f("password", "", "x")],
                vec![f("url", SERVER, "tcp://db:5432")],
                "login",
            ),
            (
                vec![f("login", "", "app")],
                vec![f("url", SERVER, "tcp://db:5432")],
                "no password",
            ),
            (
                vec![f("login", "", "a\u{0}b"), f("password", "", "x")],
                vec![f("url", SERVER, "tcp://db:5432")],
                "role name",
            ),
            (
                user(),
                vec![
                    f("url", SERVER, "tcp://db:5432"),
                    f("text", COMPLEXITY, "4,1,1,1,1"),
                ],
                COMPLEXITY,
            ),
        ];
        for (u, c, named) in cases {
            let e = Settings::resolve(&u, &c).unwrap_err();
            assert_eq!(e.kind, Kind::InvalidConfig);
            assert!(e.message.contains(named), "{named}: {}", e.message);
            assert!(!e.message.contains("old-pass"));
        }
    }
}
