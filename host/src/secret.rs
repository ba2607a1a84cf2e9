//! Secret values, and the redaction of known secrets from text a guest hands us.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

/// No code panics while holding the redactor's lock.
const UNPOISONED: &str = "the redactor's lock is never poisoned";

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
///
/// One instance may see every record of a vault (vetting asks `subject` of
/// each), so adding a secret and masking a text must not cost more with each
/// secret known: both go through an index by first bytes (`Forms`). The
/// encodings of a secret are worked out when a text is first masked after
/// it was added, since most instances that see many secrets mask little.
#[derive(Default)]
pub struct Redactor {
    /// The secrets as given; decoded tokens are searched for these.
    secrets: Forms,
    /// Every form to replace, and the secrets whose forms are not in it yet.
    forms: Mutex<(Forms, Vec<Box<str>>)>,
}

// Shorter values would mask ordinary words; real secrets are far longer.
const MIN_SECRET_LEN: usize = 6;

impl Redactor {
    /// Adds a value to mask from now on.
    pub fn add(&mut self, secret: &str) {
        let s = secret.trim();
        if self.secrets.insert(s) {
            self.forms.get_mut().expect(UNPOISONED).1.push(s.into());
        }
    }

    /// Every form of `s` to replace: itself and its encodings.
    fn forms_of(s: &str) -> [String; 7] {
        let percent: String =
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let json = serde_json::to_string(s).expect("a string serialises");
        let json = &json[1..json.len() - 1];
        [
            s.to_string(),
            url::form_urlencoded::byte_serialize(s.as_bytes()).collect(),
            lower_hex_escapes(&percent),
            percent,
            json.to_string(),
            json.replace('/', "\\/"),
            s.escape_debug().to_string(),
        ]
    }

    /// `text` with every form of every known secret masked.
    fn mask(&self, text: &str) -> String {
        let mut forms = self.forms.lock().expect(UNPOISONED);
        let (index, pending) = &mut *forms;
        for s in pending.drain(..) {
            for form in Self::forms_of(&s) {
                index.insert(&form);
            }
        }
        index.mask(text)
    }

    /// `text` with every known secret masked.
    pub fn redact(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_string();
        }
        let text = self.mask(text);
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
            .any(|decoded| self.secrets.found_in(decoded))
    }
}

/// Strings of at least `MIN_SECRET_LEN` bytes, found in a text in one scan:
/// each is filed under its first bytes, then its length, so a text position
/// costs one lookup per length filed there and an insert costs one lookup,
/// however many strings share a start (a record editor can make thousands
/// that do). A full automaton would be rebuilt on every insert; vetting
/// inserts between scans.
#[derive(Default)]
struct Forms {
    /// By first `MIN_SECRET_LEN` bytes.
    by_start: HashMap<[u8; MIN_SECRET_LEN], ByLength>,
    count: usize,
}

/// Strings of one start, by length, longest first.
type ByLength = BTreeMap<Reverse<usize>, HashSet<Box<[u8]>>>;

impl Forms {
    /// Adds `s` unless it is too short or known; says whether it was added.
    fn insert(&mut self, s: &str) -> bool {
        let Some(start) = start_of(s.as_bytes(), 0) else {
            return false;
        };
        let same_length = self
            .by_start
            .entry(start)
            .or_default()
            .entry(Reverse(s.len()))
            .or_default();
        if !same_length.insert(s.as_bytes().into()) {
            return false;
        }
        self.count += 1;
        true
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The length of the longest string that starts at byte `at` of `text`.
    fn longest_at(&self, text: &[u8], at: usize) -> Option<usize> {
        let lengths = self.by_start.get(&start_of(text, at)?)?;
        lengths.iter().find_map(|(Reverse(len), strings)| {
            let candidate = text.get(at..at + len)?;
            strings.contains(candidate).then_some(*len)
        })
    }

    /// `text` with each leftmost, longest string replaced by `***`.
    fn mask(&self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let (mut at, mut copied) = (0, 0);
        while at < bytes.len() {
            match self.longest_at(bytes, at) {
                // A whole UTF-8 string matched, so both ends are char boundaries.
                Some(len) => {
                    out.push_str(&text[copied..at]);
                    out.push_str("***");
                    at += len;
                    copied = at;
                }
                None => at += 1,
            }
        }
        out.push_str(&text[copied..]);
        out
    }

    fn found_in(&self, text: &str) -> bool {
        (0..text.len()).any(|at| self.longest_at(text.as_bytes(), at).is_some())
    }
}

fn start_of(text: &[u8], at: usize) -> Option<[u8; MIN_SECRET_LEN]> {
    text.get(at..at + MIN_SECRET_LEN)?.try_into().ok()
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
        write!(f, "Redactor({} secrets)", self.secrets.count)
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

    /// Vetting hands one instance every record of a vault.
    #[test]
    fn a_redactor_of_twenty_thousand_secrets_masks_each() {
        let mut r = Redactor::default();
        let secret = |i: usize| format!("wJalr/{i:08}+EXAMPLEKEY");
        for i in 0..20_000 {
            r.add(&secret(i));
        }
        r.add(&secret(7));
        assert_eq!(format!("{r:?}"), "Redactor(20000 secrets)");
        for i in [0, 7, 19_999] {
            let text = format!("a {} b {} c", secret(i), secret(i).replace('/', "%2F"));
            assert_eq!(r.redact(&text), "a *** b *** c");
        }
        assert_eq!(r.redact("wJalr/00000000+EXAMPLE"), "wJalr/00000000+EXAMPLE");
    }

    /// Forms are worked out at the first mask after an add: a secret added
    /// after a text was masked is masked, in every form, from then on.
    #[test]
    fn a_secret_added_after_a_mask_is_masked_in_every_form() {
        let mut r = Redactor::default();
        r.add("first/secret+one");
        assert_eq!(r.redact("x first%2Fsecret%2Bone y"), "x *** y");
        r.add("second/secret+two");
        assert_eq!(
            r.redact("x second%2fsecret%2btwo y second\\/secret+two z"),
            "x *** y *** z"
        );
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
