//! The gateway's own HTTP/1.1 server and upstream client, byte by byte:
//! pipelining, chunked and `Expect: 100-continue` bodies, HTTP/1.0, HEAD,
//! refused heads, upstream connections closed under the pool, and clients
//! that go away before their answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::*;

async fn connect(tollgate: &Tollgate) -> TcpStream {
    let address = tollgate
        .gateway_url
        .trim_start_matches("http://")
        .to_owned();
    TcpStream::connect(address).await.unwrap()
}

/// Sends `request` on a new connection and reads until the server
/// closes it.
async fn exchange(tollgate: &Tollgate, request: impl AsRef<[u8]>) -> String {
    let mut stream = connect(tollgate).await;
    stream.write_all(request.as_ref()).await.unwrap();
    read_to_close(&mut stream).await
}

/// `GET target` as sent, byte for byte (no client normalises it), on a
/// connection of its own; the raw answer.
async fn get_as_sent(tollgate: &Tollgate, target: &str) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    exchange(tollgate, request).await
}

/// Reads until the server closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all))
        .await
        .expect("the gateway should close the connection")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// Reads until `needle` has arrived (the connection stays open).
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&all).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&all)))
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Publishes `slug` at `/{slug}`, every path proxied to `url`.
async fn publish_at(tollgate: &Tollgate, slug: &str, url: &str) {
    tollgate
        .publish_http_service(
            slug,
            &format!("/{slug}"),
            json!({"targets": [{"url": url}]}),
            &[json!({"path": "/*"})],
        )
        .await;
}

/// The JSON body of the last response in `raw`.
fn last_json(raw: &str) -> serde_json::Value {
    let body = raw.rsplit("\r\n\r\n").next().unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"))
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    let raw = exchange(
        &tollgate,
        b"GET /svc/first HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /svc/second HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /svc/third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{raw}");
    let first = raw.find("/first").unwrap();
    let second = raw.find("/second").unwrap();
    let third = raw.find("/third").unwrap();
    assert!(first < second && second < third, "{raw}");
    assert_eq!(
        raw.matches("connection: close").count(),
        1,
        "only the last closes: {raw}"
    );
    assert!(raw.contains("date: "), "{raw}");
}

#[tokio::test]
async fn chunked_and_expect_continue_bodies_reach_the_upstream() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;

    // Chunked, in pieces with pauses between them.
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(b"POST /svc/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for piece in [
        &b"6\r\nhello \r\n"[..],
        b"6;ext=1\r\nworld!\r\n",
        b"0\r\nx-trailer: 1\r\n\r\n",
    ] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        stream.write_all(piece).await.unwrap();
    }
    let raw = read_to_close(&mut stream).await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    let echo = last_json(&raw);
    assert_eq!(echo["body"], "hello world!");
    assert_eq!(echo["body_len"], 12);

    // Expect: 100-continue: the interim answer comes before the body is sent.
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(b"POST /svc/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_until(&mut stream, "\r\n\r\n").await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"abcde").await.unwrap();
    let raw = read_until(&mut stream, "abcde\"").await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(!raw.contains("connection: close"), "stays open: {raw}");
    // The same connection serves the next request.
    stream
        .write_all(b"GET /svc/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let raw = read_to_close(&mut stream).await;
    assert_eq!(last_json(&raw)["path"], "/after");
    assert!(
        last_json(&raw)["headers"].get("expect").is_none(),
        "Expect is answered by the gateway, not forwarded"
    );
}

#[tokio::test]
async fn http10_and_head_requests() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;

    // HTTP/1.0 without keep-alive: one answer, then the gateway closes.
    let raw = exchange(&tollgate, b"GET /svc/old HTTP/1.0\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("connection: close\r\n"), "{raw}");
    assert_eq!(last_json(&raw)["path"], "/old");

    // HTTP/1.0 with keep-alive: said so, and the connection stays open.
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(b"GET /svc/one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let raw = read_until(&mut stream, "\"/one\"").await;
    assert!(raw.contains("connection: keep-alive\r\n"), "{raw}");
    stream
        .write_all(b"GET /svc/two HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let raw = read_to_close(&mut stream).await;
    assert_eq!(last_json(&raw)["path"], "/two");

    // HEAD: the length of the body that GET would send, and no body.
    let raw = exchange(
        &tollgate,
        b"HEAD /svc/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("content-length: "), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "no body after the head: {raw}");
}

#[tokio::test]
async fn bad_heads_are_refused_and_the_connection_closed() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    let many_fields: String = (0..200).map(|i| format!("x-field-{i}: {i}\r\n")).collect();
    let huge_field = format!("x-huge: {}\r\n", "a".repeat(70 * 1024));
    let cases: Vec<(String, u16, &str)> = vec![
        ("NOT HTTP AT ALL\r\n\r\n".into(), 400, "bad_request"),
        (
            "POST /svc/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        (
            "POST /svc/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(),
            400,
            "bad_request",
        ),
        (
            "POST /svc/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        (
            "GET /svc/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        // HTTP/1.1 without Host (HTTP/1.0 may leave it out).
        (
            "GET /svc/x HTTP/1.1\r\nAccept: */*\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        // Another coding before chunked, or chunked twice: the gateway
        // would pass on bytes under a coding it dropped.
        (
            "POST /svc/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        (
            "POST /svc/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        (format!("GET /svc/x HTTP/1.1\r\nHost: x\r\n{many_fields}\r\n"), 431, "headers_too_large"),
        (format!("GET /svc/x HTTP/1.1\r\nHost: x\r\n{huge_field}\r\n"), 431, "headers_too_large"),
    ];
    let hits_before = upstream.hits();
    for (request, status, code) in cases {
        let mut stream = connect(&tollgate).await;
        // The gateway may answer and close before reading all of a huge head.
        let _ = stream.write_all(request.as_bytes()).await;
        let raw = read_to_close(&mut stream).await;
        assert!(
            raw.starts_with(&format!("HTTP/1.1 {status} ")),
            "{code}: {}",
            &raw[..raw.len().min(200)]
        );
        assert!(
            raw.contains("content-type: application/problem+json\r\n"),
            "{raw}"
        );
        assert!(raw.contains("connection: close\r\n"), "{raw}");
        assert!(raw.contains("x-request-id: "), "{raw}");
        let body = last_json(&raw);
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status);
        assert!(body["detail"].as_str().unwrap().len() > 20, "{body}");
    }
    assert_eq!(
        upstream.hits(),
        hits_before,
        "nothing refused reached the upstream"
    );

    // A refusal that leaves the request body unread says it closes.
    let raw = exchange(
        &tollgate,
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 404 "), "{raw}");
    assert!(raw.contains("connection: close\r\n"), "{raw}");
    // The gateway still serves.
    assert_eq!(tollgate.get("/svc/ok").await.status(), 200);
}

/// An upstream that answers one request per connection, keep-alive in
/// name, then closes the connection (at once, or after `linger`).
async fn closing_upstream(linger: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut byte).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&byte[..n]),
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                    .await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn upstream_connections_closed_in_the_pool_are_replaced() {
    for linger in [Duration::from_millis(50), Duration::ZERO] {
        let (url, connections) = closing_upstream(linger).await;
        let tollgate = Tollgate::start(BIN).await;
        publish_at(&tollgate, "svc", &url).await;
        tollgate
            .wait_for("/svc/ping", Duration::from_secs(1), |s| s == 200)
            .await;
        for round in 0..20 {
            if round % 2 == 0 {
                // Long enough for the close to arrive while pooled.
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            let response = tollgate.get("/svc/x").await;
            assert_eq!(response.status(), 200, "round {round}, linger {linger:?}");
            assert_eq!(response.text().await.unwrap(), "ok");
        }
        assert!(connections.load(Ordering::SeqCst) >= 20);
    }
}

/// A client that closes its connection while its request waits for the
/// upstream (with or without a body), or while a streamed answer waits
/// for its next part, ends the upstream call at once (as nginx does, and
/// not at the next write), and the call is logged: 499 when no answer
/// had begun, the answer's status and `completed: false` when it had.
#[tokio::test]
async fn a_client_that_goes_away_ends_its_upstream_call() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    let requests: [&[u8]; 2] = [
        b"GET /svc/hold HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /svc/hold HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for (index, request) in requests.into_iter().enumerate() {
        let hits = upstream.hits();
        let mut stream = connect(&tollgate).await;
        stream.write_all(request).await.unwrap();
        eventually("the upstream has the request", || upstream.hits() > hits).await;
        drop(stream);
        eventually("the upstream call is ended", || {
            upstream.abandoned() == index + 1
        })
        .await;
    }

    // Mid-stream: the first event arrives, the client goes.
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(b"GET /svc/sse-gated HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut stream, "\"n\":0").await;
    let streamed_id = head
        .lines()
        .find_map(|line| line.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no request id: {head}"))
        .to_owned();
    drop(stream);
    eventually("the upstream stream is ended", || upstream.abandoned() == 3).await;

    // A client that stays is still answered, on a connection that waited.
    let hits = upstream.hits();
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(b"GET /svc/hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("the upstream has the request", || upstream.hits() > hits).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    upstream.open_gate();
    let raw = read_until(&mut stream, "\"path\":\"/hold\"").await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert_eq!(upstream.abandoned(), 3);

    let admin = test_support::tollgate::ADMIN_TOKEN;
    let gone = logged(&tollgate, admin, "status=499", 2).await;
    let mut methods: Vec<&str> = gone.iter().map(|e| e["method"].as_str().unwrap()).collect();
    methods.sort_unstable();
    assert_eq!(methods, ["GET", "POST"], "{gone:?}");
    for entry in &gone {
        assert_eq!(entry["path"], "/svc/hold", "{entry}");
        assert_eq!(entry["service"], "svc", "{entry}");
        assert_eq!(entry["completed"], false, "{entry}");
        assert_eq!(entry["code"], serde_json::Value::Null, "{entry}");
        assert_eq!(entry["upstream_target"], upstream.url(), "{entry}");
    }
    let cut = &logged(&tollgate, admin, &format!("request_id={streamed_id}"), 1).await[0];
    assert_eq!(cut["path"], "/svc/sse-gated", "{cut}");
    assert_eq!(cut["status"], 200, "{cut}");
    assert_eq!(cut["completed"], false, "{cut}");
}

/// An upstream that answers every request with `response`, then waits
/// for the next one on the same connection.
async fn raw_upstream(response: &'static [u8]) -> String {
    raw_upstream_counted(response).await.0
}

/// [`raw_upstream`], and how many requests it has answered.
async fn raw_upstream_counted(response: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        count.fetch_add(1, Ordering::SeqCst);
                        if socket.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("http://{address}"), answered)
}

/// Framing the gateway passes on is the framing it sends: an upstream's
/// `Content-Length` beside `Transfer-Encoding: chunked` is dropped (the
/// client would read the next response as this one's body), and a
/// length given as a list is sent as one number.
#[tokio::test]
async fn framing_headers_say_what_is_sent() {
    let tollgate = Tollgate::start(BIN).await;
    let both = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let listed = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nxyz").await;
    let empty = raw_upstream(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello").await;
    for (slug, url) in [("both", &both), ("listed", &listed), ("empty", &empty)] {
        publish_at(&tollgate, slug, url).await;
    }
    tollgate
        .wait_for("/listed/x", Duration::from_secs(1), |s| s == 200)
        .await;
    tollgate
        .wait_for("/both/x", Duration::from_secs(1), |s| s == 200)
        .await;
    tollgate
        .wait_for("/empty/x", Duration::from_secs(1), |s| s == 204)
        .await;
    // Two requests on one connection: the second answer is read whole
    // and on its own.
    let raw = exchange(&tollgate, b"GET /both/a HTTP/1.1\r\nHost: x\r\n\r\nGET /listed/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let second_start = raw[1..]
        .find("HTTP/1.1 ")
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("one response only: {raw}"));
    let (first, second) = raw.split_at(second_start);
    assert!(
        !first.to_ascii_lowercase().contains("content-length: 5"),
        "{raw}"
    );
    assert!(
        first
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{raw}"
    );
    assert!(first.contains("abc"), "{raw}");
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(second.contains("content-length: 3\r\n"), "{raw}");
    assert!(second.ends_with("xyz"), "{raw}");
    // A 204 says no length (RFC 9110 §8.6), whatever the upstream said,
    // and what came after it is no answer's body.
    let raw = exchange(&tollgate, b"GET /empty/a HTTP/1.1\r\nHost: x\r\n\r\nGET /listed/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 204 No Content\r\n"), "{raw}");
    let (first, second) = raw.split_at(raw[1..].find("HTTP/1.1 ").unwrap() + 1);
    assert!(
        !first.to_ascii_lowercase().contains("content-length"),
        "{raw}"
    );
    assert!(!raw.contains("hello"), "{raw}");
    assert!(
        second.starts_with("HTTP/1.1 200 OK\r\n") && second.ends_with("xyz"),
        "{raw}"
    );
}

/// An upstream's head reaches the client as it came, less its hop-by-hop
/// fields and what the gateway sets itself (its request id), with its own
/// `Date` and `Content-Length` once each: over HTTP/1.1 (where the head
/// goes on line by line, names as the upstream wrote them), over HTTP/2,
/// and when the gateway adds to it (a deprecated service's headers).
#[tokio::test]
async fn an_upstream_head_goes_on_as_it_came() {
    let tollgate = Tollgate::start(BIN).await;
    let url = raw_upstream(
        b"HTTP/1.1 200 OK\r\nServer: fake\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
          Content-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
          X-Request-Id: upstream-id\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\
          Proxy-Agent: old\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nX-Spaced : a\r\n\
          Proxy-Status: cache; hit\r\nTollgate-Warning: w1\r\nTollgate-Warning: w2\r\n\
          Tollgate-Warning: ,w3,\r\n\
          Content-Length: 2\r\n\r\nok",
    )
    .await;
    for slug in ["plain", "old"] {
        publish_at(&tollgate, slug, &url).await;
    }
    tollgate
        .create(
            "/api/v1/services/old/deprecate",
            json!({"sunset": "2099-01-01"}),
        )
        .await;
    // Live once the deprecation is (the service answered 200 before it).
    let started = std::time::Instant::now();
    while !tollgate
        .get("/old/x")
        .await
        .headers()
        .contains_key("deprecation")
    {
        assert!(started.elapsed() < Duration::from_secs(2), "not deprecated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for slug in ["plain", "old"] {
        let raw = get_as_sent(&tollgate, &format!("/{slug}/x")).await;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "ok", "{raw}");
        let lines: Vec<&str> = head.lines().skip(1).collect();
        let named = |name: &str| -> Vec<&str> {
            lines
                .iter()
                .filter_map(|line| line.split_once(": "))
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, value)| value)
                .collect()
        };
        assert_eq!(named("set-cookie"), ["a=1", "b=2"], "{raw}");
        assert_eq!(named("date"), ["Sun, 06 Nov 1994 08:49:37 GMT"], "{raw}");
        assert_eq!(named("content-length"), ["2"], "{raw}");
        assert_eq!(named("content-type"), ["text/plain"], "{raw}");
        assert_eq!(named("server"), ["fake"], "{raw}");
        // RFC 9112 §5.1: the space before the colon is removed, not refused.
        assert_eq!(named("x-spaced"), ["a"], "{raw}");
        // RFC 9209: end to end, unlike the other `Proxy-*`.
        assert_eq!(named("proxy-status"), ["cache; hit"], "{raw}");
        let ids = named("x-request-id");
        assert!(ids.len() == 1 && ids[0] != "upstream-id", "{raw}");
        for hop in [
            "keep-alive",
            "proxy-agent",
            "trailer",
            "upgrade",
            "transfer-encoding",
        ] {
            assert!(named(hop).is_empty(), "{hop} passed on: {raw}");
        }
        // The client asked to close: the upstream's keep-alive is not said.
        assert_eq!(named("connection"), ["close"], "{raw}");
        if slug == "plain" {
            assert!(head.contains("\r\nServer: fake\r\n"), "{raw}");
            assert!(named("deprecation").is_empty(), "{raw}");
            assert_eq!(named("tollgate-warning"), ["w1", "w2", ",w3,"], "{raw}");
        } else {
            assert_eq!(named("deprecation").len(), 1, "{raw}");
            // The gateway's warning, then every one of the upstream's.
            assert_eq!(
                named("tollgate-warning"),
                ["deprecated;sunset=\"2099-01-01\", w1, w2, w3"],
                "{raw}"
            );
        }

        let answer =
            test_support::upstream::h2c_get(&format!("{}/{slug}/x", tollgate.gateway_url)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"ok");
        let headers = &answer.headers;
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("set-cookie"), ["a=1", "b=2"], "{headers:?}");
        assert_eq!(
            all("date"),
            ["Sun, 06 Nov 1994 08:49:37 GMT"],
            "{headers:?}"
        );
        assert_eq!(all("server"), ["fake"], "{headers:?}");
        let ids = all("x-request-id");
        assert!(ids.len() == 1 && ids[0] != "upstream-id", "{headers:?}");
        for hop in [
            "keep-alive",
            "proxy-agent",
            "trailer",
            "upgrade",
            "connection",
        ] {
            assert!(all(hop).is_empty(), "{hop} passed on: {headers:?}");
        }
        assert_eq!(
            all("deprecation").len(),
            usize::from(slug == "old"),
            "{headers:?}"
        );
    }
}

/// An HTTP/1.1 upstream's trailers (after its last chunk) reach the
/// client: after the last chunk over HTTP/1.1, as trailers over HTTP/2;
/// fields no trailer may carry (framing, hop-by-hop) are left out.
#[tokio::test]
async fn chunked_trailers_reach_the_client() {
    let tollgate = Tollgate::start(BIN).await;
    let url = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
          3\r\nabc\r\n0\r\nX-Sum: 42\r\nContent-Length: 9\r\nX-Request-Id: forged\r\n\
          Tollgate-App: forged\r\nX-Spaced : s\r\n\r\n",
    )
    .await;
    publish_at(&tollgate, "sums", &url).await;
    tollgate
        .wait_for("/sums/x", Duration::from_secs(1), |s| s == 200)
        .await;
    let raw = get_as_sent(&tollgate, "/sums/x").await;
    assert!(
        raw.to_ascii_lowercase()
            .contains("transfer-encoding: chunked\r\n"),
        "{raw}"
    );
    // What the gateway sets itself is not forged in a trailer.
    assert!(
        raw.ends_with("\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 42\r\nx-spaced: s\r\n\r\n"),
        "{raw}"
    );
    let answer = test_support::upstream::h2c_get(&format!("{}/sums/x", tollgate.gateway_url)).await;
    assert_eq!(&answer.body[..], b"abc");
    let trailers = answer.trailers.expect("trailers over HTTP/2");
    assert_eq!(trailers["x-sum"], "42");
    assert!(trailers.get("content-length").is_none(), "{trailers:?}");
}

/// An upstream that answers each request with `103 Early Hints`, then,
/// 300 ms later, its final answer.
async fn early_hints_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nKeep-Alive: timeout=5\r\n\r\n";
                        if socket.write_all(hints).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let last = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if socket.write_all(last).await.is_err() {
                            return;
                        }
                    }
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    format!("http://{address}")
}

/// An upstream's `103 Early Hints` reaches an HTTP/1.1 client as it comes,
/// before the final answer (RFC 9110 §15.2), less hop-by-hop fields; an
/// HTTP/1.0 client (which may not get one) and an HTTP/2 client get the
/// final answer alone.
#[tokio::test]
async fn early_hints_reach_the_client_before_the_answer() {
    let tollgate = Tollgate::start(BIN).await;
    let url = early_hints_upstream().await;
    publish_at(&tollgate, "hints", &url).await;
    tollgate
        .wait_for("/hints/x", Duration::from_secs(2), |s| s == 200)
        .await;
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(b"GET /hints/page HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let early = read_until(&mut stream, "\r\n\r\n").await;
    assert_eq!(
        early, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        "the hints come alone, before the answer"
    );
    let rest = read_until(&mut stream, "ok").await;
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    // The connection goes on: the next request gets its own hints.
    stream
        .write_all(b"GET /hints/again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let second = read_to_close(&mut stream).await;
    assert!(
        second.starts_with("HTTP/1.1 103 Early Hints\r\n"),
        "{second}"
    );
    assert_eq!(second.matches("HTTP/1.1 ").count(), 2, "{second}");

    let old = exchange(&tollgate, b"GET /hints/page HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.1 200 OK\r\n"), "{old}");
    assert!(!old.contains("103"), "{old}");
    let answer =
        test_support::upstream::h2c_get(&format!("{}/hints/page", tollgate.gateway_url)).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));
}

/// A WebSocket upstream: answers an upgrade request with 101 (and a first
/// message right after its head), then echoes what it gets, prefixed.
async fn websocket_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = vec![0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                // Any protocol asked for is accepted (as an h2c server
                // would accept `h2c`): the gateway decides what reaches it.
                let protocol = head
                    .split("\r\n")
                    .find_map(|line| line.strip_prefix("upgrade: "))
                    .map(str::to_owned);
                let Some(protocol) =
                    protocol.filter(|_| head.contains("\r\nconnection: upgrade\r\n"))
                else {
                    let _ = socket
                        .write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let _ = socket
                    .write_all(
                        format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: Upgrade\r\n\
                             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nready"
                        )
                        .as_bytes(),
                    )
                    .await;
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    if socket.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{address}")
}

/// A WebSocket handshake the upstream accepts turns the connection into a
/// tunnel: the 101 reaches the client with the upstream's handshake
/// headers, then bytes flow both ways until one side closes.
#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = websocket_upstream().await;
    tollgate
        .publish_http_service(
            "ws",
            "/ws",
            json!({"targets": [{"url": upstream}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    // A plain GET is no upgrade: the upstream says it wants one.
    tollgate
        .wait_for("/ws/chat", Duration::from_secs(1), |s| s == 426)
        .await;
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(
            b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_until(&mut stream, "ready").await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    for wanted in [
        "\r\nupgrade: websocket\r\n",
        "\r\nconnection: upgrade\r\n",
        "\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n",
        "\r\nx-request-id: ",
    ] {
        assert!(lower.contains(wanted), "{wanted}: {head}");
    }
    assert!(!lower.contains("content-length"), "{head}");
    for message in ["hello", "again"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        assert_eq!(
            read_until(&mut stream, message).await,
            format!("echo:{message}")
        );
    }
    // The client closes: the tunnel closes.
    stream.shutdown().await.unwrap();
    let rest = read_to_close(&mut stream).await;
    assert!(rest.is_empty(), "{rest}");

    // Only WebSocket: an `h2c` upgrade would open a connection straight to
    // the upstream, past routing and admission (h2c smuggling). It is
    // served as a plain request, its `Upgrade` dropped.
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(
            b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_until(&mut stream, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 426 "), "{head}");
}

/// An answer the gateway cannot pass on is a 502 that says what was wrong
/// with it, not that the upstream could not be reached.
#[tokio::test]
async fn an_unusable_upstream_answer_says_why() {
    let tollgate = Tollgate::start(BIN).await;
    let garbage = raw_upstream(b"HTTX/9 whatever\r\n\r\n").await;
    let lengths =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
            .await;
    let upgrade = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    // Transfer codings the gateway does not decode: passed on without
    // their `Transfer-Encoding` (a hop's header), the bytes would reach
    // the client as the body itself. Kept raw or put in a map alike.
    let (gzipped, gzipped_answers) = raw_upstream_counted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let gzipped_map = raw_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: x-other\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    )
    .await;
    for (slug, url, says) in [
        ("garbage", &garbage, "not valid HTTP/1.1"),
        ("lengths", &lengths, "body length"),
        ("upgrade", &upgrade, "asked for no upgrade"),
        (
            "gzipped",
            &gzipped,
            "transfer coding other than one chunked",
        ),
        (
            "gzipped-map",
            &gzipped_map,
            "transfer coding other than one chunked",
        ),
    ] {
        publish_at(&tollgate, slug, url).await;
        tollgate
            .wait_for(&format!("/{slug}/x"), Duration::from_secs(1), |s| s == 502)
            .await;
        let raw = get_as_sent(&tollgate, &format!("/{slug}/x")).await;
        assert!(raw.starts_with("HTTP/1.1 502 "), "{raw}");
        let detail = last_json(&raw)["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(says), "{slug}: {detail}");
        assert!(!detail.contains("could not be reached"), "{slug}: {detail}");
    }
    // The upstream answered (it acted on the call): a retry policy does
    // not send it again, whatever the method.
    let (status, body) = tollgate
        .admin(
            reqwest::Method::PATCH,
            "/api/v1/services/gzipped",
            Some(json!({"retry": {"retries": 3}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = gzipped_answers.load(Ordering::SeqCst);
    let raw = exchange(
        &tollgate,
        b"PUT /gzipped/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 502 "), "{raw}");
    assert_eq!(
        gzipped_answers.load(Ordering::SeqCst) - before,
        1,
        "tried once"
    );
    // A coding on an answer without a body frames nothing: passed on.
    let bodiless = raw_upstream(
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip, chunked\r\nETag: \"v1\"\r\n\r\n",
    )
    .await;
    publish_at(&tollgate, "bodiless", &bodiless).await;
    tollgate
        .wait_for("/bodiless/x", Duration::from_secs(1), |s| s == 304)
        .await;
    let raw = get_as_sent(&tollgate, "/bodiless/x").await;
    assert!(raw.starts_with("HTTP/1.1 304 "), "{raw}");
    assert!(raw.contains("ETag: \"v1\"\r\n"), "{raw}");
}

/// A `Host` that is no host (a path, a query, spaces, quotes) is a bad
/// request (RFC 9112 §3.2): it never reaches an upstream as
/// `X-Forwarded-Host`, where absolute links are built from it.
#[tokio::test]
async fn an_invalid_host_is_a_bad_request() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    serve_svc(&tollgate, &upstream).await;
    for host in [
        "evil.com/x?y",
        "a b",
        "a\"b",
        "user@example.com",
        "example.com:80x",
    ] {
        let raw = exchange(
            &tollgate,
            format!("GET /svc/echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 400 "), "{host}: {raw}");
        assert_eq!(last_json(&raw)["code"], "bad_request", "{host}: {raw}");
    }
    let raw = exchange(
        &tollgate,
        b"GET /svc/echo HTTP/1.1\r\nHost: api.example.com:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        last_json(&raw)["headers"]["x-forwarded-host"],
        "api.example.com:8443",
        "{raw}"
    );
}

/// A client whose body breaks (cut short, or a malformed chunk) gets a 400
/// of its own, and its target is not blamed: no failure is counted, so a
/// few such requests cannot eject a healthy target for everyone.
#[tokio::test]
async fn a_broken_client_body_is_the_clients_fault_not_the_upstreams() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    serve_svc_ejecting(&tollgate, &upstream).await;
    for _ in 0..3 {
        // 3 bytes of a declared 100, then the client closes its side.
        let mut stream = connect(&tollgate).await;
        stream
            .write_all(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let _ = read_to_close(&mut stream).await;
    }
    let raw = exchange(&tollgate, b"POST /svc/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400 "), "{raw}");
    assert_eq!(last_json(&raw)["code"], "bad_request", "{raw}");
    // The target still serves everyone else.
    for _ in 0..3 {
        assert_eq!(tollgate.get("/svc/after").await.status(), 200);
    }
}

/// A client that stops sending its body mid-way gets a 408 of its own
/// once nothing more came for `gateway.body_timeout_ms`, whether its body
/// was streamed or buffered for retries; the target is not blamed, so it
/// keeps serving.
#[tokio::test]
async fn a_stalled_client_body_is_a_408_not_an_upstream_timeout() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start_with(BIN, body_timeout_ms(400)).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}], "read_timeout_ms": 300,
                   "health_check": {"passive": {"max_failures": 2, "ejection_ms": 60000}}}),
            &[json!({"path": "/*", "timeout_ms": 400})],
        )
        .await;
    tollgate
        .wait_for("/svc/ping", Duration::from_secs(1), |s| s == 200)
        .await;
    // Chunked: streamed to the upstream; with a length: buffered first
    // (it may be retried).
    let chunked = "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
    let sized = "Content-Length: 100\r\n\r\nabc";
    for (method, body) in [
        ("POST", chunked),
        ("POST", chunked),
        ("POST", sized),
        ("PUT", sized),
    ] {
        let mut stream = connect(&tollgate).await;
        let head = format!("{method} /svc/up HTTP/1.1\r\nHost: x\r\n{body}");
        stream.write_all(head.as_bytes()).await.unwrap();
        let raw = read_to_close(&mut stream).await;
        assert!(raw.starts_with("HTTP/1.1 408 "), "{method}: {raw}");
        let problem = last_json(&raw);
        assert_eq!(problem["code"], "request_timeout", "{raw}");
        assert!(
            problem["detail"].as_str().unwrap().contains("request body"),
            "{raw}"
        );
    }
    for _ in 0..3 {
        assert_eq!(tollgate.get("/svc/after").await.status(), 200);
    }
}

/// A gateway whose streamed bodies may pause `ms` between their bytes.
fn body_timeout_ms(ms: u64) -> test_support::tollgate::Options {
    test_support::tollgate::Options {
        env: vec![("TOLLGATE_GATEWAY__BODY_TIMEOUT_MS".into(), ms.to_string())],
        ..Default::default()
    }
}

/// An upload that keeps coming may take longer than the upstream's read
/// timeout and the route's timeout: those count from the moment the body
/// has all arrived (as nginx's and Envoy's do), not from the try's start.
#[tokio::test]
async fn a_steady_upload_may_take_longer_than_the_timeouts() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start_with(BIN, body_timeout_ms(400)).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}], "read_timeout_ms": 300}),
            &[json!({"path": "/*", "timeout_ms": 400})],
        )
        .await;
    tollgate
        .wait_for("/svc/ping", Duration::from_secs(1), |s| s == 200)
        .await;
    let mut stream = connect(&tollgate).await;
    stream
        .write_all(
            b"POST /svc/up HTTP/1.1\r\nHost: x\r\nContent-Length: 80\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    // 80 bytes over about 1.2 s: 8 pieces, 150 ms apart.
    for _ in 0..8 {
        stream.write_all(b"0123456789").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let raw = read_to_close(&mut stream).await;
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    assert_eq!(last_json(&raw)["body"], "0123456789".repeat(8), "{raw}");
}

/// `Expect: 100-continue` is answered only once the request is admitted:
/// a refused caller gets its final answer without being asked for the body.
#[tokio::test]
async fn a_refused_request_is_not_invited_to_send_its_body() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    let raw = exchange(
        &tollgate,
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 404 "), "{raw}");
    assert!(!raw.contains("100 Continue"), "{raw}");
    assert_eq!(last_json(&raw)["code"], "route_not_found", "{raw}");

    // HTTP/1.0 has no interim answers: the expectation is ignored.
    let raw = exchange(
        &tollgate,
        b"POST /svc/echo HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nabcde",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    assert!(!raw.contains("100 Continue"), "{raw}");
    assert_eq!(last_json(&raw)["body"], "abcde", "{raw}");
}

/// Dot segments, however written, never carry a request out of its route
/// (or its target's base path): they are refused before routing.
#[tokio::test]
async fn dot_segments_cannot_leave_a_route() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "cv",
            "/cv",
            json!({"targets": [{"url": format!("{}/public/v2", upstream.url())}]}),
            &[json!({"path": "/docs/*"}), json!({"path": "/items/{id}"})],
        )
        .await;
    tollgate
        .wait_for("/cv/docs/a", Duration::from_secs(1), |s| s == 200)
        .await;
    for path in [
        "/cv/docs/../../../internal/admin",
        "/cv/items/..",
        "/cv/items/%2e%2e",
        "/cv/docs/.%2E/x",
        "/cv/docs/..%2f..%2finternal",
        "/cv/docs/./a",
        // Not escapes (RFC 3986 §2.1), or an escaped NUL.
        "/cv/docs/a%zz",
        "/cv/docs/a%",
        "/cv/docs/a%00b",
    ] {
        let raw = get_as_sent(&tollgate, path).await;
        assert!(raw.starts_with("HTTP/1.1 400 "), "{path}: {raw}");
        assert_eq!(last_json(&raw)["code"], "bad_request", "{path}: {raw}");
    }
    // Dots inside a segment are ordinary.
    let raw = get_as_sent(&tollgate, "/cv/docs/v1.2/.well-known/a.json").await;
    assert_eq!(
        last_json(&raw)["path"],
        "/public/v2/docs/v1.2/.well-known/a.json",
        "{raw}"
    );
    // Patterns that no request as sent could match are refused.
    for pattern in ["/caf\u{e9}", "/my report", "/a/%2e%2e"] {
        let (status, body) = tollgate
            .admin(
                reqwest::Method::POST,
                "/api/v1/services/cv/routes",
                Some(json!({"path": pattern})),
            )
            .await;
        assert_eq!(status, 400, "{pattern}: {body}");
    }
}

/// A path with escaped letters is the same path (RFC 3986 §6.2.2.2): it
/// takes the route the letters name, with that route's rules, and the
/// upstream is sent it normalised; an escaped `/` stays one.
#[tokio::test]
async fn escaped_letters_take_the_route_they_spell() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[
                json!({"path": "/admin", "request_headers": {"set": {"x-route": "admin"}}}),
                json!({"path": "/*"}),
            ],
        )
        .await;
    tollgate
        .wait_for("/svc/admin", Duration::from_secs(1), |s| s == 200)
        .await;
    for path in [
        "/svc/admin",
        "/svc/%61dmin",
        "/sv%63/%61%64min?x=%61",
        "/svc/adm%69n",
    ] {
        let raw = get_as_sent(&tollgate, path).await;
        let echo = last_json(&raw);
        assert_eq!(echo["headers"]["x-route"], "admin", "{path}: {raw}");
        assert_eq!(echo["path"], "/admin", "{path}: {raw}");
    }
    let raw = get_as_sent(&tollgate, "/svc/%41dmin?x=%61").await;
    assert_eq!(
        last_json(&raw)["headers"]["x-route"],
        serde_json::Value::Null,
        "{raw}"
    );
    assert_eq!(
        last_json(&raw)["query"],
        "x=%61",
        "the query is the upstream's business"
    );
    let raw = get_as_sent(&tollgate, "/svc/a%2fb%2Fc").await;
    assert_eq!(last_json(&raw)["path"], "/a%2Fb%2Fc", "{raw}");
}

/// An absolute-form target names the host; `Host` is ignored for it
/// (RFC 9112 §3.2.2), for routing and for what the upstream is told.
#[tokio::test]
async fn an_absolute_form_target_names_the_host() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/h", "host": "api.example.com"})],
        )
        .await;
    let request = |target: &str, host: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    // The origin form routes by Host, once the route is live.
    crate::eventually_async("the host-bound route is served", || async {
        exchange(&tollgate, request("/svc/h", "api.example.com"))
            .await
            .starts_with("HTTP/1.1 200 ")
    })
    .await;
    let raw = exchange(
        &tollgate,
        request("http://api.example.com/svc/h", "other.example"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    assert_eq!(
        last_json(&raw)["headers"]["x-forwarded-host"],
        "api.example.com",
        "{raw}"
    );
    let raw = exchange(
        &tollgate,
        request("http://other.example/svc/h", "api.example.com"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 404 "), "{raw}");
}
