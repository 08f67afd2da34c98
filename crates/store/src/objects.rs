//! Upstreams, services, routes and releases.

use domain::access::{ApiKey, App, Plan, Subscription};
use domain::model::{
    Lifecycle, Release, Route, RouteSpec, Service, ServiceSpec, Upstream, UpstreamSpec,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Executor};

use crate::{
    Result, Store, StoreError, WriteTx, conflict_on, from_json, int, opt_text, text, to_json,
};

/// One page of a list, ordered by id (ids are time-ordered UUID v7).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The id to continue after, when there may be more.
    pub next_after: Option<String>,
}

/// Everything the gateway compiles into its snapshot.
#[derive(Debug, Clone, Default)]
pub struct ConfigData {
    pub version: i64,
    pub upstreams: Vec<Upstream>,
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub apps: Vec<App>,
    /// Without `name` and `created_at_ms` (the gateway does not use them).
    pub keys: Vec<ApiKey>,
    pub plans: Vec<Plan>,
    /// Every subscription, closed ones too (a refusal says why).
    pub subscriptions: Vec<Subscription>,
    /// AI providers with their models and sealed keys.
    pub providers: Vec<crate::providers::ProviderData>,
}

/// The parts of a service the system owns, stored beside its spec.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct ServiceState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deprecated_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sunset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_release: Option<i64>,
}

fn lifecycle_from(text: &str) -> Result<Lifecycle> {
    Ok(match text {
        "draft" => Lifecycle::Draft,
        "published" => Lifecycle::Published,
        "deprecated" => Lifecycle::Deprecated,
        "retired" => Lifecycle::Retired,
        other => return Err(StoreError::Corrupt(format!("unknown lifecycle '{other}'"))),
    })
}

fn upstream_from(row: &AnyRow) -> Result<Upstream> {
    let mut spec: UpstreamSpec = from_json(&text(row, "spec")?, "upstream spec")?;
    spec.slug = text(row, "slug")?;
    Ok(Upstream {
        id: text(row, "id")?,
        spec,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

/// `SELECT` of services with their upstream's slug, followed by `$tail`.
macro_rules! select_services {
    ($tail:literal) => {
        concat!(
            "SELECT s.id, s.slug, s.lifecycle, s.spec, s.state, s.created_at_ms, ",
            "s.updated_at_ms, u.slug AS upstream_slug ",
            "FROM services s LEFT JOIN upstreams u ON u.id = s.upstream_id ",
            $tail
        )
    };
}

fn service_from(row: &AnyRow) -> Result<Service> {
    let mut spec: ServiceSpec = from_json(&text(row, "spec")?, "service spec")?;
    spec.slug = text(row, "slug")?;
    // The upstream is referenced by id; show its current slug.
    spec.upstream = opt_text(row, "upstream_slug")?;
    let state: ServiceState = from_json(&text(row, "state")?, "service state")?;
    Ok(Service {
        id: text(row, "id")?,
        spec,
        lifecycle: lifecycle_from(&text(row, "lifecycle")?)?,
        deprecated_at_ms: state.deprecated_at_ms,
        sunset: state.sunset,
        current_release: state.current_release,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

fn route_from(row: &AnyRow) -> Result<Route> {
    Ok(Route {
        id: text(row, "id")?,
        service_id: text(row, "service_id")?,
        spec: from_json(&text(row, "spec")?, "route spec")?,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

/// How a release is stored: the service spec and its routes (with ids, so
/// a rollback restores the same routes).
#[derive(serde::Serialize, serde::Deserialize)]
struct ReleaseSnapshot {
    service: ServiceSpec,
    routes: Vec<SnapshotRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream_id: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotRoute {
    id: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    spec: RouteSpec,
}

fn release_from(row: &AnyRow) -> Result<Release> {
    let snapshot: ReleaseSnapshot = from_json(&text(row, "snapshot")?, "release snapshot")?;
    let service_id = text(row, "service_id")?;
    let routes = snapshot
        .routes
        .into_iter()
        .map(|route| Route {
            id: route.id,
            service_id: service_id.clone(),
            spec: route.spec,
            created_at_ms: route.created_at_ms,
            updated_at_ms: route.updated_at_ms,
        })
        .collect();
    Ok(Release {
        id: text(row, "id")?,
        service_id,
        version: int(row, "version")?,
        created_at_ms: int(row, "created_at_ms")?,
        note: text(row, "note")?,
        service: snapshot.service,
        routes,
        upstream_id: snapshot.upstream_id,
    })
}

pub(crate) fn page_of<T>(mut items: Vec<T>, limit: usize, id_of: impl Fn(&T) -> &str) -> Page<T> {
    let next_after = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|item| id_of(item).to_owned())
    } else {
        None
    };
    Page { items, next_after }
}

pub(crate) fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)
}

// Reads, generic over the pool and a transaction.

async fn upstream_by_key<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    key: &str,
) -> Result<Option<Upstream>> {
    let row = sqlx::query("SELECT * FROM upstreams WHERE id = $1 OR slug = $1")
        .bind(key)
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(upstream_from).transpose()
}

async fn service_by_key<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    key: &str,
) -> Result<Option<Service>> {
    let row = sqlx::query(select_services!("WHERE s.id = $1 OR s.slug = $1"))
        .bind(key)
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(service_from).transpose()
}

async fn routes_of<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    service_id: &str,
) -> Result<Vec<Route>> {
    let rows = sqlx::query("SELECT * FROM routes WHERE service_id = $1 ORDER BY id")
        .bind(service_id)
        .fetch_all(exec)
        .await?;
    rows.iter().map(route_from).collect()
}

impl Store {
    pub async fn upstream(&self, key: &str) -> Result<Option<Upstream>> {
        upstream_by_key(&self.pool, key).await
    }

    pub async fn upstreams(
        &self,
        visible: &crate::Visible,
        after: Option<&str>,
        limit: usize,
        team: Option<&str>,
    ) -> Result<Page<Upstream>> {
        let rows = sqlx::query(concat!(
            "SELECT * FROM upstreams WHERE id > $1 AND ($2 = '' OR team = $2) AND ",
            crate::access::visible_sql!("team", "4"),
            " ORDER BY id LIMIT $3"
        ))
        .bind(after.unwrap_or(""))
        .bind(team.unwrap_or(""))
        .bind(fetch_limit(limit))
        .bind(visible.param())
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(upstream_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |u| &u.id))
    }

    pub async fn service(&self, key: &str) -> Result<Option<Service>> {
        service_by_key(&self.pool, key).await
    }

    pub async fn services(
        &self,
        visible: &crate::Visible,
        after: Option<&str>,
        limit: usize,
        team: Option<&str>,
        lifecycle: Option<Lifecycle>,
    ) -> Result<Page<Service>> {
        let rows = sqlx::query(select_services!(
            "WHERE s.id > $1 AND ($2 = '' OR s.team = $2) AND ($3 = '' OR s.lifecycle = $3) AND \
             ($5 = '*' OR (',' || $5 || ',') LIKE ('%,' || s.team || ',%')) ORDER BY s.id LIMIT $4"
        ))
        .bind(after.unwrap_or(""))
        .bind(team.unwrap_or(""))
        .bind(lifecycle.map_or("", Lifecycle::as_str))
        .bind(fetch_limit(limit))
        .bind(visible.param())
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(service_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |s| &s.id))
    }

    pub async fn routes(
        &self,
        service_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Route>> {
        let rows = sqlx::query(
            "SELECT * FROM routes WHERE service_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(service_id)
        .bind(after.unwrap_or(""))
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(route_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |r| &r.id))
    }

    /// A route of `service_id` by id or name.
    pub async fn route(&self, service_id: &str, key: &str) -> Result<Option<Route>> {
        let row =
            sqlx::query("SELECT * FROM routes WHERE service_id = $1 AND (id = $2 OR name = $2)")
                .bind(service_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(route_from).transpose()
    }

    pub async fn releases(
        &self,
        service_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Release>> {
        let rows = sqlx::query(
            "SELECT * FROM releases WHERE service_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(service_id)
        .bind(after.unwrap_or(""))
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(release_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |r| &r.id))
    }

    /// A release by version number or id.
    pub async fn release(&self, service_id: &str, key: &str) -> Result<Option<Release>> {
        let version = key.parse::<i64>().unwrap_or(-1);
        let row = sqlx::query(
            "SELECT * FROM releases WHERE service_id = $1 AND (id = $2 OR version = $3)",
        )
        .bind(service_id)
        .bind(key)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(release_from).transpose()
    }

    /// Published and deprecated services, for the catalog.
    pub async fn published_services(&self) -> Result<Vec<Service>> {
        let rows = sqlx::query(select_services!(
            "WHERE s.lifecycle IN ('published', 'deprecated') ORDER BY s.slug"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(service_from).collect()
    }

    /// Slugs of the services that use an upstream.
    pub async fn services_using_upstream(&self, upstream_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT slug FROM services WHERE upstream_id = $1 ORDER BY slug")
            .bind(upstream_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| text(row, "slug")).collect()
    }

    /// The whole configuration, read in one transaction so it is consistent.
    pub async fn load_all(&self) -> Result<ConfigData> {
        let mut tx = self.pool.begin().await?;
        let version = sqlx::query("SELECT version FROM config_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| sqlx::Row::try_get::<i64, _>(&row, 0))?;
        let upstreams = sqlx::query("SELECT * FROM upstreams ORDER BY id")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(upstream_from)
            .collect::<Result<Vec<_>>>()?;
        let services = sqlx::query(select_services!("ORDER BY s.id"))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(service_from)
            .collect::<Result<Vec<_>>>()?;
        let routes = sqlx::query("SELECT * FROM routes ORDER BY id")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(route_from)
            .collect::<Result<Vec<_>>>()?;
        let access = crate::access::load_access(&mut tx, self.backend).await?;
        let providers = crate::providers::load_providers(&mut tx).await?;
        tx.commit().await?;
        Ok(ConfigData {
            version,
            upstreams,
            services,
            routes,
            apps: access.0,
            keys: access.1,
            plans: access.2,
            subscriptions: access.3,
            providers,
        })
    }
}

impl WriteTx {
    pub async fn upstream(&mut self, key: &str) -> Result<Option<Upstream>> {
        upstream_by_key(&mut *self.tx, key).await
    }

    pub async fn service(&mut self, key: &str) -> Result<Option<Service>> {
        service_by_key(&mut *self.tx, key).await
    }

    /// A route of `service_id` by id or name.
    pub async fn route(&mut self, service_id: &str, key: &str) -> Result<Option<Route>> {
        let row =
            sqlx::query("SELECT * FROM routes WHERE service_id = $1 AND (id = $2 OR name = $2)")
                .bind(service_id)
                .bind(key)
                .fetch_optional(&mut *self.tx)
                .await?;
        row.as_ref().map(route_from).transpose()
    }

    pub async fn routes_of(&mut self, service_id: &str) -> Result<Vec<Route>> {
        routes_of(&mut *self.tx, service_id).await
    }

    /// Every route of every service, with the service it belongs to, for
    /// conflict checks.
    pub async fn all_routes(&mut self) -> Result<Vec<Route>> {
        let rows = sqlx::query("SELECT * FROM routes ORDER BY id")
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(route_from).collect()
    }

    pub async fn all_services(&mut self) -> Result<Vec<Service>> {
        let rows = sqlx::query(select_services!("ORDER BY s.id"))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(service_from).collect()
    }

    pub async fn all_upstreams(&mut self) -> Result<Vec<Upstream>> {
        let rows = sqlx::query("SELECT * FROM upstreams ORDER BY id")
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(upstream_from).collect()
    }

    pub async fn put_upstream(&mut self, upstream: &Upstream) -> Result<()> {
        self.changed_config = true;
        sqlx::query(
            "INSERT INTO upstreams (id, slug, team, spec, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, team = excluded.team, \
             spec = excluded.spec, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&upstream.id)
        .bind(&upstream.spec.slug)
        .bind(upstream.spec.team.as_deref())
        .bind(to_json(&upstream.spec)?)
        .bind(upstream.created_at_ms)
        .bind(upstream.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on(
            "slug",
            "an upstream with this slug already exists",
        ))?;
        Ok(())
    }

    /// Deletes an upstream; refuses when a service uses it.
    /// Slugs of the live (not draft) services that use the upstream `id`.
    pub async fn live_services_using(&mut self, id: &str) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT slug FROM services WHERE upstream_id = $1 AND lifecycle <> 'draft' ORDER BY slug",
        )
        .bind(id)
        .fetch_all(&mut *self.tx)
        .await?
        .iter()
        .map(|row| text(row, "slug"))
        .collect()
    }

    pub async fn delete_upstream(&mut self, id: &str) -> Result<()> {
        self.changed_config = true;
        let users = sqlx::query("SELECT slug FROM services WHERE upstream_id = $1 ORDER BY slug")
            .bind(id)
            .fetch_all(&mut *self.tx)
            .await?;
        if !users.is_empty() {
            let slugs = users
                .iter()
                .map(|row| text(row, "slug"))
                .collect::<Result<Vec<_>>>()?;
            return Err(StoreError::Conflict {
                field: "upstream".into(),
                message: format!("is used by services: {}", slugs.join(", ")),
            });
        }
        sqlx::query("DELETE FROM upstreams WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Inserts or updates a service; `upstream_id` is the resolved reference.
    pub async fn put_service(
        &mut self,
        service: &Service,
        upstream_id: Option<&str>,
    ) -> Result<()> {
        self.changed_config = true;
        let state = ServiceState {
            deprecated_at_ms: service.deprecated_at_ms,
            sunset: service.sunset.clone(),
            current_release: service.current_release,
        };
        sqlx::query(
            "INSERT INTO services (id, slug, team, upstream_id, lifecycle, spec, state, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, team = excluded.team, \
             upstream_id = excluded.upstream_id, lifecycle = excluded.lifecycle, spec = excluded.spec, \
             state = excluded.state, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&service.id)
        .bind(&service.spec.slug)
        .bind(service.spec.team.as_deref())
        .bind(upstream_id)
        .bind(service.lifecycle.as_str())
        .bind(to_json(&service.spec)?)
        .bind(to_json(&state)?)
        .bind(service.created_at_ms)
        .bind(service.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on("slug", "a service with this slug already exists"))?;
        Ok(())
    }

    pub async fn delete_service(&mut self, id: &str) -> Result<()> {
        self.changed_config = true;
        // Explicit, so it does not depend on the backend's cascade settings.
        sqlx::query("DELETE FROM subscriptions WHERE service_id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM plans WHERE service_id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM routes WHERE service_id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM releases WHERE service_id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM services WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn put_route(&mut self, route: &Route) -> Result<()> {
        self.changed_config = true;
        sqlx::query(
            "INSERT INTO routes (id, service_id, name, spec, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, spec = excluded.spec, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&route.id)
        .bind(&route.service_id)
        .bind(route.spec.name.as_deref())
        .bind(to_json(&route.spec)?)
        .bind(route.created_at_ms)
        .bind(route.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on(
            "name",
            "this service already has a route with this name",
        ))?;
        Ok(())
    }

    pub async fn delete_route(&mut self, id: &str) -> Result<()> {
        self.changed_config = true;
        sqlx::query("DELETE FROM routes WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The next release version of a service (1 for the first).
    pub async fn next_release_version(&mut self, service_id: &str) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(version) FROM releases WHERE service_id = $1")
            .bind(service_id)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(sqlx::Row::try_get::<Option<i64>, _>(&row, 0)?.unwrap_or(0) + 1)
    }

    pub async fn insert_release(&mut self, release: &Release) -> Result<()> {
        let snapshot = ReleaseSnapshot {
            service: release.service.clone(),
            routes: release
                .routes
                .iter()
                .map(|route| SnapshotRoute {
                    id: route.id.clone(),
                    created_at_ms: route.created_at_ms,
                    updated_at_ms: route.updated_at_ms,
                    spec: route.spec.clone(),
                })
                .collect(),
            upstream_id: release.upstream_id.clone(),
        };
        sqlx::query(
            "INSERT INTO releases (id, service_id, version, note, snapshot, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&release.id)
        .bind(&release.service_id)
        .bind(release.version)
        .bind(&release.note)
        .bind(to_json(&snapshot)?)
        .bind(release.created_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on(
            "version",
            "a release with this version already exists",
        ))?;
        Ok(())
    }
}
