//! The control plane's REST API (`/api/v1` on the admin listener).
//!
//! - [`router`] builds the axum router over an [`AdminState`] (the store,
//!   the root token's digest and a callback that tells the gateway to
//!   reload).
//! - [`auth`] identifies the caller (root token, personal token or console
//!   session with CSRF) as an [`access::Caller`], whose role per team every
//!   handler checks (404 outside the caller's teams, 403 below the role);
//!   [`access::audit`] records each change in its transaction.
//! - [`handlers`] are the upstream, service, route and release endpoints;
//!   [`tenancy`] teams, members, users, tokens, login and the audit log;
//!   [`consumers`] apps, keys, plans, subscriptions, the catalog and
//!   webhooks; [`ops`] the write operations shared with [`declarative`]
//!   apply; [`extract`] parses input strictly; [`error::ApiError`] renders
//!   every refusal as problem+json naming the offending fields;
//!   [`observe`] the call log, analytics and `/metrics`; [`alerts`] alert
//!   rules;
//!   [`password`] hashes with argon2id; [`providers`] AI providers and
//!   their sealed key pools; [`openapi`] serves the generated
//!   OpenAPI 3.1 document and its reference page.

pub mod access;
pub mod alerts;
pub mod auth;
pub mod consumers;
pub mod declarative;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod money;
pub mod observe;
pub mod openapi;
pub mod ops;
pub mod password;
pub mod prompts;
pub mod providers;
pub mod tenancy;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post};
use store::Store;

use crate::error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    /// Hex SHA-256 of the root admin token.
    pub root_token_digest: Arc<str>,
    /// Called after each committed change, so the gateway reloads at once.
    pub on_change: Arc<dyn Fn() + Send + Sync>,
    /// Failed console logins per email, to slow down password guessing.
    pub login_failures: Arc<password::LoginThrottle>,
    /// The deployment's currency (ISO 4217), for amounts shown.
    pub currency: Arc<str>,
    /// `public_url`, without a trailing slash (for links in answers).
    pub public_url: Arc<str>,
    /// Stripe Checkout, when configured.
    pub payments: Option<Arc<dyn money::PaymentProvider>>,
    /// Renders `/metrics` (Prometheus text format).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// Seals secrets (provider keys) at rest.
    pub secrets: Arc<store::secrets::MasterKey>,
    /// The built-in AI catalogue.
    pub catalog: Arc<domain::catalog::Catalog>,
    /// The gateway's in-memory wallets, where admin debits are held first.
    pub holds: Option<Arc<dyn money::Holds>>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    use consumers as c;
    use handlers as h;
    use tenancy as t;
    let api = Router::new()
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/docs", get(openapi::reference))
        .route(
            "/api/v1/upstreams",
            get(h::list_upstreams).post(h::create_upstream),
        )
        .route(
            "/api/v1/upstreams/{upstream}",
            get(h::get_upstream)
                .put(h::replace_upstream)
                .patch(h::patch_upstream)
                .delete(h::delete_upstream),
        )
        .route(
            "/api/v1/services",
            get(h::list_services).post(h::create_service),
        )
        .route(
            "/api/v1/services/{service}",
            get(h::get_service)
                .put(h::replace_service)
                .patch(h::patch_service)
                .delete(h::delete_service),
        )
        .route("/api/v1/services/{service}/publish", post(h::publish))
        .route(
            "/api/v1/services/{service}/test-run",
            post(prompts::test_run),
        )
        .route(
            "/api/v1/services/{service}/openapi",
            get(prompts::get_openapi).put(prompts::put_openapi),
        )
        .route("/api/v1/services/{service}/rollback", post(h::rollback))
        .route("/api/v1/services/{service}/deprecate", post(h::deprecate))
        .route("/api/v1/services/{service}/retire", post(h::retire))
        .route(
            "/api/v1/services/{service}/cache/purge",
            post(h::purge_cache),
        )
        .route("/api/v1/services/{service}/releases", get(h::list_releases))
        .route(
            "/api/v1/services/{service}/releases/{release}",
            get(h::get_release),
        )
        .route(
            "/api/v1/services/{service}/routes",
            get(h::list_routes).post(h::create_route),
        )
        .route(
            "/api/v1/services/{service}/routes/{route}",
            get(h::get_route)
                .put(h::replace_route)
                .patch(h::patch_route)
                .delete(h::delete_route),
        )
        .route("/api/v1/teams", get(t::list_teams).post(t::create_team))
        .route(
            "/api/v1/teams/{team}",
            get(t::get_team).patch(t::patch_team).delete(t::delete_team),
        )
        .route(
            "/api/v1/teams/{team}/members",
            get(t::list_members).post(t::add_member),
        )
        .route(
            "/api/v1/teams/{team}/members/{user}",
            patch(t::change_member).delete(t::remove_member),
        )
        .route(
            "/api/v1/teams/{team}/webhooks",
            get(c::list_webhooks).post(c::create_webhook),
        )
        .route(
            "/api/v1/teams/{team}/webhooks/{webhook}",
            get(c::get_webhook).delete(c::delete_webhook),
        )
        .route(
            "/api/v1/teams/{team}/webhooks/{webhook}/deliveries",
            get(c::list_deliveries),
        )
        .route("/api/v1/users", get(t::list_users).post(t::create_user))
        .route(
            "/api/v1/users/{user}",
            get(t::get_user).patch(t::patch_user).delete(t::delete_user),
        )
        .route("/api/v1/tokens", get(t::list_tokens).post(t::create_token))
        .route("/api/v1/tokens/{token}", delete(t::delete_token))
        .route("/api/v1/auth/login", post(t::login))
        .route("/api/v1/auth/logout", post(t::logout))
        .route("/api/v1/auth/me", get(t::me))
        .route("/api/v1/audit", get(t::list_audit))
        .route("/api/v1/logs", get(observe::list_logs))
        .route("/api/v1/logs/{id}", get(observe::get_log))
        .route("/api/v1/analytics/summary", get(observe::summary))
        .route("/api/v1/analytics/timeseries", get(observe::timeseries))
        .route("/metrics", get(observe::metrics))
        .route(
            "/api/v1/catalog/providers",
            get(providers::catalog_providers),
        )
        .route("/api/v1/catalog/models", get(providers::catalog_models))
        .route(
            "/api/v1/providers",
            get(providers::list_providers).post(providers::create_provider),
        )
        .route(
            "/api/v1/providers/{provider}",
            get(providers::get_provider)
                .patch(providers::patch_provider)
                .delete(providers::delete_provider),
        )
        .route(
            "/api/v1/providers/{provider}/keys",
            post(providers::add_provider_key),
        )
        .route(
            "/api/v1/providers/{provider}/keys/{key}",
            delete(providers::delete_provider_key),
        )
        .route(
            "/api/v1/providers/{provider}/models",
            get(providers::list_provider_models),
        )
        .route(
            "/api/v1/providers/{provider}/models/{*model}",
            axum::routing::put(providers::put_provider_model)
                .delete(providers::delete_provider_model),
        )
        .route(
            "/api/v1/alerts",
            get(alerts::list_alerts).post(alerts::create_alert),
        )
        .route(
            "/api/v1/alerts/{alert}",
            get(alerts::get_alert)
                .patch(alerts::patch_alert)
                .delete(alerts::delete_alert),
        )
        .route("/api/v1/apps", get(c::list_apps).post(c::create_app))
        .route(
            "/api/v1/apps/{app}",
            get(c::get_app)
                .put(c::replace_app)
                .patch(c::patch_app)
                .delete(c::delete_app),
        )
        .route(
            "/api/v1/apps/{app}/keys",
            get(c::list_keys).post(c::create_key),
        )
        .route(
            "/api/v1/apps/{app}/keys/{key}",
            get(c::get_key).patch(c::change_key).delete(c::revoke_key),
        )
        .route(
            "/api/v1/services/{service}/plans",
            get(c::list_plans).post(c::create_plan),
        )
        .route(
            "/api/v1/services/{service}/plans/{plan}",
            get(c::get_plan).patch(c::patch_plan).delete(c::delete_plan),
        )
        .route(
            "/api/v1/subscriptions",
            get(c::list_subscriptions).post(c::create_subscription),
        )
        .route(
            "/api/v1/subscriptions/{subscription}",
            get(c::get_subscription).patch(c::patch_subscription),
        )
        .route(
            "/api/v1/subscriptions/{subscription}/{action}",
            post(c::subscription_action),
        )
        .route("/api/v1/catalog", get(c::catalog))
        .route("/api/v1/teams/{team}/wallet", get(money::get_wallet))
        .route(
            "/api/v1/teams/{team}/wallet/ledger",
            get(money::list_ledger),
        )
        .route(
            "/api/v1/teams/{team}/wallet/credits",
            post(money::create_grant),
        )
        .route(
            "/api/v1/teams/{team}/wallet/grants",
            post(money::create_grant),
        )
        .route(
            "/api/v1/teams/{team}/wallet/adjustments",
            post(money::create_adjustment),
        )
        .route(
            "/api/v1/teams/{team}/wallet/checkout",
            post(money::create_checkout),
        )
        .route(
            "/api/v1/teams/{team}/wallet/auto-top-up",
            get(money::get_auto_top_up)
                .put(money::put_auto_top_up)
                .delete(money::delete_auto_top_up),
        )
        .route("/api/v1/config/apply", post(declarative::apply))
        .route("/api/v1/config/export", get(declarative::export))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    api.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::middleware,
    ))
    .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "No admin endpoint at this path; see /api/v1/docs.",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This endpoint does not take this method; see /api/v1/docs.",
    )
}
