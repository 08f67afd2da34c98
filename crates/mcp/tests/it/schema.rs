//! The JSON Schema validator and `check_schema`.

use mcp::schema::{SchemaError, check_schema, describe, validate};
use serde_json::{Value, json};

/// Validates and compares the errors as `"path: message"` strings.
fn check(schema: Value, value: Value, expected: &[&str]) {
    let errors: Vec<String> = validate(&schema, &value)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect();
    assert_eq!(errors, expected, "schema {schema} value {value}");
}

fn ok(schema: Value, value: Value) {
    check(schema, value, &[]);
}

#[test]
fn types() {
    ok(json!({"type": "string"}), json!("x"));
    check(json!({"type": "string"}), json!(1), &[": must be a string"]);
    check(
        json!({"type": "object"}),
        json!([]),
        &[": must be an object"],
    );
    check(
        json!({"type": "integer"}),
        json!("1"),
        &[": must be an integer"],
    );
    check(json!({"type": "array"}), json!({}), &[": must be an array"]);
    check(json!({"type": "null"}), json!(0), &[": must be null"]);
    check(
        json!({"type": "boolean"}),
        json!("true"),
        &[": must be a boolean"],
    );
    ok(json!({"type": "integer"}), json!(3));
    ok(json!({"type": "integer"}), json!(3.0));
    ok(json!({"type": "integer"}), json!(-9_007_199_254_740_993i64));
    ok(json!({"type": "integer"}), json!(u64::MAX));
    check(
        json!({"type": "integer"}),
        json!(3.5),
        &[": must be an integer"],
    );
    ok(json!({"type": "number"}), json!(3));
    ok(json!({"type": "number"}), json!(3.5));
    ok(json!({"type": ["string", "null"]}), json!(null));
    check(
        json!({"type": ["string", "integer"]}),
        json!(1.5),
        &[": must be of type string or integer"],
    );
    // OpenAPI 3.0 nullable.
    ok(json!({"type": "string", "nullable": true}), json!(null));
    check(
        json!({"type": "string", "nullable": false}),
        json!(null),
        &[": must be a string"],
    );
}

#[test]
fn boolean_schemas() {
    ok(json!(true), json!({"anything": 1}));
    check(json!(false), json!(1), &[": is not allowed"]);
    ok(json!({}), json!([1, "x"]));
}

#[test]
fn objects() {
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 14}
        },
        "required": ["city", "days"],
        "additionalProperties": false
    });
    ok(schema.clone(), json!({"city": "Paris", "days": 3}));
    check(
        schema.clone(),
        json!({"days": 0, "unit": "C"}),
        &[
            "/city: is required",
            "/days: must be >= 1",
            "/unit: is not an allowed property",
        ],
    );
    check(
        json!({"additionalProperties": {"type": "integer"}, "properties": {"a": {}}}),
        json!({"a": "x", "b": 1, "c": "y"}),
        &["/c: must be an integer"],
    );
    check(
        json!({"minProperties": 2, "maxProperties": 2}),
        json!({"a": 1}),
        &[": must have at least 2 properties"],
    );
    check(
        json!({"maxProperties": 1}),
        json!({"a": 1, "b": 2}),
        &[": must have at most 1 properties"],
    );
    check(
        json!({"patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": false}),
        json!({"x-a": "ok", "x-b": 2, "y": 1}),
        &["/x-b: must be a string", "/y: is not an allowed property"],
    );
    check(
        json!({"propertyNames": {"maxLength": 3}}),
        json!({"abcd": 1, "ab": 2}),
        &["/abcd: property name must be at most 3 characters long"],
    );
    check(
        json!({"dependentRequired": {"card": ["cvc"]}}),
        json!({"card": "4242"}),
        &["/cvc: is required when \"card\" is present"],
    );
    check(
        json!({"dependencies": {"b": {"required": ["c"]}, "card": ["cvc"]}}),
        json!({"card": "4242", "b": 1}),
        &[
            "/c: is required",
            "/cvc: is required when \"card\" is present",
        ],
    );
    // Pointer escaping of odd property names.
    check(
        json!({"properties": {"a/b~c": {"type": "string"}}}),
        json!({"a/b~c": 1}),
        &["/a~1b~0c: must be a string"],
    );
}

#[test]
fn strings_count_characters() {
    ok(json!({"minLength": 2, "maxLength": 3}), json!("日本語"));
    check(
        json!({"maxLength": 2}),
        json!("日本語"),
        &[": must be at most 2 characters long"],
    );
    check(
        json!({"minLength": 1}),
        json!(""),
        &[": must be at least 1 character long"],
    );
    ok(json!({"minLength": 1}), json!(5));
    check(
        json!({"pattern": "^[a-z]+$"}),
        json!("abc1"),
        &[": must match the pattern ^[a-z]+$"],
    );
    ok(json!({"pattern": "b"}), json!("abc"));
}

#[test]
fn numbers() {
    check(json!({"minimum": 2}), json!(1.5), &[": must be >= 2"]);
    check(json!({"maximum": 2}), json!(3), &[": must be <= 2"]);
    ok(json!({"minimum": 2, "maximum": 2}), json!(2));
    check(json!({"exclusiveMinimum": 2}), json!(2), &[": must be > 2"]);
    check(json!({"exclusiveMaximum": 2}), json!(2), &[": must be < 2"]);
    ok(json!({"exclusiveMaximum": 2}), json!(1.999));
    // draft-04 booleans.
    check(
        json!({"minimum": 2, "exclusiveMinimum": true}),
        json!(2),
        &[": must be > 2"],
    );
    check(
        json!({"maximum": 2, "exclusiveMaximum": true}),
        json!(2),
        &[": must be < 2"],
    );
    ok(json!({"minimum": 2, "exclusiveMinimum": false}), json!(2));
    check(
        json!({"multipleOf": 3}),
        json!(10),
        &[": must be a multiple of 3"],
    );
    ok(json!({"multipleOf": 3}), json!(-9));
    ok(json!({"multipleOf": 0.01}), json!(19.99));
    check(
        json!({"multipleOf": 0.5}),
        json!(1.25),
        &[": must be a multiple of 0.5"],
    );
    ok(json!({"minimum": 1}), json!("not a number"));
}

#[test]
fn arrays() {
    let schema =
        json!({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2});
    ok(schema.clone(), json!(["a"]));
    check(
        schema.clone(),
        json!([]),
        &[": must have at least 1 item(s)"],
    );
    check(
        schema,
        json!(["a", 2, "c"]),
        &[": must have at most 2 item(s)", "/1: must be a string"],
    );
    check(
        json!({"uniqueItems": true}),
        json!([1, 2, 1.0]),
        &[": must not contain duplicate items"],
    );
    ok(json!({"uniqueItems": true}), json!([{"a": 1}, {"a": 2}]));
    check(
        json!({"prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false}),
        json!(["a", "b", 3]),
        &["/1: must be an integer", "/2: is not allowed"],
    );
    check(
        json!({"items": [{"type": "string"}], "additionalItems": {"type": "integer"}}),
        json!([1, 2, "x"]),
        &["/0: must be a string", "/2: must be an integer"],
    );
    check(
        json!({"contains": {"type": "integer"}, "minContains": 2}),
        json!(["a", 1]),
        &[": must contain at least 2 item(s) matching \"contains\""],
    );
    check(
        json!({"contains": {"type": "integer"}, "maxContains": 1}),
        json!([1, 2]),
        &[": must contain at most 1 item(s) matching \"contains\""],
    );
    check(
        json!({"contains": {"type": "integer"}}),
        json!([]),
        &[": must contain at least 1 item(s) matching \"contains\""],
    );
}

#[test]
fn enum_and_const() {
    check(
        json!({"enum": ["C", "F"]}),
        json!("K"),
        &[": must be one of: \"C\", \"F\""],
    );
    ok(json!({"enum": [1, "x", null]}), json!(1.0));
    ok(json!({"const": {"a": [1, 2]}}), json!({"a": [1.0, 2]}));
    check(json!({"const": "x"}), json!("y"), &[": must be \"x\""]);
}

#[test]
fn composition() {
    let any = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    ok(any.clone(), json!(3));
    check(
        any,
        json!(1.5),
        &[": must match at least one of the anyOf schemas"],
    );
    let one = json!({"oneOf": [{"type": "integer"}, {"minimum": 2}]});
    ok(one.clone(), json!(1));
    ok(one.clone(), json!(2.5));
    check(
        one.clone(),
        json!(3),
        &[": must match exactly one of the oneOf schemas (matched 2)"],
    );
    check(
        one,
        json!(1.5),
        &[": must match exactly one of the oneOf schemas (matched 0)"],
    );
    check(
        json!({"allOf": [{"minimum": 1}, {"maximum": 3}, {"type": "integer"}]}),
        json!(4.5),
        &[": must be <= 3", ": must be an integer"],
    );
    check(
        json!({"not": {"type": "null"}}),
        json!(null),
        &[": must not match the \"not\" schema"],
    );
    let conditional = json!({
        "if": {"properties": {"unit": {"const": "F"}}},
        "then": {"properties": {"temp": {"maximum": 200}}},
        "else": {"properties": {"temp": {"maximum": 100}}}
    });
    ok(conditional.clone(), json!({"unit": "F", "temp": 150}));
    check(
        conditional,
        json!({"unit": "C", "temp": 150}),
        &["/temp: must be <= 100"],
    );
}

#[test]
fn local_references() {
    let schema = json!({
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/address"}, "work": {"$ref": "#/definitions/address"}},
        "$defs": {"address": {"type": "object", "required": ["city"]}},
        "definitions": {"address": {"$ref": "#/$defs/address"}}
    });
    check(
        schema,
        json!({"home": {}, "work": {}}),
        &["/home/city: is required", "/work/city: is required"],
    );
    // A recursive schema: a tree.
    let tree = json!({
        "$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}, "v": {"type": "integer"}}}},
        "$ref": "#/$defs/node"
    });
    check(
        tree,
        json!({"v": 1, "children": [{"v": 2, "children": [{"v": "x"}]}]}),
        &["/children/0/children/0/v: must be an integer"],
    );
    // A reference loop ends instead of recursing forever.
    let looping = json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
    check(looping, json!(1), &[": $ref chain too long"]);
}

#[test]
fn errors_are_bounded() {
    let schema = json!({"type": "array", "items": {"type": "string"}});
    let value = Value::Array((0..500).map(Value::from).collect());
    assert_eq!(validate(&schema, &value).len(), mcp::schema::MAX_ERRORS);
    // Deep values stop at the depth limit.
    let mut deep = json!(1);
    let mut deep_schema = json!({"type": "string"});
    for _ in 0..200 {
        deep = json!([deep]);
        deep_schema = json!({"items": deep_schema});
    }
    let errors = validate(&deep_schema, &deep);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].message, "nested too deeply");
}

#[test]
fn describe_joins_errors() {
    let errors = vec![
        SchemaError {
            path: "/city".into(),
            message: "is required".into(),
        },
        SchemaError {
            path: String::new(),
            message: "must be an object".into(),
        },
    ];
    assert_eq!(describe(&errors), "/city: is required; must be an object");
}

#[test]
fn check_schema_accepts_what_validate_understands() {
    for schema in [
        json!(true),
        json!({}),
        json!({"type": "object", "properties": {"q": {"type": "string", "minLength": 1, "pattern": "^\\w+$", "format": "email", "description": "x"}}, "required": ["q"], "additionalProperties": false}),
        json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": ["string", "null"]}),
        json!({"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}], "additionalItems": false}),
        json!({"$defs": {"a": {"type": "integer"}}, "anyOf": [{"$ref": "#/$defs/a"}, {"type": "string"}]}),
        json!({"if": {"type": "string"}, "then": {"minLength": 1}, "else": false, "x-ui": {"widget": 1}}),
        json!({"minimum": 0, "exclusiveMaximum": 10, "multipleOf": 0.5, "enum": [1, 2], "const": 1, "default": 1}),
        json!({"patternProperties": {"^[a-z]+$": {}}, "propertyNames": {"maxLength": 5}, "dependentRequired": {"a": ["b"]}}),
        json!({"type": "string", "nullable": true, "example": "x"}),
    ] {
        assert_eq!(check_schema(&schema), Ok(()), "{schema}");
    }
}

#[test]
fn check_schema_refuses_what_validate_would_not_enforce() {
    let cases = [
        (json!(1), "schema: a schema must be an object or a boolean"),
        (
            json!({"type": "strng"}),
            "schema /type: unknown type \"strng\"",
        ),
        (
            json!({"type": []}),
            "schema /type: must be a type name or a non-empty array of them",
        ),
        (
            json!({"properties": {"a": {"minLength": -1}}}),
            "schema /properties/a/minLength: must be a non-negative integer",
        ),
        (
            json!({"properties": {"a": {"minLength": 1.5}}}),
            "schema /properties/a/minLength: must be a non-negative integer",
        ),
        (
            json!({"required": "a"}),
            "schema /required: must be an array of strings",
        ),
        (json!({"anyOf": []}), "schema /anyOf: must not be empty"),
        (
            json!({"unevaluatedProperties": false}),
            "schema /unevaluatedProperties: the keyword unevaluatedProperties is not supported",
        ),
        (
            json!({"$ref": "https://example.com/s.json"}),
            "schema /$ref: only references inside the schema (#/…) are supported, not https://example.com/s.json",
        ),
        (
            json!({"$ref": "#/$defs/missing"}),
            "schema /$ref: #/$defs/missing points at nothing",
        ),
        (
            json!({"pattern": "(a)\\1"}),
            "schema /pattern: pattern \"(a)\\\\1\": backreferences are not supported",
        ),
        (
            json!({"pattern": "a(?=b)"}),
            "schema /pattern: pattern \"a(?=b)\": lookaround assertions are not supported",
        ),
        (
            json!({"patternProperties": {"(": {}}}),
            "schema /patternProperties: pattern \"(\": unclosed group",
        ),
        (
            json!({"multipleOf": 0}),
            "schema /multipleOf: must be a number greater than 0",
        ),
        (
            json!({"$schema": "http://example.com/my-dialect"}),
            "schema /$schema: unsupported dialect \"http://example.com/my-dialect\": use JSON Schema 2020-12",
        ),
        (
            json!({"items": {"properties": {"x": 5}}}),
            "schema /items/properties/x: a schema must be an object or a boolean",
        ),
        (json!({"enum": "a"}), "schema /enum: must be an array"),
    ];
    for (schema, message) in cases {
        assert_eq!(check_schema(&schema), Err(message.to_owned()), "{schema}");
    }
}

#[test]
fn check_schema_bounds_size_and_depth() {
    let mut deep = json!({"type": "string"});
    for _ in 0..100 {
        deep = json!({"items": deep});
    }
    assert!(
        check_schema(&deep)
            .unwrap_err()
            .contains("nested deeper than")
    );
    let wide = json!({"enum": (0..20_000).collect::<Vec<_>>()});
    assert!(check_schema(&wide).unwrap_err().contains("larger than"));
}
