//! Translation between LLM API dialects, for the gateway's AI routes. Pure
//! logic: no I/O, no HTTP types; the gateway moves the bytes.
//!
//! - [`Dialect`] names the three wire formats: OpenAI Chat Completions,
//!   Anthropic Messages and Gemini `generateContent`.
//! - [`translate_request`] turns a caller's request body into the upstream's,
//!   [`upstream_path`] says where to POST it, [`translate_response`] turns a
//!   non-streamed answer back and reads its [`Usage`].
//! - [`StreamTranslator`] does the same for streamed answers, event by event,
//!   over the incremental [`SseParser`]; it also tracks usage, output produced
//!   so far and the first token.
//! - [`classify_error`] reads an upstream error answer into an
//!   [`UpstreamError`] ([`ErrorKind`] drives fallbacks); [`error_body`] writes
//!   an error in the caller's dialect.
//! - [`estimate_input_tokens`] and [`count_text_tokens`] size prompts and
//!   output for reservations; [`price::Prices`] turns usage into nano-units.
//!
//! ## The hub
//! Same-dialect calls pass through (only the model is replaced). Every other
//! pair goes through the OpenAI chat format: an Anthropic caller's request is
//! first made an OpenAI request, which is then made a Gemini one, and answers
//! come back the same way. Streams use one internal event model (text,
//! reasoning, tool call start, tool arguments, finish, usage, error) decoded
//! from the upstream's events and encoded in the caller's.
//!
//! ## Mappings chosen
//! - System prompts: every OpenAI `system`/`developer` message, wherever it
//!   stands, joins Anthropic's `system` / Gemini's `systemInstruction`, in order.
//! - `response_format` to Anthropic: `json_object` becomes a system
//!   instruction; `json_schema` becomes a forced tool named [`JSON_TOOL_NAME`]
//!   whose `input_schema` is the schema (the approach in Anthropic's "JSON
//!   mode" tool-use guide), and its `tool_use` answer is turned back into
//!   message text. When the caller also defines tools, the schema goes into
//!   the system instruction instead, so that the caller's tools stay usable.
//! - `response_format` to Gemini: `responseMimeType: application/json` plus
//!   `responseSchema`, the JSON schema rewritten to Gemini's OpenAPI subset
//!   (upper-case types, `nullable`, `$ref`s inlined, unknown keywords dropped).
//! - Anthropic `thinking` blocks and Gemini thought parts become OpenAI
//!   `reasoning_content` (on the message and on stream deltas, as DeepSeek and
//!   vLLM do); `reasoning_content` becomes a `thinking` block with an empty
//!   signature for Anthropic callers. Thinking in a request's history is
//!   dropped when translating (it cannot be signed).
//! - `max_tokens`: Anthropic requires it; an OpenAI caller that gave none gets
//!   [`DEFAULT_ANTHROPIC_MAX_TOKENS`]. Toward OpenAI upstreams the hub writes
//!   `max_completion_tokens` (the only one reasoning models accept).
//! - `temperature` above 1 is clamped to 1 for Anthropic (its range is 0–1).
//! - Tool call ids Gemini does not give are made up as `call_<n>`; tool results
//!   find their function name through the assistant message that called it.
//!   Gemini 3 wants its thought signatures back on function calls; a
//!   translated history has none, so the first call of each model turn carries
//!   Google's documented placeholder `skip_thought_signature_validator`.
//!
//! ## Tokenizer
//! Counting uses tiktoken-rs's `o200k_base` (the BPE of GPT-4o and later
//! OpenAI models), loaded lazily from data compiled into the binary; no
//! network, ever. Why this one: it is on the house stack list, it is exact
//! for OpenAI, and only the dictionary used is linked (3.6 MB of
//! `.rodata`; a release probe binary using it is 6.9 MB in all, with the
//! regex engines and std). Loading takes 120–170 ms and ~46 MB of memory in
//! a release build, once ([`warm_up`] moves it to start-up). `bpe-openai` was
//! the other candidate: faster at counting, but its build script constructs
//! three tokenizers (cl100k, o200k, voyage3) on every clean build, in
//! unoptimised build-script code. Anthropic and Gemini tokenize
//! differently (more tokens for the same text), which the estimate's
//! [`tokens::ESTIMATE_MARGIN_PERCENT`] covers. See [`tokens`] for how
//! pathological inputs are kept cheap and panic-free.
//!
//! ## Not translated
//! Gemini as a caller (only Gemini→Gemini passes through); `n` > 1; OpenAI
//! audio, `logprobs` and legacy `functions`; file ids; Anthropic server tools
//! (web search, code execution…), `thinking` settings and images inside
//! `tool_result`; OpenAI `reasoning_effort`, penalties, `seed` and
//! `logit_bias` toward Anthropic (dropped: Anthropic has no equivalent).

mod anthropic;
mod error;
mod gemini;
mod json;
mod openai;
pub mod price;
mod sse;
mod stream;
pub mod tokens;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

pub use error::{
    ErrorKind, TranslateError, UpstreamError, anthropic_error_type, classify_error, error_body,
    gemini_error_status, openai_error_type, upstream_error_body,
};
pub use sse::{MAX_EVENT_BYTES, SseEvent, SseParser};
pub use stream::{StreamOptions, StreamTranslator};
pub use tokens::{count_text_tokens, estimate_input_tokens, warm_up};

/// An LLM API wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI Chat Completions (`/chat/completions`), and its many imitators.
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// Google Gemini `generateContent` / `streamGenerateContent`.
    Gemini,
}

/// Tokens of one call. `input` counts all prompt tokens, cached ones
/// included; `cached_input` is part of `input`; `reasoning` is part of
/// `output`.
///
/// From Anthropic: `input = input_tokens + cache_read_input_tokens +
/// cache_creation_input_tokens`, `cached_input = cache_read_input_tokens`,
/// `cache_write = cache_creation_input_tokens`.
/// From Gemini: `input = promptTokenCount`, `cached_input =
/// cachedContentTokenCount`, `output = candidatesTokenCount +
/// thoughtsTokenCount`, `reasoning = thoughtsTokenCount`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    /// Prompt tokens written to the provider's cache (a part of `input`):
    /// Anthropic's `cache_creation_input_tokens`, billed above the input
    /// price.
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// `max_tokens` for Anthropic when an OpenAI caller set no limit (Anthropic
/// requires one).
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u64 = 4096;

/// The forced tool that carries a `json_schema` answer from Anthropic.
pub const JSON_TOOL_NAME: &str = "json_response";

/// Why generation stopped, in the hub's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    StopSequence(Option<String>),
    Length,
    ToolCalls,
    ContentFilter,
}

/// The caller's request (in `caller`'s dialect) as the body to send upstream
/// (in `upstream`'s dialect), with the model set to `upstream_model`.
///
/// OpenAI→OpenAI and Anthropic→Anthropic pass everything through, replacing
/// only `model` (and, for a streamed OpenAI call, forcing
/// `stream_options.include_usage` so that usage can be metered). Gemini's
/// model is not in the body but in the path ([`upstream_path`]). Gemini
/// callers are only passed through to Gemini.
pub fn translate_request(
    caller: Dialect,
    upstream: Dialect,
    body: &Value,
    upstream_model: &str,
) -> Result<Value, TranslateError> {
    json::object(body, "")?;
    match (caller, upstream) {
        (Dialect::OpenAi, Dialect::OpenAi) => {
            let mut out = body.clone();
            finish_openai_request(&mut out, upstream_model);
            Ok(out)
        }
        (Dialect::Anthropic, Dialect::Anthropic) => {
            let mut out = body.clone();
            if let Some(object) = out.as_object_mut() {
                object.insert("model".into(), Value::from(upstream_model));
            }
            Ok(out)
        }
        (Dialect::Gemini, Dialect::Gemini) => Ok(body.clone()),
        (Dialect::OpenAi, Dialect::Anthropic) => {
            anthropic::request_from_openai(body, upstream_model)
        }
        (Dialect::OpenAi, Dialect::Gemini) => gemini::request_from_openai(body),
        (Dialect::Anthropic, Dialect::OpenAi) => {
            let mut out = anthropic::request_to_openai(body)?;
            // OpenAI rejects parameters it does not know; top_k is a hub extra.
            if let Some(object) = out.as_object_mut() {
                object.remove("top_k");
            }
            finish_openai_request(&mut out, upstream_model);
            Ok(out)
        }
        (Dialect::Anthropic, Dialect::Gemini) => {
            let hub = anthropic::request_to_openai(body)?;
            gemini::request_from_openai(&hub)
        }
        (Dialect::Gemini, _) => Err(TranslateError::Dialects { caller, upstream }),
    }
}

/// For an OpenAI-compatible API other than OpenAI's: the output limit as
/// `max_tokens`, which they all read, instead of `max_completion_tokens`,
/// which some refuse (an unknown field) and others ignore. An OpenAI body
/// that is not an object is left alone.
pub fn use_legacy_max_tokens(body: &mut Value) {
    let Some(object) = body.as_object_mut() else {
        return;
    };
    if let Some(max) = object.remove("max_completion_tokens")
        && !max.is_null()
    {
        object.insert("max_tokens".into(), max);
    }
}

fn finish_openai_request(body: &mut Value, model: &str) {
    let Some(object) = body.as_object_mut() else {
        return;
    };
    object.insert("model".into(), Value::from(model));
    if object.get("stream") == Some(&Value::Bool(true)) {
        let options = object
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
}

/// A non-streamed upstream answer (2xx JSON) in the caller's dialect, and the
/// usage it reports. The answer's `model` becomes `caller_model`, the name the
/// caller asked for (also on same-dialect answers; Gemini answers keep theirs).
pub fn translate_response(
    upstream: Dialect,
    caller: Dialect,
    body: &Value,
    caller_model: &str,
) -> Result<(Value, Usage), TranslateError> {
    json::object(body, "")?;
    let usage = match upstream {
        Dialect::OpenAi => openai::usage(body.get("usage")),
        Dialect::Anthropic => anthropic::usage(body.get("usage")).usage(),
        Dialect::Gemini => gemini::usage(body.get("usageMetadata")),
    };
    let translated = match (upstream, caller) {
        (Dialect::OpenAi, Dialect::OpenAi) | (Dialect::Anthropic, Dialect::Anthropic) => {
            let mut out = body.clone();
            if let Some(object) = out.as_object_mut() {
                object.insert("model".into(), Value::from(caller_model));
            }
            out
        }
        (Dialect::Gemini, Dialect::Gemini) => body.clone(),
        (Dialect::OpenAi, Dialect::Anthropic) => {
            anthropic::response_from_openai(body, caller_model)?
        }
        (Dialect::Anthropic, Dialect::OpenAi) => anthropic::response_to_openai(body, caller_model)?,
        (Dialect::Gemini, Dialect::OpenAi) => gemini::response_to_openai(body, caller_model)?,
        (Dialect::Gemini, Dialect::Anthropic) => {
            let hub = gemini::response_to_openai(body, caller_model)?;
            anthropic::response_from_openai(&hub, caller_model)?
        }
        (_, Dialect::Gemini) => return Err(TranslateError::Dialects { caller, upstream }),
    };
    Ok((translated, usage))
}

/// The path to POST to, relative to the provider's base URL. Gemini's model
/// goes in the path (a leading `models/` is accepted; characters outside
/// `A-Za-z0-9-._~` are percent-encoded).
pub fn upstream_path(upstream: Dialect, model: &str, stream: bool) -> String {
    match upstream {
        Dialect::OpenAi => "/chat/completions".to_owned(),
        Dialect::Anthropic => "/v1/messages".to_owned(),
        Dialect::Gemini => {
            let model = model.strip_prefix("models/").unwrap_or(model);
            let mut encoded = String::with_capacity(model.len());
            for byte in model.bytes() {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    encoded.push(char::from(byte));
                } else {
                    encoded.push_str(&format!("%{byte:02X}"));
                }
            }
            if stream {
                format!("/models/{encoded}:streamGenerateContent?alt=sse")
            } else {
                format!("/models/{encoded}:generateContent")
            }
        }
    }
}

/// The output limit the caller asked for: OpenAI `max_completion_tokens`,
/// else `max_tokens`; Anthropic `max_tokens`; Gemini
/// `generationConfig.maxOutputTokens`.
pub fn requested_max_tokens(caller: Dialect, body: &Value) -> Option<u64> {
    match caller {
        Dialect::OpenAi => body
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
            .or_else(|| body.get("max_tokens").and_then(Value::as_u64)),
        Dialect::Anthropic => body.get("max_tokens").and_then(Value::as_u64),
        Dialect::Gemini => body
            .get("generationConfig")
            .and_then(|config| config.get("maxOutputTokens"))
            .and_then(Value::as_u64),
    }
}

/// Sets the output limit in the field the caller used: for OpenAI,
/// `max_tokens` if the caller used only that, else `max_completion_tokens`
/// (both when the caller gave both). A body that is not an object is left alone.
pub fn set_max_tokens(caller: Dialect, body: &mut Value, max: u64) {
    let Some(object) = body.as_object_mut() else {
        return;
    };
    match caller {
        Dialect::OpenAi => {
            let has = |key: &str| object.get(key).is_some_and(|value| !value.is_null());
            let (legacy, current) = (has("max_tokens"), has("max_completion_tokens"));
            if legacy {
                object.insert("max_tokens".into(), Value::from(max));
            }
            if current || !legacy {
                object.insert("max_completion_tokens".into(), Value::from(max));
            }
        }
        Dialect::Anthropic => {
            object.insert("max_tokens".into(), Value::from(max));
        }
        Dialect::Gemini => {
            let config = object
                .entry("generationConfig")
                .or_insert_with(|| Value::Object(Map::new()));
            if !config.is_object() {
                *config = Value::Object(Map::new());
            }
            if let Some(config) = config.as_object_mut() {
                config.insert("maxOutputTokens".into(), Value::from(max));
            }
        }
    }
}

/// Whether the request asks for a streamed answer (`"stream": true`).
pub fn is_stream(body: &Value) -> bool {
    body.get("stream") == Some(&Value::Bool(true))
}

/// Whether the caller will see usage in a streamed answer: OpenAI only with
/// `stream_options.include_usage: true`; Anthropic and Gemini always.
pub fn wants_usage(caller: Dialect, body: &Value) -> bool {
    match caller {
        Dialect::OpenAi => {
            body.get("stream_options")
                .and_then(|options| options.get("include_usage"))
                == Some(&Value::Bool(true))
        }
        Dialect::Anthropic | Dialect::Gemini => true,
    }
}

/// Seconds since the epoch, for `created`.
pub(crate) fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
