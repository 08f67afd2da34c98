//! Token counts: [`count_text_tokens`] (the o200k_base BPE, exact for OpenAI's
//! current models) and [`estimate_input_tokens`] (a request's prompt, erring
//! high).
//!
//! The BPE is tiktoken-rs's `o200k_base`, loaded on first use (about 150 ms in
//! a release build; call [`warm_up`] at start to keep it off the request
//! path). Its pre-tokenising regex backtracks: on a megabyte of whitespace it
//! overflows its stack and tiktoken-rs panics, and a long run of one letter
//! costs hundreds of milliseconds. So text is cut into segments of at most
//! [`SEGMENT_BYTES`] (preferably before a space, where the regex splits
//! anyway: on ordinary text the count is unchanged), the BPE sees at most
//! [`MAX_BPE_BYTES`] per call (the rest is extrapolated), and a panic inside
//! the tokenizer is caught and replaced by the byte count (one token per byte
//! is the ceiling of a byte-level BPE).

use serde_json::Value;

use crate::Dialect;

/// The longest piece of text handed to the BPE at once.
pub const SEGMENT_BYTES: usize = 512;

/// Text beyond this many bytes in one call is not run through the BPE but
/// extrapolated at the rate seen so far, and never below one token per two
/// bytes (about twice the rate of English prose).
pub const MAX_BPE_BYTES: usize = 2 << 20;

/// What one image costs in an estimate. Anthropic caps an image at about
/// 1,600 tokens (it scales images to ~1.15 megapixels); OpenAI's tiled models
/// stay under 1,105 at high detail; Gemini charges 258 per 768-pixel tile. The
/// patch-based OpenAI minis can reach ~2,500 for a large image, which is rare
/// enough that the common ceiling is used.
pub const IMAGE_TOKENS: u64 = 1_600;

/// Tokens added per message for the role and the turn separators (OpenAI's
/// own accounting uses 3 to 4).
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 4;

/// Tokens added once when a request defines tools: providers wrap tool
/// definitions in a system prompt of their own (Anthropic documents 300 to 500
/// tokens for it).
pub const TOOLS_OVERHEAD_TOKENS: u64 = 500;

/// The estimate is raised by this many percent: Anthropic's and Gemini's
/// tokenizers produce more tokens than o200k for the same text, and the
/// estimate must err high.
pub const ESTIMATE_MARGIN_PERCENT: u64 = 20;

/// Deeper JSON than this is counted by its serialized size.
const MAX_DEPTH: usize = 64;

/// Loads the BPE now instead of at first use.
pub fn warm_up() {
    let _ = count_text_tokens("warm up");
}

/// Tokens in `text` under o200k_base (plus at most one per segment cut, on
/// texts with runs longer than [`SEGMENT_BYTES`] that have no space).
pub fn count_text_tokens(text: &str) -> u64 {
    let mut counter = Counter::default();
    counter.add_text(text);
    counter.tokens
}

/// Counts text through the BPE within the per-call byte budget.
#[derive(Default)]
pub(crate) struct Counter {
    pub(crate) tokens: u64,
    pub(crate) bpe_bytes: usize,
}

impl Counter {
    pub(crate) fn add_text(&mut self, text: &str) {
        let mut rest = text;
        while !rest.is_empty() {
            if self.bpe_bytes >= MAX_BPE_BYTES {
                self.tokens = self.tokens.saturating_add(self.extrapolate(rest.len()));
                return;
            }
            let cut = segment_end(rest, SEGMENT_BYTES);
            let (segment, tail) = rest.split_at(cut);
            self.tokens = self.tokens.saturating_add(bpe_count(segment));
            self.bpe_bytes += segment.len();
            rest = tail;
        }
    }

    fn extrapolate(&self, bytes: usize) -> u64 {
        let bytes = bytes as u64;
        let seen = self.bpe_bytes.max(1) as u64;
        let at_seen_rate = bytes.saturating_mul(self.tokens).div_ceil(seen);
        at_seen_rate.max(bytes.div_ceil(2))
    }
}

/// Where the first segment of `text` ends: at most `max` bytes, preferably
/// just before a whitespace byte that follows a non-whitespace one, otherwise
/// at the last char boundary.
fn segment_end(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let bytes = text.as_bytes();
    let mut index = max;
    while index > max / 2 {
        if bytes[index].is_ascii_whitespace() && !bytes[index - 1].is_ascii_whitespace() {
            return index;
        }
        index -= 1;
    }
    let mut cut = max;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut == 0 { text.len() } else { cut }
}

fn bpe_count(segment: &str) -> u64 {
    let counted = std::panic::catch_unwind(|| {
        tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(segment)
            .len()
    });
    match counted {
        Ok(count) => count as u64,
        Err(_) => segment.len() as u64,
    }
}

/// Prompt tokens of a request in `caller`'s dialect, estimated: the text of
/// every message, system prompt and tool definition through the BPE, images
/// and files at a fixed cost, [`MESSAGE_OVERHEAD_TOKENS`] per message,
/// [`TOOLS_OVERHEAD_TOKENS`] when tools are defined, then
/// [`ESTIMATE_MARGIN_PERCENT`] more. Parameters (model, temperature, ids…)
/// count nothing. Any JSON is accepted; the walk never fails.
pub fn estimate_input_tokens(caller: Dialect, body: &Value) -> u64 {
    let mut estimate = Estimate::default();
    let Some(object) = body.as_object() else {
        return 0;
    };
    let messages_key = match caller {
        Dialect::OpenAi | Dialect::Anthropic => "messages",
        Dialect::Gemini => "contents",
    };
    for (key, value) in object {
        match key.as_str() {
            "tools" | "functions" if value.as_array().is_some_and(|tools| !tools.is_empty()) => {
                estimate.add_tokens(TOOLS_OVERHEAD_TOKENS);
                estimate.add_json(value);
            }
            "response_format" | "generationConfig" | "output_format" => {
                // A schema reaches the model as text.
                estimate.add_schemas(value, 0);
            }
            key if key == messages_key => {
                if let Some(messages) = value.as_array() {
                    for message in messages {
                        estimate.add_tokens(MESSAGE_OVERHEAD_TOKENS);
                        estimate.walk(message, 0);
                    }
                } else {
                    estimate.walk(value, 0);
                }
            }
            "system" | "systemInstruction" | "system_instruction" | "tool_choice"
            | "toolConfig" => {
                estimate.add_tokens(MESSAGE_OVERHEAD_TOKENS);
                estimate.walk(value, 0);
            }
            _ => {}
        }
    }
    // The assistant turn the model answers in.
    estimate.add_tokens(3);
    let tokens = estimate.counter.tokens;
    tokens.saturating_add(tokens.saturating_mul(ESTIMATE_MARGIN_PERCENT).div_ceil(100))
}

#[derive(Default)]
struct Estimate {
    counter: Counter,
}

/// Members that carry no prompt text.
const SKIPPED_KEYS: &[&str] = &[
    "type",
    "role",
    "id",
    "tool_call_id",
    "tool_use_id",
    "cache_control",
    "signature",
    "thoughtSignature",
    "detail",
    "media_type",
    "mimeType",
    "index",
    "is_error",
    "citations",
];

impl Estimate {
    fn add_tokens(&mut self, tokens: u64) {
        self.counter.tokens = self.counter.tokens.saturating_add(tokens);
    }

    /// Structured values the model sees as JSON text (tool inputs, schemas).
    fn add_json(&mut self, value: &Value) {
        let text = value.to_string();
        self.counter.add_text(&text);
    }

    fn add_schemas(&mut self, value: &Value, depth: usize) {
        if let Value::Object(object) = value {
            for (key, member) in object {
                if matches!(
                    key.as_str(),
                    "schema" | "json_schema" | "responseSchema" | "responseJsonSchema"
                ) {
                    self.add_json(member);
                } else if depth < 4 {
                    self.add_schemas(member, depth + 1);
                }
            }
        }
    }

    fn walk(&mut self, value: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            let text = value.to_string();
            self.add_tokens(text.len() as u64);
            return;
        }
        match value {
            Value::String(text) => self.counter.add_text(text),
            Value::Array(items) => {
                for item in items {
                    self.walk(item, depth + 1);
                }
            }
            Value::Object(object) => {
                if let Some(tokens) = media_tokens(object) {
                    self.add_tokens(tokens);
                    return;
                }
                for (key, member) in object {
                    match key.as_str() {
                        key if SKIPPED_KEYS.contains(&key) => {}
                        // Tool call inputs and results as the model sees them.
                        "input" | "args" | "response" | "parameters" | "input_schema" => {
                            if member.is_string() {
                                self.walk(member, depth + 1);
                            } else {
                                self.add_json(member);
                            }
                        }
                        _ => self.walk(member, depth + 1),
                    }
                }
            }
            // A bare number or flag inside content is a token or two.
            Value::Number(_) | Value::Bool(_) => self.add_tokens(1),
            Value::Null => {}
        }
    }
}

/// The fixed cost of an image or file part, if `object` is one: OpenAI
/// `image_url` / `input_audio` / `file` parts, Anthropic `image` / `document`
/// blocks, Gemini `inlineData` / `fileData` parts.
fn media_tokens(object: &serde_json::Map<String, Value>) -> Option<u64> {
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if object.contains_key("image_url") || kind == "image_url" || kind == "image" {
        return Some(IMAGE_TOKENS);
    }
    if kind == "document" || kind == "file" || kind == "input_audio" {
        return Some(file_tokens(object.values()));
    }
    for key in ["inlineData", "inline_data", "fileData", "file_data"] {
        if let Some(media) = object.get(key) {
            let mime = media
                .get("mimeType")
                .or_else(|| media.get("mime_type"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if mime.starts_with("image/") || mime.is_empty() {
                return Some(IMAGE_TOKENS);
            }
            return Some(file_tokens(std::iter::once(media)));
        }
    }
    None
}

/// A file (PDF, audio) costs what its bytes would as text, never less than an
/// image: a PDF page is charged as its text plus an image of the page.
fn file_tokens<'a>(values: impl Iterator<Item = &'a Value>) -> u64 {
    let mut longest = 0usize;
    for value in values {
        longest_string(value, &mut longest, 0);
    }
    // Base64 carries 3 bytes in 4 characters; a token per 3 bytes errs high.
    ((longest as u64) / 4).max(IMAGE_TOKENS)
}

fn longest_string(value: &Value, longest: &mut usize, depth: usize) {
    if depth > 8 {
        return;
    }
    match value {
        Value::String(text) => *longest = (*longest).max(text.len()),
        Value::Array(items) => items
            .iter()
            .for_each(|item| longest_string(item, longest, depth + 1)),
        Value::Object(object) => object
            .values()
            .for_each(|item| longest_string(item, longest, depth + 1)),
        _ => {}
    }
}
