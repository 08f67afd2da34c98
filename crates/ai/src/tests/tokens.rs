use serde_json::{Value, json};

use crate::tokens::{
    ESTIMATE_MARGIN_PERCENT, IMAGE_TOKENS, MESSAGE_OVERHEAD_TOKENS, SEGMENT_BYTES,
    TOOLS_OVERHEAD_TOKENS,
};
use crate::{Dialect, count_text_tokens, estimate_input_tokens};

fn bpe(text: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

fn with_margin(tokens: u64) -> u64 {
    tokens + (tokens * ESTIMATE_MARGIN_PERCENT).div_ceil(100)
}

#[test]
fn counts_match_o200k() {
    assert_eq!(count_text_tokens(""), 0);
    assert_eq!(count_text_tokens("hello world"), 2);
    let prose =
        "The quick brown fox jumps over the lazy dog; Ünïcödé, 日本語のテキスト, 12345678. "
            .repeat(60);
    assert!(prose.len() > 4 * SEGMENT_BYTES);
    // Cutting before spaces does not change the count of ordinary text.
    assert_eq!(count_text_tokens(&prose), bpe(&prose));
}

#[test]
fn pathological_text_is_cheap_and_never_panics() {
    // Whitespace runs make the tokenizer's regex backtrack; long runs without
    // a space are cut. Neither panics, and counts stay within a byte each.
    for text in [
        format!("{}x", " ".repeat(40_000)),
        "a".repeat(40_000),
        "\n \n".repeat(10_000),
        "é".repeat(20_000),
        "🦀".repeat(5_000),
    ] {
        let count = count_text_tokens(&text);
        assert!(count > 0 && count <= text.len() as u64, "{count}");
    }
}

fn message(role: &str, content: Value) -> Value {
    json!({"role": role, "content": content})
}

#[test]
fn openai_estimate_counts_text_images_tools_and_overheads() {
    let system = "You are a helpful assistant.";
    let question = "What is the weather in Paris today?";
    let body = json!({
        "model": "gpt-4o",
        "temperature": 0.5,
        "messages": [
            message("system", json!(system)),
            message("user", json!([
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(100_000))}}
            ]))
        ]
    });
    let text = bpe(system) + bpe(question);
    let expected = with_margin(text + IMAGE_TOKENS + 2 * MESSAGE_OVERHEAD_TOKENS + 3);
    assert_eq!(estimate_input_tokens(Dialect::OpenAi, &body), expected);

    let mut with_tools = body.clone();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    with_tools["tools"] = tools.clone();
    assert_eq!(
        estimate_input_tokens(Dialect::OpenAi, &with_tools),
        with_margin(
            text + IMAGE_TOKENS
                + 2 * MESSAGE_OVERHEAD_TOKENS
                + 3
                + TOOLS_OVERHEAD_TOKENS
                + bpe(&tools.to_string())
        )
    );
}

#[test]
fn estimates_agree_across_dialects_and_err_high() {
    let text = "Summarise the following report in three bullet points. ".repeat(40);
    let openai =
        json!({"messages": [message("system", json!("Be brief.")), message("user", json!(text))]});
    let anthropic = json!({"system": "Be brief.", "max_tokens": 100, "messages": [message("user", json!([{"type": "text", "text": text}]))]});
    let gemini = json!({"systemInstruction": {"parts": [{"text": "Be brief."}]}, "contents": [{"role": "user", "parts": [{"text": text}]}]});
    let exact = bpe("Be brief.") + bpe(&text);
    for (dialect, body) in [
        (Dialect::OpenAi, &openai),
        (Dialect::Anthropic, &anthropic),
        (Dialect::Gemini, &gemini),
    ] {
        let estimate = estimate_input_tokens(dialect, body);
        assert!(estimate >= exact, "{dialect:?}: {estimate} < {exact}");
        assert!(
            estimate <= exact * 3 / 2,
            "{dialect:?}: {estimate} is far above {exact}"
        );
    }
}

#[test]
fn anthropic_and_gemini_media_and_tool_blocks() {
    let anthropic = json!({"messages": [
        message("user", json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "A".repeat(50_000)}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "B".repeat(80_000)}}
        ])),
        message("assistant", json!([{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "x"}}])),
        message("user", json!([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "result text"}]))
    ]});
    let estimate = estimate_input_tokens(Dialect::Anthropic, &anthropic);
    // The image at its fixed cost and the PDF at a quarter of its base64 size.
    assert!(estimate >= IMAGE_TOKENS + 20_000, "{estimate}");
    assert!(estimate < 30_000, "{estimate}");

    let gemini = json!({"contents": [{"role": "user", "parts": [
        {"inlineData": {"mimeType": "image/png", "data": "C".repeat(40_000)}},
        {"functionResponse": {"name": "f", "response": {"result": "ok"}}}
    ]}]});
    let estimate = estimate_input_tokens(Dialect::Gemini, &gemini);
    assert!(
        (IMAGE_TOKENS..IMAGE_TOKENS * 2).contains(&estimate),
        "{estimate}"
    );
}

#[test]
fn estimate_never_panics_on_odd_bodies() {
    let mut deep = json!("leaf");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    for body in [
        json!(null),
        json!(42),
        json!("text"),
        json!({"messages": "not an array"}),
        json!({"messages": [1, true, null, {"content": {"nested": [1.5, "x"]}}]}),
        json!({"messages": [{"role": "user", "content": deep}]}),
        json!({"tools": "x", "system": [{"type": "text", "text": 3}]}),
        json!({"contents": [{"parts": [{"inlineData": {"mimeType": "audio/wav", "data": "x"}}]}]}),
    ] {
        for dialect in [Dialect::OpenAi, Dialect::Anthropic, Dialect::Gemini] {
            let _ = estimate_input_tokens(dialect, &body);
        }
    }
    assert_eq!(estimate_input_tokens(Dialect::OpenAi, &json!(null)), 0);
}

#[test]
fn text_beyond_the_bpe_budget_is_extrapolated_high() {
    use crate::tokens::{Counter, MAX_BPE_BYTES};
    // Past the budget at a prose-like rate: at least a token per two bytes.
    let mut counter = Counter {
        tokens: 100,
        bpe_bytes: MAX_BPE_BYTES,
    };
    counter.add_text(&"x".repeat(1_000));
    assert_eq!(counter.tokens, 100 + 500);
    // Past the budget at a dense rate: that rate.
    let mut counter = Counter {
        tokens: MAX_BPE_BYTES as u64,
        bpe_bytes: MAX_BPE_BYTES,
    };
    counter.add_text(&"x".repeat(1_000));
    assert_eq!(counter.tokens, MAX_BPE_BYTES as u64 + 1_000);
    // Within the budget the BPE counts.
    let mut counter = Counter {
        tokens: 0,
        bpe_bytes: MAX_BPE_BYTES - 100,
    };
    counter.add_text("hello world");
    assert_eq!(counter.tokens, 2);
}
