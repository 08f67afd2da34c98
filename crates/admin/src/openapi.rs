//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the wire types, and a self-contained reference page that renders it
//! (no CDN: it works offline).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use utoipa::OpenApi;

/// RFC 9457 problem details as the admin API returns them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Machine-readable reason: validation_failed, not_found, conflict,
    /// invalid_lifecycle, unauthorized, body_too_large, unavailable.
    pub code: String,
    pub request_id: String,
    /// For validation errors: each offending field and what is wrong.
    pub errors: Option<Vec<domain::validate::FieldError>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tollgate admin API", description = "Manage upstreams, services, routes and releases. Authenticate with `Authorization: Bearer <admin token>`."),
    paths(
        crate::handlers::create_upstream, crate::handlers::list_upstreams, crate::handlers::get_upstream,
        crate::handlers::replace_upstream, crate::handlers::patch_upstream, crate::handlers::delete_upstream,
        crate::handlers::create_service, crate::handlers::list_services, crate::handlers::get_service,
        crate::handlers::replace_service, crate::handlers::patch_service, crate::handlers::delete_service,
        crate::handlers::publish, crate::handlers::rollback, crate::handlers::deprecate, crate::handlers::retire,
        crate::handlers::list_releases, crate::handlers::get_release,
        crate::handlers::create_route, crate::handlers::list_routes, crate::handlers::get_route,
        crate::handlers::replace_route, crate::handlers::patch_route, crate::handlers::delete_route,
        crate::declarative::apply, crate::declarative::export,
    ),
    components(schemas(Problem, domain::validate::FieldError)),
    modifiers(&BearerAuth),
    tags((name = "upstreams"), (name = "services"), (name = "routes"), (name = "config"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "admin_token",
            Vec::<String>::new(),
        )]);
    }
}

/// `GET /api/v1/openapi.json`
pub async fn document() -> Response {
    let mut doc = ApiDoc::openapi();
    doc.openapi = utoipa::openapi::OpenApiVersion::Version31;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let body = doc.to_json().unwrap_or_else(|_| "{}".to_owned());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /api/v1/docs`
pub async fn reference() -> Html<&'static str> {
    Html(include_str!("reference.html"))
}
