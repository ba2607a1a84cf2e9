//! Fakes and fixtures for rotate-host's integration tests.

pub mod fake_iam;
pub mod fake_ksm;
pub mod metadata;
pub mod moto;
pub mod postgres;
pub mod proxy;
pub mod sigv4;
pub mod tls;
pub mod vault;

/// I3 for secrets held as `String`s (what the fakes and the setups list):
/// `assert_no_secrets` over all of them.
pub fn assert_no_leak(text: &str, secrets: &[String]) {
    assert_no_secrets(
        text,
        &secrets.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

/// Panics if any of `secrets` appears in `text` (I3): as it is, form- or
/// percent-encoded (either case), or JSON-escaped. The test fails without
/// printing the output, which would show the secret.
pub fn assert_no_secrets(text: &str, secrets: &[&str]) {
    let lower = text.to_ascii_lowercase();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        let form: String = form_urlencoded::byte_serialize(s.as_bytes()).collect();
        let percent: String = s
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect();
        let json = serde_json::to_string(s).unwrap();
        let json = &json[1..json.len() - 1];
        let json_unicode: String = s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
        for (name, form) in [
            ("as it is", s.to_string()),
            ("form-encoded", form),
            ("JSON-escaped", json.to_string()),
            ("JSON-escaped with \\/", json.replace('/', "\\/")),
        ] {
            assert!(
                !text.contains(&form),
                "a secret leaked into the output ({name}):\n{}",
                text.replace(&form, "<THE SECRET>")
            );
        }
        // Percent-escapes and \u escapes are case-insensitive.
        for (name, form) in [
            ("percent-encoded", percent),
            ("JSON \\u-escaped", json_unicode),
        ] {
            assert!(
                !lower.contains(&form.to_ascii_lowercase()),
                "a secret leaked into the output ({name})"
            );
        }
    }
}
