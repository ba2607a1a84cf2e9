//! Reads IAM and STS Query API responses.
//!
//! Parse failures never quote the body: a `CreateAccessKey` response holds a secret.

use roxmltree::{Document, Node};

use crate::plan::{AccessKey, KeyStatus};
use crate::secret::Secret;

/// An AWS error response (`ErrorResponse/Error/Code` and `Message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// The response was not the XML that was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} ({len} bytes)")]
pub struct Malformed {
    pub what: &'static str,
    pub len: usize,
}

/// `GetUser`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub arn: String,
}

fn parse(body: &[u8]) -> Result<Document<'_>, Malformed> {
    let text = std::str::from_utf8(body).map_err(|_| Malformed {
        what: "the response is not UTF-8",
        len: body.len(),
    })?;
    Document::parse(text).map_err(|_| Malformed {
        what: "the response is not well-formed XML",
        len: body.len(),
    })
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn find<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn text_of(node: Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn required(doc: &Document<'_>, name: &str, len: usize) -> Result<String, Malformed> {
    find(doc.root(), name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or(Malformed {
            what: "a field is missing from the response",
            len,
        })
}

/// `text` with control and bidirectional-override characters written as `\u{..}`,
/// so a server cannot forge lines or reorder what a terminal shows.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads an error response; `None` if the body is not one.
pub fn error(status: u16, body: &[u8]) -> Option<AwsError> {
    let doc = parse(body).ok()?;
    let error = find(doc.root(), "Error")?;
    Some(AwsError {
        status,
        code: printable(&text_of(error, "Code")?),
        message: printable(&text_of(error, "Message").unwrap_or_default()),
    })
}

/// Reads `GetUser`.
pub fn user(body: &[u8]) -> Result<User, Malformed> {
    let doc = parse(body)?;
    let user = find(doc.root(), "User").ok_or(Malformed {
        what: "GetUser's response has no User",
        len: body.len(),
    })?;
    match (text_of(user, "UserName"), text_of(user, "Arn")) {
        (Some(name), Some(arn)) => Ok(User { name, arn }),
        _ => Err(Malformed {
            what: "GetUser's response lacks UserName or Arn",
            len: body.len(),
        }),
    }
}

/// `GetAccessKeyLastUsed`: whose key it is, and its last use (date, service,
/// region; IAM writes `N/A` for a service or region never seen).
pub struct LastUse {
    pub user: String,
    pub date: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
}

/// Reads `GetAccessKeyLastUsed`'s answer.
pub fn last_use(body: &[u8]) -> Result<LastUse, Malformed> {
    let doc = parse(body)?;
    let bad = Malformed {
        what: "GetAccessKeyLastUsed's response lacks UserName or AccessKeyLastUsed",
        len: body.len(),
    };
    let user = required(&doc, "UserName", body.len()).map_err(|_| bad.clone())?;
    let used = find(doc.root(), "AccessKeyLastUsed").ok_or(bad)?;
    let known = |name| text_of(used, name).filter(|v| v != "N/A");
    Ok(LastUse {
        user,
        date: known("LastUsedDate"),
        service: known("ServiceName"),
        region: known("Region"),
    })
}

/// Reads one page of `ListAccessKeys`: the keys, and the marker of the next page.
pub fn access_keys(body: &[u8]) -> Result<(Vec<AccessKey>, Option<String>), Malformed> {
    let doc = parse(body)?;
    let bad = Malformed {
        what: "ListAccessKeys' response has no valid AccessKeyMetadata",
        len: body.len(),
    };
    let list = find(doc.root(), "AccessKeyMetadata").ok_or(bad.clone())?;
    let mut keys = Vec::new();
    for member in list
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "member")
    {
        let id = text_of(member, "AccessKeyId").ok_or(bad.clone())?;
        let status = match text_of(member, "Status").as_deref() {
            Some("Active") => KeyStatus::Active,
            Some("Inactive") => KeyStatus::Inactive,
            _ => return Err(bad),
        };
        keys.push(AccessKey {
            id,
            status,
            created: text_of(member, "CreateDate").unwrap_or_default(),
        });
    }
    let truncated = find(doc.root(), "IsTruncated")
        .and_then(|n| n.text())
        .is_some_and(|t| t.trim() == "true");
    let marker = truncated
        .then(|| find(doc.root(), "Marker").and_then(|n| n.text()))
        .flatten()
        .map(|m| m.trim().to_string());
    Ok((keys, marker))
}

/// `CreateAccessKey`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedKey {
    /// The user the answer says the key belongs to.
    pub user: String,
    pub id: String,
    pub secret: Secret,
}

/// Reads `CreateAccessKey`: whose key, its id and its secret.
pub fn created_key(body: &[u8]) -> Result<CreatedKey, Malformed> {
    let doc = parse(body)?;
    let len = body.len();
    let key = find(doc.root(), "AccessKey").ok_or(Malformed {
        what: "CreateAccessKey's response has no AccessKey",
        len,
    })?;
    let field = |name| {
        text_of(key, name).ok_or(Malformed {
            what: "CreateAccessKey's AccessKey lacks UserName, AccessKeyId or SecretAccessKey",
            len,
        })
    };
    Ok(CreatedKey {
        user: field("UserName")?,
        id: field("AccessKeyId")?,
        secret: Secret::new(field("SecretAccessKey")?),
    })
}

/// Reads `GetCallerIdentity`: the caller's ARN.
pub fn caller_arn(body: &[u8]) -> Result<String, Malformed> {
    let doc = parse(body)?;
    required(&doc, "Arn", body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_error_response() {
        let body = br#"<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
          <Error><Type>Sender</Type><Code>NoSuchEntity</Code>
          <Message>The user with name bob cannot be found.</Message></Error>
          <RequestId>abc</RequestId></ErrorResponse>"#;
        let e = error(404, body).unwrap();
        assert_eq!(e.code, "NoSuchEntity");
        assert_eq!(e.message, "The user with name bob cannot be found.");
        assert_eq!(e.status, 404);
        assert_eq!(error(500, b"<html>oops"), None);
        assert_eq!(error(500, b"<a><b/></a>"), None);
        let forged =
            "<E><Error><Code>X</Code><Message>a\nFORGED\u{9b}31m\u{202e}b</Message></Error></E>";
        let e = error(403, forged.as_bytes()).unwrap();
        assert_eq!(e.message, "a\\u{a}FORGED\\u{9b}31m\\u{202e}b");
    }

    #[test]
    fn reads_get_user() {
        let body = br#"<GetUserResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
          <GetUserResult><User><Path>/</Path><UserName>alice</UserName><UserId>AID</UserId>
          <Arn>arn:aws:iam::123456789012:user/alice</Arn><CreateDate>2024-01-01T00:00:00Z</CreateDate>
          </User></GetUserResult></GetUserResponse>"#;
        let u = user(body).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.arn, "arn:aws:iam::123456789012:user/alice");
    }

    #[test]
    fn reads_list_access_keys_with_paging() {
        let body = br#"<ListAccessKeysResponse><ListAccessKeysResult>
          <UserName>alice</UserName><AccessKeyMetadata>
            <member><UserName>alice</UserName><AccessKeyId>AKIA1</AccessKeyId><Status>Active</Status>
              <CreateDate>2024-01-01T00:00:00Z</CreateDate></member>
            <member><UserName>alice</UserName><AccessKeyId>AKIA2</AccessKeyId><Status>Inactive</Status>
              <CreateDate>2024-02-01T00:00:00Z</CreateDate></member>
          </AccessKeyMetadata><IsTruncated>true</IsTruncated><Marker>m1</Marker>
          </ListAccessKeysResult></ListAccessKeysResponse>"#;
        let (keys, marker) = access_keys(body).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].id, "AKIA1");
        assert_eq!(keys[1].status, KeyStatus::Inactive);
        assert_eq!(keys[1].created, "2024-02-01T00:00:00Z");
        assert_eq!(marker.as_deref(), Some("m1"));
        let (keys, marker) =
            access_keys(b"<R><AccessKeyMetadata/><IsTruncated>false</IsTruncated></R>").unwrap();
        assert!(keys.is_empty() && marker.is_none());
    }

    #[test]
    fn reads_create_access_key_without_leaking_on_failure() {
        let body = br#"<CreateAccessKeyResponse><CreateAccessKeyResult><AccessKey>
          <UserName>alice</UserName><AccessKeyId>AKIANEW</AccessKeyId><Status>Active</Status>
          <SecretAccessKey>s3cr3t/Value</SecretAccessKey></AccessKey></CreateAccessKeyResult>
          </CreateAccessKeyResponse>"#;
        let key = created_key(body).unwrap();
        assert_eq!(key.user, "alice");
        assert_eq!(key.id, "AKIANEW");
        assert_eq!(key.secret.expose(), "s3cr3t/Value");
        let truncated = &body[..body.len() - 40];
        let err = created_key(truncated).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let no_secret = b"<R><AccessKeyId>AKIANEW</AccessKeyId></R>";
        assert!(created_key(no_secret).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(user(b"not xml").is_err());
        assert!(user(b"<GetUserResponse/>").is_err());
        assert!(access_keys(b"<R><AccessKeyMetadata><member><AccessKeyId>A</AccessKeyId></member></AccessKeyMetadata></R>").is_err());
        assert!(caller_arn(b"<GetCallerIdentityResponse/>").is_err());
        assert_eq!(
            caller_arn(b"<R><GetCallerIdentityResult><Arn>arn:aws:iam::1:user/a</Arn></GetCallerIdentityResult></R>").unwrap(),
            "arn:aws:iam::1:user/a"
        );
    }
}
