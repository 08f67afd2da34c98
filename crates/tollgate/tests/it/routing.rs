//! Route matching and what is forwarded.

use std::time::Duration;

use crate::*;

#[tokio::test]
async fn matches_params_prefixes_methods_and_hosts() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "weather",
            "/weather",
            json!({"targets": [{"url": upstream.url()}]}),
            &[
                json!({"name": "forecast", "methods": ["GET"], "path": "/forecast/{city}"}),
                json!({"name": "files", "path": "/files/*"}),
                json!({"name": "hosted", "methods": ["GET"], "path": "/hosted", "host": "api.example.com"}),
                json!({"name": "raw", "methods": ["POST"], "path": "/raw", "strip_prefix": false}),
            ],
        )
        .await;
    tollgate
        .wait_for("/weather/forecast/paris", Duration::from_secs(1), |s| {
            s == 200
        })
        .await;

    let echo: serde_json::Value = tollgate
        .get("/weather/forecast/paris?units=c")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/forecast/paris", "base path stripped");
    assert_eq!(echo["query"], "units=c");

    for path in [
        "/weather/files",
        "/weather/files/",
        "/weather/files/a/b.txt",
    ] {
        assert_eq!(tollgate.get(path).await.status(), 200, "{path}");
    }
    let response = tollgate
        .client
        .post(format!("{}/weather/raw", tollgate.gateway_url))
        .body("x")
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        echo["path"], "/weather/raw",
        "strip_prefix: false keeps the base path"
    );

    // Host-bound route: only for that host.
    let hosted = |host: &'static str| {
        tollgate
            .client
            .get(format!("{}/weather/hosted", tollgate.gateway_url))
            .header("host", host)
            .send()
    };
    assert_eq!(hosted("api.example.com").await.unwrap().status(), 200);
    assert_eq!(hosted("API.example.com:8080").await.unwrap().status(), 200);
    // Fully qualified (a trailing dot): the same host.
    assert_eq!(hosted("api.example.com.").await.unwrap().status(), 200);
    problem(
        hosted("other.example.com").await.unwrap(),
        404,
        "route_not_found",
    )
    .await;

    // 405 with Allow.
    let response = tollgate
        .client
        .delete(format!("{}/weather/forecast/paris", tollgate.gateway_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    problem(response, 405, "method_not_allowed").await;
    // A GET route answers HEAD: the upstream's head, no body.
    let response = tollgate
        .client
        .head(format!("{}/weather/forecast/paris", tollgate.gateway_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 0);
    problem(
        tollgate.get("/weather/forecast").await,
        404,
        "route_not_found",
    )
    .await;
    problem(tollgate.get("/nothing/here").await, 404, "route_not_found").await;
    // 1 readiness probe + 1 forecast + 3 files + 1 raw + 3 hosted + 1 HEAD.
    assert_eq!(
        upstream.hits(),
        10,
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn forwards_headers_like_a_proxy() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    let response = tollgate
        .client
        .get(format!("{}/svc/headers", tollgate.gateway_url))
        .header("x-request-id", "client-id-123")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-for", "198.51.100.7")
        .header("proxy-foo", "for the hop")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("te", "trailers")
        .header("x-custom", "kept")
        .header("host", "public.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        "client-id-123",
        "a well-formed client id is kept"
    );
    let echo: serde_json::Value = response.json().await.unwrap();
    let headers = &echo["headers"];
    assert_eq!(headers["x-request-id"], "client-id-123");
    assert_eq!(
        headers["x-forwarded-for"], "203.0.113.9, 198.51.100.7, 127.0.0.1",
        "every line the client sent, in order"
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "public.example.com");
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(
        headers["host"],
        upstream.addr.to_string(),
        "Host is the upstream's"
    );
    for hop in ["x-hop", "te", "proxy-foo"] {
        assert!(
            headers.get(hop).is_none(),
            "{hop} must not be forwarded: {headers}"
        );
    }

    // A malformed id is replaced by a generated one.
    let response = tollgate
        .client
        .get(format!("{}/svc/x", tollgate.gateway_url))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], id.as_str());
}

#[tokio::test]
async fn header_rewrites_per_route() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*", "request_headers": {"set": {"x-tenant": "acme"}, "remove": ["x-drop"]},
                     "response_headers": {"set": {"x-served-by": "tollgate"}},
                     "query": {"set": {"units": "metric"}, "remove": ["api_key"]}})],
        )
        .await;
    tollgate
        .wait_for("/svc/a", Duration::from_secs(1), |s| s == 200)
        .await;
    let response = tollgate
        .client
        .get(format!(
            "{}/svc/a?api_key=secret&city=paris&units=f",
            tollgate.gateway_url
        ))
        .header("x-drop", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-served-by"], "tollgate");
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-tenant"], "acme");
    assert!(echo["headers"].get("x-drop").is_none());
    assert_eq!(echo["query"], "city=paris&units=metric", "query rewritten");
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    for _ in 0..50 {
        let response = tollgate.get("/svc/x").await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    // One connection per gateway worker thread at most (the client side
    // reuses its connection too).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        upstream.connections() <= workers,
        "{} connections for 51 requests",
        upstream.connections()
    );

    // Connections the upstream closes after a response are not reused.
    for round in 0..20 {
        let path = if round % 2 == 0 {
            "/svc/close"
        } else {
            "/svc/x"
        };
        let response = tollgate.get(path).await;
        assert_eq!(response.status(), 200, "{path} in round {round}");
        response.bytes().await.unwrap();
    }
}
