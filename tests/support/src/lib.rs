//! Fakes and fixtures for rotate-host's integration tests.

pub mod fake_iam;
pub mod moto;
pub mod sigv4;
pub mod tls;
pub mod vault;

/// Panics if any of `secrets` appears in `text` (I3).
pub fn assert_no_secrets(text: &str, secrets: &[&str]) {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(
            !text.contains(s),
            "a secret leaked into the output:\n{text}"
        );
    }
}
