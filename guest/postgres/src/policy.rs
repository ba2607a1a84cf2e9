//! The password policy from the config record, in the shape of Keeper's
//! complexity rules (`LENGTH,UPPER,LOWER,DIGITS,SPECIAL`, as Commander's
//! `--complexity`), and a generator that meets it from a CSPRNG.

/// The policy when the config sets none: 32 characters, one of each class.
pub const DEFAULT_COMPLEXITY: &str = "32,1,1,1,1";
/// Specials when the config names none: safe in URLs' userinfo after
/// percent-encoding and in shells inside single quotes.
pub const DEFAULT_SPECIALS: &str = "!#%+-.:=?@^_~";

const MIN_LENGTH: usize = 12;
const MAX_LENGTH: usize = 256;

/// A policy that can be met: checked when it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    length: usize,
    /// Upper, lower, digits, specials: the alphabet of each, and its minimum.
    classes: Vec<(Vec<char>, usize)>,
}

const CLASS_NAMES: [&str; 4] = [
    "upper-case letters",
    "lower-case letters",
    "digits",
    "special characters",
];

impl Policy {
    /// Reads `complexity`, `specials` and `excluded` as the config gives
    /// them; the error says which rule cannot be met and how to fix it.
    pub fn parse(
        complexity: Option<&str>,
        specials: Option<&str>,
        excluded: Option<&str>,
    ) -> Result<Self, String> {
        let text = complexity.unwrap_or(DEFAULT_COMPLEXITY);
        let numbers: Vec<usize> = text
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("'Password Complexity' is '{}', not five whole numbers such as '{DEFAULT_COMPLEXITY}' (length, then the least upper-case, lower-case, digits and specials)", text.escape_debug()))?;
        let [length, mins @ ..] = numbers.as_slice() else {
            unreachable!("split yields one item at least")
        };
        if mins.len() != 4 {
            return Err(format!(
                "'Password Complexity' has {} numbers, not five: length, then the least upper-case, lower-case, digits and specials, such as '{DEFAULT_COMPLEXITY}'",
                numbers.len()
            ));
        }
        if !(MIN_LENGTH..=MAX_LENGTH).contains(length) {
            return Err(format!(
                "'Password Complexity' asks for {length} characters; use {MIN_LENGTH} to {MAX_LENGTH}"
            ));
        }
        let specials = specials.unwrap_or(DEFAULT_SPECIALS);
        if let Some(c) = specials.chars().find(|c| !c.is_ascii_punctuation()) {
            return Err(format!(
                "'Special Characters' holds '{}', which is not ASCII punctuation",
                c.escape_debug()
            ));
        }
        let excluded = excluded.unwrap_or("");
        let keep = |set: &mut dyn Iterator<Item = char>| -> Vec<char> {
            let mut v: Vec<char> = set.filter(|c| !excluded.contains(*c)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let alphabets = [
            keep(&mut ('A'..='Z')),
            keep(&mut ('a'..='z')),
            keep(&mut ('0'..='9')),
            keep(&mut specials.chars()),
        ];
        let classes: Vec<(Vec<char>, usize)> =
            alphabets.into_iter().zip(mins.iter().copied()).collect();
        for ((alphabet, min), name) in classes.iter().zip(CLASS_NAMES) {
            if *min > 0 && alphabet.is_empty() {
                return Err(format!(
                    "the policy asks for {min} {name}, but 'Excluded Characters' (or 'Special Characters') leaves none: allow some, or ask for 0"
                ));
            }
        }
        let least = mins.iter().try_fold(0usize, |sum, m| sum.checked_add(*m));
        if least.is_none_or(|least| least > *length) {
            let least = least.map_or("more than can be counted".into(), |l| l.to_string());
            return Err(format!(
                "'Password Complexity' asks for at least {least} characters of given classes in a password of {length}: lower the minimums or raise the length"
            ));
        }
        if classes.iter().all(|(a, _)| a.is_empty()) {
            return Err("'Excluded Characters' excludes every character: allow some".into());
        }
        Ok(Self {
            length: *length,
            classes,
        })
    }

    /// The length of the passwords it makes.
    pub fn length(&self) -> usize {
        self.length
    }

    /// A password that meets the policy: each class's minimum drawn from it,
    /// the rest from every allowed character, then shuffled. `fill` is the
    /// CSPRNG; every choice is unbiased (rejection sampling).
    pub fn generate(&self, fill: &mut dyn FnMut(&mut [u8])) -> String {
        let all: Vec<char> = self
            .classes
            .iter()
            .flat_map(|(a, _)| a.iter().copied())
            .collect();
        let mut chars: Vec<char> = Vec::with_capacity(self.length);
        for (alphabet, min) in &self.classes {
            for _ in 0..*min {
                chars.push(alphabet[below(alphabet.len(), fill)]);
            }
        }
        while chars.len() < self.length {
            chars.push(all[below(all.len(), fill)]);
        }
        for i in (1..chars.len()).rev() {
            chars.swap(i, below(i + 1, fill));
        }
        chars.into_iter().collect()
    }
}

/// A uniform number in `0..n` (n ≥ 1) from `fill`.
fn below(n: usize, fill: &mut dyn FnMut(&mut [u8])) -> usize {
    let n = n as u32;
    // The largest multiple of n that fits: values at or above it are redrawn.
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let mut b = [0u8; 4];
        fill(&mut b);
        let v = u32::from_le_bytes(b);
        if v < zone {
            return (v % n) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_random(b: &mut [u8]) {
        getrandom::fill(b).expect("the OS has randomness");
    }

    #[test]
    fn the_default_policy_makes_32_characters_with_every_class() {
        let p = Policy::parse(None, None, None).unwrap();
        for _ in 0..200 {
            let pw = p.generate(&mut os_random);
            assert_eq!(pw.chars().count(), 32);
            assert!(pw.chars().any(|c| c.is_ascii_uppercase()), "{pw}");
            assert!(pw.chars().any(|c| c.is_ascii_lowercase()), "{pw}");
            assert!(pw.chars().any(|c| c.is_ascii_digit()), "{pw}");
            assert!(pw.chars().any(|c| DEFAULT_SPECIALS.contains(c)), "{pw}");
        }
    }

    #[test]
    fn minimums_and_exclusions_hold() {
        let p = Policy::parse(Some("20, 5,5,5,5"), Some("!@"), Some("0OIl1@")).unwrap();
        for _ in 0..200 {
            let pw = p.generate(&mut os_random);
            assert_eq!(pw.len(), 20);
            assert_eq!(pw.chars().filter(char::is_ascii_uppercase).count(), 5);
            assert_eq!(pw.chars().filter(|c| *c == '!').count(), 5);
            assert!(!pw.chars().any(|c| "0OIl1@".contains(c)), "{pw}");
        }
    }

    #[test]
    fn two_passwords_differ() {
        let p = Policy::parse(None, None, None).unwrap();
        assert_ne!(p.generate(&mut os_random), p.generate(&mut os_random));
    }

    #[test]
    fn a_policy_that_cannot_be_met_is_refused_with_the_reason() {
        let cases = [
            (Some("16,5,5,5,5"), None, None, "at least 20"),
            (Some("16,0,0,2,0"), None, Some("0123456789"), "digits"),
            (Some("8,1,1,1,1"), None, None, "12 to 256"),
            (Some("32,1,1,1"), None, None, "not five"),
            (Some("12,4294967284,5,5,2"), None, None, "at least"),
            (
                Some("12,18446744073709551615,1,0,0"),
                None,
                None,
                "at least",
            ),
            (Some("long"), None, None, "five whole numbers"),
            (None, Some("ab"), None, "not ASCII punctuation"),
        ];
        for (complexity, specials, excluded, why) in cases {
            let e = Policy::parse(complexity, specials, excluded).unwrap_err();
            assert!(e.contains(why), "{complexity:?}: {e}");
        }
    }

    #[test]
    fn every_value_below_n_is_drawn_evenly() {
        // A counter as the random source: each 4-byte draw is the next number.
        let mut next = 0u32;
        let mut counting = |b: &mut [u8]| {
            b.copy_from_slice(&next.to_le_bytes());
            next = next.wrapping_add(1);
        };
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            seen[below(3, &mut counting)] += 1;
        }
        assert_eq!(seen, [100, 100, 100]);
    }
}
