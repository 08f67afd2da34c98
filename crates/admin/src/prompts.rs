//! `POST /api/v1/services/{service}/test-run`: runs a prompt service's
//! current spec (a draft too) with sample variables, so its team can see
//! the rendered messages and the model's answer before publishing. The
//! call goes straight to the model's provider with one of its keys; it is
//! not metered, charged or logged as a gateway call.

use axum::extract::{Path, State};
use axum::response::Response;
use domain::access::Role;
use domain::prompt::PromptOutput;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AdminState;
use crate::access::Caller;
use crate::error::ApiError;
use crate::extract::Json;
use crate::handlers::ok;

/// Output tokens a test run may produce, at most.
const TEST_RUN_MAX_TOKENS: u64 = 1024;
/// Test runs per team and minute (they use the platform's provider keys
/// unmetered).
const TEST_RUNS_PER_MINUTE: u32 = 20;

/// Counts a team's test run in the current minute; 429 past the limit.
fn take_test_run(team: &str) -> Result<(), ApiError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static RUNS: OnceLock<Mutex<HashMap<String, (i64, u32)>>> = OnceLock::new();
    let minute = domain::now_ms() / 60_000;
    let mut runs = RUNS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    runs.retain(|_, (at, _)| *at == minute);
    let entry = runs.entry(team.to_owned()).or_insert((minute, 0));
    if entry.1 >= TEST_RUNS_PER_MINUTE {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("At most {TEST_RUNS_PER_MINUTE} test runs per team and minute; wait a little."),
        ));
    }
    entry.1 += 1;
    Ok(())
}

/// What to run the prompt with.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRun {
    #[schema(value_type = Object)]
    pub variables: Value,
    /// Only check the variables and render the messages.
    #[serde(default)]
    pub dry_run: bool,
}

/// Test-run a prompt service with sample variables: the rendered system
/// and user messages, and (unless `dry_run`) the model's output and usage.
#[utoipa::path(post, path = "/api/v1/services/{service}/test-run", tag = "services",
    request_body = TestRun, params(("service" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = crate::openapi::Problem),
              (status = 502, body = crate::openapi::Problem)))]
pub async fn test_run(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(run): Json<TestRun>,
) -> Result<Response, ApiError> {
    let service = crate::handlers::service_or_404(&state, &caller, &key).await?;
    caller.require(
        service.spec.team.as_deref(),
        Role::Developer,
        "service",
        &key,
    )?;
    if !run.dry_run {
        take_test_run(service.spec.team.as_deref().unwrap_or(""))?;
    }
    let Some(prompt) = &service.spec.prompt else {
        return Err(ApiError::field(
            "service",
            "only services of kind 'prompt' can be test-run",
        ));
    };
    let errors = mcp::schema::validate(&prompt.variables, &run.variables);
    if !errors.is_empty() {
        let mut fields = domain::validate::FieldErrors::new();
        for error in errors {
            let path = error.path.trim_start_matches('/').replace('/', ".");
            fields.add(
                if path.is_empty() {
                    "variables".to_owned()
                } else {
                    format!("variables.{path}")
                },
                error.message,
            );
        }
        return Err(ApiError::validation(fields));
    }
    let (system, user) = prompt
        .render(&run.variables)
        .map_err(|message| ApiError::field("variables", message))?;
    let mut answer = json!({"system": system, "user": user});
    if run.dry_run {
        return Ok(ok(&answer));
    }
    let Some((provider_slug, model)) = resolve_model(&state, &service, &prompt.model).await? else {
        return Err(ApiError::field(
            "prompt.model",
            "names no provider model nor an alias of an AI service of this team",
        ));
    };
    let provider =
        state.store.provider(&provider_slug).await?.ok_or_else(|| {
            ApiError::field("prompt.model", format!("no provider '{provider_slug}'"))
        })?;
    let base_url = provider
        .spec
        .base_url(&state.catalog)
        .ok_or_else(|| ApiError::field("prompt.model", "the provider has no base URL"))?
        .trim_end_matches('/')
        .to_owned();
    let sealed = state.store.sealed_provider_keys(&provider.id).await?;
    let key = sealed
        .first()
        .map(|(_, sealed)| state.secrets.open(sealed, &provider.id))
        .transpose()
        .map_err(|_| {
            ApiError::upstream("the provider's key cannot be opened with this master key")
        })?;
    let dialect = match provider.spec.kind {
        domain::providers::ProviderKind::Anthropic => ai::Dialect::Anthropic,
        domain::providers::ProviderKind::Gemini => ai::Dialect::Gemini,
        _ => ai::Dialect::OpenAi,
    };
    let mut messages = Vec::new();
    if let Some(system) = &system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": user}));
    let mut chat = json!({"model": model, "messages": messages});
    if let Some(t) = prompt.parameters.temperature {
        chat["temperature"] = json!(t);
    }
    // Test runs are unmetered: their answers are kept short.
    chat["max_tokens"] = json!(
        prompt
            .parameters
            .max_tokens
            .unwrap_or(TEST_RUN_MAX_TOKENS)
            .min(TEST_RUN_MAX_TOKENS)
    );
    if let PromptOutput::Json { schema } = &prompt.output {
        chat["response_format"] =
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}});
    }
    let body = ai::translate_request(ai::Dialect::OpenAi, dialect, &chat, &model)
        .map_err(|error| ApiError::field("prompt", error.to_string()))?;
    let mut request = reqwest::Client::new()
        .post(format!(
            "{base_url}{}",
            ai::upstream_path(dialect, &model, false)
        ))
        .timeout(std::time::Duration::from_secs(120))
        .json(&body);
    // The preset's auth style (Azure's `api-key`, none for local servers),
    // else the kind's.
    let auth = provider
        .spec
        .preset
        .as_deref()
        .and_then(|preset| state.catalog.providers.iter().find(|p| p.slug == preset))
        .map(|preset| preset.auth.clone());
    if dialect == ai::Dialect::Anthropic {
        request = request.header("anthropic-version", "2023-06-01");
    }
    if let Some(key) = key {
        request = match (auth.as_deref(), dialect) {
            (Some("none"), _) => request,
            (Some("api-key"), _) => request.header("api-key", key),
            (Some("x-api-key"), _) | (None, ai::Dialect::Anthropic) => {
                request.header("x-api-key", key)
            }
            (Some("x-goog-api-key"), _) | (None, ai::Dialect::Gemini) => {
                request.header("x-goog-api-key", key)
            }
            _ => request.bearer_auth(key),
        };
    }
    let response = request.send().await.map_err(|error| {
        ApiError::upstream(format!("the provider could not be reached: {error}"))
    })?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|error| ApiError::upstream(format!("the provider broke off: {error}")))?;
    if !(200..300).contains(&status) {
        let error = ai::classify_error(dialect, status, &bytes);
        return Err(ApiError::upstream(format!(
            "the provider answered {status}: {}",
            error.message
        )));
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::upstream("the provider's answer is not JSON"))?;
    let (out, usage) = ai::translate_response(dialect, ai::Dialect::OpenAi, &value, &prompt.model)
        .map_err(|error| {
            ApiError::upstream(format!("the provider's answer could not be read: {error}"))
        })?;
    let text = out["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    answer["output"] = match &prompt.output {
        PromptOutput::Text => Value::String(text),
        PromptOutput::Json { schema } => {
            let parsed: Value = serde_json::from_str(text.trim()).map_err(|error| {
                ApiError::upstream(format!("the model's answer is not JSON: {error}"))
            })?;
            let errors = mcp::schema::validate(schema, &parsed);
            if !errors.is_empty() {
                return Err(ApiError::upstream(format!(
                    "the model's answer does not match the output schema: {}",
                    mcp::schema::describe(&errors)
                )));
            }
            parsed
        }
    };
    answer["usage"] = json!({"input_tokens": usage.input, "output_tokens": usage.output});
    answer["model"] = json!(format!("{provider_slug}/{model}"));
    Ok(ok(&answer))
}

/// Import an OpenAPI 3.0 or 3.1 document (JSON, or YAML with
/// `Content-Type: application/yaml`) onto an `http` service: its
/// operations become the service's MCP tools once published.
#[utoipa::path(put, path = "/api/v1/services/{service}/openapi", tag = "services",
    request_body = Object, params(("service" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = crate::openapi::Problem)))]
pub async fn put_openapi(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let yaml = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"));
    let doc: Value = if yaml {
        serde_norway::from_slice(&body)
            .map_err(|error| ApiError::field("openapi", format!("not valid YAML: {error}")))?
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::field("openapi", format!("not valid JSON: {error}")))?
    };
    let operations =
        mcp::openapi::operations(&doc).map_err(|message| ApiError::field("openapi", message))?;
    let mut tx = state.store.begin().await?;
    let existing = crate::handlers::service_to_change(&mut tx, &caller, &key).await?;
    let mut spec = existing.spec.clone();
    spec.openapi = Some(doc);
    let service = crate::ops::update_service(&mut tx, &state.secrets, &existing, spec).await?;
    crate::access::audit(
        &mut tx,
        &caller,
        crate::handlers::service_audit("service.openapi", &service),
        Some(&existing),
        Some(&service),
    )
    .await?;
    crate::handlers::commit(&state, tx).await?;
    let tools: Vec<Value> = operations
        .iter()
        .map(|op| json!({"tool": op.tool_name, "method": op.method, "path": op.path}))
        .collect();
    Ok(ok(
        &json!({"service": service.spec.slug, "operations": tools}),
    ))
}

/// The service's imported OpenAPI document (`http` services; a prompt
/// service's generated one is at `GET <base_path>/openapi.json` on the
/// gateway).
#[utoipa::path(get, path = "/api/v1/services/{service}/openapi", tag = "services",
    params(("service" = String, Path)), responses((status = 200, body = Object), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_openapi(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let service = crate::handlers::service_or_404(&state, &caller, &key).await?;
    match &service.spec.openapi {
        Some(doc) => Ok(ok(doc)),
        None => Err(ApiError::not_found("OpenAPI document of service", &key)),
    }
}

/// `<provider>/<model>`, or the first target of the alias of that name in
/// an AI service of the prompt's team (or a platform one).
async fn resolve_model(
    state: &AdminState,
    service: &domain::model::Service,
    name: &str,
) -> Result<Option<(String, String)>, ApiError> {
    if let Some((provider, model)) = domain::ai::split_model(name) {
        return Ok(Some((provider.to_owned(), model.to_owned())));
    }
    let mut tx = state.store.begin().await?;
    let services = tx.all_services().await?;
    drop(tx);
    for other in services {
        let Some(ai) = &other.spec.ai else { continue };
        if other.spec.team.is_some() && other.spec.team != service.spec.team {
            continue;
        }
        if let Some(target) = ai.aliases.get(name).and_then(|a| a.targets.first())
            && let Some((provider, model)) = domain::ai::split_model(&target.model)
        {
            return Ok(Some((provider.to_owned(), model.to_owned())));
        }
    }
    Ok(None)
}
