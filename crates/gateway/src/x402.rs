//! Per-request payment with x402 v2 (SPEC §6), for services that set
//! `x402`.
//!
//! A call without an API key (or with a `PAYMENT-SIGNATURE`) to such a
//! service pays for itself:
//!
//! 1. No `PAYMENT-SIGNATURE` → 402 `payment_required` with
//!    `PAYMENT-REQUIRED: base64(PaymentRequired)` (`x402Version: 2`,
//!    `resource`, `accepts: [PaymentRequirements]`).
//! 2. The payload (base64 JSON `PaymentPayload`) must be version 2 and
//!    accept exactly what the service asks (scheme, network, amount,
//!    asset, payTo); it must not be in use or already settled on this node;
//!    then the facilitator's `POST /verify` must find it valid. Otherwise
//!    402 with a fresh `PAYMENT-REQUIRED` whose `error` says why.
//! 3. The call is forwarded. An upstream answer below 500 is settled
//!    (`POST /settle`): success adds `PAYMENT-RESPONSE:
//!    base64(SettlementResponse)`; a failed settlement answers 402 with the
//!    failed `PAYMENT-RESPONSE` instead of the upstream's answer. A 5xx or
//!    a failed connection is never settled, and the payload may be used
//!    again. A settlement whose outcome is unknown (no answer, or one
//!    that cannot be read) answers 502 and keeps the payment claimed: it
//!    may have been paid, so it is never settled twice.
//!
//! A payment is claimed (by its identity: payer and nonce, see
//! [`payment_identity`]) before it is verified, in this node's memory and
//! then in the store through [`Claims`], until its authorization can no
//! longer be valid: while a call holds it or once it is settled, no other
//! call, on any node sharing the store or after a restart, is served for
//! it (the upstream never does the work twice for one payment). A call
//! that is not settled gives its claims back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use domain::code::Code;
use domain::model::X402Spec;
use http::{HeaderName, HeaderValue, Request, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::body::{GatewayBody, RequestBody};
use crate::refusal::Refusal;

pub static PAYMENT_REQUIRED: HeaderName = HeaderName::from_static("payment-required");
pub static PAYMENT_SIGNATURE: HeaderName = HeaderName::from_static("payment-signature");
pub static PAYMENT_RESPONSE: HeaderName = HeaderName::from_static("payment-response");

/// The facilitator's HTTP API (`POST /verify`, `POST /settle`), provided
/// by the binary. Each takes `{x402Version, paymentPayload,
/// paymentRequirements}` and answers the facilitator's JSON, or why it
/// could not be reached.
pub trait Facilitator: Send + Sync {
    fn verify(&self, body: Value) -> BoxFuture<'_>;
    fn settle(&self, body: Value) -> BoxFuture<'_>;
}

pub type BoxFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + 'a>>;

/// Where payments are claimed for every node sharing the store and across
/// restarts, provided by the binary. Identities are hex SHA-256 digests.
pub trait Claims: Send + Sync {
    /// `Ok(true)` when the caller now holds `identity` until `until_ms`;
    /// `Ok(false)` when another call holds it (in flight or settled);
    /// `Err` when the claim could not be made.
    fn claim(&self, identity: String, now_ms: i64, until_ms: i64) -> ClaimFuture<'_, bool>;
    /// Gives back a claim whose payment was not settled.
    fn release(&self, identity: String) -> ClaimFuture<'_, ()>;
}

pub type ClaimFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// A service's x402 terms, compiled.
#[derive(Debug)]
pub struct X402Rt {
    /// The `PaymentRequirements` offered (camelCase, as on the wire).
    pub requirements: Value,
    pub description: String,
}

impl X402Rt {
    pub fn compile(spec: &X402Spec, description: &str) -> Self {
        let mut requirements = json!({
            "scheme": spec.scheme,
            "network": spec.network,
            "amount": spec.amount,
            "asset": spec.asset,
            "payTo": spec.pay_to,
            "maxTimeoutSeconds": spec.max_timeout_seconds,
        });
        if let Some(extra) = &spec.extra {
            requirements["extra"] = extra.clone();
        }
        Self {
            requirements,
            description: description.to_owned(),
        }
    }

    /// Whether `accepted` (from a payload) is what this service asks.
    fn matches(&self, accepted: &Value) -> bool {
        ["scheme", "network", "amount", "asset", "payTo"]
            .iter()
            .all(|field| accepted[*field] == self.requirements[*field])
    }
}

/// Payloads in flight or settled on this node: digest → when to forget.
#[derive(Debug, Default)]
pub struct Used {
    by_digest: Mutex<HashMap<[u8; 32], i64>>,
}

impl Used {
    /// Claims `digest` until `until_ms`; false when it is claimed already.
    fn claim(&self, digest: [u8; 32], until_ms: i64, now_ms: i64) -> bool {
        let mut map = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, until| *until > now_ms);
        }
        match map.get(&digest) {
            Some(until) if *until > now_ms => false,
            _ => {
                map.insert(digest, until_ms);
                true
            }
        }
    }

    fn release(&self, digest: &[u8; 32]) {
        self.by_digest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }
}

/// The 402 of step 1 or 2: `PAYMENT-REQUIRED` plus a problem body.
pub fn payment_required(x402: &X402Rt, resource_url: &str, error: &str, detail: String) -> Refusal {
    let required = json!({
        "x402Version": 2,
        "error": error,
        "resource": {"url": resource_url, "description": x402.description, "mimeType": ""},
        "accepts": [x402.requirements],
    });
    let mut refusal = Refusal::new(Code::PaymentRequired, detail);
    refusal.extra = vec![
        ("x402Version", 2.into()),
        ("error", error.into()),
        ("accepts", json!([x402.requirements])),
    ];
    if let Ok(value) = HeaderValue::from_str(&STANDARD.encode(required.to_string())) {
        refusal = refusal.with_header(PAYMENT_REQUIRED.clone(), value);
    }
    refusal
}

/// A verified payment, settled once the upstream has answered.
pub struct Pending {
    body: Value,
    digest: [u8; 32],
    used: Arc<Used>,
    /// The store's claim, when there is one (given back with the node's).
    claims: Option<Arc<dyn Claims>>,
    settled: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Not settled (a refusal, a 5xx, a broken connection): the payer
        // may use the payload again.
        if self.settled {
            return;
        }
        self.used.release(&self.digest);
        if let Some(claims) = self.claims.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let identity = hex::encode(self.digest);
            runtime.spawn(async move {
                if let Err(error) = claims.release(identity).await {
                    // It runs out with the authorization: the payer signs
                    // a new payment meanwhile.
                    tracing::warn!(%error, "an unsettled x402 payment's claim could not be given back");
                }
            });
        }
    }
}

/// Steps 1 and 2: the payment a request carries, verified.
/// What identifies a payment however its header is written (spacing, key
/// order, padding): the transfer authorization's payer and nonce on its
/// network (EIP-3009: one transfer per payer and nonce), else its
/// signature, else the payload itself with its keys sorted.
fn payment_identity(payload: &Value) -> [u8; 32] {
    let inner = &payload["payload"];
    let authorization = &inner["authorization"];
    let mut hasher = Sha256::new();
    if let (Some(from), Some(nonce)) = (
        authorization["from"].as_str(),
        authorization["nonce"].as_str(),
    ) {
        let network = payload["accepted"]["network"].as_str().unwrap_or_default();
        for part in [
            "authorization",
            network,
            &from.to_ascii_lowercase(),
            &nonce.to_ascii_lowercase(),
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
    } else if let Some(signature) = inner["signature"].as_str() {
        hasher.update(b"signature\0");
        hasher.update(signature.to_ascii_lowercase().as_bytes());
    } else {
        hasher.update(b"payload\0");
        hasher.update(canonical(inner).as_bytes());
    }
    hasher.finalize().into()
}

/// JSON with every object's keys sorted, whatever order it came in.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .map(|key| format!("{}:{}", Value::String(key.clone()), canonical(&map[key])))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

pub async fn verify(
    x402: &X402Rt,
    facilitator: Option<&dyn Facilitator>,
    (used, claims): (&Arc<Used>, Option<&Arc<dyn Claims>>),
    request: &Request<RequestBody>,
    resource_url: &str,
) -> Result<Pending, Refusal> {
    let Some(header) = request.headers().get(&PAYMENT_SIGNATURE) else {
        return Err(payment_required(
            x402,
            resource_url,
            "PAYMENT-SIGNATURE header is required",
            format!(
                "This call costs {} of asset {} on {}, paid per request with x402: sign the PaymentRequirements in the PAYMENT-REQUIRED header and send the payment as PAYMENT-SIGNATURE, or call with an API key.",
                x402.requirements["amount"].as_str().unwrap_or_default(),
                x402.requirements["asset"].as_str().unwrap_or_default(),
                x402.requirements["network"].as_str().unwrap_or_default(),
            ),
        ));
    };
    let refuse =
        |error: &str, detail: &str| payment_required(x402, resource_url, error, detail.to_owned());
    let payload: Value = STANDARD
        .decode(header.as_bytes())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(Value::is_object)
        .ok_or_else(|| {
            refuse(
                "invalid_payload",
                "PAYMENT-SIGNATURE must be base64 (standard alphabet) of a PaymentPayload JSON object.",
            )
        })?;
    if payload["x402Version"] != 2 {
        return Err(refuse(
            "invalid_x402_version",
            "This gateway speaks x402 version 2: set x402Version to 2.",
        ));
    }
    if !x402.matches(&payload["accepted"]) {
        return Err(refuse(
            "invalid_payment_requirements",
            "The payment's `accepted` requirements differ from what this service asks (scheme, network, amount, asset, payTo): pay the requirements in PAYMENT-REQUIRED.",
        ));
    }
    let Some(facilitator) = facilitator else {
        return Err(Refusal::new(
            Code::InternalError,
            "Per-request payment is offered but no x402 facilitator is configured (x402.facilitator_url).",
        ));
    };
    let now_ms = domain::now_ms();
    let valid_before_ms = payload["payload"]["authorization"]["validBefore"]
        .as_str()
        .and_then(|s| s.parse::<i64>().ok())
        .map(|s| s.saturating_mul(1000));
    let timeout_ms = x402.requirements["maxTimeoutSeconds"]
        .as_i64()
        .unwrap_or(60)
        * 1000;
    // Remembered at least until the authorization expires.
    let until = valid_before_ms
        .unwrap_or(0)
        .max(now_ms + timeout_ms)
        .min(now_ms + 7 * 86_400_000);
    let digest = payment_identity(&payload);
    let used_already = || {
        refuse(
            "invalid_transaction_state",
            "This payment was already used (or is being used by another call): sign a new one.",
        )
    };
    if !used.claim(digest, until, now_ms) {
        return Err(used_already());
    }
    // From here on, dropping `pending` gives back what was claimed.
    let mut pending = Pending {
        body: json!({
            "x402Version": 2,
            "paymentPayload": payload,
            "paymentRequirements": x402.requirements,
        }),
        digest,
        used: used.clone(),
        claims: None,
        settled: false,
    };
    if let Some(claims) = claims {
        match claims.claim(hex::encode(digest), now_ms, until).await {
            Ok(true) => pending.claims = Some(claims.clone()),
            Ok(false) => return Err(used_already()),
            Err(error) => {
                tracing::warn!(%error, "x402 payment claim failed");
                return Err(Refusal::new(
                    Code::InternalError,
                    "The gateway could not record the payment before using it; nothing was paid. Retry shortly.",
                ));
            }
        }
    }
    let answer = facilitator
        .verify(pending.body.clone())
        .await
        .map_err(|error| {
            tracing::warn!(%error, "x402 facilitator unreachable (verify)");
            Refusal::new(
                Code::UpstreamError,
                "The payment facilitator could not be reached; nothing was paid. Retry shortly.",
            )
        })?;
    if answer["isValid"] != true {
        let reason = answer["invalidReason"]
            .as_str()
            .unwrap_or("invalid_payload");
        return Err(refuse(
            reason,
            &format!(
                "The facilitator refused the payment: {reason}. Sign a new payment for the requirements in PAYMENT-REQUIRED."
            ),
        ));
    }
    Ok(pending)
}

/// Step 3: settles a verified payment for an answered call. On success the
/// response gets `PAYMENT-RESPONSE`; on failure the 402 replaces it.
pub async fn settle(
    mut pending: Pending,
    facilitator: Option<&dyn Facilitator>,
    x402: &X402Rt,
    resource_url: &str,
    mut response: Response<GatewayBody>,
) -> Result<Response<GatewayBody>, Refusal> {
    let Some(facilitator) = facilitator else {
        return Err(Refusal::new(Code::InternalError, "No x402 facilitator."));
    };
    let answer = facilitator.settle(pending.body.clone()).await;
    let settlement = match answer {
        Ok(answer) => answer,
        Err(error) => {
            // No answer, or one that cannot be read: the payment may have
            // gone through. It stays claimed, so it is never settled (nor
            // served) again.
            pending.settled = true;
            tracing::warn!(%error, "x402 settlement outcome unknown (facilitator unreachable or its answer unreadable)");
            return Err(Refusal::new(
                Code::UpstreamError,
                "The payment facilitator did not confirm settling the payment, which may have been paid. This payment stays used and will not be settled again: check it with the facilitator (payer and nonce) before signing a new one.",
            ));
        }
    };
    let encoded = HeaderValue::from_str(&STANDARD.encode(settlement.to_string()));
    if settlement["success"] == true {
        pending.settled = true;
        if let Ok(value) = encoded {
            response
                .headers_mut()
                .insert(PAYMENT_RESPONSE.clone(), value);
        }
        return Ok(response);
    }
    let reason = settlement["errorReason"]
        .as_str()
        .unwrap_or("unexpected_settle_error")
        .to_owned();
    let mut refusal = payment_required(
        x402,
        resource_url,
        &reason,
        format!(
            "The payment could not be settled: {reason}. Nothing was paid; sign a new payment."
        ),
    );
    if let Ok(value) = encoded {
        refusal = refusal.with_header(PAYMENT_RESPONSE.clone(), value);
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_claimed_once_until_released_or_expired() {
        let used = Used::default();
        let digest = [7; 32];
        assert!(used.claim(digest, 1_000, 0));
        assert!(!used.claim(digest, 1_000, 500), "in use");
        used.release(&digest);
        assert!(used.claim(digest, 1_000, 600), "released: usable again");
        assert!(used.claim(digest, 3_000, 1_001), "expired: forgotten");
    }

    #[test]
    fn a_payment_is_known_however_its_header_is_written() {
        let payload: Value = serde_json::from_str(
            r#"{"x402Version": 2, "accepted": {"network": "eip155:84532"},
                "payload": {"signature": "0xAB", "authorization": {"from": "0xF00", "nonce": "0x01", "value": "10"}}}"#,
        )
        .unwrap();
        let reordered: Value = serde_json::from_str(
            r#"{"payload": {"authorization": {"value": "10", "nonce": "0x01", "from": "0xf00"}, "signature": "0xab"},
                "accepted": {"network": "eip155:84532"}, "x402Version": 2}"#,
        )
        .unwrap();
        assert_eq!(payment_identity(&payload), payment_identity(&reordered));
        let mut other = payload.clone();
        other["payload"]["authorization"]["nonce"] = json!("0x02");
        assert_ne!(payment_identity(&payload), payment_identity(&other));
        // Without an authorization: the payload's content, not its spelling.
        let bare = json!({"payload": {"b": 1, "a": [2, {"d": 3, "c": 4}]}});
        let bare_reordered = json!({"payload": {"a": [2, {"c": 4, "d": 3}], "b": 1}});
        assert_eq!(payment_identity(&bare), payment_identity(&bare_reordered));
    }
}
