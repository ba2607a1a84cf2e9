//! Builds and signs AWS Query API requests (`POST /`, form-encoded, SigV4).

use std::time::SystemTime;

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use crate::endpoints::Endpoint;
use crate::error::PluginError;
use crate::settings::Credentials;
use crate::transport::HttpRequest;

const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Builds the signed request for `action` with `params` against `endpoint`.
pub fn build(
    endpoint: &Endpoint,
    credentials: &Credentials,
    action: &str,
    params: &[(&str, &str)],
    time: SystemTime,
) -> Result<HttpRequest, PluginError> {
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("Action", action);
    body.append_pair("Version", endpoint.version);
    for (k, v) in params {
        body.append_pair(k, v);
    }
    let body = body.finish().into_bytes();
    let url = format!("{}/", endpoint.url);
    let mut headers = vec![("content-type".to_string(), CONTENT_TYPE.to_string())];

    let identity: Identity = AwsCredentials::new(
        credentials.key_id.clone(),
        credentials.secret.expose().to_string(),
        credentials
            .session_token
            .as_ref()
            .map(|t| t.expose().to_string()),
        None,
        "vault",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&endpoint.signing_region)
        .name(endpoint.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| sign_error(action, e))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(&body),
    )
    .map_err(|e| sign_error(action, e))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| sign_error(action, e))?
        .into_parts();
    headers.extend(
        instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Ok(HttpRequest {
        method: "POST".into(),
        url,
        headers,
        body,
    })
}

// Signing errors name the URL or a header, never the secret.
fn sign_error(action: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::InvalidConfig(format!(
        "could not sign the {action} request ({e}): check AWS Region and AWS Endpoint URL"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::resolve;
    use crate::secret::Secret;
    use std::time::Duration;

    fn creds() -> Credentials {
        Credentials {
            key_id: "AKIDEXAMPLE".into(),
            secret: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    /// Temporary credentials: the token travels in `X-Amz-Security-Token`,
    /// which is among the signed headers.
    #[test]
    fn signs_with_a_session_token() {
        let e = resolve("us-east-1", None).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let mut c = creds();
        c.session_token = Some(Secret::new("FwoGZXIvYXdzEXAMPLETOKEN"));
        let r = build(&e.iam, &c, "GetUser", &[], t).unwrap();
        let header = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("x-amz-security-token"),
            Some("FwoGZXIvYXdzEXAMPLETOKEN")
        );
        let auth = header("authorization").unwrap();
        assert!(auth.contains("x-amz-security-token"), "{auth}");
        let without = build(&e.iam, &creds(), "GetUser", &[], t).unwrap();
        assert!(
            !without
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-amz-security-token"))
        );
    }

    #[test]
    fn signs_a_query_request() {
        let e = resolve("eu-west-1", None).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        let r = build(
            &e.iam,
            &creds(),
            "ListAccessKeys",
            &[("UserName", "a+b@c")],
            t,
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "https://iam.amazonaws.com/");
        assert_eq!(
            String::from_utf8(r.body.clone()).unwrap(),
            "Action=ListAccessKeys&Version=2010-05-08&UserName=a%2Bb%40c"
        );
        let header = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("x-amz-date"), Some("20150830T123600Z"));
        let auth = header("authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders="
            ),
            "{auth}"
        );
        assert!(!auth.contains("wJalr"));
        // Same input, same signature; another secret, another signature.
        let again = build(
            &e.iam,
            &creds(),
            "ListAccessKeys",
            &[("UserName", "a+b@c")],
            t,
        )
        .unwrap();
        assert_eq!(again.headers, r.headers);
        let mut other = creds();
        other.secret = Secret::new("another");
        let other = build(
            &e.iam,
            &other,
            "ListAccessKeys",
            &[("UserName", "a+b@c")],
            t,
        )
        .unwrap();
        assert_ne!(other.headers, r.headers);
    }

    #[test]
    fn sts_is_signed_for_its_region() {
        let e = resolve("ap-southeast-2", None).unwrap();
        let r = build(
            &e.sts,
            &creds(),
            "GetCallerIdentity",
            &[],
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(r.url, "https://sts.ap-southeast-2.amazonaws.com/");
        let auth = &r
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert!(auth.contains("/ap-southeast-2/sts/aws4_request"), "{auth}");
        assert!(String::from_utf8_lossy(&r.body).contains("Version=2011-06-15"));
    }
}
