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
    modifiers(&BearerAuth, &ProblemResponses),
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

/// Documents, on every operation, the refusals any of them can give, as
/// `application/problem+json` (the annotations only name the typical ones).
struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        const PROBLEMS: [(&str, &str); 7] = [
            (
                "400",
                "Invalid input: every offending field is named in `errors`",
            ),
            ("401", "Missing or wrong admin token"),
            ("404", "No such object"),
            ("405", "Method not allowed on this path"),
            (
                "409",
                "Conflict: duplicate, in use, or not allowed in this lifecycle state",
            ),
            ("413", "Request body too large"),
            ("503", "The database did not answer; nothing was changed"),
        ];
        // The specs refuse unknown fields, but the stored objects extend them
        // (`allOf` with id and times), which `additionalProperties: false`
        // would forbid. Unknown fields are documented as a 400 instead.
        if let Some(components) = openapi.components.as_mut() {
            for name in ["UpstreamSpec", "ServiceSpec", "RouteSpec"] {
                if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(object))) =
                    components.schemas.get_mut(name)
                {
                    object.additional_properties = None;
                }
            }
        }
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.name == "limit" {
                        parameter.schema = Some(
                            utoipa::openapi::ObjectBuilder::new()
                                .schema_type(utoipa::openapi::Type::Integer)
                                .minimum(Some(crate::extract::LIMIT_MIN as f64))
                                .maximum(Some(crate::extract::LIMIT_MAX as f64))
                                .default(Some(serde_json::json!(crate::extract::LIMIT_DEFAULT)))
                                .into(),
                        );
                    }
                }
                for (status, description) in PROBLEMS {
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/problem+json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("Problem")))
                                .build(),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .insert(status.to_owned(), response.into());
                }
            }
        }
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
