//! A fake OpenTelemetry collector: takes OTLP/HTTP JSON trace exports at
//! `POST /v1/traces` (answering `{"partialSuccess": {}}` as the OTLP
//! specification's success response) and keeps every span it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

#[derive(Default)]
struct State {
    /// (resource attributes, span), in arrival order.
    spans: Mutex<Vec<(Value, Value)>>,
}

pub struct FakeCollector {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, "{}");
    }
    let json = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}");
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let Ok(export) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST, "{}");
    };
    let mut spans = state.spans.lock().unwrap();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push((resource["resource"]["attributes"].clone(), span.clone()));
            }
        }
    }
    answer(StatusCode::OK, r#"{"partialSuccess":{}}"#)
}

impl FakeCollector {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let (addr, task) =
            crate::serve_http(state.clone(), |state: Arc<State>, request| async move {
                handle(&state, request).await
            })
            .await;
        Self { addr, state, task }
    }

    /// The OTLP/HTTP endpoint (without `/v1/traces`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// (resource attributes, span) of every span received.
    pub fn spans(&self) -> Vec<(Value, Value)> {
        self.state.spans.lock().unwrap().clone()
    }

    /// Waits until a span matches `wanted` (or panics after `limit`).
    pub async fn wait_for(
        &self,
        limit: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> (Value, Value) {
        let started = Instant::now();
        loop {
            if let Some(found) = self.spans().into_iter().find(|(_, span)| wanted(span)) {
                return found;
            }
            assert!(
                started.elapsed() < limit,
                "no such span after {limit:?}: {:?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
