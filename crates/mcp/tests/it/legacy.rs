//! 2025-06-18 and 2025-11-25: initialize, sessions, tools.

use std::collections::HashSet;
use std::time::Duration;

use mcp::{Limits, ReplyBody};
use serde_json::json;

use crate::*;

#[test]
fn initialize_echoes_a_supported_version_and_opens_a_session() {
    let (server, host) = (server(), Host::default());
    for version in ["2025-06-18", "2025-11-25"] {
        let reply = Req::post(initialize_body(version)).send(&server, &host);
        assert_eq!(reply.status, 200);
        let body = body(&reply);
        assert_eq!(body["id"], 1);
        assert_eq!(body["result"]["protocolVersion"], version);
        assert_eq!(
            body["result"]["capabilities"],
            json!({"tools": {"listChanged": false}})
        );
        assert_eq!(
            body["result"]["serverInfo"],
            json!({"name": "tollgate", "version": "1.2.3"})
        );
        assert_eq!(body["result"]["instructions"], "Call the weather tools.");
        assert!(body["result"].get("resultType").is_none());
        let session = reply.header("Mcp-Session-Id").unwrap();
        assert!(server.session_open(session));
    }
}

#[test]
fn initialize_with_another_version_gets_the_latest_handshake_version() {
    let (server, host) = (server(), Host::default());
    // 2024-11-05 is not supported; 2026-07-28 has no handshake; nonsense is
    // nonsense: each gets the latest version initialize negotiates.
    for version in ["2024-11-05", "2025-03-26", "2026-07-28", "banana"] {
        let reply = Req::post(initialize_body(version)).send(&server, &host);
        assert_eq!(reply.status, 200);
        assert_eq!(body(&reply)["result"]["protocolVersion"], "2025-11-25");
        assert!(reply.header("Mcp-Session-Id").is_some());
    }
}

#[test]
fn initialize_needs_its_parameters() {
    let (server, host) = (server(), Host::default());
    let cases = [
        json!({"jsonrpc": "2.0", "id": 7, "method": "initialize"}),
        request(
            7,
            "initialize",
            json!({"capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}),
        ),
        request(
            7,
            "initialize",
            json!({"protocolVersion": 20250618, "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}),
        ),
        request(
            7,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "clientInfo": {"name": "c", "version": "1"}}),
        ),
        request(
            7,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}}),
        ),
        request(
            7,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c"}}),
        ),
    ];
    for case in cases {
        let reply = Req::post(case.clone()).send(&server, &host);
        let body = assert_error(&reply, 200, -32602);
        assert_eq!(body["id"], 7, "{case}");
        assert!(reply.header("Mcp-Session-Id").is_none());
    }
    assert_eq!(server.session_count(), 0);
}

#[test]
fn session_ids_are_random_visible_ascii() {
    let (server, host) = (server(), Host::default());
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let session = initialize(&server, &host, "2025-06-18");
        assert_eq!(session.len(), 48);
        assert!(session.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert!(seen.insert(session));
    }
}

#[test]
fn notifications_and_responses_are_accepted_with_202() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");
    let messages = [
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}),
        json!({"jsonrpc": "2.0", "id": 9, "result": {}}),
        json!({"jsonrpc": "2.0", "id": "x", "error": {"code": -1, "message": "no"}}),
    ];
    for message in messages {
        let reply = in_session(&session, "2025-06-18", message).send(&server, &host);
        assert_eq!(reply.status, 202);
        assert_eq!(reply.body, ReplyBody::Empty);
    }
    // Without the session they are refused.
    let reply = Req::post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .version("2025-06-18")
        .send(&server, &host);
    assert_error(&reply, 400, -32600);
}

#[test]
fn requests_need_a_known_session_of_the_same_caller() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    let list = request(2, "tools/list", json!({}));

    let reply = Req::post(list.clone())
        .version("2025-11-25")
        .send(&server, &host);
    assert_error(&reply, 400, -32600);
    let reply = Req::post(list.clone()).send(&server, &host);
    assert_error(&reply, 400, -32600);

    let reply = in_session("no-such-session", "2025-11-25", list.clone()).send(&server, &host);
    assert_error(&reply, 404, -32600);

    let reply = in_session(&session, "2025-11-25", list.clone())
        .caller("app-2")
        .send(&server, &host);
    assert_error(&reply, 404, -32600);

    let reply = in_session(&session, "2025-11-25", list.clone()).send(&server, &host);
    assert_eq!(reply.status, 200);
    // Without the version header the session's version applies.
    let reply = Req::post(list).session(&session).send(&server, &host);
    assert_eq!(reply.status, 200);
}

#[test]
fn the_version_header_must_be_the_negotiated_one() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");
    let reply = in_session(&session, "2025-11-25", request(2, "tools/list", json!({})))
        .send(&server, &host);
    let body = assert_error(&reply, 400, -32600);
    assert_eq!(body["id"], 2);
}

#[test]
fn ping_answers_an_empty_result() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");
    let reply = in_session(
        &session,
        "2025-06-18",
        json!({"jsonrpc": "2.0", "id": "p", "method": "ping"}),
    )
    .send(&server, &host);
    assert_eq!(
        body(&reply),
        json!({"jsonrpc": "2.0", "id": "p", "result": {}})
    );
}

#[test]
fn unknown_methods_are_method_not_found_in_band() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    for method in [
        "resources/list",
        "prompts/list",
        "server/discover",
        "logging/setLevel",
    ] {
        let reply =
            in_session(&session, "2025-11-25", request(5, method, json!({}))).send(&server, &host);
        let body = assert_error(&reply, 200, -32601);
        assert_eq!(body["id"], 5);
    }
}

#[test]
fn tools_list_shows_the_tools() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");
    let reply = in_session(&session, "2025-06-18", request(2, "tools/list", json!({})))
        .send(&server, &host);
    let body = body(&reply);
    let tools = body["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 2);
    assert_eq!(
        tools[0],
        json!({
            "name": "get_weather", "title": "Weather", "description": "Forecast for a city",
            "inputSchema": weather_schema(), "outputSchema": {"type": "object"},
            "annotations": {"readOnlyHint": true}
        })
    );
    // An output schema that is not an object schema is left out before
    // 2026-07-28, whose Tool type allows only object output schemas.
    assert_eq!(
        tools[1],
        json!({"name": "paid", "inputSchema": {"type": "object"}})
    );
    assert!(body["result"].get("nextCursor").is_none());
    assert!(body["result"].get("ttlMs").is_none());
}

#[test]
fn tools_list_is_paginated() {
    let server = server_with(Limits {
        page_size: 100,
        ..Limits::default()
    });
    let host = Host {
        extra: 248,
        ..Host::default()
    };
    let session = initialize(&server, &host, "2025-11-25");
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let params = match &cursor {
            Some(cursor) => json!({"cursor": cursor}),
            None => json!({}),
        };
        let reply = in_session(&session, "2025-11-25", request(3, "tools/list", params))
            .send(&server, &host);
        let body = body(&reply);
        pages += 1;
        for tool in body["result"]["tools"].as_array().unwrap() {
            names.push(tool["name"].as_str().unwrap().to_owned());
        }
        match body["result"].get("nextCursor") {
            Some(next) => cursor = Some(next.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 250);
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), 250);

    for bad in [json!("garbage"), json!("tools:9999"), json!(12)] {
        let reply = in_session(
            &session,
            "2025-11-25",
            request(4, "tools/list", json!({"cursor": bad})),
        )
        .send(&server, &host);
        assert_error(&reply, 200, -32602);
    }
}

#[test]
fn tools_call_returns_content_and_structured_content() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");
    let call = request(
        6,
        "tools/call",
        json!({"name": "get_weather", "arguments": {"city": "Paris"}}),
    );
    let reply = in_session(&session, "2025-06-18", call).send(&server, &host);
    assert_eq!(reply.status, 200);
    let result = &body(&reply)["result"];
    assert_eq!(result["isError"], false);
    assert_eq!(
        result["structuredContent"],
        json!({"city": "Paris", "temp_c": 21})
    );
    let text = result["content"][0]["text"].as_str().unwrap();
    assert_eq!(result["content"][0]["type"], "text");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(text).unwrap(),
        result["structuredContent"]
    );
}

#[test]
fn tools_call_protocol_errors() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    let cases = [
        (json!({}), "tools/call needs a string \"name\""),
        (json!({"name": 12}), "tools/call needs a string \"name\""),
        (json!({"name": "nope"}), "Unknown tool: nope"),
        (
            json!({"name": "get_weather", "arguments": [1]}),
            "\"arguments\" must be an object",
        ),
        (
            json!({"name": "get_weather", "arguments": {"city": "x"}, "_meta": 3}),
            "\"_meta\" must be an object",
        ),
    ];
    for (params, message) in cases {
        let reply = in_session(
            &session,
            "2025-11-25",
            request(8, "tools/call", params.clone()),
        )
        .send(&server, &host);
        let body = assert_error(&reply, 200, -32602);
        assert_eq!(body["id"], 8);
        assert!(
            body["error"]["message"].as_str().unwrap().contains(message),
            "{body}"
        );
    }
    let reply = in_session(
        &session,
        "2025-11-25",
        request(8, "tools/call", json!({"name": "broken"})),
    )
    .send(&server, &host);
    assert_error(&reply, 200, -32603);
}

#[test]
fn invalid_arguments_are_a_protocol_error_in_2025_06_18() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");
    let call = request(
        9,
        "tools/call",
        json!({"name": "get_weather", "arguments": {"city": ""}}),
    );
    let reply = in_session(&session, "2025-06-18", call).send(&server, &host);
    let body = assert_error(&reply, 200, -32602);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/city"), "{message}");
}

#[test]
fn invalid_arguments_are_a_tool_error_from_2025_11_25() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    let call = request(
        9,
        "tools/call",
        json!({"name": "get_weather", "arguments": {"town": "Paris"}}),
    );
    let reply = in_session(&session, "2025-11-25", call).send(&server, &host);
    assert_eq!(reply.status, 200);
    let result = &body(&reply)["result"];
    assert_eq!(result["isError"], true);
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("/city: is required"), "{text}");
    assert!(text.contains("/town: is not an allowed property"), "{text}");
}

#[test]
fn missing_arguments_are_an_empty_object() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    let call = request(9, "tools/call", json!({"name": "get_weather"}));
    let reply = in_session(&session, "2025-11-25", call).send(&server, &host);
    let text = body(&reply)["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("/city: is required"), "{text}");
}

#[test]
fn a_refusal_carries_problem_details_and_x402_and_a_paid_retry_is_honoured() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    let reply = in_session(
        &session,
        "2025-11-25",
        request(1, "tools/call", json!({"name": "paid"})),
    )
    .send(&server, &host);
    let result = body(&reply)["result"].clone();
    assert_eq!(result["isError"], true);
    let structured = &result["structuredContent"];
    assert_eq!(structured["status"], 402);
    assert_eq!(structured["code"], "payment_required");
    assert_eq!(structured["x402/error"]["code"], 402);
    assert_eq!(structured["x402/error"]["data"]["x402Version"], 2);
    let text: serde_json::Value =
        serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(&text, structured);

    let payment = json!({"x402Version": 2, "payload": {"signature": "0xabc"}});
    let retry = request(
        2,
        "tools/call",
        json!({"name": "paid", "_meta": {"x402/payment": payment}}),
    );
    let reply = in_session(&session, "2025-11-25", retry).send(&server, &host);
    let result = body(&reply)["result"].clone();
    assert_eq!(result["isError"], false);
    assert_eq!(result["_meta"]["x402/payment-response"]["success"], true);
    assert_eq!(
        host.last_meta.lock().unwrap().clone().unwrap()["x402/payment"],
        payment
    );
}

#[test]
fn non_object_structured_content_stays_text_before_2026() {
    let server = server();
    let host = Host {
        structured: Some(json!([1, 2, 3])),
        ..Host::default()
    };
    let session = initialize(&server, &host, "2025-06-18");
    let call = request(
        1,
        "tools/call",
        json!({"name": "get_weather", "arguments": {"city": "X"}}),
    );
    let result =
        body(&in_session(&session, "2025-06-18", call).send(&server, &host))["result"].clone();
    assert!(result.get("structuredContent").is_none());
    assert_eq!(result["content"][0]["text"], "[1,2,3]");
}

#[test]
fn a_callers_oldest_session_is_evicted_past_its_cap() {
    let server = server_with(Limits {
        max_sessions_per_caller: 2,
        ..Limits::default()
    });
    let host = Host::default();
    let first = initialize(&server, &host, "2025-06-18");
    std::thread::sleep(Duration::from_millis(2));
    let second = initialize(&server, &host, "2025-06-18");
    let other = {
        let reply = Req::post(initialize_body("2025-06-18"))
            .caller("app-2")
            .send(&server, &host);
        reply.header("Mcp-Session-Id").unwrap().to_owned()
    };
    std::thread::sleep(Duration::from_millis(2));
    let third = initialize(&server, &host, "2025-06-18");
    assert!(!server.session_open(&first));
    assert!(server.session_open(&second));
    assert!(server.session_open(&third));
    assert!(server.session_open(&other));
    let reply =
        in_session(&first, "2025-06-18", request(1, "ping", json!({}))).send(&server, &host);
    assert_eq!(reply.status, 404);
}

#[test]
fn the_oldest_session_is_evicted_past_the_global_cap() {
    let server = server_with(Limits {
        max_sessions: 3,
        ..Limits::default()
    });
    let host = Host::default();
    let callers = ["a", "b", "c", "d"];
    let mut sessions = Vec::new();
    for caller in callers {
        let reply = Req::post(initialize_body("2025-06-18"))
            .caller(caller)
            .send(&server, &host);
        sessions.push(reply.header("Mcp-Session-Id").unwrap().to_owned());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(server.session_count(), 3);
    assert!(!server.session_open(&sessions[0]));
    assert!(sessions[1..].iter().all(|s| server.session_open(s)));
}

#[test]
fn idle_sessions_expire() {
    let server = server_with(Limits {
        session_idle: Duration::from_millis(20),
        ..Limits::default()
    });
    let host = Host::default();
    let session = initialize(&server, &host, "2025-06-18");
    assert!(server.session_open(&session));
    std::thread::sleep(Duration::from_millis(40));
    assert!(!server.session_open(&session));
    let reply =
        in_session(&session, "2025-06-18", request(1, "ping", json!({}))).send(&server, &host);
    assert_eq!(reply.status, 404);
}

#[test]
fn using_a_session_keeps_it_alive() {
    let server = server_with(Limits {
        session_idle: Duration::from_millis(150),
        ..Limits::default()
    });
    let host = Host::default();
    let session = initialize(&server, &host, "2025-06-18");
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(60));
        let reply =
            in_session(&session, "2025-06-18", request(1, "ping", json!({}))).send(&server, &host);
        assert_eq!(reply.status, 200);
    }
}
