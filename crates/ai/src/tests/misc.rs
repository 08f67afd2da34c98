use serde_json::json;

use crate::{Dialect, is_stream, requested_max_tokens, set_max_tokens, upstream_path, wants_usage};

#[test]
fn paths() {
    assert_eq!(
        upstream_path(Dialect::OpenAi, "gpt-4o", true),
        "/chat/completions"
    );
    assert_eq!(
        upstream_path(Dialect::Anthropic, "claude", false),
        "/v1/messages"
    );
    assert_eq!(
        upstream_path(Dialect::Gemini, "gemini-2.5-flash", false),
        "/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        upstream_path(Dialect::Gemini, "models/gemini-2.5-pro", true),
        "/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        upstream_path(Dialect::Gemini, "a/b?c", false),
        "/models/a%2Fb%3Fc:generateContent"
    );
}

#[test]
fn max_tokens_read_and_written() {
    let both = json!({"max_tokens": 10, "max_completion_tokens": 20});
    assert_eq!(requested_max_tokens(Dialect::OpenAi, &both), Some(20));
    assert_eq!(
        requested_max_tokens(Dialect::OpenAi, &json!({"max_tokens": 10})),
        Some(10)
    );
    assert_eq!(requested_max_tokens(Dialect::OpenAi, &json!({})), None);
    assert_eq!(
        requested_max_tokens(Dialect::Anthropic, &json!({"max_tokens": 7})),
        Some(7)
    );
    assert_eq!(
        requested_max_tokens(
            Dialect::Gemini,
            &json!({"generationConfig": {"maxOutputTokens": 9}})
        ),
        Some(9)
    );

    let mut body = json!({"max_tokens": 10});
    set_max_tokens(Dialect::OpenAi, &mut body, 5);
    assert_eq!(body, json!({"max_tokens": 5}));
    let mut body = json!({});
    set_max_tokens(Dialect::OpenAi, &mut body, 5);
    assert_eq!(body, json!({"max_completion_tokens": 5}));
    let mut body = json!({"max_tokens": 10, "max_completion_tokens": 20});
    set_max_tokens(Dialect::OpenAi, &mut body, 5);
    assert_eq!(body, json!({"max_tokens": 5, "max_completion_tokens": 5}));
    let mut body = json!({"max_tokens": 10});
    set_max_tokens(Dialect::Anthropic, &mut body, 5);
    assert_eq!(body, json!({"max_tokens": 5}));
    let mut body = json!({"generationConfig": {"temperature": 1}});
    set_max_tokens(Dialect::Gemini, &mut body, 5);
    assert_eq!(
        body,
        json!({"generationConfig": {"temperature": 1, "maxOutputTokens": 5}})
    );
    let mut body = json!("not an object");
    set_max_tokens(Dialect::OpenAi, &mut body, 5);
    assert_eq!(body, json!("not an object"));
}

#[test]
fn stream_flags() {
    assert!(is_stream(&json!({"stream": true})));
    assert!(!is_stream(&json!({"stream": "true"})));
    assert!(!is_stream(&json!({})));
    assert!(wants_usage(
        Dialect::OpenAi,
        &json!({"stream_options": {"include_usage": true}})
    ));
    assert!(!wants_usage(Dialect::OpenAi, &json!({"stream": true})));
    assert!(wants_usage(Dialect::Anthropic, &json!({})));
}
