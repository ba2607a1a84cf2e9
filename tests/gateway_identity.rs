//! The third way to sign: the host's own AWS identity, from the standard
//! credential chain (`aws-config`), tested source by source on loopback against
//! moto with signatures and policies enforced: environment variables, a profile
//! with `role_arn` and `source_profile`, a web identity token file, a fake ECS
//! container endpoint, and a fake IMDSv2 with its token handshake.
//!
//! Every run starts from an empty AWS environment (a fresh HOME, no `AWS_*`
//! variables, instance metadata off unless the test is about it), at
//! `RUST_LOG=trace`, and the leak scan covers the identity's secrets.

mod common;

use std::process::Command;

use common::*;
use test_support::metadata::{FakeMetadata, Served};
use test_support::moto::Moto;
use test_support::vault::{VaultFile, config_record, fleet_member, pam_user};

struct Setup {
    moto: Moto,
    /// The identity the host has; it may only assume roles, unless a test gives it more.
    rotator: (String, String),
    old: (String, String),
    home: tempfile::TempDir,
}

fn setup() -> Setup {
    let moto = Moto::start();
    moto.user("alice", None);
    moto.user("rotator", None);
    let rotator = moto.create_key("rotator");
    let old = moto.create_key("alice");
    Setup {
        moto,
        rotator,
        old,
        home: tempfile::tempdir().unwrap(),
    }
}

/// A config record with no credentials of its own.
fn vault(s: &Setup, extra: &[(&str, &str, &str)]) -> VaultFile {
    let mut fields = vec![
        ("text", "IAM Username", "alice"),
        ("text", "AWS Region", "us-east-1"),
        ("url", "AWS Endpoint URL", s.moto.url.as_str()),
        ("text", "Retry Deadline Seconds", "5"),
    ];
    fields.extend_from_slice(extra);
    VaultFile::new(vec![
        config_record("cfg1", &fields),
        pam_user("user1", "alice", Some(("aws_access_key_id", &s.old.0))),
    ])
}

/// `rotate-host run` in an empty AWS environment plus `env`.
/// `run` with `env`; a lent identity may reach moto, whose origin only the
/// record names, because the operator allows it (`--allow-host`).
fn run_with(s: &Setup, vault: &VaultFile, env: &[(&str, &str)], extra: &[&str]) -> Outcome {
    let path = vault.path.to_str().unwrap();
    let mut args = vec![
        "run", GUEST_WASM, "--vault", path, "-u", "user1", "-c", "cfg1",
    ];
    args.extend(extra);
    host_with(s, args, env)
}

/// `rotate-host ARGS` in an empty AWS environment plus `env`.
fn host_with<'a>(s: &'a Setup, mut args: Vec<&'a str>, env: &[(&str, &str)]) -> Outcome {
    if args.contains(&"--gateway-credentials") {
        args.extend(["--allow-host", s.moto.url.as_str()]);
    }
    let mut cmd: Command = command(&args);
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    let missing = s.home.path().join("absent");
    cmd.env("HOME", s.home.path())
        .env("AWS_CONFIG_FILE", &missing)
        .env("AWS_SHARED_CREDENTIALS_FILE", &missing)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run rotate-host").into()
}

/// The rotation worked: the vault's new key is alice's only key, and works.
fn assert_rotated(s: &Setup, vault: &VaultFile, out: &Outcome) {
    assert_eq!(out.code, 0, "{}", out.all());
    let (id, _) = assert_vault_key_works(&s.moto, vault, "user1", "alice");
    assert_ne!(id, s.old.0);
    assert_eq!(s.moto.keys("alice"), vec![id.clone()]);
}

/// No secret in the output, and nothing of the host's identity in the vault.
fn assert_unseen(vault: &VaultFile, out: &Outcome, identity: &[&str], records: &[&str]) {
    assert_no_secrets(&out.all(), &[identity, records].concat());
    let text = String::from_utf8(vault.bytes()).unwrap();
    for secret in identity {
        assert!(
            !text.contains(secret),
            "the vault holds the host's credential"
        );
    }
}

/// The signer the host used, from its log: temporary keys start with ASIA.
fn signer(out: &Outcome) -> String {
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("using the host's own AWS identity"))
        .unwrap_or_else(|| panic!("no identity line in:\n{}", out.stderr));
    line.rsplit("key=").next().unwrap().trim().to_string()
}

#[test]
fn environment_credentials_sign_when_lent_and_the_config_record_asks_for_them() {
    let s = setup();
    s.moto.user_with("envrotator", Some("alice"), &[]);
    let key = s.moto.create_key("envrotator");
    let vault = vault(&s, &[("text", "Use Gateway Credentials", "true")]);
    let env = [
        ("AWS_ACCESS_KEY_ID", key.0.as_str()),
        ("AWS_SECRET_ACCESS_KEY", key.1.as_str()),
    ];
    let out = run_with(
        &s,
        &vault,
        &env,
        &["--gateway-credentials", "--gateway-credentials-for", "cfg1"],
    );
    assert_rotated(&s, &vault, &out);
    assert_eq!(signer(&out), key.0);
    assert_unseen(&vault, &out, &[&key.1], &[&s.old.1]);
}

#[test]
fn a_profile_with_role_arn_and_source_profile_assumes_the_role() {
    let s = setup();
    let role = s.moto.role("profile-role", &s.rotator.0, &s.rotator.1);
    let config = s.home.path().join("config");
    let credentials = s.home.path().join("credentials");
    std::fs::write(
        &config,
        format!("[profile rotate]\nrole_arn = {role}\nsource_profile = base\nregion = us-east-1\n"),
    )
    .unwrap();
    std::fs::write(
        &credentials,
        format!(
            "[base]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s.rotator.0, s.rotator.1
        ),
    )
    .unwrap();
    let vault = vault(&s, &[]);
    let env = [
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_PROFILE", "rotate"),
        ("AWS_ENDPOINT_URL_STS", s.moto.url.as_str()),
    ];
    let out = run_with(&s, &vault, &env, &["--gateway-credentials"]);
    assert_rotated(&s, &vault, &out);
    // The role signed, not the source profile's key, which may only assume it.
    assert!(signer(&out).starts_with("ASIA"), "{}", signer(&out));
    assert_unseen(&vault, &out, &[&s.rotator.1], &[&s.old.1]);
}

#[test]
fn a_web_identity_token_file_is_exchanged_at_motos_sts() {
    let s = setup();
    let role = s.moto.role("web-role", &s.rotator.0, &s.rotator.1);
    let token_file = s.home.path().join("token");
    let token = "eyJhbGciOiJSUzI1NiJ9.web-identity-token-for-the-test.c2lnbmF0dXJl";
    std::fs::write(&token_file, token).unwrap();
    let vault = vault(&s, &[("text", "Use Gateway Credentials", "yes")]);
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ROLE_ARN", role.as_str()),
        ("AWS_ROLE_SESSION_NAME", "rotate-host"),
        ("AWS_ENDPOINT_URL_STS", s.moto.url.as_str()),
    ];
    // AssumeRoleWithWebIdentity is unsigned; moto checks everything after it.
    s.moto.unsigned_next(1);
    let out = run_with(&s, &vault, &env, &["--gateway-credentials"]);
    assert_rotated(&s, &vault, &out);
    assert!(signer(&out).starts_with("ASIA"), "{}", signer(&out));
    assert_unseen(&vault, &out, &[token, &s.rotator.1], &[&s.old.1]);
}

/// Temporary credentials of a role the rotator assumed, for the fakes to serve.
fn role_credentials(s: &Setup, role: &str) -> Served {
    let (key_id, secret, token) = s.moto.assume_role(role, &s.rotator.0, &s.rotator.1);
    Served {
        key_id,
        secret,
        token,
    }
}

#[test]
fn ecs_container_credentials_come_from_a_loopback_endpoint() {
    let s = setup();
    let served = role_credentials(&s, "ecs-role");
    let ecs = FakeMetadata::ecs(served.clone(), "ecs-authorization-token-42");
    let uri = format!("{}/creds", ecs.url);
    let vault = vault(&s, &[]);
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "ecs-authorization-token-42",
        ),
    ];
    let out = run_with(&s, &vault, &env, &["--gateway-credentials"]);
    assert_rotated(&s, &vault, &out);
    assert_eq!(signer(&out), served.key_id);
    assert_eq!(ecs.requests(), ["GET /creds 200"]);
    assert_unseen(
        &vault,
        &out,
        &[&served.secret, &served.token, "ecs-authorization-token-42"],
        &[&s.old.1],
    );
}

#[test]
fn imds_v2_credentials_come_after_the_token_handshake() {
    let s = setup();
    let served = role_credentials(&s, "instance-role");
    let imds = FakeMetadata::imds(served.clone());
    let vault = vault(&s, &[]);
    let env = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.as_str()),
    ];
    let out = run_with(&s, &vault, &env, &["--gateway-credentials"]);
    assert_rotated(&s, &vault, &out);
    assert_eq!(signer(&out), served.key_id);
    let requests = imds.requests();
    assert_eq!(requests[0], "PUT /latest/api/token 200", "{requests:?}");
    assert!(
        requests.contains(
            &"GET /latest/meta-data/iam/security-credentials/rotator-instance-role 200".into()
        ),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.ends_with(" 401")),
        "{requests:?}"
    );
    assert_unseen(
        &vault,
        &out,
        &[
            &served.secret,
            &served.token,
            test_support::metadata::IMDS_TOKEN,
        ],
        &[&s.old.1],
    );
}

/// Credentials in the records win: the host's (here unusable) identity is not used.
#[test]
fn the_records_credentials_win_over_the_gateways() {
    let s = setup();
    s.moto.user_with("cfgrotator", Some("alice"), &[]);
    let key = s.moto.create_key("cfgrotator");
    let vault = vault(
        &s,
        &[
            ("text", "Client ID", &key.0),
            ("secret", "Client Secret", &key.1),
        ],
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIAHOSTIDENTITY0000"),
        ("AWS_SECRET_ACCESS_KEY", "host-identity-secret-never-used"),
    ];
    let out = run_with(&s, &vault, &env, &["--gateway-credentials"]);
    assert_rotated(&s, &vault, &out);
    assert!(
        out.stderr.contains(&format!("as {} ->", key.0)),
        "the config's key did not sign:\n{}",
        out.stderr
    );
    assert_unseen(
        &vault,
        &out,
        &["host-identity-secret-never-used"],
        &[&key.1],
    );
}

#[test]
fn without_any_credentials_the_error_names_the_three_ways() {
    let s = setup();
    let vault = vault(&s, &[]);
    let before = vault.bytes();
    let out = run_with(&s, &vault, &[], &[]);
    out.expect(
        2,
        &["'Client ID'", "pamAwsAccessKeyId", "--gateway-credentials"],
    );
    assert_eq!(vault.bytes(), before);
    assert_eq!(s.moto.keys("alice"), vec![s.old.0.clone()]);
}

#[test]
fn an_empty_credential_chain_says_what_it_tried() {
    let s = setup();
    let vault = vault(&s, &[]);
    let before = vault.bytes();
    let out = run_with(&s, &vault, &[], &["--gateway-credentials"]);
    out.expect(
        1,
        &[
            "no source of the AWS credential chain has one",
            "Environment",
            "Ec2InstanceMetadata",
            "'Client ID'",
        ],
    );
    assert_eq!(vault.bytes(), before);
    assert_eq!(s.moto.keys("alice"), vec![s.old.0.clone()]);
}

/// An AWS profile's `credential_process`: the key it prints signs the rotation.
#[test]
fn a_credential_process_supplies_the_signing_key() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    s.moto.user_with("procrotator", Some("alice"), &[]);
    let key = s.moto.create_key("procrotator");
    let script = s.home.path().join("creds.sh");
    let answer = serde_json::json!({"Version": 1, "AccessKeyId": key.0, "SecretAccessKey": key.1});
    std::fs::write(&script, format!("#!/bin/sh\necho '{answer}'\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = s.home.path().join("config");
    std::fs::write(
        &config,
        format!("[default]\ncredential_process = {}\n", script.display()),
    )
    .unwrap();
    let vault = vault(&s, &[]);
    let env = [("AWS_CONFIG_FILE", config.to_str().unwrap())];
    let out = run_with(&s, &vault, &env, &["--gateway-credentials"]);
    assert_rotated(&s, &vault, &out);
    assert_eq!(signer(&out), key.0);
    assert_unseen(&vault, &out, &[&key.1], &[&s.old.1]);
}

/// Two records rotated in one pass with the host's identity from the ECS
/// endpoint: a credential that lapses within five minutes is fetched again
/// for the second rotation, one good until 2099 is fetched once.
#[test]
fn a_host_credential_about_to_lapse_is_fetched_again() {
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (expiration, fetches) in [(soon.as_str(), 2), ("2099-01-01T00:00:00Z", 1)] {
        let s = setup();
        s.moto.user("bob", None);
        let bob_old = s.moto.create_key("bob");
        let served = role_credentials(&s, "ecs-role");
        let ecs = FakeMetadata::ecs_until(served.clone(), "ecs-token-7", expiration);
        let uri = format!("{}/creds", ecs.url);
        let vault = VaultFile::new(vec![
            config_record(
                "cfg1",
                &[
                    ("text", "AWS Region", "us-east-1"),
                    ("url", "AWS Endpoint URL", s.moto.url.as_str()),
                    ("text", "Retry Deadline Seconds", "5"),
                ],
            ),
            fleet_member(
                "u-alice",
                "alice",
                Some(("aws_access_key_id", &s.old.0)),
                "cfg1",
                &[],
            ),
            fleet_member(
                "u-bob",
                "bob",
                Some(("aws_access_key_id", &bob_old.0)),
                "cfg1",
                &[],
            ),
        ]);
        let path = vault.path.to_str().unwrap();
        let env = [
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-token-7"),
        ];
        let args = vec![
            "due",
            GUEST_WASM,
            "--vault",
            path,
            "--jobs",
            "1",
            "--gateway-credentials",
            "--gateway-credentials-for",
            "cfg1",
        ];
        let out = host_with(&s, args, &env);
        assert_eq!(out.code, 0, "{expiration}: {}", out.all());
        assert!(out.stdout.contains("2 rotated, 0 failed"), "{}", out.stdout);
        assert_eq!(
            ecs.requests(),
            vec!["GET /creds 200"; fetches],
            "{expiration}"
        );
        assert_unseen(
            &vault,
            &out,
            &[&served.secret, &served.token, "ecs-token-7"],
            &[&s.old.1, &bob_old.1],
        );
    }
}

#[test]
fn a_plugin_from_a_folder_is_lent_the_identity_only_where_its_section_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    s.moto.user_with("envrotator", Some("alice"), &[]);
    let key = s.moto.create_key("envrotator");
    let env = [
        ("AWS_ACCESS_KEY_ID", key.0.as_str()),
        ("AWS_SECRET_ACCESS_KEY", key.1.as_str()),
    ];
    let mut doc = vault(&s, &[("text", "Use Gateway Credentials", "true")]).json();
    doc["records"][1] = fleet_member(
        "user1",
        "alice",
        Some(("aws_access_key_id", &s.old.0)),
        "cfg1",
        &[],
    );
    let vault = VaultFile::new(doc["records"].as_array().unwrap().clone());
    let before = vault.bytes();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(GUEST_WASM, plugins.path().join("aws.wasm")).unwrap();
    let settings = |section: &str| {
        let path = s.home.path().join("gateway.toml");
        let body = format!(
            "plugins = \"{}\"\nvault = \"{}\"\ngateway-credentials = true\n\
             gateway-credentials-for = [\"cfg1\"]\nallow-host = [\"{}\"]\n{section}",
            plugins.path().display(),
            vault.path.display(),
            s.moto.url
        );
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_string()
    };

    let refused = host_with(&s, vec!["due", "--config", &settings("")], &env);
    refused.expect(1, &[]);
    assert!(
        refused.stdout.contains("gateway-credentials = true")
            && refused.stdout.contains("[plugin.\"AWS Secret Key\"]"),
        "{}",
        refused.all()
    );
    assert_eq!(vault.bytes(), before);
    assert_eq!(s.moto.keys("alice"), vec![s.old.0.clone()]);

    let granted = settings("[plugin.\"AWS Secret Key\"]\ngateway-credentials = true\n");
    let out = host_with(&s, vec!["due", "--config", &granted], &env);
    assert_rotated(&s, &vault, &out);
    assert_eq!(signer(&out), key.0);
    assert_unseen(&vault, &out, &[&key.1], &[&s.old.1]);
}
