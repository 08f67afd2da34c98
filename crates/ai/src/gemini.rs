//! The OpenAI hub → Gemini `generateContent` requests, Gemini answers → the
//! hub, usage and finish reasons, and JSON Schema → Gemini's schema subset.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::anthropic::{ToolChoice, openai_function, openai_tool_choice};
use crate::json::{self, Object};
use crate::openai::{self, Part, ResponseFormat};
use crate::{Finish, TranslateError, Usage};

/// Google's documented placeholder for a function call whose thought
/// signature is unknown (a history from another model or a translation).
pub(crate) const PLACEHOLDER_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// Usage from a Gemini `usageMetadata` object.
pub(crate) fn usage(value: Option<&Value>) -> Usage {
    let Some(value) = value.filter(|value| value.is_object()) else {
        return Usage::default();
    };
    let input = json::count(value.get("promptTokenCount"));
    let candidates = json::count(value.get("candidatesTokenCount"));
    let thoughts = json::count(value.get("thoughtsTokenCount"));
    Usage {
        input,
        output: candidates.saturating_add(thoughts),
        cached_input: json::count(value.get("cachedContentTokenCount")).min(input),
        cache_write: 0,
        reasoning: thoughts,
    }
}

pub(crate) fn finish_from(reason: &str) -> Finish {
    match reason {
        "MAX_TOKENS" => Finish::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => Finish::ContentFilter,
        // STOP, LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL…
        _ => Finish::Stop,
    }
}

/// An OpenAI chat request (caller's or the hub's) as a Gemini request body.
pub(crate) fn request_from_openai(body: &Value) -> Result<Value, TranslateError> {
    let body = json::object(body, "")?;
    openai::reject_unsupported(body)?;
    openai::check_single_choice(body)?;

    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Tool results name the function; OpenAI's only carry the call's id.
    let mut call_names: HashMap<String, String> = HashMap::new();
    let items = json::opt_array(body, "messages", "")?
        .ok_or_else(|| TranslateError::missing("messages"))?;
    for (index, item) in items.iter().enumerate() {
        let field = json::item("messages", index);
        let message = json::object(item, &field)?;
        let role = json::req_str(message, "role", &field)?;
        let content_field = json::path(&field, "content");
        match role {
            "system" | "developer" => {
                let text = openai::text_only(message.get("content"), &content_field)?;
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            "user" => {
                let mut parts = Vec::new();
                for part in openai::content_parts(message.get("content"), &content_field)? {
                    parts.push(part_from_openai(part));
                }
                push_parts(&mut contents, "user", parts);
            }
            "assistant" => {
                let mut parts = Vec::new();
                for (part_index, part) in
                    openai::content_parts(message.get("content"), &content_field)?
                        .into_iter()
                        .enumerate()
                {
                    match part {
                        Part::Text(text) if text.is_empty() => {}
                        Part::Text(text) => parts.push(json!({"text": text})),
                        _ => {
                            return Err(TranslateError::unsupported(
                                json::item(&content_field, part_index),
                                "non-text part in an assistant message",
                            ));
                        }
                    }
                }
                for (call_index, call) in
                    openai::tool_calls(message, &field)?.into_iter().enumerate()
                {
                    let mut part = Map::new();
                    part.insert(
                        "functionCall".into(),
                        json!({"name": call.name, "args": call.arguments}),
                    );
                    if call_index == 0 {
                        part.insert(
                            "thoughtSignature".into(),
                            Value::from(PLACEHOLDER_THOUGHT_SIGNATURE),
                        );
                    }
                    parts.push(Value::Object(part));
                    call_names.insert(call.id, call.name);
                }
                if !parts.is_empty() {
                    push_parts(&mut contents, "model", parts);
                }
            }
            "tool" => {
                let id = json::req_str(message, "tool_call_id", &field)?;
                let name = call_names.get(id).ok_or_else(|| {
                    TranslateError::invalid(
                        json::path(&field, "tool_call_id"),
                        format!("no earlier assistant tool call has id '{id}'"),
                    )
                })?;
                let text = openai::text_only(message.get("content"), &content_field)?;
                // A result must be an object; plain text is wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(value @ Value::Object(_)) => value,
                    _ => json!({"result": text}),
                };
                push_parts(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => {
                return Err(TranslateError::unsupported(
                    json::path(&field, "role"),
                    format!("role '{other}'"),
                ));
            }
        }
    }

    let mut out = Map::new();
    let contents: Vec<Value> = contents
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }

    let mut config = Map::new();
    json::copy_number(body, "temperature", "", &mut config, "temperature")?;
    json::copy_number(body, "top_p", "", &mut config, "topP")?;
    json::copy_number(body, "top_k", "", &mut config, "topK")?;
    json::copy_number(body, "seed", "", &mut config, "seed")?;
    json::copy_number(body, "presence_penalty", "", &mut config, "presencePenalty")?;
    json::copy_number(
        body,
        "frequency_penalty",
        "",
        &mut config,
        "frequencyPenalty",
    )?;
    if let Some(max) = openai::max_tokens(body)? {
        config.insert("maxOutputTokens".into(), Value::from(max));
    }
    let stop = openai::stop_sequences(body)?;
    if !stop.is_empty() {
        config.insert("stopSequences".into(), json!(stop));
    }
    match openai::response_format(body)? {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            config.insert("responseMimeType".into(), Value::from("application/json"));
        }
        ResponseFormat::JsonSchema { schema, .. } => {
            config.insert("responseMimeType".into(), Value::from("application/json"));
            config.insert("responseSchema".into(), schema_to_gemini(&schema));
        }
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }

    if let Some(tools) = json::opt_array(body, "tools", "")?
        && !tools.is_empty()
    {
        let mut declarations = Vec::new();
        for (index, item) in tools.iter().enumerate() {
            let field = json::item("tools", index);
            let function = openai_function(item, &field)?;
            let function_field = json::path(&field, "function");
            let mut declaration = Map::new();
            declaration.insert(
                "name".into(),
                Value::from(json::req_str(function, "name", &function_field)?),
            );
            if let Some(description) = json::opt_str(function, "description", &function_field)? {
                declaration.insert("description".into(), Value::from(description));
            }
            if let Some(parameters) = json::opt_object(function, "parameters", &function_field)?
                && parameters
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|properties| !properties.is_empty())
            {
                declaration.insert(
                    "parameters".into(),
                    schema_to_gemini(&Value::Object(parameters.clone())),
                );
            }
            declarations.push(Value::Object(declaration));
        }
        out.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        if let Some(choice) = openai_tool_choice(body)? {
            let config = match choice {
                ToolChoice::Auto => json!({"mode": "AUTO"}),
                ToolChoice::None => json!({"mode": "NONE"}),
                ToolChoice::Required => json!({"mode": "ANY"}),
                ToolChoice::Function(name) => {
                    json!({"mode": "ANY", "allowedFunctionNames": [name]})
                }
            };
            out.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
    }
    Ok(Value::Object(out))
}

fn push_parts(
    contents: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    parts: Vec<Value>,
) {
    match contents.last_mut() {
        Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
        _ => contents.push((role, parts)),
    }
}

fn part_from_openai(part: Part) -> Value {
    match part {
        Part::Text(text) => json!({"text": text}),
        Part::InlineImage { media_type, data }
        | Part::InlineFile {
            media_type, data, ..
        } => {
            json!({"inlineData": {"mimeType": media_type, "data": data}})
        }
        Part::ImageUrl(url) => {
            json!({"fileData": {"mimeType": mime_from_url(&url), "fileUri": url}})
        }
    }
}

/// The media type of an image URL, from its extension (JPEG when unknown).
fn mime_from_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

/// Keywords of Gemini's schema subset kept as they are.
const KEPT_SCHEMA_KEYS: &[&str] = &[
    "description",
    "title",
    "nullable",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minProperties",
    "maxProperties",
    "propertyOrdering",
    "default",
    "example",
];

/// How deep `$ref`s are followed (a recursive schema is cut there).
const MAX_SCHEMA_DEPTH: usize = 24;

/// A JSON Schema rewritten into Gemini's OpenAPI 3.0 subset: types upper-case,
/// `["x", "null"]` and `anyOf [x, null]` as `nullable`, `oneOf` as `anyOf`,
/// `const` as a one-value `enum`, local `$ref`s inlined, unknown keywords
/// (`additionalProperties`, `$schema`, `strict`…) dropped.
pub(crate) fn schema_to_gemini(schema: &Value) -> Value {
    convert_schema(schema, schema, 0)
}

fn convert_schema(schema: &Value, root: &Value, depth: usize) -> Value {
    let Some(object) = schema.as_object() else {
        return json!({});
    };
    if depth > MAX_SCHEMA_DEPTH {
        return json!({"type": "OBJECT"});
    }
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer));
        let mut resolved = match target {
            Some(target) => convert_schema(target, root, depth + 1),
            None => json!({}),
        };
        if let (Some(description), Some(resolved)) =
            (object.get("description"), resolved.as_object_mut())
        {
            resolved.insert("description".into(), description.clone());
        }
        return resolved;
    }

    let mut out = Map::new();
    let mut nullable = object.get("nullable") == Some(&Value::Bool(true));
    match object.get("type") {
        Some(Value::String(kind)) if kind == "null" => nullable = true,
        Some(Value::String(kind)) => {
            out.insert("type".into(), Value::from(kind.to_ascii_uppercase()));
        }
        Some(Value::Array(kinds)) => {
            let mut names = kinds.iter().filter_map(Value::as_str);
            nullable |= kinds.iter().any(|kind| kind.as_str() == Some("null"));
            if let Some(kind) = names.find(|kind| *kind != "null") {
                out.insert("type".into(), Value::from(kind.to_ascii_uppercase()));
            }
        }
        _ => {}
    }

    for key in ["anyOf", "oneOf"] {
        if let Some(options) = object.get(key).and_then(Value::as_array) {
            let mut converted = Vec::new();
            for option in options {
                if option.get("type").and_then(Value::as_str) == Some("null") {
                    nullable = true;
                } else {
                    converted.push(convert_schema(option, root, depth + 1));
                }
            }
            if converted.len() == 1 {
                if let Some(Value::Object(single)) = converted.pop() {
                    for (name, value) in single {
                        out.entry(name).or_insert(value);
                    }
                }
            } else if !converted.is_empty() {
                out.insert("anyOf".into(), Value::Array(converted));
            }
        }
    }
    if let Some(parts) = object.get("allOf").and_then(Value::as_array) {
        // Gemini has no allOf: members are merged, first one first.
        for part in parts {
            if let Value::Object(converted) = convert_schema(part, root, depth + 1) {
                for (name, value) in converted {
                    match (out.get_mut(&name), value) {
                        (Some(Value::Object(existing)), Value::Object(more)) => {
                            existing.extend(more)
                        }
                        (Some(Value::Array(existing)), Value::Array(more)) => existing.extend(more),
                        (None, value) => {
                            out.insert(name, value);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        let converted: Map<String, Value> = properties
            .iter()
            .map(|(name, property)| (name.clone(), convert_schema(property, root, depth + 1)))
            .collect();
        out.insert("properties".into(), Value::Object(converted));
        if let Some(required) = object.get("required").and_then(Value::as_array) {
            let known: Vec<Value> = required
                .iter()
                .filter(|name| {
                    name.as_str()
                        .is_some_and(|name| properties.contains_key(name))
                })
                .cloned()
                .collect();
            if !known.is_empty() {
                out.insert("required".into(), Value::Array(known));
            }
        }
        out.entry("type").or_insert_with(|| Value::from("OBJECT"));
    }
    if let Some(items) = object.get("items") {
        out.insert("items".into(), convert_schema(items, root, depth + 1));
        out.entry("type").or_insert_with(|| Value::from("ARRAY"));
    }
    let values = match (object.get("enum"), object.get("const")) {
        (Some(Value::Array(values)), _) => Some(values.clone()),
        (None, Some(value)) => Some(vec![value.clone()]),
        _ => None,
    };
    if let Some(values) = values
        && values.iter().all(Value::is_string)
    {
        out.insert("enum".into(), Value::Array(values));
        out.entry("type").or_insert_with(|| Value::from("STRING"));
    }
    if let Some(format) = object.get("format").and_then(Value::as_str) {
        let kind = out.get("type").and_then(Value::as_str).unwrap_or_default();
        let supported = match kind {
            "STRING" => matches!(format, "enum" | "date-time"),
            "NUMBER" => matches!(format, "float" | "double"),
            "INTEGER" => matches!(format, "int32" | "int64"),
            _ => false,
        };
        if supported {
            out.insert("format".into(), Value::from(format));
        }
    }
    for key in KEPT_SCHEMA_KEYS {
        if let Some(value) = object.get(*key) {
            out.entry(*key).or_insert_with(|| value.clone());
        }
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    Value::Object(out)
}

/// A Gemini answer as an OpenAI chat completion (candidate 0 only).
pub(crate) fn response_to_openai(
    body: &Value,
    caller_model: &str,
) -> Result<Value, TranslateError> {
    let object = json::object(body, "")?;
    let response_id = json::opt_str(object, "responseId", "")?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    let mut finish = Finish::Stop;
    let candidates = json::opt_array(object, "candidates", "")?;
    match candidates.and_then(|candidates| candidates.first()) {
        Some(candidate) => {
            let field = "candidates[0]";
            let candidate = json::object(candidate, field)?;
            if let Some(reason) = json::opt_str(candidate, "finishReason", field)? {
                finish = finish_from(reason);
            }
            let content_field = json::path(field, "content");
            if let Some(content) = json::opt_object(candidate, "content", field)?
                && let Some(parts) = json::opt_array(content, "parts", &content_field)?
            {
                for (index, part) in parts.iter().enumerate() {
                    let part_field = json::item(&json::path(&content_field, "parts"), index);
                    let part = json::object(part, &part_field)?;
                    match read_part(part, &part_field)? {
                        ReadPart::Text(piece) => text.push_str(piece),
                        ReadPart::Thought(piece) => reasoning.push_str(piece),
                        ReadPart::Call { id, name, args } => {
                            let id =
                                id.map_or_else(|| call_id(response_id, calls.len()), str::to_owned);
                            calls.push(json!({
                                "id": id,
                                "type": "function",
                                "function": {"name": name, "arguments": args.to_string()},
                            }));
                        }
                        ReadPart::Other => {}
                    }
                }
            }
        }
        None => {
            if object
                .get("promptFeedback")
                .and_then(|feedback| feedback.get("blockReason"))
                .is_some()
            {
                finish = Finish::ContentFilter;
            }
        }
    }
    if !calls.is_empty() && finish == Finish::Stop {
        finish = Finish::ToolCalls;
    }
    let usage = usage(object.get("usageMetadata"));
    let id = response_id.map_or_else(
        || "chatcmpl-gemini".to_owned(),
        |id| format!("chatcmpl-{id}"),
    );
    Ok(openai::completion(
        &id,
        caller_model,
        text,
        reasoning,
        calls,
        &finish,
        &usage,
    ))
}

/// The id given to the `n`th function call of an answer that has none.
pub(crate) fn call_id(response_id: Option<&str>, n: usize) -> String {
    match response_id {
        Some(id) if !id.is_empty() => {
            let id: String = id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            format!("call_{id}_{n}")
        }
        _ => format!("call_{n}"),
    }
}

pub(crate) enum ReadPart<'a> {
    Text(&'a str),
    Thought(&'a str),
    Call {
        id: Option<&'a str>,
        name: &'a str,
        args: Value,
    },
    Other,
}

pub(crate) fn read_part<'a>(part: &'a Object, field: &str) -> Result<ReadPart<'a>, TranslateError> {
    if let Some(text) = json::opt_str(part, "text", field)? {
        return Ok(if part.get("thought") == Some(&Value::Bool(true)) {
            ReadPart::Thought(text)
        } else {
            ReadPart::Text(text)
        });
    }
    if let Some(call) = json::opt_object(part, "functionCall", field)? {
        let call_field = json::path(field, "functionCall");
        let name = json::req_str(call, "name", &call_field)?;
        let id = json::opt_str(call, "id", &call_field)?.filter(|id| !id.is_empty());
        let args = match call.get("args") {
            None | Some(Value::Null) => json!({}),
            Some(args) => args.clone(),
        };
        return Ok(ReadPart::Call { id, name, args });
    }
    Ok(ReadPart::Other)
}
