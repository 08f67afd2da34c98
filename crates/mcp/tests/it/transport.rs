//! Streamable HTTP framing common to every version: JSON-RPC shapes, sizes,
//! media types, GET and DELETE.

use mcp::{MAX_MESSAGE_BYTES, ReplyBody};
use serde_json::json;

use crate::*;

#[test]
fn malformed_json_is_a_parse_error_with_id_null() {
    let (server, host) = (server(), Host::default());
    for raw in [
        &b"{"[..],
        b"",
        b"not json",
        b"{\"jsonrpc\": \"2.0\", \"id\": 1,}",
        b"\xff\xfe",
    ] {
        let reply = Req::raw(raw.to_vec()).send(&server, &host);
        let body = assert_error(&reply, 400, -32700);
        assert_eq!(body["id"], serde_json::Value::Null);
        assert!(body.as_object().unwrap().contains_key("id"));
    }
    // 2026-07-28 leaves the unknown id out instead.
    let reply = Req::raw(b"{".to_vec())
        .version("2026-07-28")
        .send(&server, &host);
    let body = assert_error(&reply, 400, -32700);
    assert!(!body.as_object().unwrap().contains_key("id"));
}

#[test]
fn batches_are_refused_as_invalid_requests() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    ]);
    for req in [
        Req::post(batch.clone()),
        in_session(&session, "2025-06-18", batch.clone()),
        Req::post(json!([])),
        Req::post(batch).version("2026-07-28"),
    ] {
        let reply = req.send(&server, &host);
        let body = assert_error(&reply, 400, -32600);
        assert!(body["error"]["message"].as_str().unwrap().contains("batch"));
    }
}

#[test]
fn wrong_shapes_are_invalid_requests() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    let cases = [
        (json!("ping"), None),
        (json!(42), None),
        (json!({"id": 1, "method": "ping"}), Some(json!(1))),
        (
            json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}),
            Some(json!(1)),
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
            Some(json!(1)),
        ),
        (
            json!({"jsonrpc": "2.0", "id": null, "method": "ping"}),
            None,
        ),
        (json!({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}), None),
        (
            json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}),
            None,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": [1]}),
            Some(json!(3)),
        ),
        (
            json!({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": "x"}),
            Some(json!(3)),
        ),
        (json!({"jsonrpc": "2.0", "id": 3}), Some(json!(3))),
        (
            json!({"jsonrpc": "2.0", "id": 3, "result": {}, "error": {}}),
            Some(json!(3)),
        ),
    ];
    for (message, id) in cases {
        let reply = in_session(&session, "2025-11-25", message.clone()).send(&server, &host);
        let body = assert_error(&reply, 400, -32600);
        assert_eq!(
            body["id"],
            id.unwrap_or(serde_json::Value::Null),
            "{message}"
        );
    }
}

#[test]
fn string_ids_are_echoed() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    let reply = in_session(
        &session,
        "2025-11-25",
        json!({"jsonrpc": "2.0", "id": "req-1", "method": "ping"}),
    )
    .send(&server, &host);
    assert_eq!(body(&reply)["id"], "req-1");
}

#[test]
fn oversize_bodies_are_refused_with_413() {
    let (server, host) = (server(), Host::default());
    let mut raw =
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"pad\":\"".to_vec();
    raw.resize(MAX_MESSAGE_BYTES + 1 - 3, b'a');
    raw.extend_from_slice(b"\"}}");
    assert_eq!(raw.len(), MAX_MESSAGE_BYTES + 1);
    let reply = Req::raw(raw).send(&server, &host);
    let body = assert_error(&reply, 413, -32600);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large")
    );
}

#[test]
fn a_body_of_exactly_the_limit_is_read() {
    let (server, host) = (server(), Host::default());
    let mut raw = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},\"clientInfo\":{\"name\":\"c\",\"version\":\"1\"},\"pad\":\"".to_vec();
    raw.resize(MAX_MESSAGE_BYTES - 3, b'a');
    raw.extend_from_slice(b"\"}}");
    let reply = Req::raw(raw).send(&server, &host);
    assert_eq!(reply.status, 200);
}

#[test]
fn unsupported_version_header_is_400_with_the_supported_list() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");
    for req in [
        in_session(&session, "2025-03-26", request(4, "tools/list", json!({}))),
        Req::post(request(4, "tools/list", json!({}))).version("1900-01-01"),
    ] {
        let reply = req.send(&server, &host);
        let body = assert_error(&reply, 400, -32022);
        assert_eq!(body["id"], 4);
        assert_eq!(
            body["error"]["data"]["supported"],
            json!(["2026-07-28", "2025-11-25", "2025-06-18"])
        );
        assert_eq!(body["error"]["data"]["requested"], req.version.unwrap());
    }
}

#[test]
fn media_types_are_checked() {
    let (server, host) = (server(), Host::default());
    let mut req = Req::post(initialize_body("2025-06-18"));
    req.accept = Some("text/html");
    assert_error(&req.send(&server, &host), 406, -32600);
    req.accept = Some("application/json;q=0, text/event-stream");
    assert_error(&req.send(&server, &host), 406, -32600);
    for accept in [
        None,
        Some("*/*"),
        Some("application/*"),
        Some("text/event-stream, application/json"),
    ] {
        req.accept = accept;
        assert_eq!(req.send(&server, &host).status, 200, "{accept:?}");
    }
    req.content_type = Some("text/plain");
    assert_error(&req.send(&server, &host), 415, -32600);
    req.content_type = Some("application/json; charset=utf-8");
    assert_eq!(req.send(&server, &host).status, 200);
    req.content_type = None;
    assert_eq!(req.send(&server, &host).status, 200);
}

#[test]
fn other_http_methods_are_405_with_allow() {
    let (server, host) = (server(), Host::default());
    for method in ["PUT", "PATCH", "OPTIONS", "HEAD"] {
        let reply = Req::method(method).send(&server, &host);
        assert_eq!(reply.status, 405);
        assert_eq!(reply.header("allow"), Some("GET, POST, DELETE"));
    }
}

#[test]
fn get_opens_the_sessions_stream() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    let reply = Req::method("GET")
        .session(&session)
        .version("2025-11-25")
        .send(&server, &host);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some("text/event-stream"));
    assert_eq!(
        reply.body,
        ReplyBody::OpenStream {
            session: session.clone()
        }
    );
    // Without the version header the session's version is assumed.
    let reply = Req::method("GET").session(&session).send(&server, &host);
    assert_eq!(reply.status, 200);
}

#[test]
fn get_refusals() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");

    let reply = Req::method("GET").send(&server, &host);
    assert_error(&reply, 400, -32600);
    let reply = Req::method("GET")
        .version("2025-06-18")
        .send(&server, &host);
    assert_error(&reply, 400, -32600);

    let reply = Req::method("GET").session("nope").send(&server, &host);
    assert_error(&reply, 404, -32600);
    let reply = Req::method("GET")
        .session(&session)
        .caller("app-2")
        .send(&server, &host);
    assert_error(&reply, 404, -32600);

    let mut req = Req::method("GET").session(&session);
    req.accept = Some("application/json");
    assert_error(&req.send(&server, &host), 406, -32600);

    let reply = Req::method("GET")
        .session(&session)
        .version("2025-11-25")
        .send(&server, &host);
    assert_error(&reply, 400, -32600);
    let reply = Req::method("GET")
        .session(&session)
        .version("2024-01-01")
        .send(&server, &host);
    assert_error(&reply, 400, -32022);

    // 2026-07-28 removed the GET stream.
    let reply = Req::method("GET")
        .version("2026-07-28")
        .send(&server, &host);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("Allow"), Some("POST"));
}

#[test]
fn delete_ends_the_session() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-06-18");

    let reply = Req::method("DELETE")
        .session(&session)
        .caller("app-2")
        .send(&server, &host);
    assert_error(&reply, 404, -32600);
    assert!(server.session_open(&session));

    let reply = Req::method("DELETE")
        .session(&session)
        .version("2025-06-18")
        .send(&server, &host);
    assert_eq!(reply.status, 204);
    assert_eq!(reply.body, ReplyBody::Empty);
    assert!(!server.session_open(&session));

    let reply = in_session(&session, "2025-06-18", request(1, "tools/list", json!({})))
        .send(&server, &host);
    assert_error(&reply, 404, -32600);
    let reply = Req::method("GET").session(&session).send(&server, &host);
    assert_eq!(reply.status, 404);
    let reply = Req::method("DELETE").session(&session).send(&server, &host);
    assert_eq!(reply.status, 404);
}

#[test]
fn delete_refusals() {
    let (server, host) = (server(), Host::default());
    let session = initialize(&server, &host, "2025-11-25");
    assert_error(&Req::method("DELETE").send(&server, &host), 400, -32600);
    let reply = Req::method("DELETE")
        .session(&session)
        .version("2026-07-28")
        .send(&server, &host);
    assert_eq!(reply.status, 405);
    let reply = Req::method("DELETE")
        .session(&session)
        .version("2025-06-18")
        .send(&server, &host);
    assert_error(&reply, 400, -32600);
    assert!(server.session_open(&session));
}

#[test]
fn a_request_without_header_or_session_is_400() {
    let (server, host) = (server(), Host::default());
    let reply = Req::post(request(1, "tools/list", json!({}))).send(&server, &host);
    let body = assert_error(&reply, 400, -32600);
    assert_eq!(body["id"], 1);
    // One that carries modern per-request metadata misses its header.
    let modern = request(
        1,
        "tools/list",
        json!({"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        }}),
    );
    let reply = Req::post(modern).send(&server, &host);
    assert_error(&reply, 400, -32020);
}

#[test]
fn handle_is_a_send_future() {
    fn assert_send<T: Send>(_: &T) {}
    let (server, host) = (server(), Host::default());
    let req = Req::post(initialize_body("2025-06-18"));
    let incoming = mcp::Incoming {
        method: req.method,
        accept: req.accept,
        content_type: req.content_type,
        session_id: None,
        protocol_version: None,
        mcp_method: None,
        mcp_name: None,
        body: &req.body,
        caller: req.caller,
    };
    let future = server.handle(&host, incoming);
    assert_send(&future);
    assert_eq!(block_on(future).status, 200);
}
