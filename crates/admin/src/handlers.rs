//! REST handlers for upstreams, services, routes, releases and the service
//! lifecycle actions. Each write runs in one transaction; on commit the
//! gateway is told to reload.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::access::Role;
use domain::model::{
    Lifecycle, Release, Route, RouteSpec, Service, ServiceSpec, Upstream, UpstreamSpec,
};
use serde::{Deserialize, Serialize};
use store::{Page, WriteTx};

use crate::AdminState;
use crate::access::{Audit, Caller, NONE, audit, keep_team};
use crate::error::ApiError;
use crate::extract::{Json, ListParams, encode_cursor, from_value};
use crate::ops;

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    /// Pass as `?cursor=` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> From<Page<T>> for ListResponse<T> {
    fn from(page: Page<T>) -> Self {
        Self {
            data: page.items,
            next_cursor: page.next_after.as_deref().map(encode_cursor),
        }
    }
}

pub(crate) fn ok<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

pub(crate) fn created<T: Serialize>(value: &T, location: String) -> Response {
    let mut response = (StatusCode::CREATED, axum::Json(value)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

pub(crate) async fn commit(state: &AdminState, tx: WriteTx) -> Result<(), ApiError> {
    tx.commit().await?;
    (state.on_change)();
    Ok(())
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut serde_json::Value, patch: serde_json::Value) {
    match patch {
        serde_json::Value::Object(fields) => {
            if !target.is_object() {
                *target = serde_json::Value::Object(serde_json::Map::new());
            }
            if let serde_json::Value::Object(map) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        map.remove(&key);
                    } else {
                        merge_patch(map.entry(key).or_insert(serde_json::Value::Null), value);
                    }
                }
            }
        }
        other => *target = other,
    }
}

pub(crate) fn patched<T: Serialize + serde::de::DeserializeOwned>(
    current: &T,
    patch: serde_json::Value,
) -> Result<T, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::field(
            "body",
            "a merge patch must be a JSON object",
        ));
    }
    let mut value = serde_json::to_value(current).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    })?;
    // A `null` removes a field, so one for a field that is not there would
    // vanish in the merge unread: each such name is checked on its own.
    let mut absent = Vec::new();
    nulls_for_absent_fields(&value, &patch, &mut Vec::new(), &mut absent);
    merge_patch(&mut value, patch);
    for path in absent {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut probe = value.clone();
        let parent = parents
            .iter()
            .try_fold(&mut probe, |at, key| at.get_mut(key.as_str()));
        if let Some(serde_json::Value::Object(fields)) = parent {
            fields.insert(last.clone(), serde_json::Value::Null);
        }
        if let Err(error) = from_value::<T>(probe)
            && error
                .errors
                .iter()
                .any(|e| e.message.starts_with("is not a known field"))
        {
            return Err(error);
        }
    }
    from_value(value)
}

/// The paths (keys from the top) where `patch` has `null` for a field
/// `current` does not have.
fn nulls_for_absent_fields(
    current: &serde_json::Value,
    patch: &serde_json::Value,
    path: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let serde_json::Value::Object(fields) = patch else {
        return;
    };
    for (key, value) in fields {
        let now = current.get(key);
        path.push(key.clone());
        if value.is_null() {
            if now.is_none() {
                out.push(path.clone());
            }
        } else if value.is_object() {
            nulls_for_absent_fields(now.unwrap_or(&serde_json::Value::Null), value, path, out);
        }
        path.pop();
    }
}

// Lookups inside a write transaction: what a write changes is read in the
// same transaction, so concurrent writes cannot be lost. Each checks that
// the caller holds `needed` in the object's team (404 when not a member).

async fn upstream_in(
    tx: &mut WriteTx,
    caller: &Caller,
    key: &str,
    needed: Role,
) -> Result<Upstream, ApiError> {
    let upstream = tx
        .upstream(key)
        .await?
        .ok_or_else(|| ApiError::not_found("upstream", key))?;
    caller.require(upstream.spec.team.as_deref(), needed, "upstream", key)?;
    Ok(upstream)
}

pub(crate) async fn service_in(
    tx: &mut WriteTx,
    caller: &Caller,
    key: &str,
    needed: Role,
) -> Result<Service, ApiError> {
    let service = tx
        .service(key)
        .await?
        .ok_or_else(|| ApiError::not_found("service", key))?;
    caller.require(service.spec.team.as_deref(), needed, "service", key)?;
    Ok(service)
}

/// A service whose configuration (spec, routes) is to change: a
/// developer's while it is a draft; once live (published, deprecated,
/// retired), a change reaches traffic at once, so it takes an admin.
pub(crate) async fn service_to_change(
    tx: &mut WriteTx,
    caller: &Caller,
    key: &str,
) -> Result<Service, ApiError> {
    let service = service_in(tx, caller, key, Role::Developer).await?;
    if service.lifecycle != Lifecycle::Draft {
        caller.require(service.spec.team.as_deref(), Role::Admin, "service", key)?;
    }
    Ok(service)
}

async fn route_in(tx: &mut WriteTx, service: &Service, key: &str) -> Result<Route, ApiError> {
    tx.route(&service.id, key)
        .await?
        .ok_or_else(|| ApiError::not_found("route", key))
}

fn upstream_audit<'a>(action: &'a str, upstream: &'a Upstream) -> Audit<'a> {
    Audit::new(
        action,
        "upstream",
        &upstream.id,
        upstream.spec.team.as_deref(),
    )
}

pub(crate) fn service_audit<'a>(action: &'a str, service: &'a Service) -> Audit<'a> {
    Audit::new(action, "service", &service.id, service.spec.team.as_deref())
}

fn route_audit<'a>(action: &'a str, service: &'a Service, route: &'a Route) -> Audit<'a> {
    Audit::new(action, "route", &route.id, service.spec.team.as_deref())
}

/// PUT and PATCH of an upstream: `change` turns the current object into
/// the new spec.
async fn update_upstream_with(
    state: &AdminState,
    caller: &Caller,
    key: &str,
    change: impl FnOnce(&Upstream) -> Result<UpstreamSpec, ApiError>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = upstream_in(&mut tx, caller, key, Role::Developer).await?;
    // An upstream that serves live services is part of them: a change
    // reaches their traffic at once, so it takes the role that changes a
    // live service.
    let team = existing.spec.team.as_deref();
    if caller.role(team).is_some_and(|role| role < Role::Admin) {
        let live = tx.live_services_using(&existing.id).await?;
        if !live.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "The upstream '{key}' serves the live service(s) {}: a change reaches their traffic at once, so it needs the role 'admin' in team '{}'. Ask an owner or admin of the team, or point a draft service at a new upstream.",
                    live.join(", "),
                    team.unwrap_or("-")
                ),
            ));
        }
    }
    let mut spec = change(&existing)?;
    keep_team(existing.spec.team.as_ref(), &mut spec.team)?;
    let upstream = ops::update_upstream(&mut tx, &existing, spec).await?;
    audit(
        &mut tx,
        caller,
        upstream_audit("upstream.update", &upstream),
        Some(&existing),
        Some(&upstream),
    )
    .await?;
    commit(state, tx).await?;
    Ok(ok(&upstream))
}

async fn update_service_with(
    state: &AdminState,
    caller: &Caller,
    key: &str,
    change: impl FnOnce(&Service) -> Result<ServiceSpec, ApiError>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = service_to_change(&mut tx, caller, key).await?;
    let mut spec = change(&existing)?;
    keep_team(existing.spec.team.as_ref(), &mut spec.team)?;
    let service = ops::update_service(&mut tx, &state.secrets, &existing, spec).await?;
    audit(
        &mut tx,
        caller,
        service_audit("service.update", &service),
        Some(&existing),
        Some(&service),
    )
    .await?;
    commit(state, tx).await?;
    Ok(ok(&service))
}

async fn update_route_with(
    state: &AdminState,
    caller: &Caller,
    service_key: &str,
    route_key: &str,
    change: impl FnOnce(&Route) -> Result<RouteSpec, ApiError>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let service = service_to_change(&mut tx, caller, service_key).await?;
    let existing = route_in(&mut tx, &service, route_key).await?;
    let route = ops::update_route(&mut tx, &service, &existing, change(&existing)?).await?;
    audit(
        &mut tx,
        caller,
        route_audit("route.update", &service, &route),
        Some(&existing),
        Some(&route),
    )
    .await?;
    commit(state, tx).await?;
    Ok(ok(&route))
}

async fn upstream_or_404(
    state: &AdminState,
    caller: &Caller,
    key: &str,
) -> Result<Upstream, ApiError> {
    let upstream = state
        .store
        .upstream(key)
        .await?
        .ok_or_else(|| ApiError::not_found("upstream", key))?;
    caller.require(upstream.spec.team.as_deref(), Role::Viewer, "upstream", key)?;
    Ok(upstream)
}

pub(crate) async fn service_or_404(
    state: &AdminState,
    caller: &Caller,
    key: &str,
) -> Result<Service, ApiError> {
    let service = state
        .store
        .service(key)
        .await?
        .ok_or_else(|| ApiError::not_found("service", key))?;
    caller.require(service.spec.team.as_deref(), Role::Viewer, "service", key)?;
    Ok(service)
}

async fn route_or_404(state: &AdminState, service: &Service, key: &str) -> Result<Route, ApiError> {
    state
        .store
        .route(&service.id, key)
        .await?
        .ok_or_else(|| ApiError::not_found("route", key))
}

// ------------------------------------------------------------- upstreams

/// Create an upstream.
#[utoipa::path(post, path = "/api/v1/upstreams", tag = "upstreams", request_body = UpstreamSpec,
    responses((status = 201, body = Upstream), (status = 400, body = crate::openapi::Problem), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_upstream(
    State(state): State<AdminState>,
    caller: Caller,
    Json(mut spec): Json<UpstreamSpec>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    spec.team = caller
        .team_for_new(&mut tx, spec.team.as_deref(), Role::Developer)
        .await?;
    let upstream = ops::create_upstream(&mut tx, spec).await?;
    audit(
        &mut tx,
        &caller,
        upstream_audit("upstream.create", &upstream),
        NONE,
        Some(&upstream),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(created(
        &upstream,
        format!("/api/v1/upstreams/{}", upstream.id),
    ))
}

/// List upstreams.
#[utoipa::path(get, path = "/api/v1/upstreams", tag = "upstreams",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query), ("team" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<Upstream>)))]
pub async fn list_upstreams(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&["team"])?;
    let page = state
        .store
        .upstreams(
            &caller.visible(),
            params.after.as_deref(),
            params.limit,
            params.filter("team"),
        )
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

/// Get an upstream by slug or id.
#[utoipa::path(get, path = "/api/v1/upstreams/{upstream}", tag = "upstreams",
    params(("upstream" = String, Path, description = "slug or id")),
    responses((status = 200, body = Upstream), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_upstream(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(&upstream_or_404(&state, &caller, &key).await?))
}

/// Replace an upstream.
#[utoipa::path(put, path = "/api/v1/upstreams/{upstream}", tag = "upstreams", request_body = UpstreamSpec,
    params(("upstream" = String, Path)), responses((status = 200, body = Upstream), (status = 400, body = crate::openapi::Problem)))]
pub async fn replace_upstream(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(spec): Json<UpstreamSpec>,
) -> Result<Response, ApiError> {
    update_upstream_with(&state, &caller, &key, |_| Ok(spec)).await
}

/// Change an upstream with a JSON merge patch (RFC 7396).
#[utoipa::path(patch, path = "/api/v1/upstreams/{upstream}", tag = "upstreams", request_body = Object,
    params(("upstream" = String, Path)), responses((status = 200, body = Upstream), (status = 400, body = crate::openapi::Problem)))]
pub async fn patch_upstream(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    update_upstream_with(&state, &caller, &key, |existing| {
        patched(&existing.spec, patch)
    })
    .await
}

/// Delete an upstream (refused while a service uses it).
#[utoipa::path(delete, path = "/api/v1/upstreams/{upstream}", tag = "upstreams",
    params(("upstream" = String, Path)), responses((status = 204), (status = 409, body = crate::openapi::Problem)))]
pub async fn delete_upstream(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = upstream_in(&mut tx, &caller, &key, Role::Developer).await?;
    ops::delete_upstream(&mut tx, &existing).await?;
    audit(
        &mut tx,
        &caller,
        upstream_audit("upstream.delete", &existing),
        Some(&existing),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ------------------------------------------------------------- services

/// Create a service (in `draft`; publish it to serve traffic).
#[utoipa::path(post, path = "/api/v1/services", tag = "services", request_body = ServiceSpec,
    responses((status = 201, body = Service), (status = 400, body = crate::openapi::Problem), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_service(
    State(state): State<AdminState>,
    caller: Caller,
    Json(mut spec): Json<ServiceSpec>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    spec.team = caller
        .team_for_new(&mut tx, spec.team.as_deref(), Role::Developer)
        .await?;
    let service = ops::create_service(&mut tx, &state.secrets, spec).await?;
    audit(
        &mut tx,
        &caller,
        service_audit("service.create", &service),
        NONE,
        Some(&service),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(created(
        &service,
        format!("/api/v1/services/{}", service.id),
    ))
}

/// List services.
#[utoipa::path(get, path = "/api/v1/services", tag = "services",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query), ("team" = Option<String>, Query),
           ("lifecycle" = Option<String>, Query, description = "draft, published, deprecated or retired")),
    responses((status = 200, body = ListResponse<Service>)))]
pub async fn list_services(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&["team", "lifecycle"])?;
    let lifecycle = match params.filter("lifecycle") {
        Some(text) => Some(
            serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
                ApiError::field(
                    "lifecycle",
                    "must be draft, published, deprecated or retired",
                )
            })?,
        ),
        None => None,
    };
    let page = state
        .store
        .services(
            &caller.visible(),
            params.after.as_deref(),
            params.limit,
            params.filter("team"),
            lifecycle,
        )
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

/// Get a service by slug or id.
#[utoipa::path(get, path = "/api/v1/services/{service}", tag = "services",
    params(("service" = String, Path, description = "slug or id")),
    responses((status = 200, body = Service), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_service(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(&service_or_404(&state, &caller, &key).await?))
}

/// Replace a service's settings. Live at once on a published service.
#[utoipa::path(put, path = "/api/v1/services/{service}", tag = "services", request_body = ServiceSpec,
    params(("service" = String, Path)), responses((status = 200, body = Service), (status = 400, body = crate::openapi::Problem)))]
pub async fn replace_service(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(spec): Json<ServiceSpec>,
) -> Result<Response, ApiError> {
    update_service_with(&state, &caller, &key, |_| Ok(spec)).await
}

/// Change a service with a JSON merge patch (RFC 7396).
#[utoipa::path(patch, path = "/api/v1/services/{service}", tag = "services", request_body = Object,
    params(("service" = String, Path)), responses((status = 200, body = Service), (status = 400, body = crate::openapi::Problem)))]
pub async fn patch_service(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    update_service_with(&state, &caller, &key, |existing| {
        patched(&existing.spec, patch)
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeleteQuery {
    /// Delete even a published or deprecated service.
    pub force: Option<bool>,
}

/// Delete a service with its routes and releases. A live service must be
/// retired first, or deleted with `?force=true`. Its open subscriptions
/// are cancelled first (audited, and sent to both teams' webhooks).
#[utoipa::path(delete, path = "/api/v1/services/{service}", tag = "services",
    params(("service" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204), (status = 409, body = crate::openapi::Problem)))]
pub async fn delete_service(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&["force"])?;
    let force = params.flag("force")?;
    let mut tx = state.store.begin().await?;
    // Deleting a live service takes the role that retires one.
    let needed = if force { Role::Admin } else { Role::Developer };
    let existing = service_in(&mut tx, &caller, &key, needed).await?;
    // Refused below unless it may go; then nothing here is committed.
    let open = tx.open_subscriptions(&existing.id, false).await?;
    crate::consumers::cancel_before_delete(&mut tx, &caller, open).await?;
    ops::delete_service(&mut tx, &existing, force).await?;
    audit(
        &mut tx,
        &caller,
        service_audit("service.delete", &existing),
        Some(&existing),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Shown in the release list.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionResponse {
    pub service: Service,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
}

/// Publish: snapshot the service and its routes as a new release; a draft
/// becomes `published` and starts serving.
#[utoipa::path(post, path = "/api/v1/services/{service}/publish", tag = "services", request_body = PublishRequest,
    params(("service" = String, Path)), responses((status = 201, body = ActionResponse), (status = 409, body = crate::openapi::Problem)))]
pub async fn publish(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(request): Json<PublishRequest>,
) -> Result<Response, ApiError> {
    if request.note.as_ref().is_some_and(|n| n.len() > 1000) {
        return Err(ApiError::field("note", "must be at most 1000 bytes"));
    }
    let mut tx = state.store.begin().await?;
    let existing = service_in(&mut tx, &caller, &key, Role::Admin).await?;
    let (service, release) = ops::publish(&mut tx, &existing, request.note).await?;
    audit(
        &mut tx,
        &caller,
        service_audit("service.publish", &service),
        Some(&existing),
        Some(&service),
    )
    .await?;
    commit(&state, tx).await?;
    let location = format!(
        "/api/v1/services/{}/releases/{}",
        service.id, release.version
    );
    Ok(created(
        &ActionResponse {
            service,
            release: Some(release),
        },
        location,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to return to: its version number or id.
    pub release: serde_json::Value,
}

/// Roll back to an earlier release: its settings and routes become current
/// (recorded as a new release).
#[utoipa::path(post, path = "/api/v1/services/{service}/rollback", tag = "services", request_body = RollbackRequest,
    params(("service" = String, Path)), responses((status = 201, body = ActionResponse), (status = 404, body = crate::openapi::Problem)))]
pub async fn rollback(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(request): Json<RollbackRequest>,
) -> Result<Response, ApiError> {
    let release_key = match &request.release {
        serde_json::Value::Number(n) if n.as_i64().is_some() => n.to_string(),
        serde_json::Value::String(s) if !s.is_empty() => s.clone(),
        _ => {
            return Err(ApiError::field(
                "release",
                "must be a release version (integer) or id",
            ));
        }
    };
    let mut tx = state.store.begin().await?;
    let existing = service_in(&mut tx, &caller, &key, Role::Admin).await?;
    // Releases never change once written: reading one outside the
    // transaction is safe.
    let target = state
        .store
        .release(&existing.id, &release_key)
        .await?
        .ok_or_else(|| {
            ApiError::field(
                "release",
                format!(
                    "service '{}' has no release '{release_key}'",
                    existing.spec.slug
                ),
            )
        })?;
    let (service, release) = ops::rollback(&mut tx, &existing, &target).await?;
    audit(
        &mut tx,
        &caller,
        service_audit("service.rollback", &service),
        Some(&existing),
        Some(&service),
    )
    .await?;
    commit(&state, tx).await?;
    let location = format!(
        "/api/v1/services/{}/releases/{}",
        service.id, release.version
    );
    Ok(created(
        &ActionResponse {
            service,
            release: Some(release),
        },
        location,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeprecateRequest {
    /// When the service will be retired: a date (`2027-01-31`) or RFC 3339
    /// date-time, in the future. Sent to callers as the `Sunset` header.
    /// Left out, a deprecated service keeps the sunset it has; `null`
    /// removes it.
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(value_type = Option<String>)]
    pub sunset: Option<Option<String>>,
}

/// Deprecate a published service: callers get `Deprecation` and `Sunset`
/// headers.
#[utoipa::path(post, path = "/api/v1/services/{service}/deprecate", tag = "services", request_body = DeprecateRequest,
    params(("service" = String, Path)), responses((status = 200, body = ActionResponse), (status = 409, body = crate::openapi::Problem)))]
pub async fn deprecate(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(request): Json<DeprecateRequest>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = service_in(&mut tx, &caller, &key, Role::Admin).await?;
    let service = match request.sunset {
        Some(sunset) => ops::deprecate(&mut tx, &existing, sunset, false).await?,
        // Kept as it is, even if it has passed since it was set.
        None => ops::deprecate(&mut tx, &existing, existing.sunset.clone(), true).await?,
    };
    audit(
        &mut tx,
        &caller,
        service_audit("service.deprecate", &service),
        Some(&existing),
        Some(&service),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(ok(&ActionResponse {
        service,
        release: None,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

/// Retire a service: its routes answer 410 `service_retired`.
#[utoipa::path(post, path = "/api/v1/services/{service}/retire", tag = "services", request_body = EmptyRequest,
    params(("service" = String, Path)), responses((status = 200, body = ActionResponse), (status = 409, body = crate::openapi::Problem)))]
pub async fn retire(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(_request): Json<EmptyRequest>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = service_in(&mut tx, &caller, &key, Role::Admin).await?;
    let service = ops::retire(&mut tx, &existing).await?;
    audit(
        &mut tx,
        &caller,
        service_audit("service.retire", &service),
        Some(&existing),
        Some(&service),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(ok(&ActionResponse {
        service,
        release: None,
    }))
}

/// Empty the response caches of a service's routes, on every node
/// (within a second): their next calls go to the upstream.
#[utoipa::path(post, path = "/api/v1/services/{service}/cache/purge", tag = "services", request_body = EmptyRequest,
    params(("service" = String, Path)), responses((status = 200, body = ActionResponse)))]
pub async fn purge_cache(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(_request): Json<EmptyRequest>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = service_in(&mut tx, &caller, &key, Role::Admin).await?;
    let service = ops::purge_cache(&mut tx, &existing).await?;
    audit(
        &mut tx,
        &caller,
        service_audit("service.cache_purge", &service),
        Some(&existing),
        Some(&service),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(ok(&ActionResponse {
        service,
        release: None,
    }))
}

/// List a service's releases, oldest first.
#[utoipa::path(get, path = "/api/v1/services/{service}/releases", tag = "services",
    params(("service" = String, Path), ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<Release>)))]
pub async fn list_releases(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let service = service_or_404(&state, &caller, &key).await?;
    let page = state
        .store
        .releases(&service.id, params.after.as_deref(), params.limit)
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

/// Get one release by version or id.
#[utoipa::path(get, path = "/api/v1/services/{service}/releases/{release}", tag = "services",
    params(("service" = String, Path), ("release" = String, Path, description = "version or id")),
    responses((status = 200, body = Release), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_release(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, release)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let service = service_or_404(&state, &caller, &key).await?;
    let release = state
        .store
        .release(&service.id, &release)
        .await?
        .ok_or_else(|| ApiError::not_found("release", &release))?;
    Ok(ok(&release))
}

// ------------------------------------------------------------- routes

/// Add a route to a service. Live at once on a published service.
#[utoipa::path(post, path = "/api/v1/services/{service}/routes", tag = "routes", request_body = RouteSpec,
    params(("service" = String, Path)),
    responses((status = 201, body = Route), (status = 400, body = crate::openapi::Problem), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_route(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(spec): Json<RouteSpec>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let service = service_to_change(&mut tx, &caller, &key).await?;
    let route = ops::create_route(&mut tx, &service, spec).await?;
    audit(
        &mut tx,
        &caller,
        route_audit("route.create", &service, &route),
        NONE,
        Some(&route),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(created(
        &route,
        format!("/api/v1/services/{}/routes/{}", service.id, route.id),
    ))
}

/// List a service's routes.
#[utoipa::path(get, path = "/api/v1/services/{service}/routes", tag = "routes",
    params(("service" = String, Path), ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<Route>)))]
pub async fn list_routes(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let service = service_or_404(&state, &caller, &key).await?;
    let page = state
        .store
        .routes(&service.id, params.after.as_deref(), params.limit)
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

/// Get a route by id or name.
#[utoipa::path(get, path = "/api/v1/services/{service}/routes/{route}", tag = "routes",
    params(("service" = String, Path), ("route" = String, Path, description = "id or name")),
    responses((status = 200, body = Route), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_route(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, route)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let service = service_or_404(&state, &caller, &key).await?;
    Ok(ok(&route_or_404(&state, &service, &route).await?))
}

/// Replace a route.
#[utoipa::path(put, path = "/api/v1/services/{service}/routes/{route}", tag = "routes", request_body = RouteSpec,
    params(("service" = String, Path), ("route" = String, Path)), responses((status = 200, body = Route)))]
pub async fn replace_route(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, route)): Path<(String, String)>,
    Json(spec): Json<RouteSpec>,
) -> Result<Response, ApiError> {
    update_route_with(&state, &caller, &key, &route, |_| Ok(spec)).await
}

/// Change a route with a JSON merge patch (RFC 7396).
#[utoipa::path(patch, path = "/api/v1/services/{service}/routes/{route}", tag = "routes", request_body = Object,
    params(("service" = String, Path), ("route" = String, Path)), responses((status = 200, body = Route)))]
pub async fn patch_route(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, route)): Path<(String, String)>,
    Json(patch): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    update_route_with(&state, &caller, &key, &route, |existing| {
        patched(&existing.spec, patch)
    })
    .await
}

/// Delete a route.
#[utoipa::path(delete, path = "/api/v1/services/{service}/routes/{route}", tag = "routes",
    params(("service" = String, Path), ("route" = String, Path)), responses((status = 204)))]
pub async fn delete_route(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, route)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let service = service_to_change(&mut tx, &caller, &key).await?;
    let existing = route_in(&mut tx, &service, &route).await?;
    ops::delete_route(&mut tx, &existing).await?;
    audit(
        &mut tx,
        &caller,
        route_audit("route.delete", &service, &existing),
        Some(&existing),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
