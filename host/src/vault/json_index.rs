//! The vault file indexed, not loaded as a tree: each record stays raw text
//! until it is read or changed. Duplicate keys are refused, and a rewrite is
//! minified byte for byte.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::ops::Range;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// A top-level member of the file, kept raw, or the records array.
pub(super) enum Member {
    Raw(Range<usize>),
    Records,
}

/// One record: its raw text in the file, or its new content once changed.
#[derive(Clone)]
pub(super) enum Slot {
    Raw(Range<usize>),
    Changed(Value),
}

/// The positions of the whitespace between tokens of already-validated JSON.
fn gaps(json: &str) -> impl Iterator<Item = usize> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    json.bytes().enumerate().filter_map(move |(i, b)| {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return Some(i);
        }
        None
    })
}

/// Writes already-validated JSON without the whitespace between tokens: every
/// other byte, numbers and string escapes included, is copied as it is. This is
/// what keeps an untouched record byte-exact, and a rewrite linear in the file.
pub(super) fn minify(json: &str, out: &mut impl Write) -> io::Result<()> {
    let bytes = json.as_bytes();
    let mut start = 0;
    for i in gaps(json) {
        out.write_all(&bytes[start..i])?;
        start = i + 1;
    }
    out.write_all(&bytes[start..])
}

/// Whether `json` has no whitespace between tokens: `minify` would copy it
/// unchanged, so a rewrite may copy it as it is.
pub(super) fn is_minified(json: &str) -> bool {
    gaps(json).next().is_none()
}

pub(super) type Index = (Vec<(String, Member)>, Vec<Slot>, HashMap<String, usize>);

/// Indexes the file: its top-level members, each record's raw text and UID.
/// Checks what the host relies on; each record is parsed once, and only
/// records that are read or changed are ever built as values.
pub(super) fn index(text: &str) -> Result<Index, String> {
    let offset = |raw: &RawValue| {
        let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        start..start + raw.get().len()
    };
    // The messages give a position and a key, never a value.
    let top: Entries<'_> = serde_json::from_str(text)
        .map_err(|e| format!("not a JSON object with a \"records\" array ({e})"))?;
    let mut members = Vec::with_capacity(top.0.len());
    let mut raw_records: Option<Vec<&RawValue>> = None;
    for (key, raw) in top.0 {
        if key == "records" {
            raw_records = Some(
                serde_json::from_str(raw.get())
                    .map_err(|_| "\"records\" must be an array".to_string())?,
            );
            members.push((key, Member::Records));
        } else {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            Check::Value
                .deserialize(&mut de)
                .map_err(|e| format!("top-level \"{}\": {e}", crate::text::printable(&key)))?;
            members.push((key, Member::Raw(offset(raw))));
        }
    }
    let raw_records =
        raw_records.ok_or("the top level must be an object with a \"records\" array")?;
    let mut records = Vec::with_capacity(raw_records.len());
    let mut by_uid = HashMap::with_capacity(raw_records.len());
    for (i, raw) in raw_records.into_iter().enumerate() {
        let n = i + 1;
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let uid = match Check::Record.deserialize(&mut de) {
            Ok(Kind::Record(uid)) => uid,
            Ok(_) => unreachable!("a record check yields a record"),
            Err(e) => return Err(format!("record #{n}: {e}")),
        };
        let uid = uid
            .filter(|u| !u.is_empty())
            .ok_or_else(|| format!("record #{n} has no \"uid\" string"))?;
        if by_uid.insert(uid.clone(), i).is_some() {
            return Err(format!(
                "two records have the UID '{}'",
                crate::text::printable(&uid)
            ));
        }
        records.push(Slot::Raw(offset(raw)));
    }
    Ok((members, records, by_uid))
}

/// The error for a value that is not what was expected: its kind, never its content.
fn not<E: de::Error>(what: &str, expected: &str) -> E {
    E::custom(format_args!("{what}, not {expected}"))
}

/// An object's members in order, raw; a key given twice is an error.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut out: Vec<(String, &'de RawValue)> = Vec::new();
                let mut keys = Keys::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if key.starts_with(SERDE_JSON_TOKEN) {
                        token(&key, keys.is_empty(), map)?;
                        return Err(not("a number", "an object"));
                    }
                    if !keys.insert(key.clone()) {
                        return Err(twice(&key));
                    }
                    out.push((key.into_owned(), map.next_value()?));
                }
                Ok(Entries(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Entries<'de>, A::Error> {
                Err(not("an array", "an object"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Entries<'de>, E> {
                Err(not("a string", "an object"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Entries<'de>, E> {
                Err(not("a boolean", "an object"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Entries<'de>, E> {
                Err(not("a number", "an object"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Entries<'de>, E> {
                Err(not("a number", "an object"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Entries<'de>, E> {
                Err(not("a number", "an object"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Entries<'de>, E> {
                Err(not("null", "an object"))
            }
        }
        // `deserialize_any`: serde_json's own type errors quote a string's content.
        d.deserialize_any(V)
    }
}

/// serde_json (with `arbitrary_precision` and `raw_value`) hands a number
/// or raw value to a visitor as a one-key map under a key of this prefix.
/// An object in the file that spells such a key out would make every later
/// read of its record fail, so one is taken only as serde_json can read it.
const SERDE_JSON_TOKEN: &str = "$serde_json::private::";

fn reserved<E: de::Error>(key: &str) -> E {
    E::custom(format_args!(
        "the key \"{}\" is reserved; rename it",
        crate::text::printable(key)
    ))
}

fn twice<E: de::Error>(key: &str) -> E {
    E::custom(format_args!(
        "the key \"{}\" appears twice; remove one of the two",
        crate::text::printable(key)
    ))
}

/// A map whose first key `key` is one of serde_json's tokens: a number or a
/// raw value, or a record editor's imitation, refused.
fn token<'de, A: MapAccess<'de>>(key: &str, first: bool, mut map: A) -> Result<(), A::Error> {
    let text = map.next_value::<String>()?;
    let reads = if key.ends_with("Number") {
        text.parse::<serde_json::Number>().is_ok()
    } else {
        serde_json::from_str::<Value>(&text).is_ok()
    };
    if first && reads && map.next_key::<de::IgnoredAny>()?.is_none() {
        return Ok(());
    }
    Err(reserved(key))
}

/// A key, borrowed from the file unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The keys of one object so far: a list while short (most objects have a
/// handful), a hash set past that, so an object of many keys is still linear.
#[derive(Default)]
struct Keys<'de> {
    list: Vec<Cow<'de, str>>,
    set: HashSet<Cow<'de, str>>,
}

impl<'de> Keys<'de> {
    const LIST: usize = 16;

    /// Adds `key`; false if it was there already.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if self.list.len() < Self::LIST {
            if self.list.contains(&key) {
                return false;
            }
            self.list.push(key);
            return true;
        }
        if self.set.is_empty() {
            self.set.extend(self.list.iter().cloned());
        }
        self.set.insert(key)
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// What a checked value turned out to be.
enum Kind {
    /// A string; its text if it was asked for.
    Str(Option<String>),
    Array,
    Other,
    /// A record object, with its UID if it has a string one.
    Record(Option<String>),
}

/// Checks a value in one pass: no object in it has the same key twice
/// (serde_json would keep only the last, and a rewrite would silently drop
/// the others) or one of serde_json's token keys.
#[derive(Clone, Copy)]
enum Check {
    Value,
    /// A string whose text is wanted (a UID).
    Text,
    /// A record: an object, whose `fields` and `custom` are arrays.
    Record,
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = Kind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(self)
    }
}

impl Check {
    /// Anything but an object, as a record: an error naming its kind.
    fn scalar<E: de::Error>(self, what: &str) -> Result<Kind, E> {
        match self {
            Check::Record => Err(not(what, "an object")),
            _ => Ok(Kind::Other),
        }
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = Kind;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let record = matches!(self, Check::Record);
        let mut keys = Keys::default();
        let mut uid = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key.starts_with(SERDE_JSON_TOKEN) {
                token(&key, keys.is_empty(), map)?;
                // A number, as serde_json reads one.
                return self.scalar("a number");
            }
            let (is_uid, is_list) = (
                record && key == "uid",
                record && matches!(&*key, "fields" | "custom"),
            );
            if !keys.insert(key.clone()) {
                return Err(twice(&key));
            }
            let seed = if is_uid { Check::Text } else { Check::Value };
            match map.next_value_seed(seed)? {
                Kind::Str(text) if is_uid => uid = text,
                Kind::Array => {}
                _ if is_list => {
                    return Err(de::Error::custom(format_args!(
                        "\"{key}\" must be an array"
                    )));
                }
                _ => {}
            }
        }
        Ok(if record {
            Kind::Record(uid)
        } else {
            Kind::Other
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        if matches!(self, Check::Record) {
            return Err(not("an array", "an object"));
        }
        while seq.next_element_seed(Check::Value)?.is_some() {}
        Ok(Kind::Array)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        match self {
            Check::Text => Ok(Kind::Str(Some(v.to_owned()))),
            Check::Value => Ok(Kind::Str(None)),
            Check::Record => Err(not("a string", "an object")),
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
        self.scalar("a boolean")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
        self.scalar("a number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
        self.scalar("a number")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
        self.scalar("a number")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        self.scalar("null")
    }
}
