//! AWS partitions and the IAM and STS endpoints of a region.

use crate::error::PluginError;

/// A service endpoint and the region its requests are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, without a trailing slash.
    pub url: String,
    pub signing_region: String,
    /// SigV4 service name: `iam` or `sts`.
    pub service: &'static str,
    /// Query API version.
    pub version: &'static str,
}

/// Where IAM and STS requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub partition: &'static str,
    pub iam: Endpoint,
    pub sts: Endpoint,
}

/// The origins the plugin declares in `info`: the IAM host of each partition it
/// knows and their regional STS hosts (`{region}` is one region-shaped label).
/// Nothing else under `amazonaws.com`, where customers own names (S3 buckets,
/// API Gateway).
pub const ALLOWED_HOSTS: &[&str] = &[
    "https://iam.amazonaws.com",
    "https://iam.us-gov.amazonaws.com",
    "https://iam.cn-north-1.amazonaws.com.cn",
    "https://sts.{region}.amazonaws.com",
    "https://sts.{region}.amazonaws.com.cn",
];

const IAM_VERSION: &str = "2010-05-08";
const STS_VERSION: &str = "2011-06-15";

struct Partition {
    name: &'static str,
    iam_host: &'static str,
    iam_region: &'static str,
    dns_suffix: &'static str,
}

const AWS: Partition = Partition {
    name: "aws",
    iam_host: "iam.amazonaws.com",
    iam_region: "us-east-1",
    dns_suffix: "amazonaws.com",
};
const AWS_US_GOV: Partition = Partition {
    name: "aws-us-gov",
    iam_host: "iam.us-gov.amazonaws.com",
    iam_region: "us-gov-west-1",
    dns_suffix: "amazonaws.com",
};
const AWS_CN: Partition = Partition {
    name: "aws-cn",
    iam_host: "iam.cn-north-1.amazonaws.com.cn",
    iam_region: "cn-north-1",
    dns_suffix: "amazonaws.com.cn",
};

/// Checks that `region` looks like an AWS region name (`us-east-1`, `us-gov-west-1`, ...).
pub fn validate_region(region: &str) -> Result<(), PluginError> {
    let parts: Vec<&str> = region.split('-').collect();
    let well_formed = parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[0].len() == 2
        && parts[parts.len() - 1]
            .parse::<u16>()
            .is_ok_and(|n| n > 0 && n < 100);
    if well_formed {
        Ok(())
    } else {
        Err(PluginError::InvalidConfig(format!(
            "AWS Region '{region}' is not a region name: set it to one like 'us-east-1', \
             'us-gov-west-1' or 'cn-north-1' in the config record"
        )))
    }
}

fn partition_of(region: &str) -> Option<&'static Partition> {
    if region.starts_with("us-gov-") {
        Some(&AWS_US_GOV)
    } else if region.starts_with("cn-") {
        Some(&AWS_CN)
    } else if region.starts_with("us-iso") || region.starts_with("eu-isoe") {
        None
    } else {
        Some(&AWS)
    }
}

/// Checks an `AWS Endpoint URL` and returns it without a trailing slash.
pub fn validate_endpoint_url(url: &str) -> Result<&str, PluginError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() && !h.contains('@') && !url.contains(['?', '#']) => {
            Ok(url.trim_end_matches('/'))
        }
        _ => Err(PluginError::InvalidConfig(format!(
            "AWS Endpoint URL '{url}' is not an http:// or https:// URL with a host \
             (and no user, query or fragment): fix it or remove the field"
        ))),
    }
}

/// Resolves the endpoints for `region`, or sends everything to `endpoint_url`.
pub fn resolve(region: &str, endpoint_url: Option<&str>) -> Result<Endpoints, PluginError> {
    validate_region(region)?;
    let partition = partition_of(region);
    if let Some(url) = endpoint_url {
        let url = validate_endpoint_url(url)?;
        let p = partition.unwrap_or(&AWS);
        return Ok(Endpoints {
            partition: p.name,
            iam: iam(url.to_string(), p),
            sts: sts(url.to_string(), region),
        });
    }
    let p = partition.ok_or_else(|| {
        PluginError::InvalidConfig(format!(
            "AWS Region '{region}' is in a partition whose endpoints this plugin does not know: \
             set 'AWS Endpoint URL' in the config record to your IAM/STS endpoint"
        ))
    })?;
    Ok(Endpoints {
        partition: p.name,
        iam: iam(format!("https://{}", p.iam_host), p),
        sts: sts(format!("https://sts.{region}.{}", p.dns_suffix), region),
    })
}

fn iam(url: String, p: &Partition) -> Endpoint {
    Endpoint {
        url,
        signing_region: p.iam_region.to_string(),
        service: "iam",
        version: IAM_VERSION,
    }
}

fn sts(url: String, region: &str) -> Endpoint {
    Endpoint {
        url,
        signing_region: region.to_string(),
        service: "sts",
        version: STS_VERSION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every endpoint `resolve` can produce without an override is declared.
    #[test]
    fn declared_hosts_cover_every_partition() {
        for region in [
            "us-east-1",
            "eu-west-2",
            "us-gov-west-1",
            "us-gov-east-1",
            "cn-north-1",
            "cn-northwest-1",
        ] {
            let e = resolve(region, None).unwrap();
            for url in [&e.iam.url, &e.sts.url] {
                let host = url.strip_prefix("https://").unwrap();
                let declared = ALLOWED_HOSTS.iter().any(|p| {
                    let pattern = p.strip_prefix("https://").unwrap();
                    let (pl, hl): (Vec<_>, Vec<_>) =
                        (pattern.split('.').collect(), host.split('.').collect());
                    pl.len() == hl.len()
                        && pl.iter().zip(&hl).all(|(p, h)| *p == "{region}" || p == h)
                });
                assert!(declared, "{url} is not declared");
            }
        }
    }

    #[test]
    fn commercial_partition() {
        let e = resolve("eu-west-2", None).unwrap();
        assert_eq!(e.partition, "aws");
        assert_eq!(e.iam.url, "https://iam.amazonaws.com");
        assert_eq!(e.iam.signing_region, "us-east-1");
        assert_eq!(e.sts.url, "https://sts.eu-west-2.amazonaws.com");
        assert_eq!(e.sts.signing_region, "eu-west-2");
    }

    #[test]
    fn gov_cloud_partition() {
        let e = resolve("us-gov-east-1", None).unwrap();
        assert_eq!(e.partition, "aws-us-gov");
        assert_eq!(e.iam.url, "https://iam.us-gov.amazonaws.com");
        assert_eq!(e.iam.signing_region, "us-gov-west-1");
        assert_eq!(e.sts.url, "https://sts.us-gov-east-1.amazonaws.com");
    }

    #[test]
    fn china_partition() {
        let e = resolve("cn-northwest-1", None).unwrap();
        assert_eq!(e.partition, "aws-cn");
        assert_eq!(e.iam.url, "https://iam.cn-north-1.amazonaws.com.cn");
        assert_eq!(e.iam.signing_region, "cn-north-1");
        assert_eq!(e.sts.url, "https://sts.cn-northwest-1.amazonaws.com.cn");
    }

    #[test]
    fn endpoint_override_serves_both_services() {
        let e = resolve("us-east-1", Some("http://127.0.0.1:5000/")).unwrap();
        assert_eq!(e.iam.url, "http://127.0.0.1:5000");
        assert_eq!(e.sts.url, "http://127.0.0.1:5000");
        assert_eq!(e.iam.signing_region, "us-east-1");
        assert_eq!(e.sts.signing_region, "us-east-1");
    }

    #[test]
    fn iso_partition_needs_an_override() {
        let err = resolve("us-iso-east-1", None).unwrap_err();
        assert!(matches!(err, PluginError::InvalidConfig(m) if m.contains("AWS Endpoint URL")));
        assert!(resolve("us-iso-east-1", Some("https://iam.example.internal")).is_ok());
    }

    #[test]
    fn rejects_bad_regions_and_urls() {
        for bad in [
            "",
            "us-east",
            "US-EAST-1",
            "us-east-one",
            "useast1",
            "u-east-1",
            "us--1",
        ] {
            assert!(validate_region(bad).is_err(), "{bad} accepted");
        }
        for bad in [
            "ftp://x",
            "https://",
            "iam.amazonaws.com",
            "https://u:p@h",
            "http://h/?a=b",
        ] {
            assert!(validate_endpoint_url(bad).is_err(), "{bad} accepted");
        }
    }
}
