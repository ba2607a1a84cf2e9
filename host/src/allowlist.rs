//! The origins a guest may reach, parsed once at startup and checked before any I/O.

use thiserror::Error;
use url::Url;

/// An origin pattern could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "'{pattern}' is not an allowed-host pattern like 'https://*.example.com' or 'http://127.0.0.1:8080': {why}"
)]
pub struct PatternError {
    pub pattern: String,
    pub why: &'static str,
}

/// URL schemes a guest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A host name, exact or `*.`-wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// Matches any name ending in `.suffix` (the suffix itself excluded).
    AnySubdomainOf(String),
}

/// One allowed origin: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    pub scheme: Scheme,
    pub host: HostPattern,
    pub port: u16,
}

impl AllowedOrigin {
    /// Parses `scheme://host[:port]`, where host may start with `*.`.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let err = |why| PatternError {
            pattern: pattern.to_string(),
            why,
        };
        let (scheme, rest) = if let Some(r) = pattern.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = pattern.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(err("the scheme must be http or https"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("only scheme, host and port are allowed"));
        }
        let (wildcard, rest) = match rest.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        // Parse what remains as a URL to normalise the host (case, IPv6, IDNA).
        let url = Url::parse(&format!(
            "{}://{rest}/",
            if scheme == Scheme::Https {
                "https"
            } else {
                "http"
            }
        ))
        .map_err(|_| err("the host or port is malformed"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty() && !h.contains('*'))
            .ok_or_else(|| err("the host is missing or has a '*' other than a leading '*.'"))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| err("the port is malformed"))?;
        Ok(Self {
            scheme,
            host: if wildcard {
                HostPattern::AnySubdomainOf(host)
            } else {
                HostPattern::Exact(host)
            },
            port,
        })
    }

    /// The origin of a base URL such as an `AWS Endpoint URL`.
    pub fn of_url(url: &str) -> Result<Self, PatternError> {
        let parsed = Url::parse(url).map_err(|_| PatternError {
            pattern: url.to_string(),
            why: "it is not a URL",
        })?;
        let host = parsed.host_str().unwrap_or_default();
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        Self::parse(&format!("{}://{host}{port}", parsed.scheme()))
    }

    fn matches(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        self.scheme == scheme
            && self.port == port
            && match &self.host {
                HostPattern::Exact(h) => h == host,
                HostPattern::AnySubdomainOf(suffix) => host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            }
    }
}

/// The set of origins one guest may reach.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    origins: Vec<AllowedOrigin>,
}

impl AllowList {
    pub fn new(origins: Vec<AllowedOrigin>) -> Self {
        Self { origins }
    }

    /// Checks `url`; the error says what was refused and why.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        let scheme = match url.scheme() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            other => return Err(format!("scheme '{other}' is not allowed")),
        };
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(0);
        if self.origins.iter().any(|o| o.matches(scheme, host, port)) {
            Ok(())
        } else {
            Err(format!(
                "{}://{host}:{port} is not in the plugin's allowlist",
                url.scheme()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &AllowList, url: &str) -> bool {
        list.check(&Url::parse(url).unwrap()).is_ok()
    }

    #[test]
    fn parses_patterns() {
        let o = AllowedOrigin::parse("https://*.Amazonaws.com").unwrap();
        assert_eq!(o.host, HostPattern::AnySubdomainOf("amazonaws.com".into()));
        assert_eq!(o.port, 443);
        let o = AllowedOrigin::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(o.host, HostPattern::Exact("127.0.0.1".into()));
        assert_eq!(o.port, 5000);
        for bad in [
            "ftp://x",
            "https://",
            "https://a/b",
            "https://*",
            "https://a.*.com",
            "x",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            AllowedOrigin::of_url("http://127.0.0.1:5000/some/path").unwrap(),
            AllowedOrigin::parse("http://127.0.0.1:5000").unwrap()
        );
    }

    #[test]
    fn checks_scheme_host_and_port() {
        let list = AllowList::new(vec![
            AllowedOrigin::parse("https://*.amazonaws.com").unwrap(),
            AllowedOrigin::parse("http://127.0.0.1:5000").unwrap(),
        ]);
        assert!(allows(&list, "https://iam.amazonaws.com/"));
        assert!(allows(&list, "https://sts.eu-west-1.amazonaws.com/"));
        assert!(allows(&list, "http://127.0.0.1:5000/"));
        assert!(!allows(&list, "https://amazonaws.com/"));
        assert!(!allows(&list, "https://evilamazonaws.com/"));
        assert!(!allows(&list, "https://iam.amazonaws.com.evil.net/"));
        assert!(!allows(&list, "http://iam.amazonaws.com/"));
        assert!(!allows(&list, "https://iam.amazonaws.com:8443/"));
        assert!(!allows(&list, "http://127.0.0.1:5001/"));
        assert!(!allows(&list, "http://localhost:5000/"));
        assert!(!allows(&list, "file:///etc/passwd"));
    }
}
