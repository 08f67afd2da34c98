use serde_json::{Value, json};

use super::without_created;
use crate::{Dialect, JSON_TOOL_NAME, Usage, translate_response};

fn openai_completion() -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look.",
                "refusal": null,
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ],
                "annotations": []
            },
            "logprobs": null,
            "finish_reason": "tool_calls"
        }],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035"
    })
}

#[test]
fn openai_to_anthropic_response() {
    let (out, usage) = translate_response(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &openai_completion(),
        "my-claude",
    )
    .unwrap();
    assert_eq!(
        usage,
        Usage {
            input: 1117,
            output: 46,
            cached_input: 1024,
            cache_write: 0,
            reasoning: 12
        }
    );
    assert_eq!(
        out,
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "type": "message",
            "role": "assistant",
            "model": "my-claude",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 93, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024, "output_tokens": 46}
        })
    );
}

#[test]
fn openai_to_anthropic_stop_reasons_reasoning_and_refusal() {
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        ("tool_calls", "tool_use"),
    ] {
        let body = json!({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": finish}]});
        let (out, usage) =
            translate_response(Dialect::OpenAi, Dialect::Anthropic, &body, "m").unwrap();
        assert_eq!(out["stop_reason"], json!(stop));
        assert_eq!(usage, Usage::default());
    }
    let body = json!({"id": "x", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": null, "reasoning_content": "Thinking hard.", "refusal": "I can't help with that."
    }}]});
    let (out, _) = translate_response(Dialect::OpenAi, Dialect::Anthropic, &body, "m").unwrap();
    assert_eq!(
        out["content"],
        json!([
            {"type": "thinking", "thinking": "Thinking hard.", "signature": ""},
            {"type": "text", "text": "I can't help with that."}
        ])
    );
    assert_eq!(out["stop_reason"], json!("refusal"));

    let bad = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
    ]}}]});
    let error = translate_response(Dialect::OpenAi, Dialect::Anthropic, &bad, "m").unwrap_err();
    assert_eq!(
        error.to_string(),
        "choices[0].message.tool_calls[0].function.arguments: tool arguments must be a JSON object"
    );
}

fn anthropic_message() -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCgIYAhIM"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
            {"type": "text", "text": "I'll check both."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris", "unit": "c"}},
            {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"city": "Oslo"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 472,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "output_tokens": 91,
            "service_tier": "standard"
        }
    })
}

#[test]
fn anthropic_to_openai_response() {
    let (out, usage) = translate_response(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &anthropic_message(),
        "gpt-alias",
    )
    .unwrap();
    assert_eq!(
        usage,
        Usage {
            input: 2572,
            output: 91,
            cached_input: 2000,
            cache_write: 100,
            reasoning: 0
        }
    );
    assert!(out["created"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(
        without_created(out),
        json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "object": "chat.completion",
            "model": "gpt-alias",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "I'll check both.",
                    "reasoning_content": "The user wants weather.",
                    "tool_calls": [
                        {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"c\"}"}},
                        {"id": "toolu_01B", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
                    ]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {
                "prompt_tokens": 2572,
                "completion_tokens": 91,
                "total_tokens": 2663,
                "prompt_tokens_details": {"cached_tokens": 2000},
                "completion_tokens_details": {"reasoning_tokens": 0}
            }
        })
    );
}

#[test]
fn anthropic_stop_reasons_and_json_tool() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ] {
        let body = json!({"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 1}});
        let (out, _) = translate_response(Dialect::Anthropic, Dialect::OpenAi, &body, "m").unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], json!(finish), "{stop}");
    }
    let body = json!({
        "id": "m",
        "content": [{"type": "tool_use", "id": "toolu_x", "name": JSON_TOOL_NAME, "input": {"answer": "4"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5}
    });
    let (out, _) = translate_response(Dialect::Anthropic, Dialect::OpenAi, &body, "m").unwrap();
    assert_eq!(
        out["choices"][0]["message"],
        json!({"role": "assistant", "content": "{\"answer\":\"4\"}"})
    );
    assert_eq!(out["choices"][0]["finish_reason"], json!("stop"));
}

fn gemini_answer() -> Value {
    json!({
        "candidates": [{
            "content": {
                "parts": [
                    {"text": "Considering the cities.", "thought": true},
                    {"text": "Both are "},
                    {"text": "mild."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "CiQB0e2Kb"},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
                ],
                "role": "model"
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": []
        }],
        "usageMetadata": {
            "promptTokenCount": 500,
            "candidatesTokenCount": 40,
            "totalTokenCount": 600,
            "cachedContentTokenCount": 300,
            "thoughtsTokenCount": 60,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 500}]
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mGzYaN2jBbPRz7IP"
    })
}

#[test]
fn gemini_to_openai_response() {
    let (out, usage) =
        translate_response(Dialect::Gemini, Dialect::OpenAi, &gemini_answer(), "flash").unwrap();
    assert_eq!(
        usage,
        Usage {
            input: 500,
            output: 100,
            cached_input: 300,
            cache_write: 0,
            reasoning: 60
        }
    );
    assert_eq!(
        without_created(out),
        json!({
            "id": "chatcmpl-mGzYaN2jBbPRz7IP",
            "object": "chat.completion",
            "model": "flash",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Both are mild.",
                    "reasoning_content": "Considering the cities.",
                    "tool_calls": [
                        {"id": "call_mGzYaN2jBbPRz7IP_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_mGzYaN2jBbPRz7IP_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
                    ]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {
                "prompt_tokens": 500,
                "completion_tokens": 100,
                "total_tokens": 600,
                "prompt_tokens_details": {"cached_tokens": 300},
                "completion_tokens_details": {"reasoning_tokens": 60}
            }
        })
    );
}

#[test]
fn gemini_finish_reasons_and_blocked_prompt() {
    for (reason, finish) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
    ] {
        let body = json!({"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": reason}]});
        let (out, _) = translate_response(Dialect::Gemini, Dialect::OpenAi, &body, "g").unwrap();
        assert_eq!(
            out["choices"][0]["finish_reason"],
            json!(finish),
            "{reason}"
        );
    }
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}});
    let (out, usage) = translate_response(Dialect::Gemini, Dialect::OpenAi, &blocked, "g").unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], json!("content_filter"));
    assert_eq!(out["choices"][0]["message"]["content"], json!(""));
    assert_eq!(usage.input, 9);
}

#[test]
fn gemini_to_anthropic_response_via_the_hub() {
    let (out, usage) = translate_response(
        Dialect::Gemini,
        Dialect::Anthropic,
        &gemini_answer(),
        "claude-ish",
    )
    .unwrap();
    assert_eq!(
        usage,
        Usage {
            input: 500,
            output: 100,
            cached_input: 300,
            cache_write: 0,
            reasoning: 60
        }
    );
    assert_eq!(
        out,
        json!({
            "id": "chatcmpl-mGzYaN2jBbPRz7IP",
            "type": "message",
            "role": "assistant",
            "model": "claude-ish",
            "content": [
                {"type": "thinking", "thinking": "Considering the cities.", "signature": ""},
                {"type": "text", "text": "Both are mild."},
                {"type": "tool_use", "id": "call_mGzYaN2jBbPRz7IP_0", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_mGzYaN2jBbPRz7IP_1", "name": "get_weather", "input": {"city": "Oslo"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 200, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 300, "output_tokens": 100}
        })
    );
}

#[test]
fn same_dialect_responses_keep_everything_but_the_model() {
    let (out, usage) = translate_response(
        Dialect::OpenAi,
        Dialect::OpenAi,
        &openai_completion(),
        "alias",
    )
    .unwrap();
    let mut expected = openai_completion();
    expected["model"] = json!("alias");
    assert_eq!(out, expected);
    assert_eq!(usage.cached_input, 1024);

    let (out, usage) = translate_response(
        Dialect::Anthropic,
        Dialect::Anthropic,
        &anthropic_message(),
        "alias",
    )
    .unwrap();
    let mut expected = anthropic_message();
    expected["model"] = json!("alias");
    assert_eq!(out, expected);
    assert_eq!(
        usage,
        Usage {
            input: 2572,
            output: 91,
            cached_input: 2000,
            cache_write: 100,
            reasoning: 0
        }
    );

    let (out, usage) =
        translate_response(Dialect::Gemini, Dialect::Gemini, &gemini_answer(), "alias").unwrap();
    assert_eq!(out, gemini_answer());
    assert_eq!(usage.reasoning, 60);
}

#[test]
fn malformed_answers_are_errors_not_panics() {
    for body in [
        json!(null),
        json!([]),
        json!({"choices": 3}),
        json!({"choices": [{"message": 1}]}),
    ] {
        assert!(
            translate_response(Dialect::OpenAi, Dialect::Anthropic, &body, "m").is_err(),
            "{body}"
        );
    }
    assert!(
        translate_response(
            Dialect::Anthropic,
            Dialect::OpenAi,
            &json!({"content": [{"type": 1}]}),
            "m"
        )
        .is_err()
    );
    assert!(
        translate_response(
            Dialect::Gemini,
            Dialect::OpenAi,
            &json!({"candidates": [{"content": {"parts": [7]}}]}),
            "m"
        )
        .is_err()
    );
    assert!(translate_response(Dialect::OpenAi, Dialect::Gemini, &json!({}), "m").is_err());
}
