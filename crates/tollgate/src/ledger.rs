//! The gateway's side of the ledger, off the hot path.
//!
//! - The **writer** drains the charges the gateway settles (a bounded
//!   queue) and appends them to the ledger in batches, one transaction
//!   each (group commit): every 50 ms it takes up to 5,000 queued charges
//!   (in strict mode, where calls wait for the commit: every 10 ms, 500)
//!   (without waiting on the queue, so settling a charge never wakes
//!   another thread) and appends them per team (`append_batch`: the
//!   wallet row locked and moved once, multi-row `INSERT`s); a
//!   subscription charged 1,000 times a second or more gets one entry per
//!   batch instead of one per call. Each
//!   charge's idempotency key is the charge's own id (not the request id,
//!   which a client may reuse), so a batch retried after a database error
//!   never charges twice. In strict mode the calls waiting on a batch are
//!   told once it commits. At shutdown, after the gateway has finished its
//!   requests, the writer empties the queue before the process exits.
//! - The **sync** brings every other ledger entry (grants, top-ups, other
//!   nodes' charges) into the gateway's in-memory wallets: every 200 ms
//!   (and at once after an admin change on this node) it
//!   reads each wallet's latest sequence number and applies the entries
//!   past the one it saw last. This node's own charges (actor
//!   `gateway:<node id>`) were taken from the wallet when reserved; the
//!   sync only moves past them.
//!
//! Durability window: charges settled but not yet committed are lost if
//! the process is killed; the calls they paid for were answered. That is
//! the batch being gathered (50 ms) plus the one being written (its
//! commit), more when the database falls behind the call rate. Nothing is
//! ever charged twice; `money.durability: strict` loses nothing answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::money::{EntryKind, LedgerEntry};
use gateway::Gateway;
use gateway::money::{Charge, SyncedEntry};
use store::Store;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How often the writer takes charges, and at most how many at a time.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub gather: Duration,
    pub batch: usize,
}

impl Pace {
    /// `money.durability: strict` (calls wait for their charge's commit):
    /// short gathers keep that wait short.
    pub const STRICT: Pace = Pace {
        gather: Duration::from_millis(10),
        batch: 500,
    };
    /// `batched`: the durability window (what a kill loses) against the
    /// database's work per call; one transaction per 50 ms costs a fifth
    /// of one per 10 ms at any rate.
    pub const BATCHED: Pace = Pace {
        gather: Duration::from_millis(50),
        batch: 5_000,
    };
}

/// Charges per second of one subscription from which each batch of its
/// charges is recorded as one entry.
const AGGREGATE_FROM_PER_SECOND: u64 = 1000;

/// Charges per second of each subscription, as the writer sees them: for
/// deciding which ones to record per batch rather than per call.
#[derive(Default)]
struct Rates {
    /// subscription → (second, charges in it, charges in the one before).
    by_subscription: HashMap<String, (i64, u64, u64)>,
}

impl Rates {
    /// Counts `charges` now; true when the subscription runs at
    /// `AGGREGATE_FROM_PER_SECOND` or more.
    fn busy(&mut self, subscription: &str, charges: u64, now_ms: i64) -> bool {
        let second = now_ms / 1000;
        let entry = self
            .by_subscription
            .entry(subscription.to_owned())
            .or_insert((second, 0, 0));
        if entry.0 != second {
            let previous = if entry.0 + 1 == second { entry.1 } else { 0 };
            *entry = (second, 0, previous);
        }
        entry.1 += charges;
        entry.1.max(entry.2) >= AGGREGATE_FROM_PER_SECOND
    }
}
const SYNC_EVERY: Duration = Duration::from_millis(200);

/// This process's name in the ledger's `actor` column.
pub fn node_actor() -> String {
    let id: u32 = rand::random();
    format!("gateway:{id:08x}")
}

/// Brings the gateway's wallets up to date with the ledger once.
pub async fn sync_once(store: &Store, gateway: &Gateway, actor: &str) -> store::Result<()> {
    for head in store.wallet_heads().await? {
        let seen = gateway.wallet_seen_seq(&head.team_slug);
        if head.entries <= seen {
            continue;
        }
        let entries: Vec<SyncedEntry> = store
            .entries_since(&head.team_id, seen)
            .await?
            .into_iter()
            .map(|entry| SyncedEntry {
                seq: entry.seq,
                id: entry.id,
                amount_nanos: entry.amount_nanos,
                own: entry.actor == actor,
            })
            .collect();
        gateway.apply_wallet_entries(&head.team_slug, &entries);
    }
    Ok(())
}

/// Starts the sync loop; it stops when `shutdown` turns true.
/// `wake` makes it sync at once (after an admin change on this node: a
/// grant is spendable immediately).
pub fn spawn_sync(
    store: Store,
    gateway: Gateway,
    actor: String,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SYNC_EVERY) => {}
                () = wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(error) = sync_once(&store, &gateway, &actor).await {
                tracing::warn!(%error, "wallet sync failed; balances on this node may be stale");
            }
        }
    })
}

/// Starts the writer; `drain` tells it the gateway has stopped, so it
/// records what is queued and returns.
pub fn spawn_writer(
    store: Store,
    gateway: Gateway,
    mut charges: mpsc::Receiver<Charge>,
    actor: String,
    export: Option<Arc<crate::export::Export>>,
    pace: Pace,
    drain: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut teams: HashMap<String, String> = HashMap::new();
        let mut rates = Rates::default();
        // Each charge gets its entry id when taken off the queue; a batch
        // retried after an error keeps its ids, so its keys repeat.
        let mut batch: Vec<(String, Charge)> = Vec::with_capacity(pace.batch);
        let mut drain = drain;
        let mut draining = false;
        // The last take filled a batch: more may be queued, so no pause.
        let mut backlog = false;
        loop {
            if batch.is_empty() {
                // Polled on a tick, never awaited per charge: a waiting
                // receiver would be woken (a cross-thread wake-up) by
                // every charge the gateway settles.
                if !draining && !backlog {
                    tokio::select! {
                        () = tokio::time::sleep(pace.gather) => {}
                        _ = &mut drain => draining = true,
                    }
                }
                while batch.len() < pace.batch {
                    match charges.try_recv() {
                        Ok(charge) => batch.push((domain::id::new_id(), charge)),
                        Err(_) => break,
                    }
                }
                backlog = batch.len() == pace.batch;
                // Charges that found the queue full, aggregated per team.
                batch.extend(
                    gateway
                        .take_charge_overflow()
                        .into_iter()
                        .map(|charge| (domain::id::new_id(), charge)),
                );
                if batch.is_empty() {
                    if draining {
                        // Everything queued before the stop is in.
                        return;
                    }
                    continue;
                }
            }
            match record(
                &store,
                &mut teams,
                &batch,
                &actor,
                export.as_deref(),
                &mut rates,
            )
            .await
            {
                Ok(()) => {
                    // Strict durability: the calls waiting on these
                    // charges may answer now.
                    for (_, charge) in batch.drain(..) {
                        if let Some(committed) = charge.committed {
                            let _ = committed.send(());
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, pending = batch.len(), "cannot record charges; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    })
}

async fn record(
    store: &Store,
    teams: &mut HashMap<String, String>,
    batch: &[(String, Charge)],
    actor: &str,
    export: Option<&crate::export::Export>,
    rates: &mut Rates,
) -> store::Result<()> {
    if batch
        .iter()
        .any(|(_, charge)| !teams.contains_key(&*charge.team))
    {
        *teams = store.team_ids().await?.into_iter().collect();
    }
    // Charges by team and subscription; usage events per call.
    let mut usage = Vec::new();
    let mut groups: HashMap<(&str, &str), Vec<(&String, &Charge)>> = HashMap::new();
    for (id, charge) in batch {
        let Some(team_id) = teams.get(&*charge.team) else {
            let request_id = charge.request_id.to_str().unwrap_or_default();
            tracing::error!(team = %charge.team, request_id, "charge for an unknown team dropped");
            continue;
        };
        if let Some(export) = export
            && charge.calls == 1
        {
            usage.extend(export.outbox_rows(id, team_id, charge));
        }
        if charge.amount_nanos == 0 {
            // Metered but free (an included call): a usage event only.
            continue;
        }
        groups
            .entry((team_id.as_str(), &charge.labels.subscription))
            .or_default()
            .push((id, charge));
    }
    // One append per team: the wallet row is locked and moved once. A
    // subscription charged a thousand times a second or more gets one
    // entry per batch: the money is the same, the ledger stays readable and
    // the database keeps up; per-call detail stays in the usage events.
    let mut by_team: HashMap<&str, Vec<LedgerEntry>> = HashMap::new();
    let now = domain::now_ms();
    for ((team_id, subscription), charges) in groups {
        let entries = by_team.entry(team_id).or_default();
        let calls: u64 = charges.iter().map(|(_, c)| c.calls).sum();
        if rates.busy(subscription, calls, now) && charges.len() > 1 {
            let (first_id, first) = charges[0];
            let amount: i64 = charges.iter().map(|(_, c)| c.amount_nanos).sum();
            entries.push(LedgerEntry {
                id: first_id.clone(),
                team_id: team_id.to_owned(),
                kind: EntryKind::Charge,
                amount_nanos: -amount,
                // The first charge's id: a retried batch repeats it.
                idempotency_key: format!("charge:{first_id}"),
                actor: actor.to_owned(),
                reason: Some(format!(
                    "{calls} calls, subscription {subscription} ({} on {})",
                    first.labels.plan, first.labels.service
                )),
                request_id: None,
                created_at_ms: charges
                    .iter()
                    .map(|(_, c)| c.at_ms)
                    .max()
                    .unwrap_or(first.at_ms),
            });
            continue;
        }
        for (id, charge) in charges {
            let request_id = charge.request_id.to_str().unwrap_or_default();
            entries.push(LedgerEntry {
                id: id.clone(),
                team_id: team_id.to_owned(),
                kind: EntryKind::Charge,
                amount_nanos: -charge.amount_nanos,
                // The charge's own id: a client may reuse its X-Request-Id.
                idempotency_key: format!("charge:{id}"),
                actor: actor.to_owned(),
                reason: Some(if charge.calls == 1 {
                    format!("subscription {subscription}")
                } else {
                    format!(
                        "{} calls, aggregated: the charge queue was full",
                        charge.calls
                    )
                }),
                request_id: (!request_id.is_empty()).then(|| request_id.to_owned()),
                created_at_ms: charge.at_ms,
            });
        }
    }
    let mut tx = store.begin().await?;
    for (team_id, entries) in &by_team {
        tx.append_batch(team_id, entries).await?;
    }
    // In the charges' transaction: an event exists exactly when its charge
    // does.
    tx.queue_usage(&usage, domain::now_ms()).await?;
    tx.commit().await
}
