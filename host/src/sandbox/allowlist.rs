//! The origins a guest may reach, checked before any I/O. The operator's
//! patterns are parsed once at startup; a rotation's list (the plugin's
//! declared hosts and its config's endpoint) is built for that rotation.
//!
//! The plugin declares what it needs; the operator can only narrow it
//! (`--allow-host`), and plain `http://` reaches loopback addresses only unless
//! the operator opts in (`--allow-http`).

use thiserror::Error;
use url::{Host, Url};

/// An origin pattern could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "'{pattern}' is not an allowed-host pattern like 'https://iam.amazonaws.com', 'https://sts.{{region}}.amazonaws.com', 'http://127.0.0.1:8080' or 'tcp://db.example.com:5432': {why}"
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
    /// A TCP connection (`tcp.connect`), to an exact host and port.
    Tcp,
}

impl Scheme {
    fn of(scheme: &str) -> Option<Self> {
        match scheme {
            "https" => Some(Self::Https),
            "http" => Some(Self::Http),
            "tcp" => Some(Self::Tcp),
            _ => None,
        }
    }
}

/// A host name or address, exact or with wildcard labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The labels, left to right.
    Labels(Vec<Label>),
}

/// One label of a host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    Literal(String),
    /// `*`: any one label.
    Any,
    /// `{region}`: one label shaped like a cloud region (`eu-west-1`,
    /// `us-gov-west-1`): two letters, words, a number. Names such as
    /// `s3`, `s3-us-west-2` or `execute-api` do not match, so
    /// `sts.{region}.amazonaws.com` excludes the S3 bucket `sts.s3.amazonaws.com`.
    Region,
}

impl Label {
    fn parse(label: &str) -> Option<Self> {
        match label {
            "*" => Some(Self::Any),
            "{region}" => Some(Self::Region),
            _ if label.contains(['*', '{', '}']) => None,
            _ => Some(Self::Literal(label.to_string())),
        }
    }

    fn is_wildcard(&self) -> bool {
        !matches!(self, Self::Literal(_))
    }

    fn matches(&self, got: &str) -> bool {
        match self {
            Self::Literal(want) => want == got,
            Self::Any => !got.is_empty(),
            Self::Region => is_region(got),
        }
    }
}

/// `xx-word(-word)*-N`: the shape of a region name.
fn is_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1]
            .parse::<u16>()
            .is_ok_and(|n| n > 0 && n < 100)
}

/// One allowed origin: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    pub scheme: Scheme,
    pub host: HostPattern,
    pub port: u16,
}

/// A pattern's scheme, host and port (if given), or why it is not an origin.
fn split_origin(pattern: &str) -> Result<(Scheme, &str, Option<&str>), &'static str> {
    let (scheme, rest) = if let Some(r) = pattern.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = pattern.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = pattern.strip_prefix("tcp://") {
        (Scheme::Tcp, r)
    } else {
        return Err("the scheme must be http, https or tcp");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("only scheme, host and port are allowed");
    }
    Ok(match rest.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (scheme, rest, None),
        Some((h, p)) => (scheme, h, Some(p)),
        None => (scheme, rest, None),
    })
}

/// The normalised host's labels with the pattern's wildcards put back;
/// `None` if normalising changed the number of labels.
fn with_wildcards(host: &str, parsed: Vec<Label>) -> Option<Vec<Label>> {
    let normalised: Vec<&str> = host.split('.').collect();
    if normalised.len() != parsed.len() {
        return None;
    }
    Some(
        normalised
            .iter()
            .zip(parsed)
            .map(|(l, p)| match p {
                Label::Literal(_) => Label::Literal(l.to_string()),
                wildcard => wildcard,
            })
            .collect(),
    )
}

impl AllowedOrigin {
    /// Parses `scheme://host[:port]`, where whole labels of a host name may be `*`.
    /// The last two labels must be literal: `https://*.com` would allow the world.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let err = |why| PatternError {
            pattern: pattern.to_string(),
            why,
        };
        let (scheme, host_part, port_part) = split_origin(pattern).map_err(err)?;
        let labels: Vec<&str> = host_part.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) && !host_part.starts_with('[') {
            return Err(err(
                "a host name may not have an empty label or a trailing dot",
            ));
        }
        let parsed: Vec<Label> = labels
            .iter()
            .map(|l| Label::parse(l))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                err("a wildcard must be a whole label, '*' or '{region}', as in 'sts.{region}.amazonaws.com'")
            })?;
        let wildcards: Vec<bool> = parsed.iter().map(Label::is_wildcard).collect();
        let any_wildcard = wildcards.iter().any(|w| *w);
        if scheme == Scheme::Tcp && (any_wildcard || port_part.is_none()) {
            return Err(err(
                "a tcp destination is one exact host and its port, like 'tcp://db.example.com:5432'",
            ));
        }
        if any_wildcard && (labels.len() < 3 || wildcards[labels.len() - 2..].iter().any(|w| *w)) {
            return Err(err(
                "the last two labels of a wildcard host must be literal",
            ));
        }
        // Parse with the wildcards replaced, to normalise the rest (case, IDNA, IPv6).
        let literal: Vec<&str> = labels
            .iter()
            .zip(&wildcards)
            .map(|(l, w)| if *w { "wildcard" } else { l })
            .collect();
        let port = port_part.map(|p| format!(":{p}")).unwrap_or_default();
        // Parsed as https whatever the scheme: the url crate normalises hosts
        // (case, IDNA, IPv6) of special schemes only.
        let url = Url::parse(&format!("https://{}{port}/", literal.join(".")))
            .map_err(|_| err("the host or port is malformed"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err("the host is missing"))?
            .to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let port = match scheme {
            Scheme::Http if port_part.is_none() => 80,
            _ => port,
        };
        let host = if any_wildcard {
            HostPattern::Labels(
                with_wildcards(&host, parsed).ok_or_else(|| err("the host is malformed"))?,
            )
        } else {
            HostPattern::Exact(host)
        };
        Ok(Self { scheme, host, port })
    }

    /// The origin of a base URL such as an `AWS Endpoint URL`: exactly its
    /// scheme, host and port.
    pub fn of_url(url: &str) -> Result<Self, PatternError> {
        let err = |why| PatternError {
            pattern: url.to_string(),
            why,
        };
        let parsed = Url::parse(url).map_err(|_| err("it is not a URL"))?;
        let scheme =
            Scheme::of(parsed.scheme()).ok_or(err("the scheme must be http, https or tcp"))?;
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(err("the host is missing"))?;
        if scheme == Scheme::Tcp {
            // Normalised as a pattern is: the url crate leaves non-special hosts as written.
            let port = parsed
                .port()
                .ok_or(err("a tcp destination needs its port"))?;
            return Self::parse(&format!("tcp://{host}:{port}"));
        }
        Ok(Self {
            scheme,
            host: HostPattern::Exact(host.to_string()),
            port: parsed.port_or_known_default().unwrap_or(0),
        })
    }

    fn matches(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        self.scheme == scheme
            && self.port == port
            && match &self.host {
                HostPattern::Exact(h) => h == host,
                HostPattern::Labels(want) => {
                    let got: Vec<&str> = host.split('.').collect();
                    got.len() == want.len() && want.iter().zip(&got).all(|(w, g)| w.matches(g))
                }
            }
    }
}

/// What the operator allows, on top of what each plugin declares.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    /// `--allow-host`: when set, a destination must also match one of these.
    pub operator: Option<Vec<AllowedOrigin>>,
    /// `allow-host` in the plugin's `[plugin.NAME]` section of the config
    /// file: when set, a destination must match one of these as well.
    pub section: Option<Vec<AllowedOrigin>>,
    /// `--allow-http`: plain `http://` to hosts other than loopback addresses.
    pub allow_http: bool,
}

impl NetworkPolicy {
    /// Whether one of the operator's lists (`--allow-host`, or the plugin's
    /// section) names `origin` (an exact origin, as `AllowedOrigin::of_url`
    /// makes). False without a list.
    pub fn operator_allows(&self, origin: &AllowedOrigin) -> bool {
        let HostPattern::Exact(host) = &origin.host else {
            return false;
        };
        [&self.operator, &self.section]
            .into_iter()
            .flatten()
            .any(|list| {
                list.iter()
                    .any(|o| o.matches(origin.scheme, host, origin.port))
            })
    }
}

/// The set of origins one guest may reach.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    plugin: Vec<AllowedOrigin>,
    policy: NetworkPolicy,
}

impl AllowList {
    /// The plugin's origins, narrowed by the operator's `policy`.
    pub fn new(plugin: Vec<AllowedOrigin>, policy: NetworkPolicy) -> Self {
        Self { plugin, policy }
    }

    /// Checks a TCP destination, before any name lookup or connection.
    pub fn check_tcp(&self, host: &str, port: u16) -> Result<(), String> {
        let bracketed = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let origin = AllowedOrigin::parse(&format!("tcp://{bracketed}:{port}"))
            .map_err(|e| e.to_string())?;
        let HostPattern::Exact(host) = &origin.host else {
            return Err("a tcp destination is one exact host".into());
        };
        self.permitted(Scheme::Tcp, host, port, &format!("tcp://{host}:{port}"))
    }

    /// Checks `url`; the error says what was refused, why, and who can change it.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        let scheme = match url.scheme() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            other => return Err(format!("scheme '{other}' is not allowed")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("URLs carrying a user name or password are refused".into());
        }
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(0);
        let origin = format!("{}://{host}:{port}", url.scheme());
        let loopback = match url.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        };
        if scheme == Scheme::Http && !loopback && !self.policy.allow_http {
            return Err(format!(
                "{origin} is plain http to a host that is not a loopback address, so secrets \
                 would cross the network in clear text; use https, or the operator can pass \
                 --allow-http"
            ));
        }
        self.permitted(scheme, host, port, &origin)
    }

    /// Whether the plugin's list and every operator list allow the destination.
    fn permitted(&self, scheme: Scheme, host: &str, port: u16, origin: &str) -> Result<(), String> {
        if !self.plugin.iter().any(|o| o.matches(scheme, host, port)) {
            return Err(format!(
                "{origin} is neither among the origins the plugin declares nor the config's endpoint"
            ));
        }
        if let Some(operator) = &self.policy.operator
            && !operator.iter().any(|o| o.matches(scheme, host, port))
        {
            return Err(format!(
                "{origin} is outside the operator's --allow-host list"
            ));
        }
        if let Some(section) = &self.policy.section
            && !section.iter().any(|o| o.matches(scheme, host, port))
        {
            return Err(format!(
                "{origin} is outside the allow-host list of this plugin's section in the config file"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &AllowList, url: &str) -> bool {
        list.check(&Url::parse(url).unwrap()).is_ok()
    }

    fn origins(patterns: &[&str]) -> Vec<AllowedOrigin> {
        patterns
            .iter()
            .map(|p| AllowedOrigin::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn parses_patterns() {
        let o = AllowedOrigin::parse("https://STS.*.Amazonaws.com").unwrap();
        assert_eq!(
            o.host,
            HostPattern::Labels(vec![
                Label::Literal("sts".into()),
                Label::Any,
                Label::Literal("amazonaws".into()),
                Label::Literal("com".into())
            ])
        );
        assert_eq!(o.port, 443);
        let o = AllowedOrigin::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(o.host, HostPattern::Exact("127.0.0.1".into()));
        assert_eq!(o.port, 5000);
        let o = AllowedOrigin::parse("http://[::1]:5000").unwrap();
        assert_eq!(o.host, HostPattern::Exact("[::1]".into()));
        for bad in [
            "ftp://x",
            "https://",
            "https://a/b",
            "https://*",
            "https://*.com",
            "https://a.*.com",
            "https://*.amazonaws.*",
            "https://a*.example.com",
            "https://*.com.",
            "https://iam.amazonaws.com.",
            "https://a..example.com",
            "https://u@h.example.com",
            "x",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            AllowedOrigin::of_url("http://127.0.0.1:5000/some/path").unwrap(),
            AllowedOrigin::parse("http://127.0.0.1:5000").unwrap()
        );
        assert_eq!(
            AllowedOrigin::of_url("https://iam.example.internal").unwrap(),
            AllowedOrigin::parse("https://iam.example.internal:443").unwrap()
        );
    }

    #[test]
    fn a_wildcard_matches_exactly_one_label() {
        let list = AllowList::new(
            origins(&["https://sts.*.amazonaws.com", "https://iam.amazonaws.com"]),
            NetworkPolicy::default(),
        );
        assert!(allows(&list, "https://iam.amazonaws.com/"));
        assert!(allows(&list, "https://sts.eu-west-1.amazonaws.com/"));
        assert!(!allows(&list, "https://sts.amazonaws.com/"));
        assert!(!allows(&list, "https://sts.a.b.amazonaws.com/"));
        assert!(!allows(&list, "https://bucket.s3.amazonaws.com/"));
        assert!(!allows(
            &list,
            "https://abc.execute-api.us-east-1.amazonaws.com/"
        ));
        assert!(!allows(&list, "https://iam.amazonaws.com.evil.net/"));
        assert!(!allows(&list, "https://iam.amazonaws.com:8443/"));
        assert!(!allows(&list, "https://user:pw@iam.amazonaws.com/"));
        assert!(!allows(&list, "file:///etc/passwd"));
    }

    #[test]
    fn a_region_label_matches_region_names_only() {
        let list = AllowList::new(
            origins(&[
                "https://sts.{region}.amazonaws.com",
                "https://sts.{region}.amazonaws.com.cn",
            ]),
            NetworkPolicy::default(),
        );
        for ok in [
            "https://sts.eu-west-1.amazonaws.com/",
            "https://sts.us-gov-west-1.amazonaws.com/",
            "https://sts.ap-southeast-5.amazonaws.com/",
            "https://sts.cn-north-1.amazonaws.com.cn/",
        ] {
            assert!(allows(&list, ok), "{ok}");
        }
        // S3 buckets named "sts", and other customer-owned names.
        for bad in [
            "https://sts.s3.amazonaws.com/",
            "https://sts.s3-us-west-2.amazonaws.com/",
            "https://sts.s3-accelerate.amazonaws.com/",
            "https://sts.s3-external-1.amazonaws.com/",
            "https://sts.execute-api.amazonaws.com/",
            "https://sts.us-east-1a.amazonaws.com/",
            "https://sts.amazonaws.com/",
        ] {
            assert!(!allows(&list, bad), "{bad}");
        }
        assert!(AllowedOrigin::parse("https://sts.{regio}.amazonaws.com").is_err());
        assert!(AllowedOrigin::parse("https://sts.amazonaws.{region}").is_err());
    }

    #[test]
    fn plain_http_reaches_loopback_addresses_only_unless_allowed() {
        let declared = origins(&[
            "http://127.0.0.1:5000",
            "http://[::1]:5000",
            "http://localhost:5000",
            "http://iam.amazonaws.com",
        ]);
        let list = AllowList::new(declared.clone(), NetworkPolicy::default());
        assert!(allows(&list, "http://127.0.0.1:5000/"));
        assert!(allows(&list, "http://[::1]:5000/"));
        assert!(!allows(&list, "http://localhost:5000/"));
        let err = list
            .check(&Url::parse("http://iam.amazonaws.com/").unwrap())
            .unwrap_err();
        assert!(err.contains("--allow-http"), "{err}");
        let opted_in = AllowList::new(
            declared,
            NetworkPolicy {
                allow_http: true,
                ..NetworkPolicy::default()
            },
        );
        assert!(allows(&opted_in, "http://iam.amazonaws.com/"));
        assert!(allows(&opted_in, "http://localhost:5000/"));
    }

    #[test]
    fn the_operator_can_only_narrow() {
        let list = AllowList::new(
            origins(&["https://iam.amazonaws.com", "https://sts.*.amazonaws.com"]),
            NetworkPolicy {
                operator: Some(origins(&[
                    "https://sts.eu-west-1.amazonaws.com",
                    "https://evil.example.com",
                ])),
                ..NetworkPolicy::default()
            },
        );
        assert!(allows(&list, "https://sts.eu-west-1.amazonaws.com/"));
        let err = list
            .check(&Url::parse("https://iam.amazonaws.com/").unwrap())
            .unwrap_err();
        assert!(err.contains("--allow-host"), "{err}");
        // The operator cannot widen what the plugin declared.
        assert!(!allows(&list, "https://evil.example.com/"));
    }

    #[test]
    fn a_plugins_section_narrows_the_operators_list_further() {
        let policy = NetworkPolicy {
            operator: Some(origins(&["https://*.amazonaws.com"])),
            section: Some(origins(&["https://iam.amazonaws.com"])),
            ..NetworkPolicy::default()
        };
        let list = AllowList::new(origins(&["https://*.amazonaws.com"]), policy.clone());
        assert!(allows(&list, "https://iam.amazonaws.com/"));
        let err = list
            .check(&Url::parse("https://sts.amazonaws.com/").unwrap())
            .unwrap_err();
        assert!(err.contains("section"), "{err}");
        let named = AllowedOrigin::of_url("https://iam.amazonaws.com/").unwrap();
        assert!(policy.operator_allows(&named));
    }

    #[test]
    fn tcp_destinations_are_exact_hosts_and_ports() {
        for bad in ["tcp://db.example.com", "tcp://*.example.com:5432"] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
        let o = AllowedOrigin::of_url("tcp://DB.Example.com:5432").unwrap();
        assert_eq!(o.host, HostPattern::Exact("db.example.com".into()));
        assert!(AllowedOrigin::of_url("tcp://db.example.com").is_err());
        let list = AllowList::new(
            origins(&["tcp://db.example.com:5432", "https://db.example.com"]),
            NetworkPolicy::default(),
        );
        assert!(list.check_tcp("DB.example.com", 5432).is_ok());
        assert!(list.check_tcp("db.example.com", 5433).is_err());
        assert!(list.check_tcp("db.example.com", 443).is_err());
        assert!(list.check_tcp("other.example.com", 5432).is_err());
        // An https pattern never opens raw TCP, nor a tcp one HTTP.
        assert!(!allows(&list, "https://db.example.com:5432/"));
        let v6 = AllowList::new(origins(&["tcp://[::1]:5432"]), NetworkPolicy::default());
        assert!(v6.check_tcp("::1", 5432).is_ok());
    }
}
