//! The vault file indexed, not loaded as a tree: each record stays raw text
//! until it is read or changed. Duplicate keys are refused, and a rewrite is
//! minified byte for byte.

use std::collections::HashMap;
use std::io::{self, Write};
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
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
/// Checks what the host relies on; the content is parsed once, and only
/// records that are read or changed are ever built as values.
pub(super) fn index(text: &str) -> Result<Index, String> {
    let offset = |raw: &RawValue| {
        let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        start..start + raw.get().len()
    };
    // serde_json's messages give a position, never the content.
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
            serde_json::from_str::<NoDuplicateKeys>(raw.get())
                .map_err(|e| format!("top-level \"{key}\": {e}"))?;
            members.push((key, Member::Raw(offset(raw))));
        }
    }
    let raw_records =
        raw_records.ok_or("the top level must be an object with a \"records\" array")?;
    let mut records = Vec::with_capacity(raw_records.len());
    let mut by_uid = HashMap::with_capacity(raw_records.len());
    for (i, raw) in raw_records.into_iter().enumerate() {
        let n = i + 1;
        let entries: Entries<'_> = serde_json::from_str(raw.get())
            .map_err(|e| format!("record #{n} is not an object with unique keys ({e})"))?;
        serde_json::from_str::<NoDuplicateKeys>(raw.get())
            .map_err(|e| format!("record #{n}: {e}; remove one of the two"))?;
        let mut uid = None;
        for (key, value) in &entries.0 {
            match key.as_str() {
                "uid" => uid = serde_json::from_str::<String>(value.get()).ok(),
                "fields" | "custom" if !value.get().starts_with('[') => {
                    return Err(format!("record #{n}: \"{key}\" must be an array"));
                }
                _ => {}
            }
        }
        let uid = uid
            .filter(|u| !u.is_empty())
            .ok_or_else(|| format!("record #{n} has no \"uid\" string"))?;
        if by_uid.insert(uid.clone(), i).is_some() {
            return Err(format!("two records have the UID '{uid}'"));
        }
        records.push(Slot::Raw(offset(raw)));
    }
    Ok((members, records, by_uid))
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
                while let Some(key) = map.next_key::<String>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!(
                            "the key \"{key}\" appears twice"
                        )));
                    }
                    out.push((key, map.next_value()?));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Any JSON value in which no object has the same key twice: serde_json
/// would keep only the last, and a rewrite would silently drop the others.
struct NoDuplicateKeys;

/// serde_json (with `arbitrary_precision` and `raw_value`) hands a number
/// or raw value to a visitor as a one-key map under a key of this prefix.
/// An object in the file that spells such a key out would make every later
/// read of its record fail, so one is taken only as serde_json can read it.
const SERDE_JSON_TOKEN: &str = "$serde_json::private::";

/// A map whose first key `key` is one of serde_json's tokens: a number or a
/// raw value, or a record editor's imitation, refused.
fn token<'de, A: MapAccess<'de>>(
    key: String,
    first: bool,
    mut map: A,
) -> Result<NoDuplicateKeys, A::Error> {
    let text = map.next_value::<String>()?;
    let reads = if key.ends_with("Number") {
        text.parse::<serde_json::Number>().is_ok()
    } else {
        serde_json::from_str::<Value>(&text).is_ok()
    };
    if first && reads && map.next_key::<de::IgnoredAny>()?.is_none() {
        return Ok(NoDuplicateKeys);
    }
    Err(de::Error::custom(format!(
        "the key \"{}\" is reserved; rename it",
        crate::text::printable(&key)
    )))
}

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NoDuplicateKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicateKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key.starts_with(SERDE_JSON_TOKEN) {
                        return token(key, seen.is_empty(), map);
                    }
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!(
                            "the key \"{key}\" appears twice"
                        )));
                    }
                    map.next_value::<NoDuplicateKeys>()?;
                }
                Ok(NoDuplicateKeys)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicateKeys, A::Error> {
                while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
                Ok(NoDuplicateKeys)
            }
            fn visit_bool<E>(self, _: bool) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_unit<E>(self) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }
        }
        d.deserialize_any(V)
    }
}
