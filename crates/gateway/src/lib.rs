//! The data plane: a reverse proxy whose hot path reads only in-memory state.
//!
//! - [`Gateway`] owns the shared state: the current [`snapshot::Snapshot`]
//!   behind an `ArcSwap`, the [`upstream::Registry`] of live target state and
//!   pooled clients, and readiness flags. [`Gateway::apply`] compiles a new
//!   snapshot from stored objects and swaps it in; [`Gateway::serve`] runs a
//!   listener until shutdown.
//! - [`pipeline`] is the request path, in named phases: match → lifecycle →
//!   authenticate → authorize → limit → (pay: the money issue slots in here)
//!   → forward → respond. Each phase refuses with a [`refusal::Refusal`].
//! - [`access`] is the in-memory index of API keys (by SHA-256), apps and
//!   their subscriptions; [`limit`] the rate limiters, kept across reloads
//!   by a [`limit::LimiterRegistry`].
//! - [`router`] matches host, method and path; [`upstream`] balances and
//!   tracks target health; [`health`] runs active health checks; [`body`]
//!   streams bodies both ways with limits and timeouts.
//!
//! Only this crate knows hyper types; it knows nothing of the store.

pub mod access;
mod admit;
pub mod ai;
pub mod body;
pub mod cache;
pub mod calls;
pub mod client;
pub mod h1;
pub mod health;
pub mod jwt;
pub mod limit;
pub mod mcp_host;
pub mod me;
pub mod money;
pub mod pipeline;
pub mod refusal;
pub mod router;
mod server;
pub mod snapshot;
mod tls;
pub mod upstream;
pub mod warn;
pub mod x402;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use ai::AiProvider;
pub use jsonwebtoken::jwk::JwkSet;
pub use snapshot::{CompileError, Config, Defaults};

/// How the gateway behaves, from the process configuration.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Public base URL, no trailing slash (problem `type` URIs).
    pub public_url: String,
    pub defaults: Defaults,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// Bodies up to this size are buffered so a retry can replay them;
    /// larger bodies stream through and are tried once.
    pub retry_buffer_bytes: u64,
    /// How long a body read whole (an AI request, prompt variables, an
    /// MCP message, a webhook) may take to arrive: then 408.
    pub body_timeout: Duration,
    /// Data plane threads, each with its own single-threaded runtime, its
    /// own listening socket (`SO_REUSEPORT`) and its own upstream pools.
    pub workers: usize,
    /// Proxies whose `X-Forwarded-For` is believed when finding the
    /// client's address for IP rules.
    pub trusted_proxies: Vec<domain::net::Cidr>,
    /// The deployment's currency (ISO 4217), for 402 bodies and
    /// `Tollgate-Balance`.
    pub currency: String,
    /// `money.durability: strict`: a priced call's response waits until
    /// its charge is committed to the ledger.
    pub strict_charges: bool,
    /// Queue every metered call for the usage export (not only priced
    /// ones).
    pub export_usage: bool,
    /// Give each call a W3C trace span (continuing the caller's
    /// `traceparent`, passing it on to the upstream) for the trace export.
    pub trace: bool,
    /// Memory for routes' response caches (`gateway.cache_max_bytes`);
    /// 0 turns them off.
    pub cache_max_bytes: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            public_url: "http://localhost:8080".into(),
            defaults: Defaults {
                request_body_limit_bytes: 10 * 1024 * 1024,
            },
            shutdown_timeout: Duration::from_secs(10),
            retry_buffer_bytes: 64 * 1024,
            body_timeout: Duration::from_secs(60),
            workers: 1,
            trusted_proxies: Vec::new(),
            currency: "USD".into(),
            strict_charges: false,
            export_usage: false,
            trace: false,
            cache_max_bytes: 64 * 1024 * 1024,
        }
    }
}

pub(crate) struct Shared {
    snapshot: ArcSwap<snapshot::Snapshot>,
    /// Bumped after each snapshot swap; workers compare it to refresh their
    /// own handle on the snapshot (see [`Shared::local_snapshot`]).
    generation: std::sync::atomic::AtomicU64,
    registry: upstream::Registry,
    /// Routes' response caches (one for the node, sharded).
    cache: Arc<cache::ResponseCache>,
    limiters: limit::LimiterRegistry,
    wallets: money::Wallets,
    /// Where settled charges go (the binary's ledger writer); none: calls
    /// are priced and reserved but not recorded (embedded use, tests).
    charges: std::sync::OnceLock<money::ChargeSink>,
    /// Where call records go (the binary's call writer); none: calls are
    /// not logged.
    calls: std::sync::OnceLock<calls::CallSink>,
    /// Reads the call log for `/_tollgate/requests/<id>`.
    lookup: std::sync::OnceLock<Arc<dyn me::CallLookup>>,
    jwks: jwt::JwksCache,
    options: GatewayOptions,
    config_loaded: AtomicBool,
    store_reachable: AtomicBool,
    /// Shared counters (Redis): 0 not configured, 1 reachable, 2 not.
    counters_state: std::sync::atomic::AtomicU8,
    /// Handlers of `POST /_tollgate/webhooks/<name>` (Stripe…), set by the
    /// binary.
    hooks: std::sync::RwLock<std::collections::HashMap<String, Arc<dyn Hook>>>,
    /// The x402 facilitator, when configured.
    facilitator: std::sync::OnceLock<Arc<dyn x402::Facilitator>>,
    /// x402 payloads in use or settled on this node.
    x402_used: Arc<x402::Used>,
    /// Where x402 payments are claimed for every node (the store).
    x402_claims: std::sync::OnceLock<Arc<dyn x402::Claims>>,
    /// Many nodes: where this node's wallet leases come from.
    leases: std::sync::OnceLock<Arc<dyn money::Leases>>,
    /// Many nodes: the monotonic ms of the last lease or grant transaction
    /// that failed (the store did not answer in time); for a second after
    /// it, short calls fail at once instead of each waiting its turn.
    lease_failed_ms: std::sync::atomic::AtomicU64,
    /// AI provider keys and their cool-downs, kept across reloads.
    ai_keys: ai::KeyRegistry,
    /// The MCP server (its sessions live on this node).
    mcp: Arc<::mcp::Server>,
}

/// A handler for `POST /_tollgate/webhooks/<name>`: gets the request's
/// headers and body (at most [`HOOK_BODY_LIMIT`] bytes) and answers a
/// status and a JSON body. Off the hot path.
pub trait Hook: Send + Sync {
    fn call(
        &self,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (http::StatusCode, String)> + Send + '_>>;
}

/// The largest webhook body read.
pub const HOOK_BODY_LIMIT: u64 = 1 << 20;

/// A thread's own handle on the shared snapshot. Requests clone the
/// `Arc<SnapshotHandle>` of their thread, whose reference count only that
/// thread touches (no cache line bouncing between cores per request).
pub struct SnapshotHandle(Arc<snapshot::Snapshot>);

impl std::ops::Deref for SnapshotHandle {
    type Target = snapshot::Snapshot;

    fn deref(&self) -> &snapshot::Snapshot {
        &self.0
    }
}

/// (gateway identity, generation, handle)
type CachedSnapshot = Option<(usize, u64, Arc<SnapshotHandle>)>;

thread_local! {
    static LOCAL_SNAPSHOT: std::cell::RefCell<CachedSnapshot> = const { std::cell::RefCell::new(None) };
}

impl Shared {
    /// The current snapshot, through this thread's handle.
    /// The MCP server, for streams that outlive a request.
    pub(crate) fn mcp_handle(&self) -> Arc<::mcp::Server> {
        self.mcp.clone()
    }

    pub(crate) fn local_snapshot(&self) -> Arc<SnapshotHandle> {
        // Read the generation first: the snapshot loaded after it is at
        // least that new.
        let generation = self.generation.load(Ordering::Acquire);
        let key = self as *const Shared as usize;
        LOCAL_SNAPSHOT.with(|cell| {
            let mut cell = cell.borrow_mut();
            if let Some((cached_key, cached_generation, snapshot)) = cell.as_ref()
                && *cached_key == key
                && *cached_generation == generation
            {
                return snapshot.clone();
            }
            let snapshot = Arc::new(SnapshotHandle(self.snapshot.load_full()));
            *cell = Some((key, generation, snapshot.clone()));
            snapshot
        })
    }
}

/// Whether an upstream target takes traffic now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    pub upstream: String,
    /// The upstream's team (none: the platform's).
    pub team: Option<String>,
    pub target: String,
    /// Healthy and not ejected.
    pub up: bool,
}

/// The gateway's listening sockets, one per worker.
pub struct Listeners(Vec<std::net::TcpListener>);

/// The data plane. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub fn new(options: GatewayOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot::Snapshot::default()),
                generation: std::sync::atomic::AtomicU64::new(0),
                registry: upstream::Registry::new(options.workers),
                cache: Arc::new(cache::ResponseCache::new(options.cache_max_bytes)),
                limiters: limit::LimiterRegistry::default(),
                wallets: money::Wallets::default(),
                charges: std::sync::OnceLock::new(),
                calls: std::sync::OnceLock::new(),
                lookup: std::sync::OnceLock::new(),
                jwks: jwt::JwksCache::default(),
                options,
                config_loaded: AtomicBool::new(false),
                store_reachable: AtomicBool::new(true),
                counters_state: std::sync::atomic::AtomicU8::new(0),
                hooks: std::sync::RwLock::default(),
                facilitator: std::sync::OnceLock::new(),
                x402_used: Arc::default(),
                x402_claims: std::sync::OnceLock::new(),
                leases: std::sync::OnceLock::new(),
                lease_failed_ms: std::sync::atomic::AtomicU64::new(0),
                ai_keys: ai::KeyRegistry::default(),
                mcp: Arc::new(mcp_host::server()),
            }),
        }
    }

    /// Compiles `config` and makes it the served snapshot. An object that
    /// cannot be compiled is left out (and logged); on an error of the
    /// whole the previous snapshot stays in service.
    pub fn apply(&self, config: &Config<'_>) -> Result<(), CompileError> {
        let compiled = snapshot::compile(
            config,
            &self.shared.options.defaults,
            &self.shared.registry,
            &self.shared.limiters,
            &self.shared.wallets,
            &self.shared.ai_keys,
        )?;
        self.shared.snapshot.store(Arc::new(compiled));
        self.shared.generation.fetch_add(1, Ordering::Release);
        self.shared.config_loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Applies API key changes (created, revoked or deleted keys, by id)
    /// to the served snapshot without recompiling the rest; `current` are
    /// those keys as stored now. `version` is the configuration version
    /// this brings the gateway to.
    pub fn apply_key_changes(
        &self,
        version: i64,
        changed: &[String],
        current: &[domain::access::ApiKey],
    ) {
        let old = self.shared.snapshot.load_full();
        let next = snapshot::Snapshot {
            version,
            router: old.router.clone(),
            routes: old.routes.clone(),
            cached_routes: old.cached_routes,
            upstreams: old.upstreams.clone(),
            access: old.access.with_key_changes(changed, current),
            ai: old.ai.clone(),
            mcp: old.mcp.clone(),
        };
        self.shared.snapshot.store(Arc::new(next));
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// This node's rate-limit admissions not yet added to the shared
    /// counters (see [`limit::SyncItem`]).
    pub fn take_unsynced_counts(&self) -> Vec<limit::SyncItem> {
        self.shared
            .limiters
            .take_unsynced(u64::try_from(domain::now_ms()).unwrap_or(0))
    }

    /// This node's requests in flight under each concurrency limit.
    pub fn in_flight_counts(&self) -> Vec<(String, u32)> {
        self.shared.limiters.in_flight()
    }

    /// The other nodes' requests in flight under `subject`'s limit.
    pub fn set_remote_in_flight(&self, subject: &str, count: u32) {
        self.shared.limiters.set_remote_in_flight(subject, count);
    }

    /// Counts taken for a sync that failed, to be sent with the next.
    pub fn give_back_unsynced(&self, items: &[limit::SyncItem]) {
        for item in items {
            self.shared.limiters.give_back(item);
        }
    }

    /// A window's total over every node, read back from the shared store.
    pub fn set_shared_count(&self, item: &limit::SyncItem, total: u64) {
        self.shared.limiters.set_total(item, total);
    }

    /// The JWKS URLs the served services name.
    pub fn jwks_urls(&self) -> Vec<String> {
        let snapshot = self.shared.snapshot.load();
        let mut urls: Vec<String> = snapshot
            .routes
            .iter()
            .filter_map(|route| route.service.jwt.as_ref())
            .flat_map(|jwt| jwt.issuers.iter().filter_map(|i| i.jwks_url.clone()))
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// Stores the keys fetched from a JWKS URL; returns how many are usable.
    pub fn set_jwks(&self, url: &str, set: &JwkSet) -> usize {
        self.shared.jwks.set(url, set)
    }

    /// Resolves when a token named a key id that no fetched JWKS holds.
    pub async fn jwks_wanted(&self) {
        self.shared.jwks.wanted.notified().await;
    }

    /// The version of the served snapshot.
    pub fn version(&self) -> i64 {
        self.shared.snapshot.load().version
    }

    /// Readiness input: whether the store answered the last poll.
    /// Readiness detail: whether the shared counters (Redis) answer.
    pub fn set_counters_reachable(&self, reachable: bool) {
        self.shared
            .counters_state
            .store(if reachable { 1 } else { 2 }, Ordering::Relaxed);
    }

    pub fn set_store_reachable(&self, reachable: bool) {
        self.shared
            .store_reachable
            .store(reachable, Ordering::Relaxed);
    }

    /// Binds one listening socket per worker (`SO_REUSEPORT`; the kernel
    /// spreads connections over them). Binding before serving reports a
    /// busy port at start.
    pub fn bind(&self, address: std::net::SocketAddr) -> std::io::Result<Listeners> {
        use socket2::{Domain, Socket, Type};
        let mut sockets = Vec::new();
        for _ in 0..self.shared.options.workers.max(1) {
            let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.set_tcp_nodelay(true)?;
            socket.bind(&address.into())?;
            socket.listen(4096)?;
            sockets.push(socket.into());
        }
        Ok(Listeners(sockets))
    }

    /// Serves `listeners`, one worker thread each, until `shutdown` turns
    /// true; each worker then finishes its requests in flight (bounded by
    /// `shutdown_timeout`). Returns when every worker has stopped.
    pub async fn serve(&self, listeners: Listeners, shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut finished = Vec::new();
        for (index, listener) in listeners.0.into_iter().enumerate() {
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            let (done, wait) = tokio::sync::oneshot::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name(format!("tollgate-gw-{index}"))
                .spawn(move || {
                    upstream::set_worker(index);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => runtime.block_on(async move {
                            calls::install(shared.calls.get().cloned());
                            let flusher = tokio::spawn(async {
                                let mut tick = tokio::time::interval(calls::FLUSH_EVERY);
                                tick.set_missed_tick_behavior(
                                    tokio::time::MissedTickBehavior::Delay,
                                );
                                loop {
                                    tick.tick().await;
                                    calls::flush();
                                }
                            });
                            match tokio::net::TcpListener::from_std(listener) {
                                Ok(listener) => server::serve(shared, listener, shutdown).await,
                                Err(error) => {
                                    tracing::error!(%error, "gateway worker cannot use its socket")
                                }
                            }
                            flusher.abort();
                            calls::flush();
                        }),
                        Err(error) => {
                            tracing::error!(%error, "gateway worker cannot start its runtime")
                        }
                    }
                    let _ = done.send(());
                });
            match spawned {
                Ok(_) => finished.push(wait),
                Err(error) => tracing::error!(%error, "cannot start a gateway worker thread"),
            }
        }
        for wait in finished {
            let _ = wait.await;
        }
    }

    /// Sends every settled charge to `sink` (the ledger writer). Set once.
    pub fn set_charge_sink(&self, sink: money::ChargeSink) {
        let _ = self.shared.charges.set(sink);
    }

    /// Sends a record of every call to `sink` (the call writer). Set once,
    /// before [`Gateway::serve`].
    pub fn set_call_sink(&self, sink: calls::CallSink) {
        let _ = self.shared.calls.set(sink);
    }

    /// Every target of the served upstreams.
    pub fn target_health(&self) -> Vec<TargetHealth> {
        let snapshot = self.shared.snapshot.load();
        let now_ms = upstream::monotonic_ms();
        snapshot
            .upstreams
            .iter()
            .flat_map(|upstream| {
                upstream.targets.iter().map(|target| TargetHealth {
                    upstream: upstream.spec.slug.to_string(),
                    team: upstream.spec.team.clone(),
                    target: target.url.clone(),
                    up: target.is_available(now_ms),
                })
            })
            .collect()
    }

    /// Active subscriptions of `team`'s apps that end within `within_ms`
    /// of `now_ms` and will not renew by themselves (auto-renew off):
    /// (subscription id, service slug, period end).
    pub fn ending_subscriptions(
        &self,
        team: &str,
        now_ms: i64,
        within_ms: i64,
    ) -> Vec<(String, String, i64)> {
        let snapshot = self.shared.snapshot.load();
        let mut ending = Vec::new();
        for app in snapshot.access.apps.values().filter(|app| app.team == team) {
            for (_, subscription) in &app.subscriptions {
                let terms = &subscription.terms;
                if subscription.status != domain::access::SubscriptionStatus::Active
                    || terms.auto_renew
                {
                    continue;
                }
                if let Some((_, end)) = terms.period
                    && end > now_ms
                    && end - now_ms <= within_ms
                {
                    ending.push((
                        subscription.id.to_string(),
                        subscription.service().to_owned(),
                        end,
                    ));
                }
            }
        }
        ending.sort();
        ending
    }

    /// Every wallet's spendable balance on this node (team, nano-units).
    pub fn wallet_balances(&self) -> Vec<(Arc<str>, i64)> {
        self.shared.wallets.balances()
    }

    /// Answers `/_tollgate/requests/<id>` from `lookup`. Set once.
    pub fn set_call_lookup(&self, lookup: Arc<dyn me::CallLookup>) {
        let _ = self.shared.lookup.set(lookup);
    }

    /// Charges settled while the charge queue was full, one aggregated
    /// charge per wallet (see [`money::Wallets::take_overflow`]).
    pub fn take_charge_overflow(&self) -> Vec<money::Charge> {
        self.shared.wallets.take_overflow()
    }

    /// The last ledger sequence number applied to `team`'s wallet.
    pub fn wallet_seen_seq(&self, team: &str) -> i64 {
        self.shared.wallets.seen_seq(team)
    }

    /// The early warnings that hold now (for the warning webhooks).
    pub fn warnings(&self) -> Vec<warn::WarningState> {
        warn::states(
            &self.shared.snapshot.load(),
            &self.shared.options.currency,
            domain::now_ms(),
        )
    }

    /// Verifies and settles x402 payments through `facilitator`.
    pub fn set_facilitator(&self, facilitator: Arc<dyn x402::Facilitator>) {
        let _ = self.shared.facilitator.set(facilitator);
    }

    /// Claims x402 payments in `claims` (shared by every node) as well as
    /// in this node's memory.
    pub fn set_payment_claims(&self, claims: Arc<dyn x402::Claims>) {
        let _ = self.shared.x402_claims.set(claims);
    }

    /// Serves `POST /_tollgate/webhooks/<name>` with `hook`.
    pub fn set_hook(&self, name: &str, hook: Arc<dyn Hook>) {
        self.shared
            .hooks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), hook);
    }

    /// `team`'s wallet on this node (the renewal task reserves fees in it).
    pub fn wallet(&self, team: &str) -> Arc<money::WalletRt> {
        self.shared.wallets.get(team)
    }

    /// Many nodes share the store: calls spend from this node's leases,
    /// topped up through `leases`. Call before the first snapshot.
    pub fn set_leases(&self, leases: Arc<dyn money::Leases>) {
        self.shared.wallets.set_leased();
        let _ = self.shared.leases.set(leases);
    }

    /// Many nodes: this node's leases were renewed; its calls may spend
    /// them for `spend_for` (then 503 `ledger_unavailable` until the next
    /// renewal).
    pub fn leases_renewed(&self, spend_for: std::time::Duration) {
        self.shared.wallets.leases_renewed(spend_for);
    }

    /// Every wallet on this node.
    pub fn wallets(&self) -> Vec<Arc<money::WalletRt>> {
        self.shared.wallets.all()
    }

    /// Every quota and budget counter on this node.
    pub fn counters(&self) -> &money::Counters {
        &self.shared.wallets.counters
    }

    /// Quota and budget counters changed since the last call, with this
    /// node's own numbers (for the store).
    pub fn take_changed_counters(&self) -> Vec<money::CounterSnapshot> {
        self.shared.wallets.counters.take_changed()
    }

    /// Another node's numbers for a quota or budget counter.
    pub fn apply_remote_usage(
        &self,
        node: &str,
        scope: &str,
        period_start_ms: i64,
        requests: u64,
        nanos: i64,
    ) {
        self.shared
            .wallets
            .counters
            .apply_remote(node, scope, period_start_ms, requests, nanos);
    }

    /// Applies ledger entries to `team`'s wallet (see [`money::Wallets::apply_entries`]).
    pub fn apply_wallet_entries(&self, team: &str, entries: &[money::SyncedEntry]) {
        self.shared.wallets.apply_entries(team, entries);
    }

    /// Starts the active health checker; it stops when `shutdown` turns true.
    pub fn spawn_health_checker(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(health::run(self.shared.clone(), shutdown))
    }
}
