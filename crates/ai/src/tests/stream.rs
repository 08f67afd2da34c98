use serde_json::{Value, json};

use super::splits;
use crate::{Dialect, ErrorKind, StreamOptions, StreamTranslator, Usage};

const CREATED: i64 = 1_700_000_000;

fn options(include_usage: bool, id: &str, model: &str) -> StreamOptions {
    StreamOptions {
        include_usage,
        caller_model: model.to_owned(),
        id: id.to_owned(),
        created: CREATED,
    }
}

/// Runs the stream through a translator fed in every way of `splits`, checks
/// that all ways give the same bytes, and returns the bytes and the
/// translator fed byte by byte.
fn run(
    upstream: Dialect,
    caller: Dialect,
    options: &StreamOptions,
    input: &str,
) -> (String, StreamTranslator) {
    let mut reference: Option<Vec<u8>> = None;
    let mut byte_by_byte = None;
    for (way, pieces) in splits(input.as_bytes()).into_iter().enumerate() {
        let mut translator = StreamTranslator::new(upstream, caller, options.clone());
        let mut out = Vec::new();
        for piece in pieces {
            translator.push(piece, &mut out);
        }
        translator.finish(&mut out);
        // finish is idempotent and later bytes are ignored.
        translator.finish(&mut out);
        translator.push(b"data: {}\n\n", &mut out);
        match &reference {
            None => reference = Some(out),
            Some(reference) => assert_eq!(
                String::from_utf8_lossy(reference),
                String::from_utf8_lossy(&out),
                "split way {way} differs"
            ),
        }
        if way == 1 {
            byte_by_byte = Some(translator);
        }
    }
    let out = String::from_utf8(reference.unwrap_or_default()).unwrap();
    (out, byte_by_byte.unwrap())
}

/// The caller's OpenAI events: each must be exactly `data: <payload>\n\n`.
fn openai_events(out: &str) -> Vec<Value> {
    assert!(out.ends_with("\n\n"), "{out:?}");
    out.split_terminator("\n\n")
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!data.contains('\n'));
            if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

/// The caller's Anthropic events: each exactly `event: <type>\ndata: <json>\n\n`
/// with the same type inside.
fn anthropic_events(out: &str) -> Vec<Value> {
    assert!(out.ends_with("\n\n"), "{out:?}");
    out.split_terminator("\n\n")
        .map(|event| {
            let (name_line, data_line) = event.split_once('\n').unwrap();
            let name = name_line.strip_prefix("event: ").unwrap();
            let value: Value =
                serde_json::from_str(data_line.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(value["type"], json!(name));
            value
        })
        .collect()
}

fn chunk(delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-gw",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "caller-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
    })
}

fn usage_chunk(prompt: u64, completion: u64, cached: u64, reasoning: u64) -> Value {
    json!({
        "id": "chatcmpl-gw",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "caller-model",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}
        }
    })
}

/// Anthropic's documented event flow: thinking, text, two tool uses, pings,
/// in CRLF and LF line ends.
const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\r\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\r\n",
    "\r\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me check.\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Héllo\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\" wörld ✓\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Par\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"get_time\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"tz\\\":\\\"CET\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

fn anthropic_as_openai_chunks() -> Vec<Value> {
    vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"reasoning_content": "Let me check."}), Value::Null),
        chunk(json!({"content": "Héllo"}), Value::Null),
        chunk(json!({"content": " wörld ✓"}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Par"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "is\"}"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"tz\":\"CET\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ]
}

#[test]
fn anthropic_upstream_to_openai_caller_with_usage() {
    let (out, translator) = run(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &options(true, "chatcmpl-gw", "caller-model"),
        ANTHROPIC_STREAM,
    );
    let mut expected = anthropic_as_openai_chunks();
    expected.push(usage_chunk(40, 89, 10, 0));
    expected.push(json!("[DONE]"));
    assert_eq!(openai_events(&out), expected);
    assert_eq!(
        translator.usage(),
        Some(Usage {
            input: 40,
            output: 89,
            cached_input: 10,
            cache_write: 5,
            reasoning: 0
        })
    );
    assert!(translator.started());
    assert!(
        translator.produced_tokens() > 10,
        "{}",
        translator.produced_tokens()
    );
    assert!(translator.upstream_error().is_none());
}

#[test]
fn anthropic_upstream_to_openai_caller_without_usage() {
    let (out, _) = run(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &options(false, "chatcmpl-gw", "caller-model"),
        ANTHROPIC_STREAM,
    );
    let mut expected = anthropic_as_openai_chunks();
    expected.push(json!("[DONE]"));
    assert_eq!(openai_events(&out), expected);
}

#[test]
fn usage_progresses_through_the_stream() {
    let mut translator = StreamTranslator::new(
        Dialect::Anthropic,
        Dialect::OpenAi,
        options(true, "chatcmpl-gw", "caller-model"),
    );
    let mut out = Vec::new();
    assert_eq!(translator.usage(), None);
    assert!(!translator.started());
    let first_event_end = ANTHROPIC_STREAM.find("\r\n\r\n").unwrap() + 4;
    translator.push(&ANTHROPIC_STREAM.as_bytes()[..first_event_end], &mut out);
    // message_start reports the input; output is still the placeholder 1.
    assert_eq!(
        translator.usage(),
        Some(Usage {
            input: 40,
            output: 1,
            cached_input: 10,
            cache_write: 5,
            reasoning: 0
        })
    );
    assert!(!translator.started(), "no content yet");
    assert_eq!(
        openai_events(&String::from_utf8(out.clone()).unwrap()).len(),
        1,
        "the role chunk"
    );
}

/// OpenAI's stream with include_usage forced by the gateway: `usage: null` on
/// every chunk, then a usage-only chunk, then `[DONE]`.
const OPENAI_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"thére\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":20,\"total_tokens\":70,\"prompt_tokens_details\":{\"cached_tokens\":30,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":5,\"audio_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

fn anthropic_start(id: &str, model: &str, input: u64, cached: u64) -> Value {
    json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached, "output_tokens": 0}
    }})
}

fn block_start(index: u64, block: Value) -> Value {
    json!({"type": "content_block_start", "index": index, "content_block": block})
}

fn block_delta(index: u64, delta: Value) -> Value {
    json!({"type": "content_block_delta", "index": index, "delta": delta})
}

fn block_stop(index: u64) -> Value {
    json!({"type": "content_block_stop", "index": index})
}

#[test]
fn openai_upstream_to_anthropic_caller() {
    let (out, translator) = run(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &options(true, "msg_gw", "claude-alias"),
        OPENAI_STREAM,
    );
    let expected = vec![
        anthropic_start("msg_gw", "claude-alias", 0, 0),
        block_start(0, json!({"type": "text", "text": ""})),
        block_delta(0, json!({"type": "text_delta", "text": "Hi "})),
        block_delta(0, json!({"type": "text_delta", "text": "thére"})),
        block_stop(0),
        block_start(
            1,
            json!({"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}),
        ),
        block_delta(
            1,
            json!({"type": "input_json_delta", "partial_json": "{\"city\":"}),
        ),
        block_delta(
            1,
            json!({"type": "input_json_delta", "partial_json": "\"Paris\"}"}),
        ),
        block_stop(1),
        block_start(
            2,
            json!({"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}),
        ),
        block_delta(2, json!({"type": "input_json_delta", "partial_json": "{}"})),
        block_stop(2),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 30, "output_tokens": 20}}),
        json!({"type": "message_stop"}),
    ];
    assert_eq!(anthropic_events(&out), expected);
    assert_eq!(
        translator.usage(),
        Some(Usage {
            input: 50,
            output: 20,
            cached_input: 30,
            cache_write: 0,
            reasoning: 5
        })
    );
}

#[test]
fn openai_passthrough_with_usage_is_unchanged() {
    let (out, translator) = run(
        Dialect::OpenAi,
        Dialect::OpenAi,
        &options(true, "ignored", "gpt-4o"),
        OPENAI_STREAM,
    );
    assert_eq!(out, OPENAI_STREAM);
    assert_eq!(
        translator.usage(),
        Some(Usage {
            input: 50,
            output: 20,
            cached_input: 30,
            cache_write: 0,
            reasoning: 5
        })
    );
}

#[test]
fn openai_passthrough_without_usage_hides_the_forced_usage() {
    let (out, translator) = run(
        Dialect::OpenAi,
        Dialect::OpenAi,
        &options(false, "ignored", "openai/fast"),
        OPENAI_STREAM,
    );
    let mut expected = String::new();
    for event in OPENAI_STREAM.split_terminator("\n\n") {
        if event.contains("\"choices\":[]") {
            continue;
        }
        // The model as the caller named it, the rest byte for byte.
        expected.push_str(
            &event
                .replace(",\"usage\":null", "")
                .replace("\"model\":\"gpt-4o\"", "\"model\":\"openai/fast\""),
        );
        expected.push_str("\n\n");
    }
    assert_eq!(out, expected);
    assert!(!out.contains("usage"));
    assert_eq!(out.matches("[DONE]").count(), 1);
    // The gateway still meters it.
    assert_eq!(translator.usage().map(|usage| usage.input), Some(50));
}

#[test]
fn openai_passthrough_usage_chunk_is_made_when_upstream_sends_none() {
    // An OpenAI-compatible upstream that ignores stream_options, and ends without [DONE].
    let stream = concat!(
        "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hello world\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    );
    let mut translator = StreamTranslator::new(
        Dialect::OpenAi,
        Dialect::OpenAi,
        options(true, "chatcmpl-gw", "caller-model"),
    );
    translator.set_input_estimate(12);
    let mut out = Vec::new();
    translator.push(stream.as_bytes(), &mut out);
    translator.finish(&mut out);
    let out = String::from_utf8(out).unwrap();
    let events = openai_events(&out);
    assert_eq!(events.len(), 4);
    assert_eq!(events[2], usage_chunk(12, 2, 0, 0));
    assert_eq!(events[3], json!("[DONE]"));
    assert_eq!(translator.usage(), None);
    assert_eq!(translator.produced_tokens(), 2);
}

#[test]
fn anthropic_passthrough_is_unchanged() {
    let (out, translator) = run(
        Dialect::Anthropic,
        Dialect::Anthropic,
        &options(true, "x", "claude-sonnet-4-5"),
        ANTHROPIC_STREAM,
    );
    // Same events; line ends are normalised to LF.
    assert_eq!(out, ANTHROPIC_STREAM.replace("\r\n", "\n"));
    // Called by another name (`<provider>/<model>`, an alias), the stream
    // says that name, and nothing else changes.
    let (renamed, _) = run(
        Dialect::Anthropic,
        Dialect::Anthropic,
        &options(true, "x", "claude/sonnet"),
        ANTHROPIC_STREAM,
    );
    assert_eq!(
        renamed,
        ANTHROPIC_STREAM.replace("\r\n", "\n").replacen(
            "\"model\":\"claude-sonnet-4-5\"",
            "\"model\":\"claude/sonnet\"",
            1
        )
    );
    assert_eq!(
        translator.usage(),
        Some(Usage {
            input: 40,
            output: 89,
            cached_input: 10,
            cache_write: 5,
            reasoning: 0
        })
    );
}

#[test]
fn anthropic_passthrough_cut_short_is_closed() {
    let cut = ANTHROPIC_STREAM
        .find("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}")
        .unwrap();
    let (out, translator) = run(
        Dialect::Anthropic,
        Dialect::Anthropic,
        &options(true, "x", "y"),
        &ANTHROPIC_STREAM[..cut],
    );
    let expected_tail = concat!(
        "event: content_block_stop\ndata: {\"index\":1,\"type\":\"content_block_stop\"}\n\n",
        "event: message_delta\ndata: {\"delta\":{\"stop_reason\":null,\"stop_sequence\":null},",
        "\"type\":\"message_delta\",\"usage\":{\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"input_tokens\":30,\"output_tokens\":1}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let events = anthropic_events(&out);
    let tail: Vec<Value> = anthropic_events(expected_tail);
    assert_eq!(events[events.len() - 3..], tail[..]);
    assert!(translator.started());
}

/// Gemini's `streamGenerateContent?alt=sse`: whole function calls, usage on
/// every chunk, no end marker.
const GEMINI_STREAM: &str = concat!(
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Pondering.\", \"thought\": true}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"totalTokenCount\": 12},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc123\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The \"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"totalTokenCount\": 14},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc123\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"weather\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"totalTokenCount\": 16},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc123\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}},\"thoughtSignature\": \"CiQB\"},{\"functionCall\": {\"name\": \"get_time\",\"args\": {}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"candidatesTokenCount\": 20,\"totalTokenCount\": 40,\"cachedContentTokenCount\": 4,\"thoughtsTokenCount\": 8},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"abc123\"}\r\n\r\n",
);

#[test]
fn gemini_upstream_to_openai_caller() {
    let (out, translator) = run(
        Dialect::Gemini,
        Dialect::OpenAi,
        &options(true, "chatcmpl-gw", "caller-model"),
        GEMINI_STREAM,
    );
    let expected = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"reasoning_content": "Pondering."}), Value::Null),
        chunk(json!({"content": "The "}), Value::Null),
        chunk(json!({"content": "weather"}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_abc123_0", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":\"Paris\"}"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_abc123_1", "type": "function", "function": {"name": "get_time", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        usage_chunk(12, 28, 4, 8),
        json!("[DONE]"),
    ];
    assert_eq!(openai_events(&out), expected);
    assert_eq!(
        translator.usage(),
        Some(Usage {
            input: 12,
            output: 28,
            cached_input: 4,
            cache_write: 0,
            reasoning: 8
        })
    );
}

#[test]
fn gemini_upstream_to_anthropic_caller() {
    let (out, _) = run(
        Dialect::Gemini,
        Dialect::Anthropic,
        &options(true, "msg_gw", "claude-alias"),
        GEMINI_STREAM,
    );
    let expected = vec![
        // The first chunk's usage gives the prompt size already.
        anthropic_start("msg_gw", "claude-alias", 12, 0),
        block_start(
            0,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
        ),
        block_delta(
            0,
            json!({"type": "thinking_delta", "thinking": "Pondering."}),
        ),
        block_stop(0),
        block_start(1, json!({"type": "text", "text": ""})),
        block_delta(1, json!({"type": "text_delta", "text": "The "})),
        block_delta(1, json!({"type": "text_delta", "text": "weather"})),
        block_stop(1),
        block_start(
            2,
            json!({"type": "tool_use", "id": "call_abc123_0", "name": "get_weather", "input": {}}),
        ),
        block_delta(
            2,
            json!({"type": "input_json_delta", "partial_json": "{\"city\":\"Paris\"}"}),
        ),
        block_stop(2),
        block_start(
            3,
            json!({"type": "tool_use", "id": "call_abc123_1", "name": "get_time", "input": {}}),
        ),
        block_delta(3, json!({"type": "input_json_delta", "partial_json": "{}"})),
        block_stop(3),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 28}}),
        json!({"type": "message_stop"}),
    ];
    assert_eq!(anthropic_events(&out), expected);
}

#[test]
fn gemini_passthrough_keeps_events() {
    let (out, translator) = run(
        Dialect::Gemini,
        Dialect::Gemini,
        &options(true, "x", "y"),
        GEMINI_STREAM,
    );
    assert_eq!(out, GEMINI_STREAM.replace("\r\n", "\n"));
    assert_eq!(translator.usage().map(|usage| usage.output), Some(28));
}

#[test]
fn finish_and_stop_reason_mapping_in_streams() {
    for (reason, sequence, expected) in [
        ("end_turn", Value::Null, "stop"),
        ("stop_sequence", json!("END"), "stop"),
        ("max_tokens", Value::Null, "length"),
        ("refusal", Value::Null, "content_filter"),
    ] {
        let stream = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"usage\":{{\"input_tokens\":3,\"output_tokens\":1}}}}}}\n\n\
             event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n",
            json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": {"output_tokens": 1}})
        );
        let (out, _) = run(
            Dialect::Anthropic,
            Dialect::OpenAi,
            &options(false, "chatcmpl-gw", "caller-model"),
            &stream,
        );
        let events = openai_events(&out);
        assert_eq!(events[1], chunk(json!({}), json!(expected)), "{reason}");
    }
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
    ] {
        let stream = format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": finish}]})
        );
        let (out, _) = run(
            Dialect::OpenAi,
            Dialect::Anthropic,
            &options(true, "msg", "m"),
            &stream,
        );
        let events = anthropic_events(&out);
        let delta = &events[events.len() - 2];
        assert_eq!(delta["delta"]["stop_reason"], json!(stop), "{finish}");
    }
    for (reason, finish) in [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("STOP", "stop"),
    ] {
        let stream = format!(
            "data: {}\n\n",
            json!({"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": reason}]})
        );
        let (out, _) = run(
            Dialect::Gemini,
            Dialect::OpenAi,
            &options(false, "chatcmpl-gw", "caller-model"),
            &stream,
        );
        let events = openai_events(&out);
        assert_eq!(events[2], chunk(json!({}), json!(finish)), "{reason}");
    }
}

#[test]
fn json_tool_streams_as_text() {
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_j\",\"name\":\"json_response\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let (out, _) = run(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &options(false, "chatcmpl-gw", "caller-model"),
        stream,
    );
    assert_eq!(
        openai_events(&out),
        vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "{\"a\":"}), Value::Null),
            chunk(json!({"content": "1}"}), Value::Null),
            chunk(json!({}), json!("stop")),
            json!("[DONE]"),
        ]
    );
}

#[test]
fn upstream_error_events() {
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Par\"}}\n\n",
        "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
    );
    let (out, translator) = run(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &options(true, "chatcmpl-gw", "caller-model"),
        stream,
    );
    let events = openai_events(&out);
    assert_eq!(
        events[2],
        json!({"error": {"message": "Overloaded", "type": "api_error", "param": null, "code": "overloaded"}})
    );
    // The usage chunk (input from message_start) and [DONE] still close the stream.
    assert_eq!(events[3], usage_chunk(3, 1, 0, 0));
    assert_eq!(events[4], json!("[DONE]"));
    let error = translator.upstream_error().unwrap();
    assert_eq!(error.kind, ErrorKind::Overloaded);

    // To an Anthropic caller, an error ends the stream: no message_stop after it.
    let stream = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"tokens\",\"code\":\"rate_limit_exceeded\"}}\n\n",
    );
    let (out, translator) = run(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &options(true, "msg_gw", "m"),
        stream,
    );
    let events = anthropic_events(&out);
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
    assert_eq!(
        translator.upstream_error().unwrap().kind,
        ErrorKind::RateLimited
    );

    let stream = "data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\n\n";
    let (_, translator) = run(
        Dialect::Gemini,
        Dialect::OpenAi,
        &options(false, "c", "m"),
        stream,
    );
    assert_eq!(
        translator.upstream_error().unwrap().kind,
        ErrorKind::Overloaded
    );
}

#[test]
fn cut_streams_are_closed_properly() {
    // Nothing at all from upstream.
    let (out, translator) = run(
        Dialect::OpenAi,
        Dialect::OpenAi,
        &options(false, "c", "m"),
        "",
    );
    assert_eq!(out, "data: [DONE]\n\n");
    assert!(!translator.started());
    let (out, _) = run(
        Dialect::Gemini,
        Dialect::Anthropic,
        &options(true, "msg_gw", "m"),
        "",
    );
    assert_eq!(
        anthropic_events(&out),
        vec![
            anthropic_start("msg_gw", "m", 0, 0),
            json!({"type": "message_delta", "delta": {"stop_reason": null, "stop_sequence": null}, "usage": {"output_tokens": 0}}),
            json!({"type": "message_stop"}),
        ]
    );

    // OpenAI upstream cut in the middle of a tool call, Anthropic caller.
    let cut = OPENAI_STREAM.find("data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1").unwrap();
    // Cut inside the next event too: that half event is lost.
    let (out, translator) = run(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &options(true, "msg_gw", "m"),
        &OPENAI_STREAM[..cut + 30],
    );
    let events = anthropic_events(&out);
    let n = events.len();
    assert_eq!(events[n - 3], block_stop(1));
    assert_eq!(events[n - 2]["delta"]["stop_reason"], Value::Null);
    assert_eq!(
        events[n - 2]["usage"]["output_tokens"],
        json!(translator.produced_tokens())
    );
    assert_eq!(events[n - 1], json!({"type": "message_stop"}));
    assert!(translator.produced_tokens() >= 5);
    assert_eq!(translator.usage(), None);
}

#[test]
fn first_chunks_and_started() {
    let mut translator = StreamTranslator::new(
        Dialect::OpenAi,
        Dialect::Anthropic,
        options(true, "msg", "m"),
    );
    let mut out = Vec::new();
    translator.push(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n", &mut out);
    assert!(!translator.started(), "an empty role delta is not content");
    translator.push(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n",
        &mut out,
    );
    assert!(!translator.started(), "the event is not complete yet");
    translator.push(b"\n", &mut out);
    assert!(translator.started());
    assert_eq!(translator.produced_tokens(), 1);
}

#[test]
fn translator_can_move_between_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<StreamTranslator>();
    assert_send::<crate::SseParser>();
}

#[test]
fn compatible_upstream_with_whole_tool_calls_and_no_index() {
    // Some OpenAI-compatible servers send a whole call in one delta, without `index`.
    let stream = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[",
        "{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"a\",\"arguments\":\"{\\\"x\\\":1}\"}},",
        "{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"b\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}],",
        "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n",
        "data: [DONE]\n\n",
    );
    let (out, translator) = run(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &options(true, "msg", "m"),
        stream,
    );
    assert_eq!(
        anthropic_events(&out),
        vec![
            // Usage in the same chunk is known when the message starts.
            anthropic_start("msg", "m", 7, 0),
            block_start(
                0,
                json!({"type": "tool_use", "id": "c1", "name": "a", "input": {}})
            ),
            block_delta(
                0,
                json!({"type": "input_json_delta", "partial_json": "{\"x\":1}"})
            ),
            block_stop(0),
            block_start(
                1,
                json!({"type": "tool_use", "id": "c2", "name": "b", "input": {}})
            ),
            block_delta(1, json!({"type": "input_json_delta", "partial_json": "{}"})),
            block_stop(1),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 3}}),
            json!({"type": "message_stop"}),
        ]
    );
    assert_eq!(
        translator.usage(),
        Some(Usage {
            input: 7,
            output: 3,
            cached_input: 0,
            cache_write: 0,
            reasoning: 0
        })
    );
}

#[test]
fn anthropic_stop_sequence_reaches_anthropic_callers_of_other_upstreams_as_end_turn() {
    // OpenAI says only "stop": whether a stop sequence matched is unknown.
    let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let (out, _) = run(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &options(false, "msg", "m"),
        stream,
    );
    let events = anthropic_events(&out);
    assert_eq!(
        events[events.len() - 2]["delta"],
        json!({"stop_reason": "end_turn", "stop_sequence": null})
    );
}

#[test]
fn reasoning_deltas_become_a_thinking_block() {
    // DeepSeek and vLLM stream reasoning as `reasoning_content`.
    let stream = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"Hmm, \"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"two.\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"2\"},\"finish_reason\":\"length\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let (out, translator) = run(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &options(false, "msg", "m"),
        stream,
    );
    assert_eq!(
        anthropic_events(&out),
        vec![
            anthropic_start("msg", "m", 0, 0),
            block_start(
                0,
                json!({"type": "thinking", "thinking": "", "signature": ""})
            ),
            block_delta(0, json!({"type": "thinking_delta", "thinking": "Hmm, "})),
            block_delta(0, json!({"type": "thinking_delta", "thinking": "two."})),
            block_stop(0),
            block_start(1, json!({"type": "text", "text": ""})),
            block_delta(1, json!({"type": "text_delta", "text": "2"})),
            block_stop(1),
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                "usage": {"output_tokens": translator.produced_tokens()}}),
            json!({"type": "message_stop"}),
        ]
    );
    assert_eq!(
        translator.produced_tokens(),
        crate::count_text_tokens("Hmm, ")
            + crate::count_text_tokens("two.")
            + crate::count_text_tokens("2")
    );
}

/// A stream that breaks off ends with an error event in the caller's
/// dialect, never with what closes a complete stream; an error of the
/// upstream's own is not repeated.
#[test]
fn a_broken_stream_ends_with_an_error_event_not_a_close() {
    let first = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";
    for caller in [Dialect::OpenAi, Dialect::Anthropic] {
        let mut translator =
            StreamTranslator::new(Dialect::OpenAi, caller, options(true, "id", "m"));
        let mut out = Vec::new();
        translator.push(first.as_bytes(), &mut out);
        // A cut-off line is not forwarded.
        translator.push(b"data: {\"garb", &mut out);
        translator.abort("The provider's stream broke off.", &mut out);
        translator.abort("again", &mut out);
        translator.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Hel"), "{text}");
        assert!(!text.contains("garb"), "{text}");
        assert_eq!(
            text.matches("The provider's stream broke off.").count(),
            1,
            "{text}"
        );
        assert!(!text.contains("again"), "{text}");
        assert!(!text.contains("[DONE]"), "{text}");
        assert!(!text.contains("message_stop"), "{text}");
        match caller {
            Dialect::OpenAi => {
                let last = openai_events(&text).pop().unwrap();
                assert_eq!(last["error"]["code"], "upstream_error", "{text}");
            }
            _ => assert!(text.contains("event: error\n"), "{text}"),
        }
        assert!(translator.upstream_error().is_some());
    }
}

/// A stream is whole only when it closed as its API says, or (Gemini) said
/// why it stopped and reported usage, with no error on the way: the usage
/// Anthropic sends in `message_start` and Gemini on every chunk does not
/// make a stream that just ends whole.
#[test]
fn only_streams_that_close_as_their_api_says_are_complete() {
    let cut_at = |stream: &str, marker: &str| stream[..stream.find(marker).unwrap()].to_owned();
    let anthropic_error = format!(
        "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n",
        cut_at(ANTHROPIC_STREAM, "event: content_block_stop")
    );
    let gemini_unfinished = GEMINI_STREAM
        .lines()
        .filter(|line| !line.contains("finishReason"))
        .map(|line| format!("{line}\n"))
        .collect::<String>();
    for (upstream, input, complete) in [
        (Dialect::Anthropic, ANTHROPIC_STREAM.to_owned(), true),
        (
            Dialect::Anthropic,
            cut_at(ANTHROPIC_STREAM, "event: content_block_stop"),
            false,
        ),
        (Dialect::Anthropic, anthropic_error, false),
        (Dialect::Gemini, GEMINI_STREAM.to_owned(), true),
        (Dialect::Gemini, gemini_unfinished, false),
    ] {
        for caller in [Dialect::OpenAi, Dialect::Anthropic] {
            let mut translator =
                StreamTranslator::new(upstream, caller, options(true, "id", "model"));
            let mut out = Vec::new();
            translator.push(input.as_bytes(), &mut out);
            assert_eq!(
                translator.complete(),
                complete,
                "{upstream:?} → {caller:?}: {input}"
            );
            assert!(translator.usage().is_some(), "usage came either way");
        }
    }
}
