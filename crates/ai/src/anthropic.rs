//! Anthropic Messages ⇄ the OpenAI hub: requests both ways, responses both
//! ways, usage and stop reasons.

use serde_json::{Map, Value, json};

use crate::json::{self, Object};
use crate::openai::{self, Part, ResponseFormat};
use crate::{DEFAULT_ANTHROPIC_MAX_TOKENS, Finish, JSON_TOOL_NAME, TranslateError, Usage};

/// Anthropic usage members as reported so far; streamed answers report them
/// in two events (`message_start`, then `message_delta`), later values win.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UsageParts {
    pub input: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_creation: Option<u64>,
    pub output: Option<u64>,
}

impl UsageParts {
    /// Overrides the members present in `other`.
    pub fn merge(&mut self, other: UsageParts) {
        self.input = other.input.or(self.input);
        self.cache_read = other.cache_read.or(self.cache_read);
        self.cache_creation = other.cache_creation.or(self.cache_creation);
        self.output = other.output.or(self.output);
    }

    pub fn usage(&self) -> Usage {
        let cache_read = self.cache_read.unwrap_or(0);
        let input = self
            .input
            .unwrap_or(0)
            .saturating_add(cache_read)
            .saturating_add(self.cache_creation.unwrap_or(0));
        Usage {
            input,
            output: self.output.unwrap_or(0),
            cached_input: cache_read,
            cache_write: self.cache_creation.unwrap_or(0),
            reasoning: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The members of an Anthropic `usage` object.
pub(crate) fn usage(value: Option<&Value>) -> UsageParts {
    let Some(value) = value.filter(|value| value.is_object()) else {
        return UsageParts::default();
    };
    let get = |key: &str| value.get(key).and_then(Value::as_u64);
    UsageParts {
        input: get("input_tokens"),
        cache_read: get("cache_read_input_tokens"),
        cache_creation: get("cache_creation_input_tokens"),
        output: get("output_tokens"),
    }
}

/// An Anthropic `usage` object for a hub usage: `input_tokens` is the
/// uncached part (cache writes are not known across dialects).
pub(crate) fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input.saturating_sub(usage.cached_input),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_input,
        "output_tokens": usage.output,
    })
}

pub(crate) fn finish_from(reason: &str, stop_sequence: Option<&str>) -> Finish {
    match reason {
        "stop_sequence" => Finish::StopSequence(stop_sequence.map(str::to_owned)),
        "max_tokens" | "model_context_window_exceeded" => Finish::Length,
        "tool_use" => Finish::ToolCalls,
        "refusal" => Finish::ContentFilter,
        // end_turn, pause_turn and anything newer.
        _ => Finish::Stop,
    }
}

/// `(stop_reason, stop_sequence)`.
pub(crate) fn finish_name(finish: &Finish) -> (&'static str, Value) {
    match finish {
        Finish::Stop => ("end_turn", Value::Null),
        Finish::StopSequence(sequence) => (
            "stop_sequence",
            sequence
                .as_ref()
                .map_or(Value::Null, |text| Value::from(text.as_str())),
        ),
        Finish::Length => ("max_tokens", Value::Null),
        Finish::ToolCalls => ("tool_use", Value::Null),
        Finish::ContentFilter => ("refusal", Value::Null),
    }
}

// ---------------------------------------------------------------------------
// OpenAI request → Anthropic request

/// An OpenAI chat request as an Anthropic Messages request for `model`.
pub(crate) fn request_from_openai(body: &Value, model: &str) -> Result<Value, TranslateError> {
    let body = json::object(body, "")?;
    openai::reject_unsupported(body)?;
    openai::check_single_choice(body)?;

    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
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
                    system.push(text);
                }
            }
            "user" => {
                let mut blocks = Vec::new();
                for part in openai::content_parts(message.get("content"), &content_field)? {
                    blocks.push(block_from_part(part, &content_field)?);
                }
                push_blocks(&mut messages, "user", blocks);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                for (part_index, part) in
                    openai::content_parts(message.get("content"), &content_field)?
                        .into_iter()
                        .enumerate()
                {
                    match part {
                        Part::Text(text) if text.is_empty() => {}
                        Part::Text(text) => blocks.push(json!({"type": "text", "text": text})),
                        _ => {
                            return Err(TranslateError::unsupported(
                                json::item(&content_field, part_index),
                                "non-text part in an assistant message",
                            ));
                        }
                    }
                }
                for call in openai::tool_calls(message, &field)? {
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}));
                }
                if !blocks.is_empty() {
                    push_blocks(&mut messages, "assistant", blocks);
                }
            }
            "tool" => {
                let id = json::req_str(message, "tool_call_id", &field)?;
                let text = openai::text_only(message.get("content"), &content_field)?;
                push_blocks(
                    &mut messages,
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})],
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

    if messages.is_empty() {
        // Anthropic refuses a request of system text alone.
        return Err(TranslateError::InvalidValue {
            field: "messages".into(),
            reason:
                "needs a user message besides the system ones (Anthropic's API answers only to one)"
                    .into(),
        });
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::from(model));
    let max_tokens = openai::max_tokens(body)?.unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS);
    out.insert("max_tokens".into(), Value::from(max_tokens));

    let mut tools = tools_from_openai(body)?;
    let mut tool_choice = tool_choice_from_openai(body)?;
    match openai::response_format(body)? {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => system.push(openai::json_instruction(None)),
        ResponseFormat::JsonSchema { name, schema } => {
            let object_schema = schema.get("type").and_then(Value::as_str) == Some("object");
            if tools.is_empty() && object_schema {
                let description = match name {
                    Some(name) => format!("Respond with the answer ({name}) as this tool's input."),
                    None => "Respond with the answer as this tool's input.".to_owned(),
                };
                tools.push(json!({"name": JSON_TOOL_NAME, "description": description, "input_schema": schema}));
                tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL_NAME}));
            } else {
                system.push(openai::json_instruction(Some(&schema)));
            }
        }
    }

    match system.len() {
        0 => {}
        1 => {
            out.insert("system".into(), Value::from(system.remove(0)));
        }
        _ => {
            let blocks = system
                .into_iter()
                .map(|text| json!({"type": "text", "text": text}))
                .collect();
            out.insert("system".into(), Value::Array(blocks));
        }
    }
    let messages = messages
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    out.insert("messages".into(), Value::Array(messages));

    if !tools.is_empty() {
        if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
            let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
            if choice.get("type").and_then(Value::as_str) != Some("none")
                && let Some(choice) = choice.as_object_mut()
            {
                choice.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
        }
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_choice {
            out.insert("tool_choice".into(), choice);
        }
    }

    let stop = openai::stop_sequences(body)?;
    if !stop.is_empty() {
        out.insert("stop_sequences".into(), json!(stop));
    }
    match json::opt_number(body, "temperature", "")? {
        // Anthropic's range is 0 to 1, OpenAI's 0 to 2.
        Some(temperature) if temperature > 1.0 => {
            out.insert("temperature".into(), Value::from(1.0));
        }
        Some(_) => json::copy_number(body, "temperature", "", &mut out, "temperature")?,
        None => {}
    }
    json::copy_number(body, "top_p", "", &mut out, "top_p")?;
    json::copy_number(body, "top_k", "", &mut out, "top_k")?;
    if body.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = json::opt_str(body, "user", "")? {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok(Value::Object(out))
}

/// Appends blocks to the last message when it has the same role (Anthropic
/// wants alternating roles; consecutive tool results become one user message).
fn push_blocks(
    messages: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    blocks: Vec<Value>,
) {
    match messages.last_mut() {
        Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
        _ => messages.push((role, blocks)),
    }
}

fn block_from_part(part: Part, field: &str) -> Result<Value, TranslateError> {
    Ok(match part {
        Part::Text(text) => json!({"type": "text", "text": text}),
        Part::InlineImage { media_type, data } => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        Part::ImageUrl(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
        Part::InlineFile {
            media_type,
            data,
            filename,
        } if media_type == "application/pdf" => {
            let mut block = json!({"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}});
            if let (Some(filename), Some(block)) = (filename, block.as_object_mut()) {
                block.insert("title".into(), Value::from(filename));
            }
            block
        }
        Part::InlineFile { media_type, .. } => {
            return Err(TranslateError::unsupported(
                field,
                format!("file type '{media_type}' (only PDF)"),
            ));
        }
    })
}

fn tools_from_openai(body: &Object) -> Result<Vec<Value>, TranslateError> {
    let mut tools = Vec::new();
    let Some(items) = json::opt_array(body, "tools", "")? else {
        return Ok(tools);
    };
    for (index, item) in items.iter().enumerate() {
        let field = json::item("tools", index);
        let function = openai_function(item, &field)?;
        let function_field = json::path(&field, "function");
        let mut tool = Map::new();
        tool.insert(
            "name".into(),
            Value::from(json::req_str(function, "name", &function_field)?),
        );
        if let Some(description) = json::opt_str(function, "description", &function_field)? {
            tool.insert("description".into(), Value::from(description));
        }
        let schema = match json::opt_object(function, "parameters", &function_field)? {
            Some(parameters) => Value::Object(parameters.clone()),
            None => json!({"type": "object", "properties": {}}),
        };
        tool.insert("input_schema".into(), schema);
        tools.push(Value::Object(tool));
    }
    Ok(tools)
}

/// The `function` of an OpenAI tool definition.
pub(crate) fn openai_function<'a>(
    item: &'a Value,
    field: &str,
) -> Result<&'a Object, TranslateError> {
    let tool = json::object(item, field)?;
    match json::opt_str(tool, "type", field)? {
        None | Some("function") => {}
        Some(other) => {
            return Err(TranslateError::unsupported(
                json::path(field, "type"),
                format!("tool type '{other}'"),
            ));
        }
    }
    json::opt_object(tool, "function", field)?
        .ok_or_else(|| TranslateError::missing(json::path(field, "function")))
}

/// What an OpenAI `tool_choice` asks for.
pub(crate) enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

pub(crate) fn openai_tool_choice(body: &Object) -> Result<Option<ToolChoice>, TranslateError> {
    let field = "tool_choice";
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(TranslateError::unsupported(
                field,
                format!("tool choice '{other}'"),
            )),
        },
        Some(Value::Object(choice)) => {
            match json::opt_str(choice, "type", field)? {
                None | Some("function") => {}
                Some(other) => {
                    return Err(TranslateError::unsupported(
                        json::path(field, "type"),
                        format!("tool choice '{other}'"),
                    ));
                }
            }
            let function_field = json::path(field, "function");
            let function = json::opt_object(choice, "function", field)?
                .ok_or_else(|| TranslateError::missing(&function_field))?;
            Ok(Some(ToolChoice::Function(
                json::req_str(function, "name", &function_field)?.to_owned(),
            )))
        }
        Some(_) => Err(TranslateError::invalid_type(field, "a string or an object")),
    }
}

fn tool_choice_from_openai(body: &Object) -> Result<Option<Value>, TranslateError> {
    Ok(openai_tool_choice(body)?.map(|choice| match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    }))
}

// ---------------------------------------------------------------------------
// Anthropic request → OpenAI request (the hub)

/// An Anthropic Messages request as an OpenAI chat request (without `model`;
/// with `top_k` when given, which only Gemini uses).
pub(crate) fn request_to_openai(body: &Value) -> Result<Value, TranslateError> {
    let body = json::object(body, "")?;
    let mut messages = Vec::new();

    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            if !text.is_empty() {
                messages.push(json!({"role": "system", "content": text}));
            }
        }
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (index, block) in blocks.iter().enumerate() {
                let field = json::item("system", index);
                let block = json::object(block, &field)?;
                match json::req_str(block, "type", &field)? {
                    "text" => texts.push(json::req_str(block, "text", &field)?.to_owned()),
                    other => {
                        return Err(TranslateError::unsupported(
                            json::path(&field, "type"),
                            format!("system block type '{other}'"),
                        ));
                    }
                }
            }
            if !texts.is_empty() {
                messages.push(json!({"role": "system", "content": texts.join("\n\n")}));
            }
        }
        Some(_) => {
            return Err(TranslateError::invalid_type(
                "system",
                "a string or an array of text blocks",
            ));
        }
    }

    let items = json::opt_array(body, "messages", "")?
        .ok_or_else(|| TranslateError::missing("messages"))?;
    for (index, item) in items.iter().enumerate() {
        let field = json::item("messages", index);
        let message = json::object(item, &field)?;
        let role = json::req_str(message, "role", &field)?;
        let content_field = json::path(&field, "content");
        match role {
            "user" => user_to_openai(message.get("content"), &content_field, &mut messages)?,
            "assistant" => {
                messages.push(assistant_to_openai(message.get("content"), &content_field)?)
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
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = json::opt_u64(body, "max_tokens", "")? {
        out.insert("max_completion_tokens".into(), Value::from(max));
    }
    if let Some(stop) = json::opt_array(body, "stop_sequences", "")?
        && !stop.is_empty()
    {
        out.insert("stop".into(), Value::Array(stop.clone()));
    }
    json::copy_number(body, "temperature", "", &mut out, "temperature")?;
    json::copy_number(body, "top_p", "", &mut out, "top_p")?;
    json::copy_number(body, "top_k", "", &mut out, "top_k")?;
    if body.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(metadata) = json::opt_object(body, "metadata", "")?
        && let Some(user) = json::opt_str(metadata, "user_id", "metadata")?
    {
        out.insert("user".into(), Value::from(user));
    }

    let mut tools = Vec::new();
    if let Some(items) = json::opt_array(body, "tools", "")? {
        for (index, item) in items.iter().enumerate() {
            let field = json::item("tools", index);
            let tool = json::object(item, &field)?;
            match json::opt_str(tool, "type", &field)? {
                None | Some("custom") => {}
                Some(other) => {
                    return Err(TranslateError::unsupported(
                        json::path(&field, "type"),
                        format!("tool type '{other}'"),
                    ));
                }
            }
            let mut function = Map::new();
            function.insert(
                "name".into(),
                Value::from(json::req_str(tool, "name", &field)?),
            );
            if let Some(description) = json::opt_str(tool, "description", &field)? {
                function.insert("description".into(), Value::from(description));
            }
            let schema = json::opt_object(tool, "input_schema", &field)?
                .ok_or_else(|| TranslateError::missing(json::path(&field, "input_schema")))?;
            function.insert("parameters".into(), Value::Object(schema.clone()));
            tools.push(json!({"type": "function", "function": function}));
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = json::opt_object(body, "tool_choice", "")? {
            let kind = json::req_str(choice, "type", "tool_choice")?;
            let mapped = match kind {
                "auto" => json!("auto"),
                "any" => json!("required"),
                "none" => json!("none"),
                "tool" => {
                    let name = json::req_str(choice, "name", "tool_choice")?;
                    json!({"type": "function", "function": {"name": name}})
                }
                other => {
                    return Err(TranslateError::unsupported(
                        "tool_choice.type",
                        format!("tool choice '{other}'"),
                    ));
                }
            };
            out.insert("tool_choice".into(), mapped);
            if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) && kind != "none"
            {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    Ok(Value::Object(out))
}

/// A user message: its tool results become OpenAI tool messages (first, as
/// OpenAI wants them right after the assistant's calls), the rest one user
/// message.
fn user_to_openai(
    content: Option<&Value>,
    field: &str,
    messages: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let blocks = match content {
        Some(Value::String(text)) => {
            messages.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        None | Some(Value::Null) => return Err(TranslateError::missing(field)),
        Some(_) => {
            return Err(TranslateError::invalid_type(
                field,
                "a string or an array of blocks",
            ));
        }
    };
    let mut parts = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let block_field = json::item(field, index);
        let block = json::object(block, &block_field)?;
        match json::req_str(block, "type", &block_field)? {
            "text" => parts
                .push(json!({"type": "text", "text": json::req_str(block, "text", &block_field)?})),
            "image" => parts.push(image_to_openai(block, &block_field)?),
            "document" => parts.push(document_to_openai(block, &block_field)?),
            "tool_result" => {
                let id = json::req_str(block, "tool_use_id", &block_field)?;
                let text = tool_result_text(block, &block_field)?;
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            other => {
                return Err(TranslateError::unsupported(
                    json::path(&block_field, "type"),
                    format!("block type '{other}'"),
                ));
            }
        }
    }
    match parts.len() {
        0 => {}
        1 if parts[0].get("type").and_then(Value::as_str) == Some("text") => {
            let text = parts[0].get("text").cloned().unwrap_or(Value::Null);
            messages.push(json!({"role": "user", "content": text}));
        }
        _ => messages.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

fn image_to_openai(block: &Object, field: &str) -> Result<Value, TranslateError> {
    let source_field = json::path(field, "source");
    let source = json::opt_object(block, "source", field)?
        .ok_or_else(|| TranslateError::missing(&source_field))?;
    let url = match json::req_str(source, "type", &source_field)? {
        "base64" => {
            let media_type = json::req_str(source, "media_type", &source_field)?;
            let data = json::req_str(source, "data", &source_field)?;
            format!("data:{media_type};base64,{data}")
        }
        "url" => json::req_str(source, "url", &source_field)?.to_owned(),
        other => {
            return Err(TranslateError::unsupported(
                json::path(&source_field, "type"),
                format!("image source '{other}'"),
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn document_to_openai(block: &Object, field: &str) -> Result<Value, TranslateError> {
    let source_field = json::path(field, "source");
    let source = json::opt_object(block, "source", field)?
        .ok_or_else(|| TranslateError::missing(&source_field))?;
    match json::req_str(source, "type", &source_field)? {
        "base64" => {
            let media_type = json::req_str(source, "media_type", &source_field)?;
            let data = json::req_str(source, "data", &source_field)?;
            let filename = json::opt_str(block, "title", field)?.unwrap_or("document.pdf");
            Ok(
                json!({"type": "file", "file": {"filename": filename, "file_data": format!("data:{media_type};base64,{data}")}}),
            )
        }
        "text" => {
            Ok(json!({"type": "text", "text": json::req_str(source, "data", &source_field)?}))
        }
        other => Err(TranslateError::unsupported(
            json::path(&source_field, "type"),
            format!("document source '{other}'"),
        )),
    }
}

fn tool_result_text(block: &Object, field: &str) -> Result<String, TranslateError> {
    let content_field = json::path(field, "content");
    let text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) => {
            let mut texts = Vec::new();
            for (index, item) in items.iter().enumerate() {
                let item_field = json::item(&content_field, index);
                let item = json::object(item, &item_field)?;
                match json::req_str(item, "type", &item_field)? {
                    "text" => texts.push(json::req_str(item, "text", &item_field)?.to_owned()),
                    other => {
                        return Err(TranslateError::unsupported(
                            json::path(&item_field, "type"),
                            format!("block type '{other}' in a tool result"),
                        ));
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(TranslateError::invalid_type(
                content_field,
                "a string or an array of blocks",
            ));
        }
    };
    Ok(text)
}

fn assistant_to_openai(content: Option<&Value>, field: &str) -> Result<Value, TranslateError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    match content {
        Some(Value::String(value)) => text.push_str(value),
        Some(Value::Array(blocks)) => {
            for (index, block) in blocks.iter().enumerate() {
                let block_field = json::item(field, index);
                let block = json::object(block, &block_field)?;
                match json::req_str(block, "type", &block_field)? {
                    "text" => text.push_str(json::req_str(block, "text", &block_field)?),
                    "tool_use" => {
                        let id = json::req_str(block, "id", &block_field)?;
                        let name = json::req_str(block, "name", &block_field)?;
                        let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                        calls.push(json!({
                            "id": id,
                            "type": "function",
                            "function": {"name": name, "arguments": input.to_string()},
                        }));
                    }
                    // Signed reasoning cannot be replayed to another provider.
                    "thinking" | "redacted_thinking" => {}
                    other => {
                        return Err(TranslateError::unsupported(
                            json::path(&block_field, "type"),
                            format!("block type '{other}'"),
                        ));
                    }
                }
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(TranslateError::invalid_type(
                field,
                "a string or an array of blocks",
            ));
        }
    }
    Ok(openai::assistant_message(text, String::new(), calls))
}

// ---------------------------------------------------------------------------
// Responses

/// An OpenAI chat completion as an Anthropic message.
pub(crate) fn response_from_openai(
    body: &Value,
    caller_model: &str,
) -> Result<Value, TranslateError> {
    let object = json::object(body, "")?;
    let choices = json::opt_array(object, "choices", "")?
        .ok_or_else(|| TranslateError::missing("choices"))?;
    let mut content = Vec::new();
    let mut finish = Finish::Stop;
    if let Some(choice) = choices.first() {
        let choice_field = "choices[0]";
        let choice = json::object(choice, choice_field)?;
        if let Some(reason) = json::opt_str(choice, "finish_reason", choice_field)? {
            finish = openai::finish_from(reason);
        }
        let message_field = json::path(choice_field, "message");
        let message = json::opt_object(choice, "message", choice_field)?
            .ok_or_else(|| TranslateError::missing(&message_field))?;
        if let Some(reasoning) = reasoning_text(message)
            && !reasoning.is_empty()
        {
            content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
        }
        let text = openai::text_only(
            message.get("content"),
            &json::path(&message_field, "content"),
        )?;
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        if let Some(refusal) = json::opt_str(message, "refusal", &message_field)?
            && !refusal.is_empty()
        {
            content.push(json!({"type": "text", "text": refusal}));
            finish = Finish::ContentFilter;
        }
        for call in openai::tool_calls(message, &message_field)? {
            content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}));
        }
    }
    let (stop_reason, stop_sequence) = finish_name(&finish);
    let id = object
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("msg_translated");
    let usage = openai::usage(object.get("usage"));
    Ok(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": caller_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_json(&usage),
    }))
}

/// `reasoning_content` (DeepSeek, vLLM) or `reasoning` (OpenRouter, Ollama).
pub(crate) fn reasoning_text(message: &Object) -> Option<&str> {
    message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .or_else(|| message.get("reasoning").and_then(Value::as_str))
}

/// An Anthropic message as an OpenAI chat completion.
pub(crate) fn response_to_openai(
    body: &Value,
    caller_model: &str,
) -> Result<Value, TranslateError> {
    let object = json::object(body, "")?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    let mut json_answer = false;
    let blocks = json::opt_array(object, "content", "")?
        .ok_or_else(|| TranslateError::missing("content"))?;
    for (index, block) in blocks.iter().enumerate() {
        let field = json::item("content", index);
        let block = json::object(block, &field)?;
        match json::req_str(block, "type", &field)? {
            "text" => text.push_str(json::req_str(block, "text", &field)?),
            "thinking" => {
                reasoning.push_str(json::opt_str(block, "thinking", &field)?.unwrap_or(""))
            }
            "tool_use" => {
                let name = json::req_str(block, "name", &field)?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                if name == JSON_TOOL_NAME {
                    json_answer = true;
                    text.push_str(&input.to_string());
                } else {
                    calls.push(json!({
                        "id": json::req_str(block, "id", &field)?,
                        "type": "function",
                        "function": {"name": name, "arguments": input.to_string()},
                    }));
                }
            }
            // Redacted reasoning and server-side tool blocks have no OpenAI form.
            _ => {}
        }
    }
    let stop_reason = json::opt_str(object, "stop_reason", "")?.unwrap_or("end_turn");
    let mut finish = finish_from(stop_reason, None);
    if json_answer && finish == Finish::ToolCalls {
        finish = Finish::Stop;
    }
    let usage = usage(object.get("usage")).usage();
    let id = object
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("chatcmpl-translated");
    Ok(openai::completion(
        id,
        caller_model,
        text,
        reasoning,
        calls,
        &finish,
        &usage,
    ))
}
