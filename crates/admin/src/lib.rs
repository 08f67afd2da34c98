//! The control plane's REST API (`/api/v1` on the admin listener).
//!
//! - [`router`] builds the axum router over an [`AdminState`] (the store,
//!   the root token's digest and a callback that tells the gateway to
//!   reload).
//! - [`handlers`] are the REST endpoints; [`ops`] the write operations they
//!   share with [`declarative`] apply; [`extract`] parses input strictly;
//!   [`error::ApiError`] renders every refusal as problem+json naming the
//!   offending fields; [`auth`] checks bearer tokens; [`openapi`] serves the
//!   generated OpenAPI 3.1 document and its reference page.

pub mod auth;
pub mod declarative;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod openapi;
pub mod ops;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
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
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    use handlers as h;
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
        .route("/api/v1/services/{service}/rollback", post(h::rollback))
        .route("/api/v1/services/{service}/deprecate", post(h::deprecate))
        .route("/api/v1/services/{service}/retire", post(h::retire))
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
