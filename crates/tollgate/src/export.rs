//! Usage export (SPEC §6): every metered call's usage event, pushed to an
//! HTTP sink as CloudEvents and to Stripe as meter events.
//!
//! The ledger writer queues each event in `usage_outbox`, once per
//! destination, in the transaction that records the call's charge: an
//! event exists exactly when its charge does, and exporting never touches
//! the hot path. Every second the exporter claims due events (a lease, so
//! nodes sharing the database do not send the same ones), sends them, and
//! deletes them once the destination accepted them; a failure is retried
//! after 1, 2, 4 … s (at most 10 min). Delivery is at least once: a crash
//! between sending and deleting sends again, and receivers deduplicate by
//! the event's id, the request id (Stripe by its `identifier`).
//!
//! - `cloudevents`: `POST <cloudevents_url>` with
//!   `Content-Type: application/cloudevents-batch+json`, up to 100
//!   CloudEvents 1.0 (`type: dev.tollgate.usage`), optionally
//!   `Authorization: Bearer <cloudevents_token>`.
//! - `stripe`: `POST /v1/billing/meter_events` per event (`event_name`,
//!   `identifier` = request id, `timestamp`, `payload[stripe_customer_id]`,
//!   `payload[value]` = 1 call) for teams with a Stripe customer (one that
//!   paid a top-up through Checkout); other teams' events are dropped.

use std::time::Duration;

use gateway::money::Charge;
use serde_json::{Value, json};
use store::{OutboxEvent, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const EVERY: Duration = Duration::from_secs(1);
const BATCH: i64 = 100;
const LEASE_MS: i64 = 60_000;

/// What a Stripe meter event counts of its call (`payload[value]`), read
/// from the usage event's `units`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MeterValue {
    /// 1 per call.
    #[default]
    Requests,
    /// Input plus output tokens (AI calls).
    Tokens,
    InputTokens,
    OutputTokens,
}

impl MeterValue {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "requests" => Self::Requests,
            "tokens" => Self::Tokens,
            "input_tokens" => Self::InputTokens,
            "output_tokens" => Self::OutputTokens,
            _ => return None,
        })
    }

    /// The value for a usage event's `units`.
    fn of(self, units: &Value) -> u64 {
        let count = |name: &str| units[name].as_u64().unwrap_or(0);
        match self {
            Self::Requests => count("requests").max(1),
            Self::Tokens => count("input_tokens").saturating_add(count("output_tokens")),
            Self::InputTokens => count("input_tokens"),
            Self::OutputTokens => count("output_tokens"),
        }
    }
}

/// Where usage events go, and what they say.
#[derive(Debug, Clone)]
pub struct Export {
    pub cloudevents_url: Option<String>,
    pub cloudevents_token: Option<String>,
    /// Stripe meter `event_name`, with the Stripe API to send it to.
    pub stripe_meter: Option<String>,
    pub stripe_meter_value: MeterValue,
    pub stripe_base: String,
    pub stripe_key: String,
    pub public_url: String,
    pub currency: String,
}

impl Export {
    fn destinations(&self) -> Vec<&'static str> {
        let mut found = Vec::new();
        if self.cloudevents_url.is_some() {
            found.push("cloudevents");
        }
        if self.stripe_meter.is_some() {
            found.push("stripe");
        }
        found
    }

    /// The usage event of one settled call, as a CloudEvent.
    pub fn event(&self, charge: &Charge) -> Value {
        let request_id = charge.request_id.to_str().unwrap_or_default();
        let mut units = json!({"requests": charge.calls.max(1)});
        if let Some(tokens) = &charge.tokens {
            units["input_tokens"] = tokens.input.into();
            units["output_tokens"] = tokens.output.into();
            units["cached_input_tokens"] = tokens.cached_input.into();
        }
        let mut event = json!({
            "specversion": "1.0",
            "id": request_id,
            "source": format!("{}/_tollgate", self.public_url),
            "type": "dev.tollgate.usage",
            "time": domain::access::format_time_ms(charge.at_ms),
            "subject": format!("{}/{}", charge.team, charge.labels.app),
            "datacontenttype": "application/json",
            "data": {
                "request_id": request_id,
                "team": &*charge.team,
                "app": &*charge.labels.app,
                "service": &*charge.labels.service,
                "plan": &*charge.labels.plan,
                "subscription": &*charge.labels.subscription,
                "units": units,
                "cost": domain::money::format(charge.amount_nanos),
                "cost_nanos": charge.amount_nanos,
                "currency": self.currency,
                "status": charge.status,
                "latency_ms": charge.latency_ms,
            },
        });
        if let Some(tokens) = &charge.tokens {
            event["data"]["provider"] = tokens.provider.as_str().into();
            event["data"]["model"] = tokens.model.as_str().into();
        }
        event
    }

    /// The outbox rows of one charge (`id` is the charge's own id).
    pub fn outbox_rows(&self, id: &str, team_id: &str, charge: &Charge) -> Vec<OutboxEvent> {
        let event = self.event(charge).to_string();
        self.destinations()
            .into_iter()
            .map(|destination| OutboxEvent {
                id: format!("{destination}:{id}"),
                destination: destination.to_owned(),
                team_id: team_id.to_owned(),
                event: event.clone(),
                attempts: 0,
            })
            .collect()
    }
}

fn backoff_ms(attempts: i64) -> i64 {
    1000_i64
        .saturating_mul(1 << attempts.clamp(0, 20))
        .min(600_000)
}

pub fn spawn(
    store: Store,
    export: std::sync::Arc<Export>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_default();
        loop {
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
            for destination in export.destinations() {
                if let Err(error) = round(&store, &http, &export, destination).await {
                    tracing::warn!(%error, destination, "usage export round failed; retrying");
                }
            }
        }
    })
}

async fn round(
    store: &Store,
    http: &reqwest::Client,
    export: &Export,
    destination: &str,
) -> store::Result<()> {
    let events = store
        .claim_usage(destination, domain::now_ms(), LEASE_MS, BATCH)
        .await?;
    if events.is_empty() {
        return Ok(());
    }
    let (delivered, failed) = match destination {
        "cloudevents" => send_cloudevents(http, export, &events).await,
        _ => send_stripe(store, http, export, &events).await?,
    };
    store.usage_delivered(&delivered).await?;
    if !failed.is_empty() {
        let attempts = events.iter().map(|e| e.attempts).max().unwrap_or(0);
        tracing::warn!(
            destination,
            failed = failed.len(),
            attempts,
            "usage events not delivered; retrying"
        );
        store
            .usage_retry(&failed, domain::now_ms() + backoff_ms(attempts))
            .await?;
    }
    Ok(())
}

/// One batch POST: all delivered, or all retried.
async fn send_cloudevents(
    http: &reqwest::Client,
    export: &Export,
    events: &[OutboxEvent],
) -> (Vec<String>, Vec<String>) {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let Some(url) = &export.cloudevents_url else {
        return (Vec::new(), ids);
    };
    let body = format!(
        "[{}]",
        events
            .iter()
            .map(|e| e.event.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut request = http
        .post(url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(body);
    if let Some(token) = &export.cloudevents_token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => (ids, Vec::new()),
        Ok(response) => {
            tracing::warn!(status = %response.status(), "usage sink refused a batch");
            (Vec::new(), ids)
        }
        Err(error) => {
            tracing::warn!(%error, "usage sink unreachable");
            (Vec::new(), ids)
        }
    }
}

/// One meter event per call, counting what `stripe_meter_value` says; a
/// team without a Stripe customer has nothing to meter there, and a call
/// with nothing to count sends nothing.
async fn send_stripe(
    store: &Store,
    http: &reqwest::Client,
    export: &Export,
    events: &[OutboxEvent],
) -> store::Result<(Vec<String>, Vec<String>)> {
    let (mut delivered, mut failed) = (Vec::new(), Vec::new());
    let Some(meter) = &export.stripe_meter else {
        return Ok((delivered, failed));
    };
    let mut customers: std::collections::HashMap<String, Option<String>> = Default::default();
    for event in events {
        if !customers.contains_key(&event.team_id) {
            let customer = store.stripe_customer(&event.team_id).await?;
            customers.insert(event.team_id.clone(), customer);
        }
        let Some(Some(customer)) = customers.get(&event.team_id) else {
            delivered.push(event.id.clone());
            continue;
        };
        let parsed: Value = serde_json::from_str(&event.event).unwrap_or(Value::Null);
        let value = export.stripe_meter_value.of(&parsed["data"]["units"]);
        if value == 0 {
            // Nothing of what the meter counts (no tokens in this call).
            delivered.push(event.id.clone());
            continue;
        }
        let time = parsed["time"]
            .as_str()
            .and_then(|t| domain::access::parse_time_ms(t).ok())
            .unwrap_or_else(domain::now_ms);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("event_name", meter)
            .append_pair("identifier", parsed["id"].as_str().unwrap_or_default())
            .append_pair("timestamp", &(time / 1000).to_string())
            .append_pair("payload[stripe_customer_id]", customer)
            .append_pair("payload[value]", &value.to_string())
            .finish();
        let sent = http
            .post(format!("{}/v1/billing/meter_events", export.stripe_base))
            .bearer_auth(&export.stripe_key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => delivered.push(event.id.clone()),
            Ok(response) => {
                let status = response.status();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                // Stripe keeps identifiers for 24 h: a repeat is already in.
                if answer["error"]["code"] == "resource_already_exists" {
                    delivered.push(event.id.clone());
                } else {
                    tracing::warn!(%status, error = %answer["error"]["message"], "stripe meter event refused");
                    failed.push(event.id.clone());
                }
            }
            Err(error) => {
                tracing::warn!(%error, "stripe unreachable for meter events");
                failed.push(event.id.clone());
            }
        }
    }
    Ok((delivered, failed))
}
