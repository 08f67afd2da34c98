//! A scripted upstream. Paths choose the behaviour:
//!
//! - `/status/{code}`: answers that status.
//! - `/delay/{ms}`: waits, then echoes.
//! - `/sse/{count}/{gap_ms}`: an SSE stream of `count` events.
//! - `/sse-gated`: sends one event, then waits for [`FakeUpstream::open_gate`]
//!   before sending two more and ending.
//! - `/hold` (or any path ending so): waits for [`FakeUpstream::open_gate`], then echoes.
//!
//! A `/hold` request or `/sse-gated` stream dropped before it ended (its
//! connection closed under it) counts in [`FakeUpstream::abandoned`].
//! - `/health`: 200, or 503 after [`FakeUpstream::set_healthy`]`(false)`.
//! - `/close`: echoes, then closes the connection.
//! - `/bytes/{n}`: `n` bytes of `x`, with a `Content-Length`.
//! - `/chunked/{n}`: `n` bytes of `x` in three chunks, without one.
//! - anything else: echoes the request as JSON (`server`, `method`, `path`,
//!   `query`, `headers`, `body`, and `hit`: the upstream's count of
//!   requests so far).
//!
//! Every answer but `/health` carries the response headers the query asks
//! for: `?header=Cache-Control:%20no-store&header=Vary:%20Accept`.
//!
//! Every request is counted; `/health` probes are counted apart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

type Body = BoxBody<Bytes, Infallible>;

struct State {
    name: String,
    hits: AtomicUsize,
    connections: AtomicUsize,
    health_probes: AtomicUsize,
    healthy: AtomicBool,
    gate: Notify,
    /// Delay added to every echo (for latency-aware balancing tests).
    extra_delay_ms: AtomicUsize,
    /// Held requests and gated streams dropped before their end.
    abandoned: AtomicUsize,
}

/// Counts, when dropped unfinished, a held request or gated stream.
struct Abandoned {
    state: Arc<State>,
    finished: bool,
}

impl Abandoned {
    fn new(state: &Arc<State>) -> Self {
        Self {
            state: state.clone(),
            finished: false,
        }
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.finished {
            self.state.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A running fake upstream; stops when dropped.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Starts a fake upstream named `name` on a free port (plain HTTP/1.1
    /// and h2c).
    pub async fn start(name: &str) -> Self {
        Self::spawn(name, None).await
    }

    /// Starts a fake upstream over TLS (ALPN h2 and http/1.1) with a fresh
    /// self-signed certificate for `localhost` and `127.0.0.1`; returns the
    /// certificate (PEM) to trust.
    pub async fn start_tls(name: &str) -> (Self, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::spawn(name, Some(acceptor)).await, pem)
    }

    async fn spawn(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            health_probes: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            gate: Notify::new(),
            extra_delay_ms: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(state, request).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        FakeUpstream { addr, state, task }
    }

    /// `https://localhost:port`, for a TLS upstream.
    pub fn tls_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The name its echoes carry as `server`.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests served, health probes excepted.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn health_probes(&self) -> usize {
        self.state.health_probes.load(Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Held requests and gated streams whose connection closed under them.
    pub fn abandoned(&self) -> usize {
        self.state.abandoned.load(Ordering::SeqCst)
    }

    pub fn set_delay_ms(&self, ms: usize) {
        self.state.extra_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Lets `/sse-gated` finish.
    pub fn open_gate(&self) {
        self.state.gate.notify_waiters();
        self.state.gate.notify_one();
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn sse_event(index: usize) -> Bytes {
    Bytes::from(format!(
        "id: {index}\nevent: tick\ndata: {{\"n\":{index}}}\n\n"
    ))
}

async fn respond(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/health" {
        state.health_probes.fetch_add(1, Ordering::SeqCst);
        return if state.healthy.load(Ordering::SeqCst) {
            full(StatusCode::OK, "text/plain", "ok")
        } else {
            full(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "down")
        };
    }
    let hit = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let asked_headers = asked_headers(request.uri().query().unwrap_or(""));
    let mut response = answer(state, request, path, hit).await;
    for (name, value) in asked_headers {
        response.headers_mut().append(name, value);
    }
    response
}

/// The `header=Name:%20value` items of a query.
fn asked_headers(query: &str) -> Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)> {
    query
        .split('&')
        .filter_map(|item| item.strip_prefix("header="))
        .filter_map(|item| {
            let decoded = percent_decode(item);
            let (name, value) = decoded.split_once(':')?;
            Some((
                hyper::header::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                hyper::header::HeaderValue::from_str(value.trim()).ok()?,
            ))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = (byte == b'%' && index + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[index + 1..index + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(value) => {
                out.push(value);
                index += 3;
            }
            None => {
                out.push(if byte == b'+' { b' ' } else { byte });
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
    path: String,
    hit: usize,
) -> Response<Body> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["status", code] => {
            let status = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            return full(
                status,
                "application/json",
                format!(
                    "{{\"server\":\"{}\",\"status\":{}}}",
                    state.name,
                    status.as_u16()
                ),
            );
        }
        // A gRPC-like answer: a body, then trailers (`grpc-status: 0`).
        ["trailers"] => {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
            trailers.insert(
                "grpc-message",
                hyper::header::HeaderValue::from_static("fine"),
            );
            let frames = futures_util::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"payload"))),
                Ok(Frame::trailers(trailers)),
            ]);
            return Response::builder()
                .header("content-type", "application/grpc")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap();
        }
        ["sse", count, gap_ms] => {
            let count: usize = count.parse().unwrap_or(3);
            let gap = Duration::from_millis(gap_ms.parse().unwrap_or(10));
            let stream = futures_util::stream::iter(0..count).then(move |index| async move {
                if index > 0 {
                    tokio::time::sleep(gap).await;
                }
                Ok::<_, Infallible>(Frame::data(sse_event(index)))
            });
            return Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap();
        }
        ["sse-gated"] => {
            let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
            let _ = sender.send(sse_event(0)).await;
            let gated = state.clone();
            tokio::spawn(async move {
                gated.gate.notified().await;
                let _ = sender.send(sse_event(1)).await;
                let _ = sender.send(sse_event(2)).await;
            });
            let mut receiver = receiver;
            let mut guard = Abandoned::new(&state);
            let stream = futures_util::stream::poll_fn(move |cx| {
                // The whole guard moves in (not just its field), to be
                // dropped with the stream.
                let guard = &mut guard;
                let next = receiver.poll_recv(cx);
                if let std::task::Poll::Ready(None) = next {
                    guard.finished = true;
                }
                next
            })
            .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap();
        }
        ["bytes", count] => {
            let count: usize = count.parse().unwrap_or(0);
            return full(
                StatusCode::OK,
                "application/octet-stream",
                vec![b'x'; count],
            );
        }
        ["chunked", count] => {
            let count: usize = count.parse().unwrap_or(0);
            let parts = [count / 3, count / 3, count - 2 * (count / 3)];
            let frames = futures_util::stream::iter(parts)
                .map(|part| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; part]))));
            return Response::builder()
                .header("content-type", "application/octet-stream")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap();
        }
        [.., "hold"] => {
            let mut guard = Abandoned::new(&state);
            state.gate.notified().await;
            guard.finished = true;
        }
        ["delay", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        _ => {}
    }
    let extra = state.extra_delay_ms.load(Ordering::SeqCst);
    if extra > 0 {
        tokio::time::sleep(Duration::from_millis(extra as u64)).await;
    }
    let method = request.method().to_string();
    let version = format!("{:?}", request.version());
    let query = request.uri().query().unwrap_or("").to_owned();
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = serde_json::json!({
        "server": state.name,
        "method": method,
        "version": version,
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "body_len": body.len(),
        "hit": hit,
    });
    let mut response = full(StatusCode::OK, "application/json", echo.to_string());
    if path == "/close" {
        // The server closes the connection after this response.
        response.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// What [`h2c_get`] read: the status, the body and the trailers.
pub struct H2Answer {
    pub status: u16,
    pub body: Bytes,
    pub trailers: Option<hyper::HeaderMap>,
    pub headers: hyper::HeaderMap,
}

/// A GET over h2c by prior knowledge (as gRPC clients speak) that reads
/// the answer's trailers too, which reqwest does not expose.
pub async fn h2c_get(url: &str) -> H2Answer {
    let uri: hyper::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(uri)
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    H2Answer {
        status,
        headers,
        body: collected.to_bytes(),
        trailers,
    }
}
