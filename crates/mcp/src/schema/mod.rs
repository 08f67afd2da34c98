//! A small JSON Schema validator for tool inputs and prompt variables.
//!
//! [`validate`] reports every problem (up to [`MAX_ERRORS`]) with a JSON
//! Pointer to the offending value (`/city`, `/items/2`; `""` is the whole
//! value). [`check_schema`] is for saving a schema: it refuses what
//! [`validate`] would not enforce, so a stored schema never promises a check
//! that does not happen.
//!
//! Implemented (JSON Schema 2020-12, plus the draft-04…07 spellings that
//! OpenAPI documents use):
//! - any value: `type` (a name or an array of names; `integer` accepts any
//!   number with no fraction, `1.0` included), `enum`, `const` (numbers
//!   compare by value), `allOf`, `anyOf`, `oneOf`, `not`, `if`/`then`/`else`,
//!   `$ref` to a JSON Pointer inside the same schema (`#/$defs/…`,
//!   `#/definitions/…`), OpenAPI 3.0 `nullable: true`;
//! - numbers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`
//!   (numbers, or the draft-04 / OpenAPI 3.0 booleans), `multipleOf`;
//! - strings: `minLength`, `maxLength` (in Unicode code points, as the spec
//!   counts), `pattern` (ECMA-262 subset, see `pattern.rs`: no
//!   backreferences or lookaround; a search, not anchored);
//! - arrays: `items` (a schema, or the older array form with
//!   `additionalItems`), `prefixItems`, `minItems`, `maxItems`,
//!   `uniqueItems`, `contains` with `minContains` / `maxContains`;
//! - objects: `properties`, `required`, `additionalProperties` (boolean or
//!   schema), `patternProperties`, `propertyNames`, `minProperties`,
//!   `maxProperties`, `dependentRequired`, `dependentSchemas`, draft-07
//!   `dependencies`.
//!
//! `format` is an annotation (2020-12's default) and is not asserted; other
//! unknown keywords are annotations too. Not implemented, and therefore
//! refused by [`check_schema`] (ignored by [`validate`]):
//! `unevaluatedProperties`, `unevaluatedItems`, `$dynamicRef`,
//! `$recursiveRef`, a `$ref` that leaves the schema (never fetched: MCP
//! 2026-07-28 forbids dereferencing network `$ref`s by default), patterns
//! using unsupported syntax, and a `$schema` naming a dialect other than
//! 2020-12, 2019-09, draft-07, draft-06 or draft-04.
//!
//! Bounds: schema and value nesting of at most [`MAX_DEPTH`], at most
//! [`MAX_STEPS`] subschema evaluations per call (composition keywords can
//! otherwise multiply work), `$ref` chains of at most [`MAX_REF_DEPTH`], and
//! [`check_schema`] refuses schemas of more than [`MAX_SCHEMA_NODES`] nodes.

mod pattern;

use std::cell::Cell;
use std::fmt;

use serde_json::{Map, Number, Value};

pub(crate) use pattern::Pattern;

/// Errors reported by one [`validate`] call, at most.
pub const MAX_ERRORS: usize = 50;
/// Deepest nesting of schema or value followed.
pub const MAX_DEPTH: usize = 64;
/// Subschema evaluations per [`validate`] call.
pub const MAX_STEPS: usize = 100_000;
/// Longest chain of `$ref`s followed.
pub const MAX_REF_DEPTH: usize = 32;
/// Largest schema [`check_schema`] accepts, in JSON nodes.
pub const MAX_SCHEMA_NODES: usize = 10_000;

/// One problem with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// JSON Pointer to the value (`""` for the whole value, `/city` for a
    /// property, `/tags/0` for an item).
    pub path: String,
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The errors as one line: `"/city: is required; /days: must be >= 1"`.
pub fn describe(errors: &[SchemaError]) -> String {
    errors
        .iter()
        .map(SchemaError::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks `value` against `schema`; empty when valid.
pub fn validate(schema: &Value, value: &Value) -> Vec<SchemaError> {
    let validator = Validator {
        root: schema,
        steps: Cell::new(0),
    };
    let mut sink = Sink {
        errors: Vec::new(),
        limit: MAX_ERRORS,
    };
    let mut path = Vec::new();
    validator.check(schema, value, &mut path, 0, 0, &mut sink);
    sink.errors
}

struct Sink {
    errors: Vec<SchemaError>,
    limit: usize,
}

impl Sink {
    fn full(&self) -> bool {
        self.errors.len() >= self.limit
    }

    fn push(&mut self, path: &[String], message: String) {
        if !self.full() {
            self.errors.push(SchemaError {
                path: pointer(path),
                message,
            });
        }
    }
}

/// A JSON Pointer (RFC 6901) from path segments.
fn pointer(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        out.push('/');
        out.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    out
}

struct Validator<'a> {
    root: &'a Value,
    steps: Cell<usize>,
}

/// The JSON Schema type names a value has (an integer is also a number).
fn is_integer(n: &Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

fn has_type(value: &Value, name: &str) -> bool {
    match (name, value) {
        ("null", Value::Null) => true,
        ("boolean", Value::Bool(_)) => true,
        ("object", Value::Object(_)) => true,
        ("array", Value::Array(_)) => true,
        ("string", Value::String(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => is_integer(n),
        _ => false,
    }
}

/// JSON Schema equality: numbers by value, objects regardless of order.
pub(crate) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_equal(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| json_equal(x, y)))
        }
        _ => a == b,
    }
}

fn number_equal(x: &Number, y: &Number) -> bool {
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
        return x == y;
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

fn as_count(value: Option<&Value>) -> Option<usize> {
    value
        .and_then(Value::as_u64)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A `min…`/`max…` pair of keywords against `count` (characters, items,
/// properties); `message(bound, n)` words a refusal ("at least", 3).
fn check_count(
    schema: &Map<String, Value>,
    [min_key, max_key]: [&str; 2],
    count: usize,
    path: &[String],
    sink: &mut Sink,
    message: impl Fn(&str, usize) -> String,
) {
    if let Some(min) = as_count(schema.get(min_key))
        && count < min
    {
        sink.push(path, message("at least", min));
    }
    if let Some(max) = as_count(schema.get(max_key))
        && count > max
    {
        sink.push(path, message("at most", max));
    }
}

fn is_multiple(value: &Number, divisor: &Number) -> bool {
    if let (Some(value), Some(divisor)) = (value.as_i64(), divisor.as_i64())
        && divisor != 0
    {
        return value % divisor == 0;
    }
    if let (Some(value), Some(divisor)) = (value.as_u64(), divisor.as_u64())
        && divisor != 0
    {
        return value % divisor == 0;
    }
    match (value.as_f64(), divisor.as_f64()) {
        (Some(value), Some(divisor)) if divisor > 0.0 => {
            let quotient = value / divisor;
            (quotient - quotient.round()).abs() <= 1e-9 * quotient.abs().max(1.0)
        }
        _ => false,
    }
}

/// Resolves a same-document `$ref` (`#` or `#/json/pointer`).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let fragment = reference.strip_prefix('#')?;
    if fragment.is_empty() {
        return Some(root);
    }
    let decoded = percent_decode(fragment)?;
    root.pointer(&decoded)
}

fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Validator<'_> {
    /// Whether `value` is valid against `schema` (errors not kept).
    fn passes(
        &self,
        schema: &Value,
        value: &Value,
        path: &mut Vec<String>,
        depth: usize,
        refs: usize,
    ) -> bool {
        let mut sink = Sink {
            errors: Vec::new(),
            limit: 1,
        };
        self.check(schema, value, path, depth, refs, &mut sink);
        sink.errors.is_empty()
    }

    fn check(
        &self,
        schema: &Value,
        value: &Value,
        path: &mut Vec<String>,
        depth: usize,
        refs: usize,
        sink: &mut Sink,
    ) {
        if sink.full() {
            return;
        }
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        if steps > MAX_STEPS {
            sink.push(path, "schema too complex to evaluate".to_owned());
            return;
        }
        if depth > MAX_DEPTH {
            sink.push(path, "nested too deeply".to_owned());
            return;
        }
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                sink.push(path, "is not allowed".to_owned());
                return;
            }
            Value::Object(schema) => schema,
            // Not a schema: nothing to check (check_schema refuses it).
            _ => return,
        };

        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            if refs >= MAX_REF_DEPTH {
                sink.push(path, "$ref chain too long".to_owned());
                return;
            }
            if let Some(target) = resolve(self.root, reference) {
                self.check(target, value, path, depth + 1, refs + 1, sink);
            }
        }

        self.check_generic(schema, value, path, depth, refs, sink);
        match value {
            Value::Number(number) => self.check_number(schema, number, path, sink),
            Value::String(text) => self.check_string(schema, text, path, sink),
            Value::Array(items) => self.check_array(schema, items, path, depth, refs, sink),
            Value::Object(object) => self.check_object(schema, object, path, depth, refs, sink),
            _ => {}
        }
    }

    fn check_generic(
        &self,
        schema: &Map<String, Value>,
        value: &Value,
        path: &mut Vec<String>,
        depth: usize,
        refs: usize,
        sink: &mut Sink,
    ) {
        // OpenAPI 3.0's `nullable: true` admits null whatever the type.
        let null_ok = value.is_null() && schema.get("nullable") == Some(&Value::Bool(true));
        let type_message = match schema.get("type") {
            Some(Value::String(name)) if !null_ok && !has_type(value, name) => {
                Some(match name.as_str() {
                    "null" => "must be null".to_owned(),
                    name if name.starts_with(['a', 'i', 'o']) => format!("must be an {name}"),
                    name => format!("must be a {name}"),
                })
            }
            Some(Value::Array(names)) if !null_ok => {
                let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
                (!names.iter().any(|name| has_type(value, name)))
                    .then(|| format!("must be of type {}", names.join(" or ")))
            }
            _ => None,
        };
        if let Some(message) = type_message {
            sink.push(path, message);
        }
        if let Some(Value::Array(options)) = schema.get("enum")
            && !options.iter().any(|option| json_equal(option, value))
        {
            let listed: Vec<String> = options.iter().take(10).map(show).collect();
            let more = if options.len() > 10 { ", …" } else { "" };
            sink.push(path, format!("must be one of: {}{more}", listed.join(", ")));
        }
        if let Some(constant) = schema.get("const")
            && !json_equal(constant, value)
        {
            sink.push(path, format!("must be {}", show(constant)));
        }
        if let Some(Value::Array(all)) = schema.get("allOf") {
            for sub in all {
                self.check(sub, value, path, depth + 1, refs, sink);
            }
        }
        if let Some(Value::Array(any)) = schema.get("anyOf")
            && !any
                .iter()
                .any(|sub| self.passes(sub, value, path, depth + 1, refs))
        {
            sink.push(
                path,
                "must match at least one of the anyOf schemas".to_owned(),
            );
        }
        if let Some(Value::Array(one)) = schema.get("oneOf") {
            let matched = one
                .iter()
                .filter(|sub| self.passes(sub, value, path, depth + 1, refs))
                .count();
            if matched != 1 {
                sink.push(
                    path,
                    format!("must match exactly one of the oneOf schemas (matched {matched})"),
                );
            }
        }
        if let Some(not) = schema.get("not")
            && self.passes(not, value, path, depth + 1, refs)
        {
            sink.push(path, "must not match the \"not\" schema".to_owned());
        }
        if let Some(condition) = schema.get("if") {
            let branch = if self.passes(condition, value, path, depth + 1, refs) {
                schema.get("then")
            } else {
                schema.get("else")
            };
            if let Some(branch) = branch {
                self.check(branch, value, path, depth + 1, refs, sink);
            }
        }
    }

    fn check_number(
        &self,
        schema: &Map<String, Value>,
        number: &Number,
        path: &[String],
        sink: &mut Sink,
    ) {
        let Some(value) = number.as_f64() else {
            return;
        };
        // The bound as a number, and as written (for the message).
        let bound = |key: &str| {
            schema
                .get(key)
                .and_then(|raw| raw.as_f64().map(|limit| (limit, raw)))
        };
        // draft-04 / OpenAPI 3.0: a boolean exclusive flag modifies minimum.
        let exclusive_flag = |key: &str| schema.get(key).and_then(Value::as_bool).unwrap_or(false);
        if let Some((minimum, raw)) = bound("minimum") {
            if exclusive_flag("exclusiveMinimum") {
                if value <= minimum {
                    sink.push(path, format!("must be > {raw}"));
                }
            } else if value < minimum {
                sink.push(path, format!("must be >= {raw}"));
            }
        }
        if let Some((maximum, raw)) = bound("maximum") {
            if exclusive_flag("exclusiveMaximum") {
                if value >= maximum {
                    sink.push(path, format!("must be < {raw}"));
                }
            } else if value > maximum {
                sink.push(path, format!("must be <= {raw}"));
            }
        }
        if let Some((limit, raw)) = bound("exclusiveMinimum")
            && value <= limit
        {
            sink.push(path, format!("must be > {raw}"));
        }
        if let Some((limit, raw)) = bound("exclusiveMaximum")
            && value >= limit
        {
            sink.push(path, format!("must be < {raw}"));
        }
        if let Some(Value::Number(divisor)) = schema.get("multipleOf")
            && !is_multiple(number, divisor)
        {
            sink.push(path, format!("must be a multiple of {divisor}"));
        }
    }

    fn check_string(
        &self,
        schema: &Map<String, Value>,
        text: &str,
        path: &[String],
        sink: &mut Sink,
    ) {
        let length = text.chars().count();
        check_count(
            schema,
            ["minLength", "maxLength"],
            length,
            path,
            sink,
            |bound, n| {
                let unit = if n == 1 { "character" } else { "characters" };
                format!("must be {bound} {n} {unit} long")
            },
        );
        if let Some(source) = schema.get("pattern").and_then(Value::as_str)
            && let Ok(pattern) = Pattern::new(source)
            && !pattern.is_match(text)
        {
            sink.push(path, format!("must match the pattern {source}"));
        }
    }

    fn check_array(
        &self,
        schema: &Map<String, Value>,
        items: &[Value],
        path: &mut Vec<String>,
        depth: usize,
        refs: usize,
        sink: &mut Sink,
    ) {
        check_count(
            schema,
            ["minItems", "maxItems"],
            items.len(),
            path,
            sink,
            |bound, n| format!("must have {bound} {n} item(s)"),
        );
        if schema.get("uniqueItems") == Some(&Value::Bool(true)) {
            let duplicate = items
                .iter()
                .enumerate()
                .any(|(i, a)| items[i + 1..].iter().any(|b| json_equal(a, b)));
            if duplicate {
                sink.push(path, "must not contain duplicate items".to_owned());
            }
        }
        // Positional schemas: 2020-12 `prefixItems`, or the older array
        // form of `items` (then `additionalItems` covers the rest).
        let (positional, rest): (&[Value], Option<&Value>) =
            match (schema.get("prefixItems"), schema.get("items")) {
                (Some(Value::Array(prefix)), rest) => (prefix, rest),
                (None, Some(Value::Array(tuple))) => (tuple, schema.get("additionalItems")),
                (_, rest) => (&[], rest),
            };
        for (index, item) in items.iter().enumerate() {
            if sink.full() {
                return;
            }
            let sub = match positional.get(index) {
                Some(sub) => Some(sub),
                None => rest,
            };
            if let Some(sub) = sub {
                path.push(index.to_string());
                self.check(sub, item, path, depth + 1, refs, sink);
                path.pop();
            }
        }
        if let Some(contains) = schema.get("contains") {
            let found = items
                .iter()
                .enumerate()
                .filter(|(index, item)| {
                    path.push(index.to_string());
                    let ok = self.passes(contains, item, path, depth + 1, refs);
                    path.pop();
                    ok
                })
                .count();
            let min = as_count(schema.get("minContains")).unwrap_or(1);
            if found < min {
                sink.push(
                    path,
                    format!("must contain at least {min} item(s) matching \"contains\""),
                );
            }
            if let Some(max) = as_count(schema.get("maxContains"))
                && found > max
            {
                sink.push(
                    path,
                    format!("must contain at most {max} item(s) matching \"contains\""),
                );
            }
        }
    }

    fn check_object(
        &self,
        schema: &Map<String, Value>,
        object: &Map<String, Value>,
        path: &mut Vec<String>,
        depth: usize,
        refs: usize,
        sink: &mut Sink,
    ) {
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    path.push(name.to_owned());
                    sink.push(path, "is required".to_owned());
                    path.pop();
                }
            }
        }
        check_count(
            schema,
            ["minProperties", "maxProperties"],
            object.len(),
            path,
            sink,
            |bound, n| format!("must have {bound} {n} properties"),
        );
        let properties = schema.get("properties").and_then(Value::as_object);
        let patterns: Vec<(Pattern, &Value)> = schema
            .get("patternProperties")
            .and_then(Value::as_object)
            .map(|patterns| {
                patterns
                    .iter()
                    .filter_map(|(source, sub)| Pattern::new(source).ok().map(|p| (p, sub)))
                    .collect()
            })
            .unwrap_or_default();
        let additional = schema.get("additionalProperties");
        for (key, item) in object {
            if sink.full() {
                return;
            }
            path.push(key.clone());
            let mut covered = false;
            if let Some(sub) = properties.and_then(|properties| properties.get(key)) {
                covered = true;
                self.check(sub, item, path, depth + 1, refs, sink);
            }
            for (pattern, sub) in &patterns {
                if pattern.is_match(key) {
                    covered = true;
                    self.check(sub, item, path, depth + 1, refs, sink);
                }
            }
            if !covered {
                match additional {
                    Some(Value::Bool(false)) => {
                        sink.push(path, "is not an allowed property".to_owned());
                    }
                    Some(sub) => self.check(sub, item, path, depth + 1, refs, sink),
                    None => {}
                }
            }
            if let Some(names) = schema.get("propertyNames") {
                let name = Value::String(key.clone());
                let mut inner = Sink {
                    errors: Vec::new(),
                    limit: 1,
                };
                self.check(names, &name, path, depth + 1, refs, &mut inner);
                if let Some(error) = inner.errors.first() {
                    sink.push(path, format!("property name {}", error.message));
                }
            }
            path.pop();
        }
        // `dependentRequired` / `dependentSchemas`, and draft-07
        // `dependencies` which holds either.
        let mut dependents: Vec<(&String, &Value)> = Vec::new();
        for key in ["dependentRequired", "dependentSchemas", "dependencies"] {
            if let Some(Value::Object(map)) = schema.get(key) {
                dependents.extend(map.iter());
            }
        }
        for (trigger, dependent) in dependents {
            if !object.contains_key(trigger) {
                continue;
            }
            match dependent {
                Value::Array(names) => {
                    for name in names.iter().filter_map(Value::as_str) {
                        if !object.contains_key(name) {
                            path.push(name.to_owned());
                            sink.push(path, format!("is required when \"{trigger}\" is present"));
                            path.pop();
                        }
                    }
                }
                sub => {
                    let object = Value::Object(object.clone());
                    self.check(sub, &object, path, depth + 1, refs, sink);
                }
            }
        }
    }
}

/// Keywords whose value is one schema.
const SCHEMA_KEYWORDS: &[&str] = &[
    "additionalProperties",
    "additionalItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
];
/// Keywords whose value is an object of schemas.
const SCHEMA_MAP_KEYWORDS: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];
/// Keywords whose value is a non-empty array of schemas.
const SCHEMA_ARRAY_KEYWORDS: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value is a non-negative integer.
const COUNT_KEYWORDS: &[&str] = &[
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
];
/// Keywords that constrain values but that [`validate`] does not implement.
pub const UNSUPPORTED_KEYWORDS: &[&str] = &[
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$recursiveRef",
];
/// `$schema` values understood (with or without a trailing `#`).
const DIALECTS: &[&str] = &[
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2019-09/schema",
    "http://json-schema.org/draft-07/schema",
    "http://json-schema.org/draft-06/schema",
    "http://json-schema.org/draft-04/schema",
];
const TYPE_NAMES: &[&str] = &[
    "null", "boolean", "object", "array", "number", "string", "integer",
];

/// Checks that `schema` is a schema [`validate`] fully understands; the error
/// names the place (a JSON Pointer into the schema) and the problem.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    let mut nodes = 0usize;
    let mut path = Vec::new();
    check_node(schema, schema, &mut path, 0, &mut nodes).map_err(|message| {
        let at = pointer(&path);
        if at.is_empty() {
            format!("schema: {message}")
        } else {
            format!("schema {at}: {message}")
        }
    })
}

fn count_nodes(value: &Value, nodes: &mut usize) -> Result<(), String> {
    *nodes += 1;
    if *nodes > MAX_SCHEMA_NODES {
        return Err(format!("larger than {MAX_SCHEMA_NODES} JSON nodes"));
    }
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| count_nodes(item, nodes)),
        Value::Object(map) => map.values().try_for_each(|item| count_nodes(item, nodes)),
        _ => Ok(()),
    }
}

fn check_node(
    root: &Value,
    schema: &Value,
    path: &mut Vec<String>,
    depth: usize,
    nodes: &mut usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    *nodes += 1;
    if *nodes > MAX_SCHEMA_NODES {
        return Err(format!("larger than {MAX_SCHEMA_NODES} JSON nodes"));
    }
    let map = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(map) => map,
        _ => return Err("a schema must be an object or a boolean".to_owned()),
    };
    for (key, value) in map {
        path.push(key.clone());
        check_keyword(root, key, value, path, depth, nodes)?;
        path.pop();
    }
    Ok(())
}

fn check_keyword(
    root: &Value,
    key: &str,
    value: &Value,
    path: &mut Vec<String>,
    depth: usize,
    nodes: &mut usize,
) -> Result<(), String> {
    if UNSUPPORTED_KEYWORDS.contains(&key) {
        return Err(format!("the keyword {key} is not supported"));
    }
    if SCHEMA_KEYWORDS.contains(&key) {
        return check_node(root, value, path, depth + 1, nodes);
    }
    if SCHEMA_MAP_KEYWORDS.contains(&key) {
        let Value::Object(map) = value else {
            return Err("must be an object of schemas".to_owned());
        };
        for (name, sub) in map {
            if key == "patternProperties"
                && let Err(why) = Pattern::new(name)
            {
                return Err(why);
            }
            path.push(name.clone());
            check_node(root, sub, path, depth + 1, nodes)?;
            path.pop();
        }
        return Ok(());
    }
    if SCHEMA_ARRAY_KEYWORDS.contains(&key) {
        let Value::Array(items) = value else {
            return Err("must be an array of schemas".to_owned());
        };
        if items.is_empty() && key != "prefixItems" {
            return Err("must not be empty".to_owned());
        }
        for (index, sub) in items.iter().enumerate() {
            path.push(index.to_string());
            check_node(root, sub, path, depth + 1, nodes)?;
            path.pop();
        }
        return Ok(());
    }
    if COUNT_KEYWORDS.contains(&key) {
        return match value.as_u64() {
            Some(_) => Ok(()),
            None if value.as_f64().is_some_and(|f| f >= 0.0 && f.fract() == 0.0) => Ok(()),
            None => Err("must be a non-negative integer".to_owned()),
        };
    }
    match key {
        "items" => match value {
            Value::Array(items) => {
                for (index, sub) in items.iter().enumerate() {
                    path.push(index.to_string());
                    check_node(root, sub, path, depth + 1, nodes)?;
                    path.pop();
                }
                Ok(())
            }
            sub => check_node(root, sub, path, depth + 1, nodes),
        },
        "type" => {
            let names: Vec<&Value> = match value {
                Value::Array(names) if !names.is_empty() => names.iter().collect(),
                Value::String(_) => vec![value],
                _ => return Err("must be a type name or a non-empty array of them".to_owned()),
            };
            for name in names {
                match name.as_str() {
                    Some(name) if TYPE_NAMES.contains(&name) => {}
                    _ => return Err(format!("unknown type {}", show(name))),
                }
            }
            Ok(())
        }
        "enum" => match value {
            Value::Array(_) => count_nodes(value, nodes),
            _ => Err("must be an array".to_owned()),
        },
        "const" | "default" | "examples" | "example" => count_nodes(value, nodes),
        "required" => match value {
            Value::Array(names) if names.iter().all(Value::is_string) => Ok(()),
            _ => Err("must be an array of strings".to_owned()),
        },
        "minimum" | "maximum" => match value {
            Value::Number(_) => Ok(()),
            _ => Err("must be a number".to_owned()),
        },
        "exclusiveMinimum" | "exclusiveMaximum" => match value {
            Value::Number(_) | Value::Bool(_) => Ok(()),
            _ => Err("must be a number (or, in draft-04, a boolean)".to_owned()),
        },
        "multipleOf" => match value.as_f64() {
            Some(divisor) if divisor > 0.0 => Ok(()),
            _ => Err("must be a number greater than 0".to_owned()),
        },
        "pattern" => match value {
            Value::String(source) => Pattern::new(source).map(|_| ()),
            _ => Err("must be a string".to_owned()),
        },
        "uniqueItems" | "nullable" => match value {
            Value::Bool(_) => Ok(()),
            _ => Err("must be a boolean".to_owned()),
        },
        "dependentRequired" => match value {
            Value::Object(map)
                if map.values().all(|names| {
                    names
                        .as_array()
                        .is_some_and(|names| names.iter().all(Value::is_string))
                }) =>
            {
                Ok(())
            }
            _ => Err("must be an object of string arrays".to_owned()),
        },
        "dependencies" => {
            let Value::Object(map) = value else {
                return Err("must be an object".to_owned());
            };
            for (name, dependent) in map {
                path.push(name.clone());
                match dependent {
                    Value::Array(names) if names.iter().all(Value::is_string) => {}
                    Value::Array(_) => return Err("must be an array of strings".to_owned()),
                    sub => check_node(root, sub, path, depth + 1, nodes)?,
                }
                path.pop();
            }
            Ok(())
        }
        "$ref" => {
            let Some(reference) = value.as_str() else {
                return Err("must be a string".to_owned());
            };
            if !reference.starts_with('#') {
                return Err(format!(
                    "only references inside the schema (#/…) are supported, not {reference}"
                ));
            }
            match resolve(root, reference) {
                Some(Value::Object(_) | Value::Bool(_)) => Ok(()),
                Some(_) => Err(format!("{reference} does not point at a schema")),
                None => Err(format!("{reference} points at nothing")),
            }
        }
        "$schema" => {
            let dialect = value.as_str().unwrap_or("");
            let dialect = dialect.strip_suffix('#').unwrap_or(dialect);
            if DIALECTS.contains(&dialect) {
                Ok(())
            } else {
                Err(format!(
                    "unsupported dialect {}: use JSON Schema 2020-12",
                    show(value)
                ))
            }
        }
        // Annotations (`title`, `description`, `format`, `x-…`, …) and
        // unknown keywords constrain nothing.
        _ => Ok(()),
    }
}
