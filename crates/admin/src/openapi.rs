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
    info(title = "Tollgate admin API", description = "Manage teams, users, upstreams, services, routes, releases, plans, apps, keys and subscriptions. Authenticate with `Authorization: Bearer <admin token>` (root or personal token) or a console session."),
    paths(
        crate::handlers::create_upstream, crate::handlers::list_upstreams, crate::handlers::get_upstream,
        crate::handlers::replace_upstream, crate::handlers::patch_upstream, crate::handlers::delete_upstream,
        crate::handlers::create_service, crate::handlers::list_services, crate::handlers::get_service,
        crate::handlers::replace_service, crate::handlers::patch_service, crate::handlers::delete_service,
        crate::handlers::publish, crate::prompts::test_run, crate::prompts::put_openapi, crate::prompts::get_openapi, crate::handlers::rollback, crate::handlers::deprecate, crate::handlers::retire, crate::handlers::purge_cache,
        crate::handlers::list_releases, crate::handlers::get_release,
        crate::handlers::create_route, crate::handlers::list_routes, crate::handlers::get_route,
        crate::handlers::replace_route, crate::handlers::patch_route, crate::handlers::delete_route,
        crate::declarative::apply, crate::declarative::export,
        crate::tenancy::create_team, crate::tenancy::list_teams, crate::tenancy::get_team,
        crate::tenancy::patch_team, crate::tenancy::delete_team,
        crate::tenancy::list_members, crate::tenancy::add_member, crate::tenancy::change_member,
        crate::tenancy::remove_member,
        crate::tenancy::create_user, crate::tenancy::list_users, crate::tenancy::get_user,
        crate::tenancy::patch_user, crate::tenancy::delete_user,
        crate::tenancy::create_token, crate::tenancy::list_tokens, crate::tenancy::delete_token,
        crate::tenancy::login, crate::tenancy::logout, crate::tenancy::me, crate::tenancy::list_audit,
        crate::consumers::create_app, crate::consumers::list_apps, crate::consumers::get_app,
        crate::consumers::replace_app, crate::consumers::patch_app, crate::consumers::delete_app,
        crate::consumers::create_key, crate::consumers::list_keys, crate::consumers::get_key,
        crate::consumers::change_key,
        crate::consumers::revoke_key,
        crate::consumers::create_plan, crate::consumers::list_plans, crate::consumers::get_plan,
        crate::consumers::patch_plan, crate::consumers::delete_plan,
        crate::consumers::create_subscription, crate::consumers::list_subscriptions,
        crate::consumers::get_subscription, crate::consumers::patch_subscription,
        crate::consumers::subscription_action,
        crate::consumers::catalog,
        crate::consumers::create_webhook, crate::consumers::list_webhooks,
        crate::consumers::get_webhook, crate::consumers::delete_webhook, crate::consumers::list_deliveries,
        crate::money::get_wallet, crate::money::list_ledger, crate::money::create_grant,
        crate::money::create_adjustment, crate::money::create_checkout,
        crate::money::get_auto_top_up, crate::money::put_auto_top_up, crate::money::delete_auto_top_up,
        crate::observe::list_logs, crate::observe::get_log, crate::observe::summary, crate::observe::timeseries,
        crate::alerts::create_alert, crate::alerts::list_alerts, crate::alerts::get_alert,
        crate::alerts::patch_alert, crate::alerts::delete_alert,
        crate::providers::create_provider, crate::providers::list_providers,
        crate::providers::get_provider, crate::providers::patch_provider,
        crate::providers::delete_provider, crate::providers::add_provider_key,
        crate::providers::delete_provider_key, crate::providers::catalog_providers,
        crate::providers::catalog_models, crate::providers::list_provider_models,
        crate::providers::put_provider_model, crate::providers::delete_provider_model,
    ),
    components(schemas(Problem, domain::validate::FieldError)),
    modifiers(&BearerAuth, &ProblemResponses),
    tags((name = "upstreams"), (name = "services"), (name = "routes"), (name = "plans"), (name = "apps"),
        (name = "subscriptions"), (name = "teams"), (name = "users"), (name = "audit"), (name = "config"),
        (name = "wallets"), (name = "observability"), (name = "providers"))
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
        const PROBLEMS: [(&str, &str); 8] = [
            (
                "400",
                "Invalid input: every offending field is named in `errors`",
            ),
            ("401", "Missing or wrong admin token"),
            (
                "403",
                "Forbidden: the caller's role does not allow this (docs/access.md, the role matrix)",
            ),
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
            for (name, schema) in components.schemas.iter_mut() {
                if let utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(object)) = schema
                    && name.ends_with("Spec")
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
