//! MCP at `/mcp` through the real binary, driven by the official Python
//! SDK (PyPI `mcp`) over each protocol version it speaks: tools from an
//! imported OpenAPI document, a prompt service and an AI service; paid
//! calls charged exactly; a 402 as a tool error with its problem details;
//! tools of services the app is not subscribed to neither listed nor
//! callable.

use reqwest::Method;
use serde_json::Value;
use test_support::providers::{Reply, Usage};

use crate::ai::{ai_world, charges, fakes};
use crate::{BIN, FakeUpstream, Tollgate, json};

fn weather_doc() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Weather", "version": "1"},
        "paths": {"/forecast/{city}": {"get": {
            "operationId": "getForecast",
            "summary": "The forecast for a city",
            "parameters": [
                {"name": "city", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "units", "in": "query", "schema": {"type": "string", "enum": ["metric", "imperial"]}}
            ],
            "responses": {"200": {"description": "ok"}}
        }}}
    })
}

/// An `http` service at `/<slug>` on `upstream`, with the weather document
/// and a plan at `price` per call; acme-bot subscribed when `subscribe`.
async fn http_service(
    tollgate: &Tollgate,
    upstream: &FakeUpstream,
    slug: &str,
    price: &str,
    subscribe: bool,
) {
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": format!("{slug}-backend"), "team": "llmco", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": slug, "team": "llmco", "kind": "http", "base_path": format!("/{slug}"),
                   "upstream": format!("{slug}-backend"), "visibility": "catalog"}),
        )
        .await;
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            &format!("/api/v1/services/{slug}/openapi"),
            Some(weather_doc()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["operations"][0]["tool"], "getForecast");
    tollgate
        .create(
            &format!("/api/v1/services/{slug}/routes"),
            json!({"methods": ["GET"], "path": "/forecast/{city}"}),
        )
        .await;
    tollgate
        .create(
            &format!("/api/v1/services/{slug}/plans"),
            json!({"slug": "paid", "price_per_request": price}),
        )
        .await;
    tollgate
        .create(&format!("/api/v1/services/{slug}/publish"), json!({}))
        .await;
    if subscribe {
        tollgate
            .create(
                "/api/v1/subscriptions",
                json!({"app": "acme-bot", "service": slug, "plan": "paid"}),
            )
            .await;
    }
}

const SCRIPT: &str = r#"
import asyncio, json, sys
import httpx2
import mcp.client.session as session_module
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

url, key = sys.argv[1], sys.argv[2]

async def run(mode, handshake_version=None):
    if handshake_version:
        session_module.LATEST_HANDSHAKE_VERSION = handshake_version
    out = {}
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            r = await client.call_tool("weather.getForecast", {"city": "paris", "units": "metric"})
            out["weather"] = {"error": r.is_error, "structured": r.structured_content}
            r = await client.call_tool("pricey.getForecast", {"city": "paris"})
            out["pricey"] = {"error": r.is_error, "structured": r.structured_content,
                             "text": r.content[0].text if r.content else None}
            r = await client.call_tool("llm.chat", {"model": "oai/gpt-test", "messages": [{"role": "user", "content": "hi"}]})
            out["chat"] = {"error": r.is_error, "text": r.content[0].text if r.content else None}
            try:
                r = await client.call_tool("weather.getForecast", {"units": "kelvin"})
                out["bad_args"] = {"error": r.is_error, "text": r.content[0].text}
            except Exception as error:
                out["bad_args"] = {"error": True, "protocol_error": str(error)}
            try:
                r = await client.call_tool("secret.getForecast", {"city": "paris"})
                out["secret"] = "listed" if not r.is_error else "tool error"
            except Exception as error:
                out["secret"] = "refused: " + type(error).__name__
            try:
                await client.call_tool("nope", {})
                out["unknown"] = "called"
            except Exception as error:
                out["unknown"] = "refused"
    return out

async def main():
    results = {}
    results["2025-06-18"] = await run("legacy", "2025-06-18")
    results["2025-11-25"] = await run("legacy", "2025-11-25")
    results["2026-07-28"] = await run("2026-07-28")
    print(json.dumps(results))

asyncio.run(main())
"#;

#[tokio::test]
async fn the_official_mcp_sdk_lists_and_calls_tools_over_every_version() {
    let (openai, anthropic, gemini) = fakes().await;
    let upstream = FakeUpstream::start("weather").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = ai_world(&tollgate, &openai, &anthropic, &gemini, json!({})).await;
    http_service(&tollgate, &upstream, "weather", "0.01", true).await;
    http_service(&tollgate, &upstream, "pricey", "100", true).await;
    http_service(&tollgate, &upstream, "secret", "0", false).await;
    for _ in 0..3 {
        openai.push(Reply::text("Hello over MCP", Usage::new(10, 4)));
    }
    // Published and subscribed: served within a second.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;

    // No key: 401 pointing at the protected-resource metadata.
    let response = tollgate
        .client
        .post(format!("{}/mcp", tollgate.gateway_url))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let unauthenticated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("resource_metadata=")
            && challenge.contains("/.well-known/oauth-protected-resource"),
        "{challenge}"
    );
    let metadata: Value = tollgate
        .get("/.well-known/oauth-protected-resource")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        metadata["resource"].as_str().unwrap().ends_with("/mcp"),
        "{metadata}"
    );

    let results = crate::python_json(
        "the MCP SDK script",
        SCRIPT,
        vec![format!("{}/mcp", tollgate.gateway_url), world.key.clone()],
    )
    .await;
    for version in ["2025-06-18", "2025-11-25", "2026-07-28"] {
        let out = &results[version];
        assert_eq!(
            out["tools"],
            json!(["llm.chat", "pricey.getForecast", "weather.getForecast"]),
            "{version}: {out}"
        );
        assert_eq!(out["weather"]["error"], false, "{version}: {out}");
        assert_eq!(
            out["weather"]["structured"]["path"], "/forecast/paris",
            "{version}: {out}"
        );
        assert_eq!(
            out["weather"]["structured"]["query"], "units=metric",
            "{version}: {out}"
        );
        assert_eq!(out["pricey"]["error"], true);
        assert_eq!(
            out["pricey"]["structured"]["code"], "insufficient_credit",
            "{version}: {out}"
        );
        assert_eq!(out["pricey"]["structured"]["status"], 402);
        assert_eq!(out["pricey"]["structured"]["required"], "100.00");
        let text: Value = serde_json::from_str(out["pricey"]["text"].as_str().unwrap()).unwrap();
        assert_eq!(text, out["pricey"]["structured"], "the same JSON as text");
        assert_eq!(
            out["chat"],
            json!({"error": false, "text": "Hello over MCP"}),
            "{version}"
        );
        assert_ne!(out["secret"], "listed", "{version}: {out}");
        assert_eq!(out["unknown"], "refused");
        // 2025-06-18: a protocol error (-32602); later: a tool error.
        assert_eq!(out["bad_args"]["error"], true, "{version}: {out}");
        assert_eq!(
            out["bad_args"].get("protocol_error").is_some(),
            version == "2025-06-18",
            "{version}: {out}"
        );
    }
    // Three weather calls at 0.01 and three chats, each charged once; the
    // refused ones not at all.
    let charges = charges(&tollgate, 6).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let charges_now = crate::money::ledger(&tollgate, "acme", "&kind=charge").await;
    assert_eq!(charges_now.len(), 6, "{charges_now:?}");
    let weather = charges.iter().filter(|(_, a)| *a == 10_000_000).count();
    assert_eq!(weather, 3, "{charges:?}");
    // Each chat: 10 input × 1.5 + 4 output × 3 per million.
    let chats = charges.iter().filter(|(_, a)| *a == 27_000).count();
    assert_eq!(chats, 3, "{charges:?}");
    // The refused call never reached the upstream: 3 weather calls did.
    assert_eq!(upstream.hits(), 3);
    // The 401 is logged by its code, like any refusal.
    let (_, logs) = tollgate
        .admin(
            Method::GET,
            &format!("/api/v1/logs?request_id={unauthenticated}"),
            None,
        )
        .await;
    let call = &logs["data"][0];
    assert_eq!(call["status"], 401, "{logs}");
    assert_eq!(call["code"], "missing_credentials", "{call}");
}

/// One JSON-RPC exchange on `/mcp` (the 2025-11-25 session flow).
async fn rpc(
    tollgate: &Tollgate,
    key: &str,
    session: Option<&str>,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = tollgate
        .client
        .post(format!("{}/mcp", tollgate.gateway_url))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_tool_call_pays_with_x402_when_the_wallet_cannot() {
    use base64::Engine;
    let facilitator = test_support::facilitator::FakeFacilitator::start().await;
    let upstream = FakeUpstream::start("quotes").await;
    let options = test_support::tollgate::Options {
        env: vec![("TOLLGATE_X402__FACILITATOR_URL".into(), facilitator.url())],
        ..Default::default()
    };
    let tollgate = Tollgate::start_with(BIN, options).await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme", "name": "acme"}))
        .await;
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "quotes-backend", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "quotes", "kind": "http", "base_path": "/quotes", "upstream": "quotes-backend",
                "visibility": "catalog", "openapi": weather_doc(),
                "x402": {"network": "eip155:84532", "amount": "10000", "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                         "pay_to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "extra": {"name": "USDC", "version": "2"}}}),
        )
        .await;
    tollgate
        .create("/api/v1/services/quotes/routes", json!({"path": "/*"}))
        .await;
    tollgate
        .create(
            "/api/v1/services/quotes/plans",
            json!({"slug": "per-call", "price_per_request": "0.01"}),
        )
        .await;
    tollgate
        .create("/api/v1/services/quotes/publish", json!({}))
        .await;
    let key = crate::app_with_key(&tollgate, "acme", "acme-bot").await;
    crate::subscribe_app(&tollgate, "acme-bot", "quotes", "per-call").await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    // Malformed JSON-RPC: -32700, never a panic.
    let (status, _, body) = rpc(&tollgate, &key, None, json!("not an object")).await;
    assert_eq!(status, 400, "{body}");
    let (status, headers, body) = rpc(
        &tollgate,
        &key,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["protocolVersion"], "2025-11-25");
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let (status, _, _) = rpc(
        &tollgate,
        &key,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);

    // The wallet is empty: the tool error carries x402's PaymentRequired.
    let call = |meta: Option<Value>| {
        let mut params = json!({"name": "quotes.getForecast", "arguments": {"city": "acme"}});
        if let Some(meta) = meta {
            params["_meta"] = meta;
        }
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})
    };
    let (status, _, body) = rpc(&tollgate, &key, Some(&session), call(None)).await;
    assert_eq!(status, 200, "{body}");
    let result = &body["result"];
    assert_eq!(result["isError"], true, "{body}");
    let problem = &result["structuredContent"];
    assert_eq!(problem["code"], "insufficient_credit", "{problem}");
    let required = &problem["x402/error"]["data"];
    assert_eq!(required["x402Version"], 2, "{problem}");
    let hits = upstream.hits();

    // Paid in the retry's _meta: forwarded, settled once, receipt in _meta.
    let paid = test_support::facilitator::payment(
        &required["accepts"][0],
        "0x857b06519E91e3A54538791bDbb0E22373e36b66",
        60,
        |_| {},
    );
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(paid)
            .unwrap(),
    )
    .unwrap();
    let (status, _, body) = rpc(
        &tollgate,
        &key,
        Some(&session),
        call(Some(json!({"x402/payment": payload}))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["result"];
    assert_eq!(result["isError"], false, "{body}");
    assert_eq!(result["structuredContent"]["path"], "/forecast/acme");
    assert_eq!(
        result["_meta"]["x402/payment-response"]["success"], true,
        "{body}"
    );
    assert_eq!(facilitator.settles(), 1);
    assert_eq!(upstream.hits(), hits + 1);

    // DELETE ends the session; it is then unknown.
    let response = tollgate
        .client
        .delete(format!("{}/mcp", tollgate.gateway_url))
        .bearer_auth(&key)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let (status, _, _) = rpc(&tollgate, &key, Some(&session), call(None)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_service_can_switch_mcp_off_or_offer_only_some_tools() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme", "name": "acme"}))
        .await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "llmco", "name": "llmco"}))
        .await;
    let key = crate::app_with_key(&tollgate, "acme", "acme-bot").await;
    let mut doc = weather_doc();
    doc["paths"]["/alerts"] =
        json!({"get": {"operationId": "listAlerts", "responses": {"200": {"description": "ok"}}}});
    for (slug, mcp) in [
        ("open", Value::Null),
        ("closed", json!({"enabled": false})),
        ("some", json!({"tools": ["listAlerts"]})),
    ] {
        tollgate
            .create(
                "/api/v1/upstreams",
                json!({"slug": format!("{slug}-backend"), "targets": [{"url": upstream.url()}]}),
            )
            .await;
        let mut service = json!({"slug": slug, "team": "llmco", "kind": "http", "base_path": format!("/{slug}"),
            "upstream": format!("{slug}-backend"), "visibility": "catalog", "openapi": doc});
        if !mcp.is_null() {
            service["mcp"] = mcp;
        }
        tollgate.create("/api/v1/services", service).await;
        tollgate
            .create(
                &format!("/api/v1/services/{slug}/routes"),
                json!({"path": "/*"}),
            )
            .await;
        tollgate
            .create(
                &format!("/api/v1/services/{slug}/plans"),
                json!({"slug": "free"}),
            )
            .await;
        tollgate
            .create(&format!("/api/v1/services/{slug}/publish"), json!({}))
            .await;
        tollgate
            .create(
                "/api/v1/subscriptions",
                json!({"app": "acme-bot", "service": slug, "plan": "free"}),
            )
            .await;
    }
    // A document that is not OpenAPI is refused with the reason.
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            "/api/v1/services/open/openapi",
            Some(json!({"swagger": "2.0"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "openapi", "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (_, headers, _) = rpc(
        &tollgate,
        &key,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await;
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let (status, _, body) = rpc(
        &tollgate,
        &key,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["open.getForecast", "open.listAlerts", "some.listAlerts"],
        "{body}"
    );
}
