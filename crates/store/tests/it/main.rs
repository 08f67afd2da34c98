//! The store against both backends: a SQLite file and the PostgreSQL server
//! on this machine (a fresh database per test, dropped afterwards).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use domain::model::{Lifecycle, Route, RouteSpec, Service, ServiceSpec, Upstream, UpstreamSpec};
use store::{Store, StoreError};

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
    assert_eq!(store.migrate().await.unwrap(), vec![1]);
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
    let first = store.upstreams(None, 4, None).await.unwrap();
    assert_eq!(first.items.len(), 4);
    let second = store
        .upstreams(first.next_after.as_deref(), 4, None)
        .await
        .unwrap();
    assert_eq!(second.items.len(), 2);
    assert!(second.next_after.is_none());

    let all = store.load_all().await.unwrap();
    assert_eq!(
        (all.upstreams.len(), all.services.len(), all.routes.len()),
        (6, 1, 1)
    );

    let mut tx = store.begin().await.unwrap();
    tx.delete_service(&svc.id).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        store.load_all().await.unwrap().routes.is_empty(),
        "routes go with their service"
    );
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

#[tokio::test]
async fn postgres() {
    let (pg, store) = Pg::create().await;
    exercise(&store).await;
    pg.drop(store).await;
}
