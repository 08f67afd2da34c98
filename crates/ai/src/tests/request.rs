use serde_json::{Value, json};

use crate::{
    DEFAULT_ANTHROPIC_MAX_TOKENS, Dialect, JSON_TOOL_NAME, TranslateError, translate_request,
};

const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk";

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
                "additionalProperties": false
            },
            "strict": true
        }
    })
}

/// A full OpenAI conversation: system and developer prompts, an image by data
/// URL and by https URL, a parallel tool call, two tool results and a
/// follow-up question.
fn openai_conversation() -> Value {
    json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these pictures, and the weather in Paris and Oslo?"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG_B64}"), "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=large"}}
            ]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "4 degrees"}]},
            {"role": "user", "content": "Thanks. Which is warmer?"}
        ],
        "tools": [weather_tool()],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_completion_tokens": 300,
        "temperature": 0.4,
        "top_p": 0.9,
        "stop": ["END"],
        "user": "user-42",
        "stream": true,
        "stream_options": {"include_usage": true},
        "presence_penalty": 0.5
    })
}

#[test]
fn openai_to_anthropic_full_conversation() {
    let out = translate_request(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &openai_conversation(),
        "claude-sonnet-4-5",
    )
    .unwrap();
    let expected = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Use metric units."}
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these pictures, and the weather in Paris and Oslo?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.webp?size=large"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Oslo"}}
            ]},
            // Both tool results and the next question merge into one user turn, results first.
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "{\"temp\":21}"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "4 degrees"},
                {"type": "text", "text": "Thanks. Which is warmer?"}
            ]}
        ],
        "tools": [{
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
                "additionalProperties": false
            }
        }],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"],
        "temperature": 0.4,
        "top_p": 0.9,
        "stream": true,
        "metadata": {"user_id": "user-42"}
    });
    assert_eq!(out, expected);
}

#[test]
fn openai_to_anthropic_defaults_and_choices() {
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 1.6,
        "max_tokens": 50,
        "tools": [{"type": "function", "function": {"name": "noop"}}],
        "tool_choice": {"type": "function", "function": {"name": "noop"}}
    });
    let out = translate_request(Dialect::OpenAi, Dialect::Anthropic, &body, "claude").unwrap();
    assert_eq!(out["max_tokens"], json!(50));
    assert_eq!(
        out["temperature"],
        json!(1.0),
        "clamped to Anthropic's range"
    );
    assert_eq!(out["tool_choice"], json!({"type": "tool", "name": "noop"}));
    assert_eq!(
        out["tools"][0]["input_schema"],
        json!({"type": "object", "properties": {}})
    );
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
    assert!(out.get("stream").is_none());

    let body = json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "none", "tools": [weather_tool()]});
    let out = translate_request(Dialect::OpenAi, Dialect::Anthropic, &body, "claude").unwrap();
    assert_eq!(out["max_tokens"], json!(DEFAULT_ANTHROPIC_MAX_TOKENS));
    assert_eq!(out["tool_choice"], json!({"type": "none"}));

    let body = json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto", "tools": [weather_tool()]});
    let out = translate_request(Dialect::OpenAi, Dialect::Anthropic, &body, "claude").unwrap();
    assert_eq!(out["tool_choice"], json!({"type": "auto"}));
}

#[test]
fn openai_to_anthropic_response_format() {
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]});
    let body = json!({
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "math", "schema": schema, "strict": true}}
    });
    let out = translate_request(Dialect::OpenAi, Dialect::Anthropic, &body, "claude").unwrap();
    assert_eq!(out["system"], json!("Be brief."));
    assert_eq!(
        out["tools"],
        json!([{"name": JSON_TOOL_NAME, "description": "Respond with the answer (math) as this tool's input.", "input_schema": schema}])
    );
    assert_eq!(
        out["tool_choice"],
        json!({"type": "tool", "name": JSON_TOOL_NAME})
    );

    // With tools of its own, the caller keeps them; the schema goes to the system prompt.
    let mut with_tools = body.clone();
    with_tools["tools"] = json!([weather_tool()]);
    let out =
        translate_request(Dialect::OpenAi, Dialect::Anthropic, &with_tools, "claude").unwrap();
    assert_eq!(out["tools"].as_array().unwrap().len(), 1);
    assert!(out.get("tool_choice").is_none());
    let system = out["system"].as_array().unwrap();
    assert_eq!(system[0], json!({"type": "text", "text": "Be brief."}));
    assert!(system[1]["text"].as_str().unwrap().contains("\"answer\""));

    let body = json!({"messages": [{"role": "user", "content": "list"}], "response_format": {"type": "json_object"}});
    let out = translate_request(Dialect::OpenAi, Dialect::Anthropic, &body, "claude").unwrap();
    assert_eq!(
        out["system"],
        json!("Respond only with a single valid JSON object, with no other text.")
    );
    assert!(out.get("tools").is_none());
}

#[test]
fn openai_to_anthropic_pdf_file() {
    let body = json!({"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
    ]}]});
    let out = translate_request(Dialect::OpenAi, Dialect::Anthropic, &body, "claude").unwrap();
    assert_eq!(
        out["messages"][0]["content"][0],
        json!({"type": "document", "title": "a.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}})
    );
}

fn error_of(caller: Dialect, upstream: Dialect, body: Value) -> String {
    match translate_request(caller, upstream, &body, "m") {
        Ok(out) => panic!("expected an error, got {out}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn untranslatable_requests_name_the_field() {
    let audio = json!({"messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
    ]});
    assert_eq!(
        error_of(Dialect::OpenAi, Dialect::Anthropic, audio.clone()),
        "messages[2].content[1]: unsupported part type 'input_audio'"
    );
    assert_eq!(
        error_of(Dialect::OpenAi, Dialect::Gemini, audio),
        "messages[2].content[1]: unsupported part type 'input_audio'"
    );
    let n = json!({"messages": [{"role": "user", "content": "a"}], "n": 2});
    assert_eq!(
        error_of(Dialect::OpenAi, Dialect::Anthropic, n),
        "n: unsupported value: only one choice (n = 1) can be translated"
    );
    assert_eq!(
        error_of(Dialect::OpenAi, Dialect::Anthropic, json!({"model": "x"})),
        "messages: required"
    );
    assert_eq!(
        error_of(Dialect::OpenAi, Dialect::Anthropic, json!([1])),
        "body: expected an object"
    );
    let bad_args = json!({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    ]}]});
    let message = error_of(Dialect::OpenAi, Dialect::Anthropic, bad_args);
    assert!(
        message.starts_with(
            "messages[0].tool_calls[0].function.arguments: tool arguments are not valid JSON"
        ),
        "{message}"
    );
    let bad_url = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]});
    assert_eq!(
        error_of(Dialect::OpenAi, Dialect::Anthropic, bad_url),
        "messages[0].content[0].image_url.url: expected an http(s) or data: URL"
    );
    let role = json!({"messages": [{"role": "function", "name": "f", "content": "x"}]});
    assert_eq!(
        error_of(Dialect::OpenAi, Dialect::Anthropic, role),
        "messages[0].role: unsupported role 'function'"
    );
    let server_tool = json!({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    assert_eq!(
        error_of(Dialect::Anthropic, Dialect::OpenAi, server_tool),
        "tools[0].type: unsupported tool type 'web_search_20250305'"
    );
    let orphan = json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]});
    assert_eq!(
        error_of(Dialect::OpenAi, Dialect::Gemini, orphan),
        "messages[0].tool_call_id: no earlier assistant tool call has id 'nope'"
    );
    assert!(matches!(
        translate_request(Dialect::Gemini, Dialect::OpenAi, &json!({}), "m"),
        Err(TranslateError::Dialects { .. })
    ));
}

/// The Anthropic request that corresponds to `openai_conversation`.
fn anthropic_conversation() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use metric units."}
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather in Paris and Oslo?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Two cities.", "signature": "EqQBCkgIARABGAIiQL"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "{\"temp\":21}"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "4 degrees"}], "is_error": false},
                {"type": "text", "text": "Thanks. Which is warmer?"}
            ]},
            {"role": "assistant", "content": "It is"}
        ],
        "tools": [{
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"],
        "temperature": 0.4,
        "top_p": 0.9,
        "top_k": 40,
        "stream": true,
        "metadata": {"user_id": "user-42"},
        "thinking": {"type": "enabled", "budget_tokens": 2000}
    })
}

#[test]
fn anthropic_to_openai_full_conversation() {
    let out = translate_request(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &anthropic_conversation(),
        "gpt-4o",
    )
    .unwrap();
    let expected = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse.\n\nUse metric units."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather in Paris and Oslo?"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG_B64}")}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "{\"temp\":21}"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "4 degrees"},
            {"role": "user", "content": "Thanks. Which is warmer?"},
            {"role": "assistant", "content": "It is"}
        ],
        "max_completion_tokens": 1024,
        "stop": ["END"],
        "temperature": 0.4,
        "top_p": 0.9,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-42",
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }}],
        "tool_choice": "required",
        "parallel_tool_calls": false
    });
    assert_eq!(out, expected);
}

#[test]
fn anthropic_to_openai_tool_choice_and_documents() {
    let body = json!({
        "max_tokens": 10,
        "system": "Sys",
        "messages": [{"role": "user", "content": [
            {"type": "document", "title": "r.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}}
        ]}],
        "tools": [{"name": "a", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "a"}
    });
    let out = translate_request(Dialect::Anthropic, Dialect::OpenAi, &body, "gpt").unwrap();
    assert_eq!(
        out["messages"][0],
        json!({"role": "system", "content": "Sys"})
    );
    assert_eq!(
        out["messages"][1]["content"],
        json!([
            {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            {"type": "text", "text": "plain notes"}
        ])
    );
    assert_eq!(
        out["tool_choice"],
        json!({"type": "function", "function": {"name": "a"}})
    );
    assert!(out.get("stream").is_none() && out.get("stream_options").is_none());
}

#[test]
fn openai_to_gemini_full_conversation() {
    let out = translate_request(
        Dialect::OpenAi,
        Dialect::Gemini,
        &openai_conversation(),
        "gemini-2.5-flash",
    )
    .unwrap();
    let expected = json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}, {"text": "Use metric units."}]},
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in these pictures, and the weather in Paris and Oslo?"},
                {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
                {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=large"}}
            ]},
            {"role": "model", "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "skip_thought_signature_validator"},
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "4 degrees"}}},
                {"text": "Thanks. Which is warmer?"}
            ]}
        ],
        "generationConfig": {
            "temperature": 0.4,
            "topP": 0.9,
            "presencePenalty": 0.5,
            "maxOutputTokens": 300,
            "stopSequences": ["END"]
        },
        "tools": [{"functionDeclarations": [{
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "OBJECT",
                "properties": {"city": {"type": "STRING"}, "unit": {"type": "STRING", "enum": ["c", "f"]}},
                "required": ["city"]
            }
        }]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}
    });
    assert_eq!(out, expected);
}

#[test]
fn openai_to_gemini_response_format_and_tool_choice() {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "name": {"type": ["string", "null"], "description": "Who"},
            "when": {"type": "string", "format": "date-time"},
            "where": {"type": "string", "format": "hostname"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1},
            "kind": {"const": "event"},
            "score": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "either": {"oneOf": [{"type": "integer"}, {"type": "string"}]}
        },
        "required": ["name", "missing"],
        "additionalProperties": false,
        "$defs": {"tag": {"type": "string", "maxLength": 20}}
    });
    let body = json!({
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "e", "schema": schema, "strict": true}},
        "tools": [weather_tool(), {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "now"}},
        "top_k": 5,
        "seed": 7
    });
    let out = translate_request(Dialect::OpenAi, Dialect::Gemini, &body, "gemini").unwrap();
    assert_eq!(
        out["generationConfig"],
        json!({
            "topK": 5,
            "seed": 7,
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "OBJECT",
                "properties": {
                    "name": {"type": "STRING", "nullable": true, "description": "Who"},
                    "when": {"type": "STRING", "format": "date-time"},
                    "where": {"type": "STRING"},
                    "tags": {"type": "ARRAY", "items": {"type": "STRING", "maxLength": 20}, "minItems": 1},
                    "kind": {"type": "STRING", "enum": ["event"]},
                    "score": {"type": "NUMBER", "nullable": true},
                    "either": {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]}
                },
                "required": ["name"]
            }
        })
    );
    // A function without parameters declares none (Gemini rejects empty objects).
    assert_eq!(
        out["tools"][0]["functionDeclarations"][1],
        json!({"name": "now"})
    );
    assert_eq!(
        out["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["now"]}})
    );

    let body = json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}});
    let out = translate_request(Dialect::OpenAi, Dialect::Gemini, &body, "gemini").unwrap();
    assert_eq!(
        out["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
}

#[test]
fn recursive_schema_is_cut() {
    let schema = json!({"type": "object", "properties": {"next": {"$ref": "#"}}});
    let converted = crate::gemini::schema_to_gemini(&schema);
    // Deep but finite.
    let text = converted.to_string();
    assert!(text.len() < 10_000, "{text}");
}

#[test]
fn anthropic_to_gemini_via_the_hub() {
    let out = translate_request(
        Dialect::Anthropic,
        Dialect::Gemini,
        &anthropic_conversation(),
        "gemini",
    )
    .unwrap();
    assert_eq!(
        out["systemInstruction"],
        json!({"parts": [{"text": "You are terse.\n\nUse metric units."}]})
    );
    assert_eq!(
        out["contents"],
        json!([
            {"role": "user", "parts": [
                {"text": "What is in this picture, and the weather in Paris and Oslo?"},
                {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}
            ]},
            {"role": "model", "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "skip_thought_signature_validator"},
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "4 degrees"}}},
                {"text": "Thanks. Which is warmer?"}
            ]},
            {"role": "model", "parts": [{"text": "It is"}]}
        ])
    );
    assert_eq!(
        out["generationConfig"],
        json!({"temperature": 0.4, "topP": 0.9, "topK": 40, "maxOutputTokens": 1024, "stopSequences": ["END"]})
    );
    assert_eq!(
        out["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
    assert!(out.get("model").is_none() && out.get("stream").is_none());
}

#[test]
fn same_dialect_passes_through() {
    let body = openai_conversation();
    let out =
        translate_request(Dialect::OpenAi, Dialect::OpenAi, &body, "gpt-4o-2024-08-06").unwrap();
    let mut expected = body.clone();
    expected["model"] = json!("gpt-4o-2024-08-06");
    assert_eq!(out, expected);

    // Streaming without include_usage: the gateway forces it, keeping other options.
    let body = json!({"model": "a", "messages": [], "stream": true, "stream_options": {"include_obfuscation": false}});
    let out = translate_request(Dialect::OpenAi, Dialect::OpenAi, &body, "b").unwrap();
    assert_eq!(
        out["stream_options"],
        json!({"include_obfuscation": false, "include_usage": true})
    );
    let body = json!({"model": "a", "messages": [], "stream": false});
    let out = translate_request(Dialect::OpenAi, Dialect::OpenAi, &body, "b").unwrap();
    assert!(out.get("stream_options").is_none());

    let body = anthropic_conversation();
    let out =
        translate_request(Dialect::Anthropic, Dialect::Anthropic, &body, "claude-opus").unwrap();
    let mut expected = body.clone();
    expected["model"] = json!("claude-opus");
    assert_eq!(out, expected);

    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    assert_eq!(
        translate_request(Dialect::Gemini, Dialect::Gemini, &body, "g").unwrap(),
        body
    );
}

#[test]
fn a_system_prompt_alone_is_refused_for_anthropic() {
    let body = json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."}]});
    let error =
        translate_request(Dialect::OpenAi, Dialect::Anthropic, &body, "claude").unwrap_err();
    assert_eq!(error.field(), "messages");
    // With a user message it goes.
    let body = json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    assert!(translate_request(Dialect::OpenAi, Dialect::Anthropic, &body, "claude").is_ok());
}
