//! The OpenAI dialect: Chat Completions (`chat.completion` and streamed
//! `chat.completion.chunk`s), the Responses API, Embeddings and Models.
//!
//! - Streamed chat: the first chunk's delta carries the role; text comes
//!   one word a chunk; each tool call starts with a chunk holding its
//!   `index`, `id`, `type` and name with empty arguments, then argument
//!   fragments under the same `index`; a chunk with an empty delta carries
//!   the `finish_reason`. Usage is sent only when the request set
//!   `stream_options.include_usage`: then every chunk has `"usage": null`
//!   and one more chunk with `"choices": []` carries the usage. `data:
//!   [DONE]` ends the stream.
//! - Responses API streams are named events (`event: response.created` …
//!   `response.completed`) with a `sequence_number`; usage is in the final
//!   `response` object.
//! - Errors are `{"error": {"message", "type", "param", "code"}}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hyper::Response;
use serde_json::{Value, json};

use super::{
    Answer, Body, Call, Core, Dialect, ErrorKind, Finish, KeyCheck, Usage, estimate_tokens,
    fragments, full_response, lock, now_s, split_words,
};

pub(crate) const DIALECT: Dialect = Dialect {
    default_name: "FakeOpenAi",
    base_path: "/v1",
    default_models: &["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
    key,
    respond,
};

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";
/// Characters of tool arguments per streamed fragment.
const ARGUMENT_FRAGMENT_CHARS: usize = 8;
/// Embedding dimensions when the request names none.
const DEFAULT_DIMENSIONS: usize = 8;
const MAX_DIMENSIONS: usize = 4096;

const MISSING_KEY_MESSAGE: &str = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys.";

fn key(headers: &BTreeMap<String, String>, _query: &str) -> Option<String> {
    let value = headers.get("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Which endpoint a request is for (errors differ slightly between them).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Surface {
    Chat,
    Responses,
    Embeddings,
    Other,
}

fn respond(core: &Arc<Core>, call: &Call) -> Response<Body> {
    let recorded = &call.recorded;
    let surface = match recorded.path.as_str() {
        "/v1/chat/completions" => Surface::Chat,
        "/v1/responses" => Surface::Responses,
        "/v1/embeddings" => Surface::Embeddings,
        _ => Surface::Other,
    };
    match core.check_key(recorded.key.as_deref()) {
        KeyCheck::Missing => {
            return error(
                core,
                401,
                Vec::new(),
                error_body(MISSING_KEY_MESSAGE, "invalid_request_error", None, None),
            );
        }
        KeyCheck::Invalid => return failure(core, call, surface, None, &ErrorKind::InvalidKey),
        KeyCheck::Accepted => {}
    }
    if let Some(retry_after_s) = core.rate_limit_for(recorded.key.as_deref()) {
        let kind = ErrorKind::RateLimited { retry_after_s };
        return failure(core, call, surface, None, &kind);
    }
    let method = recorded.method.as_str();
    match (method, surface) {
        ("POST", Surface::Chat) => chat(core, call),
        ("POST", Surface::Responses) => responses(core, call),
        ("POST", Surface::Embeddings) => embeddings(core, call),
        ("GET", Surface::Other) if recorded.path == "/v1/models" => models(core),
        ("GET", Surface::Other) if recorded.path.starts_with("/v1/models/") => {
            model(core, &recorded.path["/v1/models/".len()..])
        }
        _ => error(
            core,
            404,
            Vec::new(),
            error_body(
                &format!("Invalid URL ({method} {})", recorded.path),
                "invalid_request_error",
                None,
                None,
            ),
        ),
    }
}

/// Headers OpenAI puts on every answer.
fn headers(core: &Core) -> Vec<(&'static str, String)> {
    vec![
        ("x-request-id", format!("req_{}", core.hex(32))),
        ("openai-version", "2020-10-01".to_owned()),
        ("openai-processing-ms", "42".to_owned()),
        ("x-ratelimit-limit-requests", "10000".to_owned()),
        ("x-ratelimit-remaining-requests", "9999".to_owned()),
        ("x-ratelimit-reset-requests", "6ms".to_owned()),
        ("x-ratelimit-limit-tokens", "30000000".to_owned()),
        ("x-ratelimit-remaining-tokens", "29999990".to_owned()),
        ("x-ratelimit-reset-tokens", "0s".to_owned()),
    ]
}

fn json_response(core: &Core, body: &Value) -> Response<Body> {
    full_response(200, JSON, &headers(core), body.to_string())
}

fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code,
        }
    })
}

fn error(
    core: &Core,
    status: u16,
    extra_headers: Vec<(&'static str, String)>,
    body: Value,
) -> Response<Body> {
    let mut all_headers = headers(core);
    // An answer says what it says about limits only once.
    all_headers.retain(|(name, _)| !extra_headers.iter().any(|(extra, _)| extra == name));
    all_headers.extend(extra_headers);
    full_response(status, JSON, &all_headers, body.to_string())
}

/// `sk-t****************1234`, as OpenAI echoes a wrong key.
fn redact(key: &str) -> String {
    let characters: Vec<char> = key.chars().collect();
    if characters.len() <= 8 {
        return "*".repeat(characters.len());
    }
    let head: String = characters[..4].iter().collect();
    let tail: String = characters[characters.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(characters.len() - 8))
}

fn failure(
    core: &Core,
    call: &Call,
    surface: Surface,
    status: Option<u16>,
    kind: &ErrorKind,
) -> Response<Body> {
    let model = call.str_field("model").unwrap_or("gpt-4o-mini");
    let (default_status, body, extra_headers) = match kind {
        ErrorKind::RateLimited { retry_after_s } => (
            429,
            error_body(
                &format!(
                    "Rate limit reached for {model} in organization org-fake on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in {retry_after_s}s. Visit https://platform.openai.com/account/rate-limits to learn more."
                ),
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
            vec![
                ("retry-after", retry_after_s.to_string()),
                ("x-ratelimit-limit-requests", "500".to_owned()),
                ("x-ratelimit-remaining-requests", "0".to_owned()),
                ("x-ratelimit-reset-requests", format!("{retry_after_s}s")),
            ],
        ),
        ErrorKind::Server => (
            500,
            error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
            Vec::new(),
        ),
        ErrorKind::Overloaded => (
            503,
            error_body(
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
                None,
            ),
            Vec::new(),
        ),
        ErrorKind::ContextLength => {
            let body = match surface {
                Surface::Responses => error_body(
                    "Your input exceeds the context window of this model. Please adjust your input and try again.",
                    "invalid_request_error",
                    Some("input"),
                    Some("context_length_exceeded"),
                ),
                Surface::Embeddings => error_body(
                    "This model's maximum context length is 8192 tokens, however you requested 8193 tokens (8193 in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
                    "invalid_request_error",
                    Some("input"),
                    Some("context_length_exceeded"),
                ),
                Surface::Chat | Surface::Other => error_body(
                    "This model's maximum context length is 128000 tokens. However, your messages resulted in 128001 tokens. Please reduce the length of the messages.",
                    "invalid_request_error",
                    Some("messages"),
                    Some("context_length_exceeded"),
                ),
            };
            (400, body, Vec::new())
        }
        ErrorKind::InvalidRequest { message } => (
            400,
            error_body(message, "invalid_request_error", None, None),
            Vec::new(),
        ),
        ErrorKind::InvalidKey => (
            401,
            error_body(
                &format!(
                    "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    redact(call.recorded.key.as_deref().unwrap_or(""))
                ),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            Vec::new(),
        ),
    };
    error(core, status.unwrap_or(default_status), extra_headers, body)
}

/// Checks what every model call needs: a JSON body with a model, and the
/// endpoint's own required field.
fn validate(core: &Core, call: &Call, required: Option<&str>) -> Option<Response<Body>> {
    if call.json_error {
        return Some(error(
            core,
            400,
            Vec::new(),
            error_body(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
                "invalid_request_error",
                None,
                None,
            ),
        ));
    }
    if call.str_field("model").is_none() {
        return Some(error(
            core,
            400,
            Vec::new(),
            error_body(
                "you must provide a model parameter",
                "invalid_request_error",
                None,
                None,
            ),
        ));
    }
    let field = required?;
    if call.body().get(field).is_none_or(Value::is_null) {
        return Some(error(
            core,
            400,
            Vec::new(),
            error_body(
                &format!("Missing required parameter: '{field}'."),
                "invalid_request_error",
                Some(field),
                Some("missing_required_parameter"),
            ),
        ));
    }
    None
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
    }
}

fn chat_usage(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.total(),
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_input,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

/// A tool call with the id the fake gave it.
struct ToolCall<'a> {
    id: String,
    name: &'a str,
    arguments: &'a str,
}

fn tool_calls<'a>(core: &Core, answer: &'a Answer) -> Vec<ToolCall<'a>> {
    answer
        .calls
        .iter()
        .map(|(name, arguments)| ToolCall {
            id: format!("call_{}", core.base62(24)),
            name,
            arguments,
        })
        .collect()
}

fn chat(core: &Arc<Core>, call: &Call) -> Response<Body> {
    if let Some(refusal) = validate(core, call, Some("messages")) {
        return refusal;
    }
    let stream = call.bool_field("stream");
    let stream_options = call.body().get("stream_options").filter(|v| !v.is_null());
    if !stream && stream_options.is_some() {
        return error(
            core,
            400,
            Vec::new(),
            error_body(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "invalid_request_error",
                Some("stream_options"),
                None,
            ),
        );
    }
    let include_usage = stream_options
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let answer = match core.next_answer() {
        Ok(answer) => answer,
        Err(failed) => return failure(core, call, Surface::Chat, failed.status, &failed.kind),
    };
    let context = ChunkContext {
        id: format!("chatcmpl-{}", core.base62(29)),
        created: now_s(),
        model: call.str_field("model").unwrap_or_default().to_owned(),
        fingerprint: core.fingerprint.clone(),
        include_usage,
    };
    let calls = tool_calls(core, &answer);
    if stream {
        let events = chat_stream(&context, &answer, &calls);
        return core.stream(EVENT_STREAM, &headers(core), events);
    }
    let mut message = json!({
        "role": "assistant",
        "content": answer.text,
        "refusal": null,
        "annotations": [],
    });
    if !calls.is_empty() {
        message["tool_calls"] = calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                })
            })
            .collect();
    }
    json_response(
        core,
        &json!({
            "id": context.id,
            "object": "chat.completion",
            "created": context.created,
            "model": context.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(answer.finish),
            }],
            "usage": chat_usage(&answer.usage),
            "service_tier": "default",
            "system_fingerprint": context.fingerprint,
        }),
    )
}

/// What every chunk of one streamed completion repeats.
struct ChunkContext {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    include_usage: bool,
}

impl ChunkContext {
    /// `data: {chunk}\n\n`; `usage` is `null` on every chunk but the usage
    /// chunk, and absent unless the caller asked for usage.
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        self.chunk(
            json!([{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }]),
            None,
        )
    }
}

fn chat_stream(context: &ChunkContext, answer: &Answer, calls: &[ToolCall<'_>]) -> Vec<Bytes> {
    let mut events = Vec::new();
    let mut role_sent = false;
    let text = match (&answer.text, calls.is_empty()) {
        (Some(text), _) => Some(text.as_str()),
        // An answer with neither text nor calls still opens with the role.
        (None, true) => Some(""),
        (None, false) => None,
    };
    if let Some(text) = text {
        events.push(context.delta(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ));
        role_sent = true;
        for piece in split_words(text) {
            events.push(context.delta(json!({"content": piece}), None));
        }
    }
    for (index, call) in calls.iter().enumerate() {
        let head = json!({
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        });
        let delta = if role_sent {
            json!({"tool_calls": [head]})
        } else {
            role_sent = true;
            json!({"role": "assistant", "content": null, "tool_calls": [head], "refusal": null})
        };
        events.push(context.delta(delta, None));
        for fragment in fragments(call.arguments, ARGUMENT_FRAGMENT_CHARS) {
            events.push(context.delta(
                json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                None,
            ));
        }
    }
    events.push(context.delta(json!({}), Some(finish_reason(answer.finish))));
    if context.include_usage {
        events.push(context.chunk(json!([]), Some(chat_usage(&answer.usage))));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn responses_usage(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input,
        "input_tokens_details": {"cached_tokens": usage.cached_input},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.total(),
    })
}

/// One output item of a response, in the state it ends in.
enum Item<'a> {
    Message { id: String, text: &'a str },
    FunctionCall { id: String, call: ToolCall<'a> },
}

impl Item<'_> {
    fn id(&self) -> &str {
        match self {
            Item::Message { id, .. } | Item::FunctionCall { id, .. } => id,
        }
    }

    fn json(&self, status: &str) -> Value {
        match self {
            Item::Message { id, text } => json!({
                "id": id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [output_text(text)],
            }),
            Item::FunctionCall { id, call } => json!({
                "id": id,
                "type": "function_call",
                "status": status,
                "arguments": call.arguments,
                "call_id": call.id,
                "name": call.name,
            }),
        }
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

fn responses(core: &Arc<Core>, call: &Call) -> Response<Body> {
    if let Some(refusal) = validate(core, call, None) {
        return refusal;
    }
    let answer = match core.next_answer() {
        Ok(answer) => answer,
        Err(failed) => {
            return failure(core, call, Surface::Responses, failed.status, &failed.kind);
        }
    };
    let mut items = Vec::new();
    if let Some(text) = &answer.text {
        items.push(Item::Message {
            id: format!("msg_{}", core.hex(50)),
            text,
        });
    }
    for tool_call in tool_calls(core, &answer) {
        items.push(Item::FunctionCall {
            id: format!("fc_{}", core.hex(50)),
            call: tool_call,
        });
    }
    let truncated = answer.finish == Finish::Length;
    let end_status = if truncated { "incomplete" } else { "completed" };
    let shell = ResponseShell {
        id: format!("resp_{}", core.hex(50)),
        created_at: now_s(),
        request: call.body(),
    };
    let done: Vec<Value> = items.iter().map(|item| item.json(end_status)).collect();
    let final_response = shell.object(end_status, truncated, done, responses_usage(&answer.usage));
    if !call.bool_field("stream") {
        return json_response(core, &final_response);
    }
    let mut stream = ResponseEvents::default();
    let started = shell.object("in_progress", false, Vec::new(), Value::Null);
    stream.push("response.created", json!({"response": started}));
    stream.push("response.in_progress", json!({"response": started}));
    for (output_index, item) in items.iter().enumerate() {
        stream.push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": item_in_progress(item)}),
        );
        match item {
            Item::Message { id, text } => {
                let part_head = json!({
                    "item_id": id, "output_index": output_index, "content_index": 0,
                });
                let mut added = part_head.clone();
                added["part"] = output_text("");
                stream.push("response.content_part.added", added);
                for piece in split_words(text) {
                    let mut delta = part_head.clone();
                    delta["delta"] = json!(piece);
                    delta["logprobs"] = json!([]);
                    stream.push("response.output_text.delta", delta);
                }
                let mut text_done = part_head.clone();
                text_done["text"] = json!(text);
                text_done["logprobs"] = json!([]);
                stream.push("response.output_text.done", text_done);
                let mut part_done = part_head;
                part_done["part"] = output_text(text);
                stream.push("response.content_part.done", part_done);
            }
            Item::FunctionCall { id, call } => {
                for fragment in fragments(call.arguments, ARGUMENT_FRAGMENT_CHARS) {
                    stream.push(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": output_index, "delta": fragment}),
                    );
                }
                stream.push(
                    "response.function_call_arguments.done",
                    json!({
                        "item_id": id,
                        "output_index": output_index,
                        "name": call.name,
                        "arguments": call.arguments,
                    }),
                );
            }
        }
        stream.push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": item.json(end_status)}),
        );
    }
    let last = if truncated {
        "response.incomplete"
    } else {
        "response.completed"
    };
    stream.push(last, json!({"response": final_response}));
    core.stream(EVENT_STREAM, &headers(core), stream.events)
}

fn item_in_progress(item: &Item<'_>) -> Value {
    match item {
        Item::Message { .. } => json!({
            "id": item.id(),
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }),
        Item::FunctionCall { call, .. } => json!({
            "id": item.id(),
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call.id,
            "name": call.name,
        }),
    }
}

/// The fields of a `response` object that do not change while it streams.
struct ResponseShell<'a> {
    id: String,
    created_at: u64,
    request: &'a Value,
}

impl ResponseShell<'_> {
    fn echo(&self, field: &str, default: Value) -> Value {
        self.request
            .get(field)
            .filter(|value| !value.is_null())
            .cloned()
            .unwrap_or(default)
    }

    fn object(&self, status: &str, truncated: bool, output: Vec<Value>, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": if truncated {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "instructions": self.echo("instructions", Value::Null),
            "max_output_tokens": self.echo("max_output_tokens", Value::Null),
            "max_tool_calls": null,
            "model": self.echo("model", Value::Null),
            "output": output,
            "parallel_tool_calls": self.echo("parallel_tool_calls", json!(true)),
            "previous_response_id": self.echo("previous_response_id", Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": self.echo("store", json!(true)),
            "temperature": self.echo("temperature", json!(1.0)),
            "text": self.echo("text", json!({"format": {"type": "text"}})),
            "tool_choice": self.echo("tool_choice", json!("auto")),
            "tools": self.echo("tools", json!([])),
            "top_p": self.echo("top_p", json!(1.0)),
            "truncation": self.echo("truncation", json!("disabled")),
            "usage": usage,
            "user": null,
            "metadata": self.echo("metadata", json!({})),
        })
    }
}

/// Named Responses API events, numbered in order.
#[derive(Default)]
struct ResponseEvents {
    events: Vec<Bytes>,
}

impl ResponseEvents {
    fn push(&mut self, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.events.len());
        self.events
            .push(Bytes::from(format!("event: {name}\ndata: {data}\n\n")));
    }
}

/// One input of an embeddings request.
enum EmbeddingInput {
    Text(String),
    Tokens(Vec<Value>),
}

impl EmbeddingInput {
    fn parse(value: &Value) -> Option<Self> {
        match value {
            Value::String(text) => Some(EmbeddingInput::Text(text.clone())),
            Value::Array(tokens) if tokens.iter().all(Value::is_u64) => {
                Some(EmbeddingInput::Tokens(tokens.clone()))
            }
            _ => None,
        }
    }

    fn tokens(&self) -> u64 {
        match self {
            EmbeddingInput::Text(text) => estimate_tokens(text),
            EmbeddingInput::Tokens(tokens) => tokens.len() as u64,
        }
    }

    fn seed(&self) -> u64 {
        let text = match self {
            EmbeddingInput::Text(text) => text.clone(),
            EmbeddingInput::Tokens(tokens) => Value::Array(tokens.clone()).to_string(),
        };
        // FNV-1a: the same input gives the same vector in every run.
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

/// A unit vector determined by the input, rounded to six decimals.
fn embedding_vector(input: &EmbeddingInput, dimensions: usize) -> Vec<f64> {
    let seed = input.seed();
    let raw: Vec<f64> = (0..dimensions as u64)
        .map(|index| {
            let mut z = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|value| value * value).sum::<f64>().sqrt();
    raw.iter()
        .map(|value| {
            let unit = if norm > 0.0 { value / norm } else { 0.0 };
            (unit * 1e6).round() / 1e6
        })
        .collect()
}

fn embeddings(core: &Arc<Core>, call: &Call) -> Response<Body> {
    if let Some(refusal) = validate(core, call, Some("input")) {
        return refusal;
    }
    let input = call.body().get("input").unwrap_or(&Value::Null);
    let inputs: Option<Vec<EmbeddingInput>> = match input {
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            EmbeddingInput::parse(input).map(|one| vec![one])
        }
        Value::Array(items) => items.iter().map(EmbeddingInput::parse).collect(),
        other => EmbeddingInput::parse(other).map(|one| vec![one]),
    };
    let invalid = |core: &Core| {
        error(
            core,
            400,
            Vec::new(),
            error_body(
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                "invalid_request_error",
                None,
                None,
            ),
        )
    };
    let Some(inputs) = inputs.filter(|inputs| !inputs.is_empty()) else {
        return invalid(core);
    };
    let dimensions = match call.body().get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64() {
            Some(dimensions @ 1..) if dimensions as usize <= MAX_DIMENSIONS => dimensions as usize,
            _ => {
                return error(
                    core,
                    400,
                    Vec::new(),
                    error_body(
                        &format!(
                            "Invalid value for 'dimensions' = {value}. Must be between 1 and {MAX_DIMENSIONS}."
                        ),
                        "invalid_request_error",
                        Some("dimensions"),
                        None,
                    ),
                );
            }
        },
    };
    let base64 = call.str_field("encoding_format") == Some("base64");
    // A scripted reply sets the token count (or fails the call); without
    // one the count is estimated from the input.
    let prompt_tokens = match core.take_scripted().map(super::Reply::into_answer) {
        Some(Ok(answer)) => answer.usage.input,
        Some(Err(failed)) => {
            return failure(core, call, Surface::Embeddings, failed.status, &failed.kind);
        }
        None => inputs.iter().map(EmbeddingInput::tokens).sum(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(input, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|value| (*value as f32).to_le_bytes())
                    .collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json_response(
        core,
        &json!({
            "object": "list",
            "data": data,
            "model": call.str_field("model"),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    )
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "system"})
}

fn models(core: &Core) -> Response<Body> {
    let data: Vec<Value> = lock(&core.models)
        .iter()
        .map(|id| model_object(id))
        .collect();
    json_response(core, &json!({"object": "list", "data": data}))
}

fn model(core: &Core, id: &str) -> Response<Body> {
    if lock(&core.models).iter().any(|known| known == id) {
        return json_response(core, &model_object(id));
    }
    error(
        core,
        404,
        Vec::new(),
        error_body(
            &format!("The model '{id}' does not exist"),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        ),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{Event, client, parse_sse};
    use super::super::{ErrorKind, FakeOpenAi, Reply, Usage};

    async fn post(fake: &FakeOpenAi, path: &str, key: &str, body: Value) -> reqwest::Response {
        client()
            .post(format!("{}{path}", fake.url()))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn stream_events(response: reqwest::Response) -> Vec<Event> {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        assert_eq!(response.headers()["cache-control"], "no-cache");
        parse_sse(&response.text().await.unwrap(), "\n\n")
    }

    fn chat_request(stream: bool, include_usage: Option<bool>) -> Value {
        let mut request = json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Say hello"}],
        });
        if stream {
            request["stream"] = json!(true);
        }
        if let Some(include_usage) = include_usage {
            request["stream_options"] = json!({"include_usage": include_usage});
        }
        request
    }

    #[tokio::test]
    async fn a_chat_completion_has_openais_shape() {
        let fake = FakeOpenAi::start().await;
        assert_eq!(fake.url(), format!("http://{}/v1", fake.addr));
        let response = post(
            &fake,
            "/chat/completions",
            "sk-one",
            chat_request(false, None),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        let body: Value = response.json().await.unwrap();
        let id = body["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-") && id.len() == "chatcmpl-".len() + 29);
        assert_eq!(body["object"], "chat.completion");
        assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(body["model"], "gpt-4o-mini");
        assert!(
            body["system_fingerprint"]
                .as_str()
                .unwrap()
                .starts_with("fp_")
        );
        assert_eq!(
            body["choices"],
            json!([{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello from FakeOpenAi",
                    "refusal": null,
                    "annotations": [],
                },
                "logprobs": null,
                "finish_reason": "stop",
            }])
        );
        assert_eq!(
            body["usage"],
            json!({
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            })
        );
        let recorded = fake.last_request().unwrap();
        assert_eq!(recorded.method, "POST");
        assert_eq!(recorded.path, "/v1/chat/completions");
        assert_eq!(recorded.key.as_deref(), Some("sk-one"));
        assert_eq!(recorded.header("Authorization"), Some("Bearer sk-one"));
        assert_eq!(recorded.body, chat_request(false, None));
        assert_eq!(fake.hits(), 1);
    }

    #[tokio::test]
    async fn cached_and_reasoning_tokens_go_in_the_details() {
        let fake = FakeOpenAi::start().await;
        fake.push(Reply::truncated(
            "Cut",
            Usage::new(100, 40).with_cached_input(60).with_reasoning(30),
        ));
        let body: Value = post(&fake, "/chat/completions", "k", chat_request(false, None))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["prompt_tokens"], 100);
        assert_eq!(body["usage"]["completion_tokens"], 40);
        assert_eq!(body["usage"]["total_tokens"], 140);
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 60);
        assert_eq!(
            body["usage"]["completion_tokens_details"]["reasoning_tokens"],
            30
        );
    }

    #[tokio::test]
    async fn a_stream_without_include_usage_carries_no_usage() {
        let fake = FakeOpenAi::start().await;
        let events =
            stream_events(post(&fake, "/chat/completions", "k", chat_request(true, None)).await)
                .await;
        assert_eq!(events.len(), 6, "{events:#?}");
        assert!(events.iter().all(|event| event.name.is_none()));
        assert_eq!(events[5].data, "[DONE]");
        let chunks: Vec<Value> = events[..5].iter().map(Event::json).collect();
        let id = chunks[0]["id"].clone();
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], id);
            assert_eq!(chunk["model"], "gpt-4o-mini");
            assert!(chunk.get("usage").is_none(), "{chunk}");
        }
        let deltas: Vec<Value> = chunks
            .iter()
            .map(|chunk| chunk["choices"][0]["delta"].clone())
            .collect();
        assert_eq!(
            deltas,
            [
                json!({"role": "assistant", "content": "", "refusal": null}),
                json!({"content": "Hello"}),
                json!({"content": " from"}),
                json!({"content": " FakeOpenAi"}),
                json!({}),
            ]
        );
        let finishes: Vec<Value> = chunks
            .iter()
            .map(|chunk| chunk["choices"][0]["finish_reason"].clone())
            .collect();
        assert_eq!(
            finishes,
            [
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                json!("stop")
            ]
        );
        assert_eq!(fake.streams_completed(), 1);
    }

    #[tokio::test]
    async fn include_usage_adds_a_last_chunk_with_empty_choices() {
        let fake = FakeOpenAi::start().await;
        fake.push(Reply::text(
            "Two words",
            Usage::new(7, 2).with_cached_input(3),
        ));
        let events = stream_events(
            post(
                &fake,
                "/chat/completions",
                "k",
                chat_request(true, Some(true)),
            )
            .await,
        )
        .await;
        assert_eq!(events.len(), 6, "{events:#?}");
        assert_eq!(events[5].data, "[DONE]");
        let chunks: Vec<Value> = events[..5].iter().map(Event::json).collect();
        for chunk in &chunks[..4] {
            assert_eq!(chunk["usage"], Value::Null, "{chunk}");
            assert!(chunk.get("usage").is_some());
            assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
        }
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(chunks[4]["usage"]["prompt_tokens"], 7);
        assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
        assert_eq!(chunks[4]["usage"]["total_tokens"], 9);
        assert_eq!(
            chunks[4]["usage"]["prompt_tokens_details"]["cached_tokens"],
            3
        );

        // include_usage: false is the same as no stream_options.
        let events = stream_events(
            post(
                &fake,
                "/chat/completions",
                "k",
                chat_request(true, Some(false)),
            )
            .await,
        )
        .await;
        assert!(
            events
                .iter()
                .filter(|event| event.data != "[DONE]")
                .all(|event| event.json().get("usage").is_none())
        );
    }

    #[tokio::test]
    async fn stream_options_without_stream_is_refused() {
        let fake = FakeOpenAi::start().await;
        let response = post(
            &fake,
            "/chat/completions",
            "k",
            chat_request(false, Some(true)),
        )
        .await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["param"], "stream_options");
        // Refusals take no scripted reply.
        fake.push(Reply::text("kept", Usage::new(1, 1)));
        let response = post(&fake, "/chat/completions", "k", json!({"model": "m"})).await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "missing_required_parameter");
        assert_eq!(fake.pending_replies(), 1);
    }

    #[tokio::test]
    async fn parallel_tool_calls_plain_and_streamed() {
        let fake = FakeOpenAi::start().await;
        let calls = [
            ("get_weather", r#"{"city":"Paris","unit":"celsius"}"#),
            ("get_time", r#"{"tz":"Europe/Paris"}"#),
        ];
        fake.push(Reply::tool_calls(&calls, Usage::new(50, 20)));
        let body: Value = post(&fake, "/chat/completions", "k", chat_request(false, None))
            .await
            .json()
            .await
            .unwrap();
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let tool_calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(tool_calls.len(), 2);
        for (tool_call, (name, arguments)) in tool_calls.iter().zip(calls) {
            assert!(tool_call["id"].as_str().unwrap().starts_with("call_"));
            assert_eq!(tool_call["type"], "function");
            assert_eq!(tool_call["function"]["name"], name);
            assert_eq!(tool_call["function"]["arguments"], arguments);
        }

        fake.push(Reply::tool_calls(&calls, Usage::new(50, 20)));
        let events = stream_events(
            post(
                &fake,
                "/chat/completions",
                "k",
                chat_request(true, Some(true)),
            )
            .await,
        )
        .await;
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
        let first = &chunks[0]["choices"][0]["delta"];
        assert_eq!(first["role"], "assistant");
        assert_eq!(first["content"], Value::Null);
        assert_eq!(first["tool_calls"][0]["index"], 0);
        assert_eq!(first["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(first["tool_calls"][0]["function"]["arguments"], "");
        // Rebuild the calls from the deltas, as a client does.
        let mut rebuilt: Vec<(String, String, String)> = Vec::new();
        for chunk in &chunks {
            let Some(choice) = chunk["choices"].get(0) else {
                continue;
            };
            for delta in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let index = delta["index"].as_u64().unwrap() as usize;
                if let Some(id) = delta["id"].as_str() {
                    assert_eq!(index, rebuilt.len());
                    assert_eq!(delta["type"], "function");
                    rebuilt.push((
                        id.to_owned(),
                        delta["function"]["name"].as_str().unwrap().to_owned(),
                        String::new(),
                    ));
                } else {
                    assert!(delta.get("type").is_none() && delta["function"].get("name").is_none());
                }
                rebuilt[index]
                    .2
                    .push_str(delta["function"]["arguments"].as_str().unwrap());
            }
        }
        assert_eq!(rebuilt.len(), 2);
        assert!(rebuilt.iter().all(|(id, _, _)| id.starts_with("call_")));
        assert_eq!(
            rebuilt
                .iter()
                .map(|(_, name, arguments)| (name.as_str(), arguments.as_str()))
                .collect::<Vec<_>>(),
            calls
        );
        let fragments_of_first = chunks
            .iter()
            .filter(|chunk| chunk["choices"][0]["delta"]["tool_calls"][0]["index"] == 0)
            .count();
        assert!(
            fragments_of_first > 2,
            "arguments come in several fragments"
        );
        let finish = &chunks[chunks.len() - 2]["choices"][0];
        assert_eq!(finish["finish_reason"], "tool_calls");
        assert_eq!(finish["delta"], json!({}));
        assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 20);
    }

    #[tokio::test]
    async fn keys_are_checked_and_rate_limits_apply_per_key() {
        let fake = FakeOpenAi::start().await;
        fake.set_keys(&["sk-good-0001", "sk-good-0002"]);

        let response = client()
            .post(format!("{}/chat/completions", fake.url()))
            .json(&chat_request(false, None))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], Value::Null);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("You didn't provide an API key")
        );

        let response = post(
            &fake,
            "/chat/completions",
            "sk-wrong-key-9999",
            chat_request(false, None),
        )
        .await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": {
                "message": "Incorrect API key provided: sk-w*********9999. You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": null,
                "code": "invalid_api_key",
            }})
        );

        fake.rate_limit_key_for("sk-good-0001", 7);
        fake.push(Reply::text("for the second key", Usage::new(1, 4)));
        let response = post(
            &fake,
            "/chat/completions",
            "sk-good-0001",
            chat_request(false, None),
        )
        .await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "requests");
        assert_eq!(body["error"]["param"], Value::Null);
        // The 429 took no reply: the other key gets it.
        let body: Value = post(
            &fake,
            "/chat/completions",
            "sk-good-0002",
            chat_request(false, None),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "for the second key"
        );
        fake.clear_rate_limits();
        let response = post(
            &fake,
            "/chat/completions",
            "sk-good-0001",
            chat_request(false, None),
        )
        .await;
        assert_eq!(response.status(), 200);
        let keys: Vec<Option<String>> = fake.requests().into_iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            [
                None,
                Some("sk-wrong-key-9999".to_owned()),
                Some("sk-good-0001".to_owned()),
                Some("sk-good-0002".to_owned()),
                Some("sk-good-0001".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn scripted_errors_have_openais_shapes() {
        let fake = FakeOpenAi::start().await;
        fake.push(Reply::context_length_exceeded());
        fake.push(Reply::rate_limited(3));
        fake.push(Reply::server_error());
        fake.push(Reply::overloaded());
        fake.push(Reply::Error {
            status: Some(502),
            kind: ErrorKind::Server,
        });
        fake.push(Reply::invalid_request("Invalid 'messages[0].role'."));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let response = post(
                &fake,
                "/chat/completions",
                "k",
                chat_request(true, Some(true)),
            )
            .await;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().to_owned());
            assert_eq!(response.headers()["content-type"], "application/json");
            let body: Value = response.json().await.unwrap();
            let mut fields: Vec<&String> = body["error"].as_object().unwrap().keys().collect();
            fields.sort();
            assert_eq!(fields, ["code", "message", "param", "type"]);
            seen.push((
                status,
                body["error"]["type"].clone(),
                body["error"]["code"].clone(),
                retry_after,
            ));
        }
        assert_eq!(
            seen,
            [
                (
                    400,
                    json!("invalid_request_error"),
                    json!("context_length_exceeded"),
                    None
                ),
                (
                    429,
                    json!("requests"),
                    json!("rate_limit_exceeded"),
                    Some("3".to_owned())
                ),
                (500, json!("server_error"), Value::Null, None),
                (503, json!("server_error"), Value::Null, None),
                (502, json!("server_error"), Value::Null, None),
                (400, json!("invalid_request_error"), Value::Null, None),
            ]
        );
        // The queue is empty again: the default reply.
        let body: Value = post(&fake, "/chat/completions", "k", chat_request(false, None))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Hello from FakeOpenAi"
        );
    }

    #[tokio::test]
    async fn embeddings_are_deterministic_unit_vectors() {
        let fake = FakeOpenAi::start().await;
        let request = json!({
            "model": "text-embedding-3-small",
            "input": ["first text", "second"],
            "dimensions": 4,
        });
        let body: Value = post(&fake, "/embeddings", "k", request.clone())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "text-embedding-3-small");
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 5, "total_tokens": 5})
        );
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        for (index, item) in data.iter().enumerate() {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], index);
            let vector: Vec<f64> = item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|value| value.as_f64().unwrap())
                .collect();
            assert_eq!(vector.len(), 4);
            let norm: f64 = vector.iter().map(|value| value * value).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        }
        assert_ne!(data[0]["embedding"], data[1]["embedding"]);
        let again: Value = post(&fake, "/embeddings", "k", request)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["data"], body["data"]);

        let base64: Value = post(
            &fake,
            "/embeddings",
            "k",
            json!({"model": "text-embedding-3-small", "input": "first text", "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
        let encoded = base64["data"][0]["embedding"].as_str().unwrap();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(bytes.len(), 8 * 4, "8 dimensions by default, 4 bytes each");

        fake.push(Reply::text("", Usage::new(42, 0)));
        let scripted: Value = post(
            &fake,
            "/embeddings",
            "k",
            json!({"model": "text-embedding-3-small", "input": [[1, 2, 3]]}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(scripted["usage"]["prompt_tokens"], 42);
        assert_eq!(
            scripted["data"][0]["embedding"].as_array().unwrap().len(),
            8
        );
    }

    #[tokio::test]
    async fn models_are_listed() {
        let fake = FakeOpenAi::start().await;
        fake.set_models(&["gpt-4o", "o3"]);
        let body: Value = client()
            .get(format!("{}/models", fake.url()))
            .bearer_auth("k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"][1]["id"], "o3");
        assert_eq!(body["data"][1]["object"], "model");
        assert_eq!(body["data"][1]["owned_by"], "system");
        let missing = client()
            .get(format!("{}/models/nope", fake.url()))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let body: Value = missing.json().await.unwrap();
        assert_eq!(body["error"]["code"], "model_not_found");
    }

    #[tokio::test]
    async fn the_responses_api_plain_and_streamed() {
        let fake = FakeOpenAi::start().await;
        fake.push(Reply::text(
            "Hi there",
            Usage::new(20, 6).with_cached_input(4).with_reasoning(2),
        ));
        let request = json!({"model": "gpt-4.1", "input": "Say hi", "instructions": "Be brief"});
        let body: Value = post(&fake, "/responses", "k", request.clone())
            .await
            .json()
            .await
            .unwrap();
        assert!(body["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(body["object"], "response");
        assert_eq!(body["status"], "completed");
        assert_eq!(body["model"], "gpt-4.1");
        assert_eq!(body["instructions"], "Be brief");
        let output = body["output"].as_array().unwrap();
        assert_eq!(output.len(), 1);
        assert!(output[0]["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(output[0]["type"], "message");
        assert_eq!(output[0]["role"], "assistant");
        assert_eq!(output[0]["content"][0]["type"], "output_text");
        assert_eq!(output[0]["content"][0]["text"], "Hi there");
        assert_eq!(
            body["usage"],
            json!({
                "input_tokens": 20,
                "input_tokens_details": {"cached_tokens": 4},
                "output_tokens": 6,
                "output_tokens_details": {"reasoning_tokens": 2},
                "total_tokens": 26,
            })
        );

        fake.push(Reply::ToolCalls {
            calls: vec![("lookup".to_owned(), r#"{"q":"rust"}"#.to_owned())],
            text: Some("Let me check".to_owned()),
            usage: Usage::new(30, 9),
        });
        let mut streamed = request;
        streamed["stream"] = json!(true);
        let events = stream_events(post(&fake, "/responses", "k", streamed).await).await;
        let names: Vec<&str> = events
            .iter()
            .map(|event| event.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (number, event) in events.iter().enumerate() {
            let data = event.json();
            assert_eq!(data["type"], event.name.as_deref().unwrap());
            assert_eq!(data["sequence_number"], number);
        }
        assert_eq!(events[0].json()["response"]["status"], "in_progress");
        assert_eq!(events[0].json()["response"]["usage"], Value::Null);
        let text: String = events
            .iter()
            .filter(|event| event.name.as_deref() == Some("response.output_text.delta"))
            .map(|event| event.json()["delta"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, "Let me check");
        let arguments: String = events
            .iter()
            .filter(|event| event.name.as_deref() == Some("response.function_call_arguments.delta"))
            .map(|event| event.json()["delta"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(arguments, r#"{"q":"rust"}"#);
        let completed = events.last().unwrap().json();
        let output = completed["response"]["output"].as_array().unwrap();
        assert_eq!(output[1]["type"], "function_call");
        assert_eq!(output[1]["name"], "lookup");
        assert!(output[1]["call_id"].as_str().unwrap().starts_with("call_"));
        assert!(output[1]["id"].as_str().unwrap().starts_with("fc_"));
        assert_eq!(completed["response"]["usage"]["input_tokens"], 30);
        assert_eq!(completed["response"]["usage"]["output_tokens"], 9);
    }
}
