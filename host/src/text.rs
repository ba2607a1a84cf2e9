//! Text from a plugin or a server, made safe for a terminal, a log or JSON.

/// `text` with control characters (C0, DEL, C1) and bidirectional formatting
/// characters written as `\u{..}`: a plugin or server cannot forge log lines,
/// send terminal escapes, or reorder what the reader sees.
pub fn printable(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` without invisible characters (zero-width spaces and joiners, soft
/// hyphens, word joiners, byte-order marks, tag characters): they carry nothing
/// a reader needs, and left in they could split a secret so masking misses it.
pub fn without_invisible(text: &str) -> std::borrow::Cow<'_, str> {
    let invisible = |c: char| {
        matches!(
            c,
            '\u{00ad}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200d}'
                | '\u{2060}'..='\u{2064}'
                | '\u{feff}'
                | '\u{e0000}'..='\u{e007f}'
        )
    };
    if text.chars().any(invisible) {
        text.chars()
            .filter(|c| !invisible(*c))
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Controls, bidirectional formatting, and invisible characters (zero-width,
/// soft hyphen, line and paragraph separators, tags) that could hide or forge text.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// Whether a field's type or label says it holds a secret: a secret, a
/// password or a token, in any case.
pub fn looks_secret(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    s.contains("secret") || s.contains("password") || s.contains("token")
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_controls_and_bidi_and_keeps_the_rest() {
        assert_eq!(printable("AKIA ok é ✓"), "AKIA ok é ✓");
        assert_eq!(
            printable("a\nb\r\u{1b}[31m\u{9b}\u{7f}\u{202e}\u{2066}\u{200b}\u{ad}z"),
            "a\\u{a}b\\u{d}\\u{1b}[31m\\u{9b}\\u{7f}\\u{202e}\\u{2066}\\u{200b}\\u{ad}z"
        );
    }
}
