//! The Anthropic dialect: the Messages API (`POST /v1/messages`), token
//! counting (`POST /v1/messages/count_tokens`) and `GET /v1/models`.
//!
//! - Every request needs `x-api-key` and `anthropic-version`.
//! - A message has `content` blocks (`text`, `tool_use` with a parsed
//!   `input`), `stop_reason` (`end_turn`, `max_tokens`, `tool_use`),
//!   `stop_sequence` and usage where `input_tokens` excludes cache reads
//!   (`cache_read_input_tokens`) and writes (`cache_creation_input_tokens`).
//! - A stream is `event: X\ndata: {...}\n\n` events: `message_start` (the
//!   message with empty content and the input usage), per block
//!   `content_block_start`, deltas (`text_delta` or `input_json_delta`),
//!   `content_block_stop`, a `ping` after the first block starts, then
//!   `message_delta` (stop reason, cumulative `output_tokens`) and
//!   `message_stop`.
//! - Errors are `{"type": "error", "error": {"type", "message"},
//!   "request_id"}`; overload is 529 `overloaded_error`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::Response;
use serde_json::{Value, json};

use super::{
    Answer, Body, Call, Core, Dialect, ErrorKind, Finish, KeyCheck, Usage, arguments_object,
    estimate_value_tokens, fragments, full_response, lock, split_words,
};

pub(crate) const DIALECT: Dialect = Dialect {
    default_name: "FakeAnthropic",
    base_path: "",
    default_models: &["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"],
    key,
    respond,
};

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";
const ARGUMENT_FRAGMENT_CHARS: usize = 8;

fn key(headers: &BTreeMap<String, String>, _query: &str) -> Option<String> {
    headers.get("x-api-key").map(|key| key.trim().to_owned())
}

fn respond(core: &Arc<Core>, call: &Call) -> Response<Body> {
    let recorded = &call.recorded;
    match core.check_key(recorded.key.as_deref()) {
        KeyCheck::Missing => {
            return error(
                core,
                401,
                "authentication_error",
                "x-api-key header is required",
                Vec::new(),
            );
        }
        KeyCheck::Invalid => return failure(core, None, &ErrorKind::InvalidKey),
        KeyCheck::Accepted => {}
    }
    if recorded
        .header("anthropic-version")
        .is_none_or(|version| version.trim().is_empty())
    {
        return error(
            core,
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            Vec::new(),
        );
    }
    if let Some(retry_after_s) = core.rate_limit_for(recorded.key.as_deref()) {
        return failure(core, None, &ErrorKind::RateLimited { retry_after_s });
    }
    match (recorded.method.as_str(), recorded.path.as_str()) {
        ("POST", "/v1/messages") => messages(core, call),
        ("POST", "/v1/messages/count_tokens") => count_tokens(core, call),
        ("GET", "/v1/models") => models(core),
        _ => error(core, 404, "not_found_error", "Not found", Vec::new()),
    }
}

fn request_id(core: &Core) -> String {
    format!("req_011C{}", core.base62(20))
}

fn json_response(core: &Core, body: &Value) -> Response<Body> {
    full_response(
        200,
        JSON,
        &[("request-id", request_id(core))],
        body.to_string(),
    )
}

fn error(
    core: &Core,
    status: u16,
    kind: &str,
    message: &str,
    extra_headers: Vec<(&'static str, String)>,
) -> Response<Body> {
    let request_id = request_id(core);
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    });
    let mut headers = vec![("request-id", request_id)];
    headers.extend(extra_headers);
    full_response(status, JSON, &headers, body.to_string())
}

fn failure(core: &Core, status: Option<u16>, kind: &ErrorKind) -> Response<Body> {
    let (default_status, error_type, message, extra_headers) = match kind {
        ErrorKind::RateLimited { retry_after_s } => (
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization (org-fake) of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.".to_owned(),
            vec![
                ("retry-after", retry_after_s.to_string()),
                ("anthropic-ratelimit-requests-limit", "50".to_owned()),
                ("anthropic-ratelimit-requests-remaining", "0".to_owned()),
            ],
        ),
        ErrorKind::Server => (500, "api_error", "Internal server error".to_owned(), Vec::new()),
        ErrorKind::Overloaded => (529, "overloaded_error", "Overloaded".to_owned(), Vec::new()),
        ErrorKind::ContextLength => (
            400,
            "invalid_request_error",
            "prompt is too long: 200001 tokens > 200000 maximum".to_owned(),
            Vec::new(),
        ),
        ErrorKind::InvalidRequest { message } => {
            (400, "invalid_request_error", message.clone(), Vec::new())
        }
        ErrorKind::InvalidKey => (
            401,
            "authentication_error",
            "invalid x-api-key".to_owned(),
            Vec::new(),
        ),
    };
    error(
        core,
        status.unwrap_or(default_status),
        error_type,
        &message,
        extra_headers,
    )
}

/// A JSON body with the required fields, or the 400 Anthropic gives.
fn validate(core: &Core, call: &Call, required: &[&str]) -> Option<Response<Body>> {
    if call.json_error || !call.body().is_object() {
        return Some(error(
            core,
            400,
            "invalid_request_error",
            "There was an issue with your request body: it is not a JSON object.",
            Vec::new(),
        ));
    }
    let missing = required
        .iter()
        .find(|field| call.body().get(**field).is_none_or(Value::is_null))?;
    Some(error(
        core,
        400,
        "invalid_request_error",
        &format!("{missing}: Field required"),
        Vec::new(),
    ))
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
    }
}

/// Anthropic's usage object; `output_tokens` as given (the stream's
/// `message_start` reports an early count).
fn usage_json(usage: &Usage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": usage.uncached_input(),
        "cache_creation_input_tokens": usage.cache_write_input,
        "cache_read_input_tokens": usage.cached_input,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_input,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

/// One content block of the answer.
enum Block<'a> {
    Text(&'a str),
    ToolUse {
        id: String,
        name: &'a str,
        arguments: &'a str,
    },
}

fn blocks<'a>(core: &Core, answer: &'a Answer) -> Vec<Block<'a>> {
    let mut blocks = Vec::new();
    match &answer.text {
        Some(text) => blocks.push(Block::Text(text)),
        None if answer.calls.is_empty() => blocks.push(Block::Text("")),
        None => {}
    }
    for (name, arguments) in &answer.calls {
        blocks.push(Block::ToolUse {
            id: format!("toolu_01{}", core.base62(22)),
            name,
            arguments,
        });
    }
    blocks
}

fn messages(core: &Arc<Core>, call: &Call) -> Response<Body> {
    if let Some(refusal) = validate(core, call, &["model", "messages", "max_tokens"]) {
        return refusal;
    }
    let answer = match core.next_answer() {
        Ok(answer) => answer,
        Err(failed) => return failure(core, failed.status, &failed.kind),
    };
    let id = format!("msg_01{}", core.base62(22));
    let model = call.str_field("model").unwrap_or_default();
    let blocks = blocks(core, &answer);
    if !call.bool_field("stream") {
        let content: Vec<Value> = blocks
            .iter()
            .map(|block| match block {
                Block::Text(text) => json!({"type": "text", "text": text}),
                Block::ToolUse {
                    id,
                    name,
                    arguments,
                } => json!({
                    "type": "tool_use",
                    "id": id,
                    "name": name,
                    "input": arguments_object(arguments),
                }),
            })
            .collect();
        return json_response(
            core,
            &json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason(answer.finish),
                "stop_sequence": null,
                "usage": usage_json(&answer.usage, answer.usage.output),
            }),
        );
    }
    let mut events = Vec::new();
    let mut push = |name: &str, data: Value| {
        events.push(Bytes::from(format!("event: {name}\ndata: {data}\n\n")));
    };
    push(
        "message_start",
        json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage_json(&answer.usage, answer.usage.output.min(1)),
            },
        }),
    );
    for (index, block) in blocks.iter().enumerate() {
        let (start, deltas) = match block {
            Block::Text(text) => (
                json!({"type": "text", "text": ""}),
                split_words(text)
                    .into_iter()
                    .map(|piece| json!({"type": "text_delta", "text": piece}))
                    .collect::<Vec<_>>(),
            ),
            Block::ToolUse {
                id,
                name,
                arguments,
            } => (
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                // The API opens a tool's input with an empty fragment.
                std::iter::once(String::new())
                    .chain(fragments(arguments, ARGUMENT_FRAGMENT_CHARS))
                    .map(|fragment| json!({"type": "input_json_delta", "partial_json": fragment}))
                    .collect(),
            ),
        };
        push(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        if index == 0 {
            push("ping", json!({"type": "ping"}));
        }
        for delta in deltas {
            push(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        push(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        );
    }
    push(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(answer.finish), "stop_sequence": null},
            "usage": {"output_tokens": answer.usage.output},
        }),
    );
    push("message_stop", json!({"type": "message_stop"}));
    core.stream(EVENT_STREAM, &[("request-id", request_id(core))], events)
}

/// `{"input_tokens": n}`, estimated from the messages, system prompt and
/// tools (no scripted reply is taken).
fn count_tokens(core: &Core, call: &Call) -> Response<Body> {
    if let Some(refusal) = validate(core, call, &["model", "messages"]) {
        return refusal;
    }
    let body = call.body();
    let counted: Vec<Value> = ["system", "messages", "tools"]
        .iter()
        .filter_map(|field| body.get(*field).cloned())
        .collect();
    let tokens = estimate_value_tokens(&Value::Array(counted));
    json_response(core, &json!({"input_tokens": tokens.max(1)}))
}

fn models(core: &Core) -> Response<Body> {
    let ids = lock(&core.models).clone();
    let data: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "type": "model",
                "id": id,
                "display_name": id,
                "created_at": "2025-09-29T00:00:00Z",
            })
        })
        .collect();
    json_response(
        core,
        &json!({
            "data": data,
            "has_more": false,
            "first_id": ids.first(),
            "last_id": ids.last(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{Event, client, parse_sse};
    use super::super::{FakeAnthropic, Reply, Usage};

    fn request(stream: bool) -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": stream,
        })
    }

    async fn post(
        fake: &FakeAnthropic,
        path: &str,
        key: Option<&str>,
        body: Value,
    ) -> reqwest::Response {
        let mut builder = client()
            .post(format!("{}{path}", fake.url()))
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        builder.send().await.unwrap()
    }

    async fn events(response: reqwest::Response) -> Vec<Event> {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let events = parse_sse(&response.text().await.unwrap(), "\n\n");
        for event in &events {
            // Each event's name is repeated as the data's type.
            assert_eq!(event.json()["type"], event.name.as_deref().unwrap());
        }
        events
    }

    fn names(events: &[Event]) -> Vec<&str> {
        events
            .iter()
            .map(|event| event.name.as_deref().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_message_has_anthropics_shape() {
        let fake = FakeAnthropic::start().await;
        assert_eq!(fake.url(), format!("http://{}", fake.addr));
        fake.push(Reply::text(
            "Cached answer",
            Usage::new(1000, 12)
                .with_cached_input(800)
                .with_cache_write_input(150),
        ));
        let response = post(&fake, "/v1/messages", Some("sk-ant-1"), request(false)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(
            response.headers()["request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        let body: Value = response.json().await.unwrap();
        let id = body["id"].as_str().unwrap();
        assert!(id.starts_with("msg_01") && id.len() == 28, "{id}");
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], "claude-sonnet-4-5");
        assert_eq!(
            body["content"],
            json!([{"type": "text", "text": "Cached answer"}])
        );
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["stop_sequence"], Value::Null);
        assert_eq!(
            body["usage"]["input_tokens"], 50,
            "input excludes cache reads and writes"
        );
        assert_eq!(body["usage"]["cache_read_input_tokens"], 800);
        assert_eq!(body["usage"]["cache_creation_input_tokens"], 150);
        assert_eq!(body["usage"]["output_tokens"], 12);
        let recorded = fake.last_request().unwrap();
        assert_eq!(recorded.key.as_deref(), Some("sk-ant-1"));
        assert_eq!(recorded.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(recorded.body["max_tokens"], 256);

        // The default reply.
        let body: Value = post(&fake, "/v1/messages", Some("k"), request(false))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["content"][0]["text"], "Hello from FakeAnthropic");
        assert_eq!(body["usage"]["input_tokens"], 10);
        assert_eq!(body["usage"]["output_tokens"], 5);
    }

    #[tokio::test]
    async fn a_streamed_message_follows_the_documented_event_order() {
        let fake = FakeAnthropic::start().await;
        fake.push(Reply::text(
            "Hello there friend",
            Usage::new(25, 15).with_cached_input(5),
        ));
        let events = events(post(&fake, "/v1/messages", Some("k"), request(true)).await).await;
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let start = events[0].json();
        assert!(
            start["message"]["id"]
                .as_str()
                .unwrap()
                .starts_with("msg_01")
        );
        assert_eq!(start["message"]["content"], json!([]));
        assert_eq!(start["message"]["model"], "claude-sonnet-4-5");
        assert_eq!(start["message"]["stop_reason"], Value::Null);
        assert_eq!(start["message"]["usage"]["input_tokens"], 20);
        assert_eq!(start["message"]["usage"]["cache_read_input_tokens"], 5);
        assert_eq!(start["message"]["usage"]["output_tokens"], 1);
        assert_eq!(
            events[1].json(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(events[2].json(), json!({"type": "ping"}));
        let text: Vec<Value> = events[3..6]
            .iter()
            .map(|event| event.json()["delta"].clone())
            .collect();
        assert_eq!(
            text,
            [
                json!({"type": "text_delta", "text": "Hello"}),
                json!({"type": "text_delta", "text": " there"}),
                json!({"type": "text_delta", "text": " friend"}),
            ]
        );
        assert_eq!(
            events[6].json(),
            json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            events[7].json(),
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 15},
            })
        );
        assert_eq!(events[8].json(), json!({"type": "message_stop"}));
    }

    #[tokio::test]
    async fn tool_use_blocks_plain_and_streamed() {
        let fake = FakeAnthropic::start().await;
        let reply = Reply::ToolCalls {
            calls: vec![
                (
                    "get_weather".to_owned(),
                    r#"{"location":"San Francisco"}"#.to_owned(),
                ),
                ("get_time".to_owned(), r#"{"tz":"PST"}"#.to_owned()),
            ],
            text: Some("Checking.".to_owned()),
            usage: Usage::new(400, 60),
        };
        fake.push(reply.clone());
        let body: Value = post(&fake, "/v1/messages", Some("k"), request(false))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["stop_reason"], "tool_use");
        let content = body["content"].as_array().unwrap();
        assert_eq!(content.len(), 3);
        assert_eq!(content[0], json!({"type": "text", "text": "Checking."}));
        assert_eq!(content[1]["type"], "tool_use");
        assert!(content[1]["id"].as_str().unwrap().starts_with("toolu_01"));
        assert_eq!(content[1]["name"], "get_weather");
        assert_eq!(content[1]["input"], json!({"location": "San Francisco"}));
        assert_eq!(content[2]["input"], json!({"tz": "PST"}));

        fake.push(reply);
        let events = events(post(&fake, "/v1/messages", Some("k"), request(true)).await).await;
        let names = names(&events);
        assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
        assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
        // Block 1 is the first tool: its start, then its input in pieces.
        let starts: Vec<Value> = events
            .iter()
            .filter(|event| event.name.as_deref() == Some("content_block_start"))
            .map(Event::json)
            .collect();
        assert_eq!(starts.len(), 3);
        assert_eq!(starts[1]["index"], 1);
        assert_eq!(starts[1]["content_block"]["type"], "tool_use");
        assert_eq!(starts[1]["content_block"]["name"], "get_weather");
        assert_eq!(starts[1]["content_block"]["input"], json!({}));
        let input_of = |index: u64| -> String {
            events
                .iter()
                .map(Event::json)
                .filter(|data| data["type"] == "content_block_delta" && data["index"] == index)
                .map(|data| {
                    assert_eq!(data["delta"]["type"], "input_json_delta");
                    data["delta"]["partial_json"].as_str().unwrap().to_owned()
                })
                .collect()
        };
        assert_eq!(input_of(1), r#"{"location":"San Francisco"}"#);
        assert_eq!(input_of(2), r#"{"tz":"PST"}"#);
        let stops = names
            .iter()
            .filter(|name| **name == "content_block_stop")
            .count();
        assert_eq!(stops, 3);
        let delta = events[events.len() - 2].json();
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["output_tokens"], 60);
    }

    #[tokio::test]
    async fn errors_have_anthropics_shape() {
        let fake = FakeAnthropic::start().await;
        fake.set_keys(&["sk-ant-good"]);

        let missing = post(&fake, "/v1/messages", None, request(false)).await;
        assert_eq!(missing.status(), 401);
        let body: Value = missing.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(body["request_id"].as_str().unwrap().starts_with("req_"));

        let wrong = post(&fake, "/v1/messages", Some("sk-ant-bad"), request(false)).await;
        assert_eq!(wrong.status(), 401);
        let body: Value = wrong.json().await.unwrap();
        assert_eq!(
            body["error"],
            json!({"type": "authentication_error", "message": "invalid x-api-key"})
        );

        let no_version = client()
            .post(format!("{}/v1/messages", fake.url()))
            .header("x-api-key", "sk-ant-good")
            .json(&request(false))
            .send()
            .await
            .unwrap();
        assert_eq!(no_version.status(), 400);
        let body: Value = no_version.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(
            body["error"]["message"],
            "anthropic-version: header is required"
        );

        let mut no_max_tokens = request(false);
        no_max_tokens.as_object_mut().unwrap().remove("max_tokens");
        let refused = post(&fake, "/v1/messages", Some("sk-ant-good"), no_max_tokens).await;
        assert_eq!(refused.status(), 400);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["message"], "max_tokens: Field required");

        fake.push(Reply::overloaded());
        fake.push(Reply::context_length_exceeded());
        fake.push(Reply::server_error());
        let mut seen = Vec::new();
        for _ in 0..3 {
            let response = post(&fake, "/v1/messages", Some("sk-ant-good"), request(true)).await;
            let status = response.status().as_u16();
            assert_eq!(response.headers()["content-type"], "application/json");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["type"], "error");
            assert_eq!(
                body["request_id"].as_str().unwrap().len(),
                "req_".len() + 24
            );
            seen.push((status, body["error"]["type"].as_str().unwrap().to_owned()));
        }
        assert_eq!(
            seen,
            [
                (529, "overloaded_error".to_owned()),
                (400, "invalid_request_error".to_owned()),
                (500, "api_error".to_owned()),
            ]
        );

        fake.rate_limit_key("sk-ant-good");
        let limited = post(&fake, "/v1/messages", Some("sk-ant-good"), request(false)).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["retry-after"], "1");
        let body: Value = limited.json().await.unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error");
        fake.clear_rate_limits();
        let fine = post(&fake, "/v1/messages", Some("sk-ant-good"), request(false)).await;
        assert_eq!(fine.status(), 200);
    }

    #[tokio::test]
    async fn count_tokens_takes_no_reply() {
        let fake = FakeAnthropic::start().await;
        fake.push(Reply::text("kept for later", Usage::new(1, 1)));
        let response = post(
            &fake,
            "/v1/messages/count_tokens",
            Some("k"),
            json!({
                "model": "claude-sonnet-4-5",
                "system": "You are terse.",
                "messages": [{"role": "user", "content": "Hello, Claude"}],
            }),
        )
        .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        // Every string counts ("You are terse.", "user", "Hello,
        // Claude"): 31 characters, a token per 4, rounded up.
        assert_eq!(body, json!({"input_tokens": 8}));
        assert_eq!(fake.pending_replies(), 1);
    }
}
