//! The rotation flow natively, against a scripted transport: each IAM/STS action
//! answers from a queue, so the retry and I5 paths can be driven exactly.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use aws_key_rotation::error::PluginError;
use aws_key_rotation::model::{Context, Deactivated, Field, Record};
use aws_key_rotation::rotation::{finalize, last_used, purge, rotate};
use aws_key_rotation::transport::{HttpRequest, HttpResponse, Level, SendError, Transport};

type Answer = Result<HttpResponse, SendError>;

#[derive(Default)]
struct Script {
    answers: RefCell<HashMap<String, VecDeque<Answer>>>,
    sent: RefCell<Vec<String>>,
    clock: RefCell<Duration>,
    /// Key ids other records of the vault hold (I6).
    held: Vec<String>,
}

impl Script {
    fn on(self, action: &str, answer: Answer) -> Self {
        self.answers
            .borrow_mut()
            .entry(action.into())
            .or_default()
            .push_back(answer);
        self
    }

    fn holding(mut self, ids: &[&str]) -> Self {
        self.held = ids.iter().map(|s| s.to_string()).collect();
        self
    }

    fn sent(&self) -> Vec<String> {
        self.sent.borrow().clone()
    }
}

impl Transport for Script {
    fn send(&self, r: &HttpRequest) -> Result<HttpResponse, SendError> {
        let body = String::from_utf8(r.body.clone()).unwrap();
        let action = body
            .split('&')
            .find_map(|p| p.strip_prefix("Action="))
            .unwrap()
            .to_string();
        self.sent.borrow_mut().push(action.clone());
        self.answers
            .borrow_mut()
            .get_mut(&action)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| panic!("no answer scripted for {action}; sent {:?}", self.sent()))
    }
    fn log(&self, _: Level, _: &str) {}
    fn held_elsewhere(&self, id: &str) -> bool {
        self.held.iter().any(|h| h == id)
    }
    fn sleep(&self, d: Duration) {
        *self.clock.borrow_mut() += d;
    }
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }
    fn elapsed(&self) -> Duration {
        *self.clock.borrow()
    }
    fn random(&self) -> u64 {
        7
    }
}

fn ok(body: &str) -> Answer {
    Ok(HttpResponse {
        status: 200,
        body: body.as_bytes().to_vec(),
    })
}

fn aws_error(status: u16, code: &str) -> Answer {
    Ok(HttpResponse {
        status,
        body: format!(
            "<ErrorResponse><Error><Code>{code}</Code><Message>m</Message></Error></ErrorResponse>"
        )
        .into_bytes(),
    })
}

fn user() -> Answer {
    ok("<R><User><UserName>alice</UserName><Arn>arn:aws:iam::1:user/alice</Arn></User></R>")
}

fn keys(ids: &[&str]) -> Answer {
    keys_with(&ids.iter().map(|id| (*id, "Active")).collect::<Vec<_>>())
}

fn keys_with(keys: &[(&str, &str)]) -> Answer {
    let members: String = keys
        .iter()
        .map(|(id, status)| format!("<member><AccessKeyId>{id}</AccessKeyId><Status>{status}</Status><CreateDate>2024-01-01T00:00:00Z</CreateDate></member>"))
        .collect();
    ok(&format!(
        "<R><AccessKeyMetadata>{members}</AccessKeyMetadata></R>"
    ))
}

/// The id `CreateAccessKey` answers with, in IAM's format.
const NEW: &str = "AKIANEWKEY0000000001";

fn created(id: &str) -> Answer {
    ok(&format!(
        "<R><AccessKey><UserName>alice</UserName><AccessKeyId>{id}</AccessKeyId><SecretAccessKey>secret-of-{id}</SecretAccessKey></AccessKey></R>"
    ))
}

fn field(kind: &str, label: &str, value: &str) -> Field {
    Field {
        kind: kind.into(),
        label: Some(label.into()),
        values: vec![value.into()],
    }
}

fn ctx(vault_key: &str, client_id: &str) -> Context {
    Context {
        user: Record {
            uid: "u".into(),
            record_type: "pamUser".into(),
            title: "alice".into(),
            fields: vec![
                Field {
                    kind: "login".into(),
                    label: None,
                    values: vec!["alice".into()],
                },
                field("text", "aws_access_key_id", vault_key),
            ],
        },
        config: Record {
            uid: "c".into(),
            record_type: "login".into(),
            title: "cfg".into(),
            fields: vec![
                field("text", "Client ID", client_id),
                field("secret", "Client Secret", "rotator-secret"),
                field("text", "AWS Region", "us-east-1"),
                field("text", "Retry Deadline Seconds", "5"),
            ],
        },
        provider: None,
        dry_run: false,
        deadline: None,
        ..Context::default()
    }
}

/// The answers of a rotation of the vault's key OLD, up to retiring it.
fn rotation_of_old() -> Script {
    Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&["OLD"]))
        .on("CreateAccessKey", created(NEW))
        .on("GetUser", user())
        .on(
            "GetCallerIdentity",
            ok("<R><Arn>arn:aws:iam::1:user/alice</Arn></R>"),
        )
}

#[test]
fn a_plain_rotation_sends_six_calls() {
    let t = rotation_of_old().on("DeleteAccessKey", ok("<R/>"));
    let r = rotate(&t, &ctx("OLD", "ROTATOR")).unwrap();
    assert_eq!(r.created.as_deref(), Some(NEW));
    assert_eq!(r.retire, ["OLD"]);
    assert_eq!(
        r.field("aws_secret_access_key").unwrap().expose(),
        format!("secret-of-{NEW}")
    );
    let f = finalize(&t, &ctx("OLD", "ROTATOR"), &r).unwrap();
    assert_eq!(f.retired, ["OLD"]);
    assert_eq!(
        t.sent(),
        [
            "GetUser",
            "ListAccessKeys",
            "CreateAccessKey",
            "GetUser",
            "GetCallerIdentity",
            "DeleteAccessKey"
        ]
    );
}

/// I5: a timed-out create is never repeated before the orphan it may have left
/// is found and deleted.
#[test]
fn an_ambiguous_create_is_cleaned_up_then_tried_once_more() {
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&["OLD"]))
        .on("CreateAccessKey", Err(SendError::Timeout("slow".into())))
        .on("ListAccessKeys", keys(&["OLD", "AKIAORPHAN0000000001"]))
        .on("DeleteAccessKey", ok("<R/>"))
        .on("CreateAccessKey", created(NEW));
    let r = rotate(&t, &ctx("OLD", "ROTATOR")).unwrap();
    assert_eq!(r.created.as_deref(), Some(NEW));
    assert_eq!(
        t.sent(),
        [
            "GetUser",
            "ListAccessKeys",
            "CreateAccessKey",
            "ListAccessKeys",
            "DeleteAccessKey",
            "CreateAccessKey"
        ]
    );
}

/// Two ambiguous failures in a row: clean up again and give up.
#[test]
fn a_second_ambiguous_create_gives_up_after_cleaning_up() {
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&["OLD"]))
        .on("CreateAccessKey", aws_error(500, "InternalFailure"))
        .on("ListAccessKeys", keys(&["OLD"]))
        .on("CreateAccessKey", aws_error(503, "ServiceUnavailable"))
        .on("ListAccessKeys", keys(&["OLD", "AKIAORPHAN0000000001"]))
        .on("DeleteAccessKey", ok("<R/>"));
    let err = rotate(&t, &ctx("OLD", "ROTATOR")).unwrap_err();
    assert!(matches!(err, PluginError::Unavailable(_)), "{err:?}");
    assert_eq!(
        t.sent().iter().filter(|a| *a == "CreateAccessKey").count(),
        2
    );
    assert_eq!(t.sent().last().map(String::as_str), Some("DeleteAccessKey"));
}

/// Throttling means the request was turned away: safe to repeat as is.
#[test]
fn a_throttled_create_is_retried_without_listing() {
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&["OLD"]))
        .on("CreateAccessKey", aws_error(400, "Throttling"))
        .on("CreateAccessKey", created(NEW));
    rotate(&t, &ctx("OLD", "ROTATOR")).unwrap();
    assert_eq!(
        t.sent(),
        [
            "GetUser",
            "ListAccessKeys",
            "CreateAccessKey",
            "CreateAccessKey"
        ]
    );
    assert!(*t.clock.borrow() > Duration::ZERO, "it backed off");
}

/// The guide's setup: after deleting the vault's key, IAM may still count it.
#[test]
fn limit_exceeded_right_after_making_room_is_retried() {
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&["VAULT", "ROTATOR"]))
        .on("DeleteAccessKey", ok("<R/>"))
        .on("CreateAccessKey", aws_error(409, "LimitExceeded"))
        .on("CreateAccessKey", created(NEW));
    let r = rotate(&t, &ctx("VAULT", "ROTATOR")).unwrap();
    assert!(r.retire.is_empty());
    assert!(r.notes[0].contains("no spare"), "{:?}", r.notes);
}

/// IAM is eventually consistent: verification waits, within its budget.
#[test]
fn verification_retries_until_the_key_works() {
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&[]))
        .on("CreateAccessKey", created(NEW))
        .on("GetUser", user())
        .on("GetCallerIdentity", aws_error(403, "InvalidClientTokenId"))
        .on("GetCallerIdentity", aws_error(403, "InvalidClientTokenId"))
        .on(
            "GetCallerIdentity",
            ok("<R><Arn>arn:aws:iam::1:user/alice</Arn></R>"),
        );
    let r = rotate(&t, &ctx("", "ROTATOR")).unwrap();
    let f = finalize(&t, &ctx("", "ROTATOR"), &r).unwrap();
    assert!(f.retired.is_empty());
    assert_eq!(
        t.sent()
            .iter()
            .filter(|a| *a == "GetCallerIdentity")
            .count(),
        3
    );
}

/// A key that authenticates as someone else is not the user's: nothing is deleted.
#[test]
fn a_key_of_another_user_is_not_accepted() {
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&["OLD"]))
        .on("CreateAccessKey", created(NEW))
        .on("GetUser", user())
        .on(
            "GetCallerIdentity",
            ok("<R><Arn>arn:aws:iam::1:user/mallory</Arn></R>"),
        );
    let r = rotate(&t, &ctx("OLD", "ROTATOR")).unwrap();
    let err = finalize(&t, &ctx("OLD", "ROTATOR"), &r).unwrap_err();
    assert!(
        err.to_string().contains("mallory") && err.to_string().contains("old key OLD was kept"),
        "{err}"
    );
    assert!(!t.sent().contains(&"DeleteAccessKey".to_string()));
}

/// The plugin never pauses past the host's deadline, whatever its retry settings.
#[test]
fn backoff_stops_before_the_hosts_deadline() {
    let mut t = Script::default();
    for _ in 0..1000 {
        t = t.on("GetUser", aws_error(500, "InternalFailure"));
    }
    let mut c = ctx("OLD", "ROTATOR");
    c.config
        .fields
        .push(field("text", "Max Backoff Milliseconds", "600000"));
    c.config
        .fields
        .push(field("text", "Retry Deadline Seconds", "3600"));
    c.deadline = Some(Duration::from_secs(10));
    let err = rotate(&t, &c).unwrap_err();
    assert!(matches!(err, PluginError::Unavailable(_)), "{err:?}");
    let slept = *t.clock.borrow();
    assert!(
        slept <= Duration::from_secs(8),
        "paused {slept:?} of a 10 s deadline"
    );
    assert!(t.sent().len() >= 2, "it retried at all: {:?}", t.sent());
}

/// An expired session token is said to be one, not blamed on the clock.
#[test]
fn an_expired_session_token_is_named() {
    let t = Script::default().on("GetUser", aws_error(403, "ExpiredToken"));
    let err = rotate(&t, &ctx("OLD", "ROTATOR")).unwrap_err();
    let m = err.to_string();
    assert!(m.contains("session token") && m.contains("expired"), "{m}");
    assert!(!m.contains("clock"), "{m}");
}

/// With `Old Key Action` = deactivate, `finalize` sets the old key Inactive
/// (`UpdateAccessKey`) and reports it deactivated, not retired.
#[test]
fn deactivate_mode_turns_the_old_key_off_instead_of_deleting_it() {
    let t = rotation_of_old().on("UpdateAccessKey", ok("<R/>"));
    let mut c = ctx("OLD", "ROTATOR");
    c.config
        .fields
        .push(field("text", "Old Key Action", "deactivate"));
    let r = rotate(&t, &c).unwrap();
    let f = finalize(&t, &c, &r).unwrap();
    assert_eq!(f.deactivated, ["OLD"]);
    assert!(f.retired.is_empty());
    assert_eq!(t.sent().last().map(String::as_str), Some("UpdateAccessKey"));
    assert!(!t.sent().contains(&"DeleteAccessKey".to_string()));
}

/// `purge` deletes only expired entries that IAM still shows Inactive; an
/// entry turned back on, or the vault's key, is kept and reported.
#[test]
fn purge_deletes_only_expired_inactive_keys() {
    let t = Script::default()
        .on(
            "ListAccessKeys",
            keys_with(&[
                ("OLD", "Active"),
                ("GONE1", "Inactive"),
                ("BACK", "Active"),
                ("FRESH", "Inactive"),
            ]),
        )
        .on("DeleteAccessKey", ok("<R/>"));
    let mut c = ctx("OLD", "ROTATOR");
    let entry = |id: &str, expired| Deactivated {
        id: id.into(),
        since: "2026-11-01T00:00:00Z".into(),
        kept: false,
        expired,
    };
    c.deactivated = vec![
        entry("GONE1", true),
        entry("BACK", true),
        entry("FRESH", false),
        entry("OLD", true),
        entry("MISSING", true),
    ];
    let f = purge(&t, &c).unwrap();
    assert_eq!(f.retired, ["GONE1", "MISSING"]);
    assert_eq!(t.sent(), ["ListAccessKeys", "DeleteAccessKey"]);
    assert!(
        f.notes
            .iter()
            .any(|n| n.starts_with("kept BACK") && n.contains("Active again")),
        "{:?}",
        f.notes
    );
    assert!(
        f.notes.iter().any(|n| n.starts_with("kept OLD")),
        "{:?}",
        f.notes
    );
}

/// I6: with the other key held by another record, `rotate` refuses after listing
/// and deletes nothing.
#[test]
fn a_key_another_record_holds_is_not_deleted_to_make_room() {
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&["OLD", "THEIRS"]))
        .holding(&["THEIRS"]);
    let err = rotate(&t, &ctx("OLD", "ROTATOR")).unwrap_err();
    assert!(
        matches!(&err, PluginError::Conflict(m) if m.contains("THEIRS") && m.contains("another record")),
        "{err:?}"
    );
    assert_eq!(t.sent(), ["GetUser", "ListAccessKeys"]);
}

/// I6: a key that appears beside an ambiguous create but is held by another
/// record (stored by a concurrent writer) is not taken for the create's orphan.
#[test]
fn the_ambiguous_create_cleanup_spares_a_key_another_record_holds() {
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&["OLD"]))
        .on("CreateAccessKey", Err(SendError::Timeout("slow".into())))
        .on("ListAccessKeys", keys(&["OLD", "AKIATHEIRS0000000001"]))
        .on("CreateAccessKey", created(NEW))
        .holding(&["AKIATHEIRS0000000001"]);
    let r = rotate(&t, &ctx("OLD", "ROTATOR")).unwrap();
    assert_eq!(r.created.as_deref(), Some(NEW));
    assert!(
        !t.sent().iter().any(|a| a == "DeleteAccessKey"),
        "{:?}",
        t.sent()
    );
}

/// I6 in `finalize` and `purge`: a retire or ledger id another record holds is
/// kept, and said so.
#[test]
fn finalize_and_purge_keep_keys_another_record_holds() {
    let t = Script::default()
        .on("GetUser", user())
        .on(
            "GetCallerIdentity",
            ok("<R><Arn>arn:aws:iam::1:user/alice</Arn></R>"),
        )
        .on("ListAccessKeys", keys_with(&[("SHARED", "Inactive")]))
        .holding(&["OLD", "SHARED"]);
    let done = aws_key_rotation::model::Rotation {
        fields: vec![aws_key_rotation::model::OutputField {
            label: "aws_secret_access_key".into(),
            aliases: vec![],
            kind: aws_key_rotation::model::ValueKind::Secret,
            value: aws_key_rotation::secret::Secret::new("s3cr3t-new"),
        }],
        created: Some(NEW.into()),
        retire: vec!["OLD".into()],
        ..Default::default()
    };
    let f = finalize(&t, &ctx("NONE", "ROTATOR"), &done).unwrap();
    assert!(f.retired.is_empty(), "{f:?}");
    assert!(
        f.notes.iter().any(|n| n.contains("kept the old key OLD")),
        "{f:?}"
    );
    let mut c = ctx("NONE", "ROTATOR");
    c.deactivated = vec![Deactivated {
        id: "SHARED".into(),
        since: "2026-11-01T00:00:00Z".into(),
        kept: false,
        expired: true,
    }];
    let f = purge(&t, &c).unwrap();
    assert!(f.retired.is_empty(), "{f:?}");
    assert!(
        !t.sent().iter().any(|a| a == "DeleteAccessKey"),
        "{:?}",
        t.sent()
    );
}

/// `retire-when-unused`: `finalize` proves the new key and leaves the old one
/// active for its consumers; `last_used` reads IAM's record of it; `purge`
/// deactivates a kept key the host found unused, and `rotate` will not delete
/// a kept key to make room.
#[test]
fn retire_when_unused_keeps_the_old_key_until_the_host_says_it_is_unused() {
    let mut c = ctx("OLD", "ROTATOR");
    c.config
        .fields
        .push(field("text", "Old Key Action", "retire-when-unused"));
    let t = rotation_of_old();
    let r = rotate(&t, &c).unwrap();
    let f = finalize(&t, &c, &r).unwrap();
    assert_eq!(f.kept, ["OLD"]);
    assert!(f.retired.is_empty() && f.deactivated.is_empty(), "{f:?}");
    assert!(
        !t.sent()
            .iter()
            .any(|a| a == "DeleteAccessKey" || a == "UpdateAccessKey")
    );

    let kept = |expired| Deactivated {
        id: "OLD".into(),
        since: "2026-11-01T00:00:00Z".into(),
        kept: true,
        expired,
    };
    let mut c = ctx(NEW, "ROTATOR");
    c.deactivated = vec![kept(false)];
    let t = Script::default().on(
        "GetAccessKeyLastUsed",
        ok("<R><UserName>alice</UserName><AccessKeyLastUsed><LastUsedDate>2026-11-30T10:00:00Z</LastUsedDate><ServiceName>s3</ServiceName><Region>eu-west-1</Region></AccessKeyLastUsed></R>"),
    );
    let uses = last_used(&t, &c).unwrap();
    assert_eq!(uses.len(), 1);
    assert!(uses[0].found);
    assert_eq!(uses[0].last_used.as_deref(), Some("2026-11-30T10:00:00Z"));
    assert_eq!(uses[0].service.as_deref(), Some("s3"));
    assert_eq!(uses[0].region.as_deref(), Some("eu-west-1"));

    // Not yet expired: purge leaves it alone. Expired: it is deactivated.
    let t = Script::default().on("ListAccessKeys", keys(&[NEW, "OLD"]));
    assert_eq!(purge(&t, &c).unwrap(), Default::default());
    c.deactivated = vec![kept(true)];
    let t = Script::default()
        .on("ListAccessKeys", keys(&[NEW, "OLD"]))
        .on("UpdateAccessKey", ok("<R/>"));
    assert_eq!(purge(&t, &c).unwrap().deactivated, ["OLD"]);
    assert_eq!(t.sent(), ["ListAccessKeys", "UpdateAccessKey"]);

    // Rotating again while it is kept would need its slot: refused, unchanged.
    c.deactivated = vec![kept(false)];
    let t = Script::default()
        .on("GetUser", user())
        .on("ListAccessKeys", keys(&[NEW, "OLD"]));
    let err = rotate(&t, &c).unwrap_err();
    assert!(
        matches!(&err, PluginError::Conflict(m) if m.contains("kept for consumers")),
        "{err:?}"
    );
    assert_eq!(t.sent(), ["GetUser", "ListAccessKeys"]);
}

/// `last_used` of a key IAM no longer has: not found; of another user's key: refused.
#[test]
fn last_used_reports_a_gone_key_and_refuses_another_users() {
    let mut c = ctx(NEW, "ROTATOR");
    c.deactivated = vec![Deactivated {
        id: "OLD".into(),
        since: "2026-11-01T00:00:00Z".into(),
        kept: true,
        expired: false,
    }];
    let t = Script::default().on("GetAccessKeyLastUsed", aws_error(404, "NoSuchEntity"));
    assert!(!last_used(&t, &c).unwrap()[0].found);
    let t = Script::default().on(
        "GetAccessKeyLastUsed",
        ok("<R><UserName>mallory</UserName><AccessKeyLastUsed><Region>N/A</Region><ServiceName>N/A</ServiceName></AccessKeyLastUsed></R>"),
    );
    assert!(matches!(last_used(&t, &c), Err(PluginError::Failed(m)) if m.contains("mallory")));
}
