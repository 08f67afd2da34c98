//! The write operations of the control plane, each inside a caller-owned
//! [`WriteTx`], shared by the REST handlers and the declarative `apply`.
//! They validate, check references and conflicts, and write; the caller
//! commits (or, for a dry run, drops the transaction).

use domain::model::{
    Lifecycle, Release, Route, RouteSpec, Service, ServiceSpec, Upstream, UpstreamSpec,
};
use domain::{id::new_id, now_ms};
use store::WriteTx;

use crate::error::ApiError;

/// A named team must exist.
async fn check_team(tx: &mut WriteTx, team: Option<&str>) -> Result<(), ApiError> {
    if let Some(slug) = team
        && tx.team(slug).await?.is_none()
    {
        return Err(ApiError::field(
            "team",
            format!("no team '{slug}' exists; create it first (POST /api/v1/teams)"),
        ));
    }
    Ok(())
}

pub async fn create_upstream(tx: &mut WriteTx, spec: UpstreamSpec) -> Result<Upstream, ApiError> {
    spec.validate()?;
    check_team(tx, spec.team.as_deref()).await?;
    let now = now_ms();
    let upstream = Upstream {
        id: new_id(),
        spec,
        created_at_ms: now,
        updated_at_ms: now,
    };
    tx.put_upstream(&upstream).await?;
    Ok(upstream)
}

pub async fn update_upstream(
    tx: &mut WriteTx,
    existing: &Upstream,
    spec: UpstreamSpec,
) -> Result<Upstream, ApiError> {
    spec.validate()?;
    check_team(tx, spec.team.as_deref()).await?;
    let upstream = Upstream {
        id: existing.id.clone(),
        spec,
        created_at_ms: existing.created_at_ms,
        updated_at_ms: now_ms(),
    };
    tx.put_upstream(&upstream).await?;
    Ok(upstream)
}

pub async fn delete_upstream(tx: &mut WriteTx, existing: &Upstream) -> Result<(), ApiError> {
    // A refusal names the upstream (a pruning apply deletes several).
    tx.delete_upstream(&existing.id)
        .await
        .map_err(|error| match error {
            store::StoreError::Conflict { field, message } => store::StoreError::Conflict {
                field,
                message: format!("'{}' {message}", existing.spec.slug),
            },
            other => other,
        })?;
    Ok(())
}

/// Resolves the service's upstream reference (slug or id) to its id, and
/// stores the slug in the spec.
async fn resolve_upstream(
    tx: &mut WriteTx,
    spec: &mut ServiceSpec,
) -> Result<Option<String>, ApiError> {
    let Some(key) = spec.upstream.clone() else {
        return Ok(None);
    };
    // Another team's upstream is answered as a missing one: its existence
    // is that team's business.
    let missing = || {
        ApiError::field(
            "upstream",
            format!(
                "no upstream '{key}' exists among this team's or the shared upstreams; create it first"
            ),
        )
    };
    match tx.upstream(&key).await? {
        Some(upstream) if upstream.spec.team.is_some() && upstream.spec.team != spec.team => {
            if spec.team.is_none() {
                // Only platform callers make platform services, and they
                // see every team's upstreams anyway.
                Err(ApiError::field(
                    "upstream",
                    format!(
                        "'{key}' belongs to a team, and this service has no 'team' (a platform service uses shared upstreams only); set the service's team"
                    ),
                ))
            } else {
                Err(missing())
            }
        }
        Some(upstream) => {
            spec.upstream = Some(upstream.spec.slug.clone());
            Ok(Some(upstream.id))
        }
        None => Err(missing()),
    }
}

/// Every provider an AI service names exists, and every model it names
/// (not `<provider>/*`) has a price: the provider's catalogue preset knows
/// it, or an operator added it. An unpriced model could never be charged.
async fn check_ai_models(tx: &mut WriteTx, ai: &domain::ai::AiSpec) -> Result<(), ApiError> {
    static CATALOG: std::sync::OnceLock<domain::catalog::Catalog> = std::sync::OnceLock::new();
    let catalog = CATALOG.get_or_init(|| domain::catalog::Catalog::builtin().unwrap_or_default());
    let mut known = std::collections::HashMap::new();
    for provider in ai.providers() {
        let Some((found, own)) = tx.provider_with_models(provider).await? else {
            return Err(ApiError::field(
                "ai",
                format!(
                    "no provider '{provider}' exists; create it first (POST /api/v1/providers)"
                ),
            ));
        };
        let models: std::collections::HashSet<String> =
            domain::providers::effective_models(catalog, &found.spec, &own)
                .into_iter()
                .map(|m| m.model)
                .collect();
        known.insert(provider.to_owned(), models);
    }
    let named =
        ai.models
            .iter()
            .map(|m| ("ai.models", m.as_str()))
            .chain(ai.aliases.values().flat_map(|alias| {
                alias
                    .targets
                    .iter()
                    .map(|t| ("ai.aliases", t.model.as_str()))
                    .chain(alias.fallbacks.iter().map(|m| ("ai.aliases", m.as_str())))
            }));
    for (field, name) in named {
        let Some((provider, model)) = domain::ai::split_model(name) else {
            continue;
        };
        if model == "*" {
            continue;
        }
        if !known
            .get(provider)
            .is_some_and(|models| models.contains(model))
        {
            return Err(ApiError::field(
                field,
                format!(
                    "'{name}' has no price: the provider's catalogue does not list it; add it with PUT /api/v1/providers/{provider}/models/{model} (prices, context window, modalities)"
                ),
            ));
        }
    }
    Ok(())
}

async fn save_service(tx: &mut WriteTx, service: &mut Service) -> Result<(), ApiError> {
    let upstream_id = resolve_upstream(tx, &mut service.spec).await?;
    if let Some(doc) = &service.spec.openapi {
        let operations =
            mcp::openapi::operations(doc).map_err(|message| ApiError::field("openapi", message))?;
        if operations.is_empty() {
            return Err(ApiError::field(
                "openapi",
                "the document has no operations (paths with methods)",
            ));
        }
    }
    if let Some(prompt) = &service.spec.prompt {
        let mut errors = domain::validate::FieldErrors::new();
        prompt.validate(&mut errors, &mcp::schema::check_schema);
        errors.into_result()?;
        if let Some((provider, _)) = domain::ai::split_model(&prompt.model)
            && !tx.provider_exists(provider).await?
        {
            return Err(ApiError::field(
                "prompt.model",
                format!(
                    "no provider '{provider}' exists; create it first (POST /api/v1/providers)"
                ),
            ));
        }
    }
    if let Some(ai) = &service.spec.ai {
        check_ai_models(tx, ai).await?;
    }
    tx.put_service(service, upstream_id.as_deref()).await?;
    Ok(())
}

/// Seals the spec's HS256 secrets before it is stored (see
/// [`store::secrets::MasterKey::seal_spec_secrets`]).
fn seal_secrets(
    secrets: &store::secrets::MasterKey,
    spec: &mut ServiceSpec,
) -> Result<(), ApiError> {
    secrets.seal_spec_secrets(spec).map_err(|(field, error)| {
        ApiError::field(
            field,
            match error {
                store::secrets::SecretError::Open => {
                    "was sealed under another master key or is damaged: send the secret itself"
                        .to_owned()
                }
                other => other.to_string(),
            },
        )
    })
}

pub async fn create_service(
    tx: &mut WriteTx,
    secrets: &store::secrets::MasterKey,
    mut spec: ServiceSpec,
) -> Result<Service, ApiError> {
    spec.validate()?;
    seal_secrets(secrets, &mut spec)?;
    check_team(tx, spec.team.as_deref()).await?;
    check_base_path_owner(tx, &spec, None).await?;
    let now = now_ms();
    let mut service = Service {
        id: new_id(),
        spec,
        lifecycle: Lifecycle::Draft,
        deprecated_at_ms: None,
        sunset: None,
        current_release: None,
        created_at_ms: now,
        updated_at_ms: now,
    };
    save_service(tx, &mut service).await?;
    Ok(service)
}

pub async fn update_service(
    tx: &mut WriteTx,
    secrets: &store::secrets::MasterKey,
    existing: &Service,
    mut spec: ServiceSpec,
) -> Result<Service, ApiError> {
    spec.validate()?;
    seal_secrets(secrets, &mut spec)?;
    check_team(tx, spec.team.as_deref()).await?;
    if spec.kind != existing.spec.kind {
        return Err(ApiError::field(
            "kind",
            "cannot change once the service exists",
        ));
    }
    if spec.base_path != existing.spec.base_path || spec.team != existing.spec.team {
        check_base_path_owner(tx, &spec, Some(&existing.id)).await?;
    }
    let mut service = existing.clone();
    let base_path_changed = spec.base_path != existing.spec.base_path;
    service.spec = spec;
    service.updated_at_ms = now_ms();
    if base_path_changed {
        for route in tx.routes_of(&service.id).await? {
            check_route_conflict(tx, &service, &route.spec, Some(&route.id))
                .await
                .map_err(|e| e.within_field("base_path"))?;
        }
    }
    save_service(tx, &mut service).await?;
    Ok(service)
}

/// Deletes a service with its routes and releases. A service that answers
/// traffic (published or deprecated) must be retired first, unless `force`.
pub async fn delete_service(
    tx: &mut WriteTx,
    existing: &Service,
    force: bool,
) -> Result<(), ApiError> {
    if !force
        && matches!(
            existing.lifecycle,
            Lifecycle::Published | Lifecycle::Deprecated
        )
    {
        return Err(ApiError::invalid_state(format!(
            "The service '{}' is {} and serving traffic; retire it first (POST .../retire) or delete with ?force=true.",
            existing.spec.slug,
            existing.lifecycle.as_str()
        )));
    }
    tx.delete_service(&existing.id).await?;
    Ok(())
}

/// Whether one base path is the other or lies under it, segment by
/// segment: `/lab` and `/lab/x` overlap, `/lab` and `/labs` do not, `/`
/// overlaps every path.
fn base_paths_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.starts_with(short) && long[short.len()..].chars().next().is_none_or(|c| c == '/')
}

/// Refuses a base path that overlaps one of another owner's services (a
/// team's, or the platform's): the most specific route wins across
/// services, so a team could otherwise answer, and read the requests of,
/// paths under another team's service. Services of one owner may share
/// paths. The other service is not named: it may be private.
async fn check_base_path_owner(
    tx: &mut WriteTx,
    spec: &ServiceSpec,
    service_id: Option<&str>,
) -> Result<(), ApiError> {
    for other in tx.all_services().await? {
        if Some(other.id.as_str()) == service_id || other.spec.team == spec.team {
            continue;
        }
        if base_paths_overlap(&spec.base_path, &other.spec.base_path) {
            return Err(ApiError::conflict(
                "base_path",
                format!(
                    "'{}' overlaps the base path of another team's service (one lies under the other); each team's services answer under base paths of their own. Choose another base path.",
                    spec.base_path
                ),
            ));
        }
    }
    Ok(())
}

/// The pattern with parameter names erased: `/a/{x}` and `/a/{y}` collide.
fn route_key(base_path: &str, path: &str) -> String {
    domain::path::join(base_path, path)
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
        .trim_end_matches('/')
        .to_owned()
}

fn methods_overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|m| b.iter().any(|n| m.eq_ignore_ascii_case(n)))
}

/// Refuses a route that would answer exactly the same requests as another
/// (same host, same pattern, overlapping methods), in any service.
async fn check_route_conflict(
    tx: &mut WriteTx,
    service: &Service,
    spec: &RouteSpec,
    route_id: Option<&str>,
) -> Result<(), ApiError> {
    let key = route_key(&service.spec.base_path, &spec.path);
    let services = tx.all_services().await?;
    for other in tx.all_routes().await? {
        if Some(other.id.as_str()) == route_id {
            continue;
        }
        let other_base = if other.service_id == service.id {
            service.spec.base_path.as_str()
        } else {
            match services.iter().find(|s| s.id == other.service_id) {
                Some(s) => s.spec.base_path.as_str(),
                None => continue,
            }
        };
        let same_host = other.spec.host.as_deref().map(str::to_ascii_lowercase)
            == spec.host.as_deref().map(str::to_ascii_lowercase);
        if same_host
            && route_key(other_base, &other.spec.path) == key
            && methods_overlap(&other.spec.methods, &spec.methods)
        {
            let owner = services.iter().find(|s| s.id == other.service_id);
            // Another team's service is not named: it may be private.
            let whose = match owner {
                Some(owner) if owner.spec.team == service.spec.team => {
                    format!("route {} of service '{}'", other.id, owner.spec.slug)
                }
                _ => "a route of another team's service".to_owned(),
            };
            return Err(ApiError::conflict(
                "path",
                format!(
                    "{whose} already answers {} {}",
                    if other.spec.methods.is_empty() {
                        "any method on".to_owned()
                    } else {
                        other.spec.methods.join("/")
                    },
                    domain::path::join(other_base, &other.spec.path)
                ),
            ));
        }
    }
    Ok(())
}

pub async fn create_route(
    tx: &mut WriteTx,
    service: &Service,
    spec: RouteSpec,
) -> Result<Route, ApiError> {
    spec.validate()?;
    check_route_conflict(tx, service, &spec, None).await?;
    let now = now_ms();
    let route = Route {
        id: new_id(),
        service_id: service.id.clone(),
        spec,
        created_at_ms: now,
        updated_at_ms: now,
    };
    tx.put_route(&route).await?;
    Ok(route)
}

pub async fn update_route(
    tx: &mut WriteTx,
    service: &Service,
    existing: &Route,
    spec: RouteSpec,
) -> Result<Route, ApiError> {
    spec.validate()?;
    check_route_conflict(tx, service, &spec, Some(&existing.id)).await?;
    let route = Route {
        id: existing.id.clone(),
        service_id: existing.service_id.clone(),
        spec,
        created_at_ms: existing.created_at_ms,
        updated_at_ms: now_ms(),
    };
    tx.put_route(&route).await?;
    Ok(route)
}

pub async fn delete_route(tx: &mut WriteTx, existing: &Route) -> Result<(), ApiError> {
    tx.delete_route(&existing.id).await?;
    Ok(())
}

async fn record_release(
    tx: &mut WriteTx,
    service: &mut Service,
    note: String,
) -> Result<Release, ApiError> {
    let routes = tx.routes_of(&service.id).await?;
    let version = tx.next_release_version(&service.id).await?;
    let upstream_id = match &service.spec.upstream {
        Some(upstream) => tx.upstream(upstream).await?.map(|upstream| upstream.id),
        None => None,
    };
    let release = Release {
        id: new_id(),
        service_id: service.id.clone(),
        version,
        created_at_ms: now_ms(),
        note,
        service: service.spec.clone(),
        routes,
        upstream_id,
    };
    tx.insert_release(&release).await?;
    service.current_release = Some(version);
    service.updated_at_ms = now_ms();
    save_service(tx, service).await?;
    Ok(release)
}

/// Publishes: snapshots the service and its routes as a new release and
/// makes a draft service live. A deprecated service stays deprecated.
pub async fn publish(
    tx: &mut WriteTx,
    existing: &Service,
    note: Option<String>,
) -> Result<(Service, Release), ApiError> {
    if existing.lifecycle == Lifecycle::Retired {
        return Err(ApiError::invalid_state(format!(
            "The service '{}' is retired; retired services cannot be published again. Create a new service.",
            existing.spec.slug
        )));
    }
    let mut service = existing.clone();
    if service.lifecycle == Lifecycle::Draft {
        service.lifecycle = Lifecycle::Published;
    }
    let release =
        record_release(tx, &mut service, note.unwrap_or_else(|| "publish".into())).await?;
    Ok((service, release))
}

/// Restores the service settings and routes of an earlier release, and
/// records that as a new release.
pub async fn rollback(
    tx: &mut WriteTx,
    existing: &Service,
    target: &Release,
) -> Result<(Service, Release), ApiError> {
    if existing.lifecycle == Lifecycle::Retired {
        return Err(ApiError::invalid_state(
            "A retired service cannot be rolled back.",
        ));
    }
    let mut service = existing.clone();
    let mut spec = target.service.clone();
    spec.slug = existing.spec.slug.clone();
    // Ownership is not a release setting: a service moved to another team
    // stays there.
    spec.team = existing.spec.team.clone();
    // The release's base path is checked as a PATCH would check it:
    // another team may have taken it since.
    check_base_path_owner(tx, &spec, Some(&existing.id))
        .await
        .map_err(|e| e.within_field("release"))?;
    // The release's upstream by its id: renamed since, it is named as it
    // is now (and a newer upstream that took the old name is not it).
    if let Some(id) = &target.upstream_id {
        spec.upstream = tx.upstream(id).await?.map(|upstream| upstream.spec.slug);
        if spec.upstream.is_none() {
            spec.upstream = target.service.upstream.clone();
        }
    }
    service.spec = spec;
    if let Some(upstream) = &service.spec.upstream
        && (tx.upstream(upstream).await?.is_none()
            || target.upstream_id.is_some()
                && tx.upstream(upstream).await?.map(|u| u.id) != target.upstream_id)
    {
        return Err(ApiError::conflict(
            "release",
            format!(
                "release {} uses upstream '{upstream}', which no longer exists",
                target.version
            ),
        ));
    }
    for route in tx.routes_of(&service.id).await? {
        tx.delete_route(&route.id).await?;
    }
    for route in &target.routes {
        let mut restored = route.clone();
        restored.service_id = service.id.clone();
        restored.updated_at_ms = now_ms();
        check_route_conflict(tx, &service, &restored.spec, Some(&restored.id))
            .await
            .map_err(|e| e.within_field("release"))?;
        tx.put_route(&restored).await?;
    }
    let release = record_release(
        tx,
        &mut service,
        format!("rollback to release {}", target.version),
    )
    .await?;
    Ok((service, release))
}

/// Marks a published service deprecated, with an optional sunset date.
///
/// `restoring` (a declarative file, an export applied elsewhere): a sunset
/// already past is history to keep, not a mistake to refuse.
pub async fn deprecate(
    tx: &mut WriteTx,
    existing: &Service,
    sunset: Option<String>,
    restoring: bool,
) -> Result<Service, ApiError> {
    if !matches!(
        existing.lifecycle,
        Lifecycle::Published | Lifecycle::Deprecated
    ) {
        return Err(ApiError::invalid_state(format!(
            "Only a published service can be deprecated; '{}' is {}.",
            existing.spec.slug,
            existing.lifecycle.as_str()
        )));
    }
    if let Some(text) = &sunset {
        let at = domain::model::parse_sunset(text).map_err(|m| ApiError::field("sunset", m))?;
        if at * 1000 <= now_ms() && !restoring {
            return Err(ApiError::field("sunset", "must be in the future"));
        }
    }
    let mut service = existing.clone();
    if service.lifecycle != Lifecycle::Deprecated {
        service.deprecated_at_ms = Some(now_ms());
    }
    service.lifecycle = Lifecycle::Deprecated;
    service.sunset = sunset;
    service.updated_at_ms = now_ms();
    save_service(tx, &mut service).await?;
    Ok(service)
}

/// Retires a service: the gateway answers 410 on its routes from now on.
pub async fn retire(tx: &mut WriteTx, existing: &Service) -> Result<Service, ApiError> {
    if existing.lifecycle == Lifecycle::Draft {
        return Err(ApiError::invalid_state(format!(
            "The service '{}' was never published; delete it instead.",
            existing.spec.slug
        )));
    }
    let mut service = existing.clone();
    if service.lifecycle != Lifecycle::Retired {
        service.lifecycle = Lifecycle::Retired;
        service.updated_at_ms = now_ms();
        save_service(tx, &mut service).await?;
    }
    Ok(service)
}

/// Empties a service's response caches: the gateway keys its routes'
/// answers by the service's version (`updated_at_ms`), so every node
/// stops finding them once it has loaded the new one.
pub async fn purge_cache(tx: &mut WriteTx, existing: &Service) -> Result<Service, ApiError> {
    let mut service = existing.clone();
    // Strictly later, even within the millisecond of the last change.
    service.updated_at_ms = now_ms().max(existing.updated_at_ms + 1);
    save_service(tx, &mut service).await?;
    Ok(service)
}

impl ApiError {
    /// Re-labels a conflict found while checking something else.
    fn within_field(mut self, field: &str) -> Self {
        for error in &mut self.errors {
            // The detail names the field as the errors do.
            if let Some(rest) = self.detail.strip_prefix(&format!("{}: ", error.field)) {
                self.detail = format!("{field}: {rest}");
            }
            error.field = field.to_owned();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::base_paths_overlap;

    #[test]
    fn base_paths_overlap_segment_by_segment() {
        for (a, b) in [
            ("/lab", "/lab"),
            ("/lab", "/lab/x"),
            ("/lab/x/y", "/lab"),
            ("/", "/anything"),
            ("/lab/", "/lab"),
        ] {
            assert!(base_paths_overlap(a, b), "{a} {b}");
            assert!(base_paths_overlap(b, a), "{b} {a}");
        }
        for (a, b) in [("/lab", "/labs"), ("/lab/x", "/lab/y"), ("/a", "/b")] {
            assert!(!base_paths_overlap(a, b), "{a} {b}");
            assert!(!base_paths_overlap(b, a), "{b} {a}");
        }
    }
}
