//! A fake of Stripe's API and webhooks, on Stripe's wire format.
//!
//! - `POST /v1/checkout/sessions` (form-encoded, `Authorization: Bearer
//!   <secret key>`): checks the key (401 and Stripe's error shape
//!   otherwise), the required parameters (400 `parameter_missing`) and
//!   Stripe's minimum charge (400 `amount_too_small` under 0.50 in a
//!   two-decimal currency); honours `Idempotency-Key` (the same key gives
//!   the same session); answers a `checkout.session` object.
//! - [`FakeStripe::complete`] plays the payer paying: it returns the
//!   `checkout.session.completed` event Stripe would POST, with its
//!   `Stripe-Signature` header (`t=…,v1=HMAC-SHA256(secret, "t.body")`).
//! - [`FakeStripe::refund`] returns a `charge.refunded` event
//!   (`amount_refunded` cumulative, as Stripe reports it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

pub const SECRET_KEY: &str = "sk_test_fake0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_fake0123456789abcdef";

/// Name–value pairs (headers, or a decoded form).
type Pairs = Vec<(String, String)>;

#[derive(Default)]
struct State {
    sessions: Mutex<HashMap<String, Value>>,
    by_idempotency_key: Mutex<HashMap<String, String>>,
    /// The form each Checkout idempotency key was first used with: Stripe
    /// refuses the key with other parameters (`idempotency_error`).
    checkout_forms: Mutex<HashMap<String, Pairs>>,
    /// Every create request: (headers, form pairs).
    requests: Mutex<Vec<(Pairs, Pairs)>>,
    counter: AtomicU64,
    /// Meter events received: form pairs, and identifiers seen.
    meter_events: Mutex<Vec<HashMap<String, String>>>,
    /// PaymentIntents by id (from Checkout, and off-session charges).
    payment_intents: Mutex<HashMap<String, Value>>,
    /// Customers whose card declines.
    declining: Mutex<std::collections::HashSet<String>>,
}

impl State {
    fn id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        format!("{prefix}_{:016x}{n:08x}", nanos)
    }
}

/// An event as Stripe would deliver it.
#[derive(Debug, Clone)]
pub struct SignedEvent {
    pub body: String,
    /// The `Stripe-Signature` header.
    pub signature: String,
}

pub struct FakeStripe {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The `Stripe-Signature` header for `body` signed at `t` with `secret`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl FakeStripe {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let (addr, task) =
            crate::serve_http(state.clone(), |state: Arc<State>, request| async move {
                handle(&state, request).await
            })
            .await;
        Self { addr, state, task }
    }

    /// The API base URL (`stripe.api_base`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sessions created so far.
    pub fn sessions(&self) -> Vec<Value> {
        self.state
            .sessions
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// The form of the last create request.
    pub fn last_form(&self) -> HashMap<String, String> {
        self.state
            .requests
            .lock()
            .unwrap()
            .last()
            .map(|(_, form)| form.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The headers of the last create request (names in lower case).
    pub fn last_headers(&self) -> HashMap<String, String> {
        self.state
            .requests
            .lock()
            .unwrap()
            .last()
            .map(|(headers, _)| headers.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Off-session charges fail for this customer (a declined card).
    pub fn decline(&self, customer: &str) {
        self.state
            .declining
            .lock()
            .unwrap()
            .insert(customer.to_owned());
    }

    /// PaymentIntents created off-session (auto top-ups).
    pub fn off_session_charges(&self) -> Vec<Value> {
        self.state
            .payment_intents
            .lock()
            .unwrap()
            .values()
            .filter(|pi| pi["off_session"] == true)
            .cloned()
            .collect()
    }

    /// The meter events received (form pairs).
    pub fn meter_events(&self) -> Vec<HashMap<String, String>> {
        self.state.meter_events.lock().unwrap().clone()
    }

    /// How many create requests arrived.
    pub fn requests(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    fn event(&self, kind: &str, object: Value) -> SignedEvent {
        let body = json!({
            "id": self.state.id("evt"),
            "object": "event",
            "api_version": "2024-06-20",
            "created": now_s(),
            "data": {"object": object},
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": kind,
        })
        .to_string();
        SignedEvent {
            signature: signature(WEBHOOK_SECRET, now_s(), &body),
            body,
        }
    }

    /// The payer pays session `id`: the `checkout.session.completed` event.
    pub fn complete(&self, id: &str) -> SignedEvent {
        let session = {
            let mut sessions = self.state.sessions.lock().unwrap();
            let session = sessions.get_mut(id).expect("a session of this fake");
            if session["payment_intent"].is_null() {
                session["payment_intent"] = self.state.id("pi").into();
            }
            session["status"] = "complete".into();
            if session["customer"].is_null() && session["customer_creation"] == "always" {
                session["customer"] = self.state.id("cus").into();
            }
            let payment_intent = session["payment_intent"].as_str().unwrap().to_owned();
            self.state.payment_intents.lock().unwrap().insert(
                payment_intent.clone(),
                json!({"id": payment_intent, "object": "payment_intent",
                    "amount": session["amount_total"], "amount_received": session["amount_total"],
                    "currency": session["currency"], "customer": session["customer"],
                    "payment_method": self.state.id("pm"), "status": "succeeded",
                    "setup_future_usage": session["setup_future_usage"], "metadata": {}}),
            );
            session["payment_status"] = "paid".into();
            session["url"] = Value::Null;
            session.clone()
        };
        self.event("checkout.session.completed", session)
    }

    /// Stripe refunds `refunded_minor` (cumulative) of session `id`'s
    /// payment: the `charge.refunded` event.
    pub fn refund(&self, id: &str, refunded_minor: i64) -> SignedEvent {
        let session = self.state.sessions.lock().unwrap()[id].clone();
        let amount = session["amount_total"].as_i64().unwrap();
        let payment_intent = session["payment_intent"].as_str().unwrap().to_owned();
        let charge = json!({
            "id": format!("ch_{}", &payment_intent[3..]),
            "object": "charge",
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": refunded_minor,
            "captured": true,
            "currency": session["currency"],
            "paid": true,
            "payment_intent": payment_intent,
            "refunded": refunded_minor >= amount,
            "status": "succeeded",
        });
        self.event("charge.refunded", charge)
    }
}

fn stripe_error(status: StatusCode, error: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(json!({"error": error}).to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() == hyper::Method::POST && request.uri().path() == "/v1/billing/meter_events"
    {
        return meter_event(state, request).await;
    }
    if let Some(id) = request.uri().path().strip_prefix("/v1/payment_intents/")
        && request.method() == hyper::Method::GET
    {
        return match state.payment_intents.lock().unwrap().get(id) {
            Some(pi) => ok(pi.clone()),
            None => stripe_error(
                StatusCode::NOT_FOUND,
                json!({"type": "invalid_request_error", "code": "resource_missing",
                    "message": format!("No such payment_intent: '{id}'")}),
            ),
        };
    }
    if request.method() == hyper::Method::POST && request.uri().path() == "/v1/payment_intents" {
        return create_payment_intent(state, request).await;
    }
    if request.method() != hyper::Method::POST || request.uri().path() != "/v1/checkout/sessions" {
        return stripe_error(
            StatusCode::NOT_FOUND,
            json!({"type": "invalid_request_error",
                "message": format!("Unrecognized request URL ({} {}).", request.method(), request.uri().path())}),
        );
    }
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    state
        .requests
        .lock()
        .unwrap()
        .push((headers.clone(), form.clone()));
    if header("authorization").as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
        return stripe_error(
            StatusCode::UNAUTHORIZED,
            json!({"type": "invalid_request_error",
                "message": "Invalid API Key provided: sk_test_****"}),
        );
    }
    if let Some(key) = header("idempotency-key")
        && let Some(id) = state.by_idempotency_key.lock().unwrap().get(&key)
    {
        if state.checkout_forms.lock().unwrap().get(&key) != Some(&form) {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                json!({"type": "idempotency_error",
                    "message": format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request.")}),
            );
        }
        let session = state.sessions.lock().unwrap()[id].clone();
        return ok(session);
    }
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    for required in [
        "mode",
        "success_url",
        "line_items[0][price_data][currency]",
        "line_items[0][price_data][unit_amount]",
        "line_items[0][quantity]",
    ] {
        if get(required).is_none() {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                json!({"type": "invalid_request_error", "code": "parameter_missing",
                    "param": required, "message": format!("Missing required param: {required}.")}),
            );
        }
    }
    let currency = get("line_items[0][price_data][currency]").unwrap();
    let unit: i64 = get("line_items[0][price_data][unit_amount]")
        .unwrap()
        .parse()
        .unwrap_or(-1);
    let quantity: i64 = get("line_items[0][quantity]").unwrap().parse().unwrap_or(0);
    let total = unit * quantity;
    if total < 50 {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "code": "amount_too_small",
                "message": format!("The Checkout Session's total amount due must add up to at least $0.50 {currency}")}),
        );
    }
    let mut metadata = serde_json::Map::new();
    for (key, value) in &form {
        if let Some(name) = key
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            metadata.insert(name.to_owned(), value.clone().into());
        }
    }
    let id = state.id("cs_test");
    let session = json!({
        "id": id,
        "object": "checkout.session",
        "amount_subtotal": total,
        "amount_total": total,
        "cancel_url": get("cancel_url"),
        "client_reference_id": get("client_reference_id"),
        "created": now_s(),
        "currency": currency,
        "customer": null,
        "customer_creation": get("customer_creation"),
        "setup_future_usage": get("payment_intent_data[setup_future_usage]"),
        "expires_at": now_s() + 86_400,
        "livemode": false,
        "metadata": metadata,
        "mode": get("mode"),
        "payment_intent": null,
        "payment_status": "unpaid",
        "status": "open",
        "success_url": get("success_url"),
        "url": format!("https://checkout.stripe.com/c/pay/{id}"),
    });
    state
        .sessions
        .lock()
        .unwrap()
        .insert(id.clone(), session.clone());
    if let Some(key) = header("idempotency-key") {
        state
            .checkout_forms
            .lock()
            .unwrap()
            .insert(key.clone(), form);
        state.by_idempotency_key.lock().unwrap().insert(key, id);
    }
    ok(session)
}

/// `POST /v1/payment_intents` with `confirm=true` and `off_session=true`:
/// charges a saved card at once (`status: succeeded`), or answers 402
/// `card_error` / `card_declined` for a declining customer.
async fn create_payment_intent(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let key = request
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {SECRET_KEY}").as_bytes());
    let body = request.into_body().collect().await.unwrap().to_bytes();
    if !authorized {
        return stripe_error(
            StatusCode::UNAUTHORIZED,
            json!({"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****"}),
        );
    }
    if let Some(key) = &key
        && let Some(id) = state.by_idempotency_key.lock().unwrap().get(key)
        && let Some(pi) = state.payment_intents.lock().unwrap().get(id)
    {
        return ok(pi.clone());
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let customer = form.get("customer").cloned().unwrap_or_default();
    let payment_method = form.get("payment_method").cloned().unwrap_or_default();
    let known = state.payment_intents.lock().unwrap().values().any(|pi| {
        pi["customer"] == customer.as_str() && pi["payment_method"] == payment_method.as_str()
    });
    if !known {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "code": "resource_missing", "param": "payment_method",
                "message": format!("No such PaymentMethod: '{payment_method}'")}),
        );
    }
    let amount: i64 = form.get("amount").and_then(|a| a.parse().ok()).unwrap_or(0);
    let id = state.id("pi");
    let mut metadata = serde_json::Map::new();
    for (k, v) in &form {
        if let Some(name) = k
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            metadata.insert(name.to_owned(), v.clone().into());
        }
    }
    let declined = state.declining.lock().unwrap().contains(&customer);
    let pi = json!({"id": id, "object": "payment_intent", "amount": amount,
        "amount_received": if declined { 0 } else { amount },
        "currency": form.get("currency"), "customer": customer, "payment_method": payment_method,
        "off_session": true, "metadata": metadata,
        "status": if declined { "requires_payment_method" } else { "succeeded" }});
    state
        .payment_intents
        .lock()
        .unwrap()
        .insert(id.clone(), pi.clone());
    if let Some(key) = key {
        state.by_idempotency_key.lock().unwrap().insert(key, id);
    }
    if declined {
        return stripe_error(
            StatusCode::PAYMENT_REQUIRED,
            json!({"type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
                "message": "Your card was declined.", "payment_intent": pi}),
        );
    }
    ok(pi)
}

/// `POST /v1/billing/meter_events`: `event_name`, `payload[stripe_customer_id]`
/// and `payload[value]` required; an `identifier` seen before is refused
/// as Stripe does (`resource_already_exists`).
async fn meter_event(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {SECRET_KEY}").as_bytes());
    let body = request.into_body().collect().await.unwrap().to_bytes();
    if !authorized {
        return stripe_error(
            StatusCode::UNAUTHORIZED,
            json!({"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****"}),
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for required in [
        "event_name",
        "payload[stripe_customer_id]",
        "payload[value]",
    ] {
        if !form.contains_key(required) {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                json!({"type": "invalid_request_error", "code": "parameter_missing", "param": required,
                    "message": format!("Missing required param: {required}.")}),
            );
        }
    }
    let mut events = state.meter_events.lock().unwrap();
    let identifier = form
        .get("identifier")
        .cloned()
        .unwrap_or_else(|| state.id("mev"));
    if events
        .iter()
        .any(|e| e.get("identifier") == Some(&identifier))
    {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "code": "resource_already_exists",
                "message": format!("A meter event with identifier {identifier} already exists.")}),
        );
    }
    events.push(form.clone());
    ok(
        json!({"object": "billing.meter_event", "event_name": form["event_name"],
        "identifier": identifier, "livemode": false,
        "payload": {"stripe_customer_id": form["payload[stripe_customer_id]"], "value": form["payload[value]"]},
        "timestamp": form.get("timestamp").and_then(|t| t.parse::<i64>().ok()).unwrap_or_else(now_s)}),
    )
}

fn ok(value: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}
