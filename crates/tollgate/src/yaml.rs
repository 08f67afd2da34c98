//! YAML for `tollgate export`: block style, and every string that a YAML
//! 1.1 reader (PyYAML, yq 3, many CI tools) would read as something else
//! written in double quotes: `no`, `on`, `y`, `2027-01-01`, `1:20`,
//! `0x1f`, `.5`, `~`. serde_norway's writer quotes only what a YAML 1.2
//! reader would misread, so an exported slug `no` came back from PyYAML
//! as `false`.
//!
//! A string is written plain only when nothing can misread it: it starts
//! with a letter, `_` or `/`, holds only ASCII letters, digits, spaces and
//! `_-./@`, does not end with a space, and is not a YAML 1.1 boolean or
//! null in any case. Anything else is a JSON string, which is also a YAML
//! double-quoted scalar.

use serde_json::{Map, Value};

/// `value` as a YAML document.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

/// The entries of `map` at `indent`; with `inline`, the first goes on the
/// current line (after a sequence's `- `).
fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize, inline: bool) {
    for (index, (key, value)) in map.iter().enumerate() {
        if index > 0 || !inline {
            pad(out, indent);
        }
        out.push_str(&string(key));
        out.push(':');
        write_value(out, value, indent, false);
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push('-');
        write_value(out, item, indent, true);
    }
}

/// What follows `key:` or `-`: a collection on the lines below (a
/// sequence item's mapping starts on its dash's line), else a scalar.
fn write_value(out: &mut String, value: &Value, indent: usize, item: bool) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push(if item { ' ' } else { '\n' });
            write_map(out, map, indent + 2, item);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar or an empty collection, on one line.
fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => string(text),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

fn string(text: &str) -> String {
    if is_plain(text) {
        text.to_owned()
    } else {
        // A JSON string is a YAML double-quoted scalar.
        Value::String(text.to_owned()).to_string()
    }
}

/// Words YAML 1.1 reads as booleans or null, in any case.
const RESERVED: [&str; 11] = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
];

fn is_plain(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_' || first == '/')
        && !text.ends_with(' ')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.' | '/' | '@'))
        && !RESERVED.contains(&text.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn misreadable_strings_are_quoted_and_the_document_reads_back() {
        let document = serde_json::json!({
            "teams": [{"slug": "no", "name": "On"}, {"slug": "acme", "name": "Acme Weather"}],
            "services": [{
                "slug": "weather",
                "base_path": "/weather",
                "sunset": "2027-01-01",
                "times": ["12:30:00", "1:20", "0x1f", ".5", "~", "-", "yes please", "café", "a: b", "x #y", " lead", ""],
                "limits": {"per": "minute", "requests": 10, "ratio": 0.5, "on": true, "none": null},
                "empty": {}, "nothing": [],
                "nested": [[1, 2], [{"a": "b"}]],
                "description": "two\nlines",
            }],
        });
        let text = to_string(&document);
        for quoted in [
            "\"no\"",
            "\"On\"",
            "\"2027-01-01\"",
            "\"12:30:00\"",
            "\"1:20\"",
            "\"0x1f\"",
            "\".5\"",
            "\"~\"",
            "\"-\"",
            "\"on\":",
            "\"\"",
            "\"two\\nlines\"",
        ] {
            assert!(text.contains(quoted), "{quoted} in:\n{text}");
        }
        for plain in [
            "slug: acme",
            "name: Acme Weather",
            "base_path: /weather",
            "per: minute",
        ] {
            assert!(text.contains(plain), "{plain} in:\n{text}");
        }
        let back: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(back, document, "{text}");
    }
}
