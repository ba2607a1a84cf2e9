//! A record read straight from its JSON text into the host's `Record`, as
//! `keeper_shape::to_record` reads it from a parsed `Value`, without building
//! the `Value` first: a pass reads every record of a vault, and the tree of
//! maps it would build and drop was most of that cost.
//!
//! Any JSON is taken, as `to_record` takes it: a non-string value reads as
//! its JSON text, a field that is not an object as an empty field, and a
//! `fields` or `custom` that is not a list as none.

use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::record::{Field, Record};
use crate::secret::Secret;

/// Record `text` (one JSON value, already checked to parse).
pub fn record_from_json(text: &str) -> Result<Record, serde_json::Error> {
    serde_json::from_str::<Shape>(text).map(|shape| shape.0)
}

/// A record: `uid`, `type` and `title` as text; `fields`, then `custom`.
struct Shape(Record);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let (mut uid, mut kind, mut title) = (String::new(), String::new(), String::new());
        let (mut fields, mut custom) = (vec![], vec![]);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Uid => uid = map.next_value::<Text>()?.0,
                Key::Type => kind = map.next_value::<Text>()?.0,
                Key::Title => title = map.next_value::<Text>()?.0,
                Key::Fields => fields = map.next_value::<Section>()?.0,
                Key::Custom => custom = map.next_value::<Section>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        fields.append(&mut custom);
        Ok(Shape(Record {
            uid,
            record_type: kind,
            title,
            fields,
        }))
    }
}

/// The keys of a record and of a field that are read; the rest are skipped.
/// (Matched on the key as read, unescaped, without allocating.)
enum Key {
    Uid,
    Type,
    Title,
    Fields,
    Custom,
    Label,
    Value,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: Error>(self, s: &str) -> Result<Key, E> {
        Ok(match s {
            "uid" => Key::Uid,
            "type" => Key::Type,
            "title" => Key::Title,
            "fields" => Key::Fields,
            "custom" => Key::Custom,
            "label" => Key::Label,
            "value" => Key::Value,
            _ => Key::Other,
        })
    }
}

/// Any JSON value as text: a string as itself, `null` as nothing, anything
/// else as its compact JSON.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: Error>(self, s: &str) -> Result<Text, E> {
        Ok(Text(s.to_owned()))
    }
    fn visit_string<E: Error>(self, s: String) -> Result<Text, E> {
        Ok(Text(s))
    }
    fn visit_unit<E: Error>(self) -> Result<Text, E> {
        Ok(Text(String::new()))
    }
    fn visit_none<E: Error>(self) -> Result<Text, E> {
        Ok(Text(String::new()))
    }
    fn visit_bool<E: Error>(self, b: bool) -> Result<Text, E> {
        Ok(Text(b.to_string()))
    }
    fn visit_i64<E: Error>(self, n: i64) -> Result<Text, E> {
        Ok(Text(n.to_string()))
    }
    fn visit_u64<E: Error>(self, n: u64) -> Result<Text, E> {
        Ok(Text(n.to_string()))
    }
    fn visit_f64<E: Error>(self, n: f64) -> Result<Text, E> {
        Ok(Text(Value::from(n).to_string()))
    }
    // Lists, objects, and numbers (which `arbitrary_precision` hands over as
    // a map): as a `Value` prints them.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text, A::Error> {
        Ok(Text(
            Value::deserialize(SeqAccessDeserializer::new(seq))?.to_string(),
        ))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
        Ok(Text(
            Value::deserialize(MapAccessDeserializer::new(map))?.to_string(),
        ))
    }
}

/// `fields` or `custom`: a list of fields, or none if it is not a list.
struct Section(Vec<Field>);

impl<'de> Deserialize<'de> for Section {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = d.deserialize_any(SectionVisitor)?;
        Ok(Section(list.unwrap_or_default()))
    }
}

/// Visits of scalars, each taken as `$value`: shapes that are read past.
macro_rules! scalars_as {
    ($value:expr) => {
        fn visit_str<E: Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

struct SectionVisitor;

impl<'de> Visitor<'de> for SectionVisitor {
    type Value = Option<Vec<Field>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of fields")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(FieldShape(f)) = seq.next_element()? {
            fields.push(f);
        }
        Ok(Some(fields))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    scalars_as!(None);
}

/// One field: `type` as text, `label` if it is a string, `value` as a list
/// of texts (a single value as a list of one).
struct FieldShape(Field);

impl<'de> Deserialize<'de> for FieldShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

fn empty_field() -> FieldShape {
    FieldShape(Field {
        kind: String::new(),
        label: None,
        values: vec![],
    })
}

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = FieldShape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FieldShape, A::Error> {
        let FieldShape(mut field) = empty_field();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => field.kind = map.next_value::<Text>()?.0,
                Key::Label => field.label = map.next_value::<Value>()?.as_str().map(str::to_owned),
                Key::Value => field.values = map.next_value::<Values>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(FieldShape(field))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FieldShape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(empty_field())
    }
    scalars_as!(empty_field());
}

/// A field's `value`: each item of a list as text, or one value as one.
struct Values(Vec<Secret>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValuesVisitor)
    }
}

struct ValuesVisitor;

fn one<E>(text: Result<Text, E>) -> Result<Values, E> {
    text.map(|t| Values(vec![Secret::new(t.0)]))
}

impl<'de> Visitor<'de> for ValuesVisitor {
    type Value = Values;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(Text(t)) = seq.next_element()? {
            values.push(Secret::new(t));
        }
        Ok(Values(values))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Values, A::Error> {
        one(TextVisitor.visit_map(map))
    }
    fn visit_str<E: Error>(self, s: &str) -> Result<Values, E> {
        one(TextVisitor.visit_str(s))
    }
    fn visit_string<E: Error>(self, s: String) -> Result<Values, E> {
        one(TextVisitor.visit_string(s))
    }
    fn visit_unit<E: Error>(self) -> Result<Values, E> {
        one(TextVisitor.visit_unit())
    }
    fn visit_bool<E: Error>(self, b: bool) -> Result<Values, E> {
        one(TextVisitor.visit_bool(b))
    }
    fn visit_i64<E: Error>(self, n: i64) -> Result<Values, E> {
        one(TextVisitor.visit_i64(n))
    }
    fn visit_u64<E: Error>(self, n: u64) -> Result<Values, E> {
        one(TextVisitor.visit_u64(n))
    }
    fn visit_f64<E: Error>(self, n: f64) -> Result<Values, E> {
        one(TextVisitor.visit_f64(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::keeper_shape::to_record;

    /// Every shape a record editor can write reads as `to_record` reads it.
    #[test]
    fn reads_every_shape_as_the_value_reader_does() {
        let records = [
            r#"{"uid":"u1","type":"pamUser","title":"t","fields":[{"type":"login","value":["ann"]}],"custom":[{"type":"secret","label":"k","value":["s3cr\u0065t/+"]}]}"#,
            r#"{"custom":[{"label":"first in the file","value":"one"}],"fields":[{"type":"x"}],"uid":7}"#,
            r#"{"uid":null,"type":true,"title":{"b":[1,2.50,"x"],"a":null},"fields":{"not":"a list"},"custom":"nor this"}"#,
            r#"{"fields":[1,"two",null,[3],{"label":5,"type":12345678901234567890123,"value":[null,1.0e3,{"k":"v"},[1],false,"é"]}]}"#,
            r#"{"fields":[{"value":null},{"value":{"a":1}},{"value":-0.0},{"value":[]}],"other":{"deep":[{"x":1}]}}"#,
            r#"{}"#,
        ];
        for text in records {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(record_from_json(text).unwrap(), to_record(&value), "{text}");
        }
    }
}
