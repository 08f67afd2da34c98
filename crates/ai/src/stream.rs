//! Streamed answers, translated event by event.
//!
//! Upstream SSE bytes go through [`SseParser`]; a decoder per upstream
//! dialect turns each event into hub [`Delta`]s (text, reasoning, tool call
//! start, tool arguments, finish, usage, error, done); an encoder per caller
//! dialect writes them as the caller's events. Same-dialect streams are
//! forwarded event by event, decoded only for bookkeeping (usage, output
//! produced, first token, errors) and for the few edits the gateway needs.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::anthropic::{self, UsageParts};
use crate::error::{anthropic_error_type, classify_value, openai_error_type};
use crate::sse::{self, SseEvent, SseParser};
use crate::{Dialect, Finish, JSON_TOOL_NAME, UpstreamError, Usage, gemini, openai, tokens};

/// What the caller's stream should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// OpenAI callers: whether they asked for `stream_options.include_usage`
    /// (then exactly one usage chunk precedes `[DONE]`; otherwise none).
    pub include_usage: bool,
    /// The model name as the caller asked for it.
    pub caller_model: String,
    /// The id of the caller's completion or message (`chatcmpl-…`, `msg_…`).
    pub id: String,
    /// `created` of OpenAI chunks (seconds since the epoch).
    pub created: i64,
}

/// Translates a streamed answer: feed upstream bytes with [`push`](Self::push),
/// end with [`finish`](Self::finish), send what they append to the caller.
#[derive(Debug)]
pub struct StreamTranslator {
    parser: SseParser,
    events: Vec<SseEvent>,
    decoder: Decoder,
    mode: Mode,
    state: State,
    finished: bool,
}

/// What the translator has learnt so far (shared by the encoders).
#[derive(Debug)]
struct State {
    options: StreamOptions,
    usage: Option<Usage>,
    produced: u64,
    started: bool,
    error: Option<UpstreamError>,
    input_estimate: Option<u64>,
    /// The upstream said its answer is complete (OpenAI's `[DONE]`,
    /// Anthropic's `message_stop`).
    closed: bool,
    /// The upstream said why its answer stopped (a finish reason): with
    /// usage, a stream that then just ends (Gemini's do) is complete.
    stopped: bool,
}

impl State {
    /// Usage to report to the caller: the upstream's, or else an estimate
    /// (the input estimate the gateway gave, the output produced so far).
    fn usage_or_estimate(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            input: self.input_estimate.unwrap_or(0),
            output: self.produced,
            cached_input: 0,
            cache_write: 0,
            reasoning: 0,
        })
    }
}

impl StreamTranslator {
    pub fn new(upstream: Dialect, caller: Dialect, options: StreamOptions) -> Self {
        let decoder = match upstream {
            Dialect::OpenAi => Decoder::OpenAi(OpenAiDecoder::default()),
            Dialect::Anthropic => Decoder::Anthropic(AnthropicDecoder::default()),
            Dialect::Gemini => Decoder::Gemini(GeminiDecoder::default()),
        };
        let mode = match (upstream, caller) {
            (Dialect::OpenAi, Dialect::OpenAi) => {
                Mode::OpenAiPassthrough(OpenAiPassthrough::default())
            }
            (Dialect::Anthropic, Dialect::Anthropic) => {
                Mode::AnthropicPassthrough(AnthropicPassthrough::default())
            }
            (Dialect::Gemini, Dialect::Gemini) => Mode::GeminiPassthrough,
            (_, Dialect::OpenAi) => Mode::ToOpenAi(OpenAiEncoder::default()),
            (_, Dialect::Anthropic) => Mode::ToAnthropic(AnthropicEncoder::default()),
            // translate_request refuses these pairs; forward what comes.
            (_, Dialect::Gemini) => Mode::GeminiPassthrough,
        };
        Self {
            parser: SseParser::new(),
            events: Vec::new(),
            decoder,
            mode,
            state: State {
                options,
                usage: None,
                produced: 0,
                started: false,
                error: None,
                input_estimate: None,
                closed: false,
                stopped: false,
            },
            finished: false,
        }
    }

    /// The prompt size the gateway estimated: reported as the input of the
    /// usage chunk an OpenAI caller asked for when the upstream never sent
    /// usage (a stream cut short).
    pub fn set_input_estimate(&mut self, tokens: u64) {
        self.state.input_estimate = Some(tokens);
    }

    /// Appends to `out` the caller's bytes for these upstream bytes (possibly
    /// none yet). Bytes pushed after [`finish`](Self::finish) are ignored.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        self.parser.push(bytes, &mut events);
        for event in events.drain(..) {
            self.handle(&event, out);
        }
        self.events = events;
    }

    /// The upstream stream ended, normally or not: appends whatever closes
    /// the caller's stream properly (OpenAI `data: [DONE]`, after the usage
    /// chunk if asked for; Anthropic's closing events if the upstream never
    /// sent them). Idempotent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        self.parser.finish(&mut events);
        for event in events.drain(..) {
            // An event the stream ended without closing counts only if it
            // is whole: a cut-off JSON line is dropped, not forwarded.
            let whole =
                event.data.trim() == "[DONE]" || serde_json::from_str::<Value>(&event.data).is_ok();
            if whole {
                self.handle(&event, out);
            }
        }
        if self.parser.dropped() > 0 && self.state.error.is_none() {
            self.state.error = Some(UpstreamError {
                kind: crate::ErrorKind::Other,
                message: format!(
                    "upstream stream event larger than {} bytes dropped",
                    sse::MAX_EVENT_BYTES
                ),
            });
        }
        self.mode.close(&self.state, out);
        self.finished = true;
    }

    /// The upstream stream broke off (cut, silent past the deadline, or
    /// ended without closing and without any usage): tells the caller with
    /// an error event in its dialect, unless the upstream's own error
    /// already did, instead of the closing events that would make it look
    /// complete (OpenAI's SDKs raise on a `data: {"error": …}` chunk,
    /// Anthropic's on `event: error`). Whole events still pending are
    /// passed on first. Idempotent, and nothing is added after
    /// [`finish`](Self::finish).
    pub fn abort(&mut self, message: &str, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        self.parser.finish(&mut events);
        for event in events.drain(..) {
            if serde_json::from_str::<Value>(&event.data).is_ok() {
                self.handle(&event, out);
            }
        }
        if self.state.error.is_none() {
            let error = UpstreamError {
                kind: crate::ErrorKind::Server,
                message: message.to_owned(),
            };
            self.mode.error(&error, out);
            self.state.error = Some(error);
        }
        self.finished = true;
    }

    /// Usage the upstream reported (None until it did).
    pub fn usage(&self) -> Option<Usage> {
        self.state.usage
    }

    /// Output tokens produced so far, counted from the deltas seen (text,
    /// reasoning, tool names and arguments).
    pub fn produced_tokens(&self) -> u64 {
        self.state.produced
    }

    /// The upstream said its answer is complete (OpenAI's `[DONE]`,
    /// Anthropic's `message_stop`; Gemini's streams just end): what closes
    /// the caller's stream is in the output of that push.
    pub fn closed(&self) -> bool {
        self.state.closed
    }

    /// Whether the answer is whole: the upstream closed its stream as its
    /// API says (`[DONE]`, `message_stop`), or said why it stopped and
    /// reported usage (Gemini's last chunk), and sent no error. A stream
    /// that ends otherwise broke off, whatever usage came with its start
    /// (Anthropic's `message_start`, each Gemini chunk).
    pub fn complete(&self) -> bool {
        self.state.error.is_none()
            && (self.state.closed || (self.state.stopped && self.state.usage.is_some()))
    }

    /// True once the first content delta (text, reasoning or tool call) has
    /// been passed to the caller.
    pub fn started(&self) -> bool {
        self.state.started
    }

    /// An error event seen in the upstream stream, if any.
    pub fn upstream_error(&self) -> Option<&UpstreamError> {
        self.state.error.as_ref()
    }

    fn handle(&mut self, event: &SseEvent, out: &mut Vec<u8>) {
        let deltas = self.decoder.decode(event);
        for delta in &deltas {
            match delta {
                Delta::Text(text) | Delta::Reasoning(text) => {
                    self.state.produced = self
                        .state
                        .produced
                        .saturating_add(tokens::count_text_tokens(text));
                    self.state.started = true;
                }
                Delta::ToolArgs { fragment, .. } => {
                    self.state.produced = self
                        .state
                        .produced
                        .saturating_add(tokens::count_text_tokens(fragment));
                    self.state.started = true;
                }
                Delta::ToolStart { name, .. } => {
                    // The name plus the call's framing.
                    self.state.produced = self
                        .state
                        .produced
                        .saturating_add(tokens::count_text_tokens(name).saturating_add(3));
                    self.state.started = true;
                }
                Delta::Usage(usage) => self.state.usage = Some(*usage),
                Delta::Error(error) => {
                    if self.state.error.is_none() {
                        self.state.error = Some(error.clone());
                    }
                }
                Delta::Done => self.state.closed = true,
                Delta::Finish(_) => self.state.stopped = true,
                Delta::Start | Delta::Ping => {}
            }
        }
        self.mode.handle(event, deltas, &self.state, out);
    }
}

/// One step of an answer, in the hub's terms.
#[derive(Debug, Clone, PartialEq)]
enum Delta {
    /// The answer begins (its first event).
    Start,
    Text(String),
    Reasoning(String),
    /// A tool call begins; `key` identifies it within the upstream stream.
    ToolStart {
        key: u64,
        id: String,
        name: String,
    },
    ToolArgs {
        key: u64,
        fragment: String,
    },
    Finish(Finish),
    /// The usage reported so far, complete (decoders merge partial reports).
    Usage(Usage),
    Ping,
    Error(UpstreamError),
    /// The upstream said its stream is complete.
    Done,
}

// ---------------------------------------------------------------------------
// Decoders

#[derive(Debug)]
enum Decoder {
    OpenAi(OpenAiDecoder),
    Anthropic(AnthropicDecoder),
    Gemini(GeminiDecoder),
}

impl Decoder {
    fn decode(&mut self, event: &SseEvent) -> Vec<Delta> {
        match self {
            Self::OpenAi(decoder) => decoder.decode(event),
            Self::Anthropic(decoder) => decoder.decode(event),
            Self::Gemini(decoder) => decoder.decode(event),
        }
    }
}

#[derive(Debug, Default)]
struct OpenAiDecoder {
    started: bool,
    tools: HashSet<u64>,
}

impl OpenAiDecoder {
    fn decode(&mut self, event: &SseEvent) -> Vec<Delta> {
        let mut deltas = Vec::new();
        if event.data.trim() == "[DONE]" {
            deltas.push(Delta::Done);
            return deltas;
        }
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
            return deltas;
        };
        if value.get("error").is_some_and(|error| !error.is_null()) {
            deltas.push(Delta::Error(classify_value(Dialect::OpenAi, None, &value)));
            return deltas;
        }
        if !self.started {
            self.started = true;
            deltas.push(Delta::Start);
        }
        let choices = value
            .get("choices")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for choice in choices {
            // Only the first choice is translated (n = 1).
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.get("delta") {
                let reasoning = delta
                    .get("reasoning_content")
                    .and_then(Value::as_str)
                    .or_else(|| delta.get("reasoning").and_then(Value::as_str));
                if let Some(reasoning) = reasoning.filter(|text| !text.is_empty()) {
                    deltas.push(Delta::Reasoning(reasoning.to_owned()));
                }
                if let Some(text) = delta
                    .get("content")
                    .and_then(Value::as_str)
                    .filter(|text| !text.is_empty())
                {
                    deltas.push(Delta::Text(text.to_owned()));
                }
                let calls = delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                for (position, call) in calls.iter().enumerate() {
                    let key = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(position as u64);
                    let function = call.get("function");
                    if !self.tools.contains(&key) {
                        let id = call.get("id").and_then(Value::as_str);
                        let name = function
                            .and_then(|function| function.get("name"))
                            .and_then(Value::as_str);
                        if id.is_some() || name.is_some() {
                            self.tools.insert(key);
                            deltas.push(Delta::ToolStart {
                                key,
                                id: id.map_or_else(|| format!("call_{key}"), str::to_owned),
                                name: name.unwrap_or_default().to_owned(),
                            });
                        }
                    }
                    if let Some(fragment) = function
                        .and_then(|function| function.get("arguments"))
                        .and_then(Value::as_str)
                        .filter(|fragment| !fragment.is_empty())
                    {
                        deltas.push(Delta::ToolArgs {
                            key,
                            fragment: fragment.to_owned(),
                        });
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                deltas.push(Delta::Finish(openai::finish_from(reason)));
            }
        }
        if let Some(usage) = value.get("usage").filter(|usage| usage.is_object()) {
            deltas.push(Delta::Usage(openai::usage(Some(usage))));
        }
        deltas
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Thinking,
    Tool,
    /// The forced tool carrying a `json_schema` answer: its input is text.
    JsonTool,
    Other,
}

#[derive(Debug, Default)]
struct AnthropicDecoder {
    usage: UsageParts,
    blocks: HashMap<u64, BlockKind>,
    json_answer: bool,
}

impl AnthropicDecoder {
    fn decode(&mut self, event: &SseEvent) -> Vec<Delta> {
        let mut deltas = Vec::new();
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
            return deltas;
        };
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => {
                let reported = anthropic::usage(value.pointer("/message/usage"));
                if !reported.is_empty() {
                    self.usage.merge(reported);
                    deltas.push(Delta::Usage(self.usage.usage()));
                }
                deltas.push(Delta::Start);
            }
            "content_block_start" => {
                let block = value.get("content_block").unwrap_or(&Value::Null);
                let text = |key: &str| {
                    block
                        .get(key)
                        .and_then(Value::as_str)
                        .filter(|text| !text.is_empty())
                };
                let block_kind = match block
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                {
                    "text" => {
                        if let Some(text) = text("text") {
                            deltas.push(Delta::Text(text.to_owned()));
                        }
                        BlockKind::Text
                    }
                    "thinking" => {
                        if let Some(text) = text("thinking") {
                            deltas.push(Delta::Reasoning(text.to_owned()));
                        }
                        BlockKind::Thinking
                    }
                    "tool_use" => {
                        let name = text("name").unwrap_or_default();
                        let input = block.get("input").filter(|input| {
                            input.as_object().is_some_and(|input| !input.is_empty())
                        });
                        if name == JSON_TOOL_NAME {
                            self.json_answer = true;
                            if let Some(input) = input {
                                deltas.push(Delta::Text(input.to_string()));
                            }
                            BlockKind::JsonTool
                        } else {
                            let id =
                                text("id").map_or_else(|| format!("toolu_{index}"), str::to_owned);
                            deltas.push(Delta::ToolStart {
                                key: index,
                                id,
                                name: name.to_owned(),
                            });
                            if let Some(input) = input {
                                deltas.push(Delta::ToolArgs {
                                    key: index,
                                    fragment: input.to_string(),
                                });
                            }
                            BlockKind::Tool
                        }
                    }
                    _ => BlockKind::Other,
                };
                self.blocks.insert(index, block_kind);
            }
            "content_block_delta" => {
                let delta = value.get("delta").unwrap_or(&Value::Null);
                let text = |key: &str| {
                    delta
                        .get(key)
                        .and_then(Value::as_str)
                        .filter(|text| !text.is_empty())
                        .map(str::to_owned)
                };
                match delta
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                {
                    "text_delta" => deltas.extend(text("text").map(Delta::Text)),
                    "thinking_delta" => deltas.extend(text("thinking").map(Delta::Reasoning)),
                    "input_json_delta" => match self.blocks.get(&index) {
                        Some(BlockKind::JsonTool) => {
                            deltas.extend(text("partial_json").map(Delta::Text))
                        }
                        Some(BlockKind::Tool) => {
                            deltas.extend(text("partial_json").map(|fragment| Delta::ToolArgs {
                                key: index,
                                fragment,
                            }))
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = value.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    let sequence = value
                        .pointer("/delta/stop_sequence")
                        .and_then(Value::as_str);
                    let mut finish = anthropic::finish_from(reason, sequence);
                    if self.json_answer && finish == Finish::ToolCalls {
                        finish = Finish::Stop;
                    }
                    deltas.push(Delta::Finish(finish));
                }
                let reported = anthropic::usage(value.get("usage"));
                if !reported.is_empty() {
                    self.usage.merge(reported);
                    deltas.push(Delta::Usage(self.usage.usage()));
                }
            }
            "message_stop" => deltas.push(Delta::Done),
            "ping" => deltas.push(Delta::Ping),
            "error" => deltas.push(Delta::Error(classify_value(
                Dialect::Anthropic,
                None,
                &value,
            ))),
            _ => {}
        }
        deltas
    }
}

#[derive(Debug, Default)]
struct GeminiDecoder {
    started: bool,
    calls: u64,
}

impl GeminiDecoder {
    fn decode(&mut self, event: &SseEvent) -> Vec<Delta> {
        let mut deltas = Vec::new();
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
            return deltas;
        };
        // An error mid-stream arrives as an error object (sometimes in an array).
        let first = match &value {
            Value::Array(items) => items.first().unwrap_or(&Value::Null),
            other => other,
        };
        if first.get("error").is_some_and(|error| !error.is_null()) {
            deltas.push(Delta::Error(classify_value(Dialect::Gemini, None, first)));
            return deltas;
        }
        let value = first;
        if let Some(metadata) = value
            .get("usageMetadata")
            .filter(|metadata| metadata.is_object())
        {
            deltas.push(Delta::Usage(gemini::usage(Some(metadata))));
        }
        if !self.started {
            self.started = true;
            deltas.push(Delta::Start);
        }
        let response_id = value.get("responseId").and_then(Value::as_str);
        let candidate = value
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|candidates| candidates.first());
        if let Some(candidate) = candidate {
            let parts = candidate
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for part in parts {
                let Some(part) = part.as_object() else {
                    continue;
                };
                match gemini::read_part(part, "") {
                    Ok(gemini::ReadPart::Text(text)) if !text.is_empty() => {
                        deltas.push(Delta::Text(text.to_owned()))
                    }
                    Ok(gemini::ReadPart::Thought(text)) if !text.is_empty() => {
                        deltas.push(Delta::Reasoning(text.to_owned()));
                    }
                    Ok(gemini::ReadPart::Call { id, name, args }) => {
                        let key = self.calls;
                        self.calls += 1;
                        let id = id.map_or_else(
                            || gemini::call_id(response_id, key as usize),
                            str::to_owned,
                        );
                        deltas.push(Delta::ToolStart {
                            key,
                            id,
                            name: name.to_owned(),
                        });
                        deltas.push(Delta::ToolArgs {
                            key,
                            fragment: args.to_string(),
                        });
                    }
                    _ => {}
                }
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                let mut finish = gemini::finish_from(reason);
                if self.calls > 0 && finish == Finish::Stop {
                    finish = Finish::ToolCalls;
                }
                deltas.push(Delta::Finish(finish));
            }
        } else if value.pointer("/promptFeedback/blockReason").is_some() {
            deltas.push(Delta::Finish(Finish::ContentFilter));
        }
        deltas
    }
}

// ---------------------------------------------------------------------------
// Caller side

#[derive(Debug)]
enum Mode {
    OpenAiPassthrough(OpenAiPassthrough),
    AnthropicPassthrough(AnthropicPassthrough),
    GeminiPassthrough,
    ToOpenAi(OpenAiEncoder),
    ToAnthropic(AnthropicEncoder),
}

impl Mode {
    fn handle(&mut self, event: &SseEvent, deltas: Vec<Delta>, state: &State, out: &mut Vec<u8>) {
        match self {
            Self::OpenAiPassthrough(pass) => pass.forward(event, &deltas, state, out),
            Self::AnthropicPassthrough(pass) => pass.forward(event, state, out),
            Self::GeminiPassthrough => forward_raw(event, out),
            Self::ToOpenAi(encoder) => {
                for delta in deltas {
                    encoder.handle(delta, state, out);
                }
            }
            Self::ToAnthropic(encoder) => {
                for delta in deltas {
                    encoder.handle(delta, state, out);
                }
            }
        }
    }

    /// An error event of the gateway's own, in the caller's dialect.
    fn error(&mut self, error: &UpstreamError, out: &mut Vec<u8>) {
        match self {
            Self::OpenAiPassthrough(_) | Self::ToOpenAi(_) => write_openai_error(out, error),
            Self::AnthropicPassthrough(_) | Self::ToAnthropic(_) => {
                write_anthropic_error(out, error);
            }
            Self::GeminiPassthrough => {
                let body = json!({"error": {"code": 503, "message": error.message, "status": "UNAVAILABLE"}});
                sse::write_data(out, &body.to_string());
            }
        }
    }

    fn close(&mut self, state: &State, out: &mut Vec<u8>) {
        match self {
            Self::OpenAiPassthrough(pass) => pass.close(state, out),
            Self::AnthropicPassthrough(pass) => pass.close(state, out),
            Self::GeminiPassthrough => {}
            Self::ToOpenAi(encoder) => encoder.close(state, out),
            Self::ToAnthropic(encoder) => encoder.close(state, out),
        }
    }
}

fn forward_raw(event: &SseEvent, out: &mut Vec<u8>) {
    match &event.event {
        Some(name) => sse::write_event(out, name, &event.data),
        None => sse::write_data(out, &event.data),
    }
}

/// OpenAI → OpenAI: chunks go through as they are, except that the usage
/// the gateway forced upstream is hidden from a caller who did not ask for it.
#[derive(Debug, Default)]
struct OpenAiPassthrough {
    usage_sent: bool,
    done: bool,
}

impl OpenAiPassthrough {
    fn forward(&mut self, event: &SseEvent, deltas: &[Delta], state: &State, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if deltas.contains(&Delta::Done) {
            self.close(state, out);
            return;
        }
        let Ok(mut value) = serde_json::from_str::<Value>(&event.data) else {
            forward_raw(event, out);
            return;
        };
        // The model as the caller named it (an alias, `<provider>/<model>`),
        // as in non-streamed answers.
        let renamed = match value.get_mut("model") {
            Some(model) if model.as_str() != Some(state.options.caller_model.as_str()) => {
                let old =
                    std::mem::replace(model, Value::String(state.options.caller_model.clone()));
                Some(SseEvent {
                    event: event.event.clone(),
                    data: with_model(&event.data, &old, &value),
                })
            }
            _ => None,
        };
        let event = renamed.as_ref().unwrap_or(event);
        let Some(object) = value.as_object() else {
            forward_raw(event, out);
            return;
        };
        let usage = object.get("usage");
        let has_usage = usage.is_some_and(Value::is_object);
        let no_choices = object
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if state.options.include_usage {
            if has_usage {
                if self.usage_sent && no_choices {
                    // A second usage-only chunk would break "exactly one".
                    return;
                }
                self.usage_sent = true;
            }
            forward_raw(event, out);
        } else if has_usage && no_choices {
            // The usage chunk the caller did not ask for.
        } else if usage.is_some() {
            let data = without_usage(&event.data, &value);
            match &event.event {
                Some(name) => sse::write_event(out, name, &data),
                None => sse::write_data(out, &data),
            }
        } else {
            forward_raw(event, out);
        }
    }

    fn close(&mut self, state: &State, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        if state.options.include_usage && !self.usage_sent {
            self.usage_sent = true;
            write_openai_usage_chunk(state, out);
        }
        sse::write_data(out, "[DONE]");
    }
}

/// The chunk's JSON without its top-level `usage` member: the text with the
/// member cut out when that reproduces the same JSON (keeping the upstream's
/// formatting and member order), else re-serialized.
fn without_usage(data: &str, value: &Value) -> String {
    let mut expected = value.clone();
    if let Some(object) = expected.as_object_mut() {
        object.remove("usage");
    }
    for pattern in [
        ",\"usage\":null",
        "\"usage\":null,",
        ", \"usage\": null",
        "\"usage\": null, ",
    ] {
        if data.matches(pattern).count() == 1 {
            let candidate = data.replacen(pattern, "", 1);
            if serde_json::from_str::<Value>(&candidate).is_ok_and(|parsed| parsed == expected) {
                return candidate;
            }
        }
    }
    expected.to_string()
}

/// The chunk's JSON with `model` replaced: the text with the one
/// `"model":"<old>"` swapped when that reproduces `renamed` (keeping the
/// upstream's formatting and member order), else re-serialized.
fn with_model(data: &str, old: &Value, renamed: &Value) -> String {
    match (old.as_str(), renamed.get("model")) {
        (Some(old), Some(new)) => replace_model(data, old, new, renamed),
        _ => renamed.to_string(),
    }
}

/// `data` with its one `"model": old` now `new`, the rest byte for byte,
/// when that gives `renamed`; else `renamed` written anew.
fn replace_model(data: &str, old: &str, new: &Value, renamed: &Value) -> String {
    let old = Value::String(old.to_owned()).to_string();
    let new = new.to_string();
    for separator in [":", ": "] {
        let pattern = format!("\"model\"{separator}{old}");
        if data.matches(&pattern).count() == 1 {
            let candidate = data.replacen(&pattern, &format!("\"model\"{separator}{new}"), 1);
            if serde_json::from_str::<Value>(&candidate).is_ok_and(|parsed| parsed == *renamed) {
                return candidate;
            }
        }
    }
    renamed.to_string()
}

fn write_openai_usage_chunk(state: &State, out: &mut Vec<u8>) {
    let usage = state.usage_or_estimate();
    let chunk = json!({
        "id": state.options.id,
        "object": "chat.completion.chunk",
        "created": state.options.created,
        "model": state.options.caller_model,
        "choices": [],
        "usage": openai::usage_json(&usage),
    });
    sse::write_data(out, &chunk.to_string());
}

/// Anthropic → Anthropic: events go through as they are; the closing events
/// are added if the upstream stream ended without them.
#[derive(Debug, Default)]
struct AnthropicPassthrough {
    message_started: bool,
    open_block: Option<u64>,
    message_delta_sent: bool,
    stopped: bool,
    errored: bool,
}

impl AnthropicPassthrough {
    fn forward(&mut self, event: &SseEvent, state: &State, out: &mut Vec<u8>) {
        let mut value = serde_json::from_str::<Value>(&event.data).ok();
        let kind = value.as_ref().and_then(|value| {
            let index = value.get("index").and_then(Value::as_u64);
            value
                .get("type")
                .and_then(Value::as_str)
                .map(|kind| (kind.to_owned(), index))
        });
        if let Some((kind, index)) = kind {
            match kind.as_str() {
                "message_start" => {
                    self.message_started = true;
                    // The model as the caller named it, as the OpenAI
                    // passthrough and non-streamed answers do.
                    let caller_model = Value::String(state.options.caller_model.clone());
                    if let Some(model) = value
                        .as_mut()
                        .and_then(|v| v.pointer_mut("/message/model"))
                        .filter(|m| **m != caller_model)
                    {
                        let old = std::mem::replace(model, caller_model.clone());
                        if let (Some(old), Some(value)) = (old.as_str(), &value) {
                            let renamed = SseEvent {
                                event: event.event.clone(),
                                data: replace_model(&event.data, old, &caller_model, value),
                            };
                            forward_raw(&renamed, out);
                            return;
                        }
                    }
                }
                "content_block_start" => self.open_block = index,
                "content_block_stop" => self.open_block = None,
                "message_delta" => self.message_delta_sent = true,
                "message_stop" => self.stopped = true,
                "error" => self.errored = true,
                _ => {}
            }
        }
        forward_raw(event, out);
    }

    fn close(&mut self, state: &State, out: &mut Vec<u8>) {
        if self.stopped || self.errored {
            return;
        }
        if !self.message_started {
            write_message_start(state, out);
        }
        if let Some(index) = self.open_block.take() {
            write_anthropic(out, json!({"type": "content_block_stop", "index": index}));
        }
        if !self.message_delta_sent {
            write_message_delta(None, state, out);
        }
        write_anthropic(out, json!({"type": "message_stop"}));
        self.stopped = true;
    }
}

/// Hub deltas → OpenAI chunks.
#[derive(Debug, Default)]
struct OpenAiEncoder {
    role_sent: bool,
    /// Upstream tool key → the caller's `index` (0, 1, 2… in order of appearance).
    tools: HashMap<u64, u64>,
    finish_sent: bool,
    done: bool,
}

impl OpenAiEncoder {
    fn handle(&mut self, delta: Delta, state: &State, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match delta {
            Delta::Start => self.ensure_role(state, out),
            Delta::Text(text) => {
                self.ensure_role(state, out);
                write_chunk(state, out, json!({"content": text}), Value::Null);
            }
            Delta::Reasoning(text) => {
                self.ensure_role(state, out);
                write_chunk(state, out, json!({"reasoning_content": text}), Value::Null);
            }
            Delta::ToolStart { key, id, name } => {
                self.ensure_role(state, out);
                let index = self.tools.len() as u64;
                self.tools.insert(key, index);
                let call = json!({"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}});
                write_chunk(state, out, json!({"tool_calls": [call]}), Value::Null);
            }
            Delta::ToolArgs { key, fragment } => {
                if let Some(index) = self.tools.get(&key) {
                    let call = json!({"index": index, "function": {"arguments": fragment}});
                    write_chunk(state, out, json!({"tool_calls": [call]}), Value::Null);
                }
            }
            Delta::Finish(finish) => {
                if !self.finish_sent {
                    self.ensure_role(state, out);
                    self.finish_sent = true;
                    write_chunk(
                        state,
                        out,
                        json!({}),
                        Value::from(openai::finish_name(&finish)),
                    );
                }
            }
            Delta::Error(error) => write_openai_error(out, &error),
            Delta::Done => self.close(state, out),
            Delta::Usage(_) | Delta::Ping => {}
        }
    }

    fn ensure_role(&mut self, state: &State, out: &mut Vec<u8>) {
        if !self.role_sent {
            self.role_sent = true;
            write_chunk(
                state,
                out,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            );
        }
    }

    fn close(&mut self, state: &State, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        if state.options.include_usage {
            write_openai_usage_chunk(state, out);
        }
        sse::write_data(out, "[DONE]");
    }
}

fn write_chunk(state: &State, out: &mut Vec<u8>, delta: Value, finish_reason: Value) {
    let chunk = json!({
        "id": state.options.id,
        "object": "chat.completion.chunk",
        "created": state.options.created,
        "model": state.options.caller_model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
    });
    sse::write_data(out, &chunk.to_string());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    Thinking,
    Tool(u64),
}

/// Hub deltas → Anthropic events.
#[derive(Debug, Default)]
struct AnthropicEncoder {
    started: bool,
    /// The open content block: its index and kind.
    open: Option<(u64, OpenBlock)>,
    next_block: u64,
    /// Upstream tool key → its block index.
    tools: HashMap<u64, u64>,
    finish: Option<Finish>,
    closed: bool,
}

impl AnthropicEncoder {
    fn handle(&mut self, delta: Delta, state: &State, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        match delta {
            Delta::Start => self.ensure_started(state, out),
            Delta::Text(text) => {
                let index = self.open_block(OpenBlock::Text, state, out);
                let delta = json!({"type": "text_delta", "text": text});
                write_anthropic(
                    out,
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                );
            }
            Delta::Reasoning(text) => {
                let index = self.open_block(OpenBlock::Thinking, state, out);
                let delta = json!({"type": "thinking_delta", "thinking": text});
                write_anthropic(
                    out,
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                );
            }
            Delta::ToolStart { key, id, name } => {
                self.ensure_started(state, out);
                self.close_block(out);
                let index = self.next_block;
                self.next_block += 1;
                self.tools.insert(key, index);
                self.open = Some((index, OpenBlock::Tool(key)));
                let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                write_anthropic(
                    out,
                    json!({"type": "content_block_start", "index": index, "content_block": block}),
                );
            }
            Delta::ToolArgs { key, fragment } => {
                // A late fragment of an earlier call keeps that call's index.
                if let Some(index) = self.tools.get(&key) {
                    let delta = json!({"type": "input_json_delta", "partial_json": fragment});
                    write_anthropic(
                        out,
                        json!({"type": "content_block_delta", "index": index, "delta": delta}),
                    );
                }
            }
            Delta::Finish(finish) => {
                self.ensure_started(state, out);
                self.close_block(out);
                self.finish = Some(finish);
            }
            Delta::Ping => write_anthropic(out, json!({"type": "ping"})),
            Delta::Error(error) => {
                write_anthropic_error(out, &error);
                // An error ends an Anthropic stream.
                self.closed = true;
            }
            Delta::Done => self.close(state, out),
            Delta::Usage(_) => {}
        }
    }

    fn ensure_started(&mut self, state: &State, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            write_message_start(state, out);
        }
    }

    /// The index of an open block of `kind`, opening one if needed.
    fn open_block(&mut self, kind: OpenBlock, state: &State, out: &mut Vec<u8>) -> u64 {
        self.ensure_started(state, out);
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, kind));
        let block = match kind {
            OpenBlock::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            OpenBlock::Text | OpenBlock::Tool(_) => json!({"type": "text", "text": ""}),
        };
        write_anthropic(
            out,
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            write_anthropic(out, json!({"type": "content_block_stop", "index": index}));
        }
    }

    fn close(&mut self, state: &State, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        self.ensure_started(state, out);
        self.close_block(out);
        write_message_delta(self.finish.as_ref(), state, out);
        write_anthropic(out, json!({"type": "message_stop"}));
        self.closed = true;
    }
}

/// `event: <type>\ndata: <json>\n\n`.
/// OpenAI's error chunk: `data: {"error": {…}}`.
fn write_openai_error(out: &mut Vec<u8>, error: &UpstreamError) {
    let status = error.kind.status_for(Dialect::OpenAi);
    let body = json!({"error": {
        "message": error.message,
        "type": openai_error_type(status),
        "param": null,
        "code": error.kind.code(),
    }});
    sse::write_data(out, &body.to_string());
}

/// Anthropic's `event: error`.
fn write_anthropic_error(out: &mut Vec<u8>, error: &UpstreamError) {
    let status = error.kind.status_for(Dialect::Anthropic);
    write_anthropic(
        out,
        json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": error.message}}),
    );
}

fn write_anthropic(out: &mut Vec<u8>, body: Value) {
    let kind = body
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        .to_owned();
    sse::write_event(out, &kind, &body.to_string());
}

fn write_message_start(state: &State, out: &mut Vec<u8>) {
    let usage = state.usage.unwrap_or_default();
    let mut usage = anthropic::usage_json(&usage);
    if let Some(usage) = usage.as_object_mut() {
        // Output is reported by message_delta.
        usage.insert("output_tokens".into(), Value::from(0));
    }
    let message = json!({
        "id": state.options.id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": state.options.caller_model,
        "stop_reason": null,
        "stop_sequence": null,
        "usage": usage,
    });
    write_anthropic(out, json!({"type": "message_start", "message": message}));
}

/// `message_delta` with the stop reason (null when the upstream gave none)
/// and the usage: all of it when known (Anthropic's SDKs take input counts
/// from here too), else the output produced so far.
fn write_message_delta(finish: Option<&Finish>, state: &State, out: &mut Vec<u8>) {
    let (stop_reason, stop_sequence) = match finish {
        Some(finish) => {
            let (reason, sequence) = anthropic::finish_name(finish);
            (Value::from(reason), sequence)
        }
        None => (Value::Null, Value::Null),
    };
    let usage = match state.usage {
        Some(usage) => anthropic::usage_json(&usage),
        None => json!({"output_tokens": state.produced}),
    };
    write_anthropic(
        out,
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage}),
    );
}
