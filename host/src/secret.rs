//! Secret values, and the redaction of known secrets from text a guest hands us.

use std::fmt;

/// A secret value. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: for the vault file and the guest only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replaces every known secret in a text with `***`.
///
/// A safety net for text that comes from the guest (logs, errors, panics): the
/// guest is not supposed to put secrets there, and the host does not trust it.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

// Shorter values would mask ordinary words; real secrets are far longer.
const MIN_SECRET_LEN: usize = 6;

impl Redactor {
    /// Adds a value to mask from now on.
    pub fn add(&mut self, secret: &str) {
        let s = secret.trim();
        if s.len() >= MIN_SECRET_LEN && !self.secrets.iter().any(|k| k == s) {
            self.secrets.push(s.to_string());
            // Longest first, so a secret that contains another is masked whole.
            self.secrets.sort_by_key(|k| std::cmp::Reverse(k.len()));
        }
    }

    /// `text` with every known secret masked.
    pub fn redact(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |acc, s| acc.replace(s.as_str(), "***"))
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_never_printed() {
        let s = Secret::new("wJalrXUtnFEMI");
        assert_eq!(s.to_string(), "***");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn redactor_masks_known_secrets_longest_first() {
        let mut r = Redactor::default();
        r.add("abcdef");
        r.add("abcdef123456");
        r.add("short");
        assert_eq!(
            r.redact("x abcdef123456 y abcdef z short"),
            "x *** y *** z short"
        );
        assert!(!format!("{r:?}").contains("abc"));
    }
}
