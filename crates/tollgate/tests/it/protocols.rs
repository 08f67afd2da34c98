//! HTTP/2 both ways, TLS to upstreams, and PostgreSQL shared by two nodes.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::*;

#[tokio::test]
async fn http2_to_upstreams_and_from_clients() {
    let upstream = FakeUpstream::start("h2").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}], "protocol": "http2"}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    let echo: serde_json::Value = tollgate.get("/svc/x").await.json().await.unwrap();
    assert_eq!(
        echo["version"], "HTTP/2.0",
        "h2c by prior knowledge to the upstream"
    );

    let h2_client = h2_client();
    let response = h2_client
        .get(format!("{}/svc/y", tollgate.gateway_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));

    // Headers past the gateway's limits get the same 431 problem as over
    // HTTP/1.1 (hyper alone would answer 431 with no body from 16 KiB).
    // Forwarded over HTTP/1.1, whose upstream takes large heads.
    tollgate
        .publish_http_service(
            "plain",
            "/plain",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/plain/x", Duration::from_secs(1), |s| s == 200)
        .await;
    let big = "x".repeat(20 * 1024);
    for (name_count, value) in [(1, big.as_str()), (4, big.as_str()), (200, "v")] {
        let mut request = h2_client.get(format!("{}/plain/z", tollgate.gateway_url));
        for index in 0..name_count {
            request = request.header(format!("x-big-{index}"), value);
        }
        let response = request.send().await.unwrap();
        if name_count == 1 {
            // 20 KiB is within the limit: served.
            assert_eq!(response.status(), 200);
            continue;
        }
        assert!(response.headers().contains_key("x-request-id"));
        problem(response, 431, "headers_too_large").await;
    }
}

/// Trailers (gRPC's status) pass from an HTTP/2 upstream to an HTTP/2
/// client, after the body, and to an HTTP/1.1 client after the last chunk.
#[tokio::test]
async fn trailers_pass_over_http2_both_ways() {
    let upstream = FakeUpstream::start("h2").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "grpc",
            "/grpc",
            json!({"targets": [{"url": upstream.url()}], "protocol": "http2"}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/grpc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    let answer =
        test_support::upstream::h2c_get(&format!("{}/grpc/trailers", tollgate.gateway_url)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"payload");
    let trailers = answer.trailers.expect("trailers after the body");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    // To an HTTP/1.1 client they follow the last chunk.
    let mut stream =
        tokio::net::TcpStream::connect(tollgate.gateway_url.trim_start_matches("http://"))
            .await
            .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /grpc/trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (_, after_last_chunk) = raw
        .rsplit_once("\r\n0\r\n")
        .unwrap_or_else(|| panic!("{raw}"));
    assert!(after_last_chunk.contains("grpc-status: 0\r\n"), "{raw}");
    assert!(after_last_chunk.contains("grpc-message: fine\r\n"), "{raw}");
    assert!(after_last_chunk.ends_with("\r\n\r\n"), "{raw}");
    // The client's `te: trailers` reaches the HTTP/2 upstream (gRPC
    // servers ask for it), though `TE` is otherwise hop-by-hop.
    let echo =
        test_support::upstream::h2c_get(&format!("{}/grpc/echo", tollgate.gateway_url)).await;
    let echo: serde_json::Value = serde_json::from_slice(&echo.body).unwrap();
    assert_eq!(echo["headers"]["te"], "trailers", "{echo}");
}

#[tokio::test]
async fn tls_upstreams_are_verified() {
    let (upstream, ca_pem) = FakeUpstream::start_tls("tls").await;
    let tollgate = Tollgate::start(BIN).await;
    let url = upstream.tls_url();
    tollgate
        .publish_http_service(
            "trusted",
            "/trusted",
            json!({"targets": [{"url": url}], "tls": {"ca_pem": ca_pem}}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .publish_http_service(
            "unchecked",
            "/unchecked",
            json!({"targets": [{"url": url}], "tls": {"verify": false}}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .publish_http_service(
            "untrusted",
            "/untrusted",
            json!({"targets": [{"url": url}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/trusted/x", Duration::from_secs(1), |s| s == 200)
        .await;
    let echo: serde_json::Value = tollgate.get("/trusted/x").await.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/2.0", "ALPN picks h2");
    assert_eq!(tollgate.get("/unchecked/x").await.status(), 200);
    let body = problem(tollgate.get("/untrusted/x").await, 502, "upstream_error").await;
    assert!(body["detail"].as_str().unwrap().contains("untrusted"));
}

#[tokio::test]
async fn nodes_sharing_postgres_see_each_others_changes() {
    let database = test_support::PgDatabase::create();
    let options = test_support::tollgate::Options::on_database(&database.url);
    let first = Tollgate::start_with(BIN, options.clone()).await;
    let second = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("a").await;
    first
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    let started = Instant::now();
    second
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, service) = second
        .admin(reqwest::Method::GET, "/api/v1/services/svc", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(service["lifecycle"], "published");
    // A retirement through the second node reaches the first.
    second
        .create("/api/v1/services/svc/retire", json!({}))
        .await;
    first
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 410)
        .await;
    drop(first);
    drop(second);
}

#[tokio::test]
async fn losing_the_store_keeps_the_last_snapshot_serving() {
    let database = test_support::PgDatabase::create();
    let options = test_support::tollgate::Options::on_database(&database.url);
    let tollgate = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("a").await;
    serve_svc(&tollgate, &upstream).await;
    drop(database);
    // Readiness says so within a few polls; traffic keeps flowing.
    let started = Instant::now();
    loop {
        let ready = tollgate.get("/_tollgate/ready").await;
        if ready.status() == 503 {
            let body: serde_json::Value = ready.json().await.unwrap();
            assert_eq!(body["store_reachable"], false);
            assert_eq!(body["config_loaded"], true);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "readiness never reported the lost store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(
            tollgate.get("/svc/x").await.status(),
            200,
            "the last snapshot still serves"
        );
    }
    let (status, body) = tollgate
        .admin(reqwest::Method::GET, "/api/v1/services", None)
        .await;
    assert!(
        status.is_server_error(),
        "the admin API says the store is gone: {status} {body}"
    );
}

/// A store that stops answering (hung, or cut off, rather than refusing
/// connections) is reported by readiness within seconds, not after the
/// pool's timeout; the last snapshot keeps serving; readiness comes back
/// when the store does.
#[tokio::test]
async fn a_store_that_stops_answering_is_reported_within_seconds() {
    let database = test_support::PgDatabase::create();
    let (proxy, url) = test_support::proxy::FreezableProxy::postgres(&database.url).await;
    let tollgate =
        Tollgate::start_with(BIN, test_support::tollgate::Options::on_database(&url)).await;
    let upstream = FakeUpstream::start("a").await;
    serve_svc(&tollgate, &upstream).await;
    proxy.freeze();
    let frozen = Instant::now();
    let ready_status = || async { tollgate.get("/_tollgate/ready").await.status().as_u16() };
    while ready_status().await != 503 {
        assert!(
            frozen.elapsed() < Duration::from_secs(6),
            "readiness never reported the silent store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tollgate.get("/svc/x").await.status(), 200, "still serving");
    proxy.thaw();
    let thawed = Instant::now();
    while ready_status().await != 200 {
        assert!(
            thawed.elapsed() < Duration::from_secs(10),
            "readiness never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls served while the store is down (refusing connections) reach the
/// call log once it is back, however long it was away: the writer waits
/// for a store that does not answer instead of dropping its batch.
#[tokio::test]
async fn calls_served_during_a_store_outage_are_logged_when_it_returns() {
    let database = test_support::PgDatabase::create();
    let (proxy, url) = test_support::proxy::FreezableProxy::postgres(&database.url).await;
    let tollgate =
        Tollgate::start_with(BIN, test_support::tollgate::Options::on_database(&url)).await;
    let upstream = FakeUpstream::start("a").await;
    serve_svc(&tollgate, &upstream).await;
    let call = |id: &'static str| {
        tollgate
            .client
            .get(format!("{}/svc/x", tollgate.gateway_url))
            .header("x-request-id", id)
            .send()
    };
    assert_eq!(call("outage-before").await.unwrap().status(), 200);
    proxy.cut();
    assert_eq!(
        call("outage-during").await.unwrap().status(),
        200,
        "served from the snapshot"
    );
    // Longer than ten failed writes with their pauses (about 11 s).
    tokio::time::sleep(Duration::from_secs(13)).await;
    proxy.restore();
    let tollgate = &tollgate;
    let logged = |id: &'static str| async move {
        let (status, body) = tollgate
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/logs?request_id={id}"),
                None,
            )
            .await;
        status == 200 && body["data"].as_array().is_some_and(|rows| rows.len() == 1)
    };
    let back = Instant::now();
    while !(logged("outage-during").await && logged("outage-before").await) {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the call served during the outage was never logged\n{}",
            tollgate.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = tollgate
        .client
        .get(format!("{}/metrics", tollgate.admin_url))
        .bearer_auth(test_support::tollgate::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_call_records_dropped_total 0"),
        "nothing dropped: {}",
        metrics
            .lines()
            .filter(|l| l.contains("dropped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// An HTTP/2 client that gives up on its upload (its stream reset) is
/// not the target's failure: a few such clients cannot eject it.
#[tokio::test]
async fn an_http2_upload_the_client_abandons_does_not_blame_the_target() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    serve_svc_ejecting(&tollgate, &upstream).await;
    let h2_client = h2_client();
    for _ in 0..3 {
        // A first chunk, then the body fails: the client resets its stream.
        let parts: Vec<Result<&'static [u8], std::io::Error>> = vec![
            Ok(b"first part of the upload"),
            Err(std::io::Error::other("the source went away")),
        ];
        let body =
            reqwest::Body::wrap_stream(futures_util::stream::iter(parts).then(|part| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                part
            }));
        let sent = h2_client
            .post(format!("{}/svc/upload", tollgate.gateway_url))
            .body(body)
            .send()
            .await;
        assert!(sent.is_err(), "the client itself gave up: {sent:?}");
    }
    for _ in 0..3 {
        assert_eq!(tollgate.get("/svc/after").await.status(), 200);
    }
}
