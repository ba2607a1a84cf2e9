//! IAM and STS calls: signing, sending, retrying and explaining errors.

use std::time::Duration;

use crate::endpoints::Endpoint;
use crate::error::PluginError;
use crate::plan::AccessKey;
use crate::query;
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::settings::{Credentials, Settings};
use crate::transport::{Level, SendError, Transport};
use crate::xml::{self, AwsError, Malformed, User};

/// Whether a call may be repeated after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Reads and deletes: repeating is harmless.
    Safe,
    /// `CreateAccessKey` (I5): repeat only what surely did not run.
    OnlyIfNotExecuted,
}

/// Why a call failed, before it is explained to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("AWS answered HTTP {} {}: {}", .0.status, .0.code, .0.message)]
    Service(AwsError),
    #[error("{0}")]
    Send(SendError),
    #[error("AWS answered HTTP {0} with a body that is not an AWS error")]
    Status(u16),
    #[error("AWS answered HTTP {status}, but {err}")]
    Malformed { status: u16, err: Malformed },
    #[error("{0}")]
    Local(PluginError),
}

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "SlowDown",
];

impl CallError {
    /// AWS turned the request away before acting on it because of load.
    fn throttled(&self) -> bool {
        matches!(self, Self::Service(e) if THROTTLING.contains(&e.code.as_str()))
    }

    /// Trying the same request again could succeed.
    pub fn transient(&self) -> bool {
        match self {
            Self::Service(e) => self.throttled() || e.status >= 500,
            Self::Send(e) => e.transient(),
            Self::Status(s) => *s >= 500 || *s == 429,
            Self::Malformed { .. } => true,
            Self::Local(_) => false,
        }
    }

    /// The request may have taken effect although no good answer came back.
    pub fn maybe_executed(&self) -> bool {
        match self {
            Self::Service(e) => e.status >= 500 && !self.throttled(),
            Self::Send(e) => e.maybe_sent(),
            Self::Status(s) => *s >= 500,
            Self::Malformed { status, .. } => (200..300).contains(status) || *status >= 500,
            Self::Local(_) => false,
        }
    }

    /// The AWS error code, if AWS gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Service(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// IAM's access key id format: 16 to 128 of `A-Z` and `0-9`.
pub fn is_key_id(id: &str) -> bool {
    (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// IAM and STS, as seen by one rotation.
pub struct Iam<'a, T: Transport> {
    transport: &'a T,
    settings: &'a Settings,
}

impl<'a, T: Transport> Iam<'a, T> {
    pub fn new(transport: &'a T, settings: &'a Settings) -> Self {
        Self {
            transport,
            settings,
        }
    }

    /// Whether another record of the vault holds or tracks `id` (I6).
    pub fn held_elsewhere(&self, id: &str) -> bool {
        self.transport.held_elsewhere(id)
    }

    pub fn log(&self, level: Level, message: &str) {
        self.transport.log(level, message);
    }

    pub fn pause(&self, duration: Duration) {
        self.transport.sleep(duration);
    }

    pub fn elapsed(&self) -> Duration {
        self.transport.elapsed()
    }

    /// The pause before retry `attempt` of something that started at `started`,
    /// if it ends before `policy`'s deadline and leaves time before the host's.
    pub fn next_pause(
        &self,
        policy: &RetryPolicy,
        attempt: u32,
        started: Duration,
    ) -> Option<Duration> {
        let now = self.transport.elapsed();
        let pause = policy.next_pause(
            attempt,
            now.saturating_sub(started),
            self.transport.random(),
        )?;
        match self.settings.deadline {
            // Keep a fifth of the call's time (at most 5 s) for one more request and the report.
            Some(limit) if now + pause + (limit / 5).min(Duration::from_secs(5)) > limit => {
                self.log(
                    Level::Warn,
                    &format!(
                        "not retrying: a {} ms pause would run into the host's time limit of {} ms",
                        pause.as_millis() as u64,
                        limit.as_millis() as u64
                    ),
                );
                None
            }
            _ => Some(pause),
        }
    }

    /// Signs, sends and parses one call, retrying what `repeat` allows until the deadline.
    pub fn call<R>(
        &self,
        endpoint: &Endpoint,
        credentials: &Credentials,
        action: &str,
        params: &[(&str, &str)],
        repeat: Repeat,
        parse: impl Fn(&[u8]) -> Result<R, Malformed>,
    ) -> Result<R, CallError> {
        // One non-generic retry loop for every call: each copy costs the component ~1.5 KiB.
        let mut parsed = None;
        self.call_dyn(endpoint, credentials, action, params, repeat, &mut |body| {
            parsed = Some(parse(body)?);
            Ok(())
        })?;
        Ok(parsed.expect("parsed on success"))
    }

    fn call_dyn(
        &self,
        endpoint: &Endpoint,
        credentials: &Credentials,
        action: &str,
        params: &[(&str, &str)],
        repeat: Repeat,
        parse: &mut dyn FnMut(&[u8]) -> Result<(), Malformed>,
    ) -> Result<(), CallError> {
        let started = self.transport.elapsed();
        let mut attempt = 0;
        loop {
            let err = match self.call_once(endpoint, credentials, action, params, parse) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let retry = err.transient()
                && (repeat == Repeat::Safe || err.throttled() || !err.maybe_executed());
            let pause = retry
                .then(|| self.next_pause(&self.settings.retry, attempt, started))
                .flatten();
            let Some(pause) = pause else {
                return Err(err);
            };
            self.log(
                Level::Warn,
                &format!(
                    "{action} failed ({err}); retry {} in {} ms",
                    attempt + 1,
                    pause.as_millis() as u64
                ),
            );
            self.transport.sleep(pause);
            attempt += 1;
        }
    }

    fn call_once(
        &self,
        endpoint: &Endpoint,
        credentials: &Credentials,
        action: &str,
        params: &[(&str, &str)],
        parse: &mut dyn FnMut(&[u8]) -> Result<(), Malformed>,
    ) -> Result<(), CallError> {
        let request = query::build(endpoint, credentials, action, params, self.transport.now())
            .map_err(CallError::Local)?;
        let response = self.transport.send(&request).map_err(CallError::Send)?;
        self.log(
            Level::Debug,
            &format!(
                "{} {action} as {} -> HTTP {}",
                endpoint.service, credentials.key_id, response.status
            ),
        );
        if !(200..300).contains(&response.status) {
            return Err(match xml::error(response.status, &response.body) {
                Some(e) => CallError::Service(e),
                None => CallError::Status(response.status),
            });
        }
        parse(&response.body).map_err(|err| CallError::Malformed {
            status: response.status,
            err,
        })
    }

    fn iam_call<R>(
        &self,
        action: &str,
        params: &[(&str, &str)],
        repeat: Repeat,
        parse: impl Fn(&[u8]) -> Result<R, Malformed>,
    ) -> Result<R, CallError> {
        let s = self.settings;
        self.call(
            &s.endpoints.iam,
            &s.credentials,
            action,
            params,
            repeat,
            parse,
        )
    }

    /// `GetUser`: the user exists, and its ARN.
    pub fn get_user(&self) -> Result<User, PluginError> {
        let name = self.settings.user_name.as_str();
        let user = self
            .iam_call("GetUser", &[("UserName", name)], Repeat::Safe, xml::user)
            .map_err(|e| self.explain(e, "GetUser"))?;
        // IAM user names are unique regardless of case; anything else is not IAM.
        if !user.name.eq_ignore_ascii_case(name) {
            return Err(PluginError::Failed(format!(
                "GetUser for '{name}' answered with another user, '{}'; nothing was changed. \
                 Check the AWS Endpoint URL: IAM does not do this",
                user.name
            )));
        }
        Ok(user)
    }

    /// `ListAccessKeys`, all pages. A user has at most two keys, so more than
    /// `MAX_PAGES` pages, or a marker seen before, is a broken or hostile server.
    pub fn list_keys(&self) -> Result<Vec<AccessKey>, PluginError> {
        const MAX_PAGES: usize = 10;
        let name = self.settings.user_name.as_str();
        let mut keys = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..MAX_PAGES {
            let mut params = vec![("UserName", name)];
            if let Some(m) = seen.last() {
                params.push(("Marker", m));
            }
            let (page, next) = self
                .iam_call("ListAccessKeys", &params, Repeat::Safe, xml::access_keys)
                .map_err(|e| self.explain(e, "ListAccessKeys"))?;
            keys.extend(page);
            match next {
                None => return Ok(keys),
                Some(m) if seen.contains(&m) => {
                    return Err(PluginError::Unavailable(format!(
                        "ListAccessKeys for '{name}' returned a page marker it had already \
                         returned, so the listing would never end; nothing was changed. Check \
                         the AWS Endpoint URL: IAM does not do this"
                    )));
                }
                Some(m) => seen.push(m),
            }
        }
        Err(PluginError::Unavailable(format!(
            "ListAccessKeys for '{name}' went on past {MAX_PAGES} pages, though a user has at \
             most two keys; nothing was changed. Check the AWS Endpoint URL: IAM does not do this"
        )))
    }

    /// `CreateAccessKey`, repeated only where it surely did not run (I5). An
    /// answer that names another user or an id unlike IAM's is not trusted: it
    /// counts as an unreadable answer, so the caller lists and cleans up.
    pub fn create_key(&self) -> Result<(String, Secret), CallError> {
        let name = self.settings.user_name.as_str();
        self.iam_call(
            "CreateAccessKey",
            &[("UserName", name)],
            Repeat::OnlyIfNotExecuted,
            |body| {
                let key = xml::created_key(body)?;
                let untrusted = |what| Malformed {
                    what,
                    len: body.len(),
                };
                if !key.user.eq_ignore_ascii_case(name) {
                    return Err(untrusted("the answer names another IAM user's key"));
                }
                if !is_key_id(&key.id) {
                    return Err(untrusted(
                        "the new key id is not 16 to 128 capital letters and digits",
                    ));
                }
                Ok((key.id, key.secret))
            },
        )
    }

    /// `DeleteAccessKey`; a key already gone counts as deleted. Returns whether it existed.
    pub fn delete_key(&self, key_id: &str) -> Result<bool, PluginError> {
        let name = self.settings.user_name.as_str();
        let params = [("UserName", name), ("AccessKeyId", key_id)];
        match self.iam_call("DeleteAccessKey", &params, Repeat::Safe, |_| Ok(())) {
            Ok(()) => {
                self.log(
                    Level::Info,
                    &format!("deleted access key {key_id} of '{name}'"),
                );
                Ok(true)
            }
            Err(e) if e.code() == Some("NoSuchEntity") => {
                self.log(
                    Level::Info,
                    &format!("access key {key_id} of '{name}' was already gone"),
                );
                Ok(false)
            }
            Err(e) => Err(self.explain(e, "DeleteAccessKey")),
        }
    }

    /// `UpdateAccessKey` to `Inactive`: the key stops working but can be turned back on.
    pub fn deactivate_key(&self, key_id: &str) -> Result<(), PluginError> {
        let name = self.settings.user_name.as_str();
        let params = [
            ("UserName", name),
            ("AccessKeyId", key_id),
            ("Status", "Inactive"),
        ];
        self.iam_call("UpdateAccessKey", &params, Repeat::Safe, |_| Ok(()))
            .map_err(|e| self.explain(e, "UpdateAccessKey"))?;
        self.log(
            Level::Info,
            &format!("deactivated access key {key_id} of '{name}'"),
        );
        Ok(())
    }

    /// `GetAccessKeyLastUsed`: `None` when IAM no longer has the key. The
    /// answer must name the rotated user: another user's key is not ours to judge.
    pub fn last_use(&self, key_id: &str) -> Result<Option<xml::LastUse>, PluginError> {
        let name = self.settings.user_name.as_str();
        let params = [("AccessKeyId", key_id)];
        match self.iam_call("GetAccessKeyLastUsed", &params, Repeat::Safe, xml::last_use) {
            Ok(u) if u.user.eq_ignore_ascii_case(name) => Ok(Some(u)),
            Ok(u) => Err(PluginError::Failed(format!(
                "GetAccessKeyLastUsed says key {key_id} belongs to '{}', not '{name}'; nothing \
                 was changed. Check the PAM user record's 'Deactivated Keys'",
                u.user
            ))),
            Err(e) if e.code() == Some("NoSuchEntity") => Ok(None),
            Err(e) => Err(self.explain(e, "GetAccessKeyLastUsed")),
        }
    }

    /// STS `GetCallerIdentity` signed with `credentials`: the caller's ARN.
    pub fn caller_arn(&self, credentials: &Credentials) -> Result<String, CallError> {
        let sts = &self.settings.endpoints.sts;
        self.call(
            sts,
            credentials,
            "GetCallerIdentity",
            &[],
            Repeat::Safe,
            xml::caller_arn,
        )
    }

    /// Turns a failed call into a sentence a user can act on.
    pub fn explain(&self, err: CallError, action: &str) -> PluginError {
        match &err {
            CallError::Service(e) => self.service_error(e, &err, action),
            CallError::Send(SendError::DestinationNotAllowed(m)) => {
                PluginError::InvalidConfig(format!(
                    "{action} was not sent: {m}. The host allows only the plugin's declared hosts and \
                 the AWS Endpoint URL"
                ))
            }
            CallError::Send(SendError::TlsFailed(m)) => PluginError::Failed(format!(
                "{action} was not sent: the TLS handshake with the endpoint failed ({m}). If a \
                 proxy or private endpoint presents a certificate from your own CA, pass that CA \
                 to rotate-host with --ca-file"
            )),
            CallError::Send(SendError::InvalidRequest(m)) => PluginError::InvalidConfig(format!(
                "{action} was not sent: {m}. Check the AWS Endpoint URL"
            )),
            CallError::Local(e) => e.clone(),
            _ => self.unavailable(action, &err),
        }
    }

    /// What an error answer from AWS means for the user, by its code.
    fn service_error(&self, e: &AwsError, err: &CallError, action: &str) -> PluginError {
        let s = self.settings;
        let key = &s.credentials.key_id;
        let user = &s.user_name;
        let aws = |e: &AwsError| {
            if e.message.is_empty() {
                e.code.clone()
            } else {
                format!("{}: {}", e.code, e.message)
            }
        };
        match e.code.as_str() {
            "InvalidClientTokenId" | "UnrecognizedClientException" => PluginError::Denied(format!(
                "{action} failed: AWS does not recognise access key {key} ({}). Check the \
                 config's Client ID, and that AWS Region or AWS Endpoint URL points at the \
                 key's partition",
                aws(e)
            )),
            "SignatureDoesNotMatch" | "IncompleteSignature" => PluginError::Denied(format!(
                "{action} failed: the Client Secret does not match access key {key} ({}). \
                 Check the config's Client Secret",
                e.code
            )),
            "ExpiredToken" => PluginError::Denied(format!(
                "{action} failed: the session token of the rotating identity's temporary \
                 credentials has expired ({}). Renew them (the config record's Client ID, \
                 Client Secret and Session Token, or the host's own identity), then run again",
                aws(e)
            )),
            "RequestExpired" | "InvalidSignatureException" => PluginError::Denied(format!(
                "{action} failed: AWS rejected the request's timestamp ({}). Check this \
                     machine's clock",
                aws(e)
            )),
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                PluginError::Denied(format!(
                    "{action} on '{user}' was denied for access key {key} ({}). Grant \
                     iam:{action}: attach the least-privilege policy from the README \
                     (iam:GetUser, iam:ListAccessKeys, iam:CreateAccessKey, \
                     iam:DeleteAccessKey; iam:UpdateAccessKey for 'Old Key Action' deactivate \
                     and retire-when-unused; iam:GetAccessKeyLastUsed for retire-when-unused) \
                     to the rotating identity",
                    aws(e)
                ))
            }
            "NoSuchEntity" => PluginError::NotFound(format!(
                "{action} failed: IAM user '{user}' was not found ({}). Check the config's IAM \
                 Username or the PAM user's login, and that the account is right",
                aws(e)
            )),
            "LimitExceeded" => PluginError::Conflict(format!(
                "{action} failed: '{user}' already has the most access keys IAM allows ({}). \
                 Something else created a key meanwhile; run again",
                aws(e)
            )),
            _ if err.transient() => self.unavailable(action, err),
            _ => PluginError::Failed(format!(
                "{action} on '{user}' failed ({}). Check the message above and run again",
                aws(e)
            )),
        }
    }

    fn unavailable(&self, action: &str, err: &CallError) -> PluginError {
        PluginError::Unavailable(format!(
            "{action} kept failing for up to {} s of retries (last: {err}). AWS or the network \
             is unavailable: run again later, or raise 'Retry Deadline Seconds' (and the host's \
             --timeout, which bounds all retries)",
            self.settings.retry.deadline.as_secs()
        ))
    }
}
