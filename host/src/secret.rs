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
/// A safety net for text that comes from the guest (logs, errors, panics, URLs):
/// the guest is not supposed to put secrets there, and the host does not trust
/// it. Each secret is also caught percent-encoded (either case, `+` or `%20`)
/// and JSON-escaped, or in any token that decodes to it.
#[derive(Clone, Default)]
pub struct Redactor {
    /// The secrets as given; decoded tokens are compared with these.
    secrets: Vec<String>,
    /// Every form to replace: each secret and its encodings, longest first.
    forms: Vec<String>,
}

// Shorter values would mask ordinary words; real secrets are far longer.
const MIN_SECRET_LEN: usize = 6;

impl Redactor {
    /// Adds a value to mask from now on.
    pub fn add(&mut self, secret: &str) {
        let s = secret.trim();
        if s.len() < MIN_SECRET_LEN || self.secrets.iter().any(|k| k == s) {
            return;
        }
        self.secrets.push(s.to_string());
        let percent: String =
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let json = serde_json::to_string(s).expect("a string serialises");
        let json = &json[1..json.len() - 1];
        for form in [
            s.to_string(),
            url::form_urlencoded::byte_serialize(s.as_bytes()).collect(),
            percent.clone(),
            lower_hex_escapes(&percent),
            json.to_string(),
            json.replace('/', "\\/"),
            s.escape_debug().to_string(),
        ] {
            if !self.forms.contains(&form) {
                self.forms.push(form);
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        self.forms.sort_by_key(|k| std::cmp::Reverse(k.len()));
    }

    /// `text` with every known secret masked.
    pub fn redact(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_string();
        }
        let text = self
            .forms
            .iter()
            .fold(text.to_string(), |acc, s| acc.replace(s.as_str(), "***"));
        // Encodings mixed in ways the list above does not foresee: decode each
        // token that has escapes and mask it whole if it hides a secret.
        let mut out = String::with_capacity(text.len());
        for piece in text.split_inclusive(is_separator) {
            let (token, sep) = match piece.char_indices().last() {
                Some((i, c)) if is_separator(c) => piece.split_at(i),
                _ => (piece, ""),
            };
            if token.contains(['%', '\\', '+']) && self.hides_secret(token) {
                out.push_str("***");
            } else {
                out.push_str(token);
            }
            out.push_str(sep);
        }
        out
    }

    /// Invisible characters dropped, `redact`, then control and bidi
    /// characters escaped: text fit to print.
    pub fn clean(&self, text: &str) -> String {
        crate::text::printable(&self.redact(&crate::text::without_invisible(text)))
    }

    fn hides_secret(&self, token: &str) -> bool {
        let percent = percent_encoding::percent_decode_str(token).decode_utf8_lossy();
        let form = url::form_urlencoded::parse(format!("x={token}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let json = serde_json::from_str::<String>(&format!("\"{token}\"")).unwrap_or_default();
        [percent.as_ref(), form.as_str(), json.as_str()]
            .iter()
            .any(|decoded| self.secrets.iter().any(|s| decoded.contains(s.as_str())))
    }
}

fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}' | ',' | ';'
        )
}

/// `%2F` as `%2f`: percent-encoding is case-insensitive.
fn lower_hex_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
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
    fn redactor_masks_encoded_forms() {
        let secret = "wJalr/XUtn+FEMIK7MDENG";
        let mut r = Redactor::default();
        r.add(secret);
        let percent_upper = "wJalr%2FXUtn%2BFEMIK7MDENG";
        let percent_lower = "wJalr%2fXUtn%2bFEMIK7MDENG";
        let mixed = "wJalr/XUtn%2bFEMI%4B7MDENG";
        let json_unicode = "wJalr\\u002fXUtn\\u002bFEMIK7MDENG";
        for form in [secret, percent_upper, percent_lower, mixed, json_unicode] {
            let text = format!("GET https://evil.example/?k={form}&x=1 done");
            let out = r.redact(&text);
            assert!(!out.contains("XUtn"), "{form} leaked: {out}");
            assert!(out.ends_with(" done"), "{out}");
        }
        let json = serde_json::json!({ "k": secret }).to_string();
        assert!(!r.redact(&json).contains("XUtn"), "{}", r.redact(&json));
        assert_eq!(
            r.redact("nothing to see, 100% sure"),
            "nothing to see, 100% sure"
        );
    }

    #[test]
    fn invisible_characters_do_not_hide_a_secret() {
        let mut r = Redactor::default();
        r.add("wJalrXUtnFEMIK7MDENG");
        let split = "key w\u{200b}Jalr\u{ad}XUtn\u{2060}FEMI\u{feff}K7MDENG end";
        assert_eq!(r.clean(split), "key *** end");
        assert_eq!(r.clean("a\u{202e}b"), "a\\u{202e}b");
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
