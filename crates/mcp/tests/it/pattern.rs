//! `pattern` through the validator: ECMA-262 search semantics.

use mcp::schema::{check_schema, validate};
use serde_json::json;

fn matches(pattern: &str, text: &str) -> bool {
    assert_eq!(
        check_schema(&json!({"pattern": pattern})),
        Ok(()),
        "{pattern}"
    );
    validate(&json!({"pattern": pattern}), &json!(text)).is_empty()
}

#[test]
fn literals_and_search() {
    assert!(matches("abc", "xxabcxx"));
    assert!(!matches("abd", "xxabcxx"));
    assert!(matches("", "anything"));
    assert!(matches("^abc$", "abc"));
    assert!(!matches("^abc$", "abcd"));
    assert!(!matches("^abc$", "abc\n"));
    assert!(matches("c$", "abc"));
    assert!(!matches("^b", "abc"));
    assert!(matches("a\\.b", "a.b"));
    assert!(!matches("a\\.b", "axb"));
    assert!(matches("a/b", "a/b"));
}

#[test]
fn classes() {
    assert!(matches("^[a-z]+$", "hello"));
    assert!(!matches("^[a-z]+$", "Hello"));
    assert!(matches("^[^0-9]*$", "abc"));
    assert!(!matches("^[^0-9]*$", "ab1"));
    assert!(matches(
        "^[\\w.-]+@[\\w-]+\\.[a-z]{2,}$",
        "jo.doe@mail-x.com"
    ));
    assert!(!matches("^[\\w.-]+@[\\w-]+\\.[a-z]{2,}$", "jo@mail.c"));
    assert!(matches("^\\d{3}-\\d{4}$", "555-1234"));
    assert!(!matches("^\\d{3}-\\d{4}$", "555-12345"));
    assert!(matches("^\\D+$", "abc"));
    assert!(matches("^\\s*$", " \t\u{a0}"));
    assert!(matches("^\\S+$", "x"));
    assert!(matches("^[-a]+$", "-a-"));
    assert!(matches("^[a-]+$", "-a-"));
    assert!(matches("^[\\d-z]+$", "1-z"));
    assert!(!matches("[]", "a"));
    assert!(matches("^[\\]]$", "]"));
    assert!(matches("^\\W$", "!"));
}

#[test]
fn dot_and_unicode() {
    assert!(matches("^.$", "é"));
    assert!(matches("^.$", "😀"));
    assert!(!matches("^.$", "\n"));
    assert!(matches("^\\u00e9$", "é"));
    assert!(matches("^\\u{1F600}$", "😀"));
    assert!(matches("^\\x41$", "A"));
    assert!(matches("^[à-ü]+$", "éèü"));
}

#[test]
fn groups_alternation_quantifiers() {
    assert!(matches("^(ab)+$", "ababab"));
    assert!(!matches("^(ab)+$", "ababa"));
    assert!(matches("^(?:cat|dog)s?$", "dogs"));
    assert!(!matches("^(?:cat|dog)s?$", "cow"));
    assert!(matches("^(?<year>\\d{4})-\\d{2}$", "2025-06"));
    assert!(matches("^a{2}$", "aa"));
    assert!(!matches("^a{2}$", "aaa"));
    assert!(matches("^a{2,}$", "aaaa"));
    assert!(matches("^a{1,3}b$", "aaab"));
    assert!(!matches("^a{1,3}b$", "aaaab"));
    assert!(matches("^a*?b$", "aab"));
    assert!(matches("^(a|)+$", "aaa"));
    assert!(matches("^(a*)*$", "aaaa"));
    assert!(matches("x{", "x{"));
    assert!(matches("^a|b$", "ab"));
    assert!(matches("\\bword\\b", "a word here"));
    assert!(!matches("\\bword\\b", "swordfish"));
    assert!(matches("\\Bor\\B", "word"));
}

#[test]
fn catastrophic_patterns_run_in_linear_time() {
    // Exponential for a backtracking engine; linear here.
    let text = format!("{}!", "a".repeat(5_000));
    let started = std::time::Instant::now();
    assert!(!matches("^(a+)+$", &text));
    assert!(!matches("^(a|aa)*$", &text));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn unsupported_syntax_is_refused() {
    for pattern in [
        "(a)\\1", "a(?=b)", "a(?!b)", "(?<=a)b", "\\p{L}", "\\k<x>", "a**", "*a", "a{3,2}", "(ab",
        "ab)", "[ab", "\\", "\\q", "a{1001}", "[z-a]",
    ] {
        assert!(
            check_schema(&json!({"pattern": pattern})).is_err(),
            "{pattern} should be refused"
        );
        // validate ignores what it cannot compile.
        assert!(validate(&json!({"pattern": pattern}), &json!("x")).is_empty());
    }
}
