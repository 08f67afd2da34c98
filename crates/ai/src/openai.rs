//! The OpenAI side of the hub: usage and finish reasons, and reading
//! OpenAI message content (shared by the Anthropic and Gemini translations).

use serde_json::{Map, Value, json};

use crate::json::{self, Object};
use crate::{Finish, TranslateError, Usage};

/// Usage from an OpenAI `usage` object (absent → zero).
pub(crate) fn usage(value: Option<&Value>) -> Usage {
    let Some(value) = value.filter(|value| value.is_object()) else {
        return Usage::default();
    };
    let input = json::count(value.get("prompt_tokens"));
    let output = json::count(value.get("completion_tokens"));
    let cached_input =
        json::count(value.pointer("/prompt_tokens_details/cached_tokens")).min(input);
    let reasoning =
        json::count(value.pointer("/completion_tokens_details/reasoning_tokens")).min(output);
    Usage {
        input,
        output,
        cached_input,
        cache_write: 0,
        reasoning,
    }
}

/// An OpenAI assistant message: `content` null when only tools were
/// called, `reasoning_content` and `tool_calls` when there are any.
pub(crate) fn assistant_message(text: String, reasoning: String, calls: Vec<Value>) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), Value::from("assistant"));
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::from(text)
    };
    message.insert("content".into(), content);
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), Value::from(reasoning));
    }
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(message)
}

/// A non-streamed `chat.completion` with one choice, translated from
/// another dialect's answer.
pub(crate) fn completion(
    id: &str,
    caller_model: &str,
    text: String,
    reasoning: String,
    calls: Vec<Value>,
    finish: &Finish,
    usage: &Usage,
) -> Value {
    let message = assistant_message(text, reasoning, calls);
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": crate::now_seconds(),
        "model": caller_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_name(finish),
        }],
        "usage": usage_json(usage),
    })
}

/// An OpenAI `usage` object.
pub(crate) fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.total(),
        "prompt_tokens_details": {"cached_tokens": usage.cached_input},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    })
}

pub(crate) fn finish_from(reason: &str) -> Finish {
    match reason {
        "length" => Finish::Length,
        "tool_calls" | "function_call" => Finish::ToolCalls,
        "content_filter" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

pub(crate) fn finish_name(finish: &Finish) -> &'static str {
    match finish {
        Finish::Stop | Finish::StopSequence(_) => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
        Finish::ContentFilter => "content_filter",
    }
}

/// One piece of OpenAI message content.
pub(crate) enum Part {
    Text(String),
    /// An image: a `data:` URL split into its media type and base64 data.
    InlineImage {
        media_type: String,
        data: String,
    },
    /// An image by http(s) URL.
    ImageUrl(String),
    /// A file given inline (`file.file_data` as a data URL), e.g. a PDF.
    InlineFile {
        media_type: String,
        data: String,
        filename: Option<String>,
    },
}

/// The parts of an OpenAI `content` (a string, an array of parts, or null).
/// `field` is the content's path, for errors.
pub(crate) fn content_parts(
    content: Option<&Value>,
    field: &str,
) -> Result<Vec<Part>, TranslateError> {
    let mut parts = Vec::new();
    match content {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => parts.push(Part::Text(text.clone())),
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let field = json::item(field, index);
                parts.push(content_part(item, &field)?);
            }
        }
        Some(_) => {
            return Err(TranslateError::invalid_type(
                field,
                "a string or an array of parts",
            ));
        }
    }
    Ok(parts)
}

fn content_part(item: &Value, field: &str) -> Result<Part, TranslateError> {
    let object = json::object(item, field)?;
    let kind = json::req_str(object, "type", field)?;
    match kind {
        "text" | "input_text" | "output_text" => {
            Ok(Part::Text(json::req_str(object, "text", field)?.to_owned()))
        }
        // An assistant's earlier refusal, sent back as history.
        "refusal" => Ok(Part::Text(
            json::req_str(object, "refusal", field)?.to_owned(),
        )),
        "image_url" => {
            let url_field = json::path(field, "image_url");
            let url = match object.get("image_url") {
                Some(Value::String(url)) => url.as_str(),
                Some(Value::Object(image)) => json::req_str(image, "url", &url_field)?,
                Some(_) => return Err(TranslateError::invalid_type(url_field, "an object")),
                None => return Err(TranslateError::missing(url_field)),
            };
            image_part(url, &json::path(&url_field, "url"))
        }
        "file" => {
            let file_field = json::path(field, "file");
            let file = json::opt_object(object, "file", field)?
                .ok_or_else(|| TranslateError::missing(&file_field))?;
            if file.get("file_id").is_some_and(|id| !id.is_null()) {
                return Err(TranslateError::unsupported(
                    json::path(&file_field, "file_id"),
                    "file reference (only inline file_data can be translated)",
                ));
            }
            let data_field = json::path(&file_field, "file_data");
            let data = json::req_str(file, "file_data", &file_field)?;
            let (media_type, data) = parse_data_url(data).ok_or_else(|| {
                TranslateError::invalid(&data_field, "expected a base64 data: URL")
            })?;
            let filename = json::opt_str(file, "filename", &file_field)?.map(str::to_owned);
            Ok(Part::InlineFile {
                media_type,
                data,
                filename,
            })
        }
        other => Err(TranslateError::unsupported(
            field,
            format!("part type '{other}'"),
        )),
    }
}

fn image_part(url: &str, field: &str) -> Result<Part, TranslateError> {
    if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url)
            .ok_or_else(|| TranslateError::invalid(field, "expected a base64 data: URL"))?;
        Ok(Part::InlineImage { media_type, data })
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Ok(Part::ImageUrl(url.to_owned()))
    } else {
        Err(TranslateError::invalid(
            field,
            "expected an http(s) or data: URL",
        ))
    }
}

/// `data:<media type>;base64,<data>` → (media type, data).
pub(crate) fn parse_data_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    let media_type = header.strip_suffix(";base64")?;
    // Parameters such as `;charset=…` may precede `;base64`.
    let media_type = media_type.split(';').next().unwrap_or_default();
    if media_type.is_empty() || data.is_empty() {
        return None;
    }
    Some((media_type.to_owned(), data.to_owned()))
}

/// The text of a content that must be text only (system and tool messages),
/// parts joined by `\n`.
pub(crate) fn text_only(content: Option<&Value>, field: &str) -> Result<String, TranslateError> {
    let mut text = String::new();
    for (index, part) in content_parts(content, field)?.into_iter().enumerate() {
        match part {
            Part::Text(piece) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&piece);
            }
            _ => {
                let field = if content.is_some_and(Value::is_array) {
                    json::item(field, index)
                } else {
                    field.to_owned()
                };
                return Err(TranslateError::unsupported(
                    field,
                    "non-text part in a text-only message",
                ));
            }
        }
    }
    Ok(text)
}

/// A tool call of an assistant message.
pub(crate) struct ToolCall {
    pub id: String,
    pub name: String,
    /// The parsed `function.arguments` (an object; `""` reads as `{}`).
    pub arguments: Value,
}

/// The `tool_calls` of an assistant message (`field` is the message's path).
pub(crate) fn tool_calls(message: &Object, field: &str) -> Result<Vec<ToolCall>, TranslateError> {
    let mut calls = Vec::new();
    let Some(items) = json::opt_array(message, "tool_calls", field)? else {
        return Ok(calls);
    };
    let base = json::path(field, "tool_calls");
    for (index, item) in items.iter().enumerate() {
        let call_field = json::item(&base, index);
        let call = json::object(item, &call_field)?;
        if let Some(kind) = json::opt_str(call, "type", &call_field)?
            && kind != "function"
        {
            return Err(TranslateError::unsupported(
                json::path(&call_field, "type"),
                format!("tool call type '{kind}'"),
            ));
        }
        let id = json::req_str(call, "id", &call_field)?.to_owned();
        let function_field = json::path(&call_field, "function");
        let function = json::opt_object(call, "function", &call_field)?
            .ok_or_else(|| TranslateError::missing(&function_field))?;
        let name = json::req_str(function, "name", &function_field)?.to_owned();
        let arguments_field = json::path(&function_field, "arguments");
        let arguments = parse_arguments(
            json::opt_str(function, "arguments", &function_field)?.unwrap_or(""),
            &arguments_field,
        )?;
        calls.push(ToolCall {
            id,
            name,
            arguments,
        });
    }
    Ok(calls)
}

/// Tool arguments as a JSON object.
pub(crate) fn parse_arguments(text: &str, field: &str) -> Result<Value, TranslateError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(TranslateError::invalid(
            field,
            "tool arguments must be a JSON object",
        )),
        Err(error) => Err(TranslateError::invalid(
            field,
            format!("tool arguments are not valid JSON ({error})"),
        )),
    }
}

/// The JSON-mode instruction added to a system prompt.
pub(crate) fn json_instruction(schema: Option<&Value>) -> String {
    match schema {
        Some(schema) => format!(
            "Respond only with a JSON value that conforms to this JSON schema, with no other text:\n{schema}"
        ),
        None => "Respond only with a single valid JSON object, with no other text.".to_owned(),
    }
}

/// What `response_format` asks for.
pub(crate) enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { name: Option<String>, schema: Value },
}

pub(crate) fn response_format(body: &Object) -> Result<ResponseFormat, TranslateError> {
    let Some(format) = json::opt_object(body, "response_format", "")? else {
        return Ok(ResponseFormat::Text);
    };
    let field = "response_format";
    match json::req_str(format, "type", field)? {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let spec_field = json::path(field, "json_schema");
            let spec = json::opt_object(format, "json_schema", field)?
                .ok_or_else(|| TranslateError::missing(&spec_field))?;
            let name = json::opt_str(spec, "name", &spec_field)?.map(str::to_owned);
            let schema = match spec.get("schema") {
                Some(schema @ Value::Object(_)) => schema.clone(),
                None | Some(Value::Null) => json!({"type": "object"}),
                Some(_) => {
                    return Err(TranslateError::invalid_type(
                        json::path(&spec_field, "schema"),
                        "an object",
                    ));
                }
            };
            Ok(ResponseFormat::JsonSchema { name, schema })
        }
        other => Err(TranslateError::unsupported(
            json::path(field, "type"),
            format!("response format '{other}'"),
        )),
    }
}

/// `stop`: a string or an array of strings.
pub(crate) fn stop_sequences(body: &Object) -> Result<Vec<String>, TranslateError> {
    match body.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(stop)) => Ok(vec![stop.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    TranslateError::invalid_type(json::item("stop", index), "a string")
                })
            })
            .collect(),
        Some(_) => Err(TranslateError::invalid_type(
            "stop",
            "a string or an array of strings",
        )),
    }
}

/// `n` must be absent or 1 when translating.
pub(crate) fn check_single_choice(body: &Object) -> Result<(), TranslateError> {
    match json::opt_u64(body, "n", "")? {
        None | Some(1) => Ok(()),
        Some(_) => Err(TranslateError::unsupported(
            "n",
            "value: only one choice (n = 1) can be translated",
        )),
    }
}

/// The output limit of an OpenAI request.
pub(crate) fn max_tokens(body: &Object) -> Result<Option<u64>, TranslateError> {
    match json::opt_u64(body, "max_completion_tokens", "")? {
        Some(max) => Ok(Some(max)),
        None => json::opt_u64(body, "max_tokens", ""),
    }
}

/// Parameters that the other dialects cannot express and that change the
/// answer's shape, so dropping them silently would mislead.
pub(crate) fn reject_unsupported(body: &Object) -> Result<(), TranslateError> {
    if body.get("functions").is_some_and(|value| !value.is_null()) {
        return Err(TranslateError::unsupported(
            "functions",
            "legacy function calling (use tools)",
        ));
    }
    if body.get("audio").is_some_and(|value| !value.is_null()) {
        return Err(TranslateError::unsupported("audio", "audio output"));
    }
    if let Some(modalities) = body.get("modalities").and_then(Value::as_array)
        && modalities
            .iter()
            .any(|modality| modality.as_str() == Some("audio"))
    {
        return Err(TranslateError::unsupported("modalities", "audio output"));
    }
    if body.get("logprobs") == Some(&Value::Bool(true)) {
        return Err(TranslateError::unsupported("logprobs", "log probabilities"));
    }
    Ok(())
}
