//! The AI gateway through the real binary: fake OpenAI, Anthropic and
//! Gemini servers (`test-support`), an AI service with a priced plan, and
//! calls in both dialects, streamed and not; charges to the nano-unit,
//! fallbacks, key rotation, the affordability cap and 402s in the
//! caller's dialect.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use test_support::providers::{FakeAnthropic, FakeGemini, FakeOpenAi, Reply, Usage};

use crate::money::{grant, ledger, wallet};
use crate::{BIN, Tollgate, json};

/// Model prices per million tokens used by every test model: input 1.00,
/// output 2.00, cached input 0.50 (USD); the service's markup is 1.5.
const MODEL_PRICES: &str = r#"{"input_per_million": "1", "output_per_million": "2", "cached_input_per_million": "0.5", "context_window": 100000, "max_output_tokens": 4000, "modalities": {"input": ["text", "image"], "output": ["text"]}}"#;

pub(crate) struct AiWorld {
    pub key: String,
}

/// Teams acme (consumer, 10 USD) and llmco (provider); providers `oai`
/// (OpenAI kind), `claude` (Anthropic) and `gem` (Gemini) on the fakes,
/// each with a model `*-test`; an AI service `llm` at `/llm` offering them
/// and an alias `smart` (oai, falling back to claude then gem); plan
/// `tokens`; app acme-bot subscribed.
pub(crate) async fn ai_world(
    tollgate: &Tollgate,
    openai: &FakeOpenAi,
    anthropic: &FakeAnthropic,
    gemini: &FakeGemini,
    plan: Value,
) -> AiWorld {
    for team in ["acme", "llmco"] {
        tollgate
            .create("/api/v1/teams", json!({"slug": team, "name": team}))
            .await;
    }
    let prices: Value = serde_json::from_str(MODEL_PRICES).unwrap();
    for (slug, kind, url, model, keys) in [
        (
            "oai",
            "openai",
            openai.url(),
            "gpt-test",
            vec!["sk-test-one", "sk-test-two"],
        ),
        (
            "claude",
            "anthropic",
            anthropic.url(),
            "claude-test",
            vec!["ak-test-one"],
        ),
        (
            "gem",
            "gemini",
            gemini.url(),
            "gemini-test",
            vec!["gk-test-one"],
        ),
    ] {
        tollgate
            .create(
                "/api/v1/providers",
                json!({"slug": slug, "kind": kind, "base_url": url}),
            )
            .await;
        for key in keys {
            tollgate
                .create(
                    &format!("/api/v1/providers/{slug}/keys"),
                    json!({"key": key}),
                )
                .await;
        }
        let (status, body) = tollgate
            .admin(
                Method::PUT,
                &format!("/api/v1/providers/{slug}/models/{model}"),
                Some(prices.clone()),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "llm", "team": "llmco", "kind": "ai", "base_path": "/llm",
                "visibility": "catalog",
                "ai": {"models": ["oai/gpt-test", "claude/claude-test", "gem/gemini-test"],
                       "aliases": {"smart": {"targets": [{"model": "oai/gpt-test"}],
                                             "fallbacks": ["claude/claude-test", "gem/gemini-test"]}},
                       "markup": "1.5",
                       "timeouts": {"first_token_ms": 2000, "total_ms": 10000}}}),
        )
        .await;
    let mut plan_body = json!({"slug": "tokens"});
    if let (Value::Object(target), Value::Object(extra)) = (&mut plan_body, plan) {
        target.extend(extra);
    }
    tollgate
        .create("/api/v1/services/llm/plans", plan_body)
        .await;
    tollgate
        .create("/api/v1/services/llm/publish", json!({}))
        .await;
    let key = crate::app_with_key(tollgate, "acme", "acme-bot").await;
    crate::subscribe_app(tollgate, "acme-bot", "llm", "tokens").await;
    let (status, body) = grant(
        tollgate,
        "acme",
        json!({"amount": "10", "reason": "test credit", "idempotency_key": "ai-credit"}),
    )
    .await;
    assert!(status.is_success(), "{body}");
    // Subscribed and paid: the gateway knows within a second.
    let started = std::time::Instant::now();
    loop {
        let models = tollgate.get_with_key("/v1/models", &key).await;
        let balance_known = wallet(tollgate, "acme").await["balance_nanos"] == 10_000_000_000i64;
        if models.status() == 200 && balance_known {
            let body: Value = models.json().await.unwrap();
            if body["data"].as_array().is_some_and(|d| !d.is_empty()) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "AI service not served: {}",
            tollgate
                .get_with_key("/v1/models", &key)
                .await
                .text()
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The wallet sync brings the grant to the gateway within 200 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    AiWorld { key }
}

pub(crate) async fn fakes() -> (FakeOpenAi, FakeAnthropic, FakeGemini) {
    (
        FakeOpenAi::start().await,
        FakeAnthropic::start().await,
        FakeGemini::start().await,
    )
}

/// A one-line chat to `model`, without `max_tokens`.
async fn short_chat(tollgate: &Tollgate, key: &str, model: &str) -> reqwest::Response {
    post(
        tollgate,
        "/v1/chat/completions",
        key,
        json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await
}

async fn post(tollgate: &Tollgate, path: &str, key: &str, body: Value) -> reqwest::Response {
    tollgate
        .client
        .post(format!("{}{path}", tollgate.gateway_url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `POST /v1/messages` as Anthropic's SDKs send it (`x-api-key`,
/// `anthropic-version`).
async fn post_messages(tollgate: &Tollgate, key: &str, body: Value) -> reqwest::Response {
    tollgate
        .client
        .post(format!("{}/v1/messages", tollgate.gateway_url))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of an SSE body, with their `event:` names.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut event = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event = Some(name.trim().to_owned());
            } else if let Some(payload) = line.strip_prefix("data:") {
                data.push(payload.trim_start().to_owned());
            }
        }
        events.push((event, data.join("\n")));
    }
    events
}

/// Nano-units of `input`/`output` tokens at the test prices × 1.5, rounded up.
fn cost(input: u64, output: u64) -> i64 {
    let nanos = input as i128 * 1_500_000_000 + output as i128 * 3_000_000_000;
    ((nanos + 999_999) / 1_000_000) as i64
}

fn nanos_of(decimal: &str) -> i64 {
    let negative = decimal.starts_with('-');
    let digits = decimal.trim_start_matches('-');
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let mut fraction = fraction.to_owned();
    while fraction.len() < 9 {
        fraction.push('0');
    }
    let value = whole.parse::<i64>().unwrap() * 1_000_000_000 + fraction.parse::<i64>().unwrap();
    if negative { -value } else { value }
}

/// The charges recorded for acme, as (request id, nano-units), once there
/// are `count` of them.
pub(crate) async fn charges(tollgate: &Tollgate, count: usize) -> Vec<(String, i64)> {
    let started = std::time::Instant::now();
    loop {
        let entries = ledger(tollgate, "acme", "&kind=charge").await;
        if entries.len() >= count {
            return entries
                .iter()
                .map(|e| {
                    (
                        e["request_id"].as_str().unwrap_or_default().to_owned(),
                        -nanos_of(e["amount"].as_str().unwrap()),
                    )
                })
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{} charges, want {count}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The response's `X-Request-Id`.
fn id_of(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn charge_of(charges: &[(String, i64)], request_id: &str) -> i64 {
    charges
        .iter()
        .find(|(id, _)| id == request_id)
        .unwrap_or_else(|| panic!("no charge for {request_id} in {charges:?}"))
        .1
}

#[tokio::test]
async fn openai_calls_are_proxied_metered_and_charged_exactly() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;

    // A model without a price is refused when the service is saved.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services",
            Some(
                json!({"slug": "typo", "team": "llmco", "kind": "ai", "base_path": "/typo",
                        "ai": {"models": ["oai/gpt-tset"]}}),
            ),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "ai.models", "{body}");
    assert!(body.to_string().contains("has no price"), "{body}");

    // GET /v1/models: what the app may use, aliases included.
    let models: Value = tollgate.json_with_key("/v1/models", &world.key).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "claude/claude-test",
            "gem/gemini-test",
            "oai/gpt-test",
            "smart"
        ]
    );
    assert_eq!(models["object"], "list");

    // Not streamed.
    openai.push(Reply::text(
        "Hello, Acme.",
        Usage::new(1000, 500).with_cached_input(200),
    ));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 600}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let request_id = id_of(&response);
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "oai/gpt-test");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello, Acme.");
    assert_eq!(body["usage"]["prompt_tokens"], 1000);
    assert_eq!(body["usage"]["completion_tokens"], 500);
    // 800 uncached input × 1.5 + 200 cached × 0.75 + 500 output × 3.
    let expected = (800 * 1_500_000_000i64 + 200 * 750_000_000 + 500 * 3_000_000_000) / 1_000_000;
    assert_eq!(expected, 2_850_000);
    assert_eq!(headers["tollgate-cost"], "0.00285 USD");
    assert_eq!(headers["tollgate-model"], "oai/gpt-test");
    assert!(
        headers["tollgate-balance"]
            .to_str()
            .unwrap()
            .ends_with(" USD")
    );
    let upstream = openai.last_request().unwrap();
    assert_eq!(upstream.path, "/v1/chat/completions");
    assert_eq!(upstream.body["model"], "gpt-test");
    assert_eq!(upstream.body["max_tokens"], 600);
    let key = upstream.header("authorization").unwrap().to_owned();
    assert!(
        key == "Bearer sk-test-one" || key == "Bearer sk-test-two",
        "{key}"
    );
    assert!(
        upstream.header("x-request-id") == Some(request_id.as_str()),
        "the request id reaches the provider"
    );

    // Streamed, with usage asked for: exactly one usage chunk, then [DONE].
    openai.push(Reply::text("One two three four", Usage::new(200, 100)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "Count"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let streamed_id = id_of(&response);
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{text}");
    assert_eq!(events.iter().filter(|(_, d)| d == "[DONE]").count(), 1);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
    assert_eq!(usage_chunks.len(), 1, "{text}");
    assert_eq!(usage_chunks[0]["usage"]["prompt_tokens"], 200);
    assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], 100);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "One two three four");
    assert!(chunks.iter().all(|c| c["model"] == "oai/gpt-test"));
    // The gateway always asks the provider for usage.
    assert_eq!(
        openai.last_request().unwrap().body["stream_options"]["include_usage"],
        true
    );

    // Streamed without usage asked for: none is sent, but it is charged.
    openai.push(Reply::text("Quiet", Usage::new(300, 40)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let quiet_id = id_of(&response);
    let text = response.text().await.unwrap();
    assert!(!text.contains("\"usage\":{"), "no usage chunk: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));

    let charges = charges(&tollgate, 3).await;
    assert_eq!(charge_of(&charges, &request_id), 2_850_000);
    assert_eq!(charge_of(&charges, &streamed_id), cost(200, 100));
    assert_eq!(charge_of(&charges, &quiet_id), cost(300, 40));
    let balance = wallet(&tollgate, "acme").await["balance_nanos"]
        .as_i64()
        .unwrap();
    assert_eq!(
        balance,
        10_000_000_000 - 2_850_000 - cost(200, 100) - cost(300, 40)
    );

    // The call log has the AI fields.
    let (status, log) = tollgate
        .admin(
            Method::GET,
            &format!("/api/v1/logs?request_id={streamed_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let mut log = log;
    while log["data"].as_array().is_none_or(|d| d.is_empty()) {
        assert!(started.elapsed() < Duration::from_secs(3), "not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = tollgate
            .admin(
                Method::GET,
                &format!("/api/v1/logs?request_id={streamed_id}"),
                None,
            )
            .await
            .1;
    }
    let entry = &log["data"][0];
    assert_eq!(entry["provider"], "oai", "{entry}");
    assert_eq!(entry["model"], "oai/gpt-test");
    assert_eq!(entry["input_tokens"], 200);
    assert_eq!(entry["output_tokens"], 100);
    assert_eq!(entry["service"], "llm");
    assert!(entry["ttft_ms"].as_f64().is_some(), "{entry}");
    assert!(
        entry["upstream_target"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert_eq!(entry["cost"], "0.0006");
}

#[tokio::test]
async fn dialects_translate_both_ways_streamed_and_not() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;

    // OpenAI caller → Anthropic provider.
    anthropic.push(Reply::text("Bonjour", Usage::new(50, 7)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "claude/claude-test", "max_tokens": 100, "stop": ["END"],
               "messages": [{"role": "system", "content": "Be French."}, {"role": "user", "content": "Hello"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Bonjour");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 50);
    let sent = anthropic.last_request().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("ak-test-one"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.body["model"], "claude-test");
    assert_eq!(sent.body["max_tokens"], 100);
    assert_eq!(sent.body["stop_sequences"], json!(["END"]));
    assert!(sent.body["system"].to_string().contains("Be French."));

    // OpenAI caller → Anthropic provider, streamed with tool calls.
    anthropic.push(Reply::tool_calls(
        &[
            ("get_weather", r#"{"city":"Paris"}"#),
            ("get_time", r#"{"tz":"CET"}"#),
        ],
        Usage::new(80, 20),
    ));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "claude/claude-test", "stream": true, "stream_options": {"include_usage": true},
               "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
                         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}],
               "messages": [{"role": "user", "content": "Weather and time in Paris?"}]}),
    )
    .await;
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let mut arguments = [String::new(), String::new()];
    let mut names = Vec::new();
    for chunk in &chunks {
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap() as usize;
            if let Some(name) = call["function"]["name"].as_str() {
                names.push((index, name.to_owned()));
            }
            arguments[index].push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(
        names,
        [(0, "get_weather".to_owned()), (1, "get_time".to_owned())]
    );
    assert_eq!(
        serde_json::from_str::<Value>(&arguments[0]).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&arguments[1]).unwrap(),
        json!({"tz": "CET"})
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    assert_eq!(chunks.iter().filter(|c| c["usage"].is_object()).count(), 1);

    // Anthropic caller (/v1/messages) → OpenAI provider, streamed: the
    // documented event order.
    openai.push(Reply::text("Hi from OpenAI", Usage::new(30, 4)));
    let response = post_messages(
        &tollgate,
        &world.key,
        json!({"model": "oai/gpt-test", "max_tokens": 50, "stream": true, "system": "Be brief.",
                      "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let names: Vec<String> = sse_events(&text)
        .into_iter()
        .filter_map(|(event, _)| event)
        .filter(|e| e != "ping")
        .collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("message_start"),
        "{text}"
    );
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    let order: Vec<&str> = names.iter().map(String::as_str).collect();
    let start = order
        .iter()
        .position(|n| *n == "content_block_start")
        .unwrap();
    let stop = order
        .iter()
        .position(|n| *n == "content_block_stop")
        .unwrap();
    assert!(start < stop);
    assert!(
        order[start + 1..stop]
            .iter()
            .all(|n| *n == "content_block_delta")
    );
    assert_eq!(order[order.len() - 2], "message_delta");
    let sent = openai.last_request().unwrap();
    assert_eq!(sent.body["messages"][0]["role"], "system");
    assert_eq!(sent.body["messages"][0]["content"], "Be brief.");

    // Anthropic caller → Anthropic provider, not streamed: passed through,
    // with the beta features the caller opted into.
    anthropic.push(Reply::text("Native", Usage::new(12, 3)));
    let response = tollgate
        .client
        .post(format!("{}/v1/messages", tollgate.gateway_url))
        .header("x-api-key", &world.key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "token-efficient-tools-2025-02-19")
        .json(&json!({"model": "claude/claude-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    let sent = anthropic.last_request().unwrap();
    assert_eq!(
        sent.header("anthropic-beta"),
        Some("token-efficient-tools-2025-02-19")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["text"], "Native");
    assert_eq!(body["usage"]["input_tokens"], 12);
    assert_eq!(body["model"], "claude/claude-test");

    // OpenAI caller → Gemini, streamed and not.
    gemini.push(Reply::text("From Gemini", Usage::new(40, 6)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "gem/gemini-test", "messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Hi"}],
               "response_format": {"type": "json_object"}}),
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], "From Gemini",
        "{body}"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 40);
    let sent = gemini.last_request().unwrap();
    assert_eq!(sent.path, "/v1beta/models/gemini-test:generateContent");
    assert_eq!(sent.header("x-goog-api-key"), Some("gk-test-one"));
    assert_eq!(
        sent.body["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert!(sent.body["systemInstruction"].to_string().contains("Sys"));
    gemini.push(Reply::text("Streamed from Gemini", Usage::new(40, 6)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "gem/gemini-test", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let text = response.text().await.unwrap();
    let content: String = sse_events(&text)
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| {
            serde_json::from_str::<Value>(d).ok()?["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "Streamed from Gemini");
    assert_eq!(
        gemini.last_request().unwrap().path,
        "/v1beta/models/gemini-test:streamGenerateContent"
    );
}

#[tokio::test]
async fn fallbacks_and_key_rotation() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;

    // One key of the pool is rate limited: every call still succeeds, and
    // the limited key rests after its 429.
    openai.rate_limit_key_for("sk-test-one", 60);
    for _ in 0..6 {
        let response = post(
            &tollgate,
            "/v1/chat/completions",
            &world.key,
            json!({"model": "oai/gpt-test", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let with_one = openai
        .requests()
        .iter()
        .filter(|r| r.header("authorization") == Some("Bearer sk-test-one"))
        .count();
    assert!(
        with_one <= 1,
        "a rate-limited key is rested, used {with_one} times"
    );
    openai.clear_rate_limits();

    // The alias falls back on 5xx, then on context length.
    openai.push(Reply::server_error());
    anthropic.push(Reply::text("fallback answer", Usage::new(10, 3)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["tollgate-model"], "claude/claude-test");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "smart");
    assert_eq!(body["choices"][0]["message"]["content"], "fallback answer");

    openai.push(Reply::context_length_exceeded());
    anthropic.push(Reply::overloaded());
    gemini.push(Reply::text("third time", Usage::new(10, 3)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["tollgate-model"], "gem/gemini-test");

    // A caller's own mistake is not retried elsewhere: relayed in its dialect.
    openai.push(Reply::invalid_request("temperature must be at most 2"));
    let hits = anthropic.hits();
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "smart", "temperature": 9, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("temperature"),
        "{body}"
    );
    // The envelope keeps the provider's kind of error; SPEC §4's members
    // stand beside it.
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert_eq!(body["code"], "bad_request", "{body}");
    assert_eq!(body["status"], 400, "{body}");
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .ends_with("/_tollgate/problems/bad-request"),
        "{body}"
    );
    assert_eq!(anthropic.hits(), hits);

    // Every target failing: 502 in the caller's dialect, nothing charged.
    assert_eq!(charges(&tollgate, 8).await.len(), 8, "6 + 2 answered calls");
    openai.push(Reply::server_error());
    anthropic.push(Reply::server_error());
    gemini.push(Reply::server_error());
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 502);
    let request_id = id_of(&response);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(body["code"], "upstream_error", "{body}");
    assert_eq!(body["status"], 502, "{body}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    assert!(!body["title"].as_str().unwrap().is_empty(), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ledger(&tollgate, "acme", "&kind=charge").await.len(), 8);
    // The call log knows it by its code.
    let started = std::time::Instant::now();
    loop {
        let (_, logs) = tollgate
            .admin(
                Method::GET,
                &format!("/api/v1/logs?request_id={request_id}"),
                None,
            )
            .await;
        if let Some(call) = logs["data"].as_array().and_then(|calls| calls.first()) {
            assert_eq!(call["code"], "upstream_error", "{call}");
            assert_eq!(call["problem"]["code"], "upstream_error", "{call}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_affordability_cap_and_402_in_each_dialect() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    // Output at 1000 USD per million tokens: 0.001 USD a token.
    let world = ai_world(
        &tollgate,
        &openai,
        &anthropic,
        &gemini,
        json!({"token_prices": {"*": {"input_per_million": "1", "output_per_million": "1000"}}}),
    )
    .await;
    // Spend all but 0.2 USD.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/teams/acme/wallet/adjustments",
            Some(json!({"amount": "-9.8", "reason": "test", "idempotency_key": "spend"})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    tokio::time::sleep(Duration::from_millis(400)).await;

    openai.push(Reply::text("short", Usage::new(20, 5)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "max_tokens": 1000, "messages": [{"role": "user", "content": "Write a long essay"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let capped = response.headers()["tollgate-max-tokens"]
        .to_str()
        .unwrap()
        .to_owned();
    let (cap, requested) = capped.split_once("; requested=").unwrap();
    assert_eq!(requested, "1000");
    let cap: u64 = cap.parse().unwrap();
    assert!(
        (150..200).contains(&cap),
        "0.2 USD buys under 200 tokens: {cap}"
    );
    assert_eq!(openai.last_request().unwrap().body["max_tokens"], cap);

    // Nearly nothing left: 402, in OpenAI's envelope with the problem beside it.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/teams/acme/wallet/adjustments",
            Some(json!({"amount": "-0.19", "reason": "test", "idempotency_key": "spend-more"})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let hits = openai.hits();
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 402);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_credit", "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["code"], "insufficient_credit");
    assert_eq!(body["status"], 402);
    assert_eq!(body["currency"], "USD");
    assert!(
        body["balance"].is_string() && body["required"].is_string(),
        "{body}"
    );
    assert!(
        body["top_up_url"]
            .as_str()
            .unwrap()
            .ends_with("/_tollgate/portal/teams/acme/wallet")
    );
    // `max_tokens` is required on /v1/messages, as Anthropic requires it.
    let response = post_messages(
        &tollgate,
        &world.key,
        json!({"model": "oai/gpt-test", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("max_tokens"),
        "{body}"
    );
    // Anthropic's envelope on /v1/messages.
    let response = post_messages(&tollgate, &world.key, json!({"model": "oai/gpt-test", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]})).await;
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "billing_error");
    assert_eq!(body["code"], "insufficient_credit");
    assert_eq!(
        openai.hits(),
        hits,
        "refused calls never reach the provider"
    );

    // Unknown model and bad input: errors in the dialect.
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "nope/nothing", "messages": []}),
    )
    .await;
    assert_eq!(response.status(), 404);
    let not_found_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    // Refused before admission, the call is still its caller's: logged
    // under its app, to be looked up with its key.
    let started = std::time::Instant::now();
    loop {
        let looked_up = tollgate
            .get_with_key(&format!("/_tollgate/requests/{not_found_id}"), &world.key)
            .await;
        if looked_up.status() == 200 {
            let call: Value = looked_up.json().await.unwrap();
            assert_eq!(call["decision"]["code"], "model_not_found", "{call}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            looked_up.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = tollgate
        .client
        .post(format!("{}/v1/chat/completions", tollgate.gateway_url))
        .bearer_auth(&world.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    // Fields of the wrong type are refused, not replaced or sent on.
    for (field, value) in [
        ("max_tokens", json!("10")),
        ("stream", json!("yes")),
        ("n", json!(0)),
    ] {
        let mut request =
            json!({"model": "oai/gpt-test", "messages": [{"role": "user", "content": "Hi"}]});
        request[field] = value;
        let response = post(&tollgate, "/v1/chat/completions", &world.key, request).await;
        assert_eq!(response.status(), 400, "{field}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    let response = tollgate
        .client
        .post(format!("{}/v1/chat/completions", tollgate.gateway_url))
        .json(&json!({"model": "oai/gpt-test", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn a_caller_that_leaves_mid_stream_pays_for_what_was_produced() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    let words: Vec<String> = (0..200).map(|n| format!("word{n}")).collect();
    openai.push(Reply::text(&words.join(" "), Usage::new(100, 400)));
    openai.hang_after(20);
    let mut response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "stream": true, "max_tokens": 2000, "messages": [{"role": "user", "content": "Count"}]}),
    )
    .await;
    let request_id = id_of(&response);
    let mut received = String::new();
    while received.matches("data:").count() < 10 {
        let chunk = response.chunk().await.unwrap().unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    assert!(
        openai.wait_for_disconnects(1, 3000).await,
        "the gateway leaves the provider too"
    );
    let charges = charges(&tollgate, 1).await;
    let charged = charge_of(&charges, &request_id);
    // More than the input alone, less than the full answer or the reservation.
    assert!(charged > cost(5, 0), "{charged}");
    assert!(charged < cost(100, 400), "{charged}");
    let balance = wallet(&tollgate, "acme").await["balance_nanos"]
        .as_i64()
        .unwrap();
    assert_eq!(balance, 10_000_000_000 - charged);
}

/// Appends to `received` what the stream sends within `wait`; true when
/// the stream ended in that time.
async fn read_stream(
    response: &mut reqwest::Response,
    received: &mut String,
    wait: Duration,
) -> bool {
    tokio::time::timeout(wait, async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .is_ok()
}

/// A strict-mode stream held open: another writer holds the database, so
/// the call's charge cannot be committed, and the caller has read what
/// came in 1.5 s (asserted: content, but not the stream's end).
struct HeldStream {
    tollgate: Tollgate,
    database: rusqlite::Connection,
    response: reqwest::Response,
    request_id: String,
    received: String,
}

async fn held_strict_stream(answer: &str) -> HeldStream {
    let (openai, anthropic, gemini) = fakes().await;
    let options = test_support::tollgate::Options {
        env: vec![("TOLLGATE_MONEY__DURABILITY".into(), "strict".into())],
        ..Default::default()
    };
    let tollgate = Tollgate::start_with(BIN, options).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    openai.push(Reply::text(answer, Usage::new(20, 10)));
    let database = rusqlite::Connection::open(tollgate.data_dir.join("tollgate.db")).unwrap();
    database.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let request_id = id_of(&response);
    let mut received = String::new();
    let ended = read_stream(&mut response, &mut received, Duration::from_millis(1500)).await;
    assert!(
        !ended,
        "the stream closed before its charge was committed: {received}"
    );
    let first_word = answer.split(' ').next().unwrap();
    assert!(
        received.contains(&format!("\"{first_word}\"")),
        "content is not held back: {received}"
    );
    assert!(!received.contains("[DONE]"), "{received}");
    HeldStream {
        tollgate,
        database,
        response,
        request_id,
        received,
    }
}

/// `money.durability: strict`: a streamed answer's events flow as they
/// come, but what closes the stream (`[DONE]`, then its end) waits until
/// the call's charge is committed, so a caller that saw the answer
/// complete was charged.
#[tokio::test]
async fn strict_streams_close_only_once_the_charge_is_committed() {
    let HeldStream {
        tollgate,
        database,
        mut response,
        request_id,
        mut received,
    } = held_strict_stream("Strictly streamed").await;
    database.execute_batch("ROLLBACK").unwrap();
    assert!(
        read_stream(&mut response, &mut received, Duration::from_secs(5)).await,
        "the stream closes once the charge is committed: {received}"
    );
    assert!(received.trim_end().ends_with("data: [DONE]"), "{received}");
    // Already in the ledger when the caller saw the end: no waiting here.
    let entries = ledger(&tollgate, "acme", "&kind=charge").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["request_id"], request_id.as_str());
    assert_eq!(
        -nanos_of(entries[0]["amount"].as_str().unwrap()),
        cost(20, 10)
    );
}

/// Strict, and the caller hangs up while the charge waits to be
/// committed: the charge still reaches the ledger, once, for what the
/// upstream reported (the answer was produced in full). The gateway
/// sees the hang-up while the commit waits (it watches the client) and
/// drops the stream, which hands the commit to a task of its own.
#[tokio::test]
async fn a_strict_charge_still_lands_when_its_caller_has_gone() {
    let held = held_strict_stream("Left before the end").await;
    let (tollgate, request_id) = (held.tollgate, held.request_id);
    // The caller hangs up while the commit waits for the database.
    drop(held.response);
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.database.execute_batch("ROLLBACK").unwrap();
    let started = std::time::Instant::now();
    let entries = loop {
        let entries = ledger(&tollgate, "acme", "&kind=charge").await;
        if !entries.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entries.len(), 1, "{entries:?}\n{}", tollgate.log());
    assert!(
        tollgate.log().contains("the commit goes on"),
        "the stream was dropped before its end: {}",
        tollgate.log()
    );
    assert_eq!(entries[0]["request_id"], request_id.as_str());
    assert_eq!(
        -nanos_of(entries[0]["amount"].as_str().unwrap()),
        cost(20, 10),
        "charged for the usage the upstream reported"
    );
    // And only once, however long one waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ledger(&tollgate, "acme", "&kind=charge").await.len(), 1);
}

/// `usage_export.stripe_meter_value: tokens`: each AI call's meter event
/// counts its input plus output tokens, streamed or not.
#[tokio::test]
async fn stripe_meters_can_count_tokens() {
    let (openai, anthropic, gemini) = fakes().await;
    let stripe = test_support::stripe::FakeStripe::start().await;
    let mut env = crate::billing::stripe_env(&stripe, "ai_tokens");
    env.push((
        "TOLLGATE_USAGE_EXPORT__STRIPE_METER_VALUE".into(),
        "tokens".into(),
    ));
    let options = test_support::tollgate::Options {
        env,
        ..Default::default()
    };
    let tollgate = Tollgate::start_with(BIN, options).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    let customer = crate::billing::stripe_customer(&tollgate, &stripe, "acme").await;
    openai.push(Reply::text("Counted", Usage::new(20, 10)));
    openai.push(Reply::text("Streamed and counted", Usage::new(7, 5)));
    let plain = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(plain.status(), 200);
    let plain_id = id_of(&plain);
    let streamed = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let streamed_id = id_of(&streamed);
    streamed.text().await.unwrap();
    let started = std::time::Instant::now();
    while stripe.meter_events().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            tollgate.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let meter = stripe.meter_events();
    let value_of = |id: &str| {
        let event = meter
            .iter()
            .find(|e| e["identifier"] == id)
            .unwrap_or_else(|| panic!("no meter event for {id}: {meter:?}"));
        assert_eq!(event["event_name"], "ai_tokens");
        assert_eq!(event["payload[stripe_customer_id]"], customer);
        event["payload[value]"].clone()
    };
    assert_eq!(value_of(&plain_id), "30");
    assert_eq!(value_of(&streamed_id), "12");
}

/// The official Python SDKs (`openai`, `anthropic` from PyPI, pinned in
/// `test-support/requirements.txt`) against the real binary.
#[tokio::test]
async fn the_official_python_sdks_work_unchanged() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    openai.push(Reply::text("Hello from the SDK", Usage::new(12, 4)));
    openai.push(Reply::text("Streamed to the SDK", Usage::new(12, 4)));
    anthropic.push(Reply::text("Claude via the SDK", Usage::new(9, 3)));
    anthropic.push(Reply::text("Claude streamed", Usage::new(9, 3)));
    let script = r#"
import json, sys
import openai, anthropic
gateway, key = sys.argv[1], sys.argv[2]
out = {}
client = openai.OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0)
out["models"] = sorted(m.id for m in client.models.list())
r = client.chat.completions.create(model="oai/gpt-test", messages=[{"role": "user", "content": "hi"}])
out["chat"] = r.choices[0].message.content
out["chat_usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens]
text, usage = "", None
for chunk in client.chat.completions.create(model="oai/gpt-test", stream=True,
        stream_options={"include_usage": True}, messages=[{"role": "user", "content": "hi"}]):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
out["stream"], out["stream_usage"] = text, usage
e = client.embeddings.create(model="oai/gpt-test", input="hello")
out["embedding_len"] = len(e.data[0].embedding)
try:
    client.chat.completions.create(model="nope/none", messages=[{"role": "user", "content": "hi"}])
except openai.NotFoundError as error:
    out["not_found"] = [error.status_code, error.body.get("code") if isinstance(error.body, dict) else None]
c = anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)
m = c.messages.create(model="claude/claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
out["message"] = m.content[0].text
out["message_usage"] = [m.usage.input_tokens, m.usage.output_tokens]
with c.messages.stream(model="claude/claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
    out["message_stream"] = s.get_final_text()
out["count"] = c.messages.count_tokens(model="claude/claude-test", messages=[{"role": "user", "content": "hello there"}]).input_tokens
print(json.dumps(out))
"#;
    let out = crate::python_json(
        "the SDK script",
        script,
        vec![tollgate.gateway_url.clone(), world.key.clone()],
    )
    .await;
    assert_eq!(
        out["models"],
        json!([
            "claude/claude-test",
            "gem/gemini-test",
            "oai/gpt-test",
            "smart"
        ])
    );
    assert_eq!(out["chat"], "Hello from the SDK");
    assert_eq!(out["chat_usage"], json!([12, 4]));
    assert_eq!(out["stream"], "Streamed to the SDK");
    assert_eq!(out["stream_usage"], json!([12, 4]));
    assert!(out["embedding_len"].as_u64().unwrap() > 0);
    assert_eq!(out["not_found"], json!([404, "model_not_found"]));
    assert_eq!(out["message"], "Claude via the SDK");
    assert_eq!(out["message_usage"], json!([9, 3]));
    assert_eq!(out["message_stream"], "Claude streamed");
    assert!(out["count"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn token_quotas_block_or_charge_and_tokens_per_minute_hold() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(
        &tollgate,
        &openai,
        &anthropic,
        &gemini,
        json!({"included": {"tokens": 1000}, "tokens_per_minute": 3000}),
    )
    .await;
    let call = |max_tokens: u64, content: String| {
        post(
            &tollgate,
            "/v1/chat/completions",
            &world.key,
            json!({"model": "oai/gpt-test", "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}),
        )
    };
    // Two calls of 500 tokens use the quota; they are free.
    for _ in 0..2 {
        openai.push(Reply::text("ok", Usage::new(300, 200)));
        let response = call(200, "hi".into()).await;
        assert_eq!(response.status(), 200);
        let policy = response.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        let state = response.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(policy.contains("\"tokens\";q=1000"), "{policy}");
        assert!(policy.contains("\"tokens-minute\";q=3000;w=60"), "{policy}");
        assert!(state.contains("\"tokens\";r="), "{state}");
        assert!(
            response
                .headers()
                .get("tollgate-cost")
                .is_none_or(|c| c == "0 USD" || c == "0.00 USD"),
            "{:?}",
            response.headers().get("tollgate-cost")
        );
    }
    // Used up: 402 quota_exhausted, with the numbers and when it resets.
    let hits = openai.hits();
    let response = call(200, "hi".into()).await;
    assert_eq!(response.status(), 402);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "quota_exhausted", "{body}");
    assert_eq!(body["quota"], 1000);
    assert_eq!(body["used"], 1000);
    assert_eq!(body["unit"], "tokens");
    assert!(body["period_end"].is_string());
    assert_eq!(openai.hits(), hits);
    assert!(
        ledger(&tollgate, "acme", "&kind=charge").await.is_empty(),
        "quota calls are free"
    );
    // `/_tollgate/me` shows the token quota and warns of it.
    let me: Value = tollgate.json_with_key("/_tollgate/me", &world.key).await;
    let subscription = &me["subscriptions"][0];
    assert_eq!(
        subscription["token_quota"],
        json!({"included": 1000, "used": 1000, "remaining": 0, "overage": "block"}),
        "{me}"
    );
    assert!(
        subscription["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "token-quota-nearly-exhausted;used-percent=100"),
        "{me}"
    );
    // So does the admin API's view of the subscription, once the node has
    // written its counts.
    let path = format!(
        "/api/v1/subscriptions/{}",
        subscription["id"].as_str().unwrap()
    );
    let started = std::time::Instant::now();
    loop {
        let (_, body) = tollgate.admin(Method::GET, &path, None).await;
        // The calls count too (the refused one was counted while it was
        // weighed, then given back: wait for the count written after).
        if body["usage"]["tokens"] == 1000 && body["usage"]["requests"] == 2 {
            assert_eq!(body["usage"]["included_tokens"], 1000, "{body}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two nodes on one PostgreSQL hold one token quota: together they never
/// use more tokens than it includes (each holds a call's tokens within its
/// own grant of the quota), in a burst and after.
#[tokio::test]
async fn two_nodes_hold_one_token_quota() {
    let database = test_support::PgDatabase::create();
    let options = test_support::tollgate::Options::on_database(&database.url);
    let (openai, anthropic, gemini) = fakes().await;
    let first = Tollgate::start_with(BIN, options.clone()).await;
    let second = Tollgate::start_with(BIN, options).await;
    let world = ai_world(
        &first,
        &openai,
        &anthropic,
        &gemini,
        json!({"included": {"tokens": 300}}),
    )
    .await;
    let started = std::time::Instant::now();
    while second.get_with_key("/v1/models", &world.key).await.status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each answer (the fake's default) uses 15 tokens.
    let call = |node: &Tollgate| {
        let request = node
            .client
            .post(format!("{}/v1/chat/completions", node.gateway_url))
            .bearer_auth(&world.key)
            .json(&json!({"model": "oai/gpt-test", "max_tokens": 40,
                "messages": [{"role": "user", "content": "hi"}]}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status != 200 {
                assert_eq!(
                    (status, body["code"].as_str()),
                    (402, Some("quota_exhausted")),
                    "{body}"
                );
            }
            status
        }
    };
    let node = |n: usize| if n.is_multiple_of(2) { &first } else { &second };
    // Each node answers (the second opens the provider keys the first
    // stored: both have the deployment's master key).
    assert_eq!(call(&second).await, 200);
    assert_eq!(call(&first).await, 200);
    // A call that asks for less than a minimal answer needs no more.
    let small = second
        .client
        .post(format!("{}/v1/chat/completions", second.gateway_url))
        .bearer_auth(&world.key)
        .json(&json!({"model": "oai/gpt-test", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200, "{}", small.text().await.unwrap());
    let burst = futures_util::future::join_all((0..60).map(|n| call(node(n)))).await;
    let mut ok = 3 + burst.iter().filter(|&&s| s == 200).count();
    assert!(ok <= 20, "{ok} answers of 15 tokens on a quota of 300");
    let mut refusals_in_a_row = 0;
    let mut n = 0;
    while refusals_in_a_row < 20 {
        n += 1;
        if call(node(n)).await == 200 {
            ok += 1;
            refusals_in_a_row = 0;
        } else {
            refusals_in_a_row += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok <= 20, "{ok} answers of 15 tokens on a quota of 300");
    }
    assert!(
        ok >= 15,
        "the quota is used, not lost between the nodes: {ok} answers"
    );
    assert_eq!(openai.hits(), ok, "refused calls never reach the provider");
}

#[tokio::test]
async fn tokens_beyond_the_quota_are_charged_and_big_prompts_wait_for_the_minute() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(
        &tollgate,
        &openai,
        &anthropic,
        &gemini,
        json!({"included": {"tokens": 100}, "overage": "charge", "tokens_per_minute": 1000}),
    )
    .await;
    // 80 input + 70 output: the first 100 are free (input first), 50 output
    // tokens are charged at 2 × 1.5 per million.
    openai.push(Reply::text("ok", Usage::new(80, 70)));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let id = id_of(&response);
    assert_eq!(response.headers()["tollgate-cost"], "0.00015 USD");
    // The call used the whole quota: the response warns of it.
    let warning = response.headers()["tollgate-warning"].to_str().unwrap();
    assert!(
        warning.contains("token-quota-nearly-exhausted;used-percent=100"),
        "{warning}"
    );
    let charges = charges(&tollgate, 1).await;
    assert_eq!(charge_of(&charges, &id), cost(0, 50));
    // The subscription's usage counts the call and what it cost.
    let me: Value = tollgate.json_with_key("/_tollgate/me", &world.key).await;
    let path = format!(
        "/api/v1/subscriptions/{}",
        me["subscriptions"][0]["id"].as_str().unwrap()
    );
    let started = std::time::Instant::now();
    loop {
        let (_, body) = tollgate.admin(Method::GET, &path, None).await;
        if body["usage"]["spent"] == "0.00015" {
            assert_eq!(body["usage"]["requests"], 1, "{body}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A prompt larger than the minute's token limit can never pass: 400.
    let long = |words: usize| "lorem ipsum dolor sit amet ".repeat(words);
    let ask = |content: String| {
        post(
            &tollgate,
            "/v1/chat/completions",
            &world.key,
            json!({"model": "oai/gpt-test", "max_tokens": 10, "messages": [{"role": "user", "content": content}]}),
        )
    };
    let response = ask(long(400)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("1000 tokens per minute"),
        "{body}"
    );
    // Two prompts of about 500 tokens: the second waits for the minute
    // (429 with Retry-After, in OpenAI's envelope).
    openai.push(Reply::text("ok", Usage::new(500, 5)));
    assert_eq!(ask(long(80)).await.status(), 200);
    let response = ask(long(80)).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("1000 tokens per minute"),
        "{body}"
    );
}

/// Publishes a prompt service `slug` at `/<slug>` (team llmco) with plan
/// `tokens`, and subscribes acme-bot to it.
async fn prompt_service(tollgate: &Tollgate, key: &str, slug: &str, prompt: Value) {
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": slug, "team": "llmco", "kind": "prompt", "base_path": format!("/{slug}"),
                   "visibility": "catalog", "prompt": prompt}),
        )
        .await;
    tollgate
        .create(
            &format!("/api/v1/services/{slug}/plans"),
            json!({"slug": "tokens"}),
        )
        .await;
    tollgate
        .create(&format!("/api/v1/services/{slug}/publish"), json!({}))
        .await;
    tollgate
        .create(
            "/api/v1/subscriptions",
            json!({"app": "acme-bot", "service": slug, "plan": "tokens"}),
        )
        .await;
    let started = std::time::Instant::now();
    loop {
        let status = tollgate
            .client
            .get(format!("{}/{slug}/openapi.json", tollgate.gateway_url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{slug} not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn prompt_apis_validate_render_call_and_charge() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;

    // A template that does not compile is refused with its line and column.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services",
            Some(
                json!({"slug": "broken", "team": "llmco", "kind": "prompt", "base_path": "/broken",
                        "prompt": {"model": "oai/gpt-test", "user": "Hello\n{{ text"}}),
            ),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("prompt.user") && text.contains("line 2"),
        "{body}"
    );

    prompt_service(
        &tollgate,
        &world.key,
        "translate",
        json!({"model": "oai/gpt-test", "system": "Translate into {{ language }}.",
               "user": "{% for line in lines %}{{ line }}\n{% endfor %}",
               "variables": {"type": "object", "required": ["lines", "language"],
                             "properties": {"lines": {"type": "array", "items": {"type": "string", "minLength": 1}},
                                            "language": {"enum": ["French", "German"]}}},
               "parameters": {"temperature": 0.2, "max_tokens": 200}}),
    )
    .await;
    openai.push(Reply::text("bonjour\nle monde", Usage::new(100, 20)));
    let response = post(
        &tollgate,
        "/translate",
        &world.key,
        json!({"lines": ["hello", "world"], "language": "French"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let id = id_of(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["output"], "bonjour\nle monde");
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 100, "output_tokens": 20})
    );
    // List prices (a prompt service has no markup of its own): 100 × 1 + 20 × 2.
    assert_eq!(body["cost"], "0.00014");
    let sent = openai.last_request().unwrap();
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "Translate into French."})
    );
    assert_eq!(sent.body["messages"][1]["content"], "hello\nworld\n");
    assert_eq!(sent.body["temperature"], 0.2);
    assert_eq!(sent.body["max_tokens"], 200);

    // Variables that fail the schema: 400 naming each field; nothing sent.
    let hits = openai.hits();
    let response = post(
        &tollgate,
        "/translate",
        &world.key,
        json!({"lines": [""], "language": "Spanish"}),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"language") && fields.contains(&"lines.0"),
        "{body}"
    );
    assert_eq!(openai.hits(), hits);

    // JSON output: asked as structured output, returned parsed.
    prompt_service(
        &tollgate,
        &world.key,
        "extract",
        json!({"model": "oai/gpt-test", "user": "Where: {{ text }}",
               "variables": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
               "output": {"type": "json", "schema": {"type": "object", "required": ["city"],
                          "properties": {"city": {"type": "string"}}}}}),
    )
    .await;
    openai.push(Reply::text(r#"{"city": "Paris"}"#, Usage::new(40, 10)));
    let response = post(
        &tollgate,
        "/extract",
        &world.key,
        json!({"text": "the Louvre"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let json_id = id_of(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["output"], json!({"city": "Paris"}));
    assert_eq!(
        openai.last_request().unwrap().body["response_format"]["type"],
        "json_schema"
    );
    // An answer that does not validate: 502, not charged.
    openai.push(Reply::text(r#"{"town": 3}"#, Usage::new(40, 10)));
    let response = post(
        &tollgate,
        "/extract",
        &world.key,
        json!({"text": "the Louvre"}),
    )
    .await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "upstream_invalid_output", "{body}");

    // The generated OpenAPI document.
    let doc: Value = tollgate
        .get("/translate/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["paths"]["/translate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["required"],
        json!(["lines", "language"])
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let charges = charges(&tollgate, 2).await;
    assert_eq!(
        charges.len(),
        2,
        "the invalid answer is not charged: {charges:?}"
    );
    assert_eq!(charge_of(&charges, &id), 140_000);
    assert_eq!(charge_of(&charges, &json_id), 60_000);
}

#[tokio::test]
async fn a_draft_prompt_can_be_test_run() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "haiku", "team": "llmco", "kind": "prompt", "base_path": "/haiku",
                   "prompt": {"model": "smart", "system": "You write haiku.", "user": "A haiku about {{ topic }}",
                              "variables": {"type": "object", "required": ["topic"],
                                            "properties": {"topic": {"type": "string", "maxLength": 20}}}}}),
        )
        .await;
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/haiku/test-run",
            Some(json!({"variables": {"topic": "a very very long topic indeed"}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "variables.topic", "{body}");
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/haiku/test-run",
            Some(json!({"variables": {"topic": "rain"}, "dry_run": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "A haiku about rain");
    assert!(body.get("output").is_none());
    openai.push(Reply::text("Soft rain on the roof", Usage::new(20, 6)));
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/haiku/test-run",
            Some(json!({"variables": {"topic": "rain"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "Soft rain on the roof");
    assert_eq!(body["model"], "oai/gpt-test");
    assert_eq!(body["usage"]["input_tokens"], 20);
    // A test run is the team's own: nothing charged to a consumer.
    assert!(ledger(&tollgate, "acme", "&kind=charge").await.is_empty());
}

#[tokio::test]
async fn responses_api_and_a_slow_provider_falls_back_after_the_first_token_timeout() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    // The Responses API, passed through to an OpenAI-style provider.
    openai.push(Reply::text("Responses here", Usage::new(30, 5)));
    let response = post(
        &tollgate,
        "/v1/responses",
        &world.key,
        json!({"model": "oai/gpt-test", "input": "hello"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let id = id_of(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "response", "{body}");
    assert_eq!(body["model"], "oai/gpt-test");
    let sent = openai.last_request().unwrap();
    assert_eq!(sent.path, "/v1/responses");
    // Nothing is stored in the provider account the tenants share, and the
    // output is bounded by what was reserved (the model's 4000).
    assert_eq!(sent.body["store"], false);
    assert_eq!(sent.body["max_output_tokens"], 4000);
    let charges = charges(&tollgate, 1).await;
    assert_eq!(charge_of(&charges, &id), cost(30, 5));
    for (member, value) in [
        ("previous_response_id", json!("resp_123")),
        (
            "input",
            json!([{"type": "item_reference", "id": "msg_abc"}]),
        ),
        ("tools", json!([{"type": "web_search"}])),
        ("n", json!(50)),
    ] {
        let mut body = json!({"model": "oai/gpt-test", "input": "hello"});
        body[member] = value;
        let response = post(&tollgate, "/v1/responses", &world.key, body).await;
        assert_eq!(response.status(), 400, "{member}");
    }
    // A chat without max_tokens is sent the bound it was reserved for.
    openai.push(Reply::text("bounded", Usage::new(5, 1)));
    short_chat(&tollgate, &world.key, "oai/gpt-test").await;
    let sent = openai.last_request().unwrap();
    assert_eq!(sent.body["max_completion_tokens"], 4000, "{}", sent.body);
    // A model whose output limit nobody says: 4,096, not all the context
    // window leaves (100,000 here), which would reserve 25 times more.
    let mut prices: Value = serde_json::from_str(MODEL_PRICES).unwrap();
    prices.as_object_mut().unwrap().remove("max_output_tokens");
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            "/api/v1/providers/oai/models/gpt-test",
            Some(prices),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let started = std::time::Instant::now();
    loop {
        openai.push(Reply::text("bounded", Usage::new(5, 1)));
        short_chat(&tollgate, &world.key, "oai/gpt-test").await;
        let sent = openai.last_request().unwrap();
        if sent.body["max_completion_tokens"] == 4096 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{}", sent.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A stream waits 2 s (the service's first_token_ms) for its start: a
    // slower provider is left for the alias's fallback. (A non-streamed
    // answer starts when it is done: it waits up to total_ms.)
    openai.set_response_delay_ms(3_000);
    anthropic.push(Reply::text("on time", Usage::new(10, 2)));
    let started = std::time::Instant::now();
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "smart", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["tollgate-model"], "claude/claude-test");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_900) && waited < Duration::from_millis(2_900),
        "{waited:?}"
    );
    // Without a fallback: 504 in the caller's dialect.
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
}

/// An AI call's usage event (CloudEvents export) names its provider and
/// model and carries the tokens it was charged for, streamed or not, and
/// its cost equals the ledger's charge.
#[tokio::test]
async fn usage_events_of_ai_calls_carry_model_and_tokens() {
    let (openai, anthropic, gemini) = fakes().await;
    let sink = test_support::webhook::WebhookReceiver::start(0).await;
    let options = test_support::tollgate::Options {
        env: vec![("TOLLGATE_USAGE_EXPORT__CLOUDEVENTS_URL".into(), sink.url())],
        ..Default::default()
    };
    let tollgate = Tollgate::start_with(BIN, options).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;

    openai.push(Reply::text(
        "Hello.",
        Usage::new(1000, 500).with_cached_input(200),
    ));
    let response = post(
        &tollgate,
        "/v1/chat/completions",
        &world.key,
        json!({"model": "oai/gpt-test", "messages": [{"role": "user", "content": "Hi"}],
               "max_tokens": 600}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let plain_id = id_of(&response);
    response.bytes().await.unwrap();

    // Streamed through the Messages API to Anthropic.
    anthropic.push(Reply::text("One two", Usage::new(300, 40)));
    let response = post_messages(
        &tollgate,
        &world.key,
        json!({"model": "claude/claude-test", "max_tokens": 100, "stream": true,
               "messages": [{"role": "user", "content": "Count"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let streamed_id = id_of(&response);
    response.bytes().await.unwrap();

    let charges = charges(&tollgate, 2).await;
    let started = std::time::Instant::now();
    let events: std::collections::BTreeMap<String, Value> = loop {
        let events: std::collections::BTreeMap<String, Value> = sink
            .received()
            .iter()
            .flat_map(|r| r.json().as_array().cloned().unwrap_or_default())
            .map(|e| (e["id"].as_str().unwrap().to_owned(), e))
            .collect();
        if events.len() >= 2 {
            break events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{events:?}\n{}",
            tollgate.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let plain = &events[&plain_id]["data"];
    assert_eq!(plain["provider"], "oai", "{plain}");
    assert_eq!(plain["model"], "oai/gpt-test", "{plain}");
    assert_eq!(
        plain["units"],
        json!({"requests": 1, "input_tokens": 1000, "output_tokens": 500,
               "cached_input_tokens": 200})
    );
    assert_eq!(plain["cost_nanos"], charge_of(&charges, &plain_id));
    let streamed = &events[&streamed_id]["data"];
    assert_eq!(streamed["provider"], "claude", "{streamed}");
    assert_eq!(streamed["model"], "claude/claude-test", "{streamed}");
    assert_eq!(streamed["units"]["input_tokens"], 300, "{streamed}");
    assert_eq!(streamed["units"]["output_tokens"], 40, "{streamed}");
    assert_eq!(streamed["cost_nanos"], cost(300, 40));
    assert_eq!(streamed["cost_nanos"], charge_of(&charges, &streamed_id));
}

/// A stream the provider stops feeding (silent past `first_token_ms`
/// between events) ends with an error event in the caller's dialect,
/// never with `[DONE]`; it is charged for what it produced, and not at
/// all when it produced nothing.
#[tokio::test]
async fn a_stream_that_breaks_off_says_so_and_charges_only_what_it_produced() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    let mut ids = Vec::new();
    for (hang_after, produced) in [(1, false), (10, true)] {
        let words: Vec<String> = (0..50).map(|n| format!("word{n}")).collect();
        openai.push(Reply::text(&words.join(" "), Usage::new(100, 400)));
        openai.hang_after(hang_after);
        let mut response = post(
            &tollgate,
            "/v1/chat/completions",
            &world.key,
            json!({"model": "oai/gpt-test", "stream": true, "messages": [{"role": "user", "content": "Count"}]}),
        )
        .await;
        assert_eq!(response.status(), 200);
        ids.push(id_of(&response));
        let mut received = String::new();
        assert!(
            read_stream(&mut response, &mut received, Duration::from_secs(6)).await,
            "the gateway ends the stream: {received}"
        );
        assert_eq!(received.contains("word1"), produced, "{received}");
        assert!(!received.contains("[DONE]"), "{received}");
        let last = received
            .trim_end()
            .rsplit("\n\n")
            .next()
            .unwrap()
            .trim_start_matches("data: ");
        let last: Value = serde_json::from_str(last).unwrap();
        assert_eq!(last["error"]["code"], "upstream_error", "{received}");
    }
    openai.no_hang();
    // Only the second was charged: some output, less than the whole answer.
    let charges = charges(&tollgate, 1).await;
    assert!(charges.iter().all(|(id, _)| id != &ids[0]), "{charges:?}");
    let charged = charge_of(&charges, &ids[1]);
    assert!(charged > cost(5, 0), "{charged}");
    assert!(charged < cost(100, 400), "{charged}");
    let balance = wallet(&tollgate, "acme").await["balance_nanos"]
        .as_i64()
        .unwrap();
    assert_eq!(balance, 10_000_000_000 - charged);
}

/// A provider that refuses the gateway's key is the operator's problem:
/// 502 on every call while the key rests, never a 429 asking the caller
/// to wait. Keys resting after a 429 tell the caller how long.
#[tokio::test]
async fn resting_keys_answer_for_why_they_rest() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    anthropic.set_keys(&["not-the-gateways"]);
    for _ in 0..2 {
        let response = post(
            &tollgate,
            "/v1/messages",
            &world.key,
            json!({"model": "claude/claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(response.status(), 502);
        assert!(response.headers().get("retry-after").is_none());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "upstream_error", "{body}");
    }
    assert_eq!(anthropic.hits(), 1, "the refused key rests");

    openai.rate_limit_key_for("sk-test-one", 7);
    openai.rate_limit_key_for("sk-test-two", 7);
    for _ in 0..2 {
        let response = post(
            &tollgate,
            "/v1/chat/completions",
            &world.key,
            json!({"model": "oai/gpt-test", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(response.status(), 429);
        let wait: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=7).contains(&wait), "{wait}");
    }
    assert_eq!(openai.hits(), 2, "each key tried once, then both rest");
}

/// An AI request whose body stops arriving gets a 408 in the caller's
/// dialect once `gateway.body_timeout_ms` has passed, and is not charged.
#[tokio::test]
async fn a_stalled_ai_request_body_is_a_408_in_the_callers_dialect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (openai, anthropic, gemini) = fakes().await;
    let options = test_support::tollgate::Options {
        env: vec![("TOLLGATE_GATEWAY__BODY_TIMEOUT_MS".into(), "300".into())],
        ..Default::default()
    };
    let tollgate = Tollgate::start_with(BIN, options).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    let address = tollgate
        .gateway_url
        .trim_start_matches("http://")
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"model\": \"oai/gpt-test\"",
        world.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("answered and closed")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{raw}");
    let body: Value = serde_json::from_str(raw.rsplit("\r\n\r\n").next().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert_eq!(openai.requests().len(), 0, "nothing reached the provider");
}

/// A provider that reports more tokens than the call could have used (more
/// output than the `max_tokens` it was sent, an absurd input) is charged
/// for no more than that bound, streamed or not.
#[tokio::test]
async fn a_providers_usage_report_cannot_charge_past_the_calls_bounds() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    openai.push(Reply::text("short", Usage::new(7, 5_000)));
    openai.push(Reply::text("short", Usage::new(u64::MAX / 2, u64::MAX / 2)));
    let mut ids = Vec::new();
    for stream in [false, true] {
        let response = post(
            &tollgate,
            "/v1/chat/completions",
            &world.key,
            json!({"model": "oai/gpt-test", "stream": stream, "max_tokens": 20,
                   "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(response.status(), 200);
        ids.push(id_of(&response));
        let _ = response.text().await.unwrap();
    }
    let charges = charges(&tollgate, 2).await;
    // Output clamped to the 20 tokens asked for.
    assert_eq!(charge_of(&charges, &ids[0]), cost(7, 20));
    // An absurd report costs at most a bounded input and the 20 tokens.
    let absurd = charge_of(&charges, &ids[1]);
    assert!(absurd > cost(7, 20), "{absurd}");
    assert!(absurd < 1_000_000_000, "well under a unit: {absurd}");
    let balance = wallet(&tollgate, "acme").await["balance_nanos"]
        .as_i64()
        .unwrap();
    assert!(balance > 0, "{balance}");
}

/// An OpenAI-compatible provider (not OpenAI itself) is sent the output
/// limit as `max_tokens`, which every such API reads; several refuse
/// OpenAI's newer `max_completion_tokens` as an unknown field.
#[tokio::test]
async fn openai_compatible_providers_are_sent_max_tokens() {
    let (openai, anthropic, gemini) = fakes().await;
    let compatible = FakeOpenAi::start_named("compat").await;
    compatible.accept_any_key();
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    tollgate
        .create(
            "/api/v1/providers",
            json!({"slug": "compat", "kind": "openai_compatible", "base_url": compatible.url()}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/providers/compat/keys",
            json!({"key": "ck-test-one"}),
        )
        .await;
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            "/api/v1/providers/compat/models/gpt-test",
            Some(serde_json::from_str(MODEL_PRICES).unwrap()),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/llm",
            Some(json!({"ai": {"models": ["oai/gpt-test", "claude/claude-test", "gem/gemini-test", "compat/gpt-test"]}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    loop {
        let response = short_chat(&tollgate, &world.key, "compat/gpt-test").await;
        if response.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = compatible.last_request().unwrap();
    assert_eq!(sent.body["max_tokens"], 4000, "{}", sent.body);
    assert!(
        sent.body.get("max_completion_tokens").is_none(),
        "{}",
        sent.body
    );
    // OpenAI itself keeps the field it documents.
    openai.push(Reply::text("ok", Usage::new(5, 1)));
    short_chat(&tollgate, &world.key, "oai/gpt-test").await;
    let sent = openai.last_request().unwrap();
    assert_eq!(sent.body["max_completion_tokens"], 4000, "{}", sent.body);
}

/// Anthropic's prompt-cache writes (`cache_creation_input_tokens`) cost
/// 1.25 times the input price, as Anthropic bills them; reads cost the
/// cached price.
#[tokio::test]
async fn cache_writes_are_charged_above_the_input_price() {
    let (openai, anthropic, gemini) = fakes().await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    // 100 plain, 800 written, 100 read; 10 out. With the service's 1.5
    // markup: 1.5, 0.75 (cached) and 3 per million.
    anthropic.push(Reply::text(
        "cached",
        Usage {
            input: 1_000,
            output: 10,
            cached_input: 100,
            cache_write_input: 800,
            reasoning: 0,
        },
    ));
    let response = post_messages(
        &tollgate,
        &world.key,
        json!({"model": "claude/claude-test", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    // 100 × 1.5 + 800 × 1.875 + 100 × 0.75 + 10 × 3 = 1,755 per million.
    assert_eq!(response.headers()["tollgate-cost"], "0.001755 USD");
}
