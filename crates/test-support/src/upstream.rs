//! A scripted upstream. Paths choose the behaviour:
//!
//! - `/status/{code}`: answers that status.
//! - `/delay/{ms}`: waits, then echoes.
//! - `/sse/{count}/{gap_ms}`: an SSE stream of `count` events.
//! - `/sse-gated`: sends one event, then waits for [`FakeUpstream::open_gate`]
//!   before sending two more and ending.
//! - `/health`: 200, or 503 after [`FakeUpstream::set_healthy`]`(false)`.
//! - anything else: echoes the request as JSON (`server`, `method`, `path`,
//!   `query`, `headers`, `body`).
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
    health_probes: AtomicUsize,
    healthy: AtomicBool,
    gate: Notify,
    /// Delay added to every echo (for latency-aware balancing tests).
    extra_delay_ms: AtomicUsize,
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
    /// Starts a fake upstream named `name` on a free port.
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            health_probes: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            gate: Notify::new(),
            extra_delay_ms: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(state, request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeUpstream { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests served, health probes excepted.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_probes(&self) -> usize {
        self.state.health_probes.load(Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
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
    state.hits.fetch_add(1, Ordering::SeqCst);
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
            let state = state.clone();
            tokio::spawn(async move {
                state.gate.notified().await;
                let _ = sender.send(sse_event(1)).await;
                let _ = sender.send(sse_event(2)).await;
            });
            let mut receiver = receiver;
            let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
                .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap();
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
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "body_len": body.len(),
    });
    full(StatusCode::OK, "application/json", echo.to_string())
}
