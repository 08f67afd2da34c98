//! Prompt APIs: `POST <base_path>` of a `prompt` service takes a JSON
//! object of variables, checks them against the declared schema (400
//! naming the field), renders the templates, and makes the model call
//! through the same path as `/v1/chat/completions` (admission, token
//! reservation, fallbacks, settlement, call log). The answer is
//! `{"output", "usage", "cost"}`; with an output schema the provider is
//! asked for structured output and `output` is the parsed object, or 502
//! `upstream_invalid_output` (not charged) when it does not validate.
//! `GET <base_path>/openapi.json` is the service's generated document.

use domain::code::Code;
use domain::model::Service;
use domain::prompt::{PromptOutput, PromptSpec};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::Shared;
use crate::body::{GatewayBody, RequestBody};
use crate::pipeline::{RequestContext, Trace};
use crate::refusal::Refusal;

use super::{Call, Endpoint, json_response};

/// Largest body of variables read.
const VARIABLES_LIMIT: u64 = 1 << 20;

/// Serves `POST <base_path>` and `GET <base_path>/openapi.json` of the
/// prompt service `index` (see [`super::AiRt::prompt_at`]).
pub(crate) async fn handle(
    shared: &Shared,
    context: &mut RequestContext,
    trace: &mut Trace,
    request: Request<RequestBody>,
    index: usize,
) -> Result<Response<GatewayBody>, Refusal> {
    let snapshot = context.snapshot.clone();
    let service = &snapshot.ai.services[index];
    let Some(prompt) = service.prompt.clone() else {
        return Err(Refusal::new(Code::RouteNotFound, "No route matched."));
    };
    context.route = Some(service.route);
    if request.uri().path().ends_with("/openapi.json") {
        // A team-only service's document is for its own team's apps.
        if service.service.team_only {
            let key = crate::admit::identify_key(&snapshot, &request, domain::now_ms())?;
            if service.service.team.as_deref() != Some(key.app.team.as_str()) {
                return Err(Refusal::new(
                    Code::RouteNotFound,
                    "No published API serves this path.",
                ));
            }
        }
        if request.method() != Method::GET {
            let mut refusal =
                Refusal::new(Code::MethodNotAllowed, "The OpenAPI document takes GET.");
            refusal.allow = Some("GET".into());
            return Err(refusal);
        }
        let mut response = Response::new(GatewayBody::full(prompt.openapi.clone()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    if request.method() != Method::POST {
        let mut refusal = Refusal::new(
            Code::MethodNotAllowed,
            format!(
                "{} is not allowed on {}; POST the variables as a JSON object.",
                request.method(),
                request.uri().path()
            ),
        );
        refusal.allow = Some("POST".into());
        return Err(refusal);
    }
    let (parts, body) = request.into_parts();
    let head = Request::from_parts(parts, ());
    // Admission first: an unknown caller learns nothing about the schema.
    let mut admission = super::admit_service(shared, context, trace, &head, service).await?;
    let bytes = crate::pipeline::read_body(shared, body, VARIABLES_LIMIT, || {
        format!("Variables are limited to {VARIABLES_LIMIT} bytes.")
    })
    .await?;
    let variables: Value = if bytes.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&bytes).map_err(|error| {
            Refusal::new(
                Code::BadRequest,
                format!(
                    "The body is not valid JSON ({error}). Send the variables as a JSON object."
                ),
            )
        })?
    };
    let spec = &prompt.spec;
    check_variables(spec, &variables)?;
    let (system, user) = spec.render(&variables).map_err(|message| {
        Refusal::new(
            Code::BadRequest,
            format!("The variables do not fit the prompt's templates: {message}."),
        )
    })?;
    let body = chat_request(spec, system, user);
    let Some(model_rt) = service.models.get(&spec.model).cloned() else {
        return Err(Refusal::new(
            Code::ModelNotFound,
            format!(
                "The prompt's model '{}' is not available. Tell the service's team.",
                spec.model
            ),
        ));
    };
    let app = trace.who.app.clone();
    let subscription = app
        .as_ref()
        .and_then(|app| app.subscription(&service.service.id));
    let output_schema = match &spec.output {
        PromptOutput::Json { schema } => Some(schema.clone()),
        PromptOutput::Text => None,
    };
    let check = output_schema.as_ref().map(|schema| {
        let schema = schema.clone();
        Box::new(move |answer: &Value| parse_output(answer, &schema).map(|_| ()))
            as Box<super::AnswerCheck>
    });
    let call = Call {
        shared,
        context,
        endpoint: Endpoint::Chat,
        service,
        model: &spec.model,
        model_rt: &model_rt,
        app: app.as_deref(),
        subscription,
        permits: std::mem::take(&mut admission.permits),
        check: check.as_deref(),
        anthropic_beta: None,
    };
    let response = Box::pin(call.run(trace, body, admission.reservation.take())).await?;
    into_prompt_answer(response, output_schema.as_ref())
}

/// 400 naming every variable that fails the schema.
fn check_variables(spec: &PromptSpec, variables: &Value) -> Result<(), Refusal> {
    if !variables.is_object() {
        return Err(Refusal::new(
            Code::BadRequest,
            "Send the variables as a JSON object.",
        ));
    }
    let errors = mcp::schema::validate(&spec.variables, variables);
    if errors.is_empty() {
        return Ok(());
    }
    let field = |path: &str| path.trim_start_matches('/').replace('/', ".");
    let detail = errors
        .iter()
        .map(|e| {
            let name = field(&e.path);
            if name.is_empty() {
                e.message.clone()
            } else {
                format!("{name}: {}", e.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut refusal = Refusal::new(
        Code::BadRequest,
        format!("The variables do not match the prompt's schema: {detail}."),
    );
    refusal.extra.push((
        "errors",
        Value::Array(
            errors
                .iter()
                .map(|e| json!({"field": field(&e.path), "message": e.message}))
                .collect(),
        ),
    ));
    Err(refusal)
}

/// The OpenAI chat request the prompt stands for.
fn chat_request(spec: &PromptSpec, system: Option<String>, user: String) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = system.filter(|s| !s.trim().is_empty()) {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": user}));
    let mut body = json!({"model": spec.model, "messages": messages});
    if let Some(t) = spec.parameters.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(max) = spec.parameters.max_tokens {
        body["max_tokens"] = json!(max);
    }
    if let PromptOutput::Json { schema } = &spec.output {
        body["response_format"] = json!({"type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": false}});
    }
    body
}

/// The answer's text, parsed and checked against the output schema.
fn parse_output(answer: &Value, schema: &Value) -> Result<Value, Refusal> {
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    let invalid = |why: String| {
        Refusal::new(
            Code::UpstreamInvalidOutput,
            format!(
                "The model's answer is not the JSON the prompt promises ({why}); the call is not charged. Try again."
            ),
        )
    };
    let parsed: Value = serde_json::from_str(strip_fences(text))
        .map_err(|error| invalid(format!("not JSON: {error}")))?;
    let errors = mcp::schema::validate(schema, &parsed);
    if let Some(first) = errors.first() {
        return Err(invalid(format!(
            "{}: {}",
            if first.path.is_empty() {
                "output"
            } else {
                &first.path
            },
            first.message
        )));
    }
    Ok(parsed)
}

/// JSON some models wrap in a Markdown code fence.
fn strip_fences(text: &str) -> &str {
    let trimmed = text.trim();
    trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .map_or(trimmed, str::trim)
}

/// The chat answer made a prompt answer: `{"output", "usage", "cost"}`.
fn into_prompt_answer(
    response: Response<GatewayBody>,
    schema: Option<&Value>,
) -> Result<Response<GatewayBody>, Refusal> {
    let (parts, body) = response.into_parts();
    let GatewayBody::Full(Some(bytes)) = body else {
        return Err(Refusal::new(
            Code::UpstreamError,
            "The model's answer could not be read.",
        ));
    };
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if parts.status != StatusCode::OK {
        // A provider's error about the request, relayed in OpenAI's shape.
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or("The model's provider refused the call.");
        let code = if parts.status.is_client_error() {
            Code::BadRequest
        } else {
            Code::UpstreamError
        };
        return Err(Refusal::new(
            code,
            format!("The model's provider answered: {message}"),
        ));
    }
    let output = match schema {
        Some(schema) => parse_output(&answer, schema)?,
        None => answer["choices"][0]["message"]["content"].clone(),
    };
    let cost = parts
        .headers
        .get("tollgate-cost")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(' ').next())
        .unwrap_or("0")
        .to_owned();
    let usage = &answer["usage"];
    let body = json!({
        "output": output,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
        },
        "model": parts.headers.get("tollgate-model").and_then(|v| v.to_str().ok()),
        "cost": cost,
    });
    let mut response = json_response(StatusCode::OK, &body);
    for (name, value) in &parts.headers {
        if name.as_str().starts_with("tollgate-") || name.as_str().starts_with("ratelimit") {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(response)
}

/// The service's OpenAPI 3.1 document: one operation, `POST <base_path>`.
pub(crate) fn openapi(service: &Service, spec: &PromptSpec) -> Value {
    let output = match &spec.output {
        PromptOutput::Text => json!({"type": "string"}),
        PromptOutput::Json { schema } => schema.clone(),
    };
    let problem = json!({"description": "A refusal (RFC 9457 problem details).",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let title = service
        .spec
        .name
        .clone()
        .unwrap_or_else(|| service.spec.slug.clone());
    json!({
        "openapi": "3.1.0",
        "info": {"title": title, "version": service.current_release.map_or("draft".to_owned(), |r| r.to_string()),
                 "description": service.spec.description},
        "paths": {service.spec.base_path.clone(): {"post": {
            "operationId": service.spec.slug.replace('-', "_"),
            "summary": service.spec.description.clone().unwrap_or(title),
            "security": [{"apiKey": []}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": spec.variables}}},
            "responses": {
                "200": {"description": "The model's answer.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["output", "usage", "cost"],
                    "properties": {
                        "output": output,
                        "usage": {"type": "object", "properties": {
                            "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}}},
                        "model": {"type": "string", "description": "The <provider>/<model> that answered."},
                        "cost": {"type": "string", "description": "What the call was charged, a decimal string."}}}}}},
                "400": problem, "401": problem, "402": problem, "403": problem,
                "429": problem, "502": problem, "504": problem
            }}}},
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "code": {"type": "string"}, "request_id": {"type": "string"}}}}
        }
    })
}
