//! The store against both backends: a SQLite file and the PostgreSQL server
//! on this machine (a fresh database per test, dropped afterwards).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use domain::access::{
    ApiKey, App, AuditEntry, Plan, Subscription, SubscriptionStatus, Team, TeamSpec,
};
use domain::model::{Lifecycle, Route, RouteSpec, Service, ServiceSpec, Upstream, UpstreamSpec};
use store::{AuditFilter, Store, StoreError, SubscriptionFilter, Visible};

struct Pg {
    admin: Store,
    name: String,
}

impl Pg {
    async fn create() -> (Pg, Store) {
        let admin = Store::open("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 for these tests");
        let name = format!("tollgate_store_{}", domain::id::new_id().replace('-', ""));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(admin.pool())
            .await
            .unwrap();
        let store = Store::open(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
            .await
            .unwrap();
        (Pg { admin, name }, store)
    }

    async fn drop(self, store: Store) {
        store.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(self.admin.pool())
        .await
        .unwrap();
    }
}

fn upstream(slug: &str) -> Upstream {
    let spec: UpstreamSpec = serde_json::from_value(serde_json::json!({
        "slug": slug, "targets": [{"url": "http://127.0.0.1:9001"}]
    }))
    .unwrap();
    Upstream {
        id: domain::id::new_id(),
        spec,
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

fn service(slug: &str, upstream: &str) -> Service {
    let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "slug": slug, "base_path": "/w", "upstream": upstream
    }))
    .unwrap();
    Service {
        id: domain::id::new_id(),
        spec,
        lifecycle: Lifecycle::Draft,
        deprecated_at_ms: None,
        sunset: None,
        current_release: None,
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

async fn exercise(store: &Store) {
    let versions: Vec<i64> = store::MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(store.migrate().await.unwrap(), versions);
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "migrations apply once"
    );
    let version_before = store.config_version().await.unwrap();

    let up = upstream("backend");
    let svc = service("weather", "backend");
    let mut tx = store.begin().await.unwrap();
    tx.put_upstream(&up).await.unwrap();
    tx.put_service(&svc, Some(&up.id)).await.unwrap();
    let route_spec: RouteSpec =
        serde_json::from_value(serde_json::json!({"name": "fc", "path": "/forecast/{city}"}))
            .unwrap();
    tx.put_route(&Route {
        id: domain::id::new_id(),
        service_id: svc.id.clone(),
        spec: route_spec,
        created_at_ms: 1,
        updated_at_ms: 1,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.config_version().await.unwrap(), version_before + 1);

    // Addressed by slug or id.
    assert_eq!(store.upstream("backend").await.unwrap().unwrap().id, up.id);
    assert_eq!(
        store.upstream(&up.id).await.unwrap().unwrap().spec.slug,
        "backend"
    );
    let loaded = store.service("weather").await.unwrap().unwrap();
    assert_eq!(loaded.spec.upstream.as_deref(), Some("backend"));
    assert!(store.route(&svc.id, "fc").await.unwrap().is_some());

    // Duplicate slug: a conflict naming the field, and the transaction rolls back.
    let mut tx = store.begin().await.unwrap();
    let err = tx.put_upstream(&upstream("backend")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref field, .. } if field == "slug"),
        "{err}"
    );
    drop(tx);
    // An upstream in use cannot be deleted.
    let mut tx = store.begin().await.unwrap();
    let err = tx.delete_upstream(&up.id).await.unwrap_err();
    assert!(err.to_string().contains("weather"), "{err}");
    drop(tx);

    // Pagination by id.
    let mut tx = store.begin().await.unwrap();
    for n in 0..5 {
        tx.put_upstream(&upstream(&format!("extra-{n}")))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let first = store
        .upstreams(&store::Visible::all(), None, 4, None)
        .await
        .unwrap();
    assert_eq!(first.items.len(), 4);
    let second = store
        .upstreams(&store::Visible::all(), first.next_after.as_deref(), 4, None)
        .await
        .unwrap();
    assert_eq!(second.items.len(), 2);
    assert!(second.next_after.is_none());

    let all = store.load_all().await.unwrap();
    assert_eq!(
        (all.upstreams.len(), all.services.len(), all.routes.len()),
        (6, 1, 1)
    );

    exercise_access(store, &svc).await;

    let mut tx = store.begin().await.unwrap();
    tx.delete_service(&svc.id).await.unwrap();
    tx.commit().await.unwrap();
    let after = store.load_all().await.unwrap();
    assert!(after.routes.is_empty(), "routes go with their service");
    assert!(
        after.plans.is_empty() && after.subscriptions.is_empty(),
        "so do plans and subscriptions"
    );
}

fn team(slug: &str) -> Team {
    Team {
        id: domain::id::new_id(),
        spec: TeamSpec {
            slug: slug.into(),
            name: None,
            description: None,
        },
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

/// Teams, apps, keys, plans, subscriptions and the team visibility filter
/// (one SQL text for both backends).
async fn exercise_access(store: &Store, service: &Service) {
    let (acme, other) = (team("acme"), team("other"));
    let app: App = App {
        id: domain::id::new_id(),
        spec: serde_json::from_value(
            serde_json::json!({"slug": "acme-web", "team": "acme", "description": "a|b\nc"}),
        )
        .unwrap(),
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    let plan = Plan {
        id: domain::id::new_id(),
        service_id: service.id.clone(),
        spec: serde_json::from_value(serde_json::json!({"slug": "basic"})).unwrap(),
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    let key = ApiKey {
        id: domain::id::new_id(),
        app_id: app.id.clone(),
        name: None,
        prefix: "tg_live_abcd".into(),
        scopes: vec!["weather:read".into()],
        expires_at_ms: Some(4_102_444_800_000),
        revoked_at_ms: Some(7),
        created_at_ms: 1,
        hash: "ab".repeat(32),
    };
    let subscription = Subscription {
        id: domain::id::new_id(),
        app: String::new(),
        app_id: app.id.clone(),
        service: String::new(),
        service_id: service.id.clone(),
        plan: String::new(),
        plan_id: plan.id.clone(),
        status: SubscriptionStatus::Pending,
        reason: Some("needs|review\nsoon".into()),
        consumer_team: "acme".into(),
        provider_team: Some("other".into()),
        period_start_ms: Some(1_000),
        period_end_ms: Some(2_000),
        anchor_ms: Some(1_000),
        trial_end_ms: None,
        auto_renew: false,
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    let mut tx = store.begin().await.unwrap();
    tx.put_team(&acme).await.unwrap();
    tx.put_team(&other).await.unwrap();
    tx.put_app(&app).await.unwrap();
    tx.insert_key(&key).await.unwrap();
    tx.put_plan(&plan).await.unwrap();
    tx.put_subscription(&subscription).await.unwrap();
    tx.commit().await.unwrap();

    let data = store.load_all().await.unwrap();
    assert_eq!(data.keys.len(), 1);
    assert_eq!(data.keys[0].hash, key.hash, "the gateway gets the digest");
    assert_eq!(data.keys[0].scopes, key.scopes);
    assert_eq!(
        (data.keys[0].expires_at_ms, data.keys[0].revoked_at_ms),
        (key.expires_at_ms, key.revoked_at_ms)
    );
    // Bulk reads pack fields into text: '|' and newlines survive (or, in a
    // reason, become spaces).
    assert_eq!(data.apps[0], app, "the app round-trips");
    assert_eq!(
        data.subscriptions[0].reason.as_deref(),
        Some("needs|review soon")
    );
    let loaded = &data.subscriptions[0];
    assert_eq!(
        (
            loaded.app.as_str(),
            loaded.service.as_str(),
            loaded.plan.as_str()
        ),
        ("acme-web", "weather", "basic"),
        "slugs joined in"
    );
    assert_eq!(
        (
            loaded.period_start_ms,
            loaded.period_end_ms,
            loaded.anchor_ms,
            loaded.trial_end_ms,
            loaded.auto_renew
        ),
        (Some(1_000), Some(2_000), Some(1_000), None, false),
        "periods survive the packed read"
    );
    let single = store.subscription(&subscription.id).await.unwrap().unwrap();
    assert_eq!(
        (single.period_end_ms, single.anchor_ms, single.auto_renew),
        (Some(2_000), Some(1_000), false)
    );

    // Visibility: by team list, by consumer or provider side.
    let only = |slugs: &[&str]| Visible::teams(slugs.iter().copied());
    let teams = |visible: Visible| async move {
        store.teams(&visible, None, 10).await.unwrap().items.len()
    };
    assert_eq!(teams(Visible::all()).await, 2);
    assert_eq!(teams(only(&["acme"])).await, 1);
    assert_eq!(teams(only(&[])).await, 0);
    assert_eq!(teams(only(&["acm"])).await, 0, "no prefix matches");
    let apps = store.apps(&only(&["other"]), None, None, 10).await.unwrap();
    assert!(apps.items.is_empty(), "another team's apps are invisible");
    let filter = SubscriptionFilter::default();
    for side in ["acme", "other"] {
        let seen = store
            .subscriptions(&only(&[side]), &filter, None, 10)
            .await
            .unwrap();
        assert_eq!(seen.items.len(), 1, "visible to {side}");
    }
    let stranger = store
        .subscriptions(&only(&["nobody"]), &filter, None, 10)
        .await
        .unwrap();
    assert!(stranger.items.is_empty());

    // Key-only changes are recorded as such; anything else means reload all.
    let before_key = store.config_version().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.revoke_key(&key.id, 9).await.unwrap();
    tx.commit().await.unwrap();
    let after_key = store.config_version().await.unwrap();
    assert_eq!(after_key, before_key + 1);
    assert_eq!(
        store.changes(before_key, after_key).await.unwrap(),
        store::Changes::Keys(vec![key.id.clone()])
    );
    assert_eq!(
        store.changes(before_key - 1, after_key).await.unwrap(),
        store::Changes::Full,
        "the version before was a full change"
    );
    assert_eq!(
        store.changes(0, after_key).await.unwrap(),
        store::Changes::Full,
        "versions before change records existed"
    );
    assert_eq!(
        store
            .keys_by_id(std::slice::from_ref(&key.id))
            .await
            .unwrap()[0]
            .revoked_at_ms,
        Some(7)
    );

    // A plan in use cannot be deleted.
    let mut tx = store.begin().await.unwrap();
    let err = tx.delete_plan(&plan.id).await.unwrap_err();
    assert!(err.to_string().contains("1 subscriptions"), "{err}");
    drop(tx);

    // Audit entries are visible to both teams of a subscription.
    let mut tx = store.begin().await.unwrap();
    let entry = AuditEntry {
        id: domain::id::new_id(),
        at_ms: 1,
        actor: "root".into(),
        action: "subscription.approve".into(),
        object_kind: "subscription".into(),
        object_id: subscription.id.clone(),
        team: Some("acme".into()),
        before: None,
        after: Some(serde_json::json!({"status": "active"})),
        request_id: "r1".into(),
    };
    tx.insert_audit(&entry, Some("other")).await.unwrap();
    tx.commit().await.unwrap();
    for side in ["acme", "other"] {
        let page = store
            .audit(&only(&[side]), &AuditFilter::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(page.items, vec![entry.clone()], "{side}");
    }
}

#[tokio::test]
async fn sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/tollgate.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    exercise(&store).await;
    store.close().await;
    // Kept across a reopen.
    let store = Store::open(&url).await.unwrap();
    assert!(store.migrate().await.unwrap().is_empty());
    assert_eq!(store.load_all().await.unwrap().upstreams.len(), 6);
}

async fn page_size(store: &Store) -> i64 {
    sqlx::query_scalar::<_, i64>("PRAGMA page_size")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn new_sqlite_files_get_16k_pages_and_older_files_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/new.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(page_size(&store).await, 16_384);
    store.close().await;

    // A file an earlier version made: 4 KiB pages, WAL, a row of data.
    let old = dir.path().join("old.db");
    {
        let connection = rusqlite::Connection::open(&old).unwrap();
        connection
            .execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; \
                 CREATE TABLE kept (v TEXT); INSERT INTO kept VALUES ('still here');",
            )
            .unwrap();
    }
    let store = Store::open(&format!("sqlite://{}", old.display()))
        .await
        .unwrap();
    exercise(&store).await;
    assert_eq!(
        page_size(&store).await,
        4_096,
        "an existing file is not rewritten"
    );
    let kept: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(kept, "still here");
}

#[tokio::test]
async fn postgres() {
    let (pg, store) = Pg::create().await;
    exercise(&store).await;
    pg.drop(store).await;
}

/// A test `$test` that runs `$body(&Store)` on a fresh SQLite file, then
/// on a fresh PostgreSQL database.
macro_rules! on_sqlite_and_postgres {
    ($test:ident, $body:ident) => {
        #[tokio::test]
        async fn $test() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
                .await
                .unwrap();
            $body(&store).await;
            store.close().await;
            let (pg, store) = Pg::create().await;
            $body(&store).await;
            pg.drop(store).await;
        }
    };
}

/// Batched appends: every chunk size, the wallet moved once to the exact
/// sum, sequence numbers contiguous, a repeated batch recorded once.
async fn batched_appends(store: &Store) {
    use domain::money::{EntryKind, LedgerEntry};
    store.migrate().await.unwrap();
    let team = domain::access::Team {
        id: domain::id::new_id(),
        spec: serde_json::from_value(serde_json::json!({"slug": "batchers", "name": "b"})).unwrap(),
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    let mut tx = store.begin().await.unwrap();
    tx.put_team(&team).await.unwrap();
    tx.commit().await.unwrap();
    // 73 = 64 + 8 + 1: every statement size of a bulk insert.
    let entries: Vec<LedgerEntry> = (0..73)
        .map(|n| LedgerEntry {
            id: domain::id::new_id(),
            team_id: team.id.clone(),
            kind: EntryKind::Charge,
            amount_nanos: -(n + 1),
            idempotency_key: format!("charge:{n}"),
            actor: "gateway:test".into(),
            reason: Some("batch".into()),
            request_id: Some(format!("r{n}")),
            created_at_ms: 10 + n,
        })
        .collect();
    for _ in 0..2 {
        let mut tx = store.begin().await.unwrap();
        tx.append_batch(&team.id, &entries).await.unwrap();
        tx.commit().await.unwrap();
    }
    let wallet = store.wallet(&team.id).await.unwrap();
    assert_eq!(wallet.entries, 73, "the repeated batch recorded nothing");
    assert_eq!(wallet.balance_nanos, -(1..=73).sum::<i64>());
    assert_eq!(
        store.ledger_sum(&team.id).await.unwrap(),
        wallet.balance_nanos
    );
    let page = store
        .ledger(&team.id, &store::LedgerFilter::default(), None, 100)
        .await
        .unwrap();
    let keys: Vec<&str> = page
        .items
        .iter()
        .map(|e| e.idempotency_key.as_str())
        .collect();
    assert_eq!(keys.len(), 73);
    assert_eq!(keys[0], "charge:0");
    assert_eq!(keys[72], "charge:72", "in order");
    let amounts: Vec<i64> = page.items.iter().map(|e| e.amount_nanos).collect();
    assert_eq!(
        amounts,
        (1..=73).map(|n| -n).collect::<Vec<i64>>(),
        "each entry's own values"
    );
}

on_sqlite_and_postgres!(batched_appends_on_sqlite_and_postgres, batched_appends);

/// The start-up sweep seals HS256 secrets stored in clear in services,
/// releases and audit records, leaves sealed ones and other JSON alone,
/// opens back to the same secret, and runs once per database.
async fn secrets_sweep(store: &Store) {
    use sqlx::Row;
    store.migrate().await.unwrap();
    let key =
        store::secrets::MasterKey::from_base64(&store::secrets::MasterKey::generate().unwrap())
            .unwrap();
    let spec = |secret: &str| {
        serde_json::json!({"slug": "svc", "kind": "http", "base_path": "/svc",
            "auth": {"anonymous": false, "jwt": {"issuers": [
                {"issuer": "https://hs.example", "algorithms": ["HS256"], "secret": secret}]}}})
        .to_string()
    };
    sqlx::query(
        "INSERT INTO services (id, slug, team, upstream_id, lifecycle, spec, state, created_at_ms, \
         updated_at_ms) VALUES ('s1', 'svc', NULL, NULL, 'draft', $1, '{}', 1, 1)",
    )
    .bind(spec("clear-secret-1"))
    .execute(store.pool())
    .await
    .unwrap();
    let audit = |id: &str, before: Option<String>, after: Option<String>| {
        sqlx::query(
            "INSERT INTO audit (id, at_ms, actor, action, object_kind, object_id, team, \
             other_team, before, after, request_id) VALUES ($1, 1, 'root', 'update', 'service', \
             's1', NULL, NULL, $2, $3, 'r')",
        )
        .bind(id.to_owned())
        .bind(before)
        .bind(after)
    };
    audit(
        "a1",
        Some(spec("clear-secret-0")),
        Some(spec("clear-secret-1")),
    )
    .execute(store.pool())
    .await
    .unwrap();
    let other = r#"{"note":"a \"secret\" word, no issuers"}"#.to_owned();
    audit("a2", None, Some(other.clone()))
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        store.seal_stored_secrets(&key).await.unwrap(),
        3,
        "spec, before, after"
    );
    let stored = |sql: &'static str| async move {
        sqlx::query(sql)
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get::<String, _>(0)
            .unwrap()
    };
    let opened = |text: String| {
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut spec: domain::model::ServiceSpec = serde_json::from_value(value).unwrap();
        assert!(
            spec.auth.jwt.as_ref().unwrap().issuers[0]
                .secret
                .as_deref()
                .unwrap()
                .starts_with("sealed:")
        );
        assert!(key.open_spec_secrets(&mut spec).is_empty());
        spec.auth.jwt.unwrap().issuers[0].secret.clone().unwrap()
    };
    assert_eq!(
        opened(stored("SELECT spec FROM services WHERE id = 's1'").await),
        "clear-secret-1"
    );
    assert_eq!(
        opened(stored("SELECT before FROM audit WHERE id = 'a1'").await),
        "clear-secret-0"
    );
    assert_eq!(
        opened(stored("SELECT after FROM audit WHERE id = 'a1'").await),
        "clear-secret-1"
    );
    assert_eq!(
        stored("SELECT after FROM audit WHERE id = 'a2'").await,
        other,
        "left alone"
    );
    // Once per database: later writes seal as they store.
    let sealed = stored("SELECT spec FROM services WHERE id = 's1'").await;
    assert_eq!(store.seal_stored_secrets(&key).await.unwrap(), 0);
    assert_eq!(
        stored("SELECT spec FROM services WHERE id = 's1'").await,
        sealed
    );
}

on_sqlite_and_postgres!(secrets_sweep_on_sqlite_and_postgres, secrets_sweep);

/// Rows as a [`store::CallBatch`] holds them.
fn boxed(rows: &[store::CallRow]) -> Vec<Box<store::CallRow>> {
    rows.iter().cloned().map(Box::new).collect()
}

fn call(
    at_ms: i64,
    request_id: &str,
    consumer: &str,
    provider: &str,
    status: u16,
) -> store::CallRow {
    store::CallRow {
        id: store::call_id(at_ms, u128::from(at_ms as u64) << 7),
        entry: domain::calls::CallEntry {
            request_id: request_id.into(),
            at_ms,
            method: "GET".into(),
            path: "/w/x".into(),
            status,
            code: (status == 402).then(|| "insufficient_credit".into()),
            latency_us: 1_500,
            upstream_latency_us: Some(1_000),
            upstream_body_us: None,
            client_ip: "127.0.0.1".into(),
            consumer_team: Some(consumer.into()),
            app: Some(format!("{consumer}-app")),
            provider_team: Some(provider.into()),
            service: Some("w".into()),
            cost_nanos: if status == 200 { 10_000_000 } else { 0 },
            problem: (status == 402).then(|| "{\"balance\":\"0.00\"}".into()),
            completed: true,
            ..Default::default()
        },
    }
}

/// The call log and rollups: pages newest first within a time range,
/// filters, tenant visibility, rollups that add up across writers (nodes),
/// grouped sums, and retention.
async fn calls_and_rollups(store: &Store) {
    use store::{CallFilter, Granularity, GroupBy, RollupKey, RollupQuery, RollupValues};
    store.migrate().await.unwrap();
    let base = 1_800_000_000_000; // a whole hour
    let mut odd = call(base + 500, "odd", "acme", "wco", 200);
    odd.entry.path = "/it's \"quoted\"; DROP TABLE call_logs; -- \\ é 😀\n".into();
    odd.entry.host = None;
    odd.entry.problem = Some("{\"detail\":\"it''s\"}".into());
    let rows = vec![
        odd.clone(),
        call(base + 1_000, "r1", "acme", "wco", 200),
        call(base + 2_000, "r2", "acme", "wco", 402),
        call(base + 61_000, "r3", "other", "wco", 200),
        call(base + 3_600_000, "r4", "acme", "other", 200),
    ];
    let batch = std::sync::Arc::new(store::CallBatch {
        calls: boxed(&rows),
        ..Default::default()
    });
    for _ in 0..2 {
        // A batch written twice is logged once.
        store.write_calls(batch.clone()).await.unwrap();
    }
    let all = Visible::all();
    let page = store
        .calls(&all, &CallFilter::default(), None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = page
        .items
        .iter()
        .map(|r| r.entry.request_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["r4", "r3", "r2", "r1", "odd"],
        "newest first, once each"
    );
    assert_eq!(
        page.items[4].entry, odd.entry,
        "any text is stored as written"
    );
    // Every row as written: a field one row leaves empty is not another's
    // (the rows go through one reused statement, binding only what is set).
    for row in &rows {
        assert_eq!(store.call(&row.id).await.unwrap().as_ref(), Some(row));
    }
    // Pages continue after the cursor; ranges are [from, to).
    let first = store
        .calls(&all, &CallFilter::default(), None, 3)
        .await
        .unwrap();
    let rest = store
        .calls(&all, &CallFilter::default(), first.next_after.as_deref(), 3)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2);
    assert_eq!(rest.items[0].entry.request_id, "r1");
    let ranged = CallFilter {
        from_ms: Some(base + 2_000),
        to_ms: Some(base + 3_600_000),
        ..Default::default()
    };
    let page = store.calls(&all, &ranged, None, 10).await.unwrap();
    let ids: Vec<&str> = page
        .items
        .iter()
        .map(|r| r.entry.request_id.as_str())
        .collect();
    assert_eq!(ids, ["r3", "r2"]);
    let coded = CallFilter {
        code: Some("insufficient_credit"),
        ..Default::default()
    };
    assert_eq!(
        store
            .calls(&all, &coded, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // A team sees calls by its apps and to its services, nothing else.
    let other = Visible::teams(["other"]);
    let page = store
        .calls(&other, &CallFilter::default(), None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = page
        .items
        .iter()
        .map(|r| r.entry.request_id.as_str())
        .collect();
    assert_eq!(ids, ["r4", "r3"]);
    assert_eq!(
        store
            .calls_by_request("r2", "acme", "acme-app", 5)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .calls_by_request("r2", "other", "other-app", 5)
            .await
            .unwrap()
            .is_empty(),
        "another app's call"
    );

    // Rollups: two writers add to the same rows.
    let mut minute = std::collections::HashMap::<RollupKey, RollupValues>::new();
    for row in &rows {
        minute
            .entry(RollupKey::of(&row.entry, Granularity::Minute))
            .or_default()
            .add_call(&row.entry);
    }
    let batch = std::sync::Arc::new(store::CallBatch {
        minute: minute.into_iter().collect(),
        ..Default::default()
    });
    for _ in 0..2 {
        store.write_calls(batch.clone()).await.unwrap();
    }
    let query = RollupQuery {
        granularity: Granularity::Minute,
        from_ms: base,
        to_ms: base + 7_200_000,
        interval_ms: 3_600_000,
        group_by: Some(GroupBy::Team),
        visible: &all,
        service: None,
        app: None,
        team: None,
        latency: true,
        figures: store::Figures::All,
    };
    let slots = store.rollups(&query).await.unwrap();
    let requests = |start: i64, group: &str, status: i64| -> i64 {
        slots
            .iter()
            .filter(|s| s.start_ms == start && s.group == group && s.status == status)
            .map(|s| s.values.requests)
            .sum()
    };
    assert_eq!(requests(base, "acme", 200), 4, "both writers counted");
    assert_eq!(requests(base, "acme", 402), 2);
    assert_eq!(requests(base, "other", 200), 2);
    assert_eq!(requests(base + 3_600_000, "acme", 200), 2);
    let coded: Vec<_> = slots
        .iter()
        .filter(|s| s.code == "insufficient_credit")
        .collect();
    assert_eq!(coded.len(), 1);
    let acme_first_hour = slots
        .iter()
        .find(|s| s.start_ms == base && s.group == "acme" && s.status == 200)
        .unwrap();
    assert_eq!(acme_first_hour.values.cost_nanos, 40_000_000);
    assert_eq!(acme_first_hour.values.latency_sum_us, 6_000);
    assert_eq!(acme_first_hour.values.latency_buckets[3], 4);
    // Visible to a team: its own rows only. Fences and team filters (team
    // equalities; a member of more than 100 teams is fenced another way),
    // each counted from both writers.
    let nobody = Visible::teams([]);
    let slugs: Vec<String> = (0..120).map(|n| format!("team-{n}")).collect();
    let many = Visible::teams(
        slugs
            .iter()
            .map(String::as_str)
            .chain(["other"])
            .collect::<Vec<_>>(),
    );
    let both = Visible::teams(["other", "acme"]);
    for (visible, team, expected, what) in [
        (&other, None, 4, "r3 and r4"),
        (&nobody, None, 0, "a user in no team sees nothing"),
        (&many, None, 4, "121 teams, one of them `other`"),
        (&all, Some("wco"), 8, "calls to wco's services"),
        (&other, Some("wco"), 2, "other's calls to wco"),
        (&both, None, 10, "every call has acme or other on a side"),
        (&many, Some("acme"), 2, "acme's call to other's service"),
    ] {
        let fenced = RollupQuery {
            visible,
            team,
            group_by: None,
            ..query.clone()
        };
        let total: i64 = store
            .rollups(&fenced)
            .await
            .unwrap()
            .iter()
            .map(|s| s.values.requests)
            .sum();
        assert_eq!(total, expected, "{what}");
    }

    // Retention deletes what is older, nothing else.
    assert_eq!(
        store.delete_calls_before(base + 61_000, 100).await.unwrap(),
        3
    );
    let left = store
        .calls(&all, &CallFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(left.items.len(), 2);
    assert_eq!(
        store
            .delete_rollups_before(Granularity::Minute, base + 60_000)
            .await
            .unwrap(),
        2,
        "the first minute's two rows (acme 200 and 402)"
    );
    assert_eq!(
        store
            .delete_rollups_before(Granularity::Hour, base)
            .await
            .unwrap(),
        0
    );
}

/// Calls with no team on a side (anonymous callers, platform services)
/// are logged and listed like any other, and the team filters, which use
/// the team indexes that leave those calls out, still find every call of
/// a team.
async fn calls_without_teams(store: &Store) {
    use store::CallFilter;
    store.migrate().await.unwrap();
    let base = 1_800_000_000_000;
    let mut anonymous = call(base + 1_000, "anonymous", "x", "x", 200);
    anonymous.entry.consumer_team = None;
    anonymous.entry.app = None;
    anonymous.entry.provider_team = None;
    let mut platform = call(base + 2_000, "platform", "acme", "x", 200);
    platform.entry.provider_team = None;
    let mut public = call(base + 3_000, "public", "x", "wco", 200);
    public.entry.consumer_team = None;
    public.entry.app = None;
    let rows = vec![
        anonymous,
        platform,
        public,
        call(base + 4_000, "both", "acme", "wco", 200),
    ];
    store
        .write_calls(std::sync::Arc::new(store::CallBatch {
            calls: boxed(&rows),
            ..Default::default()
        }))
        .await
        .unwrap();
    let listed = |page: store::Page<store::CallRow>| -> Vec<String> {
        page.items.into_iter().map(|r| r.entry.request_id).collect()
    };
    let all = Visible::all();
    assert_eq!(
        listed(
            store
                .calls(&all, &CallFilter::default(), None, 10)
                .await
                .unwrap()
        ),
        ["both", "public", "platform", "anonymous"]
    );
    for (team, expected) in [("acme", ["both", "platform"]), ("wco", ["both", "public"])] {
        let filter = CallFilter {
            team: Some(team),
            ..Default::default()
        };
        assert_eq!(
            listed(store.calls(&all, &filter, None, 10).await.unwrap()),
            expected,
            "filtered by {team}"
        );
        assert_eq!(
            listed(
                store
                    .calls(&Visible::teams([team]), &CallFilter::default(), None, 10)
                    .await
                    .unwrap()
            ),
            expected,
            "visible to {team}"
        );
    }
    if store.backend() == store::Backend::Sqlite {
        // The team and request id indexes are partial. (That the planner
        // still takes them is checked on the real statements, in the unit
        // test `call_log_queries_take_the_indexes_that_bound_them`.)
        let partial: Vec<String> = sqlx::query("PRAGMA index_list(call_logs)")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .filter(|row| sqlx::Row::try_get::<i64, _>(*row, 4).unwrap() == 1)
            .map(|row| sqlx::Row::try_get::<String, _>(row, 1).unwrap())
            .collect();
        assert!(
            partial.contains(&"call_logs_consumer".to_owned())
                && partial.contains(&"call_logs_provider".to_owned())
                && partial.contains(&"call_logs_request".to_owned()),
            "{partial:?}"
        );
    }
}

on_sqlite_and_postgres!(
    calls_without_teams_on_sqlite_and_postgres,
    calls_without_teams
);

/// A request id finds its calls: the one whose row id it is (minted by
/// the gateway for it), and those that carried it as a client's id (a
/// client may send an id the gateway minted earlier), in pages and in
/// `calls_by_request`; the request id index holds only the latter.
async fn calls_by_request_id(store: &Store) {
    use store::CallFilter;
    store.migrate().await.unwrap();
    let base = 1_800_000_000_000;
    let mut minted = call(base + 1_000, "", "acme", "wco", 200);
    minted.entry.request_id = minted.id.clone();
    let mut echoed = call(base + 2_000, &minted.id, "acme", "wco", 200);
    echoed.entry.path = "/again".into();
    let other = call(base + 3_000, "client-id", "acme", "wco", 200);
    store
        .write_calls(std::sync::Arc::new(store::CallBatch {
            calls: boxed(&[minted.clone(), echoed.clone(), other.clone()]),
            ..Default::default()
        }))
        .await
        .unwrap();
    let ids =
        |rows: Vec<store::CallRow>| -> Vec<String> { rows.into_iter().map(|r| r.id).collect() };
    for visible in [Visible::all(), Visible::teams(["acme"])] {
        for team in [None, Some("wco")] {
            let filter = CallFilter {
                request_id: Some(&minted.id),
                team,
                ..Default::default()
            };
            let page = store.calls(&visible, &filter, None, 10).await.unwrap();
            assert_eq!(ids(page.items), [echoed.id.clone(), minted.id.clone()]);
        }
    }
    assert_eq!(
        ids(store
            .calls_by_request(&minted.id, "acme", "acme-app", 5)
            .await
            .unwrap()),
        [echoed.id.clone(), minted.id.clone()]
    );
    assert_eq!(
        ids(store
            .calls_by_request("client-id", "acme", "acme-app", 5)
            .await
            .unwrap()),
        [other.id]
    );
    assert!(
        store
            .calls_by_request("nothing", "acme", "acme-app", 5)
            .await
            .unwrap()
            .is_empty()
    );
    // Only the minted call has its request id as its row id: the index
    // holds the other two.
    let indexed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_logs WHERE request_id <> id")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(indexed, 2);
}

on_sqlite_and_postgres!(
    calls_by_request_id_on_sqlite_and_postgres,
    calls_by_request_id
);

/// A batch of calls wider than one statement (64 + 8 + 1 + 1 rows, with
/// quotes, NULL values and some bodies) is stored whole and exactly, once
/// even when written twice; a NUL in a text is dropped (PostgreSQL refuses
/// it).
async fn calls_in_bulk(store: &Store) {
    use store::CallFilter;
    store.migrate().await.unwrap();
    let base = 1_900_000_000_000;
    let rows: Vec<store::CallRow> = (0..74)
        .map(|n| {
            let mut row = call(base + n, &format!("bulk-{n}"), "acme", "wco", 200);
            row.entry.path = format!("/it's/{n}/\u{0}\"");
            row.entry.host = (n % 2 == 0).then(|| format!("h{n}.example"));
            row.entry.upstream_latency_us = (n % 3 != 0).then_some(n as u64);
            row.entry.bodies = (n % 10 == 0).then(|| {
                Box::new(domain::calls::CallBodies {
                    request_headers: format!("x-n: {n}\nauthorization: [redacted]"),
                    request_body: (n % 20 == 0).then(|| format!("{{\"n\":{n},\"q\":\"it's\"}}")),
                    request_bytes: n as u64,
                    response_headers: "content-type: application/json".into(),
                    response_body: Some("{\"ok\":true}\u{0}".into()),
                    response_bytes: 12,
                })
            });
            row
        })
        .collect();
    let batch = std::sync::Arc::new(store::CallBatch {
        calls: boxed(&rows),
        ..Default::default()
    });
    for _ in 0..2 {
        store.write_calls(batch.clone()).await.unwrap();
    }
    let page = store
        .calls(&Visible::all(), &CallFilter::default(), None, 100)
        .await
        .unwrap();
    // Bodies are read one call at a time.
    for (row, stored) in rows.iter().zip(page.items.iter().rev()) {
        let call = store.call(&stored.id).await.unwrap().unwrap();
        let mut bodies = row.entry.bodies.clone();
        if let Some(bodies) = &mut bodies {
            bodies.response_body = Some("{\"ok\":true}".into());
        }
        assert_eq!(
            call.entry.bodies, bodies,
            "bodies of {}",
            row.entry.request_id
        );
    }
    let mut stored: Vec<_> = page
        .items
        .into_iter()
        .map(|mut r| {
            r.entry.bodies = None;
            r.entry
        })
        .collect();
    stored.reverse();
    let written: Vec<_> = rows
        .into_iter()
        .map(|mut r| {
            r.entry.path = r.entry.path.replace('\0', "");
            r.entry.bodies = None;
            r.entry
        })
        .collect();
    assert_eq!(stored.len(), 74, "every call once");
    assert_eq!(stored, written, "stored as written, NULs dropped");
}

on_sqlite_and_postgres!(calls_in_bulk_on_sqlite_and_postgres, calls_in_bulk);

on_sqlite_and_postgres!(calls_and_rollups_on_sqlite_and_postgres, calls_and_rollups);
on_sqlite_and_postgres!(
    day_rollups_on_sqlite_and_postgres,
    day_rollups_sum_the_hours
);

/// Day rollups: written beside the others, read for whole days, and
/// filled from the hour rollups when a store is upgraded to them.
async fn day_rollups_sum_the_hours(store: &Store) {
    use store::{Granularity, RollupKey, RollupQuery, RollupValues};
    store.migrate().await.unwrap();
    let day = 20_000 * 86_400_000_i64;
    let rows = [
        call(day + 1_000, "a", "acme", "wco", 200),
        call(day + 7_200_000, "b", "acme", "wco", 200),
        call(day + 86_400_000 + 5_000, "c", "acme", "wco", 402),
        call(day + 2 * 86_400_000 - 1, "d", "other", "wco", 200),
    ];
    let rollups = |granularity| {
        let mut map = std::collections::HashMap::<RollupKey, RollupValues>::new();
        for row in &rows {
            map.entry(RollupKey::of(&row.entry, granularity))
                .or_default()
                .add_call(&row.entry);
        }
        map.into_iter().collect::<Vec<_>>()
    };
    let all = Visible::all();
    let query = RollupQuery {
        granularity: Granularity::Day,
        from_ms: day,
        to_ms: day + 2 * 86_400_000,
        interval_ms: 86_400_000,
        group_by: None,
        visible: &all,
        service: None,
        app: None,
        team: None,
        latency: true,
        figures: store::Figures::All,
    };
    let per_day = |slots: Vec<store::RollupSlot>| -> Vec<(i64, i64)> {
        let mut days = std::collections::BTreeMap::new();
        for slot in slots {
            *days.entry(slot.start_ms).or_insert(0) += slot.values.requests;
        }
        days.into_iter().collect()
    };
    // Written by the call writer: all three.
    let batch = std::sync::Arc::new(store::CallBatch {
        minute: rollups(Granularity::Minute),
        hour: rollups(Granularity::Hour),
        day: rollups(Granularity::Day),
        ..Default::default()
    });
    store.write_calls(batch).await.unwrap();
    let expected = vec![(day, 2), (day + 86_400_000, 2)];
    assert_eq!(per_day(store.rollups(&query).await.unwrap()), expected);
    let other = Visible::teams(["other"]);
    let fenced = RollupQuery {
        visible: &other,
        ..query.clone()
    };
    assert_eq!(
        per_day(store.rollups(&fenced).await.unwrap()),
        vec![(day + 86_400_000, 1)]
    );

    // A store from before day rollups: its hours become days on upgrade.
    for sql in [
        "DROP TABLE rollups_day",
        "DELETE FROM schema_migrations WHERE version = 17",
    ] {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    store.migrate().await.unwrap();
    let slots = store.rollups(&query).await.unwrap();
    let latency_sum: i64 = slots.iter().map(|s| s.values.latency_sum_us).sum();
    assert_eq!(per_day(slots), expected, "filled from the hour rollups");
    let hours = store
        .rollups(&RollupQuery {
            granularity: Granularity::Hour,
            ..query.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        latency_sum,
        hours.iter().map(|s| s.values.latency_sum_us).sum::<i64>(),
        "every column summed"
    );
}
