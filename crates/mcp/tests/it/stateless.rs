//! 2026-07-28: stateless requests, mirrored headers, server/discover.

use mcp::ReplyBody;
use serde_json::{Value, json};

use crate::*;

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "c", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// A well-formed 2026-07-28 request: `_meta` in the params, headers set.
fn modern(id: i64, method: &str, mut params: Value) -> Req {
    params["_meta"] = match params.get("_meta") {
        Some(Value::Object(extra)) => {
            let mut merged = meta();
            for (key, value) in extra {
                merged[key] = value.clone();
            }
            merged
        }
        _ => meta(),
    };
    let name = params
        .get("name")
        .or_else(|| params.get("uri"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut req = Req::post(request(id, method, params)).version("2026-07-28");
    req.mcp_method = Some(method.to_owned());
    req.mcp_name = name;
    req
}

fn server_info() -> Value {
    json!({"name": "tollgate", "version": "1.2.3"})
}

#[test]
fn discover_advertises_versions_and_capabilities() {
    let (server, host) = (server(), Host::default());
    let reply = modern(1, "server/discover", json!({})).send(&server, &host);
    assert_eq!(reply.status, 200);
    assert!(reply.header("Mcp-Session-Id").is_none());
    let result = &body(&reply)["result"];
    assert_eq!(result["resultType"], "complete");
    assert_eq!(
        result["supportedVersions"],
        json!(["2026-07-28", "2025-11-25", "2025-06-18"])
    );
    assert_eq!(
        result["capabilities"],
        json!({"tools": {"listChanged": false}})
    );
    assert_eq!(result["instructions"], "Call the weather tools.");
    assert_eq!(result["cacheScope"], "public");
    assert!(result["ttlMs"].as_u64().is_some());
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"],
        server_info()
    );
}

#[test]
fn tools_list_needs_no_session_and_is_cacheable_per_caller() {
    let (server, host) = (server(), Host::default());
    let reply = modern(2, "tools/list", json!({}))
        .session("ignored-legacy-session")
        .send(&server, &host);
    assert_eq!(reply.status, 200);
    assert!(reply.header("Mcp-Session-Id").is_none());
    assert_eq!(server.session_count(), 0);
    let result = &body(&reply)["result"];
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["cacheScope"], "private");
    assert_eq!(result["ttlMs"], 60_000);
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"],
        server_info()
    );
    let tools = result["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 2);
    // Any output schema is allowed from 2026-07-28.
    assert_eq!(tools[1]["outputSchema"], json!({"type": "array"}));
}

#[test]
fn tools_call_results_carry_result_type() {
    let (server, host) = (server(), Host::default());
    let reply = modern(
        3,
        "tools/call",
        json!({"name": "get_weather", "arguments": {"city": "Oslo"}}),
    )
    .send(&server, &host);
    assert_eq!(reply.status, 200);
    let result = &body(&reply)["result"];
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["isError"], false);
    assert_eq!(result["structuredContent"]["city"], "Oslo");
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"],
        server_info()
    );
}

#[test]
fn invalid_arguments_are_a_tool_error() {
    let (server, host) = (server(), Host::default());
    let reply = modern(
        3,
        "tools/call",
        json!({"name": "get_weather", "arguments": {"city": 3}}),
    )
    .send(&server, &host);
    let result = &body(&reply)["result"];
    assert_eq!(result["isError"], true);
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("/city: must be a string")
    );
}

#[test]
fn unknown_tools_are_invalid_params_with_200() {
    let (server, host) = (server(), Host::default());
    let reply = modern(3, "tools/call", json!({"name": "nope"})).send(&server, &host);
    let body = assert_error(&reply, 200, -32602);
    assert_eq!(body["error"]["message"], "Unknown tool: nope");
    assert_eq!(body["id"], 3);
}

#[test]
fn structured_content_may_be_any_json() {
    let server = server();
    let host = Host {
        structured: Some(json!([1, 2])),
        ..Host::default()
    };
    let reply = modern(
        3,
        "tools/call",
        json!({"name": "get_weather", "arguments": {"city": "x"}}),
    )
    .send(&server, &host);
    let result = &body(&reply)["result"];
    assert_eq!(result["structuredContent"], json!([1, 2]));
    assert_eq!(result["content"][0]["text"], "[1,2]");
}

#[test]
fn paid_retry_keeps_both_meta_entries() {
    let (server, host) = (server(), Host::default());
    let reply = modern(
        4,
        "tools/call",
        json!({"name": "paid", "_meta": {"x402/payment": {"x402Version": 2}}}),
    )
    .send(&server, &host);
    let result = &body(&reply)["result"];
    assert_eq!(result["isError"], false);
    assert_eq!(result["_meta"]["x402/payment-response"]["success"], true);
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"],
        server_info()
    );
    let seen = host.last_meta.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x402/payment"], json!({"x402Version": 2}));
}

#[test]
fn unknown_methods_are_404_with_method_not_found() {
    let (server, host) = (server(), Host::default());
    for method in ["ping", "resources/list", "logging/setLevel", "nope"] {
        let reply = modern(5, method, json!({})).send(&server, &host);
        let body = assert_error(&reply, 404, -32601);
        assert_eq!(body["id"], 5);
    }
}

#[test]
fn mcp_method_must_be_present_and_match() {
    let (server, host) = (server(), Host::default());
    let mut req = modern(6, "tools/list", json!({}));
    req.mcp_method = None;
    let body = assert_error(&req.send(&server, &host), 400, -32020);
    assert_eq!(body["id"], 6);
    req.mcp_method = Some("tools/call".into());
    let body = assert_error(&req.send(&server, &host), 400, -32020);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Mcp-Method")
    );
    // Header values are case-sensitive.
    req.mcp_method = Some("Tools/List".into());
    assert_error(&req.send(&server, &host), 400, -32020);
    req.mcp_method = Some("tools/list\r\nX: y".into());
    assert_error(&req.send(&server, &host), 400, -32020);
}

#[test]
fn mcp_name_must_match_the_tool_name() {
    let (server, host) = (server(), Host::default());
    let params = json!({"name": "get_weather", "arguments": {"city": "Rome"}});
    let mut req = modern(7, "tools/call", params);
    req.mcp_name = None;
    assert_error(&req.send(&server, &host), 400, -32020);
    req.mcp_name = Some("paid".into());
    let body = assert_error(&req.send(&server, &host), 400, -32020);
    assert_eq!(
        body["error"]["message"],
        "Header mismatch: Mcp-Name header value 'paid' does not match body value 'get_weather'"
    );
    // The Base64 sentinel form is decoded before comparing.
    req.mcp_name = Some("=?base64?Z2V0X3dlYXRoZXI=?=".into());
    assert_eq!(req.send(&server, &host).status, 200);
    req.mcp_name = Some("=?base64?not base64?=".into());
    assert_error(&req.send(&server, &host), 400, -32020);
}

#[test]
fn non_ascii_tool_names_travel_base64_encoded() {
    let (server, host) = (server(), Host::default());
    let mut req = modern(7, "tools/call", json!({"name": "météo"}));
    // "météo" in UTF-8, Base64.
    req.mcp_name = Some("=?base64?bcOpdMOpbw==?=".into());
    let reply = req.send(&server, &host);
    // The names match; the tool does not exist.
    let body = assert_error(&reply, 200, -32602);
    assert_eq!(body["error"]["message"], "Unknown tool: météo");
}

#[test]
fn request_meta_is_required() {
    let (server, host) = (server(), Host::default());
    let bodies = [
        request(8, "tools/list", json!({})),
        json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
        request(
            8,
            "tools/list",
            json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}),
        ),
        request(
            8,
            "tools/list",
            json!({"_meta": {"io.modelcontextprotocol/clientCapabilities": {}}}),
        ),
    ];
    for body in bodies {
        let mut req = Req::post(body.clone()).version("2026-07-28");
        req.mcp_method = Some("tools/list".into());
        let reply = req.send(&server, &host);
        let error = assert_error(&reply, 400, -32602);
        assert_eq!(error["id"], 8, "{body}");
    }
}

#[test]
fn meta_version_must_match_the_header() {
    let (server, host) = (server(), Host::default());
    let mut req = Req::post(request(
        9,
        "tools/list",
        json!({"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2025-11-25",
            "io.modelcontextprotocol/clientCapabilities": {}
        }}),
    ))
    .version("2026-07-28");
    req.mcp_method = Some("tools/list".into());
    assert_error(&req.send(&server, &host), 400, -32020);
}

#[test]
fn errors_without_a_known_id_leave_it_out() {
    let (server, host) = (server(), Host::default());
    let mut req = Req::post(json!({"jsonrpc": "2.0", "id": null, "method": "tools/list"}))
        .version("2026-07-28");
    req.mcp_method = Some("tools/list".into());
    let body = assert_error(&req.send(&server, &host), 400, -32600);
    assert!(!body.as_object().unwrap().contains_key("id"));
}

#[test]
fn notifications_are_accepted_and_responses_refused() {
    let (server, host) = (server(), Host::default());
    let mut req = Req::post(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}),
    )
    .version("2026-07-28");
    let reply = req.send(&server, &host);
    assert_eq!(reply.status, 202);
    assert_eq!(reply.body, ReplyBody::Empty);
    // When the header is sent it must match.
    req.mcp_method = Some("notifications/other".into());
    assert_error(&req.send(&server, &host), 400, -32020);

    let reply = Req::post(json!({"jsonrpc": "2.0", "id": 1, "result": {}}))
        .version("2026-07-28")
        .send(&server, &host);
    assert_error(&reply, 400, -32600);
}

#[test]
fn subscriptions_listen_acknowledges_and_holds_the_stream() {
    let (server, host) = (server(), Host::default());
    let reply = modern(
        11,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
    )
    .send(&server, &host);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some("text/event-stream"));
    let ReplyBody::Listen { first_event } = &reply.body else {
        panic!("expected a listen stream, got {reply:?}");
    };
    let text = std::str::from_utf8(first_event).unwrap();
    assert!(text.ends_with("\n\n"));
    let data = text
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .unwrap();
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(event["params"]["notifications"], json!({}));
    assert_eq!(
        event["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        11
    );

    let reply = modern(12, "subscriptions/listen", json!({})).send(&server, &host);
    assert_error(&reply, 200, -32602);
}

#[test]
fn initialize_still_selects_the_legacy_handshake() {
    let (server, host) = (server(), Host::default());
    let reply = Req::post(initialize_body("2025-06-18"))
        .version("2026-07-28")
        .send(&server, &host);
    assert_eq!(reply.status, 200);
    assert_eq!(body(&reply)["result"]["protocolVersion"], "2025-06-18");
}
