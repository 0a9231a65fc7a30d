//! YAML documents read strictly into JSON values.
//!
//! Manifests are YAML, checked as JSON (`serde_path_to_error` over typed specs). Reading a
//! document straight into `serde_json::Value` would lose three things a user needs to hear about,
//! each with the field's path: a key given twice in one mapping (YAML says keys are unique; the
//! plain conversion keeps the last one silently), a number that is not finite (`.nan`, `.inf`
//! become JSON `null`, which then reads "expected f64, got null"), and an integer too large for
//! any field (which otherwise surfaces as "not valid YAML" with no path). This reader refuses all
//! three and says where.

use std::cell::RefCell;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlError {
    /// A well-formed document with a value that cannot stand: the field's dotted path (empty for
    /// the document itself) and what is wrong.
    Field { path: String, message: String },
    /// Not YAML at all (the parser's message, with its line and column).
    Syntax(String),
}

/// Reads one YAML document (as produced by `yaml_serde::Deserializer`) into a JSON value.
pub fn to_json<'de, D: Deserializer<'de>>(document: D) -> Result<Value, YamlError> {
    let found = RefCell::new(None);
    let seed = Strict {
        path: String::new(),
        found: &found,
    };
    match seed.deserialize(document) {
        Ok(v) => Ok(v),
        Err(e) => Err(match found.into_inner() {
            Some((path, message)) => YamlError::Field { path, message },
            None => YamlError::Syntax(e.to_string()),
        }),
    }
}

/// Builds a JSON value, remembering the first field problem (with its path) in `found`.
struct Strict<'a> {
    path: String,
    found: &'a RefCell<Option<(String, String)>>,
}

impl Strict<'_> {
    fn child(&self, segment: &str) -> Strict<'_> {
        Strict {
            path: if self.path.is_empty() {
                segment.to_owned()
            } else {
                format!("{}.{segment}", self.path)
            },
            found: self.found,
        }
    }

    fn item(&self, index: usize) -> Strict<'_> {
        Strict {
            path: format!("{}[{index}]", self.path),
            found: self.found,
        }
    }

    fn fail<E: serde::de::Error>(&self, message: String) -> E {
        let mut found = self.found.borrow_mut();
        if found.is_none() {
            *found = Some((self.path.clone(), message.clone()));
        }
        E::custom(message)
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(v) => Ok(Value::Number(v.into())),
            Err(_) => Err(self.fail(format!("{v} is out of range"))),
        }
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
        match u64::try_from(v) {
            Ok(v) => Ok(Value::Number(v.into())),
            Err(_) => Err(self.fail(format!("{v} is out of range"))),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| self.fail(format!("{v} is not a finite number")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.item(out.len()))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let Some(key) = key else {
                return Err(
                    self.fail("mapping keys must be strings (quote them: \"1\": …)".to_owned())
                );
            };
            if out.contains_key(&key) {
                return Err(self
                    .child(&key)
                    .fail::<A::Error>("the key is given twice in one mapping".to_owned()));
            }
            let value = map.next_value_seed(self.child(&key))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A mapping key: a string, or `None` for any other kind of key.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(A::Error::custom("a sequence cannot be a mapping key"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(A::Error::custom("a mapping cannot be a mapping key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Value, YamlError> {
        to_json(yaml_serde::Deserializer::from_str(text))
    }

    fn field(text: &str) -> (String, String) {
        match read(text) {
            Err(YamlError::Field { path, message }) => (path, message),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn plain_documents_read_as_json() {
        let v = read("a: 1\nb: [x, 2.5, true, null]\nc: {d: -3}\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": ["x", 2.5, true, null], "c": {"d": -3}})
        );
    }

    #[test]
    fn a_duplicate_key_is_named_with_its_path() {
        let (path, message) = field("spec:\n  kind: pooled\n  capacity: 5\n  kind: dedicated\n");
        assert_eq!(path, "spec.kind");
        assert!(message.contains("twice"), "{message}");
        assert_eq!(field("a: 1\na: 1\n").0, "a");
        assert_eq!(field("l: [{x: 1, x: 2}]\n").0, "l[0].x");
    }

    #[test]
    fn non_finite_and_huge_numbers_are_named() {
        assert_eq!(
            field("spec: {location: {lat: .nan}}\n"),
            (
                "spec.location.lat".to_owned(),
                "NaN is not a finite number".to_owned()
            )
        );
        assert_eq!(field("x: -.inf\n").0, "x");
        let (path, message) = field("spec:\n  capacity: 100000000000000000000\n");
        assert_eq!(path, "spec.capacity");
        assert!(message.contains("out of range"), "{message}");
    }

    #[test]
    fn broken_yaml_is_a_syntax_error() {
        assert!(matches!(read("a: [1, 2\n"), Err(YamlError::Syntax(_))));
    }
}
