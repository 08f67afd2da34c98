//! A fake x402 v2 facilitator (`POST /verify`, `POST /settle`,
//! `GET /supported`) for scheme `exact` on EVM networks, with a pretend
//! chain: balances per payer, and each authorization nonce usable once.
//!
//! Real signatures are EIP-712; here a payload's `signature` is valid when
//! it equals [`signature_of`] its authorization (SHA-256 of its fields), so
//! tests can forge bad ones. Verdicts use the spec's reason codes
//! (`insufficient_funds`, `invalid_exact_evm_payload_authorization_valid_before`,
//! `invalid_transaction_state`…), answered with 200 as the reference
//! facilitator does.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Default)]
struct State {
    /// Payer → atomic units; unknown payers hold plenty.
    balances: Mutex<HashMap<String, u128>>,
    used_nonces: Mutex<HashSet<String>>,
    verifies: AtomicUsize,
    settles: AtomicUsize,
    /// Settle, then answer 502 instead of the result (an answer lost on
    /// the way: the payment went through, the gateway cannot know).
    lose_settle_answers: std::sync::atomic::AtomicBool,
}

pub struct FakeFacilitator {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeFacilitator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The fake's "signature" of an authorization.
pub fn signature_of(authorization: &Value) -> String {
    let mut hasher = Sha256::new();
    for field in ["from", "to", "value", "validAfter", "validBefore", "nonce"] {
        hasher.update(authorization[field].as_str().unwrap_or_default().as_bytes());
        hasher.update(b"|");
    }
    format!("0x{}", hex::encode(hasher.finalize()))
}

/// A `PAYMENT-SIGNATURE` header value paying `requirements` (the object
/// from `PAYMENT-REQUIRED`'s `accepts`) from `payer`, valid for
/// `valid_for_s` seconds (negative: already expired). `tweak` may change
/// the payload before it is signed and encoded.
pub fn payment(
    requirements: &Value,
    payer: &str,
    valid_for_s: i64,
    tweak: impl FnOnce(&mut Value),
) -> String {
    static NONCE: AtomicUsize = AtomicUsize::new(0);
    let now = now_s() as i64;
    let nonce = format!(
        "0x{:064x}",
        (now as u128) << 32 | NONCE.fetch_add(1, Ordering::Relaxed) as u128
    );
    let mut payload = json!({
        "x402Version": 2,
        "resource": {"url": "http://test"},
        "accepted": requirements,
        "payload": {
            "authorization": {
                "from": payer,
                "to": requirements["payTo"],
                "value": requirements["amount"],
                "validAfter": (now - 10).to_string(),
                "validBefore": (now + valid_for_s).to_string(),
                "nonce": nonce,
            }
        },
        "extensions": {},
    });
    tweak(&mut payload);
    let signature = signature_of(&payload["payload"]["authorization"]);
    if payload["payload"]["signature"].is_null() {
        payload["payload"]["signature"] = signature.into();
    }
    base64::engine::general_purpose::STANDARD.encode(payload.to_string())
}

impl FakeFacilitator {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let (addr, task) =
            crate::serve_http(state.clone(), |state: Arc<State>, request| async move {
                handle(&state, request).await
            })
            .await;
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_balance(&self, payer: &str, atomic: u128) {
        self.state
            .balances
            .lock()
            .unwrap()
            .insert(payer.to_owned(), atomic);
    }

    pub fn balance(&self, payer: &str) -> u128 {
        *self
            .state
            .balances
            .lock()
            .unwrap()
            .get(payer)
            .unwrap_or(&u128::MAX)
    }

    /// `/verify` calls answered.
    pub fn verifies(&self) -> usize {
        self.state.verifies.load(Ordering::SeqCst)
    }

    /// Payments settled (successful `/settle` calls).
    pub fn settles(&self) -> usize {
        self.state.settles.load(Ordering::SeqCst)
    }

    /// From now on `/settle` settles as usual but answers 502 (`true`),
    /// or answers again (`false`).
    pub fn lose_settle_answers(&self, lose: bool) {
        self.state.lose_settle_answers.store(lose, Ordering::SeqCst);
    }
}

/// Why a payment is not valid now, in the spec's words.
fn check(state: &State, body: &Value) -> Result<(String, String, u128), (&'static str, String)> {
    let payload = &body["paymentPayload"];
    let requirements = &body["paymentRequirements"];
    let authorization = &payload["payload"]["authorization"];
    let payer = authorization["from"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let fail = |reason: &'static str| Err((reason, payer.clone()));
    if payload["x402Version"] != 2 {
        return fail("invalid_x402_version");
    }
    if requirements["scheme"] != "exact" || payload["accepted"]["scheme"] != "exact" {
        return fail("unsupported_scheme");
    }
    if !requirements["network"]
        .as_str()
        .is_some_and(|n| n.starts_with("eip155:"))
        || payload["accepted"]["network"] != requirements["network"]
    {
        return fail("invalid_network");
    }
    if !authorization.is_object() || payer.is_empty() {
        return fail("invalid_payload");
    }
    if payload["payload"]["signature"].as_str() != Some(&signature_of(authorization)) {
        return fail("invalid_exact_evm_payload_signature");
    }
    if authorization["to"] != requirements["payTo"] {
        return fail("invalid_exact_evm_payload_recipient_mismatch");
    }
    if authorization["value"] != requirements["amount"] {
        return fail("invalid_exact_evm_payload_authorization_value");
    }
    let number = |field: &str| {
        authorization[field]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
    };
    let now = now_s();
    if number("validAfter").is_none_or(|t| t > now) {
        return fail("invalid_exact_evm_payload_authorization_valid_after");
    }
    if number("validBefore").is_none_or(|t| t <= now) {
        return fail("invalid_exact_evm_payload_authorization_valid_before");
    }
    let value: u128 = authorization["value"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let balance = *state
        .balances
        .lock()
        .unwrap()
        .get(&payer)
        .unwrap_or(&u128::MAX);
    if balance < value {
        return fail("insufficient_funds");
    }
    let nonce = authorization["nonce"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if state.used_nonces.lock().unwrap().contains(&nonce) {
        return fail("invalid_transaction_state");
    }
    Ok((payer, nonce, value))
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let network = body["paymentRequirements"]["network"].clone();
    let answer = match path.as_str() {
        "/supported" => json!({
            "kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
                      {"x402Version": 2, "scheme": "exact", "network": "eip155:8453"}],
            "extensions": [],
            "signers": {"eip155:*": ["0x0000000000000000000000000000000000fac111"]},
        }),
        "/verify" => {
            state.verifies.fetch_add(1, Ordering::SeqCst);
            match check(state, &body) {
                Ok((payer, ..)) => json!({"isValid": true, "payer": payer}),
                Err((reason, payer)) => {
                    json!({"isValid": false, "invalidReason": reason, "payer": payer})
                }
            }
        }
        "/settle" => {
            // Check and spend under one lock of the nonces: the chain
            // accepts each nonce once.
            let outcome = check(state, &body);
            match outcome {
                Ok((payer, nonce, value))
                    if state.used_nonces.lock().unwrap().insert(nonce.clone()) =>
                {
                    let mut balances = state.balances.lock().unwrap();
                    let balance = balances.entry(payer.clone()).or_insert(u128::MAX);
                    if *balance != u128::MAX {
                        *balance -= value;
                    }
                    state.settles.fetch_add(1, Ordering::SeqCst);
                    let transaction =
                        format!("0x{}", hex::encode(Sha256::digest(nonce.as_bytes())));
                    json!({"success": true, "payer": payer, "transaction": transaction, "network": network})
                }
                Ok((payer, ..)) => {
                    json!({"success": false, "errorReason": "invalid_transaction_state",
                    "payer": payer, "transaction": "", "network": network})
                }
                Err((reason, payer)) => json!({"success": false, "errorReason": reason,
                    "payer": payer, "transaction": "", "network": network}),
            }
        }
        _ => json!({"error": "not found"}),
    };
    if path == "/settle" && state.lose_settle_answers.load(Ordering::SeqCst) {
        let mut lost = Response::new(Full::new(Bytes::from_static(b"bad gateway")));
        *lost.status_mut() = hyper::StatusCode::BAD_GATEWAY;
        return lost;
    }
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}
