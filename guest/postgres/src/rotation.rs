//! The flow: `rotate` checks the role and makes the new password (changing
//! nothing), `finalize` sets it with a SCRAM-SHA-256 verifier and proves that
//! it logs in and the old one does not. Both are safe to run again with the
//! same staged password after a crash (design §13).

use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::settings::{Changer, Settings};
use crate::wire::{Login, NetError, Network, PgError, Session};
use crate::{Failure, Kind, Secret};

/// What `rotate` decided.
pub struct Rotated {
    /// The password to stage: none on a dry run.
    pub password: Option<Secret>,
    pub notes: Vec<String>,
}

/// The plugin's words for a session's failure, with what to do next.
fn failure(what: &str, s: &Settings, e: PgError) -> Failure {
    let at = s.service();
    match e {
        PgError::Net(NetError::NotAllowed(m)) => Failure::new(
            Kind::InvalidConfig,
            format!("{what}: {at} is not allowed ({m})"),
        ),
        PgError::Net(NetError::Tls(m)) => Failure::new(
            Kind::Failed,
            format!(
                "{what}: TLS to {at} failed ({m}): give the host the server's CA with --ca-file, or set '{}' to 'disable' on a trusted network",
                crate::settings::TLS
            ),
        ),
        PgError::Net(
            e @ (NetError::Connect(_)
            | NetError::Timeout(_)
            | NetError::Lost(_)
            | NetError::TooMuch(_)),
        ) => Failure::new(
            Kind::Unavailable,
            format!("{what}: {at}: {}; try again later", net_words(&e)),
        ),
        PgError::NoTls => Failure::new(
            Kind::Failed,
            format!(
                "{what}: {at} does not offer TLS: turn on ssl in postgresql.conf, or set '{}' to 'disable' on a trusted network",
                crate::settings::TLS
            ),
        ),
        PgError::Method(m) => Failure::new(
            Kind::Failed,
            format!(
                "{what}: {at} asked for '{m}' authentication; this plugin logs in with scram-sha-256 only: use scram-sha-256 in pg_hba.conf (and password_encryption)"
            ),
        ),
        PgError::NoPasswordCheck => Failure::new(
            Kind::Conflict,
            format!(
                "{what}: {at} let the login in without a password check (trust in pg_hba.conf), so a password proves nothing: use scram-sha-256 for it"
            ),
        ),
        PgError::Protocol(m) => Failure::new(
            Kind::Failed,
            format!("{what}: {at} broke the protocol ({m})"),
        ),
        PgError::Server { code, message } => {
            // A server (or whatever answers for it) may quote the statement.
            let message = if message.contains("SCRAM-SHA-256$") {
                "(its words quoted the password verifier, so they are withheld)".to_string()
            } else {
                message
            };
            let kind = match code.as_str() {
                "28P01" | "28000" | "42501" => Kind::Denied,
                "42704" => Kind::NotFound,
                "3D000" => Kind::InvalidConfig,
                c if c.starts_with("53") || c.starts_with("57") || c.starts_with("08") => {
                    Kind::Unavailable
                }
                _ => Kind::Failed,
            };
            Failure::new(kind, format!("{what}: {at} answered {code}: {message}"))
        }
    }
}

/// A network failure in plain words.
fn net_words(e: &NetError) -> String {
    match e {
        NetError::NotAllowed(m) | NetError::Tls(m) => m.clone(),
        NetError::Connect(m) => format!("could not connect ({m})"),
        NetError::Timeout(m) => format!("no answer in time ({m})"),
        NetError::Lost(m) => format!("the connection broke ({m})"),
        NetError::TooMuch(n) => format!("the server sent more than the host's cap of {n} bytes"),
    }
}

fn login<'a>(s: &'a Settings, user: &'a str, password: &'a Secret) -> Login<'a> {
    Login {
        host: &s.host,
        port: s.port,
        tls: s.tls,
        database: &s.database,
        user,
        password,
    }
}

/// Logs in as whoever changes the password. Itself: with the vault's
/// password, or, when the server refuses it, with `staged` (an earlier run
/// set it). Returns the session and whether `staged` is already set.
fn changer<N: Network>(
    net: &N,
    s: &Settings,
    staged: Option<&Secret>,
) -> Result<(Session<N::Stream>, bool), Failure> {
    match &s.changer {
        Changer::Admin {
            login: user,
            password,
        } => Session::open(net, &login(s, user, password))
            .map(|x| (x, false))
            .map_err(|e| failure(&format!("logging in as admin role '{user}'"), s, e)),
        Changer::Itself => {
            let current = s.current.as_ref().expect("settings require it");
            match Session::open(net, &login(s, &s.role, current)) {
                Ok(x) => Ok((x, false)),
                Err(PgError::Server { code, .. }) if code == "28P01" && staged.is_some() => {
                    match Session::open(net, &login(s, &s.role, staged.expect("checked"))) {
                        Ok(x) => Ok((x, true)),
                        Err(PgError::Server { code, .. }) if code == "28P01" => Err(Failure::new(
                            Kind::Denied,
                            format!(
                                "neither the vault's password nor the staged one logs in as role '{}' at {}: someone changed it at the server. Set the record's password to the role's current one, delete the record's 'Rotation Staged' field, then run again",
                                s.role,
                                s.service()
                            ),
                        )),
                        Err(e) => Err(failure(
                            &format!("logging in as role '{}' with the staged password", s.role),
                            s,
                            e,
                        )),
                    }
                }
                Err(e) => Err(failure(
                    &format!("logging in as role '{}' with the vault's password", s.role),
                    s,
                    e,
                )),
            }
        }
    }
}

/// Checks that the role exists, may log in, proves its password and is one
/// this config may rotate, then makes a password to the policy with `fill`
/// (WASI random). Changes nothing. With `staged`, an earlier run's password,
/// it hands that back, so the run finishes it.
pub fn rotate<N: Network>(
    net: &N,
    s: &Settings,
    staged: Option<Secret>,
    dry_run: bool,
    fill: &mut dyn FnMut(&mut [u8]),
) -> Result<Rotated, Failure> {
    if let Some(p) = staged {
        let note = format!(
            "finishing the rotation of role '{}' that an earlier run staged",
            s.role
        );
        return Ok(Rotated {
            password: (!dry_run).then_some(p),
            notes: vec![note],
        });
    }
    let (mut session, _) = changer(net, s, None)?;
    check_role(&mut session, s)?;
    drop(session);
    let notes = check_login(net, s)?;
    if dry_run {
        let note = format!(
            "would set a new {}-character password for role '{}' at {}: staged in the vault first, then set with a SCRAM-SHA-256 verifier, then made live",
            s.policy.length(),
            s.role,
            s.service()
        );
        return Ok(Rotated {
            password: None,
            notes: [notes, vec![note]].concat(),
        });
    }
    Ok(Rotated {
        password: Some(Secret::new(s.policy.generate(fill))),
        notes,
    })
}

fn conflict(s: &Settings, why: &str) -> Failure {
    Failure::new(
        Kind::Conflict,
        format!(
            "role '{}' at {} {why}; nothing was changed",
            s.role,
            s.service()
        ),
    )
}

/// The role exists and may log in, its password has not expired, and an
/// admin config touches no privileged role (nor the admin itself): else a
/// user record's editor could name one and read its new password.
fn check_role<S: crate::wire::Stream>(
    session: &mut Session<S>,
    s: &Settings,
) -> Result<(), Failure> {
    // Privileged: by its own attributes, or through membership (at any depth)
    // of a role that is, or of a role that reaches the server's files or programs.
    let sql = format!(
        "SELECT r.rolcanlogin, r.rolsuper OR r.rolcreaterole OR r.rolbypassrls OR r.rolreplication \
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles p WHERE p.oid <> r.oid \
         AND (p.rolsuper OR p.rolcreaterole OR p.rolbypassrls OR p.rolreplication \
         OR p.rolname IN ('pg_execute_server_program', 'pg_write_server_files', 'pg_read_server_files')) \
         AND pg_catalog.pg_has_role(r.oid, p.oid, 'MEMBER')), \
         coalesce(r.rolvaliduntil < now(), false) FROM pg_catalog.pg_roles r WHERE r.rolname = {}",
        escape_literal(&s.role)
    );
    let rows = session
        .query(&sql)
        .map_err(|e| failure("looking up the role", s, e))?;
    let Some(row) = rows.first() else {
        return Err(Failure::new(
            Kind::NotFound,
            format!(
                "role '{}' does not exist at {}: check the user record's login",
                s.role,
                s.service()
            ),
        ));
    };
    let yes = |i: usize| row.get(i).cloned().flatten().as_deref() == Some("t");
    if !yes(0) {
        return Err(conflict(
            s,
            "cannot log in (NOLOGIN), so a new password could not be proved",
        ));
    }
    if yes(2) {
        return Err(conflict(
            s,
            "has a password past its VALID UNTIL: extend it (ALTER ROLE ... VALID UNTIL) first",
        ));
    }
    if let Changer::Admin { login, .. } = &s.changer {
        if login == &s.role {
            return Err(conflict(
                s,
                "is the config's own admin role: rotate it with a config of its own and no admin",
            ));
        }
        if yes(1) {
            return Err(conflict(
                s,
                "is privileged (SUPERUSER, CREATEROLE, BYPASSRLS or REPLICATION, or a member of such a role or of pg_execute_server_program, pg_write_server_files or pg_read_server_files): an admin config does not rotate such roles; rotate it with a config of its own and no admin",
            ));
        }
    }
    Ok(())
}

/// With an admin, the role's own login with the vault's password: the
/// server must check it with SCRAM (a `trust` rule would let the new
/// password prove nothing). A vault password that no longer works is noted:
/// the rotation mends it.
fn check_login<N: Network>(net: &N, s: &Settings) -> Result<Vec<String>, Failure> {
    let (Changer::Admin { .. }, Some(current)) = (&s.changer, &s.current) else {
        return Ok(vec![]);
    };
    match Session::open(net, &login(s, &s.role, current)) {
        Ok(_) => Ok(vec![]),
        Err(PgError::Server { code, .. }) if code == "28P01" => Ok(vec![format!(
            "the vault's password for role '{}' does not log in now; the new one replaces it",
            s.role
        )]),
        Err(e) => Err(failure(
            &format!("logging in as role '{}' with the vault's password", s.role),
            s,
            e,
        )),
    }
}

/// Sets `new` as the role's password (unless an earlier run did), then
/// proves it: the new password logs in, with a password check, and the
/// vault's old one no longer does.
pub fn finalize<N: Network>(net: &N, s: &Settings, new: &Secret) -> Result<Vec<String>, Failure> {
    let (mut session, already) = changer(net, s, Some(new))?;
    if !already {
        // Again, here: a staged value skipped `rotate`'s checks, and the
        // record (its login) may have been edited since.
        check_role(&mut session, s)?;
        set_password(session, s, new)?;
    }
    prove_new(net, s, new)?;
    let mut notes = vec![format!(
        "role '{}' at {}: the new password logs in",
        s.role,
        s.service()
    )];
    if let Some(old) = s.current.as_ref().filter(|old| *old != new) {
        notes.push(prove_old_gone(net, s, old)?);
    }
    Ok(notes)
}

/// `ALTER ROLE ... PASSWORD` with a SCRAM-SHA-256 verifier: the server never
/// sees the password. A connection lost on the way is not an error yet: the
/// statement may have run, and `prove_new` tells.
fn set_password<S: crate::wire::Stream>(
    mut session: Session<S>,
    s: &Settings,
    new: &Secret,
) -> Result<(), Failure> {
    let verifier = postgres_protocol::password::scram_sha_256(new.expose().as_bytes());
    // Bounded waits: a statement stuck on a lock must not commit after the
    // plugin has given up on it.
    let sql = format!(
        "SET lock_timeout = '5s'; SET statement_timeout = '10s'; ALTER ROLE {} PASSWORD {}",
        escape_identifier(&s.role),
        escape_literal(&verifier)
    );
    match session.query(&sql) {
        Ok(_) | Err(PgError::Net(NetError::Lost(_) | NetError::Timeout(_))) => Ok(()),
        Err(e) => Err(failure(
            &format!("setting the password of role '{}'", s.role),
            s,
            e,
        )),
    }
}

/// The new password logs in (with SCRAM: `Session::open` refuses `trust`).
fn prove_new<N: Network>(net: &N, s: &Settings, new: &Secret) -> Result<(), Failure> {
    match Session::open(net, &login(s, &s.role, new)) {
        Ok(_) => Ok(()),
        Err(PgError::Server { code, .. }) if code == "28P01" => Err(Failure::new(
            Kind::Unavailable,
            format!(
                "the new password of role '{}' does not log in to {}: ALTER ROLE did not take effect (the connection broke before it finished); it stays staged: run again",
                s.role,
                s.service()
            ),
        )),
        Err(e) => Err(failure(
            &format!("logging in as role '{}' with the new password", s.role),
            s,
            e,
        )),
    }
}

/// The vault's old password no longer logs in; a note says so.
fn prove_old_gone<N: Network>(net: &N, s: &Settings, old: &Secret) -> Result<String, Failure> {
    match Session::open(net, &login(s, &s.role, old)) {
        Err(PgError::Server { code, .. }) if code == "28P01" => {
            Ok("the old password no longer logs in".into())
        }
        Ok(_) => Err(Failure::new(
            Kind::Conflict,
            format!(
                "the old password of role '{}' still logs in to {}: pg_hba.conf lets the role in by another rule; fix it, then run again",
                s.role,
                s.service()
            ),
        )),
        Err(e) => Ok(format!(
            "whether the old password still logs in is unknown: {}",
            failure("checking", s, e)
        )),
    }
}
