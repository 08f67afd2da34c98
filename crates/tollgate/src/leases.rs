//! Wallet leases when many nodes share PostgreSQL (SPEC §12): calls on a
//! node spend from the part of each wallet the store granted that node
//! alone (`gateway::money`, `store` `leases.rs`), so the nodes together
//! never spend more than the balance.
//!
//! - A call that finds its node's lease short asks the store for more
//!   ([`StoreLeases`], one transaction, sized for a few calls ahead); it
//!   waits for it while the node is in touch with the store (see
//!   `gateway::pipeline::ensure_lease`).
//! - Every 200 ms one task renews the node's leases (they run out
//!   [`TTL_MS`] after the last renewal, for the other nodes; a renewal
//!   that takes over a second counts as failed). Another, apart so that
//!   renewals never wait behind it, tops up the lease of a wallet under
//!   steady traffic to a second's worth of its calls, and gives back what
//!   a wallet idle for a second still holds, or what is far beyond its
//!   traffic.
//! - A node that has not renewed for [`SPEND_FOR`] (cut off from the
//!   store) spends nothing from its leases (every paid call checks, with
//!   no wait), long before the others may take them: what it spent in
//!   its last seconds reaches the store as charges when it is back (node
//!   clocks must agree within `TTL_MS - SPEND_FOR`); calls get 503
//!   `ledger_unavailable`. A lease that ran out meanwhile is
//!   cut to what is still free when the node renews again.
//! - Quotas and app budgets work the same way with counter leases: a
//!   call counts within its node's grant of the period's limit, asks the
//!   store for more when it is short ([`StoreLeases::grant`]), the
//!   renewals keep the grants with the wallet leases, and the resizing
//!   task tops them up under
//!   steady traffic and gives back what a counter idle for a second still
//!   holds.
//! - At shutdown, once its charges and counts are written, the node gives
//!   its leases back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gateway::Gateway;
use gateway::money::{Counter, LeaseFuture, Leases};
use store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a lease lasts after its renewal, for the other nodes. Long
/// beside [`SPEND_FOR`]: a node cut off from the store may hold charges
/// for what it spent in its last seconds, which reach the store when it
/// is back; until then the others leave its lease alone.
pub const TTL_MS: i64 = 30_000;
/// How long after its last successful renewal a node still spends its
/// leases (checked on every paid call, however long a renewal hangs).
pub const SPEND_FOR: Duration = Duration::from_secs(5);
/// The longest a renewal may take before it counts as failed.
const RENEW_WAIT: Duration = Duration::from_secs(1);
const EVERY: Duration = Duration::from_millis(200);
/// Ticks of spend a lease is sized on (a second).
const WINDOW: usize = 5;

/// Leases from the store, for this node.
pub struct StoreLeases {
    pub store: Store,
    pub node: String,
}

impl Leases for StoreLeases {
    fn adjust(&self, team: &str, delta: i64) -> LeaseFuture<'_> {
        let team = team.to_owned();
        Box::pin(async move {
            self.store
                .adjust_lease(&team, &self.node, delta, domain::now_ms(), TTL_MS)
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn grant(&self, counter: &Counter, delta: i64, limit: i64) -> LeaseFuture<'_> {
        let scope = counter.scope.clone();
        let period_start = counter.period().0;
        let unit = if counter.unit_is_nanos() {
            store::CounterUnit::Nanos
        } else {
            store::CounterUnit::Requests
        };
        Box::pin(async move {
            self.store
                .adjust_counter_lease(
                    &scope,
                    period_start,
                    unit,
                    &self.node,
                    delta,
                    limit,
                    domain::now_ms(),
                    TTL_MS,
                )
                .await
                .map_err(|error| error.to_string())
        })
    }
}

/// Starts the lease tasks; they stop when `shutdown` turns true. Two of
/// them: renewals keep the node's leases spendable and never wait behind
/// resizing, which may wait for a call's own lease transaction.
pub fn spawn(
    store: Store,
    gateway: Gateway,
    node: String,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let lost = Arc::new(AtomicBool::new(false));
    let resizer = tokio::spawn(resize(
        StoreLeases {
            store: store.clone(),
            node: node.clone(),
        },
        gateway.clone(),
        lost.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        renew(&store, &gateway, &node, &lost, shutdown).await;
        let _ = resizer.await;
    })
}

/// Every [`EVERY`], renews the node's leases: spendable for [`SPEND_FOR`]
/// from when the renewal was asked. `lost` says the node stopped
/// spending (no renewal for that long).
async fn renew(
    store: &Store,
    gateway: &Gateway,
    node: &str,
    lost: &AtomicBool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut renewed = Instant::now();
    gateway.leases_renewed(SPEND_FOR);
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let now = domain::now_ms();
        let attempt = Instant::now();
        let renewal = tokio::time::timeout(RENEW_WAIT, store.renew_leases(node, now, TTL_MS))
            .await
            .unwrap_or_else(|_| Err(store::StoreError::Sqlite("the renewal timed out".into())));
        match renewal {
            Ok(changed) => {
                // Spendable for SPEND_FOR from when the renewal was
                // asked (its commit may have come later).
                gateway.leases_renewed(SPEND_FOR.saturating_sub(attempt.elapsed()));
                renewed = attempt;
                for (team, amount) in changed.wallets_cut {
                    tracing::warn!(%team, amount, "a lease that ran out was cut to what is still free");
                    gateway.wallet(&team).add_lease(-amount);
                }
                for (scope, period_start) in changed.counters_lapsed {
                    gateway.counters().grant_lapsed(&scope, period_start);
                }
                if lost.swap(false, Ordering::AcqRel) {
                    tracing::info!("wallet leases renewed again: paid calls are taken");
                }
            }
            Err(error) => {
                if renewed.elapsed() >= SPEND_FOR && !lost.swap(true, Ordering::AcqRel) {
                    tracing::error!(%error, "wallet leases not renewed: this node takes no paid calls until they are");
                }
            }
        }
    }
}

/// Every [`EVERY`] while the node is in touch with the store (not
/// `lost`), sizes its wallet leases and quota and budget grants to its
/// traffic: tops them up to a second's worth under steady calls, gives
/// back what an idle second left or what is far beyond the traffic.
async fn resize(
    leases: StoreLeases,
    gateway: Gateway,
    lost: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut spend: HashMap<Arc<str>, [i64; WINDOW]> = HashMap::new();
    let mut counted: HashMap<Arc<str>, Counted> = HashMap::new();
    let mut tick = 0usize;
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if lost.load(Ordering::Acquire) {
            continue;
        }
        tick = tick.wrapping_add(1);
        resize_wallets(&leases, &gateway, &mut spend, tick).await;
        resize_grants(&gateway, &leases, &mut counted, tick).await;
    }
}

/// Wallets: tops up the lease of a wallet under steady spending to a
/// second's worth, gives back what a wallet idle for a second still
/// holds, or what is far beyond its spending.
async fn resize_wallets(
    leases: &StoreLeases,
    gateway: &Gateway,
    spend: &mut HashMap<Arc<str>, [i64; WINDOW]>,
    tick: usize,
) {
    for wallet in gateway.wallets() {
        let ring = spend.entry(wallet.team.clone()).or_insert([0; WINDOW]);
        ring[tick % WINDOW] = wallet.take_lease_spent().max(0);
        let second: i64 = ring.iter().sum();
        let lease = wallet.lease();
        let delta = if second == 0 && lease > 0 {
            // Idle for a second: all of it goes back.
            -wallet.take_lease(lease)
        } else if lease > second.saturating_mul(4) {
            -wallet.take_lease(lease - second.saturating_mul(2))
        } else if second > 0 && lease < second / 2 {
            second - lease
        } else {
            0
        };
        if delta == 0 {
            continue;
        }
        let adjusted = tokio::time::timeout(RENEW_WAIT, leases.adjust(&wallet.team, delta))
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()));
        match adjusted {
            Ok(granted) if delta > 0 => wallet.add_lease(granted),
            Ok(_) => {}
            Err(error) => {
                if delta < 0 {
                    // Not given back: still this node's to spend.
                    wallet.add_lease(-delta);
                }
                tracing::warn!(team = %wallet.team, %error, "cannot resize a wallet lease");
            }
        }
    }
}

/// What the lease task knows of a counter's recent counting.
struct Counted {
    period_start: i64,
    last: i64,
    ring: [i64; WINDOW],
}

/// Quotas and budgets: tops up the grant of a counter under steady
/// counting to a second's worth, and gives back what a counter that
/// counted nothing for a second still holds.
async fn resize_grants(
    gateway: &Gateway,
    leases: &StoreLeases,
    counted: &mut HashMap<Arc<str>, Counted>,
    tick: usize,
) {
    let counters = gateway.counters().leased();
    let current: std::collections::HashSet<&str> = counters.iter().map(|c| &*c.scope).collect();
    counted.retain(|scope, _| current.contains(&**scope));
    for counter in counters {
        let Some(lease) = &counter.lease else {
            continue;
        };
        let start = counter.period().0;
        let own = counter.own_in_unit();
        let seen = counted.entry(counter.scope.clone()).or_insert(Counted {
            period_start: start,
            last: own,
            ring: [0; WINDOW],
        });
        if seen.period_start != start {
            *seen = Counted {
                period_start: start,
                last: 0,
                ring: [0; WINDOW],
            };
        }
        seen.ring[tick % WINDOW] = (own - seen.last).max(0);
        seen.last = own;
        let second: i64 = seen.ring.iter().sum();
        let headroom = lease.headroom();
        let limit = lease.limit();
        // Idle for a second: what is left goes back; under slow traffic,
        // what is far beyond a second of it (others may need it now).
        let keep = if second == 0 {
            Some(0)
        } else if headroom > second.saturating_mul(4) {
            Some(second.saturating_mul(2))
        } else {
            None
        };
        if let Some(keep) = keep
            && headroom > keep
        {
            let _gate = lease.gate.lock().await;
            let unused = lease.take_beyond(keep);
            if unused == 0 {
                continue;
            }
            match tokio::time::timeout(RENEW_WAIT, leases.grant(&counter, -unused, limit)).await {
                Ok(Ok(total)) => lease.gave_back(total),
                outcome => {
                    lease.put_back(unused);
                    let error = match outcome {
                        Ok(Err(error)) => error,
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(scope = %counter.scope, %error, "cannot give back a grant");
                }
            }
        } else if second > 0 && limit > 0 && headroom < second / 2 {
            let _gate = lease.gate.lock().await;
            let want = second - lease.headroom();
            if want <= 0 {
                continue;
            }
            match tokio::time::timeout(RENEW_WAIT, leases.grant(&counter, want, limit)).await {
                Ok(Ok(total)) => {
                    lease.granted_now(total, 0);
                }
                Ok(Err(error)) => {
                    tracing::warn!(scope = %counter.scope, %error, "cannot top up a grant");
                }
                Err(_) => tracing::warn!(scope = %counter.scope, "a grant top-up timed out"),
            }
        }
    }
}
