//! The x402 facilitator client: `POST <facilitator>/verify` and
//! `POST <facilitator>/settle` with `{x402Version, paymentPayload,
//! paymentRequirements}` (the gateway's `x402.rs` builds the body and reads
//! the answer). A facilitator answers its verdict as JSON; an answer with
//! neither `isValid` nor `success`, or no answer, counts as unreachable.
//! And [`StoreClaims`]: the store's record of payments in use or settled.

use std::time::Duration;

use gateway::x402::{BoxFuture, ClaimFuture, Claims, Facilitator};
use serde_json::Value;
use store::Store;

pub struct FacilitatorClient {
    base: String,
    http: reqwest::Client,
}

impl FacilitatorClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn call(&self, path: &str, verdict: &str, body: Value) -> Result<Value, String> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .map_err(|error| format!("{path}: unreadable answer ({status}): {error}"))?;
        // A refusal may come with a 4xx; it is still a verdict.
        if answer.get(verdict).is_some_and(Value::is_boolean) {
            Ok(answer)
        } else {
            Err(format!("{path}: answered {status} without `{verdict}`"))
        }
    }
}

impl Facilitator for FacilitatorClient {
    fn verify(&self, body: Value) -> BoxFuture<'_> {
        Box::pin(self.call("/verify", "isValid", body))
    }

    fn settle(&self, body: Value) -> BoxFuture<'_> {
        Box::pin(self.call("/settle", "success", body))
    }
}

/// x402 payment claims in the store: shared by every node on it, kept
/// across restarts.
pub struct StoreClaims(pub Store);

impl Claims for StoreClaims {
    fn claim(&self, identity: String, now_ms: i64, until_ms: i64) -> ClaimFuture<'_, bool> {
        Box::pin(async move {
            self.0
                .claim_x402_payment(&identity, now_ms, until_ms)
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn release(&self, identity: String) -> ClaimFuture<'_, ()> {
        Box::pin(async move {
            self.0
                .release_x402_payment(&identity)
                .await
                .map_err(|error| error.to_string())
        })
    }
}
