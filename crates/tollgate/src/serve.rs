//! `tollgate serve`: wiring of store, gateway, admin API and background
//! tasks, and the shutdown sequence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gateway::{Gateway, GatewayOptions};
use rand::Rng;
use store::Store;
use tokio::sync::{Notify, watch};

use crate::ConfigArgs;
use crate::config::Config;

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},sqlx=warn,hyper=warn", config.log_level))
    });
    // Colours only for a terminal: a file or a log collector gets plain
    // text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stdout);
    let _ = if config.log_json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = Store::open(&config.database_url).await.with_context(|| {
        format!(
            "cannot open the database at {}",
            redact(&config.database_url)
        )
    })?;
    let applied = store.migrate().await.context("migrations failed")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "migrations applied");
    }
    Ok(store)
}

/// Hides the password of a database URL.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

pub async fn migrate_only(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = crate::load_config(args)?;
    init_tracing(&config);
    let store = open_store(&config).await?;
    crate::cli::print(&format!(
        "database is at schema version {}",
        store::MIGRATIONS.len()
    ));
    store.close().await;
    Ok(())
}

const ROOT_TOKEN_SETTING: &str = "root_token_sha256";
const CURRENCY_SETTING: &str = "currency";

/// A store keeps its balances and ledger in one currency, recorded at its
/// first start: another `money.currency` later would relabel every
/// amount (and read Stripe's minor units with the wrong exponent), so it
/// stops the start instead.
async fn keep_one_currency(store: &Store, currency: &str) -> anyhow::Result<()> {
    match store.setting(CURRENCY_SETTING).await? {
        Some(kept) if kept == currency => Ok(()),
        Some(kept) => anyhow::bail!(
            "money.currency is {currency}, but this store keeps its balances and ledger in {kept}; a deployment has one currency: set money.currency to {kept}, or start with a new store"
        ),
        None => {
            let mut tx = store.begin().await?;
            tx.set_setting(CURRENCY_SETTING, currency).await?;
            tx.commit().await?;
            Ok(())
        }
    }
}

/// SPEC §1: `TOLLGATE_ADMIN_TOKEN` sets the root token (and, when given on a
/// later start, replaces it); without it the first start generates one,
/// prints it once and writes it to `<data dir>/admin-token` (mode 0600).
async fn bootstrap_root_token(store: &Store, config: &Config) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("TOLLGATE_ADMIN_TOKEN")
        && !token.is_empty()
    {
        if token.len() < 8 || token.chars().any(char::is_whitespace) {
            anyhow::bail!("TOLLGATE_ADMIN_TOKEN: must be at least 8 characters without spaces");
        }
        let digest = admin::auth::token_digest(&token);
        if store.setting(ROOT_TOKEN_SETTING).await?.as_deref() != Some(digest.as_str()) {
            let mut tx = store.begin().await?;
            tx.set_setting(ROOT_TOKEN_SETTING, &digest).await?;
            tx.commit().await?;
        }
        return Ok(digest);
    }
    if let Some(digest) = store.setting(ROOT_TOKEN_SETTING).await? {
        return Ok(digest);
    }
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let random: String = (0..40)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    let token = format!("tg_admin_{random}");
    let path = config.data_dir.join("admin-token");
    write_secret(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
    let digest = admin::auth::token_digest(&token);
    let mut tx = store.begin().await?;
    tx.set_setting(ROOT_TOKEN_SETTING, &digest).await?;
    tx.commit().await?;
    crate::cli::print(&format!(
        "Root admin token (shown once; also saved to {}): {token}",
        path.display()
    ));
    Ok(digest)
}

fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")
}

/// The master key: configured, else read from `<data dir>/master-key`,
/// else generated there (mode 0600) on first start.
fn master_key(config: &Config) -> anyhow::Result<store::secrets::MasterKey> {
    use anyhow::Context;
    if let Some(text) = &config.master_key {
        return store::secrets::MasterKey::from_base64(text)
            .context("secrets.master_key is not a 32-byte base64 key");
    }
    let path = config.data_dir.join("master-key");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
            let text = store::secrets::MasterKey::generate()
                .map_err(|e| anyhow::anyhow!("cannot make a master key: {e}"))?;
            write_secret(&path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(path = %path.display(), "master key generated: keep this file (or set secrets.master_key); sealed provider keys need it");
            text
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    store::secrets::MasterKey::from_base64(&text)
        .with_context(|| format!("{} does not hold a 32-byte base64 key", path.display()))
}

/// Loads the stored configuration into the gateway when it changed.
/// `rejected` remembers a version that failed to compile, so it is not
/// retried (and logged) on every poll.
/// What AI providers need from the binary: the master key that opens
/// their keys, and the model catalogue.
#[derive(Clone)]
struct AiSources {
    secrets: Arc<store::secrets::MasterKey>,
    catalog: Arc<domain::catalog::Catalog>,
}

impl AiSources {
    /// Providers with their keys opened; a key that does not open (another
    /// master key) is left out and logged.
    fn open(&self, providers: &[store::ProviderData]) -> Vec<gateway::AiProvider> {
        providers
            .iter()
            .map(|data| {
                let mut unopened = 0;
                let keys = data
                    .sealed_keys
                    .iter()
                    .filter_map(|(key, sealed)| {
                        match self.secrets.open(sealed, &data.provider.id) {
                            Ok(secret) => Some((key.id.clone(), secret)),
                            Err(error) => {
                                tracing::error!(provider = %data.provider.spec.slug, key = %key.id, %error, "a provider key cannot be opened with this master key; it is not used");
                                unopened += 1;
                                None
                            }
                        }
                    })
                    .collect();
                gateway::AiProvider {
                    provider: data.provider.clone(),
                    models: data.models.clone(),
                    keys,
                    unopened,
                }
            })
            .collect()
    }
}

impl AiSources {
    /// Opens the services' sealed HS256 secrets for the gateway; one that
    /// does not open (another master key) is logged, and its issuer
    /// refuses HS256 tokens.
    fn open_services(&self, services: &mut [domain::model::Service]) {
        for service in services {
            for issuer in self.secrets.open_spec_secrets(&mut service.spec) {
                tracing::error!(service = %service.spec.slug, %issuer, "an HS256 secret cannot be opened with this master key; the issuer's tokens are refused");
            }
        }
    }
}

async fn reload(
    store: &Store,
    gateway: &Gateway,
    ai: &AiSources,
    rejected: &mut Option<i64>,
) -> Result<(), store::StoreError> {
    let version = store.config_version().await?;
    let served = gateway.version();
    if version == served || Some(version) == *rejected {
        return Ok(());
    }
    // Only API keys changed (a key created or revoked): patch the served
    // snapshot instead of reloading everything.
    if served > 0
        && rejected.is_none()
        && let store::Changes::Keys(ids) = store.changes(served, version).await?
    {
        let started = Instant::now();
        let current = store.keys_by_id(&ids).await?;
        gateway.apply_key_changes(version, &ids, &current);
        tracing::info!(
            version,
            keys_changed = ids.len(),
            ms = started.elapsed().as_millis() as u64,
            "key changes applied"
        );
        return Ok(());
    }
    let started = Instant::now();
    let mut data = store.load_all().await?;
    let providers = ai.open(&data.providers);
    ai.open_services(&mut data.services);
    let load_ms = started.elapsed().as_millis() as u64;
    let config = gateway::Config {
        version: data.version,
        upstreams: &data.upstreams,
        services: &data.services,
        routes: &data.routes,
        apps: &data.apps,
        keys: &data.keys,
        plans: &data.plans,
        subscriptions: &data.subscriptions,
        providers: &providers,
        catalog: Some(&ai.catalog),
    };
    match gateway.apply(&config) {
        Ok(()) => {
            *rejected = None;
            tracing::info!(
                version = data.version,
                keys = data.keys.len(),
                load_ms,
                compile_ms = started.elapsed().as_millis() as u64 - load_ms,
                "configuration loaded"
            );
        }
        Err(error) => {
            // Remembered, so the same version is not loaded (and logged)
            // again on every poll.
            *rejected = Some(data.version);
            tracing::error!(%error, version = data.version, "configuration rejected; still serving the previous one")
        }
    }
    Ok(())
}

/// Polls the store's configuration version (other nodes' changes) and
/// reloads at once when this node's admin API changed something.
fn spawn_reloader(
    store: Store,
    gateway: Gateway,
    notify: Arc<Notify>,
    ai: AiSources,
    config: &Config,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = config.poll_interval;
    tokio::spawn(async move {
        let mut rejected = None;
        loop {
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let reloading = reload(&store, &gateway, &ai, &mut rejected);
            tokio::pin!(reloading);
            let result = tokio::select! {
                result = &mut reloading => result,
                () = tokio::time::sleep(STORE_PATIENCE) => {
                    // A slow reload: a store that does not answer at all
                    // (hung, partitioned) would keep it waiting for the
                    // pool's timeout. Readiness says so now; the reload
                    // goes on (a store that is only slow finishes it).
                    let ping = tokio::time::timeout(STORE_PATIENCE, store.ping()).await;
                    if !matches!(ping, Ok(Ok(()))) {
                        gateway.set_store_reachable(false);
                        tracing::warn!("the store does not answer; still serving the last snapshot");
                    }
                    reloading.await
                }
            };
            match result {
                Ok(()) => gateway.set_store_reachable(true),
                Err(error) => {
                    gateway.set_store_reachable(false);
                    tracing::warn!(%error, "cannot read the configuration; still serving the last snapshot");
                }
            }
        }
    });
}

/// How long a configuration reload may take before the store is pinged
/// (and, if it does not answer within as long again, reported
/// unreachable by `/_tollgate/ready`).
const STORE_PATIENCE: Duration = Duration::from_secs(1);

async fn bind(
    address: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({what})"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub async fn run(args: &ConfigArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = crate::load_config(args)?;
    init_tracing(&config);
    let store = open_store(&config).await?;
    let root_token_digest = bootstrap_root_token(&store, &config).await?;
    keep_one_currency(&store, &config.currency).await?;
    let secrets = Arc::new(master_key(&config)?);
    // Nodes sharing a database share the key: one with another key would
    // seal what the others cannot open (webhook secrets, provider keys).
    if let Some((stored, context)) = store.sealed_sample().await?
        && secrets.open(&stored, &context).is_err()
    {
        anyhow::bail!(
            "this master key does not open the secrets stored in the database (sealed under another key): \
             give every node sharing the database the same secrets.master_key (or <data dir>/master-key)"
        );
    }
    let sealed = store.seal_stored_secrets(&secrets).await.map_err(|error| {
        anyhow::anyhow!("cannot seal the HS256 secrets stored in clear: {error}")
    })?;
    if sealed > 0 {
        tracing::info!(
            rows = sealed,
            "HS256 secrets an earlier version stored in clear are sealed now"
        );
    }
    let catalog = Arc::new(domain::catalog::Catalog::builtin().map_err(|problems| {
        anyhow::anyhow!("the built-in catalogue is broken: {}", problems.join("; "))
    })?);

    let gateway = Gateway::new(GatewayOptions {
        public_url: config.public_url.clone(),
        defaults: gateway::Defaults {
            request_body_limit_bytes: config.request_body_limit_bytes,
        },
        shutdown_timeout: config.shutdown_timeout,
        retry_buffer_bytes: config.retry_buffer_bytes,
        cache_max_bytes: usize::try_from(config.cache_max_bytes).unwrap_or(usize::MAX),
        body_timeout: config.body_timeout,
        workers: config.gateway_workers,
        trusted_proxies: config.trusted_proxies.clone(),
        currency: config.currency.clone(),
        strict_charges: config.strict_charges,
        export_usage: config.usage_export.enabled(),
        trace: config.otel.is_some(),
    });
    let actor = crate::ledger::node_actor();
    // Many nodes share PostgreSQL: calls spend from this node's leases of
    // the wallets (set before the first snapshot makes any wallet).
    let leased = store.backend() == store::Backend::Postgres;
    if leased {
        gateway.set_leases(Arc::new(crate::leases::StoreLeases {
            store: store.clone(),
            node: actor.clone(),
        }));
    }
    let ai_sources = AiSources {
        secrets: secrets.clone(),
        catalog: catalog.clone(),
    };
    reload(&store, &gateway, &ai_sources, &mut None)
        .await
        .context("cannot load the configuration")?;
    // Wallets are known before the first call; charges go to the writer.
    crate::ledger::sync_once(&store, &gateway, &actor)
        .await
        .context("cannot read the wallets")?;
    // Quotas and budgets count what every node (this one before a
    // restart included) counted in the current periods.
    crate::billing::read_usage(&store, &gateway, &actor, 0)
        .await
        .context("cannot read the usage counters")?;
    let (charge_sink, charges) = tokio::sync::mpsc::channel(config.charge_queue);
    gateway.set_charge_sink(charge_sink);

    let gateway_listeners = gateway.bind(config.gateway_listen).with_context(|| {
        format!(
            "cannot listen on {} (gateway.listen)",
            config.gateway_listen
        )
    })?;
    let admin_listener = bind(config.admin_listen, "admin.listen").await?;
    if !config.admin_listen.ip().is_loopback() {
        tracing::warn!(admin = %config.admin_listen, "the admin API listens beyond this machine (admin.listen): keep it behind a firewall or TLS-terminating proxy; every request still needs a token");
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let notify = Arc::new(Notify::new());
    spawn_reloader(
        store.clone(),
        gateway.clone(),
        notify.clone(),
        ai_sources,
        &config,
        shutdown_rx.clone(),
    );
    let health = gateway.spawn_health_checker(shutdown_rx.clone());
    match store.seal_webhook_secrets(&secrets).await {
        Ok(0) => {}
        Ok(sealed) => tracing::info!(sealed, "webhook secrets stored in clear were sealed"),
        Err(error) => tracing::warn!(%error, "cannot seal webhook secrets stored in clear"),
    }
    let webhooks = crate::webhooks::spawn(store.clone(), secrets.clone(), shutdown_rx.clone());
    let warnings = crate::warnings::spawn(store.clone(), gateway.clone(), shutdown_rx.clone());
    let jwks = crate::jwks::spawn(gateway.clone(), shutdown_rx.clone());
    let (drain_ledger, ledger_drain) = tokio::sync::oneshot::channel();
    let export = config.usage_export.enabled().then(|| {
        let stripe = config.stripe.as_ref();
        Arc::new(crate::export::Export {
            cloudevents_url: config.usage_export.cloudevents_url.clone(),
            cloudevents_token: config.usage_export.cloudevents_token.clone(),
            stripe_meter: config.usage_export.stripe_meter.clone(),
            stripe_meter_value: config.usage_export.stripe_meter_value,
            stripe_base: stripe.map_or_else(String::new, |s| s.api_base.clone()),
            stripe_key: stripe.map_or_else(String::new, |s| s.secret_key.clone()),
            public_url: config.public_url.clone(),
            currency: config.currency.clone(),
        })
    });
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let (drain_calls, calls_drain) = tokio::sync::oneshot::channel();
    let (spans, span_exporter) = match config.otel.clone() {
        Some(otel) => {
            let (sink, task) = crate::otel::spawn(otel);
            (Some(sink), Some(task))
        }
        None => (None, None),
    };
    let (call_sink, call_writer) = crate::calls::spawn_writer(
        store.clone(),
        metrics.clone(),
        config.calls.clone(),
        spans,
        calls_drain,
    );
    gateway.set_call_sink(call_sink);
    gateway.set_call_lookup(Arc::new(crate::calls::StoreLookup(store.clone())));
    let retention = crate::calls::spawn_retention(
        store.clone(),
        config.calls.clone(),
        crate::calls::RETENTION_EVERY,
        shutdown_rx.clone(),
    );
    let alerts = crate::alerts::spawn(
        store.clone(),
        metrics.clone(),
        gateway.clone(),
        (
            config.currency.clone(),
            crate::alerts::node_name(config.gateway_listen.port()),
        ),
        config.alerts_every,
        shutdown_rx.clone(),
    );
    let ledger_writer = crate::ledger::spawn_writer(
        store.clone(),
        gateway.clone(),
        charges,
        actor.clone(),
        export.clone(),
        if config.strict_charges {
            crate::ledger::Pace::STRICT
        } else {
            crate::ledger::Pace::BATCHED
        },
        ledger_drain,
    );
    let exporter =
        export.map(|export| crate::export::spawn(store.clone(), export, shutdown_rx.clone()));
    let wallets_changed = Arc::new(Notify::new());
    let wallet_sync = crate::ledger::spawn_sync(
        store.clone(),
        gateway.clone(),
        actor.clone(),
        wallets_changed.clone(),
        shutdown_rx.clone(),
    );
    let leases = leased.then(|| {
        crate::leases::spawn(
            store.clone(),
            gateway.clone(),
            actor.clone(),
            shutdown_rx.clone(),
        )
    });
    let renewals = crate::billing::spawn_renewals(
        store.clone(),
        gateway.clone(),
        actor.clone(),
        notify.clone(),
        shutdown_rx.clone(),
    );
    let usage = crate::billing::spawn_usage(
        store.clone(),
        gateway.clone(),
        actor.clone(),
        shutdown_rx.clone(),
    );
    let counters = config.redis_url.clone().map(|url| {
        crate::counters::spawn(url, gateway.clone(), actor.clone(), shutdown_rx.clone())
    });

    if let Some(url) = &config.x402_facilitator {
        gateway.set_facilitator(Arc::new(crate::x402::FacilitatorClient::new(url)));
        gateway.set_payment_claims(Arc::new(crate::x402::StoreClaims(store.clone())));
    }
    let stripe_client = config.stripe.as_ref().map(|stripe| {
        let client = Arc::new(crate::stripe::StripeClient::new(
            &stripe.api_base,
            &stripe.secret_key,
        ));
        gateway.set_hook(
            "stripe",
            Arc::new(crate::stripe::StripeWebhook {
                store: store.clone(),
                client: client.clone(),
                secret: stripe.webhook_secret.clone(),
                currency: config.currency.clone(),
                wallets_changed: wallets_changed.clone(),
            }),
        );
        client
    });
    let auto_top_up = stripe_client.clone().map(|client| {
        crate::autotopup::spawn(
            store.clone(),
            gateway.clone(),
            client,
            config.currency.clone(),
            wallets_changed.clone(),
            shutdown_rx.clone(),
        )
    });
    let payments = stripe_client.map(|client| client as Arc<dyn admin::money::PaymentProvider>);
    let admin_state = admin::AdminState {
        store: store.clone(),
        root_token_digest: root_token_digest.into(),
        on_change: Arc::new(move || {
            notify.notify_one();
            wallets_changed.notify_one();
        }),
        login_failures: Arc::default(),
        currency: config.currency.as_str().into(),
        public_url: config.public_url.as_str().into(),
        payments,
        metrics: {
            let gateway = gateway.clone();
            let currency = config.currency.clone();
            Arc::new(move || metrics.render(&gateway, &currency))
        },
        secrets,
        catalog,
        holds: Some(Arc::new(WalletHolds {
            store: store.clone(),
            gateway: gateway.clone(),
            actor: actor.clone(),
        })),
    };
    let mut admin_shutdown = shutdown_rx.clone();
    let admin_task = tokio::spawn(async move {
        let app = admin::router(admin_state);
        let served = axum::serve(admin_listener, app)
            .with_graceful_shutdown(async move {
                let _ = admin_shutdown.changed().await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "admin listener failed");
        }
    });
    let gateway_task = {
        let gateway = gateway.clone();
        let shutdown = shutdown_rx.clone();
        tokio::spawn(async move { gateway.serve(gateway_listeners, shutdown).await })
    };
    tracing::info!(
        gateway = %config.gateway_listen,
        admin = %config.admin_listen,
        startup_ms = started.elapsed().as_millis() as u64,
        "tollgate ready"
    );

    shutdown_signal().await;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    let _ = shutdown_tx.send(true);
    let grace = config.shutdown_timeout + std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, async {
        let _ = gateway_task.await;
        // Every request has finished: record the charges still queued.
        let _ = drain_ledger.send(());
        let _ = drain_calls.send(());
        let _ = ledger_writer.await;
        let leased = leases.is_some();
        if let Some(leases) = leases {
            let _ = leases.await;
        }
        let _ = call_writer.await;
        if let Some(exporter) = span_exporter {
            let _ = exporter.await;
        }
        let _ = retention.await;
        let _ = alerts.await;
        let _ = usage.await;
        if let Err(error) = crate::billing::flush_usage(&store, &gateway, &actor).await {
            tracing::warn!(%error, "cannot record the last usage counters");
        }
        if leased {
            // Its charges and counts are written: what this node holds
            // goes back.
            if let Err(error) = store.drop_leases(&actor).await {
                tracing::warn!(%error, "cannot give the leases back; they run out by themselves");
            }
        }
        let _ = wallet_sync.await;
        let _ = renewals.await;
        let _ = admin_task.await;
        let _ = health.await;
        let _ = webhooks.await;
        let _ = warnings.await;
        if let Some(auto_top_up) = auto_top_up {
            let _ = auto_top_up.await;
        }
        if let Some(exporter) = exporter {
            let _ = exporter.await;
        }
        let _ = jwks.await;
        if let Some(counters) = counters {
            let _ = counters.await;
        }
    })
    .await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The admin API's debits, held in this node's in-memory wallets first
/// (see [`admin::money::Holds`]).
struct WalletHolds {
    store: Store,
    gateway: Gateway,
    actor: String,
}

struct WalletHeld {
    reservation: gateway::money::Reservation,
    wallet: Arc<gateway::money::WalletRt>,
}

impl WalletHolds {
    async fn sync_now(&self) {
        if let Err(error) = crate::ledger::sync_once(&self.store, &self.gateway, &self.actor).await
        {
            tracing::warn!(%error, "cannot bring the wallets up to date with the ledger");
        }
    }
}

impl admin::money::Holds for WalletHolds {
    fn sync(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.sync_now())
    }

    fn hold<'a>(&'a self, team: &'a str, nanos: i64) -> admin::money::HoldFuture<'a> {
        Box::pin(async move {
            // Entries committed a moment ago (a grant) count already.
            self.sync_now().await;
            let wallet = self.gateway.wallet(team);
            let labels = gateway::money::Labels::subscription("");
            // Not a call: never from this node's lease (many nodes); the
            // store keeps the debit clear of what leases hold.
            let mut reservation = gateway::money::Reservation::debit(&wallet, &labels);
            reservation
                .take_wallet(nanos)
                .map_err(gateway::money::Short::available)?;
            Ok(Box::new(WalletHeld {
                reservation,
                wallet,
            }) as Box<dyn admin::money::Held>)
        })
    }
}

impl admin::money::Held for WalletHeld {
    fn entry(&self, entry_id: &str) {
        self.wallet.counted_here(entry_id);
    }

    fn keep(self: Box<Self>) {
        // Settled without a charge: the ledger entry is the charge.
        self.reservation.settle(
            None,
            &http::HeaderValue::from_static(""),
            gateway::money::Outcome::default(),
        );
    }
}
