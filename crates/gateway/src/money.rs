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
//!
//! With many nodes sharing the store ([`Wallets::set_leased`]), a call
//! also takes its price from the node's **lease** of the wallet: the part
//! of the balance the store granted this node alone (migration 0020).
//! `available` still tells the team's balance as this node knows it; the
//! lease is what this node may spend of it without asking. A call that
//! finds the lease short waits for one lease transaction
//! ([`Leases::adjust`]); the binary renews the node's leases, tops them up
//! under steady traffic and gives back what goes unused. A node that could
//! not renew its leases in time stops spending them (503
//! `ledger_unavailable`) until it can.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use domain::billing::BudgetPeriod;

/// One team's spendable money on this node.
#[derive(Debug)]
pub struct WalletRt {
    pub team: Arc<str>,
    available: AtomicI64,
    /// Held by calls in flight on this node (already out of `available`).
    reserved: AtomicI64,
    /// Charges settled while the queue was full, not yet taken by the
    /// ledger writer: their sum and how many calls.
    overflow_nanos: AtomicI64,
    overflow_calls: AtomicU64,
    /// The ledger sequence number applied so far (the control plane's
    /// sync only; the hot path never reads it).
    seen_seq: Mutex<i64>,
    /// Ledger entries (by id) already taken from `available` here before
    /// they were committed (an admin debit held in memory first): the
    /// sync moves past them without taking them again.
    own_ids: Mutex<Vec<String>>,
    /// What is left of this node's lease (calls only).
    lease: AtomicI64,
    /// Many nodes: the monotonic ms until which this node may spend its
    /// leases (shared by its wallets; moved on by each renewal).
    lease_until: Option<Arc<AtomicU64>>,
    /// Taken by calls since the lease task last looked (its spend rate).
    lease_spent: AtomicI64,
    /// One lease transaction at a time for this wallet's short calls.
    pub(crate) lease_gate: tokio::sync::Mutex<()>,
    /// Lease transactions of short calls so far, and the last of them
    /// that found the store with less to grant than asked (see
    /// [`Self::dry_since`]).
    lease_rounds: AtomicU64,
    lease_dry_round: AtomicU64,
}

/// Why a wallet could not hold an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// The balance is short: what is available.
    Credit(i64),
    /// The balance would do, but this node's lease of it is short (many
    /// nodes): a lease transaction may fix it.
    Lease(i64),
    /// This node could not renew its leases: it spends nothing now.
    LeaseLost(i64),
}

impl Short {
    /// What the wallet has available (for the 402's `balance`).
    pub fn available(self) -> i64 {
        match self {
            Short::Credit(available) | Short::Lease(available) | Short::LeaseLost(available) => {
                available
            }
        }
    }
}

impl WalletRt {
    fn new(team: &str, lease_until: Option<Arc<AtomicU64>>) -> Self {
        Self {
            team: team.into(),
            available: AtomicI64::new(0),
            reserved: AtomicI64::new(0),
            overflow_nanos: AtomicI64::new(0),
            overflow_calls: AtomicU64::new(0),
            seen_seq: Mutex::new(0),
            own_ids: Mutex::new(Vec::new()),
            lease: AtomicI64::new(0),
            lease_until,
            lease_spent: AtomicI64::new(0),
            lease_gate: tokio::sync::Mutex::new(()),
            lease_rounds: AtomicU64::new(0),
            lease_dry_round: AtomicU64::new(0),
        }
    }

    /// The lease transactions of short calls so far (a call reads it
    /// before it waits for [`Self::lease_gate`]).
    pub(crate) fn lease_round(&self) -> u64 {
        self.lease_rounds.load(Ordering::Acquire)
    }

    /// A short call's lease transaction ended (under the gate); `dry`: the
    /// store granted less than it was asked.
    pub(crate) fn lease_asked(&self, dry: bool) {
        let round = self.lease_rounds.fetch_add(1, Ordering::AcqRel) + 1;
        if dry {
            self.lease_dry_round.store(round, Ordering::Release);
        }
    }

    /// Whether a lease transaction that ended after round `seen` found the
    /// store dry: a call that waited meanwhile and is still short is
    /// refused without asking again (a burst on an empty wallet is one
    /// transaction, not one per call).
    pub(crate) fn dry_since(&self, seen: u64) -> bool {
        self.lease_dry_round.load(Ordering::Acquire) > seen
    }

    /// Many nodes: whether calls spend from this node's lease.
    pub fn is_leased(&self) -> bool {
        self.lease_until.is_some()
    }

    /// What is left of this node's lease.
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Acquire)
    }

    /// Adds `amount` (granted by the store, or given back to it when
    /// negative) to this node's lease.
    pub fn add_lease(&self, amount: i64) {
        self.lease.fetch_add(amount, Ordering::AcqRel);
    }

    /// Takes up to `most` of the lease out (to give back to the store);
    /// returns what was taken.
    pub fn take_lease(&self, most: i64) -> i64 {
        let mut current = self.lease.load(Ordering::Acquire);
        loop {
            let taken = most.min(current).max(0);
            if taken == 0 {
                return 0;
            }
            match self.lease.compare_exchange_weak(
                current,
                current - taken,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return taken,
                Err(actual) => current = actual,
            }
        }
    }

    /// What calls took from the lease since the last look.
    pub fn take_lease_spent(&self) -> i64 {
        self.lease_spent.swap(0, Ordering::AcqRel)
    }

    /// Whether this node may spend its leases now (renewed recently).
    pub fn lease_valid(&self) -> bool {
        self.lease_until
            .as_ref()
            .is_some_and(|until| crate::upstream::monotonic_ms() < until.load(Ordering::Acquire))
    }

    /// Says that the ledger entry `id` is already out of `available`.
    pub fn counted_here(&self, id: &str) {
        self.own_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_owned());
    }

    /// What can be spent now.
    pub fn available(&self) -> i64 {
        self.available.load(Ordering::Acquire)
    }

    /// What calls in flight on this node hold.
    pub fn reserved(&self) -> i64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Takes `amount` if that much is available (and, for a call on a
    /// leased wallet, left in the lease); else says what is short.
    fn reserve(&self, amount: i64, call: bool) -> Result<(), Short> {
        if call && self.is_leased() {
            // The lease is the store's word that this much is this node's
            // to spend: `available` (this node's view of the balance,
            // which may lag a top-up made elsewhere) only follows.
            if !self.lease_valid() {
                return Err(Short::LeaseLost(self.available()));
            }
            if take(&self.lease, amount).is_err() {
                return Err(Short::Lease(self.available()));
            }
            self.available.fetch_sub(amount, Ordering::AcqRel);
            self.lease_spent.fetch_add(amount, Ordering::AcqRel);
            return Ok(());
        }
        take(&self.available, amount).map_err(Short::Credit)
    }

    fn give_back(&self, amount: i64, call: bool) {
        self.available.fetch_add(amount, Ordering::AcqRel);
        if call && self.is_leased() {
            self.lease.fetch_add(amount, Ordering::AcqRel);
            self.lease_spent.fetch_sub(amount, Ordering::AcqRel);
        }
    }
}

/// Takes `amount` from `counter` if it holds that much; else what it holds.
fn take(counter: &AtomicI64, amount: i64) -> Result<(), i64> {
    let mut current = counter.load(Ordering::Acquire);
    loop {
        if current < amount {
            return Err(current);
        }
        match counter.compare_exchange_weak(
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

/// A charge made on this node, on its way to the ledger.
#[derive(Debug)]
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
    /// What the call was (for the ledger's reason and the usage event).
    pub labels: Arc<Labels>,
    /// The upstream's status and the time to its answer (usage events).
    pub status: u16,
    pub latency_ms: u64,
    pub at_ms: i64,
    /// Calls this charge pays for: 1, or more for an aggregated overflow.
    pub calls: u64,
    /// `money.durability: strict`: told once the charge is committed.
    pub committed: Option<tokio::sync::oneshot::Sender<()>>,
    /// AI calls: the model and the tokens paid for (usage events).
    pub tokens: Option<Box<TokenUnits>>,
}

/// How the upstream answered a settled call.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub status: u16,
    pub latency_ms: u64,
    /// AI calls: what the call used.
    pub tokens: Option<Box<TokenUnits>>,
}

/// What an AI call used, as its usage event reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenUnits {
    pub provider: String,
    pub model: String,
    pub input: u64,
    pub output: u64,
    /// Of `input`, the tokens read from the provider's prompt cache.
    pub cached_input: u64,
}

/// Names of a metered call: made once per subscription when the snapshot
/// is compiled, shared by its calls.
#[derive(Debug, Default)]
pub struct Labels {
    pub subscription: Arc<str>,
    pub app: Box<str>,
    pub service: Box<str>,
    pub plan: Box<str>,
}

impl Labels {
    /// Labels that name only a subscription.
    pub fn subscription(id: &str) -> Arc<Self> {
        Arc::new(Self {
            subscription: id.into(),
            ..Self::default()
        })
    }
}

/// `money.durability: strict`: the longest a call waits for its charge's
/// commit before it is answered anyway (the store does not answer).
pub const STRICT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where settled charges go: a bounded queue drained by the ledger writer
/// (never awaited on the hot path; see [`Reservation::settle`]).
pub type ChargeSink = tokio::sync::mpsc::Sender<Charge>;

/// What one call holds until it is settled or dropped: its price in the
/// team's wallet, its place in the subscription's quota, its price in the
/// app's budget.
#[derive(Debug)]
pub struct Reservation {
    wallet: Arc<WalletRt>,
    amount: i64,
    labels: Arc<Labels>,
    /// Queue a charge (for the usage export) even at no price.
    export: bool,
    /// The subscription's counter, with this call counted in it; and,
    /// many nodes, the period start when the call took its place from the
    /// node's grant.
    request: Option<Arc<Counter>>,
    request_grant: Option<i64>,
    /// The app's budget counter, with this much counted in it (and taken
    /// from the node's grant, many nodes), in the period starting then.
    budget: Option<(Arc<Counter>, i64, i64)>,
    /// A call (spends from the node's lease, many nodes), not a fee or
    /// an admin debit (those come out of what no lease holds).
    call: bool,
    settled: bool,
}

impl Reservation {
    /// An empty reservation for a call (`labels`) paid from `wallet`; the
    /// pay phase adds to it step by step, and a refusal on the way drops
    /// it, giving back what the earlier steps took. With `export`, the
    /// call is queued for the usage export even when it costs nothing.
    pub fn new(wallet: &Arc<WalletRt>, labels: &Arc<Labels>, export: bool) -> Self {
        Self {
            wallet: wallet.clone(),
            amount: 0,
            labels: labels.clone(),
            export,
            request: None,
            request_grant: None,
            budget: None,
            call: true,
            settled: false,
        }
    }

    /// A hold for a debit that is not a call (a subscription fee, an
    /// admin adjustment): the same, but never from the node's lease.
    pub fn debit(wallet: &Arc<WalletRt>, labels: &Arc<Labels>) -> Self {
        let mut hold = Self::new(wallet, labels, false);
        hold.call = false;
        hold
    }

    /// Counts the call in `counter`; returns the calls counted before it.
    pub fn count_request(&mut self, counter: &Arc<Counter>) -> u64 {
        let before = counter.add_request();
        self.request = Some(counter.clone());
        before
    }

    /// Counts the call in a quota of `included` calls: where it stands
    /// in the quota. Else (many nodes) says why the node's grant is short.
    pub fn count_request_within(
        &mut self,
        counter: &Arc<Counter>,
        included: u64,
    ) -> Result<QuotaPlace, GrantShort> {
        let start = counter.period().0;
        let granted = match counter.take_grant(1) {
            Ok(()) => {
                self.request_grant = counter.lease.as_ref().map(|_| start);
                true
            }
            Err(GrantShort::Denied) => false,
            Err(short) => return Err(short),
        };
        let before = self.count_request(counter);
        Ok(match &counter.lease {
            // Many nodes: a call within the node's grant is within the
            // quota, whatever the others' overage calls count.
            Some(_) if granted => QuotaPlace {
                before: before.min(included.saturating_sub(1)),
                within: true,
                held_elsewhere: false,
            },
            // Nothing more to grant: beyond the quota here, though other
            // nodes may still hold part of it for their calls.
            Some(_) => QuotaPlace {
                before,
                within: false,
                held_elsewhere: before < included,
            },
            None => QuotaPlace {
                before,
                within: before < included,
                held_elsewhere: false,
            },
        })
    }

    /// Gives the call's place in the quota back at once (a blocked call).
    pub fn uncount_request(&mut self) {
        if let Some(counter) = self.request.take() {
            counter.remove_request();
            if let Some(start) = self.request_grant.take() {
                counter.put_back_grant(1, start);
            }
        }
    }

    /// Takes `amount` from the app's budget; else says what was spent.
    pub fn take_budget(
        &mut self,
        counter: &Arc<Counter>,
        limit: i64,
        amount: i64,
    ) -> Result<(), OverBudget> {
        let start = counter.add_nanos(amount, limit)?;
        self.budget = Some((counter.clone(), amount, start));
        Ok(())
    }

    /// Takes `amount` from the wallet; else says what is short.
    pub fn take_wallet(&mut self, amount: i64) -> Result<(), Short> {
        self.wallet.reserve(amount, self.call)?;
        self.wallet.reserved.fetch_add(amount, Ordering::AcqRel);
        self.amount = amount;
        Ok(())
    }

    /// Takes `amount` more from the wallet (an AI call's tokens, on top of
    /// any price per request); else says how much there is.
    pub fn add_wallet(&mut self, amount: i64) -> Result<(), Short> {
        if amount <= 0 {
            return Ok(());
        }
        self.wallet.reserve(amount, self.call)?;
        self.wallet.reserved.fetch_add(amount, Ordering::AcqRel);
        self.amount += amount;
        Ok(())
    }

    /// Takes `amount` more from the app's budget; else says what was spent.
    pub fn add_budget(
        &mut self,
        counter: &Arc<Counter>,
        limit: i64,
        amount: i64,
    ) -> Result<(), OverBudget> {
        if amount <= 0 {
            return Ok(());
        }
        let start = counter.add_nanos(amount, limit)?;
        match &mut self.budget {
            Some((_, held, _)) => *held += amount,
            None => self.budget = Some((counter.clone(), amount, start)),
        }
        Ok(())
    }

    /// Sets what the call costs in the end, before it is settled: an AI
    /// call reserves its most and costs what the provider reports. Less
    /// than held goes back to the wallet and the budget; more (the input
    /// was estimated low) is taken even if the wallet goes below zero: the
    /// tokens were used.
    pub fn adjust_to(&mut self, actual: i64) {
        let actual = actual.max(0);
        let delta = actual - self.amount;
        if delta == 0 {
            return;
        }
        if delta < 0 {
            self.wallet.give_back(-delta, self.call);
        } else {
            self.wallet.available.fetch_sub(delta, Ordering::AcqRel);
            if self.call && self.wallet.is_leased() {
                // The tokens were used: the lease may go below zero.
                self.wallet.lease.fetch_sub(delta, Ordering::AcqRel);
                self.wallet.lease_spent.fetch_add(delta, Ordering::AcqRel);
            }
        }
        self.wallet.reserved.fetch_add(delta, Ordering::AcqRel);
        if let Some((counter, held, start)) = &mut self.budget {
            if delta < 0 {
                counter.remove_nanos(-delta, *start);
            } else {
                counter.own_nanos.fetch_add(delta, Ordering::AcqRel);
                counter.touch();
                if let Some(lease) = &counter.lease {
                    // The tokens were used: the grant may go below zero.
                    lease.headroom.fetch_sub(delta, Ordering::AcqRel);
                }
            }
            *held += delta;
        }
        self.amount = actual;
    }

    /// The price held.
    pub fn amount(&self) -> i64 {
        self.amount
    }

    /// The wallet the call is paid from.
    pub fn wallet(&self) -> &Arc<WalletRt> {
        &self.wallet
    }

    /// Keeps what was taken (the call is paid for) and returns the charge
    /// for the ledger, if there is a price.
    fn take(&mut self, request_id: &http::HeaderValue, outcome: Outcome) -> Option<Charge> {
        self.settled = true;
        if self.amount > 0 {
            self.wallet
                .reserved
                .fetch_sub(self.amount, Ordering::AcqRel);
        }
        if let Some(counter) = &self.request {
            counter.add_spent(self.amount);
        }
        (self.amount > 0 || self.export).then(|| Charge {
            team: self.wallet.team.clone(),
            amount_nanos: self.amount,
            request_id: request_id.clone(),
            labels: self.labels.clone(),
            status: outcome.status,
            latency_ms: outcome.latency_ms,
            at_ms: domain::now_ms(),
            calls: 1,
            committed: None,
            tokens: outcome.tokens,
        })
    }

    /// `money.durability: strict`: charges the call and waits until the
    /// ledger writer has committed the charge (waiting for room in the
    /// queue rather than aggregating). Returns what is left to spend.
    ///
    /// Dropped while it waits for room (its caller went away), nothing is
    /// charged and the reservation gives the money back; dropped after,
    /// the charge is already queued and lands. `charged` is set to the
    /// price at the moment the charge is taken, so a call log row written
    /// after a drop shows what was charged: the price or nothing.
    pub async fn settle_durably(
        mut self,
        sink: Option<&ChargeSink>,
        request_id: &http::HeaderValue,
        outcome: Outcome,
        charged: &mut i64,
    ) -> i64 {
        let Some(sink) = sink else {
            *charged = self.amount();
            self.take(request_id, outcome);
            return self.wallet.available();
        };
        let Ok(room) = sink.reserve().await else {
            tracing::error!(team = %self.wallet.team, "ledger writer gone: charge not recorded");
            return self.wallet.available();
        };
        *charged = self.amount();
        if let Some(mut charge) = self.take(request_id, outcome) {
            let (committed, done) = tokio::sync::oneshot::channel();
            charge.committed = Some(committed);
            room.send(charge);
            match tokio::time::timeout(STRICT_WAIT, done).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    tracing::error!(team = %self.wallet.team, "ledger writer gone: charge not recorded");
                }
                Err(_) => {
                    // The store does not answer: the caller is not held
                    // forever. The charge stays queued and is committed
                    // when the store is back (lost only if this node dies
                    // first).
                    tracing::warn!(team = %self.wallet.team, "charge not committed within the strict wait; answering, the charge stays queued");
                }
            }
        }
        self.wallet.available()
    }

    /// Charges the call: what was taken stays taken and a charge is
    /// queued for the ledger (when there is a price). Returns what is
    /// left to spend.
    pub fn settle(
        mut self,
        sink: Option<&ChargeSink>,
        request_id: &http::HeaderValue,
        outcome: Outcome,
    ) -> i64 {
        if let (Some(charge), Some(sink)) = (self.take(request_id, outcome), sink) {
            match sink.try_send(charge) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    // The money is kept exactly; a full queue costs the
                    // call's own ledger line and usage event.
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
        if self.settled {
            return;
        }
        if self.amount > 0 {
            self.wallet
                .reserved
                .fetch_sub(self.amount, Ordering::AcqRel);
            self.wallet.give_back(self.amount, self.call);
        }
        self.uncount_request();
        if let Some((counter, amount, start)) = &self.budget {
            counter.remove_nanos(*amount, *start);
        }
    }
}

/// Calls and spend counted in one scope for its current period: a
/// subscription's calls (`sub:<id>`, for its quota; the period comes from
/// the subscription) or an app's spend (`app:<id>`, for its budget; the
/// period is a calendar day, week or month and rolls over here).
///
/// `own_*` is what this node counted, `remote_*` the sum of what the
/// other nodes wrote to the store for the same period; limits apply to
/// the total.
#[derive(Debug)]
pub struct Counter {
    pub scope: Arc<str>,
    start: AtomicI64,
    end: AtomicI64,
    own_requests: AtomicU64,
    own_nanos: AtomicI64,
    remote_requests: AtomicU64,
    remote_nanos: AtomicI64,
    /// Changed since the writer last took it.
    dirty: AtomicBool,
    /// Budgets only: how the period rolls over.
    rolls: Option<BudgetPeriod>,
    /// Other nodes' latest counts: node → (period start, calls, nanos).
    remote: Mutex<HashMap<String, (i64, u64, i64)>>,
    /// Many nodes, quotas and budgets: this node's grant of the period's
    /// limit.
    pub lease: Option<CounterLease>,
}

/// Many nodes: the part of a counter's limit (calls of a quota, nano-units
/// of a budget) the store granted this node for the current period
/// (migration 0021). A call counts within the limit only by taking from
/// `headroom` (what is left of the grant), as a call spends a wallet only
/// from the node's lease; a call that finds it short waits for one grant
/// transaction ([`Leases::grant`]).
#[derive(Debug)]
pub struct CounterLease {
    /// Shared with the node's wallets: the monotonic ms until which its
    /// leases may be used.
    until: Arc<AtomicU64>,
    headroom: AtomicI64,
    /// The node's grant for the period as the store last said.
    granted: AtomicI64,
    /// Monotonic ms until which a short headroom means the limit is
    /// reached: the store had nothing more to grant.
    denied_until: AtomicU64,
    /// The limit the last grant was asked within (for top-ups).
    limit: AtomicI64,
    /// One grant transaction at a time for this counter (its short
    /// calls, the lease task's top-ups and give-backs).
    pub gate: tokio::sync::Mutex<()>,
}

/// Why a counter could not take an amount within its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantShort {
    /// The grant is short: a grant transaction may fix it.
    Ask,
    /// The store had nothing more to grant a moment ago: the limit is
    /// reached (or the rest is held by other nodes).
    Denied,
    /// This node could not renew its leases: it counts nothing now.
    Lost,
}

/// Where a call stands in its subscription's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaPlace {
    /// Calls counted in the period before this one (over every node, as
    /// this node knows).
    pub before: u64,
    /// The call is one the quota includes (free); else beyond it.
    pub within: bool,
    /// Many nodes: the store had nothing more to grant this node; part of
    /// the rest may be held by other nodes.
    pub held_elsewhere: bool,
}

/// Why an app's budget could not hold an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// What the app spent in the period (over every node, as this node
    /// knows).
    pub spent: i64,
    /// Many nodes: the node's grant of the budget was short (`None`: the
    /// budget itself is).
    pub grant: Option<GrantShort>,
}

/// How long a "nothing more to grant" from the store stands before a
/// short call asks again.
const DENIED_MS: u64 = 1_000;

impl CounterLease {
    fn new(until: Arc<AtomicU64>) -> Self {
        Self {
            until,
            headroom: AtomicI64::new(0),
            granted: AtomicI64::new(0),
            denied_until: AtomicU64::new(0),
            limit: AtomicI64::new(0),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this node may count on its grants now (renewed recently).
    pub fn valid(&self) -> bool {
        crate::upstream::monotonic_ms() < self.until.load(Ordering::Acquire)
    }

    /// The limit the last grant was asked within (0: none asked yet).
    pub fn limit(&self) -> i64 {
        self.limit.load(Ordering::Acquire)
    }

    /// Remembers the limit a grant is asked within.
    pub fn ask_within(&self, limit: i64) {
        self.limit.store(limit, Ordering::Release);
    }

    /// What is left of the grant.
    pub fn headroom(&self) -> i64 {
        self.headroom.load(Ordering::Acquire)
    }

    fn take(&self, amount: i64) -> Result<(), GrantShort> {
        self.take_up_to(amount, amount).map(|_| ())
    }

    /// Takes up to `most` of the headroom, at least `least`; returns what
    /// was taken.
    fn take_up_to(&self, most: i64, least: i64) -> Result<i64, GrantShort> {
        if !self.valid() {
            return Err(GrantShort::Lost);
        }
        let taken = |current: i64| most.min(current.max(0));
        if let Ok(before) =
            self.headroom
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                    (taken(current) >= least).then(|| current - taken(current))
                })
        {
            return Ok(taken(before));
        }
        if crate::upstream::monotonic_ms() < self.denied_until.load(Ordering::Acquire) {
            Err(GrantShort::Denied)
        } else {
            Err(GrantShort::Ask)
        }
    }

    /// Puts `amount` back (a call gave it back, or a give-back the store
    /// did not take: still this node's).
    pub fn put_back(&self, amount: i64) {
        self.headroom.fetch_add(amount, Ordering::AcqRel);
    }

    /// The store's answer to a request for more: the node's grant is now
    /// `total`. Whether the headroom holds `needed` now; if not, the limit
    /// counts as reached for a moment (the store had no more).
    pub fn granted_now(&self, total: i64, needed: i64) -> bool {
        let before = self.granted.swap(total, Ordering::AcqRel);
        if total > before {
            self.headroom.fetch_add(total - before, Ordering::AcqRel);
        }
        let enough = self.headroom() >= needed;
        let until = if enough {
            0
        } else {
            crate::upstream::monotonic_ms() + DENIED_MS
        };
        self.denied_until.store(until, Ordering::Release);
        enough
    }

    /// The store's answer to a give-back (taken out with
    /// [`CounterLease::take_beyond`]): the node's grant is now `total`.
    pub fn gave_back(&self, total: i64) {
        self.granted.store(total, Ordering::Release);
    }

    /// Takes out what is left of the grant beyond `keep` (to give back to
    /// the store); returns it.
    pub fn take_beyond(&self, keep: i64) -> i64 {
        let keep = keep.max(0);
        self.headroom
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current > keep).then_some(keep)
            })
            .map_or(0, |before| before - keep)
    }

    /// The store dropped this node's grant (it ran out while the node was
    /// cut off), or a new period starts: nothing is left of it.
    pub fn clear(&self, granted: i64) {
        self.headroom.store(0, Ordering::Release);
        self.granted.store(granted, Ordering::Release);
        self.denied_until.store(0, Ordering::Release);
    }
}

impl Counter {
    fn new(
        scope: Arc<str>,
        (start, end): (i64, i64),
        rolls: Option<BudgetPeriod>,
        lease: Option<Arc<AtomicU64>>,
    ) -> Self {
        Self {
            scope,
            start: AtomicI64::new(start),
            end: AtomicI64::new(end),
            own_requests: AtomicU64::new(0),
            own_nanos: AtomicI64::new(0),
            remote_requests: AtomicU64::new(0),
            remote_nanos: AtomicI64::new(0),
            dirty: AtomicBool::new(false),
            rolls,
            remote: Mutex::new(HashMap::new()),
            lease: lease.map(CounterLease::new),
        }
    }

    /// The unit the store counts this counter's grants in.
    pub fn unit_is_nanos(&self) -> bool {
        self.scope.starts_with("app:")
    }

    /// What this node counted in the period, in the grants' unit.
    pub fn own_in_unit(&self) -> i64 {
        if self.unit_is_nanos() {
            self.own_nanos.load(Ordering::Acquire)
        } else {
            i64::try_from(self.own_requests.load(Ordering::Acquire)).unwrap_or(i64::MAX)
        }
    }

    /// Takes `amount` from this node's grant (many nodes; nothing to take
    /// on one node).
    fn take_grant(&self, amount: i64) -> Result<(), GrantShort> {
        match &self.lease {
            Some(lease) if amount > 0 => lease.take(amount),
            _ => Ok(()),
        }
    }

    /// Many nodes: takes up to `most` units (at least `least`) of this
    /// node's grant; returns what was taken. One node: nothing to take,
    /// `None`.
    pub fn take_from_grant(&self, most: u64, least: u64) -> Option<Result<u64, GrantShort>> {
        let lease = self.lease.as_ref()?;
        let most = i64::try_from(most).unwrap_or(i64::MAX);
        let least = i64::try_from(least).unwrap_or(i64::MAX);
        Some(
            lease
                .take_up_to(most, least)
                .map(|taken| u64::try_from(taken).unwrap_or(0)),
        )
    }

    /// Gives `amount` back to this node's grant if the period it was
    /// taken in (`start`) is still the current one.
    pub(crate) fn put_back_grant(&self, amount: i64, start: i64) {
        if let Some(lease) = &self.lease
            && amount > 0
            && self.start.load(Ordering::Acquire) == start
        {
            lease.put_back(amount);
        }
    }

    /// The current period `[start, end)`.
    pub fn period(&self) -> (i64, i64) {
        (
            self.start.load(Ordering::Acquire),
            self.end.load(Ordering::Acquire),
        )
    }

    /// Calls counted in the period over every node.
    pub fn requests(&self) -> u64 {
        self.own_requests
            .load(Ordering::Acquire)
            .saturating_add(self.remote_requests.load(Ordering::Acquire))
    }

    /// Nano-units counted in the period over every node.
    pub fn nanos(&self) -> i64 {
        self.own_nanos.load(Ordering::Acquire) + self.remote_nanos.load(Ordering::Acquire)
    }

    fn touch(&self) {
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn add_request(&self) -> u64 {
        self.touch();
        self.own_requests.fetch_add(1, Ordering::AcqRel)
            + self.remote_requests.load(Ordering::Acquire)
    }

    fn remove_request(&self) {
        self.touch();
        // Never below zero: a period may have rolled over in between.
        let _ = self
            .own_requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// A token counter (`tok:<subscription>`): adds `count`; with
    /// `limit`, only if the total stays within it. Returns the total
    /// before, or (refused) the total now.
    pub fn add_count(&self, count: u64, limit: Option<u64>) -> Result<u64, u64> {
        let remote = self.remote_requests.load(Ordering::Acquire);
        let mut own = self.own_requests.load(Ordering::Acquire);
        loop {
            let total = own.saturating_add(remote);
            if limit.is_some_and(|limit| total.saturating_add(count) > limit) {
                return Err(total);
            }
            match self.own_requests.compare_exchange_weak(
                own,
                own.saturating_add(count),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.touch();
                    return Ok(total);
                }
                Err(actual) => own = actual,
            }
        }
    }

    /// Takes back `count` added by [`Counter::add_count`] (never below zero).
    pub fn remove_count(&self, count: u64) {
        if count > 0 {
            self.touch();
            let _ = self
                .own_requests
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(count))
                });
        }
    }

    fn add_spent(&self, amount: i64) {
        if amount > 0 {
            self.touch();
            self.own_nanos.fetch_add(amount, Ordering::AcqRel);
        }
    }

    /// Adds `amount` if the total stays within `limit` (and, many nodes,
    /// the node's grant holds it); returns the period's start, else says
    /// what was spent.
    fn add_nanos(&self, amount: i64, limit: i64) -> Result<i64, OverBudget> {
        let start = self.start.load(Ordering::Acquire);
        self.take_grant(amount).map_err(|short| OverBudget {
            spent: self.nanos(),
            grant: Some(short),
        })?;
        let remote = self.remote_nanos.load(Ordering::Acquire);
        let mut own = self.own_nanos.load(Ordering::Acquire);
        loop {
            if own + remote + amount > limit {
                self.put_back_grant(amount, start);
                return Err(OverBudget {
                    spent: own + remote,
                    grant: None,
                });
            }
            match self.own_nanos.compare_exchange_weak(
                own,
                own + amount,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.touch();
                    return Ok(start);
                }
                Err(actual) => own = actual,
            }
        }
    }

    /// Takes back `amount` added in the period starting at `start`.
    fn remove_nanos(&self, amount: i64, start: i64) {
        if amount > 0 {
            self.touch();
            let _ = self
                .own_nanos
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some((n - amount).max(0))
                });
            self.put_back_grant(amount, start);
        }
    }

    /// Budgets: moves to the period holding `now` when the current one
    /// is over (one atomic load when it is not).
    pub fn roll(&self, now_ms: i64) {
        let Some(rolls) = self.rolls else { return };
        if now_ms < self.end.load(Ordering::Acquire) {
            return;
        }
        let remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms < self.end.load(Ordering::Acquire) {
            return;
        }
        self.reset(&remote, domain::billing::budget_period(rolls, now_ms));
    }

    /// Starts the period `[start, end)` from zero (plus what other nodes
    /// already counted in it). Caller holds `remote`.
    fn reset(&self, remote: &HashMap<String, (i64, u64, i64)>, (start, end): (i64, i64)) {
        self.start.store(start, Ordering::Release);
        self.end.store(end, Ordering::Release);
        self.own_requests.store(0, Ordering::Release);
        self.own_nanos.store(0, Ordering::Release);
        if let Some(lease) = &self.lease {
            lease.clear(0);
        }
        self.sum_remote(remote, start);
    }

    /// Other nodes' counts of the period starting at `start`; for a
    /// budget, also those of a shorter period within it (a node's day,
    /// counted before the budget became weekly, is part of the week).
    fn sum_remote(&self, remote: &HashMap<String, (i64, u64, i64)>, start: i64) {
        let (mut requests, mut nanos) = (0u64, 0i64);
        let end = self.end.load(Ordering::Acquire);
        for &(period, r, n) in remote.values() {
            if period == start || (self.rolls.is_some() && period > start && period < end) {
                requests += r;
                nanos += n;
            }
        }
        self.remote_requests.store(requests, Ordering::Release);
        self.remote_nanos.store(nanos, Ordering::Release);
    }
}

/// One counter's own numbers, for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub scope: Arc<str>,
    pub period_start_ms: i64,
    pub requests: u64,
    pub nanos: i64,
}

/// Every quota and budget counter on this node, kept across reloads.
#[derive(Debug, Default)]
pub struct Counters {
    by_scope: Mutex<HashMap<Arc<str>, Arc<Counter>>>,
    /// Many nodes: the node's lease deadline; quotas and budgets made
    /// after [`Wallets::set_leased`] count within grants.
    lease_until: Mutex<Option<Arc<AtomicU64>>>,
}

impl Counters {
    /// A subscription's counter for the period `[start, end)`: the same
    /// one across reloads, started afresh when the period changed.
    pub fn subscription(&self, id: &str, period: (i64, i64)) -> Arc<Counter> {
        self.get(format!("sub:{id}"), period, None, true)
    }

    /// A subscription's token counter (AI plans with a token quota): its
    /// `requests` count tokens.
    pub fn tokens(&self, id: &str, period: (i64, i64)) -> Arc<Counter> {
        self.get(format!("tok:{id}"), period, None, true)
    }

    /// An app's budget counter, in the budget period holding `now`.
    pub fn budget(&self, app_id: &str, rolls: BudgetPeriod, now_ms: i64) -> Arc<Counter> {
        let period = domain::billing::budget_period(rolls, now_ms);
        self.get(format!("app:{app_id}"), period, Some(rolls), true)
    }

    /// `leasable`: many nodes, the counter counts within grants.
    fn get(
        &self,
        scope: String,
        period: (i64, i64),
        rolls: Option<BudgetPeriod>,
        leasable: bool,
    ) -> Arc<Counter> {
        let mut map = self.by_scope.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = map.get(scope.as_str())
            && counter.rolls == rolls
        {
            if counter.period().0 != period.0 && (rolls.is_none() || period.0 > counter.period().0)
            {
                let remote = counter.remote.lock().unwrap_or_else(|p| p.into_inner());
                counter.reset(&remote, period);
            }
            return counter.clone();
        }
        // A budget whose period changed kind (a day to a week…): what this
        // node counted so far stays counted in the new period, never a fresh
        // allowance (a week holds today; a day is held to the week's spend,
        // the safe side).
        let carried = map.get(scope.as_str()).map(|old| {
            // Other nodes' counts of the old period count in the new one
            // too (until they send counts of it): a node restarted since
            // counted its spend before as another node's.
            let old_start = old.period().0;
            let remote = old
                .remote
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(node, &(start, r, n))| {
                    let start = if start == old_start { period.0 } else { start };
                    (node.clone(), (start, r, n))
                })
                .collect::<HashMap<_, _>>();
            (
                old.own_requests.load(Ordering::Acquire),
                old.own_nanos.load(Ordering::Acquire),
                remote,
            )
        });
        let scope: Arc<str> = scope.into();
        let lease = leasable
            .then(|| {
                self.lease_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            })
            .flatten();
        let counter = Arc::new(Counter::new(scope.clone(), period, rolls, lease));
        if let Some((requests, nanos, remote)) = carried {
            counter.own_requests.store(requests, Ordering::Release);
            counter.own_nanos.store(nanos, Ordering::Release);
            counter.touch();
            let mut kept = counter.remote.lock().unwrap_or_else(|p| p.into_inner());
            *kept = remote;
            counter.sum_remote(&kept, period.0);
            drop(kept);
            if let Some(lease) = &counter.lease {
                // Counted without a grant of the new period: the store's
                // first grant makes room for it.
                lease.clear(counter.own_in_unit());
            }
        }
        map.insert(scope, counter.clone());
        counter
    }

    /// Every counter that counts within grants (many nodes).
    pub fn leased(&self) -> Vec<Arc<Counter>> {
        self.by_scope
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.lease.is_some())
            .cloned()
            .collect()
    }

    /// The store dropped this node's grant on `scope` for the period
    /// starting at `period_start_ms` (it ran out): nothing is left of it.
    pub fn grant_lapsed(&self, scope: &str, period_start_ms: i64) {
        let counter = self
            .by_scope
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .cloned();
        if let Some(counter) = counter
            && let Some(lease) = &counter.lease
            && counter.period().0 == period_start_ms
        {
            lease.clear(counter.own_in_unit());
        }
    }

    /// The counters changed since the last call, with this node's numbers.
    pub fn take_changed(&self) -> Vec<CounterSnapshot> {
        let counters: Vec<Arc<Counter>> = self
            .by_scope
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        counters
            .iter()
            .filter(|c| c.dirty.swap(false, Ordering::AcqRel))
            .map(|c| CounterSnapshot {
                scope: c.scope.clone(),
                period_start_ms: c.start.load(Ordering::Acquire),
                requests: c.own_requests.load(Ordering::Acquire),
                nanos: c.own_nanos.load(Ordering::Acquire),
            })
            .collect()
    }

    /// Records another node's numbers for a scope and period.
    pub fn apply_remote(
        &self,
        node: &str,
        scope: &str,
        period_start_ms: i64,
        requests: u64,
        nanos: i64,
    ) {
        let Some(counter) = self
            .by_scope
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .cloned()
        else {
            return;
        };
        let mut remote = counter.remote.lock().unwrap_or_else(|p| p.into_inner());
        let newer = remote
            .get(node)
            .is_none_or(|&(period, ..)| period_start_ms >= period);
        if newer {
            remote.insert(node.to_owned(), (period_start_ms, requests, nanos));
            counter.sum_remote(&remote, counter.start.load(Ordering::Acquire));
        }
    }
}

/// Every team's wallet on this node, kept across snapshot reloads.
#[derive(Debug, Default)]
pub struct Wallets {
    by_team: Mutex<HashMap<String, Arc<WalletRt>>>,
    /// Many nodes: wallets spend from leases, until this monotonic ms
    /// (set when made leased, moved on by each renewal).
    lease_until: Mutex<Option<Arc<AtomicU64>>>,
    /// Quota and budget counters.
    pub counters: Counters,
}

/// Where a node's leases come from (the store), provided by the binary
/// when many nodes share it.
pub trait Leases: Send + Sync {
    /// Changes this node's lease on `team`'s wallet by `delta` (more, or
    /// given back when negative); the change the store made.
    fn adjust(&self, team: &str, delta: i64) -> LeaseFuture<'_>;

    /// Changes this node's grant on `counter`'s current period by `delta`
    /// (more, within `limit` over every node, or given back when
    /// negative); the node's grant now.
    fn grant(&self, counter: &Counter, delta: i64, limit: i64) -> LeaseFuture<'_>;
}

pub type LeaseFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64, String>> + Send + 'a>>;

/// A ledger entry as the sync applies it.
#[derive(Debug, Clone)]
pub struct SyncedEntry {
    pub seq: i64,
    pub id: String,
    pub amount_nanos: i64,
    /// Entries this node wrote itself (its charges) were counted when
    /// they were reserved: only the sequence number moves.
    pub own: bool,
}

impl Wallets {
    /// The team's wallet (made on first use, compile time only).
    pub fn get(&self, team: &str) -> Arc<WalletRt> {
        let until = self
            .lease_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut map = self.by_team.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(team.to_owned())
            .or_insert_with(|| Arc::new(WalletRt::new(team, until)))
            .clone()
    }

    /// Many nodes share the store: calls spend from leases and count
    /// quotas and budgets within grants (set before any wallet or counter
    /// is made).
    pub fn set_leased(&self) {
        let until = Arc::new(AtomicU64::new(0));
        *self
            .counters
            .lease_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(until.clone());
        *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// The node's leases were renewed: they may be spent for `spend_for`.
    pub fn leases_renewed(&self, spend_for: std::time::Duration) {
        if let Some(until) = &*self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) {
            let ms = u64::try_from(spend_for.as_millis()).unwrap_or(u64::MAX);
            until.store(crate::upstream::monotonic_ms() + ms, Ordering::Release);
        }
    }

    /// Every wallet on this node.
    pub fn all(&self) -> Vec<Arc<WalletRt>> {
        self.by_team
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every wallet's spendable balance (team, nano-units), by team.
    pub fn balances(&self) -> Vec<(Arc<str>, i64)> {
        let map = self.by_team.lock().unwrap_or_else(|p| p.into_inner());
        let mut balances: Vec<_> = map
            .values()
            .map(|wallet| (wallet.team.clone(), wallet.available()))
            .collect();
        balances.sort();
        balances
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
            let held_here = {
                let mut own = wallet.own_ids.lock().unwrap_or_else(|p| p.into_inner());
                match own.iter().position(|id| *id == entry.id) {
                    Some(at) => {
                        own.swap_remove(at);
                        true
                    }
                    None => false,
                }
            };
            if !entry.own && !held_here {
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
        let mut charges = Vec::new();
        for wallet in self.all() {
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
                labels: Arc::default(),
                status: 0,
                latency_ms: 0,
                at_ms: domain::now_ms(),
                calls,
                committed: None,
                tokens: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(
        wallet: &Arc<WalletRt>,
        price: i64,
        subscription: &Arc<str>,
    ) -> Result<Reservation, i64> {
        let mut reservation = Reservation::new(wallet, &Labels::subscription(subscription), false);
        reservation.take_wallet(price).map_err(Short::available)?;
        Ok(reservation)
    }

    #[test]
    fn calls_on_a_leased_wallet_spend_the_nodes_lease_and_debits_do_not() {
        let wallets = Wallets::default();
        wallets.set_leased();
        wallets.leases_renewed(std::time::Duration::from_secs(60));
        let wallet = funded(&wallets, 100);
        let labels = Labels::subscription("s");
        let mut call = Reservation::new(&wallet, &labels, false);
        assert_eq!(call.take_wallet(10), Err(Short::Lease(100)), "no lease yet");
        wallet.add_lease(25);
        call.take_wallet(10).unwrap();
        assert_eq!((wallet.lease(), wallet.available()), (15, 90));
        let mut second = Reservation::new(&wallet, &labels, false);
        assert_eq!(
            second.take_wallet(20),
            Err(Short::Lease(90)),
            "the lease is short"
        );
        assert_eq!(wallet.lease(), 15, "nothing taken by the refusal");
        drop(call);
        assert_eq!(
            (wallet.lease(), wallet.available()),
            (25, 100),
            "given back to both"
        );
        // A fee or an adjustment comes out of what no lease holds.
        let mut fee = Reservation::debit(&wallet, &labels);
        fee.take_wallet(60).unwrap();
        assert_eq!((wallet.lease(), wallet.available()), (25, 40));
        drop(fee);
        // The lease is the store's word: a top-up this node has not seen
        // yet does not stop a call the lease covers.
        wallet.add_lease(175);
        let mut big = Reservation::new(&wallet, &labels, false);
        big.take_wallet(150).unwrap();
        assert_eq!((wallet.lease(), wallet.available()), (50, -50));
        drop(big);
        // Settled calls count in the spend the lease task sizes leases on.
        let mut paid = Reservation::new(&wallet, &labels, false);
        paid.take_wallet(5).unwrap();
        paid.settle(
            None,
            &http::HeaderValue::from_static("r"),
            Outcome::default(),
        );
        assert_eq!(wallet.take_lease_spent(), 5);
        assert_eq!(wallet.take_lease(1000), 195, "taken out to give back");
        wallets.leases_renewed(std::time::Duration::ZERO);
        wallet.add_lease(50);
        let mut cut_off = Reservation::new(&wallet, &labels, false);
        assert_eq!(cut_off.take_wallet(1), Err(Short::LeaseLost(95)));
    }

    #[test]
    fn calls_that_waited_across_a_dry_lease_round_are_told_so() {
        let wallet = WalletRt::new("acme", None);
        let first = wallet.lease_round();
        wallet.lease_asked(false);
        assert!(
            !wallet.dry_since(first),
            "the store granted what it was asked"
        );
        let second = wallet.lease_round();
        wallet.lease_asked(true);
        assert!(wallet.dry_since(first) && wallet.dry_since(second));
        // A call that came after the dry round asks the store itself.
        assert!(!wallet.dry_since(wallet.lease_round()));
    }

    /// The team "acme"'s wallet, holding `nanos` from the ledger.
    fn funded(wallets: &Wallets, nanos: i64) -> Arc<WalletRt> {
        wallets.apply_entries(
            "acme",
            &[SyncedEntry {
                seq: 1,
                id: "e1".into(),
                amount_nanos: nanos,
                own: false,
            }],
        );
        wallets.get("acme")
    }

    #[test]
    fn counters_count_give_back_and_sum_other_nodes() {
        let wallets = Wallets::default();
        let counter = wallets.counters.subscription("s1", (0, 100));
        let wallet = wallets.get("acme");
        let subscription: Arc<str> = "s1".into();
        let mut first = Reservation::new(&wallet, &Labels::subscription(&subscription), false);
        assert_eq!(first.count_request(&counter), 0);
        let mut second = Reservation::new(&wallet, &Labels::subscription(&subscription), false);
        assert_eq!(second.count_request(&counter), 1);
        drop(second);
        assert_eq!(counter.requests(), 1, "a dropped call is not counted");
        first.settle(
            None,
            &http::HeaderValue::from_static("r"),
            Outcome::default(),
        );
        wallets.counters.apply_remote("other", "sub:s1", 0, 5, 0);
        wallets.counters.apply_remote("other", "sub:s1", 0, 7, 0);
        wallets.counters.apply_remote("old", "sub:s1", -100, 50, 0);
        assert_eq!(
            counter.requests(),
            8,
            "latest of each node, this period only"
        );
        let changed = wallets.counters.take_changed();
        assert_eq!(changed.len(), 1);
        assert_eq!((changed[0].requests, changed[0].period_start_ms), (1, 0));
        assert!(wallets.counters.take_changed().is_empty(), "nothing new");
        // A renewal moves the period: the same counter starts afresh.
        let renewed = wallets.counters.subscription("s1", (100, 200));
        assert!(Arc::ptr_eq(&renewed, &counter));
        assert_eq!(counter.requests(), 0);
    }

    /// Strict durability: a call dropped while its charge waits for room
    /// in the ledger queue is not charged and says so; with room, the
    /// charge is queued and the call says what it cost.
    #[tokio::test]
    async fn a_strict_charge_reports_what_it_took() {
        use std::future::Future;
        let wallets = Wallets::default();
        let wallet = funded(&wallets, 100);
        let subscription: Arc<str> = "s".into();
        let (sink, mut queue) = tokio::sync::mpsc::channel::<Charge>(1);
        let id = http::HeaderValue::from_static("r");
        // Another call's charge fills the queue: the settle below waits
        // for room, and is dropped.
        reserve(&wallet, 10, &subscription)
            .unwrap()
            .settle(Some(&sink), &id, Outcome::default());
        let mut charged = 0;
        {
            let held = reserve(&wallet, 30, &subscription).unwrap();
            assert_eq!(wallet.available(), 60);
            let settle = held.settle_durably(Some(&sink), &id, Outcome::default(), &mut charged);
            let mut settle = std::pin::pin!(settle);
            let waker = std::task::Waker::noop();
            let polled = settle
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker));
            assert!(polled.is_pending(), "no room in the queue");
        }
        assert_eq!(charged, 0, "dropped while waiting: nothing charged");
        assert_eq!(wallet.available(), 90, "the reservation gave it back");
        // With room: charged, and the charge is queued.
        queue.recv().await.unwrap();
        let held = reserve(&wallet, 30, &subscription).unwrap();
        let settle = held.settle_durably(Some(&sink), &id, Outcome::default(), &mut charged);
        let commit = async {
            let mut charge = queue.recv().await.unwrap();
            charge.committed.take().unwrap().send(()).unwrap();
        };
        let (left, ()) = tokio::join!(settle, commit);
        assert_eq!((charged, left), (30, 60));
    }

    #[test]
    fn budgets_hold_their_limit_and_roll_over() {
        let wallets = Wallets::default();
        let day = 86_400_000;
        let budget = wallets.counters.budget("app", BudgetPeriod::Day, day + 5);
        let wallet = wallets.get("acme");
        let subscription: Arc<str> = "s".into();
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut reservation =
                Reservation::new(&wallet, &Labels::subscription(&subscription), false);
            if reservation.take_budget(&budget, 25, 10).is_ok() {
                held.push(reservation);
            }
        }
        assert_eq!(held.len(), 2, "10 + 10 fit in 25, a third does not");
        assert_eq!(budget.nanos(), 20);
        held.pop();
        assert_eq!(budget.nanos(), 10, "dropped: given back");
        budget.roll(2 * day + 1);
        assert_eq!(budget.period(), (2 * day, 3 * day));
        assert_eq!(budget.nanos(), 0);
        // The period changes kind: what was spent stays spent.
        let mut spend = Reservation::new(&wallet, &Labels::subscription(&subscription), false);
        spend.take_budget(&budget, 25, 10).unwrap();
        spend.settle(
            None,
            &http::HeaderValue::from_static("r"),
            Outcome {
                status: 200,
                latency_ms: 1,
                tokens: None,
            },
        );
        let weekly = wallets
            .counters
            .budget("app", BudgetPeriod::Week, 2 * day + 2);
        assert_eq!(weekly.nanos(), 10, "a week holds today");
        let daily = wallets
            .counters
            .budget("app", BudgetPeriod::Day, 2 * day + 3);
        assert_eq!(daily.nanos(), 10, "back to a day: no fresh allowance");
        let mut more = Reservation::new(&wallet, &Labels::subscription(&subscription), false);
        assert!(more.take_budget(&daily, 25, 20).is_err(), "10 + 20 > 25");
    }

    /// What other nodes spent (or this node before a restart, which it
    /// reads as another node's) stays spent when a budget changes kind.
    #[test]
    fn others_spend_stays_spent_when_a_budget_changes_kind() {
        let wallets = Wallets::default();
        let day = 86_400_000;
        let now = 9 * day + 5;
        let daily = wallets.counters.budget("app", BudgetPeriod::Day, now);
        wallets
            .counters
            .apply_remote("before-restart", "app:app", 9 * day, 5, 50);
        assert_eq!(daily.nanos(), 50);
        let weekly = wallets.counters.budget("app", BudgetPeriod::Week, now + 1);
        assert_eq!(weekly.nanos(), 50, "a week holds the day");
        // The day's row read again counts once.
        wallets
            .counters
            .apply_remote("before-restart", "app:app", 9 * day, 5, 50);
        assert_eq!(weekly.nanos(), 50);
        let back = wallets.counters.budget("app", BudgetPeriod::Day, now + 2);
        assert_eq!(back.nanos(), 50, "and a day the week's");
        // A later day starts afresh.
        back.roll(now + 8 * day);
        assert_eq!(back.nanos(), 0);
    }

    #[test]
    fn concurrent_reservations_never_overspend() {
        let wallets = Wallets::default();
        let wallet = funded(&wallets, 100);
        let subscription: Arc<str> = "s".into();
        let granted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if let Ok(reservation) = reserve(&wallet, 1, &subscription) {
                            granted.fetch_add(1, Ordering::Relaxed);
                            reservation.settle(
                                None,
                                &http::HeaderValue::from_static("r"),
                                Outcome::default(),
                            );
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
                id: "e1".into(),
                amount_nanos: 50,
                own: false,
            },
            SyncedEntry {
                seq: 2,
                id: "e2".into(),
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

    #[test]
    fn a_debit_held_here_is_not_taken_again_by_the_sync() {
        let wallets = Wallets::default();
        let wallet = funded(&wallets, 50);
        // Held here before its entry was committed: the sync moves past
        // it; another node's entry it takes.
        wallet.counted_here("e2");
        wallets.apply_entries(
            "acme",
            &[
                SyncedEntry {
                    seq: 2,
                    id: "e2".into(),
                    amount_nanos: -5,
                    own: false,
                },
                SyncedEntry {
                    seq: 3,
                    id: "e3".into(),
                    amount_nanos: -7,
                    own: false,
                },
            ],
        );
        assert_eq!(wallet.available(), 43);
        assert_eq!(wallets.seen_seq("acme"), 3);
    }
}
