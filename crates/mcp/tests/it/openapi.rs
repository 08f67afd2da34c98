//! Tools from OpenAPI documents, and the HTTP calls they stand for.

use mcp::openapi::{Location, build_call, operations, sanitize_tool_name};
use mcp::schema::{check_schema, validate};
use serde_json::{Value, json};

fn weather_30() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Weather", "version": "1"},
        "paths": {
            "/forecast/{city}": {
                "parameters": [
                    {"$ref": "#/components/parameters/City"},
                    {"name": "units", "in": "query", "schema": {"type": "string", "enum": ["C", "F"]}}
                ],
                "get": {
                    "operationId": "getForecast",
                    "summary": "Forecast",
                    "description": "The forecast for a city.",
                    "parameters": [
                        {"name": "days", "in": "query", "required": true,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 14, "exclusiveMaximum": true}},
                        {"name": "units", "in": "query", "description": "Unit", "schema": {"type": "string", "nullable": true}},
                        {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                        {"name": "Accept", "in": "header", "schema": {"type": "string"}},
                        {"name": "session", "in": "cookie", "schema": {"type": "string"}}
                    ]
                },
                "put": {
                    "operationId": "getForecast",
                    "requestBody": {"$ref": "#/components/requestBodies/Forecast"}
                }
            },
            "/alerts": {
                "post": {
                    "requestBody": {
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/json": {"schema": {"$ref": "#/components/schemas/Alert"}}
                        }
                    }
                }
            }
        },
        "components": {
            "parameters": {
                "City": {"name": "city", "in": "path", "required": true, "description": "City name", "schema": {"type": "string"}}
            },
            "requestBodies": {
                "Forecast": {"required": true, "description": "A forecast", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Forecast"}}}}
            },
            "schemas": {
                "Forecast": {
                    "type": "object",
                    "required": ["id", "temp"],
                    "properties": {
                        "id": {"type": "string", "readOnly": true},
                        "temp": {"type": "number", "nullable": true},
                        "alert": {"$ref": "#/components/schemas/Alert"}
                    }
                },
                "Alert": {
                    "type": "object",
                    "properties": {
                        "level": {"type": "string", "enum": ["low", "high"], "nullable": true},
                        "next": {"$ref": "#/components/schemas/Alert"}
                    },
                    "xml": {"name": "alert"}
                }
            }
        }
    })
}

#[test]
fn operations_of_an_openapi_30_document() {
    let ops = operations(&weather_30()).unwrap();
    let names: Vec<&str> = ops.iter().map(|op| op.tool_name.as_str()).collect();
    // Sorted paths, methods in a fixed order; the clash gets a suffix.
    assert_eq!(names, ["post_alerts", "getForecast", "getForecast_2"]);

    let get = &ops[1];
    assert_eq!(get.method, "GET");
    assert_eq!(get.path, "/forecast/{city}");
    assert_eq!(get.summary.as_deref(), Some("Forecast"));
    assert_eq!(get.description.as_deref(), Some("The forecast for a city."));
    let params: Vec<(&str, Location, bool)> = get
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.location, p.required))
        .collect();
    assert_eq!(
        params,
        [
            ("city", Location::Path, true),
            ("days", Location::Query, true),
            ("units", Location::Query, false),
            ("X-Trace", Location::Header, false),
        ]
    );
    assert_eq!(
        get.input_schema,
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "integer", "minimum": 1, "exclusiveMaximum": 14},
                "units": {"type": ["string", "null"], "description": "Unit"},
                "X-Trace": {"type": "string"}
            },
            "required": ["city", "days"],
            "additionalProperties": false
        })
    );
    assert!(get.body.is_none());
    assert_eq!(check_schema(&get.input_schema), Ok(()));

    let put = &ops[2];
    let body = put.body.as_ref().unwrap();
    assert!(body.required);
    assert_eq!(body.content_type, "application/json");
    // readOnly `id` is gone, nullable became a type array, the recursive
    // `next` stops at `{}`, `xml` is dropped.
    assert_eq!(body.schema["required"], json!(["temp"]));
    assert!(body.schema["properties"].get("id").is_none());
    assert_eq!(
        body.schema["properties"]["temp"]["type"],
        json!(["number", "null"])
    );
    let alert = &body.schema["properties"]["alert"];
    assert_eq!(
        alert["properties"]["level"]["enum"],
        json!(["low", "high", null])
    );
    assert_eq!(alert["properties"]["next"], json!({}));
    assert!(alert.get("xml").is_none());
    assert_eq!(body.schema["description"], "A forecast");
    assert_eq!(put.input_schema["required"], json!(["city", "body"]));
    assert_eq!(check_schema(&put.input_schema), Ok(()));

    // JSON is preferred over text.
    assert_eq!(
        ops[0].body.as_ref().unwrap().content_type,
        "application/json"
    );
    assert_eq!(ops[0].input_schema["properties"]["body"]["type"], "object");
}

#[test]
fn openapi_31_schemas_are_kept_as_json_schema() {
    let doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/items/{id}": {
                "patch": {
                    "operationId": "update item!",
                    "parameters": [
                        {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                        {"name": "id", "in": "query", "schema": {"type": "string"}},
                        {"name": "body", "in": "header", "schema": {"type": "string"}},
                        {"name": "filter", "in": "query", "content": {"application/json": {"schema": {"type": "object"}}}}
                    ],
                    "requestBody": {"content": {"application/merge-patch+json": {"schema": {
                        "$ref": "#/components/schemas/Item", "description": "Patch"
                    }}}}
                }
            }
        },
        "components": {"schemas": {"Item": {"type": ["object", "null"], "exclusiveMinimum": 3}}}
    });
    let ops = operations(&doc).unwrap();
    assert_eq!(ops.len(), 1);
    let op = &ops[0];
    assert_eq!(op.tool_name, "update_item");
    let args: Vec<&str> = op.params.iter().map(|p| p.arg.as_str()).collect();
    // Clashing names are qualified by location; `body` is the request body.
    assert_eq!(args, ["id", "id_query", "body_header", "filter"]);
    assert!(op.params[3].json_encoded);
    let body = op.body.as_ref().unwrap();
    assert_eq!(body.content_type, "application/merge-patch+json");
    assert_eq!(
        body.schema,
        json!({"description": "Patch", "allOf": [{"type": ["object", "null"], "exclusiveMinimum": 3}]})
    );
}

#[test]
fn undeclared_path_variables_become_required_strings() {
    let doc = json!({"openapi": "3.0.0", "paths": {"/a/{x}/b/{y}": {"delete": {
        "parameters": [{"name": "y", "in": "path", "schema": {"type": "integer"}}]
    }}}});
    let op = &operations(&doc).unwrap()[0];
    assert_eq!(op.tool_name, "delete_a_x_b_y");
    assert_eq!(op.input_schema["required"], json!(["y", "x"]));
    assert_eq!(
        op.input_schema["properties"]["x"],
        json!({"type": "string"})
    );
}

#[test]
fn documents_that_cannot_be_read() {
    let cases = [
        (json!({"swagger": "2.0"}), "Swagger 2.0"),
        (json!({"info": {}}), "not an OpenAPI document"),
        (
            json!({"openapi": "4.0.0"}),
            "OpenAPI 4.0.0 is not supported",
        ),
        (
            json!({"openapi": "3.0.0", "paths": []}),
            "\"paths\" must be an object",
        ),
        (
            json!({"openapi": "3.0.0", "paths": {"/a": {"get": {"parameters": [{"$ref": "other.yaml#/P"}]}}}}),
            "GET /a: $ref other.yaml#/P points outside the document",
        ),
        (
            json!({"openapi": "3.0.0", "paths": {"/a": {"get": {"parameters": [{"$ref": "#/components/parameters/Nope"}]}}}}),
            "GET /a: $ref #/components/parameters/Nope points at nothing",
        ),
        (
            json!({"openapi": "3.0.0", "paths": {"/a": {"get": {"parameters": [{"in": "query"}]}}}}),
            "GET /a: a parameter has no name",
        ),
    ];
    for (doc, message) in cases {
        let error = operations(&doc).unwrap_err();
        assert!(error.contains(message), "{error} should contain {message}");
    }
    assert_eq!(operations(&json!({"openapi": "3.1.0"})).unwrap(), vec![]);
}

#[test]
fn reference_loops_and_blowups_are_bounded() {
    let doc = json!({
        "openapi": "3.0.0",
        "paths": {"/a": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/A"}}}}}}},
        "components": {"schemas": {
            "A": {"$ref": "#/components/schemas/B"},
            "B": {"$ref": "#/components/schemas/A"}
        }}
    });
    let ops = operations(&doc).unwrap();
    assert_eq!(ops[0].body.as_ref().unwrap().schema, json!({}));

    // Each level doubles: 2^30 nodes if expanded naively.
    let mut schemas = serde_json::Map::new();
    for level in 0..30 {
        let next = format!("#/components/schemas/S{}", level + 1);
        schemas.insert(
            format!("S{level}"),
            json!({"properties": {"a": {"$ref": next}, "b": {"$ref": next}}}),
        );
    }
    schemas.insert("S30".into(), json!({"type": "string"}));
    let doc = json!({
        "openapi": "3.1.0",
        "paths": {"/a": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/S0"}}}}}}},
        "components": {"schemas": schemas}
    });
    assert!(operations(&doc).unwrap_err().contains("too large"));
}

#[test]
fn tool_names() {
    assert_eq!(sanitize_tool_name("getUser"), "getUser");
    assert_eq!(sanitize_tool_name("admin.tools.list"), "admin.tools.list");
    assert_eq!(sanitize_tool_name("get /users/{id}"), "get_users_id");
    assert_eq!(sanitize_tool_name("météo du jour"), "m_t_o_du_jour");
    assert_eq!(sanitize_tool_name("///"), "operation");
    assert_eq!(sanitize_tool_name(&"x".repeat(300)).len(), 128);

    let mut paths = serde_json::Map::new();
    for n in 0..3 {
        paths.insert(
            format!("/p{n}"),
            json!({"get": {"operationId": "a".repeat(128)}}),
        );
    }
    let ops = operations(&json!({"openapi": "3.0.0", "paths": paths})).unwrap();
    let names: Vec<&str> = ops.iter().map(|op| op.tool_name.as_str()).collect();
    assert_eq!(names[0], "a".repeat(128));
    assert_eq!(names[1], format!("{}_2", "a".repeat(126)));
    assert_eq!(names[2], format!("{}_3", "a".repeat(126)));
    assert!(names.iter().all(|name| name.len() <= 128));
}

#[test]
fn build_call_fills_path_query_and_headers() {
    let ops = operations(&weather_30()).unwrap();
    let get = &ops[1];
    let arguments = json!({"city": "São Paulo/Centro", "days": 3, "units": "C", "X-Trace": "abc"});
    assert!(validate(&get.input_schema, &arguments).is_empty());
    let call = build_call(get, &arguments).unwrap();
    assert_eq!(call.method, "GET");
    assert_eq!(call.path, "/forecast/S%C3%A3o%20Paulo%2FCentro");
    assert_eq!(
        call.query,
        [
            ("days".to_owned(), "3".to_owned()),
            ("units".to_owned(), "C".to_owned())
        ]
    );
    assert_eq!(call.headers, [("X-Trace".to_owned(), "abc".to_owned())]);
    assert_eq!(call.body, None);
    assert_eq!(
        call.path_and_query(),
        "/forecast/S%C3%A3o%20Paulo%2FCentro?days=3&units=C"
    );
    // Optional arguments may be left out or null.
    let call = build_call(get, &json!({"city": "Oslo", "days": 1, "units": null})).unwrap();
    assert_eq!(call.path_and_query(), "/forecast/Oslo?days=1");
}

#[test]
fn build_call_refuses_with_the_argument_named() {
    let ops = operations(&weather_30()).unwrap();
    let (get, put) = (&ops[1], &ops[2]);
    let cases = [
        (get, json!({"days": 1}), "missing required argument `city`"),
        (
            get,
            json!({"city": "Oslo"}),
            "missing required argument `days`",
        ),
        (
            get,
            json!({"city": "Oslo", "days": 1, "wind": true}),
            "unknown argument `wind`",
        ),
        (
            get,
            json!({"city": "Oslo", "days": 1, "body": {}}),
            "unknown argument `body`",
        ),
        (
            get,
            json!({"city": "..", "days": 1}),
            "argument `city` must not be empty, `.` or `..`",
        ),
        (
            get,
            json!({"city": "", "days": 1}),
            "argument `city` must not be empty",
        ),
        (
            get,
            json!({"city": "x", "days": 1, "X-Trace": "a\r\nInjected: 1"}),
            "argument `X-Trace` cannot be sent as a header",
        ),
        (get, json!([1]), "arguments must be a JSON object"),
        (
            put,
            json!({"city": "Oslo"}),
            "missing required argument `body`",
        ),
    ];
    for (op, arguments, message) in cases {
        let error = build_call(op, &arguments).unwrap_err();
        assert!(error.contains(message), "{error} should contain {message}");
    }
}

#[test]
fn build_call_bodies() {
    let ops = operations(&weather_30()).unwrap();
    let put = &ops[2];
    let call = build_call(put, &json!({"city": "Oslo", "body": {"temp": 3.5}})).unwrap();
    assert_eq!(call.method, "PUT");
    assert_eq!(
        call.body,
        Some(("application/json".to_owned(), b"{\"temp\":3.5}".to_vec()))
    );

    let doc = json!({"openapi": "3.0.0", "paths": {
        "/form": {"post": {"requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}}}},
        "/text": {"post": {"requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}}}}
    }});
    let ops = operations(&doc).unwrap();
    let call = build_call(
        &ops[0],
        &json!({"body": {"n": 1, "name": "a b&c", "skip": null, "tags": ["x", "y"]}}),
    )
    .unwrap();
    assert_eq!(
        call.body,
        Some((
            "application/x-www-form-urlencoded".to_owned(),
            b"n=1&name=a%20b%26c&tags=x&tags=y".to_vec()
        ))
    );
    assert!(
        build_call(&ops[0], &json!({"body": "raw"}))
            .unwrap_err()
            .contains("must be an object")
    );
    let call = build_call(&ops[1], &json!({"body": "hello"})).unwrap();
    assert_eq!(
        call.body,
        Some(("text/plain".to_owned(), b"hello".to_vec()))
    );
    // An optional body may be left out.
    assert_eq!(build_call(&ops[1], &json!({})).unwrap().body, None);
}

#[test]
fn build_call_serialisation_styles() {
    let doc = json!({"openapi": "3.1.0", "paths": {"/s/{ids}/{label}/{matrix}": {"get": {"parameters": [
        {"name": "ids", "in": "path", "required": true, "schema": {"type": "array"}},
        {"name": "label", "in": "path", "required": true, "style": "label", "schema": {"type": "array"}},
        {"name": "matrix", "in": "path", "required": true, "style": "matrix", "explode": true, "schema": {"type": "array"}},
        {"name": "tag", "in": "query", "schema": {"type": "array"}},
        {"name": "csv", "in": "query", "explode": false, "schema": {"type": "array"}},
        {"name": "pipes", "in": "query", "style": "pipeDelimited", "schema": {"type": "array"}},
        {"name": "filter", "in": "query", "style": "deepObject", "schema": {"type": "object"}},
        {"name": "q", "in": "query", "content": {"application/json": {"schema": {"type": "object"}}}},
        {"name": "X-Ids", "in": "header", "schema": {"type": "array"}}
    ]}}}});
    let op = &operations(&doc).unwrap()[0];
    let call = build_call(
        op,
        &json!({
            "ids": [1, 2], "label": ["a", "b"], "matrix": ["x", "y"],
            "tag": ["p", "q"], "csv": ["1", "2"], "pipes": ["a", "b"],
            "filter": {"color": "red"}, "q": {"a": 1}, "X-Ids": [3, 4]
        }),
    )
    .unwrap();
    assert_eq!(call.path, "/s/1,2/.a,b/;matrix=x;matrix=y");
    assert_eq!(
        call.query,
        [
            ("tag", "p"),
            ("tag", "q"),
            ("csv", "1,2"),
            ("pipes", "a|b"),
            ("filter[color]", "red"),
            ("q", "{\"a\":1}")
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(call.headers, [("X-Ids".to_owned(), "3,4".to_owned())]);
    assert_eq!(
        call.path_and_query(),
        "/s/1,2/.a,b/;matrix=x;matrix=y?tag=p&tag=q&csv=1%2C2&pipes=a%7Cb&filter%5Bcolor%5D=red&q=%7B%22a%22%3A1%7D"
    );
}
