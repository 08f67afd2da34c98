//! Health checks, ejection, retries, timeouts, streaming and body limits.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::*;

/// A URL where nothing listens.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}", test_support::free_port())
}

#[tokio::test]
async fn a_dead_target_is_ejected_and_taken_back() {
    let live = FakeUpstream::start("live").await;
    let dead_port = test_support::free_port();
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": live.url()}, {"url": format!("http://127.0.0.1:{dead_port}")}],
                   "health_check": {"passive": {"max_failures": 2, "ejection_ms": 1500}},
                   "connect_timeout_ms": 500}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    // Every request succeeds (a connect failure is retried on the live target).
    for _ in 0..20 {
        assert_eq!(tollgate.get("/svc/x").await.status(), 200);
    }
    // After two failures the dead target is ejected: requests go straight to
    // the live one. 20 requests with round robin would otherwise try the dead
    // target 10 times.
    let hits = live.hits();
    for _ in 0..10 {
        assert_eq!(tollgate.get("/svc/x").await.status(), 200);
    }
    assert_eq!(live.hits() - hits, 10);

    // Bring the dead target to life on its port; after the ejection it gets
    // traffic again.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", dead_port))
        .await
        .unwrap();
    let revived_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = revived_hits.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = vec![0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = r#"{"server":"revived"}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let started = Instant::now();
    loop {
        assert_eq!(tollgate.get("/svc/x").await.status(), 200);
        if revived_hits.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the revived target never got traffic back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A backend that keeps failing is left alone for a while: once passive
/// health has ejected every target, calls get 503 `circuit_open` with
/// `Retry-After` (when the first target comes back) and never reach it.
#[tokio::test]
async fn a_failing_backend_opens_the_circuit() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}],
                   "health_check": {"passive": {"max_failures": 2, "ejection_ms": 30000}}}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    // One call, tried twice: two failures in a row eject the target.
    assert_eq!(tollgate.get("/svc/status/503").await.status(), 503);
    let hits = upstream.hits();
    let refused = tollgate.get("/svc/x").await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25..=30).contains(&retry_after), "{retry_after}");
    let body = problem(refused, 503, "circuit_open").await;
    assert!(body["detail"].as_str().unwrap().contains("'svc'"), "{body}");
    assert_eq!(upstream.hits(), hits, "not sent to the ejected backend");
}

#[tokio::test]
async fn active_health_checks_mark_targets_down_and_up() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": a.url()}, {"url": b.url()}],
                   "health_check": {"active": {"enabled": true, "path": "/health", "interval_ms": 100,
                                               "timeout_ms": 500, "unhealthy_threshold": 2, "healthy_threshold": 2}}}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    a.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(a.health_probes() >= 2, "probes reach the target");
    let before = a.hits();
    for _ in 0..20 {
        assert_eq!(tollgate.get("/svc/x").await.status(), 200);
    }
    assert_eq!(a.hits(), before, "an unhealthy target gets no traffic");
    a.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..20 {
        tollgate.get("/svc/x").await;
    }
    assert!(
        a.hits() > before,
        "a healthy-again target gets traffic back"
    );
    // The process said so, in JSON lines that name the target's URL.
    let lines = tollgate.json_log_lines();
    for message in ["target unhealthy", "target healthy again"] {
        let line = lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no '{message}' line in {lines:?}"));
        assert_eq!(line["target_url"], a.url(), "{line:?}");
        assert_eq!(line["upstream"], "svc-backend", "{line:?}");
    }

    // Every target down: 503.
    a.set_healthy(false);
    b.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(700)).await;
    problem(tollgate.get("/svc/x").await, 503, "no_healthy_upstream").await;
}

#[tokio::test]
async fn retries_go_to_another_target() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": a.url()}, {"url": b.url()}], "health_check": {"passive": {"enabled": false}}}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/svc/ping", Duration::from_secs(1), |s| s == 200)
        .await;
    // /status/503 fails everywhere: the first try and one retry, then the
    // upstream's own 503 reaches the caller.
    let (a0, b0) = (a.hits(), b.hits());
    let response = tollgate.get("/svc/status/503").await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        (a.hits() - a0) + (b.hits() - b0),
        2,
        "one try and one retry"
    );
    assert_eq!(a.hits() - a0, 1, "the retry goes to the other target");
    // POST is not idempotent: no retry.
    let (a0, b0) = (a.hits(), b.hits());
    let response = tollgate
        .client
        .post(format!("{}/svc/status/503", tollgate.gateway_url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!((a.hits() - a0) + (b.hits() - b0), 1);

    // A retry after a refused connection goes with its own target's Host.
    tollgate
        .publish_http_service(
            "halfdead",
            "/halfdead",
            json!({"targets": [{"url": dead_url()}, {"url": b.url()}], "health_check": {"passive": {"enabled": false}}}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/halfdead/ping", Duration::from_secs(1), |s| s == 200)
        .await;
    // Round robin: one of two requests tries the dead target first.
    let b0 = b.hits();
    for _ in 0..2 {
        let response = tollgate.get("/halfdead/headers").await;
        assert_eq!(response.status(), 200);
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echo["headers"]["host"], b.addr.to_string(), "{echo}");
    }
    assert_eq!(b.hits() - b0, 2);
    // A POST whose connection could not be made reached nothing: it is
    // tried again on the other target, body and all.
    let b0 = b.hits();
    for n in 0..4 {
        let response = tollgate
            .client
            .post(format!("{}/halfdead/echo", tollgate.gateway_url))
            .body(format!("order {n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echo["body"], format!("order {n}"), "{echo}");
    }
    assert_eq!(b.hits() - b0, 4, "each POST reached the upstream once");
}

#[tokio::test]
async fn connect_failures_and_timeouts_have_their_codes() {
    let slow = FakeUpstream::start("slow").await;
    let tollgate = Tollgate::start(BIN).await;
    // Nothing listens: 502 upstream_error.
    tollgate
        .publish_http_service(
            "dead",
            "/dead",
            json!({"targets": [{"url": dead_url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    // Per-try timeout 200 ms, one retry, total budget 2 s.
    tollgate
        .publish_http_service(
            "pertry",
            "/pertry",
            json!({"targets": [{"url": slow.url()}], "read_timeout_ms": 200, "health_check": {"passive": {"enabled": false}}}),
            &[json!({"path": "/*"})],
        )
        .await;
    // Total budget 300 ms across tries with a generous per-try timeout.
    let total = tollgate
        .create("/api/v1/services", json!({"slug": "total", "base_path": "/total", "upstream": "pertry-backend", "timeout_ms": 300, "auth": {"anonymous": true},
                                             "retry": {"retries": 3, "per_try_timeout_ms": 10000}}))
        .await;
    tollgate
        .create("/api/v1/services/total/routes", json!({"path": "/*"}))
        .await;
    tollgate
        .create("/api/v1/services/total/publish", json!({}))
        .await;
    assert_eq!(total["lifecycle"], "draft");
    tollgate
        .wait_for("/total/delay/0", Duration::from_secs(1), |s| s == 200)
        .await;

    problem(tollgate.get("/dead/x").await, 502, "upstream_error").await;

    // A connect that never completes: 504 after the connect timeout, per try.
    let hole = test_support::BlackHole::new();
    tollgate
        .publish_http_service(
            "hole",
            "/hole",
            json!({"targets": [{"url": format!("http://{}", hole.addr)}], "connect_timeout_ms": 200}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/hole/x", Duration::from_secs(2), |s| s != 404)
        .await;
    let started = Instant::now();
    let body = problem(tollgate.get("/hole/x").await, 504, "upstream_timeout").await;
    let elapsed = started.elapsed();
    assert!(
        body["detail"].as_str().unwrap().contains("200 ms"),
        "{body}"
    );
    assert!(
        elapsed >= Duration::from_millis(390) && elapsed < Duration::from_millis(900),
        "two tries of 200 ms: {elapsed:?}"
    );

    let started = Instant::now();
    let before = slow.hits();
    problem(
        tollgate.get("/pertry/delay/1000").await,
        504,
        "upstream_timeout",
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(
        slow.hits() - before,
        2,
        "timed out, retried once, timed out again"
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(900),
        "{elapsed:?}"
    );

    let started = Instant::now();
    problem(
        tollgate.get("/total/delay/5000").await,
        504,
        "upstream_timeout",
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_millis(800),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn streams_reach_the_client_as_they_arrive() {
    let upstream = FakeUpstream::start("sse").await;
    let tollgate = gateway_with(&upstream).await;
    let response = tollgate.get("/svc/sse-gated").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    // The upstream holds the rest of the stream until the gate opens; the
    // first event must arrive before that.
    let first = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("the first event arrives while the upstream is still streaming")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data: {\"n\":0}"));
    upstream.open_gate();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("\"n\":1") && rest.contains("\"n\":2"),
        "{rest}"
    );

    // A timed stream arrives whole and in order.
    let body = tollgate.get("/svc/sse/5/20").await.text().await.unwrap();
    let ids: Vec<&str> = body.lines().filter(|l| l.starts_with("id: ")).collect();
    assert_eq!(ids, vec!["id: 0", "id: 1", "id: 2", "id: 3", "id: 4"]);
}

#[tokio::test]
async fn bodies_stream_up_and_are_limited() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*", "request_body_limit_bytes": 1000})],
        )
        .await;
    tollgate
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    let post = |body: reqwest::Body| {
        tollgate
            .client
            .post(format!("{}/svc/upload", tollgate.gateway_url))
            .body(body)
            .send()
    };

    let echo: serde_json::Value = post(reqwest::Body::from("a".repeat(1000)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["body_len"], 1000);

    let before = upstream.hits();
    problem(
        post(reqwest::Body::from("a".repeat(1001))).await.unwrap(),
        413,
        "body_too_large",
    )
    .await;
    assert_eq!(
        upstream.hits(),
        before,
        "a declared oversize body is refused before forwarding"
    );

    // Chunked (no Content-Length): cut off once it passes the limit.
    let chunks = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 100]))),
    );
    problem(
        post(reqwest::Body::wrap_stream(chunks)).await.unwrap(),
        413,
        "body_too_large",
    )
    .await;
    let chunks = futures_util::stream::iter(
        (0..5).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 100]))),
    );
    let echo: serde_json::Value = post(reqwest::Body::wrap_stream(chunks))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["body_len"], 500);
}

/// A target URL the gateway could not connect to is refused at the API,
/// naming the field; and an object that still cannot be compiled (one
/// stored by an older version, say) is left out of the gateway's
/// configuration alone: everyone else's changes keep arriving.
#[tokio::test]
async fn one_broken_object_does_not_hold_back_the_configuration() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    for (url, hint) in [
        ("http://127.0.0.1:9/a b", "a%20b"),
        ("http://bücher.example", "xn--bcher-kva.example"),
    ] {
        let (status, body) = tollgate
            .admin(
                reqwest::Method::POST,
                "/api/v1/upstreams",
                Some(json!({"slug": "weird", "targets": [{"url": url}]})),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["errors"][0]["field"], "targets[0].url", "{body}");
        assert!(body["detail"].as_str().unwrap().contains(hint), "{body}");
    }

    // An upstream whose stored target became unusable.
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "broken", "targets": [{"url": "http://127.0.0.1:9"}]}),
        )
        .await;
    let database = tollgate.data_dir.join("tollgate.db");
    let script = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
with db:
    db.execute("UPDATE upstreams SET spec = replace(spec, '127.0.0.1:9', '127.0.0.1:9/a b') WHERE slug = 'broken'")
    db.execute("UPDATE config_state SET version = version + 1 WHERE id = 1")
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&database)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    // A change made after it still reaches the gateway.
    tollgate
        .publish_http_service(
            "later",
            "/later",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/later/x", Duration::from_secs(2), |s| s == 200)
        .await;
    assert_eq!(tollgate.get("/svc/x").await.status(), 200);
}
