//! Stripe: Checkout sessions for wallet top-ups, and the webhook that
//! credits them (SPEC §6).
//!
//! - [`StripeClient`] creates a Checkout session (`POST
//!   /v1/checkout/sessions`, form-encoded, `Authorization: Bearer
//!   <secret key>`, the caller's `Idempotency-Key` passed on) for one line
//!   item of the top-up amount; the team travels in `client_reference_id`
//!   and `metadata`. The base URL is configurable (`stripe.api_base`) so
//!   tests run against a local fake.
//! - [`StripeWebhook`] serves `POST /_tollgate/webhooks/stripe` on the
//!   gateway listener: the `Stripe-Signature` header (`t=…,v1=…`, several
//!   `v1` accepted) must hold an HMAC-SHA256 of `"<t>.<body>"` under the
//!   endpoint secret (compared in constant time) made within 300 s.
//!   `checkout.session.completed` (and `…async_payment_succeeded`) with
//!   `payment_status: paid` credits the team once: a `top_up` entry keyed
//!   `stripe:checkout:<session id>`, so a replayed or repeated event finds
//!   the entry already there. `charge.refunded` takes back what was newly
//!   refunded (Stripe reports the cumulative `amount_refunded`) as a
//!   `refund` entry, never more than the payment credited.

use std::sync::Arc;
use std::time::Duration;

use admin::money::{CheckoutRequest, CheckoutSession, PaymentError, PaymentProvider};
use domain::money::{EntryKind, LedgerEntry};
use hmac::{Hmac, Mac};
use http::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use store::{Appended, NewEntry, Store, StripePayment};
use tokio::sync::Notify;

/// How old a signature may be.
pub const TOLERANCE_S: i64 = 300;

/// Stripe's REST API.
pub struct StripeClient {
    base: String,
    secret_key: String,
    http: reqwest::Client,
}

impl StripeClient {
    pub fn new(base: &str, secret_key: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            secret_key: secret_key.to_owned(),
            http,
        }
    }

    async fn checkout(&self, request: CheckoutRequest) -> Result<CheckoutSession, PaymentError> {
        let amount_nanos = request.amount_nanos.to_string();
        let minor = request.amount_minor.to_string();
        let currency = request.currency.to_ascii_lowercase();
        let name = format!("Tollgate credit for team {}", request.team_slug);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("mode", "payment")
            // A customer per payer, so that usage can be metered to it.
            .append_pair("customer_creation", "always")
            // …and a card saved for auto top-ups.
            .append_pair("payment_intent_data[setup_future_usage]", "off_session")
            .append_pair("line_items[0][quantity]", "1")
            .append_pair("line_items[0][price_data][currency]", &currency)
            .append_pair("line_items[0][price_data][unit_amount]", &minor)
            .append_pair("line_items[0][price_data][product_data][name]", &name)
            .append_pair("success_url", &request.success_url)
            .append_pair("cancel_url", &request.cancel_url)
            .append_pair("client_reference_id", &request.team_id)
            .append_pair("metadata[tollgate_team_id]", &request.team_id)
            .append_pair("metadata[tollgate_team]", &request.team_slug)
            .append_pair("metadata[tollgate_amount_nanos]", &amount_nanos)
            .append_pair(
                "payment_intent_data[metadata][tollgate_team_id]",
                &request.team_id,
            )
            .finish();
        let mut call = self
            .http
            .post(format!("{}/v1/checkout/sessions", self.base))
            .bearer_auth(&self.secret_key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        // Stripe's keys are the account's: the caller's key is the team's
        // alone, so another team's (or a reused one) never meets it.
        if let Some(key) = &request.idempotency_key {
            call = call.header(
                "idempotency-key",
                format!("tollgate-checkout:{}:{key}", request.team_id),
            );
        }
        let response = call
            .send()
            .await
            .map_err(|error| PaymentError::Unavailable(error.to_string()))?;
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .map_err(|error| PaymentError::Unavailable(format!("unreadable answer: {error}")))?;
        if status.is_client_error() {
            let message = answer["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_owned();
            return Err(if status == StatusCode::UNAUTHORIZED {
                PaymentError::Unavailable(format!("Stripe rejected the secret key: {message}"))
            } else if answer["error"]["type"] == "idempotency_error" {
                PaymentError::KeyReused
            } else {
                PaymentError::Refused(message)
            });
        }
        if !status.is_success() {
            return Err(PaymentError::Unavailable(format!(
                "Stripe answered {status}"
            )));
        }
        match (answer["id"].as_str(), answer["url"].as_str()) {
            (Some(id), Some(url)) => Ok(CheckoutSession {
                id: id.to_owned(),
                url: url.to_owned(),
            }),
            _ => Err(PaymentError::Unavailable(
                "Stripe's answer has no session id or url".into(),
            )),
        }
    }
}

/// How an off-session charge ended.
#[derive(Debug)]
pub enum Charged {
    /// Paid: the PaymentIntent id and the amount received (minor units).
    Paid { id: String, amount_minor: i64 },
    /// Declined or failed; Stripe's message.
    Failed(String),
}

impl StripeClient {
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<(StatusCode, Value), String> {
        let response = request
            .bearer_auth(&self.secret_key)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .map_err(|error| format!("unreadable answer ({status}): {error}"))?;
        Ok((status, answer))
    }

    /// The payment method a PaymentIntent was paid with.
    pub async fn payment_method_of(&self, payment_intent: &str) -> Result<Option<String>, String> {
        let (status, answer) = self
            .call(
                self.http
                    .get(format!("{}/v1/payment_intents/{payment_intent}", self.base)),
            )
            .await?;
        if !status.is_success() {
            return Err(format!("payment intent {payment_intent}: {status}"));
        }
        Ok(answer["payment_method"].as_str().map(str::to_owned))
    }

    /// Charges a saved card without the payer present (auto top-up).
    pub async fn charge_saved(
        &self,
        customer: &str,
        payment_method: &str,
        amount_minor: i64,
        currency: &str,
        team_id: &str,
        idempotency_key: &str,
    ) -> Result<Charged, String> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("amount", &amount_minor.to_string())
            .append_pair("currency", &currency.to_ascii_lowercase())
            .append_pair("customer", customer)
            .append_pair("payment_method", payment_method)
            .append_pair("off_session", "true")
            .append_pair("confirm", "true")
            .append_pair("metadata[tollgate_team_id]", team_id)
            .append_pair("metadata[tollgate_auto_top_up]", "1")
            .finish();
        let (status, answer) = self
            .call(
                self.http
                    .post(format!("{}/v1/payment_intents", self.base))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("idempotency-key", idempotency_key)
                    .body(body),
            )
            .await?;
        if status.is_server_error() {
            return Err(format!("Stripe answered {status}"));
        }
        if status.is_success() && answer["status"] == "succeeded" {
            return Ok(Charged::Paid {
                id: answer["id"].as_str().unwrap_or_default().to_owned(),
                amount_minor: answer["amount_received"]
                    .as_i64()
                    .or_else(|| answer["amount"].as_i64())
                    .unwrap_or(0),
            });
        }
        Ok(Charged::Failed(
            answer["error"]["message"]
                .as_str()
                .map_or_else(|| format!("status {}", answer["status"]), str::to_owned),
        ))
    }
}

impl PaymentProvider for StripeClient {
    fn create_checkout(
        &self,
        request: CheckoutRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<CheckoutSession, PaymentError>> + Send + '_>,
    > {
        Box::pin(self.checkout(request))
    }
}

/// Why a webhook was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Stale,
    Mismatch,
}

/// Checks a `Stripe-Signature` header against `body`.
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now_s: i64,
) -> Result<(), SignatureError> {
    // An empty header is no signature, not a malformed one.
    let header = header
        .filter(|header| !header.trim().is_empty())
        .ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => {
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // `abs_diff`: a timestamp near i64's ends must not overflow.
    if now_s.abs_diff(timestamp) > TOLERANCE_S.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // `verify_slice` compares in constant time.
    if signatures
        .iter()
        .any(|signature| mac.clone().verify_slice(signature).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// `POST /_tollgate/webhooks/stripe`.
pub struct StripeWebhook {
    pub store: Store,
    /// Looks up the card a Checkout saved.
    pub client: Arc<StripeClient>,
    pub secret: String,
    pub currency: String,
    /// Woken after a credit, so the gateway's wallets see it at once.
    pub wallets_changed: Arc<Notify>,
}

fn problem(status: StatusCode, code: &str, detail: &str) -> (StatusCode, String) {
    (
        status,
        json!({"title": "Webhook refused", "status": status.as_u16(), "code": code, "detail": detail})
            .to_string(),
    )
}

impl StripeWebhook {
    async fn handle(&self, headers: http::HeaderMap, body: bytes::Bytes) -> (StatusCode, String) {
        let signature = headers
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok());
        let now_s = domain::now_ms() / 1000;
        if let Err(error) = verify_signature(signature, &body, &self.secret, now_s) {
            tracing::warn!(?error, "stripe webhook refused");
            let (code, detail) = match error {
                SignatureError::Missing => ("signature_missing", "No Stripe-Signature header."),
                SignatureError::Malformed => (
                    "signature_malformed",
                    "The Stripe-Signature header needs t=<timestamp> and v1=<hex signature>.",
                ),
                SignatureError::Stale => (
                    "signature_stale",
                    "The signature's timestamp is more than 300 s from now (a replay, or a clock off).",
                ),
                SignatureError::Mismatch => (
                    "signature_mismatch",
                    "No v1 signature matches the body under this endpoint's secret.",
                ),
            };
            return problem(StatusCode::BAD_REQUEST, code, detail);
        }
        let Ok(event) = serde_json::from_slice::<Value>(&body) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "malformed_event",
                "The body is not JSON.",
            );
        };
        let kind = event["type"].as_str().unwrap_or_default();
        let object = &event["data"]["object"];
        let outcome = match kind {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                self.credit(object).await
            }
            "charge.refunded" => self.refund(object).await,
            "payment_intent.succeeded" if object["metadata"]["tollgate_auto_top_up"] == "1" => {
                let team_id = object["metadata"]["tollgate_team_id"]
                    .as_str()
                    .unwrap_or_default();
                match self.amount_nanos(object, "amount_received") {
                    Ok(amount) => credit_payment_intent(
                        &self.store,
                        team_id,
                        object["id"].as_str().unwrap_or_default(),
                        amount,
                    )
                    .await
                    .map(|credited| json!({"received": true, "duplicate": !credited})),
                    Err(reason) => Ok(json!({"received": true, "ignored": reason})),
                }
            }
            _ => Ok(json!({"received": true, "ignored": kind})),
        };
        match outcome {
            Ok(answer) => {
                self.wallets_changed.notify_one();
                (StatusCode::OK, answer.to_string())
            }
            Err(error) => {
                // Stripe retries a non-2xx answer: right for a database
                // outage.
                tracing::error!(%error, event = %event["id"], "stripe webhook not recorded");
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_recorded",
                    "The event could not be recorded; Stripe will retry it.",
                )
            }
        }
    }

    fn amount_nanos(&self, object: &Value, field: &str) -> Result<i64, String> {
        let currency = object["currency"].as_str().unwrap_or_default();
        if !currency.eq_ignore_ascii_case(&self.currency) {
            return Err(format!(
                "currency '{currency}' is not the deployment's {}",
                self.currency
            ));
        }
        object[field]
            .as_i64()
            .and_then(|minor| domain::money::from_minor(minor, &self.currency))
            .ok_or_else(|| format!("no valid {field}"))
    }

    async fn credit(&self, session: &Value) -> store::Result<Value> {
        let session_id = session["id"].as_str().unwrap_or_default();
        if session["payment_status"] != "paid" {
            // Delayed payment methods: credited on async_payment_succeeded.
            return Ok(json!({"received": true, "ignored": "not paid yet"}));
        }
        let team_id = session["metadata"]["tollgate_team_id"]
            .as_str()
            .or_else(|| session["client_reference_id"].as_str())
            .unwrap_or_default();
        let amount = match self.amount_nanos(session, "amount_total") {
            Ok(amount) if amount > 0 => amount,
            Ok(_) => return Ok(json!({"received": true, "ignored": "nothing paid"})),
            Err(reason) => {
                tracing::error!(session_id, %reason, "stripe checkout not credited");
                return Ok(json!({"received": true, "ignored": reason}));
            }
        };
        // The card saved for auto top-ups (outside the transaction: a
        // call to Stripe). Not fatal: a later Checkout saves one.
        let payment_method = match session["payment_intent"].as_str() {
            Some(payment_intent) => self
                .client
                .payment_method_of(payment_intent)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot read the payment method of a checkout");
                    None
                }),
            None => None,
        };
        if session_id.is_empty() {
            return Ok(json!({"received": true, "ignored": "no session id"}));
        }
        let credited = credit_once(
            &self.store,
            &TopUp {
                team_id,
                key: &format!("stripe:checkout:{session_id}"),
                reason: &format!("Stripe Checkout {session_id}"),
                payment_intent: session["payment_intent"].as_str().unwrap_or(session_id),
                session_id,
                amount_nanos: amount,
                // The customer meter events name, and its card for auto
                // top-ups.
                payer: session["customer"]
                    .as_str()
                    .map(|customer| (customer, payment_method.as_deref())),
            },
        )
        .await?;
        match credited {
            None => {
                tracing::error!(session_id, team_id, "stripe checkout for an unknown team");
                return Ok(json!({"received": true, "ignored": "unknown team"}));
            }
            Some(false) => return Ok(json!({"received": true, "duplicate": true})),
            Some(true) => {}
        }
        tracing::info!(session_id, team_id, amount, "stripe top-up credited");
        Ok(json!({"received": true, "credited": domain::money::format(amount)}))
    }

    async fn refund(&self, charge: &Value) -> store::Result<Value> {
        let charge_id = charge["id"].as_str().unwrap_or_default();
        let payment_intent = charge["payment_intent"].as_str().unwrap_or_default();
        let refunded = match self.amount_nanos(charge, "amount_refunded") {
            Ok(amount) => amount,
            Err(reason) => return Ok(json!({"received": true, "ignored": reason})),
        };
        let mut tx = self.store.begin().await?;
        let Some(payment) = tx.stripe_payment(payment_intent).await? else {
            return Ok(json!({"received": true, "ignored": "not a Tollgate top-up"}));
        };
        let refunded = refunded.min(payment.amount_nanos);
        let delta = refunded - payment.refunded_nanos;
        if delta <= 0 {
            return Ok(json!({"received": true, "duplicate": true}));
        }
        tx.append_entry(NewEntry {
            entry: LedgerEntry {
                id: domain::id::new_id(),
                team_id: payment.team_id.clone(),
                kind: EntryKind::Refund,
                amount_nanos: -delta,
                idempotency_key: format!("stripe:refund:{charge_id}:{refunded}"),
                actor: "stripe".into(),
                reason: Some(format!(
                    "Stripe refund of {charge_id} (Checkout {})",
                    payment.session_id
                )),
                request_id: None,
                created_at_ms: domain::now_ms(),
            },
            // Money already spent stays spent: the balance may go below
            // zero, and the team owes it.
            min_balance_after: None,
        })
        .await?;
        tx.set_stripe_refunded(payment_intent, refunded).await?;
        tx.commit().await?;
        Ok(json!({"received": true, "refunded": domain::money::format(delta)}))
    }
}

/// A paid top-up to credit.
struct TopUp<'a> {
    team_id: &'a str,
    /// The ledger entry's idempotency key.
    key: &'a str,
    reason: &'a str,
    payment_intent: &'a str,
    session_id: &'a str,
    amount_nanos: i64,
    /// (customer, saved card) to remember for the team.
    payer: Option<(&'a str, Option<&'a str>)>,
}

/// Credits a top-up once (by its key) and records the payment for
/// refunds; `None` when the team does not exist, `Some(false)` when it was
/// credited before.
async fn credit_once(store: &Store, top_up: &TopUp<'_>) -> store::Result<Option<bool>> {
    let mut tx = store.begin().await?;
    if tx.team(top_up.team_id).await?.is_none() {
        return Ok(None);
    }
    let now = domain::now_ms();
    let appended = tx
        .append_entry(NewEntry {
            entry: LedgerEntry {
                id: domain::id::new_id(),
                team_id: top_up.team_id.to_owned(),
                kind: EntryKind::TopUp,
                amount_nanos: top_up.amount_nanos,
                idempotency_key: top_up.key.to_owned(),
                actor: "stripe".into(),
                reason: Some(top_up.reason.to_owned()),
                request_id: None,
                created_at_ms: now,
            },
            min_balance_after: None,
        })
        .await?;
    if let Appended::Existing(_) = appended {
        return Ok(Some(false));
    }
    if let Some((customer, card)) = top_up.payer {
        tx.set_stripe_customer(top_up.team_id, customer, card, now)
            .await?;
    }
    tx.record_stripe_payment(
        &StripePayment {
            payment_intent: top_up.payment_intent.to_owned(),
            session_id: top_up.session_id.to_owned(),
            team_id: top_up.team_id.to_owned(),
            amount_nanos: top_up.amount_nanos,
            refunded_nanos: 0,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(true))
}

/// Credits a paid PaymentIntent (an auto top-up) once, whether the
/// charge's answer or Stripe's webhook reports it first. Returns whether
/// this call recorded it.
pub async fn credit_payment_intent(
    store: &Store,
    team_id: &str,
    payment_intent: &str,
    amount_nanos: i64,
) -> store::Result<bool> {
    if payment_intent.is_empty() || amount_nanos <= 0 {
        return Ok(false);
    }
    let credited = credit_once(
        store,
        &TopUp {
            team_id,
            key: &format!("stripe:payment_intent:{payment_intent}"),
            reason: &format!("auto top-up, Stripe {payment_intent}"),
            payment_intent,
            session_id: payment_intent,
            amount_nanos,
            payer: None,
        },
    )
    .await?;
    Ok(credited == Some(true))
}

impl gateway::Hook for StripeWebhook {
    fn call(
        &self,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (StatusCode, String)> + Send + '_>>
    {
        Box::pin(self.handle(headers, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, body: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
        mac.update(format!("{t}.{body}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn signatures() {
        let body = r#"{"id":"evt_1"}"#;
        let good = sign("whsec_x", 1000, body);
        let header = format!("t=1000,v1={},v1={good}", "00".repeat(32));
        assert_eq!(
            verify_signature(Some(&header), body.as_bytes(), "whsec_x", 1100),
            Ok(())
        );
        assert_eq!(
            verify_signature(Some(&header), b"{\"id\":\"evt_2\"}", "whsec_x", 1100),
            Err(SignatureError::Mismatch),
            "tampered body"
        );
        assert_eq!(
            verify_signature(Some(&header), body.as_bytes(), "whsec_y", 1100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(Some(&header), body.as_bytes(), "whsec_x", 1301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(Some("v1=ab"), body.as_bytes(), "whsec_x", 1000),
            Err(SignatureError::Malformed)
        );
        // Timestamps at i64's ends are stale, not an overflow.
        for t in [i64::MIN, i64::MAX] {
            let header = format!("t={t},v1={}", "00".repeat(32));
            assert_eq!(
                verify_signature(Some(&header), body.as_bytes(), "whsec_x", 1000),
                Err(SignatureError::Stale)
            );
        }
        assert_eq!(
            verify_signature(None, body.as_bytes(), "whsec_x", 1000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(Some(" "), body.as_bytes(), "whsec_x", 1000),
            Err(SignatureError::Missing)
        );
    }
}
