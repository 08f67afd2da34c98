//! Errors: the caller's request could not be translated ([`TranslateError`]),
//! what an upstream error answer means ([`classify_error`] → [`UpstreamError`]),
//! and error bodies in the caller's dialect ([`error_body`]).

use serde_json::{Map, Value, json};

use crate::Dialect;

/// A request (or an upstream answer) that cannot be expressed in the other
/// dialect. Every message starts with the JSON path of the offending field, so
/// that the gateway can hand it to the caller as a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The body (or a member) is not the JSON type the dialect requires.
    #[error("{field}: expected {expected}")]
    InvalidType {
        field: String,
        expected: &'static str,
    },
    /// A member the translation needs is absent.
    #[error("{field}: required")]
    Missing { field: String },
    /// A value the target dialect has no equivalent for.
    #[error("{field}: unsupported {what}")]
    Unsupported { field: String, what: String },
    /// A value that is present and well-typed but unusable.
    #[error("{field}: {reason}")]
    InvalidValue { field: String, reason: String },
    /// No translation exists between these dialects.
    #[error("translation from {caller:?} to {upstream:?} is not supported")]
    Dialects { caller: Dialect, upstream: Dialect },
}

impl TranslateError {
    /// The JSON path of the offending field (empty for [`TranslateError::Dialects`]).
    pub fn field(&self) -> &str {
        match self {
            Self::InvalidType { field, .. }
            | Self::Missing { field }
            | Self::Unsupported { field, .. }
            | Self::InvalidValue { field, .. } => field,
            Self::Dialects { .. } => "",
        }
    }

    pub(crate) fn invalid_type(field: impl Into<String>, expected: &'static str) -> Self {
        Self::InvalidType {
            field: field.into(),
            expected,
        }
    }

    pub(crate) fn missing(field: impl Into<String>) -> Self {
        Self::Missing {
            field: field.into(),
        }
    }

    pub(crate) fn unsupported(field: impl Into<String>, what: impl Into<String>) -> Self {
        Self::Unsupported {
            field: field.into(),
            what: what.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidValue {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// What an upstream error answer means, for fallbacks and for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429: slow down (or, for OpenAI's `insufficient_quota`, this key is spent).
    RateLimited,
    /// The prompt plus `max_tokens` does not fit the model's context window.
    ContextLength,
    /// 401/403: the provider key is wrong or lacks access.
    Auth,
    /// Any other 4xx about the request itself.
    InvalidRequest,
    /// 404: usually an unknown model.
    NotFound,
    /// Anthropic 529, Gemini `UNAVAILABLE`, or a stream `overloaded_error`.
    Overloaded,
    /// Any other 5xx.
    Server,
    /// Not an error status, or not recognisable.
    Other,
}

impl ErrorKind {
    /// The status the caller should see for this kind of upstream failure.
    /// Overloaded is 529 for Anthropic callers (their SDKs retry it) and 503
    /// for the others; upstream server faults are a 502 (bad gateway).
    /// The HTTP status a caller gets for this kind, the same in every
    /// dialect (SPEC §4: a provider's failure is the gateway's 502
    /// `upstream_error`, whatever status the provider used for it).
    pub fn http_status(self) -> u16 {
        match self {
            Self::RateLimited => 429,
            Self::ContextLength | Self::InvalidRequest => 400,
            Self::NotFound => 404,
            Self::Auth | Self::Overloaded | Self::Server | Self::Other => 502,
        }
    }

    /// The status the caller's own API would use for this kind, which
    /// names its error inside the envelope (Anthropic's `overloaded_error`
    /// is its 529).
    pub fn status_for(self, caller: Dialect) -> u16 {
        match self {
            Self::RateLimited => 429,
            Self::ContextLength | Self::InvalidRequest => 400,
            Self::Auth => 401,
            Self::NotFound => 404,
            Self::Overloaded if caller == Dialect::Anthropic => 529,
            Self::Overloaded => 503,
            Self::Server | Self::Other => 502,
        }
    }

    /// A short machine-readable code for this kind (the OpenAI `code` member).
    pub fn code(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limit_exceeded",
            Self::ContextLength => "context_length_exceeded",
            Self::Auth => "upstream_auth_failed",
            Self::InvalidRequest => "invalid_request",
            Self::NotFound => "model_not_found",
            Self::Overloaded => "overloaded",
            Self::Server => "upstream_error",
            Self::Other => "upstream_error",
        }
    }

    /// Whether another key or provider may well succeed where this failed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Overloaded | Self::Server | Self::Auth
        )
    }
}

/// A classified upstream error: its kind and the upstream's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    pub kind: ErrorKind,
    pub message: String,
}

impl UpstreamError {
    /// Hides credentials a provider quoted in its message ("Incorrect API
    /// key provided: sk-…"): each of `secrets` (the keys the gateway
    /// sent), and any word that looks like a provider key, keeps its first
    /// four characters. The message is logged and may reach callers; a
    /// provider's key must do neither.
    pub fn redact_secrets<'a>(&mut self, secrets: impl IntoIterator<Item = &'a str>) {
        for secret in secrets {
            let secret = secret.strip_prefix("Bearer ").unwrap_or(secret).trim();
            if secret.len() >= 8 && self.message.contains(secret) {
                self.message = self.message.replace(secret, &masked(secret));
            }
        }
        const PREFIXES: [&str; 7] = ["sk-", "sk_", "AIza", "gsk_", "xai-", "pk-", "key-"];
        let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        let mut out = String::with_capacity(self.message.len());
        let mut rest = self.message.as_str();
        while let Some(start) = rest.find(|c: char| is_key_char(c)) {
            out.push_str(&rest[..start]);
            let word_len = rest[start..]
                .find(|c: char| !is_key_char(c))
                .unwrap_or(rest.len() - start);
            let word = &rest[start..start + word_len];
            if word.len() >= 16 && PREFIXES.iter().any(|p| word.starts_with(p)) {
                out.push_str(&masked(word));
            } else {
                out.push_str(word);
            }
            rest = &rest[start + word_len..];
        }
        out.push_str(rest);
        self.message = out;
    }
}

/// The first four characters of a credential, then an ellipsis.
fn masked(secret: &str) -> String {
    let shown: String = secret.chars().take(4).collect();
    format!("{shown}…")
}

/// Longest upstream message kept (bytes); longer ones are cut at a char boundary.
const MAX_MESSAGE_BYTES: usize = 2_000;

/// Classifies an upstream error response: its status and raw body, in the
/// upstream's dialect. Never fails: a body that is not JSON is quoted (cut to
/// 2,000 bytes) as the message.
pub fn classify_error(upstream: Dialect, status: u16, body: &[u8]) -> UpstreamError {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => classify_value(upstream, Some(status), &value),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("upstream answered with status {status}")
            } else {
                truncate(text, MAX_MESSAGE_BYTES).to_owned()
            };
            UpstreamError {
                kind: kind_from_status(status),
                message,
            }
        }
    }
}

/// Classifies a parsed error object; `status` is `None` for an error that
/// arrived inside a stream (then the kind comes from the error's type).
pub(crate) fn classify_value(
    upstream: Dialect,
    status: Option<u16>,
    value: &Value,
) -> UpstreamError {
    // Gemini sometimes wraps the error in an array (streamed answers).
    let value = match value {
        Value::Array(items) => items.first().unwrap_or(value),
        other => other,
    };
    let error = value.get("error").unwrap_or(value);
    let message = match error {
        Value::String(text) => text.clone(),
        _ => error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    };
    let error_type = error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let code = match error.get("code") {
        Some(Value::String(code)) => code.clone(),
        _ => String::new(),
    };
    let gemini_status = error
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let status = status
        .filter(|status| *status >= 400)
        .or_else(|| {
            error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|code| u16::try_from(code).ok())
        })
        .or_else(|| status_from_type(error_type))
        .or_else(|| status_from_gemini_status(gemini_status))
        .unwrap_or(0);
    let lower = message.to_ascii_lowercase();

    let kind = if is_context_length(upstream, status, error_type, &code, gemini_status, &lower) {
        ErrorKind::ContextLength
    } else if status == 529
        || error_type == "overloaded_error"
        || gemini_status == "UNAVAILABLE"
        || (status == 503 && lower.contains("overloaded"))
    {
        ErrorKind::Overloaded
    } else if status == 0 {
        ErrorKind::Other
    } else {
        kind_from_status(status)
    };
    let message = if message.is_empty() {
        if status == 0 {
            "upstream error".to_owned()
        } else {
            format!("upstream answered with status {status}")
        }
    } else {
        truncate(&message, MAX_MESSAGE_BYTES).to_owned()
    };
    UpstreamError { kind, message }
}

fn is_context_length(
    upstream: Dialect,
    status: u16,
    error_type: &str,
    code: &str,
    gemini_status: &str,
    lower_message: &str,
) -> bool {
    match upstream {
        Dialect::OpenAi => {
            code == "context_length_exceeded"
                || lower_message.contains("maximum context length")
                || lower_message.contains("context_length_exceeded")
        }
        Dialect::Anthropic => {
            (error_type == "invalid_request_error" || status == 400 || status == 413)
                && (lower_message.contains("prompt is too long")
                    || lower_message.contains("context window")
                    || lower_message.contains("context limit")
                    || lower_message.contains("context length"))
        }
        Dialect::Gemini => {
            (status == 400 || gemini_status == "INVALID_ARGUMENT")
                && lower_message.contains("token")
                && (lower_message.contains("exceed") || lower_message.contains("too long"))
        }
    }
}

fn kind_from_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::RateLimited,
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        529 => ErrorKind::Overloaded,
        400..=499 => ErrorKind::InvalidRequest,
        500..=599 => ErrorKind::Server,
        _ => ErrorKind::Other,
    }
}

fn status_from_type(error_type: &str) -> Option<u16> {
    Some(match error_type {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" | "insufficient_quota" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" | "tokens" | "requests" => 429,
        "api_error" | "server_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => return None,
    })
}

fn status_from_gemini_status(status: &str) -> Option<u16> {
    Some(match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "RESOURCE_EXHAUSTED" => 429,
        "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => 500,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => return None,
    })
}

/// The OpenAI `error.type` for a status.
pub fn openai_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "insufficient_quota",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "api_error",
        // OpenAI itself answers an unknown model (404) with invalid_request_error.
        _ => "invalid_request_error",
    }
}

/// The Anthropic `error.type` for a status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The Google RPC `error.status` for a status (Gemini error bodies).
pub fn gemini_error_status(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        402 | 403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// An error body in the caller's dialect.
///
/// - OpenAI: `{"error": {"message", "type", "param": null, "code"}}` (`code`
///   is null when empty);
/// - Anthropic: `{"type": "error", "error": {"type", "message"}}`;
/// - Gemini: `{"error": {"code": status, "message", "status"}}`.
///
/// `extra` members (the gateway's problem+json fields) are added at the top
/// level beside the envelope, never replacing its own `error` (nor, for
/// Anthropic, its `type`).
pub fn error_body(
    caller: Dialect,
    status: u16,
    code: &str,
    message: &str,
    extra: &Map<String, Value>,
) -> Value {
    let mut body = Map::new();
    match caller {
        Dialect::OpenAi => {
            let code = if code.is_empty() {
                Value::Null
            } else {
                Value::from(code)
            };
            body.insert(
                "error".into(),
                json!({"message": message, "type": openai_error_type(status), "param": null, "code": code}),
            );
        }
        Dialect::Anthropic => {
            body.insert("type".into(), Value::from("error"));
            body.insert(
                "error".into(),
                json!({"type": anthropic_error_type(status), "message": message}),
            );
        }
        Dialect::Gemini => {
            body.insert(
                "error".into(),
                json!({"code": status, "message": message, "status": gemini_error_status(status)}),
            );
        }
    }
    for (key, value) in extra {
        if !body.contains_key(key) {
            body.insert(key.clone(), value.clone());
        }
    }
    Value::Object(body)
}

/// The status and body to answer a caller with for a classified upstream
/// error: the status is [`ErrorKind::http_status`], the envelope names
/// the error as the caller's API would ([`ErrorKind::status_for`]).
pub fn upstream_error_body(
    caller: Dialect,
    error: &UpstreamError,
    extra: &Map<String, Value>,
) -> (u16, Value) {
    (
        error.kind.http_status(),
        error_body(
            caller,
            error.kind.status_for(caller),
            error.kind.code(),
            &error.message,
            extra,
        ),
    )
}

pub(crate) fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
