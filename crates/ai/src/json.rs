//! Typed access to JSON members that names the offending field on failure.

use serde_json::{Map, Value};

use crate::TranslateError;

pub(crate) type Object = Map<String, Value>;

/// `base.key`, or `key` at the root.
pub(crate) fn path(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

/// `base[index]`.
pub(crate) fn item(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

pub(crate) fn object<'a>(value: &'a Value, field: &str) -> Result<&'a Object, TranslateError> {
    value.as_object().ok_or_else(|| {
        TranslateError::invalid_type(if field.is_empty() { "body" } else { field }, "an object")
    })
}

/// A member that may be absent or null, else must be a string.
pub(crate) fn opt_str<'a>(
    object: &'a Object,
    key: &str,
    base: &str,
) -> Result<Option<&'a str>, TranslateError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(TranslateError::invalid_type(path(base, key), "a string")),
    }
}

pub(crate) fn req_str<'a>(
    object: &'a Object,
    key: &str,
    base: &str,
) -> Result<&'a str, TranslateError> {
    opt_str(object, key, base)?.ok_or_else(|| TranslateError::missing(path(base, key)))
}

pub(crate) fn opt_array<'a>(
    object: &'a Object,
    key: &str,
    base: &str,
) -> Result<Option<&'a Vec<Value>>, TranslateError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(TranslateError::invalid_type(path(base, key), "an array")),
    }
}

pub(crate) fn opt_object<'a>(
    object: &'a Object,
    key: &str,
    base: &str,
) -> Result<Option<&'a Object>, TranslateError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(member)) => Ok(Some(member)),
        Some(_) => Err(TranslateError::invalid_type(path(base, key), "an object")),
    }
}

pub(crate) fn opt_u64(
    object: &Object,
    key: &str,
    base: &str,
) -> Result<Option<u64>, TranslateError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .or_else(|| {
                // 1024.0 is a common way to write an integer.
                value
                    .as_f64()
                    .filter(|float| float.fract() == 0.0 && *float >= 0.0 && *float < 1e18)
                    .map(|float| float as u64)
            })
            .map(Some)
            .ok_or_else(|| TranslateError::invalid_type(path(base, key), "a non-negative integer")),
    }
}

pub(crate) fn opt_number(
    object: &Object,
    key: &str,
    base: &str,
) -> Result<Option<f64>, TranslateError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| TranslateError::invalid_type(path(base, key), "a number")),
    }
}

/// A number member copied as is (keeping integer or float form).
pub(crate) fn copy_number(
    from: &Object,
    from_key: &str,
    base: &str,
    to: &mut Object,
    to_key: &str,
) -> Result<(), TranslateError> {
    match from.get(from_key) {
        None | Some(Value::Null) => Ok(()),
        Some(value @ Value::Number(_)) => {
            to.insert(to_key.to_owned(), value.clone());
            Ok(())
        }
        Some(_) => Err(TranslateError::invalid_type(
            path(base, from_key),
            "a number",
        )),
    }
}

/// A u64 read leniently from an upstream answer (absent or odd means 0).
pub(crate) fn count(value: Option<&Value>) -> u64 {
    value.and_then(Value::as_u64).unwrap_or(0)
}
