//! Subscription periods and usage counters, off the hot path.
//!
//! - **Renewals**: every second, subscriptions whose period has ended are
//!   renewed (the next period's fee charged from the team's wallet;
//!   `subscription.renewed`), expire when renewal is off
//!   (`subscription.expired`), or become `past_due` when the wallet cannot
//!   pay (`subscription.past_due`). Past-due subscriptions are retried
//!   each second, as soon as the wallet on this node can pay. A fee is
//!   first reserved in the node's in-memory wallet (so it competes fairly
//!   with calls in flight), then appended under the key
//!   `fee:<subscription>:<period start>`: two nodes renewing the same
//!   subscription charge it once. Every change is audited (actor
//!   `system:billing`) and bumps the config version, so gateways see the
//!   new period or status within a second.
//! - **Usage**: every 200 ms this node's quota and budget counters that
//!   changed are written to `usage_counters` (absolute values under this
//!   node's name), and the other nodes' rows written since the last look
//!   are applied to the gateway's counters.

use std::sync::Arc;
use std::time::Duration;

use domain::access::{AuditEntry, Subscription, SubscriptionStatus};
use domain::billing::Period;
use gateway::Gateway;
use gateway::money::Reservation;
use store::{Fee, Store, Usage};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

const RENEW_EVERY: Duration = Duration::from_secs(1);
const USAGE_EVERY: Duration = Duration::from_millis(200);
/// Rows written this long before the last look are read again, so a row
/// committed late (or a counter made after its rows) is not missed.
const USAGE_LOOKBACK_MS: i64 = 10_000;
/// Periods older than this are not read at start.
const USAGE_HORIZON_MS: i64 = 400 * 86_400_000;
const ACTOR: &str = "system:billing";

/// Starts the renewal loop.
pub fn spawn_renewals(
    store: Store,
    gateway: Gateway,
    node: String,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match renew_due(&store, &gateway, &node, domain::now_ms()).await {
                Ok(0) => {}
                Ok(_) => changed.notify_one(),
                Err(error) => tracing::warn!(%error, "subscription renewals failed; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(RENEW_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Handles every due subscription once; returns how many changed.
pub async fn renew_due(
    store: &Store,
    gateway: &Gateway,
    node: &str,
    now_ms: i64,
) -> store::Result<usize> {
    let mut changed = 0;
    let (legacy, due): (Vec<_>, Vec<_>) = store
        .due_subscriptions(now_ms, 500)
        .await?
        .into_iter()
        .partition(|s| s.status == SubscriptionStatus::Active && s.period_end_ms.is_none());
    if !legacy.is_empty() {
        changed += adopt(store, legacy, now_ms).await?;
    }
    for subscription in due {
        if renew(store, gateway, node, subscription, now_ms).await? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Gives active subscriptions made before periods existed the period they
/// are in (no fee), all in one transaction: an upgrade with many of them
/// is one configuration change, not one per subscription.
async fn adopt(store: &Store, legacy: Vec<Subscription>, now_ms: i64) -> store::Result<usize> {
    let mut tx = store.begin().await?;
    let mut adopted = 0;
    for subscription in legacy {
        let Some(plan) = tx
            .plan(&subscription.service_id, &subscription.plan_id)
            .await?
        else {
            continue;
        };
        let anchor = subscription.created_at_ms;
        let (start, end) =
            domain::billing::period_containing(plan.spec.period_alignment, anchor, now_ms);
        let period = Period {
            start_ms: start,
            end_ms: end,
            anchor_ms: anchor,
            trial_end_ms: None,
            fee_nanos: 0,
        };
        let before = subscription.clone();
        let mut after = subscription;
        tx.enter_period(&mut after, &period, ACTOR, now_ms, true)
            .await?;
        audit(
            &mut tx,
            "subscription.adopt_period",
            &before,
            &after,
            now_ms,
        )
        .await?;
        adopted += 1;
    }
    tx.commit().await?;
    Ok(adopted)
}

/// Audits one change made by this task.
async fn audit(
    tx: &mut store::WriteTx,
    action: &str,
    before: &Subscription,
    after: &Subscription,
    now_ms: i64,
) -> store::Result<()> {
    let entry = AuditEntry {
        id: domain::id::new_id(),
        at_ms: now_ms,
        actor: ACTOR.to_owned(),
        action: action.to_owned(),
        object_kind: "subscription".to_owned(),
        object_id: after.id.clone(),
        team: Some(after.consumer_team.clone()),
        before: serde_json::to_value(before).ok(),
        after: serde_json::to_value(after).ok(),
        request_id: String::new(),
    };
    tx.insert_audit(&entry, after.provider_team.as_deref())
        .await
}

/// What happens to one due subscription.
enum Step {
    Expire,
    /// Enter this period if its fee can be paid.
    Renew(Period),
}

async fn renew(
    store: &Store,
    gateway: &Gateway,
    node: &str,
    subscription: Subscription,
    now_ms: i64,
) -> store::Result<bool> {
    let Some(plan) = store
        .plan(&subscription.service_id, &subscription.plan_id)
        .await?
    else {
        return Ok(false);
    };
    let step = match (
        subscription.status,
        subscription.period_start_ms.zip(subscription.period_end_ms),
    ) {
        (SubscriptionStatus::Active, Some(_)) if !subscription.auto_renew => Step::Expire,
        (status, Some(period)) => Step::Renew(domain::billing::period_to_pay(
            &plan.spec,
            status == SubscriptionStatus::PastDue,
            period,
            subscription.anchor_ms,
            subscription.trial_end_ms,
            now_ms,
        )),
        (_, None) => return Ok(false),
    };
    let before = subscription.clone();
    let mut after = subscription;
    // Reserve a fee in this node's wallet first: it competes with calls in
    // flight, and a wallet that cannot pay costs no database write.
    let mut held = None;
    if let Step::Renew(period) = &step
        && period.fee_nanos > 0
    {
        let wallet = gateway.wallet(&after.consumer_team);
        let labels = gateway::money::Labels::subscription(&after.id);
        let mut reservation = Reservation::debit(&wallet, &labels);
        if reservation.take_wallet(period.fee_nanos).is_ok() {
            held = Some(reservation);
        } else if before.status == SubscriptionStatus::PastDue {
            return Ok(false);
        }
    }
    let mut tx = store.begin().await?;
    // Another node may have handled it since it was read: what it charged
    // then is not charged again for the period after.
    let current = tx.subscription(&before.id).await?;
    if current.is_none_or(|current| current.updated_at_ms != before.updated_at_ms) {
        return Ok(false);
    }
    let (action, event) = match step {
        Step::Expire => {
            after.status = SubscriptionStatus::Expired;
            after.updated_at_ms = now_ms;
            tx.put_subscription(&after).await?;
            ("subscription.expire", Some("subscription.expired"))
        }
        Step::Renew(period) if period.fee_nanos > 0 && held.is_none() => {
            after.status = SubscriptionStatus::PastDue;
            after.period_start_ms = Some(period.start_ms);
            after.period_end_ms = Some(period.end_ms);
            after.anchor_ms = Some(period.anchor_ms);
            after.updated_at_ms = now_ms;
            tx.put_subscription(&after).await?;
            ("subscription.past_due", Some("subscription.past_due"))
        }
        Step::Renew(period) => {
            let fee = tx
                .enter_period(&mut after, &period, node, now_ms, true)
                .await?;
            match (fee, held) {
                // This node's entry: the wallet sync skips it, the
                // reservation stays taken.
                (Fee::Paid, Some(held)) => {
                    held.settle(
                        None,
                        &http::HeaderValue::from_static(""),
                        gateway::money::Outcome::default(),
                    );
                }
                (Fee::Short { .. }, _) if before.status == SubscriptionStatus::PastDue => {
                    return Ok(false);
                }
                // Already paid (another node), short, or free: anything
                // held goes back when dropped.
                _ => {}
            }
            if after.status == SubscriptionStatus::Active {
                ("subscription.renew", Some("subscription.renewed"))
            } else {
                ("subscription.past_due", Some("subscription.past_due"))
            }
        }
    };
    audit(&mut tx, action, &before, &after, now_ms).await?;
    if let Some(event) = event {
        tx.notify_subscription(event, &after).await?;
    }
    tx.commit().await?;
    tracing::info!(subscription = %after.id, action, status = after.status.as_str(), "billing");
    Ok(true)
}

/// Starts the usage loop; at shutdown it writes what is left.
pub fn spawn_usage(
    store: Store,
    gateway: Gateway,
    node: String,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut since = 0;
        let mut stopping = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(USAGE_EVERY) => {}
                _ = shutdown.changed(), if !stopping => stopping = true,
            }
            if stopping {
                // Calls still finishing are counted by the last write,
                // which `flush_usage` does after the gateway stops.
                return;
            }
            if let Err(error) = flush_usage(&store, &gateway, &node).await {
                tracing::warn!(%error, "cannot record usage counters; retrying");
            }
            match read_usage(&store, &gateway, &node, since).await {
                Ok(next) => since = next,
                Err(error) => tracing::warn!(%error, "cannot read other nodes' usage"),
            }
        }
    })
}

/// Writes this node's changed counters.
pub async fn flush_usage(store: &Store, gateway: &Gateway, node: &str) -> store::Result<()> {
    let changed = gateway.take_changed_counters();
    if changed.is_empty() {
        return Ok(());
    }
    let rows: Vec<Usage> = changed
        .into_iter()
        .map(|c| Usage {
            scope: c.scope.to_string(),
            period_start_ms: c.period_start_ms,
            requests: i64::try_from(c.requests).unwrap_or(i64::MAX),
            nanos: c.nanos,
        })
        .collect();
    let mut tx = store.begin().await?;
    tx.put_usage(node, &rows, domain::now_ms()).await?;
    tx.commit().await
}

/// Applies other nodes' counters written after `since` (minus a
/// look-back); returns the next `since`.
pub async fn read_usage(
    store: &Store,
    gateway: &Gateway,
    node: &str,
    since: i64,
) -> store::Result<i64> {
    let now = domain::now_ms();
    let from = if since == 0 {
        0
    } else {
        since - USAGE_LOOKBACK_MS
    };
    for row in store
        .usage_of_others(node, from, now - USAGE_HORIZON_MS)
        .await?
    {
        gateway.apply_remote_usage(
            &row.node,
            &row.usage.scope,
            row.usage.period_start_ms,
            u64::try_from(row.usage.requests).unwrap_or(0),
            row.usage.nanos,
        );
    }
    Ok(now)
}
