//! The Gemini dialect (Generative Language API, `v1beta`):
//! `POST models/{model}:generateContent`, `:streamGenerateContent`
//! (`?alt=sse` for SSE, otherwise a streamed JSON array), `:countTokens`,
//! and `GET models`, `GET models/{model}`.
//!
//! - The key comes in `x-goog-api-key` or `?key=`. A wrong key is 400
//!   `INVALID_ARGUMENT` with an `API_KEY_INVALID` detail, a missing one 403
//!   `PERMISSION_DENIED`, as the real API answers.
//! - A response has `candidates[]` (`content.parts[]` with `text` or
//!   `functionCall {name, args}`, `role: "model"`, `finishReason`, `index`),
//!   `usageMetadata` (`candidatesTokenCount` excludes `thoughtsTokenCount`;
//!   zero counts are left out, as proto3 JSON does), `modelVersion` (the
//!   model of the URL) and `responseId`.
//! - SSE chunks are `data: {GenerateContentResponse}\r\n\r\n`, one word of
//!   text each, every chunk with `usageMetadata` (cumulative, exact on the
//!   last), function calls as whole parts in the last chunk, and
//!   `finishReason` on the last chunk only.
//! - Errors are `{"error": {"code", "message", "status"}}` (+ `details`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::Response;
use serde_json::{Value, json};

use super::{
    Answer, Body, Call, Core, Dialect, ErrorKind, Finish, KeyCheck, Usage, arguments_object,
    estimate_value_tokens, full_response, lock, split_words,
};

pub(crate) const DIALECT: Dialect = Dialect {
    default_name: "FakeGemini",
    base_path: "/v1beta",
    default_models: &["gemini-2.5-flash", "gemini-2.5-pro"],
    key,
    respond,
};

const JSON: &str = "application/json; charset=UTF-8";
const EVENT_STREAM: &str = "text/event-stream";

fn key(headers: &BTreeMap<String, String>, query: &str) -> Option<String> {
    if let Some(key) = headers.get("x-goog-api-key") {
        return Some(key.trim().to_owned());
    }
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "key")
        .map(|(_, value)| value.into_owned())
}

/// How a generate call answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unary,
    Sse,
    JsonArray,
}

fn respond(core: &Arc<Core>, call: &Call) -> Response<Body> {
    let recorded = &call.recorded;
    match core.check_key(recorded.key.as_deref()) {
        KeyCheck::Missing => {
            return error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                None,
            );
        }
        KeyCheck::Invalid => return failure("", None, &ErrorKind::InvalidKey),
        KeyCheck::Accepted => {}
    }
    let rest = recorded
        .path
        .strip_prefix("/v1beta/")
        .or_else(|| recorded.path.strip_prefix("/v1/"))
        .unwrap_or("");
    let model_and_method = rest.strip_prefix("models/");
    let (model, method) = model_and_method
        .and_then(|tail| tail.rsplit_once(':'))
        .unwrap_or((model_and_method.unwrap_or(""), ""));
    if let Some(retry_after_s) = core.rate_limit_for(recorded.key.as_deref()) {
        let kind = ErrorKind::RateLimited { retry_after_s };
        return failure(model, None, &kind);
    }
    let alt_sse = recorded.query_param("alt").as_deref() == Some("sse");
    match (recorded.method.as_str(), method) {
        ("GET", "") if rest == "models" => models(core),
        ("GET", "") if model_and_method.is_some() => model_info(core, model),
        ("POST", "generateContent") => generate(core, call, model, Mode::Unary),
        ("POST", "streamGenerateContent") => {
            let mode = if alt_sse { Mode::Sse } else { Mode::JsonArray };
            generate(core, call, model, mode)
        }
        ("POST", "countTokens") => count_tokens(call),
        _ => error(
            404,
            &format!(
                "models/{model} is not found for API version v1beta, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods."
            ),
            None,
        ),
    }
}

/// The canonical status name of an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn json_response(body: &Value) -> Response<Body> {
    full_response(200, JSON, &[], body.to_string())
}

fn error(status: u16, message: &str, details: Option<Value>) -> Response<Body> {
    let mut error = json!({
        "code": status,
        "message": message,
        "status": status_name(status),
    });
    if let Some(details) = details {
        error["details"] = details;
    }
    full_response(status, JSON, &[], json!({ "error": error }).to_string())
}

fn failure(model: &str, status: Option<u16>, kind: &ErrorKind) -> Response<Body> {
    let (default_status, message, details) = match kind {
        ErrorKind::RateLimited { retry_after_s } => (
            429,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.".to_owned(),
            Some(json!([
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "10",
                    }],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [{
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{retry_after_s}s"),
                },
            ])),
        ),
        ErrorKind::Server => (
            500,
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting".to_owned(),
            None,
        ),
        ErrorKind::Overloaded => (
            503,
            "The model is overloaded. Please try again later.".to_owned(),
            None,
        ),
        ErrorKind::ContextLength => (
            400,
            "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).".to_owned(),
            None,
        ),
        ErrorKind::InvalidRequest { message } => (400, message.clone(), None),
        ErrorKind::InvalidKey => (
            400,
            "API key not valid. Please pass a valid API key.".to_owned(),
            Some(json!([
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": "API key not valid. Please pass a valid API key.",
                },
            ])),
        ),
    };
    error(status.unwrap_or(default_status), &message, details)
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop | Finish::ToolCalls => "STOP",
        Finish::Length => "MAX_TOKENS",
    }
}

/// `usageMetadata` with `candidates` visible output tokens so far.
fn usage_metadata(usage: &Usage, candidates: u64) -> Value {
    let mut metadata = json!({
        "promptTokenCount": usage.input,
        "totalTokenCount": usage.input + candidates + usage.reasoning,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.input}],
    });
    if candidates > 0 {
        metadata["candidatesTokenCount"] = json!(candidates);
    }
    if usage.cached_input > 0 {
        metadata["cachedContentTokenCount"] = json!(usage.cached_input);
        metadata["cacheTokensDetails"] =
            json!([{"modality": "TEXT", "tokenCount": usage.cached_input}]);
    }
    if usage.reasoning > 0 {
        metadata["thoughtsTokenCount"] = json!(usage.reasoning);
    }
    metadata
}

fn function_call_parts(answer: &Answer) -> Vec<Value> {
    answer
        .calls
        .iter()
        .map(|(name, arguments)| {
            json!({"functionCall": {"name": name, "args": arguments_object(arguments)}})
        })
        .collect()
}

fn generate(core: &Arc<Core>, call: &Call, model: &str, mode: Mode) -> Response<Body> {
    if call.json_error {
        return error(
            400,
            "Invalid JSON payload received. Unexpected token.",
            None,
        );
    }
    let has_contents = call
        .body()
        .get("contents")
        .and_then(Value::as_array)
        .is_some_and(|contents| !contents.is_empty());
    if !has_contents {
        return error(
            400,
            "* GenerateContentRequest.contents: contents is not specified\n",
            None,
        );
    }
    let answer = match core.next_answer() {
        Ok(answer) => answer,
        Err(failed) => return failure(model, failed.status, &failed.kind),
    };
    let response_id = core.base62(23);
    let chunk = |parts: Vec<Value>, finish: Option<&str>, candidates: u64| -> Value {
        let mut candidate = json!({
            "content": {"parts": parts, "role": "model"},
            "index": 0,
        });
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": usage_metadata(&answer.usage, candidates),
            "modelVersion": model,
            "responseId": response_id,
        })
    };
    let finish = finish_reason(answer.finish);
    let visible = answer.usage.visible_output();
    if mode == Mode::Unary {
        let mut parts = Vec::new();
        if let Some(text) = &answer.text {
            parts.push(json!({"text": text}));
        }
        parts.extend(function_call_parts(&answer));
        return json_response(&chunk(parts, Some(finish), visible));
    }
    // One chunk per word, and the function calls together in a last one.
    let mut chunk_parts: Vec<Vec<Value>> = answer
        .text
        .as_deref()
        .map(split_words)
        .unwrap_or_default()
        .into_iter()
        .map(|piece| vec![json!({"text": piece})])
        .collect();
    let calls = function_call_parts(&answer);
    if !calls.is_empty() {
        chunk_parts.push(calls);
    }
    if chunk_parts.is_empty() {
        chunk_parts.push(vec![json!({"text": ""})]);
    }
    let count = chunk_parts.len() as u64;
    let chunks: Vec<Value> = chunk_parts
        .into_iter()
        .enumerate()
        .map(|(index, parts)| {
            let index = index as u64;
            let last = index + 1 == count;
            let candidates = (visible * (index + 1)).div_ceil(count);
            chunk(parts, last.then_some(finish), candidates)
        })
        .collect();
    if mode == Mode::Sse {
        let events = chunks
            .iter()
            .map(|chunk| Bytes::from(format!("data: {chunk}\r\n\r\n")))
            .collect();
        return core.stream(EVENT_STREAM, &[], events);
    }
    // Without alt=sse: one JSON array, sent an element at a time.
    let last = chunks.len().saturating_sub(1);
    let elements = chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            let open = if index == 0 { "[" } else { ",\r\n" };
            let close = if index == last { "]" } else { "" };
            Bytes::from(format!("{open}{chunk}{close}"))
        })
        .collect();
    core.stream(JSON, &[], elements)
}

/// `{"totalTokens": n}`, estimated from the request (no reply is taken).
fn count_tokens(call: &Call) -> Response<Body> {
    if call.json_error {
        return error(
            400,
            "Invalid JSON payload received. Unexpected token.",
            None,
        );
    }
    let tokens = estimate_value_tokens(call.body());
    json_response(&json!({
        "totalTokens": tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}],
    }))
}

fn model_object(id: &str) -> Value {
    json!({
        "name": format!("models/{id}"),
        "version": "001",
        "displayName": id,
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    })
}

fn models(core: &Core) -> Response<Body> {
    let models: Vec<Value> = lock(&core.models)
        .iter()
        .map(|id| model_object(id))
        .collect();
    json_response(&json!({ "models": models }))
}

fn model_info(core: &Core, id: &str) -> Response<Body> {
    if lock(&core.models).iter().any(|known| known == id) {
        return json_response(&model_object(id));
    }
    error(404, &format!("models/{id} is not found"), None)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{client, parse_sse};
    use super::super::{FakeGemini, Reply, Usage};

    fn request() -> Value {
        json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]})
    }

    async fn generate(fake: &FakeGemini, model: &str, key: &str) -> reqwest::Response {
        client()
            .post(format!("{}/models/{model}:generateContent", fake.url()))
            .header("x-goog-api-key", key)
            .json(&request())
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_response_has_geminis_shape() {
        let fake = FakeGemini::start().await;
        assert_eq!(fake.url(), format!("http://{}/v1beta", fake.addr));
        fake.push(Reply::text(
            "Thought about it",
            Usage::new(120, 50)
                .with_cached_input(100)
                .with_reasoning(30),
        ));
        let response = generate(&fake, "gemini-2.5-flash", "AIza-one").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/json; charset=UTF-8"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["candidates"],
            json!([{
                "content": {"parts": [{"text": "Thought about it"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }])
        );
        assert_eq!(
            body["usageMetadata"],
            json!({
                "promptTokenCount": 120,
                "candidatesTokenCount": 20,
                "thoughtsTokenCount": 30,
                "cachedContentTokenCount": 100,
                "totalTokenCount": 170,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}],
                "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 100}],
            })
        );
        assert_eq!(body["modelVersion"], "gemini-2.5-flash");
        assert_eq!(body["responseId"].as_str().unwrap().len(), 23);
        let recorded = fake.last_request().unwrap();
        assert_eq!(
            recorded.path,
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(recorded.key.as_deref(), Some("AIza-one"));

        // The key may come in the query instead; the default reply.
        let body: Value = client()
            .post(format!(
                "{}/models/gemini-2.5-pro:generateContent?key=AIza-two",
                fake.url()
            ))
            .json(&request())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["candidates"][0]["content"]["parts"],
            json!([{"text": "Hello from FakeGemini"}])
        );
        assert_eq!(body["modelVersion"], "gemini-2.5-pro");
        assert_eq!(body["usageMetadata"]["totalTokenCount"], 15);
        assert!(body["usageMetadata"].get("thoughtsTokenCount").is_none());
        let recorded = fake.last_request().unwrap();
        assert_eq!(recorded.key.as_deref(), Some("AIza-two"));
        assert_eq!(recorded.query_param("key").as_deref(), Some("AIza-two"));
    }

    #[tokio::test]
    async fn an_sse_stream_has_usage_on_every_chunk() {
        let fake = FakeGemini::start().await;
        fake.push(Reply::ToolCalls {
            calls: vec![
                ("get_weather".to_owned(), r#"{"city":"Oslo"}"#.to_owned()),
                ("get_time".to_owned(), r#"{"city":"Oslo"}"#.to_owned()),
            ],
            text: Some("Let me look".to_owned()),
            usage: Usage::new(40, 12),
        });
        let response = client()
            .post(format!(
                "{}/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                fake.url()
            ))
            .header("x-goog-api-key", "k")
            .json(&request())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let text = response.text().await.unwrap();
        let events = parse_sse(&text, "\r\n\r\n");
        assert_eq!(events.len(), 4, "three words and the calls: {text}");
        let chunks: Vec<Value> = events.iter().map(|event| event.json()).collect();
        let response_id = chunks[0]["responseId"].clone();
        for (index, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk["responseId"], response_id);
            assert_eq!(chunk["modelVersion"], "gemini-2.5-flash");
            assert_eq!(chunk["candidates"][0]["content"]["role"], "model");
            assert_eq!(chunk["candidates"][0]["index"], 0);
            assert_eq!(chunk["usageMetadata"]["promptTokenCount"], 40);
            let finish = chunk["candidates"][0].get("finishReason");
            if index < 3 {
                assert!(finish.is_none(), "{chunk}");
            } else {
                assert_eq!(finish, Some(&json!("STOP")));
            }
        }
        let words: Vec<Value> = chunks[..3]
            .iter()
            .map(|chunk| chunk["candidates"][0]["content"]["parts"].clone())
            .collect();
        assert_eq!(
            words,
            [
                json!([{"text": "Let"}]),
                json!([{"text": " me"}]),
                json!([{"text": " look"}]),
            ]
        );
        assert_eq!(
            chunks[3]["candidates"][0]["content"]["parts"],
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                {"functionCall": {"name": "get_time", "args": {"city": "Oslo"}}},
            ])
        );
        let counts: Vec<Value> = chunks
            .iter()
            .map(|chunk| chunk["usageMetadata"]["candidatesTokenCount"].clone())
            .collect();
        assert_eq!(counts, [json!(3), json!(6), json!(9), json!(12)]);
        assert_eq!(chunks[3]["usageMetadata"]["totalTokenCount"], 52);

        // Without alt=sse the same answer is one JSON array.
        let response = client()
            .post(format!(
                "{}/models/gemini-2.5-flash:streamGenerateContent",
                fake.url()
            ))
            .header("x-goog-api-key", "k")
            .json(&request())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "application/json; charset=UTF-8"
        );
        let array: Value = response.json().await.unwrap();
        assert_eq!(array.as_array().unwrap().len(), 3);
        assert_eq!(array[2]["candidates"][0]["finishReason"], "STOP");
    }

    #[tokio::test]
    async fn keys_and_errors_have_geminis_shape() {
        let fake = FakeGemini::start().await;
        fake.set_keys(&["AIza-good", "AIza-spare"]);

        let missing = client()
            .post(format!(
                "{}/models/gemini-2.5-flash:generateContent",
                fake.url()
            ))
            .json(&request())
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 403);
        let body: Value = missing.json().await.unwrap();
        assert_eq!(body["error"]["code"], 403);
        assert_eq!(body["error"]["status"], "PERMISSION_DENIED");

        let wrong = generate(&fake, "gemini-2.5-flash", "AIza-bad").await;
        assert_eq!(wrong.status(), 400);
        let body: Value = wrong.json().await.unwrap();
        assert_eq!(body["error"]["code"], 400);
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(
            body["error"]["message"],
            "API key not valid. Please pass a valid API key."
        );
        assert_eq!(body["error"]["details"][0]["reason"], "API_KEY_INVALID");

        fake.rate_limit_key_for("AIza-good", 20);
        let limited = generate(&fake, "gemini-2.5-flash", "AIza-good").await;
        assert_eq!(limited.status(), 429);
        assert!(limited.headers().get("retry-after").is_none());
        let body: Value = limited.json().await.unwrap();
        assert_eq!(body["error"]["code"], 429);
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        let retry = body["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
            .unwrap();
        assert_eq!(retry["retryDelay"], "20s");
        assert_eq!(
            generate(&fake, "gemini-2.5-flash", "AIza-spare")
                .await
                .status(),
            200
        );

        fake.push(Reply::overloaded());
        fake.push(Reply::server_error());
        fake.push(Reply::context_length_exceeded());
        fake.push(Reply::Error {
            status: Some(504),
            kind: super::super::ErrorKind::Server,
        });
        let mut seen = Vec::new();
        for _ in 0..4 {
            let response = generate(&fake, "gemini-2.5-flash", "AIza-spare").await;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], status);
            seen.push((status, body["error"]["status"].as_str().unwrap().to_owned()));
        }
        assert_eq!(
            seen,
            [
                (503, "UNAVAILABLE".to_owned()),
                (500, "INTERNAL".to_owned()),
                (400, "INVALID_ARGUMENT".to_owned()),
                (504, "DEADLINE_EXCEEDED".to_owned()),
            ]
        );

        let no_contents = client()
            .post(format!(
                "{}/models/gemini-2.5-flash:generateContent",
                fake.url()
            ))
            .header("x-goog-api-key", "AIza-spare")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(no_contents.status(), 400);
    }

    #[tokio::test]
    async fn count_tokens_and_models() {
        let fake = FakeGemini::start().await;
        let body: Value = client()
            .post(format!(
                "{}/models/gemini-2.5-flash:countTokens",
                fake.url()
            ))
            .header("x-goog-api-key", "k")
            .json(&json!({"contents": [{"parts": [{"text": "twelve chars"}]}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["totalTokens"], 3);
        let body: Value = client()
            .get(format!("{}/models", fake.url()))
            .header("x-goog-api-key", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["models"][0]["name"], "models/gemini-2.5-flash");
        assert_eq!(fake.hits(), 2);
    }
}
