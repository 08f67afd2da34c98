//! Tools from OpenAPI documents: [`operations`] turns an OpenAPI 3.0.x or
//! 3.1.x document (as JSON) into one [`Operation`] per path and method, each
//! with a tool name and an input schema; [`build_call`] turns a tool call's
//! arguments back into the HTTP request the operation describes.
//!
//! Decisions:
//! - Tool names come from `operationId`, else `<method>_<path>`, reduced to
//!   MCP's tool-name alphabet (`A-Z a-z 0-9 _ - .`, 1–128 characters, 2025-11-25
//!   "Tool Names") and made unique within the document with `_2`, `_3`, ….
//!   Paths and methods are visited in sorted order, so names are stable.
//! - The input schema is an object with one property per parameter (named
//!   after the parameter; on a clash `<name>_<in>`) and `body` for the
//!   request body, `required` as declared, `additionalProperties: false`.
//! - `$ref`s inside the document (`#/components/...`, any JSON Pointer) are
//!   resolved and inlined; a reference to itself along the way (a recursive
//!   schema) becomes `{}` (anything) at the point of recursion, and chains,
//!   depth and total size are bounded. References to other documents are
//!   refused.
//! - OpenAPI 3.0 schemas are rewritten to JSON Schema: `nullable: true` adds
//!   `null`; boolean `exclusiveMinimum`/`exclusiveMaximum` become numbers.
//!   `readOnly` properties are dropped (they are not sent in requests); `xml`,
//!   `externalDocs`, `discriminator` and `x-mcp-header` are removed.
//! - Cookie parameters are not offered (a tool call cannot set cookies
//!   through the gateway); `Accept`, `Content-Type` and `Authorization`
//!   header parameters are ignored, as OpenAPI says. Path template variables
//!   that no parameter declares become required string parameters.
//! - Request body media type, in order of preference: `application/json`,
//!   any `*/*+json`, `application/x-www-form-urlencoded`, `text/*`, then the
//!   first listed (its value is sent as text).
//! - `servers` is not applied: paths are as written, relative to the
//!   service's base path.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

use crate::headers::valid_field_value;

/// Longest `$ref` chain followed.
const MAX_REF_CHAIN: usize = 32;
/// Deepest schema nesting expanded.
const MAX_SCHEMA_DEPTH: usize = 64;
/// Most JSON nodes produced while expanding one document's schemas.
const MAX_EXPANDED_NODES: usize = 500_000;
/// Longest tool name (MCP tool-name guidance).
pub const MAX_TOOL_NAME: usize = 128;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Path,
    Query,
    Header,
}

impl Location {
    fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
        }
    }
}

/// One parameter of an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The name in the request (path variable, query key, header name).
    pub name: String,
    /// The name of the tool argument (the input schema's property).
    pub arg: String,
    pub location: Location,
    pub required: bool,
    /// The JSON Schema of the value (references resolved).
    pub schema: Value,
    /// OpenAPI serialisation `style` (`form`, `simple`, `label`, `matrix`,
    /// `spaceDelimited`, `pipeDelimited`, `deepObject`).
    pub style: String,
    pub explode: bool,
    /// Declared with `content` instead of `schema`: sent as JSON text.
    pub json_encoded: bool,
}

/// The request body of an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct BodySpec {
    pub required: bool,
    /// The media type sent (`application/json`, …).
    pub content_type: String,
    pub schema: Value,
}

/// One operation of a document, as a tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub tool_name: String,
    pub operation_id: Option<String>,
    pub summary: Option<String>,
    pub description: Option<String>,
    pub deprecated: bool,
    /// Upper case: `GET`, `POST`, ….
    pub method: String,
    /// The path template as written, e.g. `/forecast/{city}`.
    pub path: String,
    pub params: Vec<Param>,
    pub body: Option<BodySpec>,
    /// The tool's input schema.
    pub input_schema: Value,
}

/// The HTTP request a tool call stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub method: String,
    /// The path with its variables filled in and percent-encoded.
    pub path: String,
    /// Query pairs, not yet encoded (see [`HttpCall::path_and_query`]).
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// Content type and bytes.
    pub body: Option<(String, Vec<u8>)>,
}

impl HttpCall {
    /// The request target: the path, then `?` and the percent-encoded query
    /// when there is one.
    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            return self.path.clone();
        }
        let query: Vec<String> = self
            .query
            .iter()
            .map(|(key, value)| format!("{}={}", percent_encode(key), percent_encode(value)))
            .collect();
        format!("{}?{}", self.path, query.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reduces `raw` to the MCP tool-name alphabet: each other character becomes
/// `_` unless one precedes it; no `_` at the ends; at most [`MAX_TOOL_NAME`]
/// characters; never empty (`operation`).
pub fn sanitize_tool_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let trimmed = out.trim_matches('_');
    let mut name: String = if trimmed.is_empty() {
        "operation".to_owned()
    } else {
        trimmed.to_owned()
    };
    name.truncate(MAX_TOOL_NAME);
    name
}

/// Appends `_2`, `_3`, … to `base` until the name is free, keeping it within
/// [`MAX_TOOL_NAME`].
fn unique(base: &str, taken: &mut HashSet<String>) -> String {
    if taken.insert(base.to_owned()) {
        return base.to_owned();
    }
    for n in 2.. {
        let suffix = format!("_{n}");
        let mut stem = base.to_owned();
        stem.truncate(MAX_TOOL_NAME - suffix.len());
        let candidate = format!("{stem}{suffix}");
        if taken.insert(candidate.clone()) {
            return candidate;
        }
    }
    base.to_owned()
}

struct Resolver<'a> {
    doc: &'a Value,
    openapi_30: bool,
    nodes: usize,
}

/// The object of a `$ref`, if `value` is one.
fn ref_of(value: &Value) -> Option<&str> {
    value.get("$ref").and_then(Value::as_str)
}

fn decode_pointer(reference: &str) -> Result<String, String> {
    let Some(fragment) = reference.strip_prefix('#') else {
        return Err(format!(
            "$ref {reference} points outside the document; only #/… references are supported"
        ));
    };
    if !fragment.contains('%') {
        return Ok(fragment.to_owned());
    }
    let bytes = fragment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = fragment
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("$ref {reference} is not UTF-8"))
}

impl<'a> Resolver<'a> {
    /// Follows `$ref` chains of a structural object (parameter, request
    /// body, path item) to its target.
    fn deref(&self, mut value: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..MAX_REF_CHAIN {
            let Some(reference) = ref_of(value) else {
                return Ok(value);
            };
            let pointer = decode_pointer(reference)?;
            value = self
                .doc
                .pointer(&pointer)
                .ok_or_else(|| format!("$ref {reference} points at nothing"))?;
        }
        Err("$ref chain too long".to_owned())
    }

    fn count(&mut self) -> Result<(), String> {
        self.nodes += 1;
        if self.nodes > MAX_EXPANDED_NODES {
            return Err("schemas too large to expand".to_owned());
        }
        Ok(())
    }

    /// A copy of `schema` with references inlined and OpenAPI specifics
    /// turned into JSON Schema.
    fn schema(
        &mut self,
        schema: &Value,
        stack: &mut Vec<String>,
        depth: usize,
    ) -> Result<Value, String> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err("schema nested too deeply".to_owned());
        }
        self.count()?;
        let map = match schema {
            Value::Object(map) => map,
            other => return Ok(other.clone()),
        };
        if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
            if stack.iter().any(|seen| seen == reference) || stack.len() >= MAX_REF_CHAIN {
                // Recursive: stop here, accepting anything.
                return Ok(json!({}));
            }
            let pointer = decode_pointer(reference)?;
            let target = self
                .doc
                .pointer(&pointer)
                .ok_or_else(|| format!("$ref {reference} points at nothing"))?;
            stack.push(reference.to_owned());
            let resolved = self.schema(target, stack, depth + 1);
            stack.pop();
            let resolved = resolved?;
            let mut siblings = map.clone();
            siblings.remove("$ref");
            if siblings.is_empty() {
                return Ok(resolved);
            }
            let mut wrapper = match self.schema(&Value::Object(siblings), stack, depth + 1)? {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            wrapper.insert("allOf".into(), Value::Array(vec![resolved]));
            return Ok(Value::Object(wrapper));
        }
        let mut out = Map::new();
        for (key, value) in map {
            match key.as_str() {
                // Data, not schemas.
                "enum" | "const" | "default" | "example" | "examples" => {
                    out.insert(key.clone(), value.clone());
                }
                "xml" | "externalDocs" | "discriminator" | "x-mcp-header" => {}
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => {
                    let mut properties = Map::new();
                    if let Value::Object(entries) = value {
                        for (name, sub) in entries {
                            properties.insert(name.clone(), self.schema(sub, stack, depth + 1)?);
                        }
                    }
                    out.insert(key.clone(), Value::Object(properties));
                }
                "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                    let mut items = Vec::new();
                    if let Value::Array(entries) = value {
                        for sub in entries {
                            items.push(self.schema(sub, stack, depth + 1)?);
                        }
                    }
                    out.insert(key.clone(), Value::Array(items));
                }
                "items"
                | "additionalProperties"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contains"
                | "propertyNames"
                | "additionalItems" => {
                    let sub = match value {
                        Value::Array(entries) => {
                            let mut items = Vec::new();
                            for sub in entries {
                                items.push(self.schema(sub, stack, depth + 1)?);
                            }
                            Value::Array(items)
                        }
                        sub => self.schema(sub, stack, depth + 1)?,
                    };
                    out.insert(key.clone(), sub);
                }
                _ => {
                    out.insert(key.clone(), value.clone());
                }
            }
        }
        drop_read_only(&mut out);
        if self.openapi_30 {
            convert_30(&mut out);
        }
        Ok(Value::Object(out))
    }
}

/// Removes `readOnly: true` properties (and their `required` entries).
fn drop_read_only(schema: &mut Map<String, Value>) {
    let Some(Value::Object(properties)) = schema.get_mut("properties") else {
        return;
    };
    let read_only: Vec<String> = properties
        .iter()
        .filter(|(_, sub)| sub.get("readOnly") == Some(&Value::Bool(true)))
        .map(|(name, _)| name.clone())
        .collect();
    if read_only.is_empty() {
        return;
    }
    for name in &read_only {
        properties.remove(name);
    }
    if let Some(Value::Array(required)) = schema.get_mut("required") {
        required.retain(|name| {
            name.as_str()
                .is_none_or(|name| !read_only.iter().any(|gone| gone == name))
        });
    }
}

/// OpenAPI 3.0 schema object → JSON Schema.
fn convert_30(schema: &mut Map<String, Value>) {
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if let Some(Value::Bool(exclusive)) = schema.get(flag).cloned() {
            schema.remove(flag);
            if exclusive && let Some(limit) = schema.remove(bound) {
                schema.insert(flag.into(), limit);
            }
        }
    }
    if schema.remove("nullable") != Some(Value::Bool(true)) {
        return;
    }
    if let Some(Value::Array(options)) = schema.get_mut("enum")
        && !options.contains(&Value::Null)
    {
        options.push(Value::Null);
    }
    match schema.get_mut("type") {
        Some(Value::String(name)) => {
            let name = name.clone();
            schema.insert("type".into(), json!([name, "null"]));
        }
        Some(Value::Array(names)) => {
            if !names.contains(&Value::from("null")) {
                names.push("null".into());
            }
        }
        _ => {
            let inner = Value::Object(std::mem::take(schema));
            schema.insert("anyOf".into(), json!([inner, {"type": "null"}]));
        }
    }
}

fn string_of(map: &Value, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Path template variables: `{city}` in `/forecast/{city}`.
fn template_variables(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            break;
        };
        out.push(after[..close].to_owned());
        rest = &after[close + 1..];
    }
    out
}

fn choose_media_type(content: &Map<String, Value>) -> Option<(&String, &Value)> {
    let lower = |key: &String| key.to_ascii_lowercase();
    let essence = |key: &String| lower(key).split(';').next().unwrap_or("").trim().to_owned();
    content
        .iter()
        .find(|(key, _)| essence(key) == "application/json")
        .or_else(|| {
            content
                .iter()
                .find(|(key, _)| essence(key).ends_with("+json"))
        })
        .or_else(|| {
            content
                .iter()
                .find(|(key, _)| essence(key) == "application/x-www-form-urlencoded")
        })
        .or_else(|| {
            content
                .iter()
                .find(|(key, _)| essence(key).starts_with("text/"))
        })
        .or_else(|| content.iter().next())
}

/// The operations of an OpenAPI 3.0.x / 3.1.x document.
pub fn operations(doc: &Value) -> Result<Vec<Operation>, String> {
    let version = match doc.get("openapi").and_then(Value::as_str) {
        Some(version) => version,
        None if doc.get("swagger").is_some() => {
            return Err("Swagger 2.0 documents are not supported; convert to OpenAPI 3".into());
        }
        None => return Err("not an OpenAPI document: no \"openapi\" version".into()),
    };
    let openapi_30 = version.starts_with("3.0.") || version == "3.0";
    if !openapi_30 && !version.starts_with("3.1.") && version != "3.1" {
        return Err(format!(
            "OpenAPI {version} is not supported; use 3.0.x or 3.1.x"
        ));
    }
    let mut resolver = Resolver {
        doc,
        openapi_30,
        nodes: 0,
    };
    let Some(paths) = doc.get("paths") else {
        return Ok(Vec::new());
    };
    let Value::Object(paths) = paths else {
        return Err("\"paths\" must be an object".into());
    };
    // Sorted, whatever order the JSON map keeps.
    let paths: BTreeMap<&String, &Value> = paths.iter().collect();
    let mut taken = HashSet::new();
    let mut out = Vec::new();
    for (path, item) in paths {
        if !path.starts_with('/') {
            continue; // `x-…` extensions
        }
        let item = resolver.deref(item)?;
        let shared = item.get("parameters");
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            out.push(
                operation_of(&mut resolver, path, method, operation, shared, &mut taken)
                    .map_err(|why| format!("{} {path}: {why}", method.to_ascii_uppercase()))?,
            );
        }
    }
    Ok(out)
}

fn operation_of(
    resolver: &mut Resolver<'_>,
    path: &str,
    method: &str,
    operation: &Value,
    shared: Option<&Value>,
    taken: &mut HashSet<String>,
) -> Result<Operation, String> {
    let operation_id = string_of(operation, "operationId");
    let base = match &operation_id {
        Some(id) => sanitize_tool_name(id),
        None => sanitize_tool_name(&format!("{method}_{path}")),
    };
    let tool_name = unique(&base, taken);

    // Path-level parameters, overridden by operation-level ones with the
    // same name and location.
    let mut declared: Vec<&Value> = Vec::new();
    for list in [shared, operation.get("parameters")].into_iter().flatten() {
        let Value::Array(list) = list else {
            return Err("\"parameters\" must be an array".into());
        };
        for parameter in list {
            let parameter = resolver.deref(parameter)?;
            let key = (string_of(parameter, "name"), string_of(parameter, "in"));
            declared
                .retain(|earlier| (string_of(earlier, "name"), string_of(earlier, "in")) != key);
            declared.push(parameter);
        }
    }

    let body = match operation.get("requestBody") {
        None => None,
        Some(body) => {
            let body = resolver.deref(body)?;
            let required = body
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let content = body.get("content").and_then(Value::as_object);
            match content.and_then(choose_media_type) {
                None => None,
                Some((content_type, media)) => {
                    let mut schema = match media.get("schema") {
                        Some(schema) => resolver.schema(schema, &mut Vec::new(), 0)?,
                        None => json!({}),
                    };
                    if let (Some(description), Value::Object(map)) =
                        (body.get("description"), &mut schema)
                    {
                        map.entry("description")
                            .or_insert_with(|| description.clone());
                    }
                    Some(BodySpec {
                        required,
                        content_type: content_type.clone(),
                        schema,
                    })
                }
            }
        }
    };

    let mut args: HashSet<String> = HashSet::new();
    if body.is_some() {
        args.insert("body".to_owned());
    }
    let mut params = Vec::new();
    for parameter in declared {
        let Some(name) = string_of(parameter, "name") else {
            return Err("a parameter has no name".into());
        };
        let location = match parameter.get("in").and_then(Value::as_str) {
            Some("path") => Location::Path,
            Some("query") => Location::Query,
            Some("header") => {
                let lower = name.to_ascii_lowercase();
                if matches!(lower.as_str(), "accept" | "content-type" | "authorization") {
                    continue;
                }
                Location::Header
            }
            Some("cookie") => continue,
            other => {
                return Err(format!(
                    "parameter {name}: unknown location {}",
                    other.unwrap_or("(none)")
                ));
            }
        };
        let required = location == Location::Path
            || parameter
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let (mut schema, json_encoded) = if let Some(schema) = parameter.get("schema") {
            (resolver.schema(schema, &mut Vec::new(), 0)?, false)
        } else if let Some((_, media)) = parameter
            .get("content")
            .and_then(Value::as_object)
            .and_then(|content| content.iter().next())
        {
            let schema = match media.get("schema") {
                Some(schema) => resolver.schema(schema, &mut Vec::new(), 0)?,
                None => json!({}),
            };
            (schema, true)
        } else {
            (json!({}), false)
        };
        if let (Some(description), Value::Object(map)) = (parameter.get("description"), &mut schema)
        {
            map.entry("description")
                .or_insert_with(|| description.clone());
        }
        let default_style = match location {
            Location::Query => "form",
            Location::Path | Location::Header => "simple",
        };
        let style = string_of(parameter, "style").unwrap_or_else(|| default_style.to_owned());
        let explode = parameter
            .get("explode")
            .and_then(Value::as_bool)
            .unwrap_or(style == "form");
        let arg = argument_name(&name, location, &mut args);
        params.push(Param {
            name,
            arg,
            location,
            required,
            schema,
            style,
            explode,
            json_encoded,
        });
    }
    for variable in template_variables(path) {
        let declared = params
            .iter()
            .any(|param| param.location == Location::Path && param.name == variable);
        if !declared {
            let arg = argument_name(&variable, Location::Path, &mut args);
            params.push(Param {
                name: variable,
                arg,
                location: Location::Path,
                required: true,
                schema: json!({"type": "string"}),
                style: "simple".to_owned(),
                explode: false,
                json_encoded: false,
            });
        }
    }

    let mut properties = Map::new();
    let mut required = Vec::new();
    for param in &params {
        properties.insert(param.arg.clone(), param.schema.clone());
        if param.required {
            required.push(Value::String(param.arg.clone()));
        }
    }
    if let Some(body) = &body {
        properties.insert("body".into(), body.schema.clone());
        if body.required {
            required.push("body".into());
        }
    }
    let mut input_schema = Map::new();
    input_schema.insert("type".into(), "object".into());
    input_schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        input_schema.insert("required".into(), Value::Array(required));
    }
    input_schema.insert("additionalProperties".into(), false.into());

    Ok(Operation {
        tool_name,
        operation_id,
        summary: string_of(operation, "summary"),
        description: string_of(operation, "description"),
        deprecated: operation
            .get("deprecated")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        method: method.to_ascii_uppercase(),
        path: path.to_owned(),
        params,
        body,
        input_schema: Value::Object(input_schema),
    })
}

/// The argument name of a parameter: its own name, else `<name>_<in>`, else
/// numbered.
fn argument_name(name: &str, location: Location, taken: &mut HashSet<String>) -> String {
    if taken.insert(name.to_owned()) {
        return name.to_owned();
    }
    let qualified = format!("{name}_{}", location.as_str());
    if taken.insert(qualified.clone()) {
        return qualified;
    }
    for n in 2.. {
        let candidate = format!("{qualified}_{n}");
        if taken.insert(candidate.clone()) {
            return candidate;
        }
    }
    qualified
}

/// A primitive as text (`null` as empty).
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The request `op` describes, with `arguments` (an object) filled in.
/// Refuses unknown arguments and missing required ones, naming them; the
/// values' types are the input schema's business (validate first).
pub fn build_call(op: &Operation, arguments: &Value) -> Result<HttpCall, String> {
    let empty = Map::new();
    let arguments = match arguments {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => return Err("arguments must be a JSON object".to_owned()),
    };
    for key in arguments.keys() {
        let known =
            op.params.iter().any(|param| &param.arg == key) || (key == "body" && op.body.is_some());
        if !known {
            return Err(format!("unknown argument `{key}`"));
        }
    }
    for param in &op.params {
        let missing = arguments.get(&param.arg).is_none_or(Value::is_null);
        if param.required && missing {
            return Err(format!("missing required argument `{}`", param.arg));
        }
    }
    if let Some(body) = &op.body
        && body.required
        && arguments.get("body").is_none_or(Value::is_null)
    {
        return Err("missing required argument `body`".to_owned());
    }

    let mut path = op.path.clone();
    let mut query = Vec::new();
    let mut headers = Vec::new();
    for param in &op.params {
        let Some(value) = arguments.get(&param.arg).filter(|value| !value.is_null()) else {
            continue;
        };
        match param.location {
            Location::Path => {
                let text = path_value(param, value)?;
                path = path.replace(&format!("{{{}}}", param.name), &text);
            }
            Location::Query => query.extend(query_pairs(param, value)),
            Location::Header => {
                let text = if param.json_encoded {
                    value.to_string()
                } else {
                    simple_text(value, param.explode)
                };
                if !valid_field_value(&text) {
                    return Err(format!(
                        "argument `{}` cannot be sent as a header: it contains control or \
                         non-ASCII characters",
                        param.arg
                    ));
                }
                headers.push((param.name.clone(), text));
            }
        }
    }
    let body = match (&op.body, arguments.get("body")) {
        (Some(spec), Some(value)) if !value.is_null() => Some((
            spec.content_type.clone(),
            body_bytes(&spec.content_type, value)?,
        )),
        _ => None,
    };
    Ok(HttpCall {
        method: op.method.clone(),
        path,
        query,
        headers,
        body,
    })
}

/// `simple` style: `a,b,c`; objects `k,v,k,v` (or `k=v,k=v` exploded).
fn simple_text(value: &Value, explode: bool) -> String {
    match value {
        Value::Array(items) => items.iter().map(scalar_text).collect::<Vec<_>>().join(","),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| {
                if explode {
                    format!("{key}={}", scalar_text(value))
                } else {
                    format!("{key},{}", scalar_text(value))
                }
            })
            .collect::<Vec<_>>()
            .join(","),
        other => scalar_text(other),
    }
}

/// One path variable, serialised and percent-encoded.
fn path_value(param: &Param, value: &Value) -> Result<String, String> {
    let pieces: Vec<String> = if param.json_encoded {
        vec![value.to_string()]
    } else {
        match value {
            Value::Array(items) => items.iter().map(scalar_text).collect(),
            Value::Object(map) => map
                .iter()
                .flat_map(|(key, value)| [key.clone(), scalar_text(value)])
                .collect(),
            other => vec![scalar_text(other)],
        }
    };
    let whole = pieces.join(",");
    if whole.is_empty() || whole == "." || whole == ".." {
        return Err(format!(
            "argument `{}` must not be empty, `.` or `..` (it fills a path segment)",
            param.arg
        ));
    }
    let encoded: Vec<String> = pieces.iter().map(|piece| percent_encode(piece)).collect();
    Ok(match param.style.as_str() {
        "label" => {
            let separator = if param.explode { "." } else { "," };
            format!(".{}", encoded.join(separator))
        }
        "matrix" => {
            let name = percent_encode(&param.name);
            if param.explode && value.is_array() {
                encoded
                    .iter()
                    .map(|piece| format!(";{name}={piece}"))
                    .collect()
            } else {
                format!(";{name}={}", encoded.join(","))
            }
        }
        _ => {
            if param.explode && value.is_object() {
                // k=v,k=v: the pieces alternate key, value.
                encoded
                    .chunks(2)
                    .map(|pair| pair.join("="))
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                encoded.join(",")
            }
        }
    })
}

/// Query pairs of one parameter (not yet encoded).
fn query_pairs(param: &Param, value: &Value) -> Vec<(String, String)> {
    let name = param.name.clone();
    if param.json_encoded {
        return vec![(name, value.to_string())];
    }
    match (param.style.as_str(), value) {
        ("deepObject", Value::Object(map)) => map
            .iter()
            .map(|(key, value)| (format!("{name}[{key}]"), scalar_text(value)))
            .collect(),
        ("spaceDelimited", Value::Array(items)) => vec![(
            name,
            items.iter().map(scalar_text).collect::<Vec<_>>().join(" "),
        )],
        ("pipeDelimited", Value::Array(items)) => vec![(
            name,
            items.iter().map(scalar_text).collect::<Vec<_>>().join("|"),
        )],
        (_, Value::Array(items)) if param.explode => items
            .iter()
            .map(|item| (name.clone(), scalar_text(item)))
            .collect(),
        (_, Value::Object(map)) if param.explode => map
            .iter()
            .map(|(key, value)| (key.clone(), scalar_text(value)))
            .collect(),
        (_, other) => vec![(name, simple_text(other, false))],
    }
}

fn body_bytes(content_type: &str, value: &Value) -> Result<Vec<u8>, String> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        return serde_json::to_vec(value).map_err(|e| format!("argument `body`: {e}"));
    }
    if essence == "application/x-www-form-urlencoded" {
        let Value::Object(map) = value else {
            return Err("argument `body` must be an object (it is sent as form fields)".to_owned());
        };
        let mut pairs = Vec::new();
        for (key, value) in map {
            match value {
                Value::Null => {}
                Value::Array(items) => {
                    for item in items {
                        pairs.push(format!(
                            "{}={}",
                            percent_encode(key),
                            percent_encode(&form_text(item))
                        ));
                    }
                }
                other => pairs.push(format!(
                    "{}={}",
                    percent_encode(key),
                    percent_encode(&form_text(other))
                )),
            }
        }
        return Ok(pairs.join("&").into_bytes());
    }
    Ok(match value {
        Value::String(text) => text.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    })
}

/// A form field's text: primitives as text, nested values as JSON.
fn form_text(value: &Value) -> String {
    match value {
        Value::Array(_) | Value::Object(_) => value.to_string(),
        other => scalar_text(other),
    }
}
