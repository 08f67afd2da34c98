//! Apps and their API keys, plans, subscriptions with their approval flow,
//! the catalog, and team webhooks.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::access::{
    ApiKey, App, AppSpec, KeySpec, Plan, PlanSpec, Role, Subscription, SubscriptionAction,
    SubscriptionSpec, SubscriptionStatus, Webhook, WebhookSpec,
};
use domain::model::{Lifecycle, Service, Visibility};
use domain::now_ms;
use serde::{Deserialize, Serialize};
use store::{SubscriptionFilter, WriteTx};

use crate::AdminState;
use crate::access::{Audit, Caller, NONE, audit, keep_team};
use crate::auth::{random_secret, token_digest};
use crate::error::ApiError;
use crate::extract::{Json, ListParams};
use crate::handlers::{ListResponse, commit, created, ok, patched, service_in, service_or_404};

// ------------------------------------------------------------------- apps

async fn app_in(
    tx: &mut WriteTx,
    caller: &Caller,
    key: &str,
    needed: Role,
) -> Result<App, ApiError> {
    let app = tx
        .app(key)
        .await?
        .ok_or_else(|| ApiError::not_found("app", key))?;
    caller.require(app.spec.team.as_deref(), needed, "app", key)?;
    Ok(app)
}

async fn app_or_404(state: &AdminState, caller: &Caller, key: &str) -> Result<App, ApiError> {
    let app = state
        .store
        .app(key)
        .await?
        .ok_or_else(|| ApiError::not_found("app", key))?;
    caller.require(app.spec.team.as_deref(), Role::Viewer, "app", key)?;
    Ok(app)
}

fn app_audit<'a>(action: &'a str, app: &'a App) -> Audit<'a> {
    Audit::new(action, "app", &app.id, app.spec.team.as_deref())
}

/// 409 when another app already claims one of `app`'s JWT identities: a
/// token authenticates as one app only, so a second claim would take
/// over the first app's calls (and its subscriptions' bills).
async fn check_jwt_identities(tx: &mut WriteTx, app: &App) -> Result<(), ApiError> {
    for (index, identity) in app.spec.jwt.iter().enumerate() {
        if tx
            .jwt_claimant(&identity.issuer, &identity.subject, &app.id)
            .await?
            .is_some()
        {
            return Err(ApiError::conflict(
                format!("jwt[{index}]"),
                format!(
                    "another app already authenticates with issuer '{}' and subject '{}'; each JWT identity belongs to one app",
                    identity.issuer, identity.subject
                ),
            ));
        }
    }
    Ok(())
}

/// Create an app (a consumer of APIs, owned by a team).
#[utoipa::path(post, path = "/api/v1/apps", tag = "apps", request_body = AppSpec,
    responses((status = 201, body = App), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_app(
    State(state): State<AdminState>,
    caller: Caller,
    Json(mut spec): Json<AppSpec>,
) -> Result<Response, ApiError> {
    spec.validate()?;
    spec.normalize_amounts();
    let mut tx = state.store.begin().await?;
    spec.team = caller
        .team_for_new(&mut tx, spec.team.as_deref(), Role::Developer)
        .await?;
    if spec.team.is_none() {
        return Err(ApiError::field(
            "team",
            "is required: an app belongs to a team",
        ));
    }
    let now = now_ms();
    let app = App {
        id: domain::id::new_id(),
        spec,
        created_at_ms: now,
        updated_at_ms: now,
    };
    check_jwt_identities(&mut tx, &app).await?;
    tx.put_app(&app).await?;
    audit(
        &mut tx,
        &caller,
        app_audit("app.create", &app),
        NONE,
        Some(&app),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(created(&app, format!("/api/v1/apps/{}", app.id)))
}

#[utoipa::path(get, path = "/api/v1/apps", tag = "apps",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query), ("team" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<App>)))]
pub async fn list_apps(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&["team"])?;
    let page = state
        .store
        .apps(
            &caller.visible(),
            params.filter("team"),
            params.after.as_deref(),
            params.limit,
        )
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

#[utoipa::path(get, path = "/api/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "slug or id")), responses((status = 200, body = App)))]
pub async fn get_app(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(&app_or_404(&state, &caller, &key).await?))
}

async fn update_app_with(
    state: &AdminState,
    caller: &Caller,
    key: &str,
    change: impl FnOnce(&App) -> Result<AppSpec, ApiError>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = app_in(&mut tx, caller, key, Role::Developer).await?;
    let mut spec = change(&existing)?;
    keep_team(existing.spec.team.as_ref(), &mut spec.team)?;
    spec.validate()?;
    spec.normalize_amounts();
    let app = App {
        spec,
        updated_at_ms: now_ms(),
        ..existing.clone()
    };
    check_jwt_identities(&mut tx, &app).await?;
    tx.put_app(&app).await?;
    audit(
        &mut tx,
        caller,
        app_audit("app.update", &app),
        Some(&existing),
        Some(&app),
    )
    .await?;
    commit(state, tx).await?;
    Ok(ok(&app))
}

#[utoipa::path(put, path = "/api/v1/apps/{app}", tag = "apps", request_body = AppSpec,
    params(("app" = String, Path)), responses((status = 200, body = App)))]
pub async fn replace_app(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(spec): Json<AppSpec>,
) -> Result<Response, ApiError> {
    update_app_with(&state, &caller, &key, |_| Ok(spec)).await
}

#[utoipa::path(patch, path = "/api/v1/apps/{app}", tag = "apps", request_body = Object,
    params(("app" = String, Path)), responses((status = 200, body = App)))]
pub async fn patch_app(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    update_app_with(&state, &caller, &key, |existing| {
        patched(&existing.spec, patch)
    })
    .await
}

/// Delete an app with its keys and subscriptions; open subscriptions are
/// cancelled first (audited, and sent to both teams' webhooks).
#[utoipa::path(delete, path = "/api/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path)), responses((status = 204)))]
pub async fn delete_app(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let app = app_in(&mut tx, &caller, &key, Role::Developer).await?;
    let open = tx.open_subscriptions(&app.id, true).await?;
    cancel_before_delete(&mut tx, &caller, open).await?;
    tx.delete_app(&app.id).await?;
    audit(
        &mut tx,
        &caller,
        app_audit("app.delete", &app),
        Some(&app),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Cancels `open` subscriptions of an app or service about to be deleted,
/// each as `POST /api/v1/subscriptions/{id}/cancel` would: audited and
/// sent to both teams' webhooks, so the other team learns that its
/// subscription ended rather than finding it gone.
pub(crate) async fn cancel_before_delete(
    tx: &mut store::WriteTx,
    caller: &Caller,
    open: Vec<Subscription>,
) -> Result<(), ApiError> {
    let now = now_ms();
    for existing in open {
        let cancelled = Subscription {
            status: SubscriptionStatus::Cancelled,
            updated_at_ms: now,
            ..existing.clone()
        };
        tx.put_subscription(&cancelled).await?;
        audit(
            tx,
            caller,
            subscription_audit("subscription.cancel", &cancelled),
            Some(&existing),
            Some(&cancelled),
        )
        .await?;
        tx.notify_subscription("subscription.cancelled", &cancelled)
            .await?;
    }
    Ok(())
}

// ------------------------------------------------------------------- keys

/// A key as created: the only time the key itself is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key_info: ApiKey,
    /// The key. Shown once; only its SHA-256 and prefix are stored.
    pub key: String,
}

/// Create an API key for an app (shown once).
#[utoipa::path(post, path = "/api/v1/apps/{app}/keys", tag = "apps", request_body = KeySpec,
    params(("app" = String, Path)), responses((status = 201, body = CreatedKey)))]
pub async fn create_key(
    State(state): State<AdminState>,
    caller: Caller,
    Path(app_key): Path<String>,
    Json(spec): Json<KeySpec>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let expires_at_ms = spec.validate(now)?;
    let mut tx = state.store.begin().await?;
    let app = app_in(&mut tx, &caller, &app_key, Role::Developer).await?;
    // A scope names a service the app could call: a typo would otherwise
    // give a key that is refused everywhere.
    let consumer = app.spec.team.clone().unwrap_or_default();
    for (index, scope) in spec.scopes.iter().enumerate() {
        let name = domain::access::Scope::parse(scope).map_or(scope.as_str(), |s| s.service);
        let offered = tx
            .service(name)
            .await?
            .is_some_and(|service| may_subscribe(&service, &consumer));
        if !offered {
            return Err(ApiError::field(
                format!("scopes[{index}]"),
                format!("no service '{name}' is offered to this app's team"),
            ));
        }
    }
    let random = random_secret(40);
    if random.is_empty() {
        return Err(ApiError::internal("no random source"));
    }
    let env = spec.env.as_deref().unwrap_or("live");
    let secret = format!("tg_{env}_{random}");
    let key = ApiKey {
        id: domain::id::new_id(),
        app_id: app.id.clone(),
        name: spec.name,
        prefix: format!("tg_{env}_{}", &random[..4]),
        scopes: spec.scopes,
        expires_at_ms,
        revoked_at_ms: None,
        created_at_ms: now,
        hash: token_digest(&secret),
    };
    tx.insert_key(&key).await?;
    let record = Audit::new("key.create", "api_key", &key.id, app.spec.team.as_deref());
    audit(&mut tx, &caller, record, NONE, Some(&key)).await?;
    commit(&state, tx).await?;
    Ok(created(
        &CreatedKey {
            key_info: key.clone(),
            key: secret,
        },
        format!("/api/v1/apps/{}/keys/{}", app.id, key.id),
    ))
}

#[utoipa::path(get, path = "/api/v1/apps/{app}/keys", tag = "apps",
    params(("app" = String, Path), ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<ApiKey>)))]
pub async fn list_keys(
    State(state): State<AdminState>,
    caller: Caller,
    Path(app_key): Path<String>,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let app = app_or_404(&state, &caller, &app_key).await?;
    let page = state
        .store
        .keys(&app.id, params.after.as_deref(), params.limit)
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

#[utoipa::path(get, path = "/api/v1/apps/{app}/keys/{key}", tag = "apps",
    params(("app" = String, Path), ("key" = String, Path, description = "key id")), responses((status = 200, body = ApiKey)))]
pub async fn get_key(
    State(state): State<AdminState>,
    caller: Caller,
    Path((app_key, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let app = app_or_404(&state, &caller, &app_key).await?;
    let key = state
        .store
        .key(&app.id, &key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("key", &key_id))?;
    Ok(ok(&key))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyChange {
    #[serde(default)]
    pub name: Option<String>,
    /// RFC 3339; `null` removes the expiry. For a rotation: create the new
    /// key, then give the old one a grace period.
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Option<String>>,
}

/// Rename a key or change its expiry.
#[utoipa::path(patch, path = "/api/v1/apps/{app}/keys/{key}", tag = "apps", request_body = KeyChange,
    params(("app" = String, Path), ("key" = String, Path)), responses((status = 200, body = ApiKey)))]
pub async fn change_key(
    State(state): State<AdminState>,
    caller: Caller,
    Path((app_key, key_id)): Path<(String, String)>,
    Json(change): Json<KeyChange>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let app = app_in(&mut tx, &caller, &app_key, Role::Developer).await?;
    let existing = tx
        .key(&app.id, &key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("key", &key_id))?;
    let mut key = existing.clone();
    if let Some(name) = change.name {
        if name.len() > domain::model::limits::TEXT_MAX {
            return Err(ApiError::field("name", "is too long"));
        }
        key.name = Some(name);
    }
    match change.expires_at {
        None => {}
        Some(None) => key.expires_at_ms = None,
        Some(Some(text)) => {
            let spec = KeySpec {
                expires_at: Some(text),
                ..KeySpec::default()
            };
            key.expires_at_ms = spec.validate(now_ms())?;
        }
    }
    tx.update_key(&key).await?;
    let record = Audit::new("key.update", "api_key", &key.id, app.spec.team.as_deref());
    audit(&mut tx, &caller, record, Some(&existing), Some(&key)).await?;
    commit(&state, tx).await?;
    Ok(ok(&key))
}

/// Revoke a key: the gateway refuses it with `key_revoked` within a second.
/// The key stays listed (revoked) for the record.
#[utoipa::path(delete, path = "/api/v1/apps/{app}/keys/{key}", tag = "apps",
    params(("app" = String, Path), ("key" = String, Path)), responses((status = 204)))]
pub async fn revoke_key(
    State(state): State<AdminState>,
    caller: Caller,
    Path((app_key, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let app = app_in(&mut tx, &caller, &app_key, Role::Developer).await?;
    let key = tx
        .key(&app.id, &key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("key", &key_id))?;
    if key.revoked_at_ms.is_none() {
        let at = now_ms();
        tx.revoke_key(&key.id, at).await?;
        let after = ApiKey {
            revoked_at_ms: Some(at),
            ..key.clone()
        };
        let record = Audit::new("key.revoke", "api_key", &key.id, app.spec.team.as_deref());
        audit(&mut tx, &caller, record, Some(&key), Some(&after)).await?;
        commit(&state, tx).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ------------------------------------------------------------------ plans

fn plan_audit<'a>(action: &'a str, service: &'a Service, plan: &'a Plan) -> Audit<'a> {
    Audit::new(action, "plan", &plan.id, service.spec.team.as_deref())
}

/// Add a plan to a service.
#[utoipa::path(post, path = "/api/v1/services/{service}/plans", tag = "plans", request_body = PlanSpec,
    params(("service" = String, Path)), responses((status = 201, body = Plan)))]
pub async fn create_plan(
    State(state): State<AdminState>,
    caller: Caller,
    Path(service_key): Path<String>,
    Json(mut spec): Json<PlanSpec>,
) -> Result<Response, ApiError> {
    spec.validate()?;
    spec.normalize_amounts();
    let mut tx = state.store.begin().await?;
    let service = service_in(&mut tx, &caller, &service_key, Role::Admin).await?;
    spec.validate_for(service.spec.kind)?;
    let now = now_ms();
    let plan = Plan {
        id: domain::id::new_id(),
        service_id: service.id.clone(),
        spec,
        created_at_ms: now,
        updated_at_ms: now,
    };
    tx.put_plan(&plan).await?;
    audit(
        &mut tx,
        &caller,
        plan_audit("plan.create", &service, &plan),
        NONE,
        Some(&plan),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(created(
        &plan,
        format!("/api/v1/services/{}/plans/{}", service.id, plan.id),
    ))
}

#[utoipa::path(get, path = "/api/v1/services/{service}/plans", tag = "plans",
    params(("service" = String, Path)), responses((status = 200, body = ListResponse<Plan>)))]
pub async fn list_plans(
    State(state): State<AdminState>,
    caller: Caller,
    Path(service_key): Path<String>,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only_unpaged(&[])?;
    let service = service_or_404(&state, &caller, &service_key).await?;
    let plans = state.store.plans(&service.id).await?;
    Ok(ok(&ListResponse {
        data: plans,
        next_cursor: None,
    }))
}

#[utoipa::path(get, path = "/api/v1/services/{service}/plans/{plan}", tag = "plans",
    params(("service" = String, Path), ("plan" = String, Path)), responses((status = 200, body = Plan)))]
pub async fn get_plan(
    State(state): State<AdminState>,
    caller: Caller,
    Path((service_key, plan_key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let service = service_or_404(&state, &caller, &service_key).await?;
    let plan = state
        .store
        .plan(&service.id, &plan_key)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", &plan_key))?;
    Ok(ok(&plan))
}

/// Change a plan (JSON merge patch). Limits apply to every subscription on
/// it within a second.
#[utoipa::path(patch, path = "/api/v1/services/{service}/plans/{plan}", tag = "plans", request_body = Object,
    params(("service" = String, Path), ("plan" = String, Path)), responses((status = 200, body = Plan)))]
pub async fn patch_plan(
    State(state): State<AdminState>,
    caller: Caller,
    Path((service_key, plan_key)): Path<(String, String)>,
    Json(patch): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let service = service_in(&mut tx, &caller, &service_key, Role::Admin).await?;
    let existing = tx
        .plan(&service.id, &plan_key)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", &plan_key))?;
    let mut spec: PlanSpec = patched(&existing.spec, patch)?;
    spec.validate()?;
    spec.validate_for(service.spec.kind)?;
    spec.normalize_amounts();
    let plan = Plan {
        spec,
        updated_at_ms: now_ms(),
        ..existing.clone()
    };
    tx.put_plan(&plan).await?;
    audit(
        &mut tx,
        &caller,
        plan_audit("plan.update", &service, &plan),
        Some(&existing),
        Some(&plan),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(ok(&plan))
}

/// Delete a plan (refused while subscriptions use it).
#[utoipa::path(delete, path = "/api/v1/services/{service}/plans/{plan}", tag = "plans",
    params(("service" = String, Path), ("plan" = String, Path)), responses((status = 204), (status = 409, body = crate::openapi::Problem)))]
pub async fn delete_plan(
    State(state): State<AdminState>,
    caller: Caller,
    Path((service_key, plan_key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let service = service_in(&mut tx, &caller, &service_key, Role::Admin).await?;
    let plan = tx
        .plan(&service.id, &plan_key)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", &plan_key))?;
    tx.delete_plan(&plan.id).await?;
    audit(
        &mut tx,
        &caller,
        plan_audit("plan.delete", &service, &plan),
        Some(&plan),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------- subscriptions

fn subscription_audit<'a>(action: &'a str, subscription: &'a Subscription) -> Audit<'a> {
    Audit {
        action,
        kind: "subscription",
        id: &subscription.id,
        team: Some(&subscription.consumer_team),
        other_team: subscription.provider_team.as_deref(),
    }
}

/// Whether an app of team `consumer` may subscribe to `service`.
fn may_subscribe(service: &Service, consumer: &str) -> bool {
    match service.spec.visibility {
        Visibility::Catalog | Visibility::Public => true,
        Visibility::Team => service.spec.team.as_deref() == Some(consumer),
    }
}

/// Subscribe an app to a service's plan: `active` at once, or `pending`
/// until the providing team approves when approval is required.
#[utoipa::path(post, path = "/api/v1/subscriptions", tag = "subscriptions", request_body = SubscriptionSpec,
    responses((status = 201, body = Subscription), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_subscription(
    State(state): State<AdminState>,
    caller: Caller,
    Json(spec): Json<SubscriptionSpec>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let app = app_in(&mut tx, &caller, &spec.app, Role::Developer).await?;
    let consumer = app.spec.team.clone().unwrap_or_default();
    let not_offered = || {
        ApiError::field(
            "service",
            format!(
                "no service '{}' is offered to team '{consumer}'",
                spec.service
            ),
        )
    };
    let service = tx.service(&spec.service).await?.ok_or_else(not_offered)?;
    if !may_subscribe(&service, &consumer) {
        return Err(not_offered());
    }
    // Another team's services are known as the catalog shows them: one
    // not published there, or a closed plan, is not offered, whatever the
    // reason (the catalog lists neither).
    let own = caller.is_platform() || service.spec.team.as_deref() == Some(consumer.as_str());
    if !own && service.lifecycle != Lifecycle::Published {
        return Err(not_offered());
    }
    if service.lifecycle != Lifecycle::Published {
        return Err(ApiError::invalid_state(format!(
            "The service '{}' is {}; only published services take new subscriptions.",
            service.spec.slug,
            service.lifecycle.as_str()
        )));
    }
    let no_plan = || {
        ApiError::field(
            "plan",
            format!(
                "the service '{}' has no plan '{}'",
                service.spec.slug, spec.plan
            ),
        )
    };
    let plan = tx
        .plan(&service.id, &spec.plan)
        .await?
        .ok_or_else(no_plan)?;
    if !own && !plan.spec.open {
        return Err(no_plan());
    }
    if !plan.spec.open {
        return Err(ApiError::field("plan", "is closed to new subscriptions"));
    }
    if let Some(open) = tx.open_subscription(&app.id, &service.id).await? {
        return Err(ApiError::conflict(
            "service",
            format!(
                "the app already has {} {} subscription to this service ({})",
                domain::validate::article(open.status.as_str()),
                open.status.as_str(),
                open.id
            ),
        ));
    }
    let approval = plan
        .spec
        .approval_required
        .unwrap_or(service.spec.approval_required);
    let now = now_ms();
    let subscription = Subscription {
        id: domain::id::new_id(),
        app: app.spec.slug.clone(),
        app_id: app.id.clone(),
        service: service.spec.slug.clone(),
        service_id: service.id.clone(),
        plan: plan.spec.slug.clone(),
        plan_id: plan.id.clone(),
        status: if approval {
            SubscriptionStatus::Pending
        } else {
            SubscriptionStatus::Active
        },
        reason: None,
        consumer_team: consumer.clone(),
        provider_team: service.spec.team.clone(),
        period_start_ms: None,
        period_end_ms: None,
        trial_end_ms: None,
        auto_renew: spec.auto_renew,
        anchor_ms: None,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let mut subscription = subscription;
    let mut held = None;
    if subscription.status == SubscriptionStatus::Active {
        let period = first_period(&mut tx, &app.id, &service.id, &plan, now).await?;
        // The fee is held where calls in flight hold their prices first.
        held = match crate::money::hold_debit(&state, &consumer, period.fee_nanos).await {
            Ok(held) => held,
            Err(available) => {
                return Err(fee_unaffordable(
                    &state,
                    &plan,
                    &consumer,
                    period.fee_nanos,
                    available,
                ));
            }
        };
        let fee = tx
            .enter_period(&mut subscription, &period, &caller.actor(), now, true)
            .await?;
        if let store::Fee::Short { balance_nanos } = fee {
            return Err(fee_unaffordable(
                &state,
                &plan,
                &consumer,
                period.fee_nanos,
                balance_nanos,
            ));
        }
        crate::money::hold_entries(held.as_deref(), &tx);
    } else {
        tx.put_subscription(&subscription).await?;
    }
    audit(
        &mut tx,
        &caller,
        subscription_audit("subscription.create", &subscription),
        NONE,
        Some(&subscription),
    )
    .await?;
    tx.notify_subscription("subscription.created", &subscription)
        .await?;
    commit(&state, tx).await?;
    if let Some(held) = held {
        held.keep();
    }
    Ok(created(
        &subscription,
        format!("/api/v1/subscriptions/{}", subscription.id),
    ))
}

/// 402 for a subscription whose fee the team cannot pay now.
/// The first period of a new subscription: it starts with the plan's
/// trial only for an app that has not had one of this service before
/// (cancelling and subscribing again does not start another).
async fn first_period(
    tx: &mut store::WriteTx,
    app_id: &str,
    service_id: &str,
    plan: &Plan,
    now: i64,
) -> Result<domain::billing::Period, ApiError> {
    if plan.spec.trial_days.is_some() && tx.had_trial(app_id, service_id).await? {
        return Ok(domain::billing::restart(&plan.spec, now));
    }
    Ok(domain::billing::activation(&plan.spec, now))
}

fn fee_unaffordable(
    state: &AdminState,
    plan: &Plan,
    team: &str,
    fee: i64,
    balance: i64,
) -> ApiError {
    let currency = &state.currency;
    let (price, has) = (
        domain::money::format(fee),
        domain::money::format(balance.max(0)),
    );
    let detail = if balance >= fee {
        // Enough in the ledger, but not free: gateway nodes hold part of
        // it for calls in flight (many nodes lease their share).
        format!(
            "The plan '{}' costs {price} {currency} for this period; team {team} has {has} {currency}, \
             but part of it is held by gateway nodes for calls in flight right now. Try again in a \
             second or two (what they do not use comes back), or top up the team's wallet; nothing \
             was charged.",
            plan.spec.slug,
        )
    } else {
        format!(
            "The plan '{}' costs {price} {currency} for this period; team {team} has {has} {currency}. \
             Top up the team's wallet and try again; nothing was charged.",
            plan.spec.slug,
        )
    };
    // The members of every `insufficient_credit` (SPEC §4), so that a
    // program need not read the detail.
    let mut error = ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_credit", detail);
    error.extra = vec![
        ("balance", domain::money::format(balance).into()),
        ("required", price.into()),
        ("currency", currency.to_string().into()),
        ("plan", plan.spec.slug.clone().into()),
        (
            "top_up_url",
            format!("{}/_tollgate/portal/teams/{team}/wallet", state.public_url).into(),
        ),
    ];
    error
}

/// The subscription `id`, in `tx`, when the caller's teams are on either
/// side of it; 404 otherwise.
async fn subscription_seen(
    tx: &mut WriteTx,
    caller: &Caller,
    id: &str,
) -> Result<Subscription, ApiError> {
    tx.subscription(id)
        .await?
        .filter(|s| sees_subscription(caller, s))
        .ok_or_else(|| ApiError::not_found("subscription", id))
}

/// 403 unless the caller is a developer of the subscription's consuming
/// team: the provider sees the subscription, so it hears why it may not
/// `act` (what its wallet pays is the consumer's decision), not that the
/// subscription does not exist.
fn require_consumer_developer(
    caller: &Caller,
    subscription: &Subscription,
    act: &str,
) -> Result<(), ApiError> {
    if caller
        .role(Some(&subscription.consumer_team))
        .is_none_or(|role| role < Role::Developer)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "Only a developer of the consuming team ('{}') may {act}.",
                subscription.consumer_team
            ),
        ));
    }
    Ok(())
}

fn sees_subscription(caller: &Caller, subscription: &Subscription) -> bool {
    caller.role(Some(&subscription.consumer_team)).is_some()
        || caller.role(subscription.provider_team.as_deref()).is_some()
}

/// Subscriptions of the caller's teams, as consumer or as provider.
#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "subscriptions",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query), ("app" = Option<String>, Query),
        ("service" = Option<String>, Query), ("status" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<Subscription>)))]
pub async fn list_subscriptions(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&["app", "service", "status"])?;
    let status = match params.filter("status") {
        Some(text) => Some(SubscriptionStatus::parse(text).ok_or_else(|| {
            ApiError::field(
                "status",
                "must be pending, active, rejected, suspended, cancelled, expired or past_due",
            )
        })?),
        None => None,
    };
    // Filters by slug resolve to ids; an unknown one matches nothing.
    let app_id = match params.filter("app") {
        Some(key) => Some(
            state
                .store
                .app(key)
                .await?
                .map_or_else(|| "-".to_owned(), |a| a.id),
        ),
        None => None,
    };
    let service_id = match params.filter("service") {
        Some(key) => Some(
            state
                .store
                .service(key)
                .await?
                .map_or_else(|| "-".to_owned(), |s| s.id),
        ),
        None => None,
    };
    let filter = SubscriptionFilter {
        app_id: app_id.as_deref(),
        service_id: service_id.as_deref(),
        status,
    };
    let page = state
        .store
        .subscriptions(
            &caller.visible(),
            &filter,
            params.after.as_deref(),
            params.limit,
        )
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

#[utoipa::path(get, path = "/api/v1/subscriptions/{subscription}", tag = "subscriptions",
    params(("subscription" = String, Path)), responses((status = 200, body = Subscription)))]
pub async fn get_subscription(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let subscription = state
        .store
        .subscription(&id)
        .await?
        .filter(|s| sees_subscription(&caller, s))
        .ok_or_else(|| ApiError::not_found("subscription", &id))?;
    let mut body = serde_json::to_value(&subscription)
        .map_err(|_| ApiError::internal("subscription as JSON"))?;
    if let Some(start) = subscription.period_start_ms {
        let plan = state
            .store
            .plan(&subscription.service_id, &subscription.plan_id)
            .await?;
        let (requests, nanos) = state
            .store
            .usage(&format!("sub:{}", subscription.id), start)
            .await?;
        body["usage"] = serde_json::json!({
            "requests": requests,
            "included_requests": plan.as_ref().and_then(|p| p.spec.included_requests()),
            "spent": domain::money::format(nanos),
        });
        // A plan that includes tokens (AI services): the period's tokens,
        // counted as the gateway counts them (`tok:<subscription>`).
        if let Some(included) = plan.as_ref().and_then(|p| p.spec.included_tokens()) {
            let (tokens, _) = state
                .store
                .usage(&format!("tok:{}", subscription.id), start)
                .await?;
            body["usage"]["tokens"] = tokens.into();
            body["usage"]["included_tokens"] = included.into();
        }
    }
    Ok(ok(&body))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    /// `false`: the subscription expires at the end of its period
    /// instead of renewing.
    pub auto_renew: bool,
}

/// Turn renewal on or off (the consuming team's developers).
#[utoipa::path(patch, path = "/api/v1/subscriptions/{subscription}", tag = "subscriptions", request_body = SubscriptionPatch,
    params(("subscription" = String, Path)), responses((status = 200, body = Subscription)))]
pub async fn patch_subscription(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(patch): Json<SubscriptionPatch>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = subscription_seen(&mut tx, &caller, &id).await?;
    require_consumer_developer(&caller, &existing, "change this subscription's renewal")?;
    let subscription = Subscription {
        auto_renew: patch.auto_renew,
        updated_at_ms: now_ms(),
        ..existing.clone()
    };
    tx.put_subscription(&subscription).await?;
    audit(
        &mut tx,
        &caller,
        subscription_audit("subscription.update", &subscription),
        Some(&existing),
        Some(&subscription),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(ok(&subscription))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why (shown to the other team; required to reject or suspend).
    #[serde(default)]
    pub reason: Option<String>,
    /// `change-plan`: the plan (slug or id) of the same service to move to.
    #[serde(default)]
    pub plan: Option<String>,
}

/// approve | reject | suspend | resume (the providing team's admins) or
/// cancel | renew (the consuming team's developers, or the provider's
/// admins). Approving starts the first period (the trial, or a paid
/// period whose fee is charged; `past_due` when the wallet is short);
/// renewing starts a new period of an expired or past-due subscription
/// now and is refused with 402 when the fee cannot be paid.
#[utoipa::path(post, path = "/api/v1/subscriptions/{subscription}/{action}", tag = "subscriptions", request_body = ActionRequest,
    params(("subscription" = String, Path), ("action" = String, Path, description = "approve, reject, suspend, resume, cancel, renew or change-plan (with `plan`)")),
    responses((status = 200, body = Subscription), (status = 409, body = crate::openapi::Problem)))]
pub async fn subscription_action(
    State(state): State<AdminState>,
    caller: Caller,
    Path((id, action_name)): Path<(String, String)>,
    Json(request): Json<ActionRequest>,
) -> Result<Response, ApiError> {
    if action_name == "change-plan" {
        return change_plan(state, caller, &id, request).await;
    }
    let Some(action) = SubscriptionAction::parse(&action_name) else {
        return Err(ApiError::not_found("subscription action", &action_name));
    };
    if request.plan.is_some() {
        return Err(ApiError::field("plan", "is taken only by change-plan"));
    }
    if matches!(
        action,
        SubscriptionAction::Reject | SubscriptionAction::Suspend
    ) && request.reason.as_deref().is_none_or(str::is_empty)
    {
        return Err(ApiError::field(
            "reason",
            "is required: tell the other team why",
        ));
    }
    if request.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::field("reason", "must be at most 1000 bytes"));
    }
    let mut tx = state.store.begin().await?;
    let existing = subscription_seen(&mut tx, &caller, &id).await?;
    let provider = existing.provider_team.as_deref();
    let provider_admin = caller.role(provider).is_some_and(|r| r >= Role::Admin);
    let consumer_developer = caller
        .role(Some(&existing.consumer_team))
        .is_some_and(|r| r >= Role::Developer);
    let allowed = match action {
        _ if action.by_provider() => provider_admin,
        // Renewing charges the consumer's wallet: its own decision.
        SubscriptionAction::Renew => consumer_developer,
        _ => provider_admin || consumer_developer,
    };
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            if action.by_provider() {
                format!(
                    "Only an admin of the providing team ('{}') may {} this subscription.",
                    provider.unwrap_or("platform"),
                    action.as_str()
                )
            } else if action == SubscriptionAction::Renew {
                format!(
                    "Only a developer of the consuming team ('{}') may renew: renewing charges its wallet.",
                    existing.consumer_team
                )
            } else {
                format!(
                    "To {} a subscription takes a developer of the consuming team or an admin of the providing team.",
                    action.as_str()
                )
            },
        ));
    }
    let Some(status) = action.apply(existing.status) else {
        let article = domain::validate::article(existing.status.as_str());
        return Err(ApiError::invalid_state(format!(
            "{}{} {} subscription cannot be {}ed.",
            article[..1].to_ascii_uppercase(),
            &article[1..],
            existing.status.as_str(),
            action.as_str().trim_end_matches('e')
        )));
    };
    let now = now_ms();
    let mut subscription = Subscription {
        status,
        reason: request
            .reason
            .or_else(|| existing.reason.clone())
            .filter(|_| status != SubscriptionStatus::Active),
        updated_at_ms: now,
        ..existing.clone()
    };
    let mut held = None;
    match action {
        SubscriptionAction::Approve | SubscriptionAction::Renew => {
            let plan = tx
                .plan(&existing.service_id, &existing.plan_id)
                .await?
                .ok_or_else(|| ApiError::internal("subscription without its plan"))?;
            let current = existing.period_start_ms.zip(existing.period_end_ms);
            let period = match (action, current) {
                // An expired one starts afresh, now.
                (SubscriptionAction::Renew, Some(_))
                    if existing.status == SubscriptionStatus::Expired =>
                {
                    domain::billing::restart(&plan.spec, now)
                }
                // A past-due subscription pays for its unpaid period first.
                (SubscriptionAction::Renew, Some(period)) => domain::billing::period_to_pay(
                    &plan.spec,
                    existing.status == SubscriptionStatus::PastDue,
                    period,
                    existing.anchor_ms,
                    existing.trial_end_ms,
                    now,
                ),
                _ => {
                    first_period(&mut tx, &existing.app_id, &existing.service_id, &plan, now)
                        .await?
                }
            };
            // The fee is held where calls in flight hold their prices
            // first; a wallet that cannot hold it cannot pay it now.
            let hold =
                crate::money::hold_debit(&state, &existing.consumer_team, period.fee_nanos).await;
            let payable = match hold {
                Ok(taken) => {
                    held = taken;
                    true
                }
                Err(available) if action == SubscriptionAction::Renew => {
                    return Err(fee_unaffordable(
                        &state,
                        &plan,
                        &existing.consumer_team,
                        period.fee_nanos,
                        available,
                    ));
                }
                Err(_) => false,
            };
            let fee = tx
                .enter_period(&mut subscription, &period, &caller.actor(), now, payable)
                .await?;
            if fee == store::Fee::AlreadyPaid {
                // No entry carries the hold (another request paid this
                // period): it goes back to the wallet.
                held = None;
            }
            crate::money::hold_entries(held.as_deref(), &tx);
            // Approving starts the subscription even when its fee cannot
            // be paid yet (it is then past due, and renewed once the
            // wallet can pay); renewing by hand is refused instead.
            if let (SubscriptionAction::Renew, store::Fee::Short { balance_nanos }) = (action, fee)
            {
                return Err(fee_unaffordable(
                    &state,
                    &plan,
                    &existing.consumer_team,
                    period.fee_nanos,
                    balance_nanos,
                ));
            }
        }
        _ => tx.put_subscription(&subscription).await?,
    }
    let action_name = format!("subscription.{}", action.as_str());
    audit(
        &mut tx,
        &caller,
        subscription_audit(&action_name, &subscription),
        Some(&existing),
        Some(&subscription),
    )
    .await?;
    let event = match action {
        SubscriptionAction::Approve => "subscription.approved",
        SubscriptionAction::Reject => "subscription.rejected",
        SubscriptionAction::Suspend => "subscription.suspended",
        SubscriptionAction::Resume => "subscription.resumed",
        SubscriptionAction::Cancel => "subscription.cancelled",
        SubscriptionAction::Renew => "subscription.renewed",
    };
    tx.notify_subscription(event, &subscription).await?;
    if action == SubscriptionAction::Approve && subscription.status == SubscriptionStatus::PastDue {
        tx.notify_subscription("subscription.past_due", &subscription)
            .await?;
    }
    commit(&state, tx).await?;
    if let Some(held) = held {
        held.keep();
    }
    Ok(ok(&subscription))
}

/// Moves an active subscription to another plan of its service, at once
/// (the consuming team's developers: it changes what their wallet pays).
/// The period stays: a dearer plan's fee is charged now for the rest of
/// it (the difference, prorated; nothing during a trial), a cheaper one
/// applies from the next period, and the calls already counted in the
/// period count against the new plan's quota (no fresh quota). A plan
/// that needs the provider's approval takes a new subscription.
async fn change_plan(
    state: AdminState,
    caller: Caller,
    id: &str,
    request: ActionRequest,
) -> Result<Response, ApiError> {
    let Some(wanted) = request.plan.as_deref().filter(|p| !p.is_empty()) else {
        return Err(ApiError::field("plan", "is required: the plan to move to"));
    };
    let mut tx = state.store.begin().await?;
    let existing = subscription_seen(&mut tx, &caller, id).await?;
    require_consumer_developer(
        &caller,
        &existing,
        "change the plan: it changes what its wallet pays",
    )?;
    if existing.status != SubscriptionStatus::Active {
        return Err(ApiError::invalid_state(format!(
            "Only an active subscription changes plan; this one is {}. Renew or resume it first, or subscribe anew.",
            existing.status.as_str()
        )));
    }
    let service = tx
        .service(&existing.service_id)
        .await?
        .ok_or_else(|| ApiError::internal("subscription without its service"))?;
    let own = caller.is_platform()
        || service.spec.team.as_deref() == Some(existing.consumer_team.as_str());
    let no_plan = || {
        ApiError::field(
            "plan",
            format!("the service '{}' has no plan '{wanted}'", service.spec.slug),
        )
    };
    // Another team's closed plan reads as none, as when subscribing.
    let plan = tx
        .plan(&existing.service_id, wanted)
        .await?
        .filter(|plan| own || plan.spec.open)
        .ok_or_else(no_plan)?;
    if plan.id == existing.plan_id {
        return Err(ApiError::field(
            "plan",
            "is the subscription's plan already",
        ));
    }
    if !plan.spec.open {
        return Err(ApiError::field("plan", "is closed to new subscriptions"));
    }
    if plan
        .spec
        .approval_required
        .unwrap_or(service.spec.approval_required)
    {
        return Err(ApiError::conflict(
            "plan",
            "needs the providing team's approval: cancel this subscription and subscribe to that plan (POST /api/v1/subscriptions)",
        ));
    }
    let current = tx
        .plan(&existing.service_id, &existing.plan_id)
        .await?
        .ok_or_else(|| ApiError::internal("subscription without its plan"))?;
    let now = now_ms();
    let in_trial = existing.trial_end_ms.is_some_and(|end| now < end);
    let period = existing.period_start_ms.zip(existing.period_end_ms);
    let charge = match period {
        Some(period) if !in_trial => domain::billing::plan_change_charge(
            current.spec.fee_nanos(),
            plan.spec.fee_nanos(),
            period,
            now,
        ),
        _ => 0,
    };
    // Held where calls in flight hold their prices first, as any fee.
    let mut held = match crate::money::hold_debit(&state, &existing.consumer_team, charge).await {
        Ok(held) => held,
        Err(available) => {
            return Err(fee_unaffordable(
                &state,
                &plan,
                &existing.consumer_team,
                charge,
                available,
            ));
        }
    };
    if charge > 0 {
        let team = tx
            .team(&existing.consumer_team)
            .await?
            .ok_or_else(|| ApiError::internal("subscription without its team"))?;
        let start = period.map_or(now, |(start, _)| start);
        let fee = tx
            .charge_plan_change(
                &team.id,
                &existing,
                start,
                &plan.id,
                charge,
                &caller.actor(),
                now,
            )
            .await?;
        match fee {
            store::Fee::Short { balance_nanos } => {
                return Err(fee_unaffordable(
                    &state,
                    &plan,
                    &existing.consumer_team,
                    charge,
                    balance_nanos,
                ));
            }
            // Moved to this plan and back earlier in the period: its
            // difference is paid already, and the hold goes back.
            store::Fee::AlreadyPaid => held = None,
            store::Fee::Paid => {}
        }
    }
    crate::money::hold_entries(held.as_deref(), &tx);
    let subscription = Subscription {
        plan: plan.spec.slug.clone(),
        plan_id: plan.id.clone(),
        updated_at_ms: now,
        ..existing.clone()
    };
    tx.put_subscription(&subscription).await?;
    audit(
        &mut tx,
        &caller,
        subscription_audit("subscription.change_plan", &subscription),
        Some(&existing),
        Some(&subscription),
    )
    .await?;
    tx.notify_subscription("subscription.plan_changed", &subscription)
        .await?;
    commit(&state, tx).await?;
    if let Some(held) = held {
        held.keep();
    }
    Ok(ok(&subscription))
}

// ---------------------------------------------------------------- catalog

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogEntry {
    pub service: CatalogService,
    /// Plans open to new subscriptions.
    pub plans: Vec<Plan>,
}

/// A service as the catalog shows it to would-be consumers: what it is
/// and how to call it, never how it is built (its upstream, IP rules,
/// issuer secrets, prompt templates), which stay with its own team.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogService {
    pub id: String,
    pub slug: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub kind: domain::model::ServiceKind,
    pub base_path: String,
    pub visibility: Visibility,
    pub approval_required: bool,
    pub lifecycle: Lifecycle,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
    /// How callers authenticate.
    pub auth: CatalogAuth,
    /// AI services: the models offered (and their aliases).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Prompt services: the JSON schema of the variables a call sends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variables: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogAuth {
    /// No credentials needed.
    pub anonymous: bool,
    /// API keys in the query string are accepted.
    pub query_key: bool,
    /// JWTs from these issuers are accepted (besides API keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwt_issuers: Vec<String>,
}

impl From<Service> for CatalogService {
    fn from(service: Service) -> Self {
        let spec = service.spec;
        let mut models = Vec::new();
        if let Some(ai) = &spec.ai {
            models.extend(ai.models.iter().cloned());
            models.extend(ai.aliases.keys().cloned());
        }
        CatalogService {
            id: service.id,
            slug: spec.slug,
            team: spec.team,
            name: spec.name,
            description: spec.description,
            kind: spec.kind,
            base_path: spec.base_path,
            visibility: spec.visibility,
            approval_required: spec.approval_required,
            lifecycle: service.lifecycle,
            sunset: service.sunset,
            auth: CatalogAuth {
                anonymous: spec.auth.anonymous,
                query_key: spec.auth.query_key,
                jwt_issuers: spec
                    .auth
                    .jwt
                    .iter()
                    .flat_map(|jwt| jwt.issuers.iter().map(|issuer| issuer.issuer.clone()))
                    .collect(),
            },
            models,
            variables: spec.prompt.map(|prompt| prompt.variables),
        }
    }
}

/// What the caller's teams may subscribe to: published services with
/// visibility `catalog` or `public`, plus their own teams' services.
#[utoipa::path(get, path = "/api/v1/catalog", tag = "subscriptions", responses((status = 200, body = ListResponse<CatalogEntry>)))]
pub async fn catalog(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only_unpaged(&[])?;
    let visible = caller.visible();
    let mut entries = Vec::new();
    for service in state.store.published_services().await? {
        let offered = matches!(
            service.spec.visibility,
            Visibility::Catalog | Visibility::Public
        ) || visible.includes(service.spec.team.as_deref());
        if !offered || service.lifecycle != Lifecycle::Published {
            continue;
        }
        let plans = state
            .store
            .plans(&service.id)
            .await?
            .into_iter()
            .filter(|p| p.spec.open)
            .collect();
        entries.push(CatalogEntry {
            service: service.into(),
            plans,
        });
    }
    Ok(ok(&ListResponse {
        data: entries,
        next_cursor: None,
    }))
}

// --------------------------------------------------------------- webhooks

/// A webhook as created: the only time its signing secret is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// Verify `Tollgate-Signature` with this (HMAC-SHA256). Shown once.
    pub secret: String,
}

async fn webhook_team(
    state: &AdminState,
    caller: &Caller,
    team_key: &str,
) -> Result<String, ApiError> {
    let team = state
        .store
        .team(team_key)
        .await?
        .ok_or_else(|| ApiError::not_found("team", team_key))?;
    caller.require(Some(&team.spec.slug), Role::Admin, "team", team_key)?;
    Ok(team.spec.slug)
}

/// Register a webhook endpoint for the team's subscription events.
#[utoipa::path(post, path = "/api/v1/teams/{team}/webhooks", tag = "teams", request_body = WebhookSpec,
    params(("team" = String, Path)), responses((status = 201, body = CreatedWebhook)))]
pub async fn create_webhook(
    State(state): State<AdminState>,
    caller: Caller,
    Path(team_key): Path<String>,
    Json(spec): Json<WebhookSpec>,
) -> Result<Response, ApiError> {
    spec.validate()?;
    let team = webhook_team(&state, &caller, &team_key).await?;
    let random = random_secret(40);
    if random.is_empty() {
        return Err(ApiError::internal("no random source"));
    }
    let secret = format!("whsec_{random}");
    let webhook = Webhook {
        id: domain::id::new_id(),
        team: team.clone(),
        spec,
        created_at_ms: now_ms(),
    };
    let sealed = state
        .secrets
        .seal(&secret, &webhook.id)
        .map_err(|_| ApiError::internal("sealing the webhook secret"))?;
    let mut tx = state.store.begin().await?;
    tx.insert_webhook(&webhook, &sealed).await?;
    let record = Audit::new("webhook.create", "webhook", &webhook.id, Some(&team));
    audit(&mut tx, &caller, record, NONE, Some(&webhook)).await?;
    commit(&state, tx).await?;
    Ok(created(
        &CreatedWebhook {
            webhook: webhook.clone(),
            secret,
        },
        format!("/api/v1/teams/{team}/webhooks/{}", webhook.id),
    ))
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/webhooks", tag = "teams",
    params(("team" = String, Path)), responses((status = 200, body = ListResponse<Webhook>)))]
pub async fn list_webhooks(
    State(state): State<AdminState>,
    caller: Caller,
    Path(team_key): Path<String>,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only_unpaged(&[])?;
    let team = webhook_team(&state, &caller, &team_key).await?;
    Ok(ok(&ListResponse {
        data: state.store.webhooks(&team).await?,
        next_cursor: None,
    }))
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/webhooks/{webhook}", tag = "teams",
    params(("team" = String, Path), ("webhook" = String, Path)), responses((status = 200, body = Webhook)))]
pub async fn get_webhook(
    State(state): State<AdminState>,
    caller: Caller,
    Path((team_key, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let team = webhook_team(&state, &caller, &team_key).await?;
    let webhook = state
        .store
        .webhook(&team, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook", &id))?;
    Ok(ok(&webhook))
}

#[utoipa::path(delete, path = "/api/v1/teams/{team}/webhooks/{webhook}", tag = "teams",
    params(("team" = String, Path), ("webhook" = String, Path)), responses((status = 204)))]
pub async fn delete_webhook(
    State(state): State<AdminState>,
    caller: Caller,
    Path((team_key, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let team = webhook_team(&state, &caller, &team_key).await?;
    let mut tx = state.store.begin().await?;
    if !tx.delete_webhook(&team, &id).await? {
        return Err(ApiError::not_found("webhook", &id));
    }
    let record = Audit::new("webhook.delete", "webhook", &id, Some(&team));
    audit(&mut tx, &caller, record, NONE, NONE).await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Recent deliveries of a webhook, newest first, with their state.
#[utoipa::path(get, path = "/api/v1/teams/{team}/webhooks/{webhook}/deliveries", tag = "teams",
    params(("team" = String, Path), ("webhook" = String, Path)), responses((status = 200, body = ListResponse<domain::access::DeliveryStatus>)))]
pub async fn list_deliveries(
    State(state): State<AdminState>,
    caller: Caller,
    Path((team_key, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let team = webhook_team(&state, &caller, &team_key).await?;
    state
        .store
        .webhook(&team, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook", &id))?;
    Ok(ok(&ListResponse {
        data: state.store.deliveries(&id, 100).await?,
        next_cursor: None,
    }))
}
