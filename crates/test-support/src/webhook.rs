//! A webhook endpoint: records every POST (headers and body) and answers
//! 500 to the first `failures` of them, so retries can be observed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

struct State {
    received: Mutex<Vec<Received>>,
    failures_left: AtomicUsize,
    /// How long each answer takes.
    delay: Duration,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookReceiver {
    /// Starts on a free port; the first `failures` requests get a 500.
    pub async fn start(failures: usize) -> Self {
        Self::start_slow(failures, Duration::ZERO).await
    }

    /// Like [`WebhookReceiver::start`], answering each request after `delay`.
    pub async fn start_slow(failures: usize, delay: Duration) -> Self {
        let state = Arc::new(State {
            received: Mutex::new(Vec::new()),
            failures_left: AtomicUsize::new(failures),
            delay,
        });
        let (addr, task) =
            crate::serve_http(state.clone(), |state: Arc<State>, request| async move {
                handle(&state, request).await
            })
            .await;
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until `count` requests arrived (or panics after `limit`).
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                started.elapsed() < limit,
                "only {} of {count} webhook requests after {limit:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
        .unwrap_or_default();
    state.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    tokio::time::sleep(state.delay).await;
    let fail = state
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    if fail {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    response
}
