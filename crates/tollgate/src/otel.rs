//! Trace export (`otel.endpoint`): one OpenTelemetry span per call, sent
//! to an OTLP/HTTP collector as JSON (`POST <endpoint>/v1/traces`).
//!
//! The gateway gives each call a span id (continuing the caller's
//! `traceparent`, and passing its own span on to the upstream as the
//! parent); the call writer turns the call's record into a span here and
//! hands spans to the exporter task, which posts them in batches of up to
//! [`BATCH`] at least every [`FLUSH_EVERY`]. Traces are best effort: a
//! full queue or a collector that fails drops spans (counted in the log),
//! never a call.

use std::time::Duration;

use domain::calls::{CallEntry, hex};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Spans per export request, at most.
pub const BATCH: usize = 512;
/// How often gathered spans are sent.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Batches of spans waiting for the exporter, at most.
const QUEUE: usize = 64;

/// Where spans go.
#[derive(Debug, Clone)]
pub struct OtelConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`).
    pub endpoint: String,
    /// `service.name` of the spans' resource.
    pub service_name: String,
}

/// The exporter's queue.
pub type SpanSink = mpsc::Sender<Vec<Value>>;

fn text(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int(key: &str, value: u64) -> Value {
    // OTLP/JSON writes 64-bit integers as strings.
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

/// The OTLP/JSON span of a call (HTTP semantic conventions), if it has one.
pub fn span(entry: &CallEntry) -> Option<Value> {
    let ids = entry.trace?;
    let start_ns = u64::try_from(entry.at_ms).unwrap_or(0) * 1_000_000;
    let end_ns = start_ns + entry.latency_us * 1_000;
    let route = entry.http_route.as_deref();
    let mut attributes = vec![
        text("http.request.method", &entry.method),
        text("url.path", &entry.path),
        int("http.response.status_code", u64::from(entry.status)),
        text("client.address", &entry.client_ip),
        text("tollgate.request_id", &entry.request_id),
        int("http.request.body.size", entry.bytes_in),
        int("http.response.body.size", entry.bytes_out),
    ];
    let optional = [
        ("http.route", route),
        ("server.address", entry.host.as_deref()),
        ("tollgate.code", entry.code.as_deref()),
        ("tollgate.service", entry.service.as_deref()),
        ("tollgate.app", entry.app.as_deref()),
        ("tollgate.team", entry.consumer_team.as_deref()),
        ("tollgate.plan", entry.plan.as_deref()),
        ("tollgate.upstream_target", entry.upstream_target.as_deref()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(text(key, value));
        }
    }
    if let Some(upstream_us) = entry.upstream_latency_us {
        attributes.push(int("tollgate.upstream_latency_us", upstream_us));
    }
    if entry.cost_nanos != 0 {
        attributes.push(text(
            "tollgate.cost",
            &domain::money::format(entry.cost_nanos),
        ));
    }
    let mut span = json!({
        "traceId": hex(&ids.trace_id),
        "spanId": hex(&ids.span_id),
        "name": format!("{} {}", entry.method, route.unwrap_or("(no route)")),
        // SPAN_KIND_SERVER
        "kind": 2,
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": end_ns.to_string(),
        "attributes": attributes,
        // STATUS_CODE_ERROR for server errors, else unset (OTel HTTP rules).
        "status": if entry.status >= 500 { json!({"code": 2}) } else { json!({}) },
    });
    if let Some(parent) = ids.parent_span_id {
        span["parentSpanId"] = Value::String(hex(&parent));
    }
    Some(span)
}

/// The export request body for `spans`.
pub fn request_body(service_name: &str, spans: Vec<Value>) -> Value {
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [text("service.name", service_name)]},
            "scopeSpans": [{
                "scope": {"name": "tollgate", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    })
}

async fn export(client: &reqwest::Client, config: &OtelConfig, spans: Vec<Value>) {
    let count = spans.len();
    let url = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
    let sent = client
        .post(&url)
        .json(&request_body(&config.service_name, spans))
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => {
            tracing::warn!(status = %response.status(), count, "trace export refused; spans dropped");
        }
        Err(error) => tracing::warn!(%error, count, "trace export failed; spans dropped"),
    }
}

/// Starts the exporter; the call writer sends spans to the returned sink.
/// The exporter sends what is left and ends when the sink is dropped (the
/// call writer ends after the gateway's last call).
pub fn spawn(config: OtelConfig) -> (SpanSink, JoinHandle<()>) {
    let (sink, mut spans) = mpsc::channel::<Vec<Value>>(QUEUE);
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let mut gathered: Vec<Value> = Vec::new();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            let closed = tokio::select! {
                _ = tick.tick() => false,
                batch = spans.recv() => match batch {
                    Some(batch) => {
                        gathered.extend(batch);
                        if gathered.len() < BATCH {
                            continue;
                        }
                        false
                    }
                    None => true,
                },
            };
            while !gathered.is_empty() {
                let rest = gathered.split_off(gathered.len().min(BATCH));
                export(&client, &config, std::mem::replace(&mut gathered, rest)).await;
            }
            if closed {
                return;
            }
        }
    });
    (sink, task)
}
