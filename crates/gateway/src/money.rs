//! Wallets on the hot path: what a team can still spend, held in memory.
//!
//! Each team's [`WalletRt`] holds `available` nano-units: the ledger's sum
//! as last synced, less this node's charges, less the reservations of
//! calls in flight. A call reserves its price with one compare-and-swap on
//! that counter (no lock, nothing shared between wallets) before it is
//! forwarded; [`Reservation::settle`] turns it into a charge once the
//! upstream has answered below 500, and dropping the reservation (a
//! refusal later in the pipeline, a 5xx, a broken connection) gives the
//! money back. Charges go to the [`ChargeSink`], a bounded queue the
//! binary drains into the ledger in batches; when it is full, the charge
//! is added to its wallet's overflow (two atomics) and recorded later as
//! one aggregated entry ([`Wallets::take_overflow`]): memory stays bounded
//! and no money is lost, only per-call detail in the ledger.
//!
//! The ledger's other entries (grants, top-ups, other nodes' charges)
//! reach `available` through [`Wallets::apply_entries`], which the
//! binary calls with every entry past each wallet's last seen sequence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// One team's spendable money on this node.
#[derive(Debug)]
pub struct WalletRt {
    pub team: Arc<str>,
    available: AtomicI64,
    /// Charges settled while the queue was full, not yet taken by the
    /// ledger writer: their sum and how many calls.
    overflow_nanos: AtomicI64,
    overflow_calls: std::sync::atomic::AtomicU64,
    /// The ledger sequence number applied so far (the control plane's
    /// sync only; the hot path never reads it).
    seen_seq: Mutex<i64>,
}

impl WalletRt {
    fn new(team: &str) -> Self {
        Self {
            team: team.into(),
            available: AtomicI64::new(0),
            overflow_nanos: AtomicI64::new(0),
            overflow_calls: std::sync::atomic::AtomicU64::new(0),
            seen_seq: Mutex::new(0),
        }
    }

    /// What can be spent now.
    pub fn available(&self) -> i64 {
        self.available.load(Ordering::Acquire)
    }

    /// Takes `amount` if that much is available; else says how much there is.
    fn reserve(&self, amount: i64) -> Result<(), i64> {
        let mut current = self.available.load(Ordering::Acquire);
        loop {
            if current < amount {
                return Err(current);
            }
            match self.available.compare_exchange_weak(
                current,
                current - amount,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    fn give_back(&self, amount: i64) {
        self.available.fetch_add(amount, Ordering::AcqRel);
    }
}

/// A charge made on this node, on its way to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// Settling one allocates nothing beyond its place in the queue: names are
/// shared (`Arc<str>`, `HeaderValue`), and the ledger writer gives each
/// charge its idempotency key when it takes it off the queue.
pub struct Charge {
    /// The team's slug.
    pub team: Arc<str>,
    /// Positive: the price taken.
    pub amount_nanos: i64,
    /// The call's request id (for people; a client may send the same one
    /// twice, so it is not the ledger's key). Empty for an aggregate.
    pub request_id: http::HeaderValue,
    pub subscription_id: Arc<str>,
    pub at_ms: i64,
    /// Calls this charge pays for: 1, or more for an aggregated overflow.
    pub calls: u64,
}

/// Where settled charges go: a bounded queue drained by the ledger writer
/// (never awaited on the hot path; see [`Reservation::settle`]).
pub type ChargeSink = tokio::sync::mpsc::Sender<Charge>;

/// Money held for one call until it is settled or dropped.
#[derive(Debug)]
pub struct Reservation {
    wallet: Arc<WalletRt>,
    amount: i64,
    subscription_id: Arc<str>,
    settled: bool,
}

impl Reservation {
    /// Charges the call: the reserved amount stays taken and a charge is
    /// queued for the ledger. Returns what is left to spend.
    pub fn settle(mut self, sink: Option<&ChargeSink>, request_id: &http::HeaderValue) -> i64 {
        self.settled = true;
        if let Some(sink) = sink {
            let charge = Charge {
                team: self.wallet.team.clone(),
                amount_nanos: self.amount,
                request_id: request_id.clone(),
                subscription_id: self.subscription_id.clone(),
                at_ms: domain::now_ms(),
                calls: 1,
            };
            match sink.try_send(charge) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    self.wallet
                        .overflow_nanos
                        .fetch_add(self.amount, Ordering::AcqRel);
                    self.wallet.overflow_calls.fetch_add(1, Ordering::AcqRel);
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!(team = %self.wallet.team, "ledger writer gone: charge not recorded");
                }
            }
        }
        self.wallet.available()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.wallet.give_back(self.amount);
        }
    }
}

/// Every team's wallet on this node, kept across snapshot reloads.
#[derive(Debug, Default)]
pub struct Wallets {
    by_team: Mutex<HashMap<String, Arc<WalletRt>>>,
}

/// A ledger entry as the sync applies it.
#[derive(Debug, Clone)]
pub struct SyncedEntry {
    pub seq: i64,
    pub amount_nanos: i64,
    /// Entries this node wrote itself (its charges) were counted when
    /// they were reserved: only the sequence number moves.
    pub own: bool,
}

impl Wallets {
    /// The team's wallet (made on first use, compile time only).
    pub fn get(&self, team: &str) -> Arc<WalletRt> {
        let mut map = self.by_team.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(team.to_owned())
            .or_insert_with(|| Arc::new(WalletRt::new(team)))
            .clone()
    }

    /// Applies a team's ledger entries past its last seen sequence number;
    /// entries already seen are skipped, so a repeated sync changes nothing.
    pub fn apply_entries(&self, team: &str, entries: &[SyncedEntry]) {
        let wallet = self.get(team);
        let mut seen = wallet.seen_seq.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            if entry.seq <= *seen {
                continue;
            }
            if !entry.own {
                wallet
                    .available
                    .fetch_add(entry.amount_nanos, Ordering::AcqRel);
            }
            *seen = entry.seq;
        }
    }

    /// Takes every wallet's overflow (charges settled while the queue was
    /// full) as one aggregated charge per wallet.
    pub fn take_overflow(&self) -> Vec<Charge> {
        let wallets: Vec<Arc<WalletRt>> = self
            .by_team
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut charges = Vec::new();
        for wallet in wallets {
            let amount = wallet.overflow_nanos.swap(0, Ordering::AcqRel);
            if amount == 0 {
                continue;
            }
            // A settle between the two swaps counts its call in the next
            // round; the amounts are exact.
            let calls = wallet.overflow_calls.swap(0, Ordering::AcqRel);
            charges.push(Charge {
                team: wallet.team.clone(),
                amount_nanos: amount,
                request_id: http::HeaderValue::from_static(""),
                subscription_id: "".into(),
                at_ms: domain::now_ms(),
                calls,
            });
        }
        charges
    }

    /// The last ledger sequence number applied for `team`.
    pub fn seen_seq(&self, team: &str) -> i64 {
        *self
            .get(team)
            .seen_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Reserves `price` from `wallet` for one call, or says what there is.
pub fn reserve(
    wallet: &Arc<WalletRt>,
    price: i64,
    subscription_id: &Arc<str>,
) -> Result<Reservation, i64> {
    wallet.reserve(price)?;
    Ok(Reservation {
        wallet: wallet.clone(),
        amount: price,
        subscription_id: subscription_id.clone(),
        settled: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_reservations_never_overspend() {
        let wallets = Wallets::default();
        wallets.apply_entries(
            "acme",
            &[SyncedEntry {
                seq: 1,
                amount_nanos: 100,
                own: false,
            }],
        );
        let wallet = wallets.get("acme");
        let subscription: Arc<str> = "s".into();
        let granted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if let Ok(reservation) = reserve(&wallet, 1, &subscription) {
                            granted.fetch_add(1, Ordering::Relaxed);
                            reservation.settle(None, &http::HeaderValue::from_static("r"));
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 100);
        assert_eq!(wallet.available(), 0);
    }

    #[test]
    fn dropped_reservations_give_the_money_back_and_entries_apply_once() {
        let wallets = Wallets::default();
        let entries = [
            SyncedEntry {
                seq: 1,
                amount_nanos: 50,
                own: false,
            },
            SyncedEntry {
                seq: 2,
                amount_nanos: -10,
                own: true,
            },
        ];
        wallets.apply_entries("acme", &entries);
        wallets.apply_entries("acme", &entries);
        let wallet = wallets.get("acme");
        assert_eq!(
            wallet.available(),
            50,
            "own charge not counted twice, replays skipped"
        );
        assert_eq!(wallets.seen_seq("acme"), 2);
        let subscription: Arc<str> = "s".into();
        let reservation = reserve(&wallet, 30, &subscription).unwrap();
        assert_eq!(wallet.available(), 20);
        assert_eq!(reserve(&wallet, 30, &subscription).unwrap_err(), 20);
        drop(reservation);
        assert_eq!(wallet.available(), 50);
    }
}
