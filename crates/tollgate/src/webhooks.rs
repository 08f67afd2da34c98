//! Delivers the webhook outbox: each event queued by an admin change (in
//! that change's transaction) is POSTed to the team's endpoint, signed with
//! HMAC-SHA256, and retried with exponential backoff until it succeeds or
//! runs out of attempts.
//!
//! Signature (like Stripe's): `Tollgate-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>" keyed with the endpoint's secret>`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use store::{Delivery, Store};
use tokio::sync::watch;

/// Attempts before a delivery is marked `failed`.
pub const MAX_ATTEMPTS: i64 = 8;
/// Deliveries taken per round.
const BATCH: i64 = 32;
const POLL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The `Tollgate-Signature` value for `body` sent at `timestamp_s`.
pub fn signature(secret: &str, timestamp_s: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp_s},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Backoff after `attempts` failed tries: 1 s, 2 s, 4 s … capped at 10 min,
/// with up to 10 % jitter so retries from many events spread out.
fn backoff_ms(attempts: i64) -> i64 {
    let base = 1000_i64
        .saturating_mul(1 << attempts.clamp(0, 20))
        .min(600_000);
    use rand::Rng;
    base + rand::rng().random_range(0..=base / 10)
}

async fn deliver(
    client: &reqwest::Client,
    delivery: &Delivery,
) -> (bool, Option<i64>, Option<String>) {
    let now_s = domain::now_ms() / 1000;
    let sent = client
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("user-agent", "tollgate-webhooks")
        .header("tollgate-event", &delivery.event)
        .header("tollgate-delivery", &delivery.id)
        .header(
            "tollgate-signature",
            signature(&delivery.secret, now_s, &delivery.payload),
        )
        .body(delivery.payload.clone())
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = i64::from(response.status().as_u16());
            let ok = response.status().is_success();
            (
                ok,
                Some(status),
                (!ok).then(|| format!("the endpoint answered {status}")),
            )
        }
        Err(error) => (false, None, Some(error.to_string())),
    }
}

async fn round(
    store: &Store,
    secrets: &store::secrets::MasterKey,
    client: &reqwest::Client,
) -> Result<(), store::StoreError> {
    let due = store
        .due_deliveries(domain::now_ms(), BATCH, secrets)
        .await?;
    for delivery in due {
        // Other nodes poll the same outbox: only the one that claims the
        // delivery sends it. The lease outlasts the request's timeout.
        let lease_ms = i64::try_from(TIMEOUT.as_millis()).unwrap_or(10_000) * 3;
        if !store
            .claim_delivery(&delivery, domain::now_ms(), lease_ms)
            .await?
        {
            continue;
        }
        let (delivered, status, error) = deliver(client, &delivery).await;
        let attempts = delivery.attempts + 1;
        let next = (!delivered && attempts < MAX_ATTEMPTS)
            .then(|| domain::now_ms() + backoff_ms(attempts - 1));
        if !delivered {
            tracing::warn!(
                webhook = %delivery.webhook_id,
                event = %delivery.event,
                attempts,
                error = error.as_deref().unwrap_or_default(),
                "webhook delivery failed"
            );
        }
        store
            .record_delivery(&delivery.id, delivered, status, error.as_deref(), next)
            .await?;
    }
    Ok(())
}

pub fn spawn(
    store: Store,
    secrets: std::sync::Arc<store::secrets::MasterKey>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot build the webhook client; webhooks are not delivered");
                return;
            }
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(error) = round(&store, &secrets, &client).await {
                tracing::warn!(%error, "webhook outbox unreadable; retrying");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_and_body() {
        // Reference value computed with Python:
        // hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("whsec_test", 1_700_000_000, "{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
        assert_ne!(
            signature("whsec_test", 1_700_000_000, "{}"),
            signature("whsec_test", 1_700_000_001, "{}")
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!((1000..=1100).contains(&backoff_ms(0)));
        assert!((4000..=4400).contains(&backoff_ms(2)));
        assert!(backoff_ms(30) <= 660_000);
    }
}
