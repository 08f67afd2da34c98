//! Auto top-up (SPEC §5): a team sets "when the balance falls under
//! `threshold`, charge `amount`" (`PUT /teams/{team}/wallet/auto-top-up`).
//! Every 2 s this node looks at the teams with a rule whose wallet, as the
//! gateway sees it (calls in flight included), is under the threshold. It
//! claims the rule in the database (one node tries, at most once per
//! minute), charges the card the team saved with its last Checkout
//! (Stripe PaymentIntent, off-session, with an idempotency key), and
//! credits a paid charge at once (key `stripe:payment_intent:<id>`, the one
//! the `payment_intent.succeeded` webhook would use too, so it is credited
//! once). The outcome is kept on the rule and sent to the team's webhooks
//! (`wallet.auto_top_up`, `wallet.auto_top_up_failed`).

use std::sync::Arc;
use std::time::Duration;

use gateway::Gateway;
use store::Store;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::stripe::{Charged, StripeClient, credit_payment_intent};

const EVERY: Duration = Duration::from_secs(2);
/// Between two tries for one team.
pub const COOLDOWN_MS: i64 = 60_000;

pub fn spawn(
    store: Store,
    gateway: Gateway,
    stripe: Arc<StripeClient>,
    currency: String,
    wallets_changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
            match round(&store, &gateway, &stripe, &currency).await {
                Ok(true) => wallets_changed.notify_one(),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "auto top-up round failed; retrying"),
            }
        }
    })
}

/// One look at every rule; true when a wallet was credited.
async fn round(
    store: &Store,
    gateway: &Gateway,
    stripe: &StripeClient,
    currency: &str,
) -> store::Result<bool> {
    let mut credited = false;
    for (slug, rule) in store.auto_top_ups().await? {
        let wallet = gateway.wallet(&slug);
        if wallet.available() + wallet.reserved() >= rule.threshold_nanos {
            continue;
        }
        let now = domain::now_ms();
        let mut tx = store.begin().await?;
        if !tx
            .claim_auto_top_up(&rule.team_id, now, COOLDOWN_MS)
            .await?
        {
            continue;
        }
        tx.commit().await?;
        let outcome = match store.stripe_payer(&rule.team_id).await? {
            Some((customer, Some(payment_method))) => {
                let minor = domain::money::to_minor(rule.amount_nanos, currency).unwrap_or(0);
                stripe
                    .charge_saved(
                        &customer,
                        &payment_method,
                        minor,
                        currency,
                        &rule.team_id,
                        &format!("auto-top-up:{}:{now}", rule.team_id),
                    )
                    .await
                    .unwrap_or_else(|error| Charged::Failed(format!("Stripe unreachable: {error}")))
            }
            _ => Charged::Failed(
                "no saved card: pay one top-up through Checkout first (POST /api/v1/teams/{team}/wallet/checkout)"
                    .into(),
            ),
        };
        let (event, error, data) = match outcome {
            Charged::Paid { id, amount_minor } => {
                let amount = domain::money::from_minor(amount_minor, currency).unwrap_or(0);
                if credit_payment_intent(store, &rule.team_id, &id, amount).await? {
                    credited = true;
                }
                tracing::info!(team = %slug, payment_intent = %id, "auto top-up paid");
                (
                    "wallet.auto_top_up",
                    None,
                    serde_json::json!({"team": slug, "amount": domain::money::format(amount),
                        "currency": currency, "payment_intent": id}),
                )
            }
            Charged::Failed(message) => {
                tracing::warn!(team = %slug, %message, "auto top-up failed");
                (
                    "wallet.auto_top_up_failed",
                    Some(message.clone()),
                    serde_json::json!({"team": slug, "amount": domain::money::format(rule.amount_nanos),
                        "currency": currency, "error": message,
                        "retry_after_seconds": COOLDOWN_MS / 1000}),
                )
            }
        };
        let mut tx = store.begin().await?;
        tx.auto_top_up_result(&rule.team_id, error.as_deref())
            .await?;
        let payload = serde_json::json!({
            "id": domain::id::new_id(),
            "type": event,
            "created_at": domain::access::format_time_ms(domain::now_ms()),
            "data": data,
        })
        .to_string();
        tx.enqueue_event(&slug, event, &payload).await?;
        tx.commit().await?;
    }
    Ok(credited)
}
