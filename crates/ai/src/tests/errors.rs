use serde_json::{Map, Value, json};

use crate::{Dialect, ErrorKind, UpstreamError, classify_error, error_body, upstream_error_body};

fn kind(upstream: Dialect, status: u16, body: Value) -> ErrorKind {
    classify_error(upstream, status, body.to_string().as_bytes()).kind
}

#[test]
fn classify_openai() {
    let context = json!({"error": {
        "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"
    }});
    assert_eq!(
        kind(Dialect::OpenAi, 400, context),
        ErrorKind::ContextLength
    );
    let error = classify_error(
        Dialect::OpenAi,
        429,
        br#"{"error":{"message":"Rate limit reached for gpt-4o","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(
        error,
        UpstreamError {
            kind: ErrorKind::RateLimited,
            message: "Rate limit reached for gpt-4o".into()
        }
    );
    let auth = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}});
    assert_eq!(kind(Dialect::OpenAi, 401, auth), ErrorKind::Auth);
    assert_eq!(
        kind(
            Dialect::OpenAi,
            404,
            json!({"error": {"message": "The model `x` does not exist"}})
        ),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(Dialect::OpenAi, 400, json!({"error": {"message": "bad"}})),
        ErrorKind::InvalidRequest
    );
    assert_eq!(
        kind(Dialect::OpenAi, 500, json!({"error": {"message": "oops"}})),
        ErrorKind::Server
    );
    assert_eq!(
        kind(
            Dialect::OpenAi,
            503,
            json!({"error": {"message": "The engine is currently overloaded"}})
        ),
        ErrorKind::Overloaded
    );
}

#[test]
fn classify_anthropic() {
    let context = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 208310 tokens > 200000 maximum"}});
    assert_eq!(
        kind(Dialect::Anthropic, 400, context),
        ErrorKind::ContextLength
    );
    let window = json!({"type": "error", "error": {"type": "invalid_request_error",
        "message": "input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000"}});
    assert_eq!(
        kind(Dialect::Anthropic, 400, window),
        ErrorKind::ContextLength
    );
    let overloaded = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"});
    assert_eq!(
        classify_error(Dialect::Anthropic, 529, overloaded.to_string().as_bytes()),
        UpstreamError {
            kind: ErrorKind::Overloaded,
            message: "Overloaded".into()
        }
    );
    assert_eq!(
        kind(
            Dialect::Anthropic,
            429,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})
        ),
        ErrorKind::RateLimited
    );
    assert_eq!(
        kind(
            Dialect::Anthropic,
            403,
            json!({"type": "error", "error": {"type": "permission_error", "message": "no"}})
        ),
        ErrorKind::Auth
    );
    assert_eq!(
        kind(
            Dialect::Anthropic,
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}})
        ),
        ErrorKind::InvalidRequest
    );
    assert_eq!(
        kind(
            Dialect::Anthropic,
            500,
            json!({"type": "error", "error": {"type": "api_error", "message": "x"}})
        ),
        ErrorKind::Server
    );
}

#[test]
fn classify_gemini() {
    let context = json!({"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}});
    assert_eq!(
        kind(Dialect::Gemini, 400, context),
        ErrorKind::ContextLength
    );
    let quota = json!([{"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}]);
    assert_eq!(kind(Dialect::Gemini, 429, quota), ErrorKind::RateLimited);
    let unavailable = json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}});
    assert_eq!(
        kind(Dialect::Gemini, 503, unavailable),
        ErrorKind::Overloaded
    );
    let key = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}});
    assert_eq!(kind(Dialect::Gemini, 400, key), ErrorKind::InvalidRequest);
    assert_eq!(
        kind(
            Dialect::Gemini,
            404,
            json!({"error": {"code": 404, "message": "models/x is not found", "status": "NOT_FOUND"}})
        ),
        ErrorKind::NotFound
    );
}

#[test]
fn classify_non_json_bodies() {
    let error = classify_error(Dialect::OpenAi, 502, b"<html>Bad Gateway</html>");
    assert_eq!(
        error,
        UpstreamError {
            kind: ErrorKind::Server,
            message: "<html>Bad Gateway</html>".into()
        }
    );
    let error = classify_error(Dialect::Anthropic, 529, b"");
    assert_eq!(
        error,
        UpstreamError {
            kind: ErrorKind::Overloaded,
            message: "upstream answered with status 529".into()
        }
    );
    let long = "é".repeat(5_000);
    let error = classify_error(Dialect::Gemini, 500, long.as_bytes());
    assert!(error.message.len() <= 2_000 && error.message.starts_with('é'));
    let error = classify_error(Dialect::OpenAi, 418, b"\xff\xfe");
    assert_eq!(error.kind, ErrorKind::InvalidRequest);
}

#[test]
fn error_bodies_per_dialect() {
    let mut extra = Map::new();
    extra.insert(
        "type".into(),
        json!("https://tollgate.dev/problems/budget_exhausted"),
    );
    extra.insert("title".into(), json!("Budget exhausted"));
    extra.insert("status".into(), json!(402));
    extra.insert("request_id".into(), json!("01J"));
    extra.insert("error".into(), json!("must not replace the envelope"));

    let body = error_body(
        Dialect::OpenAi,
        402,
        "budget_exhausted",
        "The app's budget is spent.",
        &extra,
    );
    assert_eq!(
        body,
        json!({
            "error": {"message": "The app's budget is spent.", "type": "insufficient_quota", "param": null, "code": "budget_exhausted"},
            "type": "https://tollgate.dev/problems/budget_exhausted",
            "title": "Budget exhausted",
            "status": 402,
            "request_id": "01J"
        })
    );
    let body = error_body(
        Dialect::Anthropic,
        402,
        "budget_exhausted",
        "The app's budget is spent.",
        &extra,
    );
    assert_eq!(
        body,
        json!({
            "type": "error",
            "error": {"type": "billing_error", "message": "The app's budget is spent."},
            "title": "Budget exhausted",
            "status": 402,
            "request_id": "01J"
        })
    );
    let body = error_body(Dialect::Gemini, 429, "", "slow down", &Map::new());
    assert_eq!(
        body,
        json!({"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}})
    );
    let body = error_body(Dialect::OpenAi, 400, "", "bad", &Map::new());
    assert_eq!(body["error"]["code"], Value::Null);
}

#[test]
fn error_types_by_status() {
    let openai: Vec<&str> = [400, 401, 402, 403, 404, 413, 429, 500, 503]
        .iter()
        .map(|s| crate::openai_error_type(*s))
        .collect();
    assert_eq!(
        openai,
        [
            "invalid_request_error",
            "authentication_error",
            "insufficient_quota",
            "permission_error",
            "invalid_request_error",
            "invalid_request_error",
            "rate_limit_error",
            "api_error",
            "api_error"
        ]
    );
    let anthropic: Vec<&str> = [400, 401, 402, 403, 404, 413, 429, 500, 504, 529]
        .iter()
        .map(|s| crate::anthropic_error_type(*s))
        .collect();
    assert_eq!(
        anthropic,
        [
            "invalid_request_error",
            "authentication_error",
            "billing_error",
            "permission_error",
            "not_found_error",
            "request_too_large",
            "rate_limit_error",
            "api_error",
            "timeout_error",
            "overloaded_error"
        ]
    );
}

#[test]
fn kinds_map_to_caller_errors() {
    let error = UpstreamError {
        kind: ErrorKind::Overloaded,
        message: "busy".into(),
    };
    // The same status in every dialect; the envelope keeps the kind.
    let (status, body) = upstream_error_body(Dialect::Anthropic, &error, &Map::new());
    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    );
    let (status, body) = upstream_error_body(Dialect::OpenAi, &error, &Map::new());
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], json!("overloaded"));
    let context = UpstreamError {
        kind: ErrorKind::ContextLength,
        message: "too long".into(),
    };
    let (status, body) = upstream_error_body(Dialect::OpenAi, &context, &Map::new());
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("context_length_exceeded"))
    );
    assert_eq!(ErrorKind::Server.status_for(Dialect::OpenAi), 502);
    assert!(ErrorKind::RateLimited.is_retryable() && !ErrorKind::ContextLength.is_retryable());
}

#[test]
fn quoted_keys_are_hidden() {
    let mut error = classify_error(
        Dialect::OpenAi,
        401,
        br#"{"error": {"message": "Incorrect API key provided: Bearer sk-OAISECRET-1234567890abcdef. Also AIzaSyABCDEFGHIJKLMNOPQRSTUV and my-own-secret-42 and req_123", "type": "invalid_request_error"}}"#,
    );
    error.redact_secrets(["Bearer my-own-secret-42"]);
    assert!(!error.message.contains("OAISECRET"), "{}", error.message);
    assert!(!error.message.contains("ABCDEFGHIJ"), "{}", error.message);
    assert!(
        !error.message.contains("own-secret-42"),
        "{}",
        error.message
    );
    assert!(error.message.contains("sk-O…"), "{}", error.message);
    assert!(
        error.message.contains("req_123"),
        "short words stay: {}",
        error.message
    );
}
