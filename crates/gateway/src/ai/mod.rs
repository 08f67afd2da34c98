//! The AI gateway's endpoints (SPEC §7): `/v1/chat/completions`,
//! `/v1/embeddings`, `/v1/models`, `/v1/responses`, `/v1/messages` and
//! `/v1/messages/count_tokens`, also under an AI service's base path
//! (`<base_path>/v1/…` reaches that service only).
//!
//! A call runs the same admission as any service (the AI service's
//! synthetic route: authenticate, authorize, limits, price per request),
//! then:
//!
//! 1. The model: the AI services offering the name the caller gave (a
//!    provider's model or an alias); the one the caller's app is
//!    subscribed to is used → 404 `model_not_found` when none offers it.
//! 2. Money: the most the call can cost (input tokens estimated with a
//!    tokenizer, output up to `max_tokens` or the model's limit, at the
//!    highest price among the targets it may reach) is reserved in the
//!    wallet and the app's budget. When less is affordable, `max_tokens`
//!    is lowered to what is (`Tollgate-Max-Tokens`); when not even
//!    [`MIN_OUTPUT_TOKENS`] are, 402 in the caller's dialect.
//! 3. Targets in order (an alias's weighted pick, then its fallbacks): the
//!    request is translated to the provider's dialect and sent with one of
//!    its keys. A 429 rests that key and tries another of the pool; 429
//!    with no key left, 5xx, overload, timeouts and context-length errors
//!    move on to the next target; other errors are the caller's and are
//!    answered in its dialect.
//! 4. The answer is translated back (streamed chunk by chunk, see
//!    [`stream`]), and the call is charged what the provider reports
//!    (or, for a stream the caller left, what was produced).

mod prompt;
mod quota;
mod rt;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ai::Dialect;
use bytes::Bytes;
use domain::code::Code;
use http::header::{self, HeaderValue};
use http::{HeaderName, Method, Request, Response, StatusCode, Uri};
use serde_json::Value;

pub(crate) use rt::{AiInput, compile};
pub use rt::{AiProvider, AiRt, KeyRegistry};
pub use stream::AiStream;

use crate::Shared;
use crate::access::{AppRt, SubscriptionRt};
use crate::body::{GatewayBody, RequestBody, UpstreamRequestBody, UpstreamResponseBody};
use crate::money::GrantShort;
use crate::pipeline::{RequestContext, Trace, X_REQUEST_ID};
use crate::refusal::Refusal;
use rt::{AiServiceRt, ModelRt, TargetModel};

/// The fewest output tokens worth calling for: below this, 402.
pub const MIN_OUTPUT_TOKENS: u64 = 16;
/// Output reserved when neither the caller nor the catalogue bounds it
/// (`max_tokens` is then set to it, so the reservation holds).
pub const DEFAULT_MAX_OUTPUT: u64 = 4_096;
/// The most output tokens any call may ask for.
pub const MAX_OUTPUT_CEILING: u64 = 1 << 20;
/// The most choices (`n`) a call may ask for.
pub const MAX_CHOICES: u64 = 16;
/// Largest upstream answer read whole (non-streamed).
const ANSWER_LIMIT: u64 = 64 << 20;
/// Largest upstream error body read.
const ERROR_LIMIT: u64 = 1 << 20;
/// How long a key rests after a 429 without `Retry-After`.
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(30);
/// How long a key the provider refuses (revoked, account out of credit)
/// rests before it is tried again.
const AUTH_COOL_DOWN: Duration = Duration::from_secs(300);

static TOLLGATE_BALANCE: HeaderName = HeaderName::from_static("tollgate-balance");
static TOLLGATE_COST: HeaderName = HeaderName::from_static("tollgate-cost");
static TOLLGATE_MODEL: HeaderName = HeaderName::from_static("tollgate-model");
static TOLLGATE_MAX_TOKENS: HeaderName = HeaderName::from_static("tollgate-max-tokens");
static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
static ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

#[cfg(test)]
mod tests {
    #[test]
    fn gemini_retry_delays() {
        let body = br#"{"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}]}}"#;
        assert_eq!(
            super::retry_delay(body),
            Some(std::time::Duration::from_millis(12_500))
        );
        assert_eq!(super::retry_delay(b"{}"), None);
        assert_eq!(super::retry_delay(b"not json"), None);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Embeddings,
    Models,
    Responses,
    Messages,
    CountTokens,
}

const ENDPOINTS: [(&str, Endpoint); 6] = [
    ("/v1/chat/completions", Endpoint::Chat),
    ("/v1/embeddings", Endpoint::Embeddings),
    ("/v1/models", Endpoint::Models),
    ("/v1/responses", Endpoint::Responses),
    ("/v1/messages", Endpoint::Messages),
    ("/v1/messages/count_tokens", Endpoint::CountTokens),
];

impl Endpoint {
    /// The API the caller speaks here.
    pub(crate) fn dialect(self) -> Dialect {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }
}

/// A prompt service's `POST <base_path>` or `GET <base_path>/openapi.json`.
pub(crate) fn prompt_endpoint(ai: &AiRt, path: &str) -> Option<usize> {
    if ai.is_empty() {
        return None;
    }
    ai.prompt_at(path)
        .or_else(|| ai.prompt_at(path.strip_suffix("/openapi.json")?))
}

pub(crate) use prompt::handle as handle_prompt;

/// The AI endpoint a path names, and the service a base path scopes it
/// to; `None` when the snapshot has no AI service or the path is another.
pub(crate) fn endpoint(ai: &AiRt, path: &str) -> Option<(Endpoint, Option<usize>)> {
    if ai.is_empty() {
        return None;
    }
    ENDPOINTS.iter().find_map(|(suffix, endpoint)| {
        let prefix = path.strip_suffix(suffix)?;
        if prefix.is_empty() {
            Some((*endpoint, None))
        } else {
            ai.by_base_path(prefix)
                .map(|index| (*endpoint, Some(index)))
        }
    })
}

/// What the call log keeps of an AI call.
#[derive(Debug, Default, Clone)]
pub struct AiCall {
    pub provider: String,
    /// The provider's base URL (the call log's upstream target).
    pub url: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub ttft: Option<Duration>,
}

impl AiCall {
    /// What the call used, for its usage event.
    pub(crate) fn units(&self, usage: &ai::Usage) -> Box<crate::money::TokenUnits> {
        Box::new(crate::money::TokenUnits {
            provider: self.provider.clone(),
            model: self.model.clone(),
            input: usage.input,
            output: usage.output,
            cached_input: usage.cached_input,
        })
    }
}

/// Serves one AI endpoint call.
pub(crate) async fn handle(
    shared: &Shared,
    context: &mut RequestContext,
    trace: &mut Trace,
    request: Request<RequestBody>,
    (endpoint, scoped): (Endpoint, Option<usize>),
) -> Result<Response<GatewayBody>, Refusal> {
    context.dialect = Some(endpoint.dialect());
    let expected = if endpoint == Endpoint::Models {
        Method::GET
    } else {
        Method::POST
    };
    if request.method() != expected {
        let mut refusal = Refusal::new(
            Code::MethodNotAllowed,
            format!(
                "{} is not allowed on {}; use {expected}.",
                request.method(),
                request.uri().path()
            ),
        );
        refusal.allow = Some(expected.to_string());
        return Err(refusal);
    }
    let snapshot = context.snapshot.clone();
    if endpoint == Endpoint::Models {
        return models(&snapshot, scoped, &request, trace);
    }
    // A caller without a valid key learns so before its body is read
    // (unless a keyless AI service could take the call).
    if let Err(refusal) = crate::admit::identify_key(&snapshot, &request, domain::now_ms())
        && !snapshot.ai.services.iter().any(|s| s.service.anonymous)
    {
        return Err(refusal);
    }
    let (parts, body) = request.into_parts();
    let limit = scoped
        .and_then(|index| snapshot.ai.services.get(index))
        .and_then(|service| snapshot.routes.get(service.route))
        .map_or(rt::AI_BODY_LIMIT, |route| route.body_limit_bytes);
    let bytes = crate::pipeline::read_body(shared, body, limit, || {
        format!("AI request bodies are limited to {limit} bytes. Send a smaller body (images by URL rather than inline).")
    })
    .await?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|error| {
        Refusal::new(
            Code::BadRequest,
            format!("The body is not valid JSON ({error}). Send a JSON object."),
        )
    })?;
    if !json.is_object() {
        return Err(Refusal::new(
            Code::BadRequest,
            "The body must be a JSON object.",
        ));
    }
    let Some(model) = json.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return Err(Refusal::new(
            Code::BadRequest,
            "`model` is required: name a model (<provider>/<model>) or an alias; GET /v1/models lists those your key may use.",
        ));
    };
    check_types(&json)?;
    if endpoint == Endpoint::Messages && json.get("max_tokens").is_none_or(Value::is_null) {
        // Anthropic's Messages API requires it; a provider of another
        // dialect would otherwise answer at its own length.
        return Err(Refusal::new(
            Code::BadRequest,
            "`max_tokens` is required on /v1/messages, as in Anthropic's Messages API: the most tokens the answer may have.",
        ));
    }
    let head = Request::from_parts(parts, ());
    let service_index = match choose_service(&snapshot.ai, scoped, &model, &snapshot, &head) {
        Ok(index) => index,
        Err(refusal) => {
            crate::admit::note_caller(&snapshot, &head, &mut trace.who);
            return Err(refusal);
        }
    };
    let service = &snapshot.ai.services[service_index];
    let mut admission = admit_service(shared, context, trace, &head, service).await?;
    let Some(model_rt) = service.models.get(&model).cloned() else {
        return Err(Refusal::new(
            Code::ModelNotFound,
            format!(
                "The service does not offer the model '{model}'. GET /v1/models lists the models your key may use."
            ),
        ));
    };
    if endpoint == Endpoint::CountTokens {
        let tokens = ai::estimate_input_tokens(Dialect::Anthropic, &json);
        return Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"input_tokens": tokens}),
        ));
    }
    let app = trace.who.app.clone();
    let subscription = app
        .as_ref()
        .and_then(|app| app.subscription(&service.service.id));
    let call = Call {
        shared,
        context,
        endpoint,
        service,
        model: &model,
        model_rt: &model_rt,
        app: app.as_deref(),
        subscription,
        permits: std::mem::take(&mut admission.permits),
        check: None,
        anthropic_beta: (endpoint.dialect() == Dialect::Anthropic)
            .then(|| head.headers().get(&ANTHROPIC_BETA).cloned())
            .flatten(),
    };
    Box::pin(call.run(trace, json, admission.reservation.take())).await
}

/// Admission to an AI or prompt service, as to any service: through its
/// synthetic route (lifecycle, then authenticate, authorize, limit, pay),
/// with the rate-limit and warning headers noted on the context.
pub(crate) async fn admit_service(
    shared: &Shared,
    context: &mut RequestContext,
    trace: &mut Trace,
    head: &Request<()>,
    service: &AiServiceRt,
) -> Result<crate::admit::Admission, Refusal> {
    context.route = Some(service.route);
    crate::pipeline::check_lifecycle(context)?;
    crate::pipeline::admit_leasing(shared, context, trace, head).await
}

/// Picks among the services offering `model` the one the caller's app is
/// subscribed to (active first); else the first, whose admission then
/// says why the caller may not use it.
fn choose_service(
    ai: &AiRt,
    scoped: Option<usize>,
    model: &str,
    snapshot: &crate::snapshot::Snapshot,
    head: &Request<()>,
) -> Result<usize, Refusal> {
    let candidates: Vec<usize> = match scoped {
        Some(index) => ai
            .services
            .get(index)
            .filter(|s| s.models.contains_key(model))
            .map(|_| vec![index])
            .unwrap_or_default(),
        None => ai.by_model.get(model).cloned().unwrap_or_default(),
    };
    let Some(&first) = candidates.first() else {
        let mut refusal = Refusal::new(
            Code::ModelNotFound,
            format!(
                "No AI service offers the model '{model}'. GET /v1/models lists the models your key may use."
            ),
        );
        refusal.extra.push(("model", model.into()));
        return Err(refusal);
    };
    if candidates.len() == 1 {
        return Ok(first);
    }
    let Ok(key) = crate::admit::identify_key(snapshot, head, domain::now_ms()) else {
        return Ok(first);
    };
    let status_of = |index: usize| {
        let id = &ai.services[index].service.id;
        key.app.subscription(id).map(|s| s.status)
    };
    Ok(candidates
        .iter()
        .copied()
        .find(|&i| status_of(i) == Some(domain::access::SubscriptionStatus::Active))
        .or_else(|| candidates.iter().copied().find(|&i| status_of(i).is_some()))
        .unwrap_or(first))
}

/// `GET /v1/models`: the models and aliases of the AI services the
/// caller's app is actively subscribed to.
fn models(
    snapshot: &crate::snapshot::Snapshot,
    scoped: Option<usize>,
    request: &Request<RequestBody>,
    trace: &mut Trace,
) -> Result<Response<GatewayBody>, Refusal> {
    let key = crate::admit::identify_key(snapshot, request, domain::now_ms())?;
    trace.who.app = Some(key.app.clone());
    let mut data = Vec::new();
    for (index, service) in snapshot.ai.services.iter().enumerate() {
        if scoped.is_some_and(|s| s != index)
            || service.service.lifecycle == domain::model::Lifecycle::Retired
        {
            continue;
        }
        if !key.app.may_call(&service.service) {
            continue;
        }
        let mut names: Vec<&String> = service.models.keys().collect();
        names.sort();
        for name in names {
            data.push(serde_json::json!({
                "id": name,
                "object": "model",
                "created": service.created_s,
                "owned_by": service.service.team.as_deref().unwrap_or(&service.service.slug),
            }));
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": data}),
    ))
}

fn json_response(status: StatusCode, body: &Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Checks a prompt API's answer before it is charged.
pub(crate) type AnswerCheck = dyn Fn(&Value) -> Result<(), Refusal> + Send + Sync;

/// One admitted AI call.
struct Call<'a> {
    shared: &'a Shared,
    context: &'a RequestContext,
    endpoint: Endpoint,
    service: &'a AiServiceRt,
    /// As the caller named it.
    model: &'a str,
    model_rt: &'a Arc<ModelRt>,
    app: Option<&'a AppRt>,
    subscription: Option<&'a SubscriptionRt>,
    permits: Vec<crate::limit::Permit>,
    /// Prompt APIs: checks a non-streamed answer (OpenAI shape) before it
    /// is charged; a refusal gives the reservation back.
    check: Option<&'a AnswerCheck>,
    /// An Anthropic caller's `anthropic-beta` (the features it opts into),
    /// passed to Anthropic providers.
    anthropic_beta: Option<HeaderValue>,
}

/// Why a target was left for the next one.
enum Failure {
    Refusal(Refusal),
    Upstream {
        error: ai::UpstreamError,
        retry_after: Option<HeaderValue>,
    },
}

impl Call<'_> {
    /// The prices of a target for this call: the plan's for the name
    /// called, the target's model or `*`; else the list price times the
    /// plan's (or the service's) markup.
    fn prices(&self, target: &TargetModel) -> ai::price::Prices {
        let plan = self.subscription.and_then(|s| s.ai_prices.as_deref());
        let nanos = plan
            .and_then(|plan| {
                plan.by_name
                    .get(self.model)
                    .or_else(|| plan.by_name.get(&target.name))
                    .or_else(|| plan.by_name.get("*"))
                    .copied()
            })
            .unwrap_or_else(|| {
                target
                    .list
                    .marked_up(plan.and_then(|p| p.markup).unwrap_or(self.service.markup))
            });
        ai::price::Prices {
            input_per_million: nanos.input,
            output_per_million: nanos.output,
            cached_input_per_million: nanos.cached_input,
        }
    }

    /// The highest of each price among every target the call may reach.
    fn max_prices(&self) -> ai::price::Prices {
        let mut max = ai::price::Prices {
            input_per_million: 0,
            output_per_million: 0,
            cached_input_per_million: None,
        };
        for target in self.model_rt.all_targets() {
            let p = self.prices(target);
            // Anthropic may write every input token to its cache, at 1.25
            // times the input price: the reservation holds that much.
            let input = if target.provider.dialect == ai::Dialect::Anthropic {
                p.input_per_million.saturating_mul(5).saturating_add(3) / 4
            } else {
                p.input_per_million
            };
            max.input_per_million = max.input_per_million.max(input);
            max.output_per_million = max.output_per_million.max(p.output_per_million);
        }
        max
    }

    fn requested_max(&self, json: &Value) -> Option<u64> {
        match self.endpoint {
            Endpoint::Responses => json.get("max_output_tokens").and_then(Value::as_u64),
            Endpoint::Embeddings => Some(0),
            _ => ai::requested_max_tokens(self.endpoint.dialect(), json),
        }
    }

    fn set_max(&self, json: &mut Value, max: u64) {
        match self.endpoint {
            Endpoint::Responses => json["max_output_tokens"] = max.into(),
            Endpoint::Embeddings => {}
            _ => ai::set_max_tokens(self.endpoint.dialect(), json, max),
        }
    }

    fn input_estimate(&self, json: &Value) -> u64 {
        match self.endpoint {
            Endpoint::Embeddings => embedding_input_tokens(json.get("input")),
            Endpoint::Responses => {
                // The Responses API's `input` is a string or items; its
                // `instructions` a system prompt.
                let mut tokens = embedding_input_tokens(json.get("instructions"));
                tokens += match json.get("input") {
                    Some(Value::String(text)) => ai::count_text_tokens(text),
                    Some(other) => ai::count_text_tokens(&other.to_string()),
                    None => 0,
                };
                tokens + 8
            }
            _ => ai::estimate_input_tokens(self.endpoint.dialect(), json),
        }
    }

    async fn run(
        self,
        trace: &mut Trace,
        mut json: Value,
        reservation: Option<crate::money::Reservation>,
    ) -> Result<Response<GatewayBody>, Refusal> {
        let caller = self.endpoint.dialect();
        let stream = self.endpoint != Endpoint::Embeddings && ai::is_stream(&json);
        let input = self.input_estimate(&json);
        let requested = self.requested_max(&json);
        // The targets' own output limits; where a target gives none, what
        // its context window leaves after the input bounds it.
        let output_limit = self
            .model_rt
            .all_targets()
            .filter_map(|t| t.max_output)
            .min();
        let room = self
            .model_rt
            .all_targets()
            .filter_map(|t| t.context_window.map(|c| c.saturating_sub(input)))
            .min();
        // What the caller asked for, else the targets' limit, else 4,096
        // (not the whole context window: that would reserve, and send,
        // far more than a call without a limit usually produces).
        let mut max_output = requested
            .or(output_limit)
            .unwrap_or(DEFAULT_MAX_OUTPUT)
            .min(MAX_OUTPUT_CEILING);
        if let Some(limit) = output_limit.into_iter().chain(room).min() {
            max_output = max_output.min(limit.max(1));
        }
        // The provider is always told the bound the reservation was made for.
        if self.endpoint != Endpoint::Embeddings && requested != Some(max_output) {
            self.set_max(&mut json, max_output);
        }
        // Several choices (`n`) produce that much each.
        let choices = match json.get("n").and_then(Value::as_u64) {
            None => 1,
            Some(n @ 1..=MAX_CHOICES) => n,
            Some(_) => {
                return Err(Refusal::new(
                    Code::BadRequest,
                    format!("`n` must be from 1 to {MAX_CHOICES}."),
                ));
            }
        };
        if self.endpoint == Endpoint::Responses {
            responses_guard(&mut json)?;
        }
        // The plan's price per request, held by the pay phase.
        let base_price = reservation.as_ref().map_or(0, |r| r.amount());
        let mut tokens = quota::TokenHold::default();
        let mut rate_items = Vec::new();
        let mut token_warning = None;
        // Many nodes: the call's free tokens are taken from this node's
        // grant of the token quota first (asking the store when short).
        let pretaken = match self.subscription.and_then(|s| s.tokens.as_ref()) {
            Some(terms) if terms.counter.lease.is_some() => match terms.included {
                Some(included) => {
                    let most = input.saturating_add(max_output.saturating_mul(choices));
                    // A call that asks for less than a minimal answer
                    // needs only what it asks for.
                    let least = if terms.overage_charge {
                        0
                    } else {
                        input.saturating_add(self.minimal_output()).min(most)
                    };
                    let start = terms.counter.period().0;
                    let taken = crate::pipeline::take_grant(
                        self.shared,
                        &terms.counter,
                        (most, least),
                        included,
                    )
                    .await;
                    Some((&terms.counter, start, taken))
                }
                None => None,
            },
            _ => None,
        };
        let held = self.hold_tokens(
            &mut tokens,
            input,
            max_output.saturating_mul(choices),
            pretaken.as_ref().map(|(_, _, taken)| *taken),
            (&mut rate_items, &mut token_warning),
        );
        if held.is_err()
            && let Some((counter, start, Ok(taken))) = pretaken
        {
            // Refused before the hold took them: back to the grant.
            counter.put_back_grant(i64::try_from(taken).unwrap_or(i64::MAX), start);
        }
        let quota_cap = held?;
        if let Some(cap) = quota_cap {
            max_output = (cap / choices).max(1);
            self.set_max(&mut json, max_output);
        }
        if let Some(app) = self.app
            && app.wallet.is_leased()
        {
            // Many nodes: this node's lease of the wallet holds the most
            // the call may cost before it is reserved.
            let most = self
                .max_prices()
                .max_cost(input, max_output.saturating_mul(choices));
            crate::pipeline::ensure_lease(self.shared, &app.wallet, most).await;
            // And its grant of the app's budget.
            if let Some(budget) = &app.budget {
                budget.counter.roll(domain::now_ms());
                crate::pipeline::ensure_grant(
                    self.shared,
                    &budget.counter,
                    most,
                    budget.limit_nanos,
                )
                .await;
            }
        }
        let (mut reservation, money_cap) = self.reserve(
            reservation,
            input,
            max_output.saturating_mul(choices),
            tokens.free,
            &mut json,
        )?;
        let money_cap = money_cap.map(|cap| {
            let each = (cap / choices).max(1);
            self.set_max(&mut json, each);
            // The quota holds no more than the call may now use.
            tokens.shrink_to(input.saturating_add(each.saturating_mul(choices)));
            each
        });
        let capped = money_cap.or(quota_cap).map(|cap| (cap, requested));
        let mut tokens = Some(tokens);
        let deadline = self.context.started + self.service.timeouts.total;
        let mut last: Option<Failure> = None;
        let plan = self.model_rt.plan();
        let targets = plan.len();
        for (position, target) in plan.into_iter().enumerate() {
            let last_target = position + 1 == targets;
            let provider = &target.provider;
            if matches!(self.endpoint, Endpoint::Embeddings | Endpoint::Responses)
                && provider.dialect != Dialect::OpenAi
            {
                last = Some(Failure::Refusal(Refusal::new(
                    Code::BadRequest,
                    format!(
                        "The model '{}' is served by a provider without an OpenAI-style {} API.",
                        target.name,
                        if self.endpoint == Endpoint::Embeddings {
                            "embeddings"
                        } else {
                            "Responses"
                        }
                    ),
                )));
                continue;
            }
            let body = match self.endpoint {
                Endpoint::Chat | Endpoint::Messages => {
                    match ai::translate_request(caller, provider.dialect, &json, &target.model) {
                        Ok(mut body) => {
                            if provider.legacy_max_tokens {
                                ai::use_legacy_max_tokens(&mut body);
                            }
                            body
                        }
                        Err(error) => {
                            last = Some(Failure::Refusal(Refusal::new(
                                Code::BadRequest,
                                format!("{error} (for {})", target.name),
                            )));
                            continue;
                        }
                    }
                }
                _ => {
                    let mut body = json.clone();
                    body["model"] = Value::String(target.model.clone());
                    body
                }
            };
            let body = Bytes::from(body.to_string());
            let path = match self.endpoint {
                Endpoint::Embeddings => "/embeddings".to_owned(),
                Endpoint::Responses => "/responses".to_owned(),
                _ => ai::upstream_path(provider.dialect, &target.model, stream),
            };
            let mut tried = vec![false; provider.keys.len().max(1)];
            loop {
                let now_ms = domain::now_ms();
                let Some(key) = provider.pick_key(&tried, now_ms) else {
                    if last.is_none() || !tried.contains(&true) {
                        last = Some(Failure::Refusal(match provider.resting(now_ms) {
                            rt::Resting::RateLimited { retry_after_s } => Refusal::new(
                                Code::RateLimited,
                                format!(
                                    "Every key of the provider '{}' is resting after a 429. Try again in {retry_after_s} s.",
                                    provider.slug
                                ),
                            )
                            .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after_s)),
                            // Waiting does not help: the operator must fix
                            // the provider's keys.
                            rt::Resting::Refused => Refusal::new(
                                Code::UpstreamError,
                                format!(
                                    "The provider '{}' refused the gateway's credentials or account. The service's operators have been told; try again later.",
                                    provider.slug
                                ),
                            ),
                            rt::Resting::Unopened => Refusal::new(
                                Code::NoHealthyUpstream,
                                format!(
                                    "This gateway node cannot open the stored keys of the provider '{}' (its secrets.master_key is not the one that sealed them; every node sharing a database needs the same). Nothing was sent; the operators must set the key.",
                                    provider.slug
                                ),
                            ),
                        }));
                    }
                    break;
                };
                tried[key.unwrap_or(0)] = true;
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(timeout(&target, self.service.timeouts.total));
                }
                let sent = self
                    .send(
                        &target,
                        key,
                        &path,
                        body.clone(),
                        stream,
                        // A non-streamed answer's head comes when it is done.
                        if stream {
                            self.service.timeouts.first_token.min(remaining)
                        } else {
                            remaining
                        },
                        trace,
                    )
                    .await;
                let response = match sent {
                    Ok(response) => response,
                    Err(refusal) => {
                        last = Some(Failure::Refusal(refusal));
                        break;
                    }
                };
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    return self
                        .answer(
                            trace,
                            response,
                            &target,
                            Settle {
                                bounds: Bounds::new(
                                    input,
                                    target.context_window,
                                    money_cap.unwrap_or(max_output).saturating_mul(choices),
                                ),
                                reservation: reservation.take(),
                                base_price,
                                input,
                                tokens: tokens.take().unwrap_or_default(),
                                rate_items: std::mem::take(&mut rate_items),
                                token_warning: token_warning.take(),
                            },
                            stream,
                            &json,
                            capped,
                            deadline,
                        )
                        .await;
                }
                let (parts, incoming) = response.into_parts();
                let read =
                    UpstreamResponseBody::new(incoming, None, self.service.timeouts.first_token);
                let error_bytes = tokio::time::timeout(
                    self.service.timeouts.first_token,
                    collect_limited(read, ERROR_LIMIT),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
                let mut error = ai::classify_error(provider.dialect, status, &error_bytes);
                // Logged, and passed on to callers: never with a key in it.
                error.redact_secrets(provider.keys.iter().filter_map(|k| k.value.to_str().ok()));
                tracing::debug!(provider = %provider.slug, model = %target.model, status, kind = ?error.kind, "provider error");
                let retry_after = parts.headers.get(header::RETRY_AFTER).cloned();
                let kind = if provider_side(status, &error) {
                    ai::ErrorKind::Auth
                } else {
                    error.kind
                };
                match kind {
                    ai::ErrorKind::RateLimited => {
                        let rest = retry_after
                            .as_ref()
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs)
                            .or_else(|| retry_delay(&error_bytes))
                            .unwrap_or(DEFAULT_COOL_DOWN)
                            .max(Duration::from_secs(1));
                        if let Some(index) = key {
                            provider.keys[index].cool_down(domain::now_ms(), rest);
                        }
                        // The caller waits as long as the key rests (the
                        // provider may have said so in its body only).
                        let retry_after = Some(HeaderValue::from(rest.as_secs()));
                        last = Some(Failure::Upstream { error, retry_after });
                        // Another key of the pool, if one is left.
                        continue;
                    }
                    ai::ErrorKind::ContextLength
                    | ai::ErrorKind::Server
                    | ai::ErrorKind::Overloaded
                    | ai::ErrorKind::Other => {
                        last = Some(Failure::Upstream { error, retry_after });
                        break;
                    }
                    ai::ErrorKind::Auth => {
                        // The gateway's key (or the provider account) is
                        // refused: the operator must fix it, not the caller.
                        // The key rests; another key or target is tried.
                        tracing::warn!(provider = %provider.slug, key = key.map(|k| provider.keys[k].id.as_str()), status, message = %error.message, "provider refused the gateway's key or account");
                        if let Some(index) = key {
                            provider.keys[index].refuse(domain::now_ms(), AUTH_COOL_DOWN);
                        }
                        last = Some(Failure::Refusal(Refusal::new(
                            Code::UpstreamError,
                            format!(
                                "The provider '{}' refused the gateway's credentials or account. The service's operators have been told; try again later.",
                                provider.slug
                            ),
                        )));
                        continue;
                    }
                    ai::ErrorKind::NotFound if !last_target => {
                        // This target's model is gone; another may answer.
                        last = Some(Failure::Upstream { error, retry_after });
                        break;
                    }
                    ai::ErrorKind::InvalidRequest | ai::ErrorKind::NotFound => {
                        return Ok(self.relay_error(trace, &error, None));
                    }
                }
            }
        }
        match last {
            Some(Failure::Refusal(refusal)) => Err(refusal),
            Some(Failure::Upstream { error, retry_after }) => {
                if error.kind == ai::ErrorKind::RateLimited {
                    let mut refusal = Refusal::new(
                        Code::RateLimited,
                        format!(
                            "The provider of '{}' is rate limiting every key the gateway holds ({}). Wait and retry.",
                            self.model, error.message
                        ),
                    );
                    refusal.headers.push((
                        header::RETRY_AFTER,
                        retry_after.unwrap_or(HeaderValue::from_static("30")),
                    ));
                    return Err(refusal);
                }
                Ok(self.relay_error(trace, &error, retry_after))
            }
            None => Err(Refusal::new(
                Code::NoHealthyUpstream,
                format!("No provider could be tried for '{}'.", self.model),
            )),
        }
    }

    /// The smallest answer worth asking for: none for embeddings.
    fn minimal_output(&self) -> u64 {
        if self.endpoint == Endpoint::Embeddings {
            0
        } else {
            MIN_OUTPUT_TOKENS
        }
    }

    /// Holds the call's tokens in its plan's tokens-per-minute limit (429
    /// when the input alone does not fit) and token quota. With overage
    /// `block`, a quota with room for less than asked lowers `max_tokens`
    /// (returned), and one without room for a minimal answer is 402
    /// `quota_exhausted`.
    ///
    /// `pretaken` (many nodes): what the call took from its node's grant
    /// of the quota, or why it could not.
    fn hold_tokens(
        &self,
        hold: &mut quota::TokenHold,
        input: u64,
        max_output: u64,
        pretaken: Option<Result<u64, GrantShort>>,
        (rate_items, warning): (&mut Vec<(String, String)>, &mut Option<String>),
    ) -> Result<Option<u64>, Refusal> {
        let (Some(app), Some(subscription)) = (self.app, self.subscription) else {
            return Ok(None);
        };
        let Some(terms) = subscription.tokens.as_ref() else {
            return Ok(None);
        };
        let now = domain::now_ms();
        if let Some(tpm) = terms.tokens_per_minute
            && input > tpm
        {
            return Err(Refusal::new(
                Code::BadRequest,
                format!(
                    "This prompt (about {input} tokens) is larger than the plan's {tpm} tokens per minute: it can never pass. Send a shorter prompt, or move to a plan with a higher limit."
                ),
            ));
        }
        if let Some(limiter) = &terms.per_minute {
            let admitted = input.max(1);
            match limiter.admit_n(u64::try_from(now).unwrap_or(0), admitted) {
                Ok(quota) => {
                    hold.per_minute(limiter, admitted);
                    if let Some(quota) = quota {
                        rate_items.push((
                            limiter.policy().to_owned(),
                            crate::admit::ratelimit_value(&quota),
                        ));
                    }
                }
                Err(exceeded) => {
                    return Err(crate::admit::rate_limited(
                        &exceeded,
                        HeaderValue::from_str(limiter.policy()).ok(),
                    ));
                }
            }
        }
        let Some(included) = terms.included else {
            return Ok(None);
        };
        let counter = &terms.counter;
        let (start, end) = counter.period();
        let minimal = self.minimal_output();
        let exhausted = |used: u64| {
            use domain::access::format_time_ms;
            let mut refusal = crate::admit::money_refusal(
                Code::QuotaExhausted,
                format!(
                    "The plan '{}' includes {included} tokens per period and {used} are used; this call needs about {} (its input and a minimal answer). The quota resets on {}. Move to a larger plan or one that charges for overage to continue now.",
                    subscription.plan(),
                    input + minimal,
                    format_time_ms(end)
                ),
                app,
                subscription,
                &self.shared.options.currency,
            );
            refusal.extra.extend([
                ("quota", included.into()),
                ("used", used.into()),
                ("unit", "tokens".into()),
                ("period_end", format_time_ms(end).into()),
            ]);
            crate::admit::retry_after(refusal, end, now)
        };
        let want = input.saturating_add(max_output);
        let mut cap = None;
        // Many nodes: the free tokens come from this node's grant of the
        // quota (taken before), never more than it held (with overage
        // `block`, at least the input and a minimal answer, else the quota
        // is used up here).
        let (held, free, before) = if let Some(taken) = pretaken {
            let free = match taken {
                Ok(free) => free,
                Err(GrantShort::Denied) if !terms.overage_charge => {
                    let used = counter.requests();
                    let refusal = exhausted(used);
                    // Room for the call over every node: others hold it.
                    return Err(if used.saturating_add(input + minimal) <= included {
                        crate::admit::held_elsewhere(refusal, "tokens of the quota")
                    } else {
                        refusal
                    });
                }
                Err(GrantShort::Denied | GrantShort::Ask) if terms.overage_charge => 0,
                Err(_) => return Err(crate::refusal::ledger_unavailable()),
            };
            let held = if terms.overage_charge {
                want
            } else {
                if free < want {
                    cap = Some(free - input);
                }
                free
            };
            let before = counter.add_count(held, None).unwrap_or_else(|used| used);
            (held, free, before)
        } else {
            let before = if terms.overage_charge {
                counter.add_count(want, None).unwrap_or_else(|used| used)
            } else {
                match counter.add_count(want, Some(included)) {
                    Ok(before) => before,
                    Err(used) => {
                        let room = included.saturating_sub(used);
                        if room < input.saturating_add(minimal) {
                            return Err(exhausted(used));
                        }
                        let output = room - input;
                        match counter.add_count(input + output, Some(included)) {
                            Ok(before) => {
                                cap = Some(output);
                                before
                            }
                            Err(used) => return Err(exhausted(used)),
                        }
                    }
                }
            };
            let held = cap.map_or(want, |output| input + output);
            (held, included.saturating_sub(before).min(held), before)
        };
        if pretaken.is_some() {
            hold.hold_granted(counter, (held, free), included);
        } else {
            hold.hold(counter, (held, free), included);
        }
        let used = before.saturating_add(held).min(included);
        *warning = crate::warn::nearly_exhausted(used, included)
            .map(|percent| format!("token-quota-nearly-exhausted;used-percent={percent}"));
        rate_items.push((
            format!(
                "\"tokens\";q={included};w={}",
                (end.min(i64::MAX / 2) - start).max(0) / 1000
            ),
            format!(
                "\"tokens\";r={};t={}",
                included - used,
                ((end - now).max(0) + 999) / 1000
            ),
        ));
        Ok(cap)
    }

    /// Reserves the most the call can cost, capping `max_tokens` to what
    /// the caller can afford. Returns the reservation and, when capped,
    /// (the cap, what was asked).
    #[allow(clippy::type_complexity)]
    fn reserve(
        &self,
        reservation: Option<crate::money::Reservation>,
        input: u64,
        max_output: u64,
        free: u64,
        json: &mut Value,
    ) -> Result<(Option<crate::money::Reservation>, Option<u64>), Refusal> {
        let (Some(app), Some(subscription)) = (self.app, self.subscription) else {
            return Ok((reservation, None));
        };
        let prices = self.max_prices();
        // The quota's free tokens come off the input first.
        let paid_input = input.saturating_sub(free);
        let free_output = free.saturating_sub(input);
        let want = prices.max_cost(paid_input, max_output.saturating_sub(free_output));
        if want == 0 {
            return Ok((reservation, None));
        }
        let currency = &self.shared.options.currency;
        let mut reservation = reservation.unwrap_or_else(|| {
            crate::money::Reservation::new(
                &app.wallet,
                &subscription.labels,
                self.shared.options.export_usage,
            )
        });
        let budget_room = app.budget.as_ref().map(|budget| {
            budget.counter.roll(domain::now_ms());
            budget.limit_nanos - budget.counter.nanos()
        });
        let wallet_room = app.wallet.available();
        let room = budget_room.map_or(wallet_room, |b| b.min(wallet_room));
        let (amount, capped) = if want <= room {
            (want, None)
        } else {
            let affordable = if self.endpoint == Endpoint::Embeddings {
                0
            } else {
                free_output + prices.max_output_affordable(paid_input, room.max(0))
            };
            if affordable < MIN_OUTPUT_TOKENS {
                let minimal = prices.max_cost(
                    input,
                    if self.endpoint == Endpoint::Embeddings {
                        0
                    } else {
                        MIN_OUTPUT_TOKENS
                    },
                );
                return Err(self.cannot_afford(
                    app,
                    subscription,
                    minimal,
                    budget_room,
                    wallet_room,
                    input,
                    currency,
                ));
            }
            self.set_max(json, affordable);
            (
                prices.max_cost(paid_input, affordable.saturating_sub(free_output)),
                Some(affordable),
            )
        };
        if let Some(budget) = &app.budget
            && let Err(over) = reservation.add_budget(&budget.counter, budget.limit_nanos, amount)
        {
            if matches!(
                over.grant,
                Some(crate::money::GrantShort::Ask | crate::money::GrantShort::Lost)
            ) {
                // Many nodes: the node's grant of the budget could not be
                // had (the store did not answer, or calls in flight here
                // took what was granted a moment ago).
                return Err(crate::refusal::ledger_unavailable());
            }
            let refusal = self.cannot_afford(
                app,
                subscription,
                amount,
                budget_room,
                wallet_room,
                input,
                currency,
            );
            // Many nodes: the budget holds the call, but other nodes hold
            // the rest of it right now.
            let held = over.grant.is_some() && budget_room.is_some_and(|room| room >= amount);
            return Err(if held {
                crate::admit::held_elsewhere(refusal, "budget")
            } else {
                refusal
            });
        }
        if reservation.add_wallet(amount).is_err() {
            return Err(self.cannot_afford(
                app,
                subscription,
                amount,
                budget_room,
                app.wallet.available(),
                input,
                currency,
            ));
        }
        Ok((Some(reservation), capped))
    }

    #[allow(clippy::too_many_arguments)]
    fn cannot_afford(
        &self,
        app: &AppRt,
        subscription: &SubscriptionRt,
        required: i64,
        budget_room: Option<i64>,
        wallet_room: i64,
        input: u64,
        currency: &str,
    ) -> Refusal {
        use domain::money::format;
        let budget_bound = budget_room.is_some_and(|b| b < wallet_room);
        if budget_bound {
            let mut refusal = crate::admit::money_refusal(
                Code::BudgetExhausted,
                format!(
                    "A minimal answer from '{}' (about {input} input tokens and {MIN_OUTPUT_TOKENS} output tokens) costs {} {currency}; the app '{}' has {} {currency} left of its budget for this period. A team admin can raise the budget (PATCH /api/v1/apps/{}).",
                    self.model,
                    format(required),
                    app.slug,
                    format(budget_room.unwrap_or(0).max(0)),
                    app.slug
                ),
                app,
                subscription,
                currency,
            );
            refusal.extra.push(("required", format(required).into()));
            if let Some(budget) = &app.budget {
                let end = budget.counter.period().1;
                refusal
                    .extra
                    .push(("budget", format(budget.limit_nanos).into()));
                refusal
                    .extra
                    .push(("period_end", domain::access::format_time_ms(end).into()));
                return crate::admit::retry_after(refusal, end, domain::now_ms());
            }
            return refusal;
        }
        // Below zero when refunds took it there: said as it is, with what
        // the call needs on top, as for any other call.
        let left = crate::admit::wallet_left(&app.team, wallet_room, required, currency);
        let mut refusal = crate::admit::money_refusal(
            Code::InsufficientCredit,
            format!(
                "A minimal answer from '{}' (about {input} input tokens and {MIN_OUTPUT_TOKENS} output tokens) costs {} {currency}; {left}. Top up the team's wallet (top_up_url) and call again.",
                self.model,
                format(required),
            ),
            app,
            subscription,
            currency,
        );
        refusal.extra[0].1 = format(wallet_room).into();
        refusal.extra.push(("required", format(required).into()));
        refusal
    }

    /// Sends the call to one target with one key; waits at most `wait`
    /// for the answer's head.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        target: &TargetModel,
        key: Option<usize>,
        path: &str,
        body: Bytes,
        stream: bool,
        wait: Duration,
        trace: &mut Trace,
    ) -> Result<Response<crate::client::ResponseBody>, Refusal> {
        let upstream = &target.upstream;
        let Some(node) = upstream.targets.first() else {
            return Err(Refusal::new(
                Code::NoHealthyUpstream,
                "The provider has no address.",
            ));
        };
        let uri: Uri = format!("{}{path}", node.base_path).parse().map_err(|_| {
            Refusal::new(Code::BadRequest, "The model name cannot be sent in a URL.")
        })?;
        let length = body.len();
        let mut request = Request::new(UpstreamRequestBody::Full(Some(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::HOST, node.host_header.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(if stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        headers.insert(X_REQUEST_ID.clone(), self.context.request_id.clone());
        let provider = &target.provider;
        if let (Some(index), Some(name)) = (key, provider.auth.header_name()) {
            headers.insert(name, provider.keys[index].value.clone());
        }
        if provider.dialect == Dialect::Anthropic {
            headers.insert(
                ANTHROPIC_VERSION.clone(),
                HeaderValue::from_static("2023-06-01"),
            );
            if let Some(beta) = &self.anthropic_beta {
                headers.insert(ANTHROPIC_BETA.clone(), beta.clone());
            }
        }
        let started = Instant::now();
        let result = tokio::time::timeout(
            wait,
            crate::client::send(&upstream.connector, node, request),
        )
        .await;
        trace.target = Some((0, started.elapsed()));
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(crate::pipeline::connection_refusal(
                &error,
                &format!("{} ({})", self.service.service.slug, target.name),
                upstream.spec.connect_timeout_ms,
            )),
            Err(_) => Err(timeout(target, wait)),
        }
    }

    /// An upstream error, in the caller's dialect (its envelope keeps the
    /// provider's kind of error: `context_length_exceeded`…), with the
    /// problem members of SPEC §4 beside it, under the Tollgate code the
    /// call log records.
    fn relay_error(
        &self,
        trace: &mut Trace,
        error: &ai::UpstreamError,
        retry_after: Option<HeaderValue>,
    ) -> Response<GatewayBody> {
        let caller = self.endpoint.dialect();
        let code = match error.kind {
            ai::ErrorKind::ContextLength | ai::ErrorKind::InvalidRequest => Code::BadRequest,
            ai::ErrorKind::NotFound => Code::ModelNotFound,
            ai::ErrorKind::RateLimited => Code::RateLimited,
            ai::ErrorKind::Auth
            | ai::ErrorKind::Server
            | ai::ErrorKind::Overloaded
            | ai::ErrorKind::Other => Code::UpstreamError,
        };
        trace.refused = Some(code);
        let public_url = &self.shared.options.public_url;
        let mut extra = serde_json::Map::new();
        extra.insert(
            "type".into(),
            format!("{public_url}/_tollgate/problems/{}", code.slug()).into(),
        );
        extra.insert("title".into(), code.title().into());
        extra.insert("status".into(), error.kind.http_status().into());
        extra.insert(
            "detail".into(),
            format!("The provider answered: {}", error.message).into(),
        );
        extra.insert("code".into(), code.as_str().into());
        extra.insert(
            "request_id".into(),
            self.context.request_id.to_str().unwrap_or_default().into(),
        );
        extra.insert("model".into(), self.model.into());
        let (status, body) = ai::upstream_error_body(caller, error, &extra);
        let mut response = json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            &body,
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }

    /// A 2xx answer from a provider: translated, charged, answered.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        mut self,
        trace: &mut Trace,
        response: Response<crate::client::ResponseBody>,
        target: &TargetModel,
        mut settle: Settle,
        stream: bool,
        json: &Value,
        capped: Option<(u64, Option<u64>)>,
        deadline: Instant,
    ) -> Result<Response<GatewayBody>, Refusal> {
        let caller = self.endpoint.dialect();
        let (parts, incoming) = response.into_parts();
        let prices = self.prices(target);
        let mut call = AiCall {
            provider: target.provider.slug.clone(),
            url: target
                .upstream
                .targets
                .first()
                .map(|t| t.url.clone())
                .unwrap_or_default(),
            model: target.name.clone(),
            ..AiCall::default()
        };
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&target.name) {
            headers.insert(TOLLGATE_MODEL.clone(), value);
        }
        if let Some((cap, asked)) = capped {
            let text = match asked {
                Some(asked) => format!("{cap}; requested={asked}"),
                None => cap.to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert(TOLLGATE_MAX_TOKENS.clone(), value);
            }
        }
        if let Some(warning) = settle.token_warning.as_deref()
            && let Ok(value) = HeaderValue::from_str(warning)
        {
            // Joined with the pay phase's warnings on the way out.
            headers.insert(crate::admit::warning_header().clone(), value);
        }
        if !settle.rate_items.is_empty() {
            let mut policy: Vec<String> = Vec::new();
            let mut state: Vec<String> = Vec::new();
            if let Some((p, s)) = &self.context.rate_headers {
                policy.push(p.to_str().unwrap_or_default().to_owned());
                state.push(s.to_str().unwrap_or_default().to_owned());
            }
            for (p, s) in &settle.rate_items {
                policy.push(p.clone());
                state.push(s.clone());
            }
            if let (Ok(p), Ok(s)) = (
                HeaderValue::from_str(&policy.join(", ")),
                HeaderValue::from_str(&state.join(", ")),
            ) {
                headers.insert(RATELIMIT_POLICY.clone(), p);
                headers.insert(RATELIMIT.clone(), s);
            }
        }
        let body_idle = self.service.timeouts.first_token;
        if stream {
            let is_sse = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if is_sse {
                let translator = match self.endpoint {
                    Endpoint::Responses => stream::Mode::Responses(ai::SseParser::new(), None, 0),
                    _ => stream::Mode::Translate(Box::new(translator(
                        target.provider.dialect,
                        caller,
                        settle.input,
                        ai::StreamOptions {
                            include_usage: ai::wants_usage(caller, json),
                            caller_model: self.model.to_owned(),
                            id: format!(
                                "{}{}",
                                if caller == Dialect::Anthropic {
                                    "msg_"
                                } else {
                                    "chatcmpl-"
                                },
                                self.context
                                    .request_id
                                    .to_str()
                                    .unwrap_or_default()
                                    .replace('-', "")
                            ),
                            created: domain::now_ms() / 1000,
                        },
                    ))),
                };
                let balance = settle.reservation.as_ref().map(|r| r.wallet().available());
                let body = stream::AiStream::new(
                    UpstreamResponseBody::new(incoming, None, body_idle)
                        .with_permits(std::mem::take(&mut self.permits)),
                    translator,
                    stream::Charge {
                        bounds: settle.bounds,
                        reservation: settle.reservation,
                        prices,
                        base_price: settle.base_price,
                        input: settle.input,
                        tokens: settle.tokens,
                        sink: self.shared.charges.get().cloned(),
                        request_id: self.context.request_id.clone(),
                        strict: self.shared.options.strict_charges,
                    },
                    call,
                    self.context.started,
                    deadline,
                );
                let mut response = Response::new(GatewayBody::Ai(Box::new(body)));
                let out = response.headers_mut();
                out.extend(headers);
                out.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                if let Some(left) = balance {
                    self.balance_header(out, left);
                }
                return Ok(response);
            }
        }
        let read = UpstreamResponseBody::new(incoming, None, body_idle);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let bytes = match tokio::time::timeout(remaining, collect_limited(read, ANSWER_LIMIT)).await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => {
                return Err(Refusal::new(
                    Code::UpstreamError,
                    format!(
                        "The provider of '{}' broke off its answer. Try again.",
                        self.model
                    ),
                ));
            }
            Err(_) => return Err(timeout(target, self.service.timeouts.total)),
        };
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Refusal::new(
                Code::UpstreamError,
                format!(
                    "The provider of '{}' answered something that is not JSON.",
                    self.model
                ),
            )
        })?;
        let (out, usage) = match self.endpoint {
            Endpoint::Chat | Endpoint::Messages => {
                ai::translate_response(target.provider.dialect, caller, &value, self.model)
                    .map_err(|error| {
                        Refusal::new(
                            Code::UpstreamError,
                            format!("The provider's answer could not be read: {error}."),
                        )
                    })?
            }
            Endpoint::Embeddings => {
                let input = value["usage"]["prompt_tokens"]
                    .as_u64()
                    .unwrap_or(settle.input);
                let mut value = value;
                if let Some(object) = value.as_object_mut() {
                    object.insert("model".into(), Value::String(self.model.to_owned()));
                }
                (
                    value,
                    ai::Usage {
                        input,
                        ..ai::Usage::default()
                    },
                )
            }
            _ => {
                let usage = &value["usage"];
                let parsed = ai::Usage {
                    input: usage["input_tokens"].as_u64().unwrap_or(settle.input),
                    output: usage["output_tokens"].as_u64().unwrap_or(0),
                    cached_input: usage["input_tokens_details"]["cached_tokens"]
                        .as_u64()
                        .unwrap_or(0),
                    cache_write: 0,
                    reasoning: usage["output_tokens_details"]["reasoning_tokens"]
                        .as_u64()
                        .unwrap_or(0),
                };
                let mut value = value;
                if let Some(object) = value.as_object_mut() {
                    object.insert("model".into(), Value::String(self.model.to_owned()));
                }
                (value, parsed)
            }
        };
        if let Some(check) = self.check {
            check(&out)?;
        }
        let usage = settle.bounds.clamp(usage);
        call.input_tokens = usage.input;
        call.output_tokens = usage.output;
        let cost = settle.base_price + prices.cost(&settle.tokens.settle(&usage));
        trace.ai = Some(Box::new(call));
        let mut response = json_response(StatusCode::OK, &out);
        let out_headers = response.headers_mut();
        out_headers.extend(headers);
        if let Some(mut reservation) = settle.reservation {
            reservation.adjust_to(cost);
            let outcome = crate::money::Outcome {
                status: 200,
                latency_ms: u64::try_from(self.context.started.elapsed().as_millis())
                    .unwrap_or(u64::MAX),
                tokens: trace.ai.as_deref().map(|call| call.units(&usage)),
            };
            let sink = self.shared.charges.get();
            let left = if self.shared.options.strict_charges {
                // Sets the cost only once the charge is taken.
                Box::pin(reservation.settle_durably(
                    sink,
                    &self.context.request_id,
                    outcome,
                    &mut trace.cost_nanos,
                ))
                .await
            } else {
                trace.cost_nanos = cost;
                reservation.settle(sink, &self.context.request_id, outcome)
            };
            self.balance_header(out_headers, left);
            if let Ok(value) = HeaderValue::from_str(&format!(
                "{} {}",
                domain::money::format(cost),
                self.shared.options.currency
            )) {
                out_headers.insert(TOLLGATE_COST.clone(), value);
            }
        } else {
            trace.cost_nanos = cost;
        }
        drop(self.permits);
        Ok(response)
    }

    fn balance_header(&self, headers: &mut http::HeaderMap, left: i64) {
        if let Ok(value) = HeaderValue::from_str(&format!(
            "{} {}",
            domain::money::format(left),
            self.shared.options.currency
        )) {
            headers.insert(TOLLGATE_BALANCE.clone(), value);
        }
    }
}

fn translator(
    upstream: Dialect,
    caller: Dialect,
    input: u64,
    options: ai::StreamOptions,
) -> ai::StreamTranslator {
    let mut translator = ai::StreamTranslator::new(upstream, caller, options);
    // A usage chunk for a provider that reports none uses the estimate.
    translator.set_input_estimate(input);
    translator
}

/// Loads the tokenizer (about 150 ms and 46 MB, once) on a thread of its
/// own as soon as a snapshot has AI services, so that the first call does
/// not wait for it and a gateway without AI never pays for it.
pub(crate) fn warm_up_tokenizer() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("tokenizer-warm-up".into())
            .spawn(ai::tokens::warm_up);
    });
}

/// The money side of a call on its way to an answer.
struct Settle {
    reservation: Option<crate::money::Reservation>,
    /// The most the provider's usage report is believed.
    bounds: Bounds,
    /// The plan's price per request, inside the reservation.
    base_price: i64,
    /// Input tokens as estimated.
    input: u64,
    /// The call's tokens in its plan's quota and per-minute limit.
    tokens: quota::TokenHold,
    /// `RateLimit-Policy` and `RateLimit` items of the token quota and limit.
    rate_items: Vec<(String, String)>,
    /// `Tollgate-Warning` item of the token quota, when nearly used up.
    token_warning: Option<String>,
}

/// The most tokens a call can have used: what its provider reports is
/// clamped to these before it is charged, so a wrong (or hostile) report
/// cannot charge more than the call could have cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// The model's context window when known, else a generous multiple of
    /// the estimate (tokenizers differ; images count more than text).
    pub input: u64,
    /// The `max_tokens` the provider was sent (times the choices asked).
    pub output: u64,
}

impl Bounds {
    fn new(input_estimate: u64, context_window: Option<u64>, output: u64) -> Self {
        let input = context_window.unwrap_or_else(|| {
            input_estimate
                .saturating_mul(4)
                .saturating_add(INPUT_SLACK_TOKENS)
        });
        Bounds {
            input: input.max(input_estimate),
            output,
        }
    }

    pub(crate) fn clamp(&self, usage: ai::Usage) -> ai::Usage {
        let input = usage.input.min(self.input);
        let output = usage.output.min(self.output);
        let cached_input = usage.cached_input.min(input);
        ai::Usage {
            input,
            output,
            cached_input,
            cache_write: usage.cache_write.min(input - cached_input),
            reasoning: usage.reasoning.min(output),
        }
    }
}

/// Input tokens believed beyond four times the estimate, for a model
/// whose context window is not known.
const INPUT_SLACK_TOKENS: u64 = 32_768;

fn timeout(target: &TargetModel, after: Duration) -> Refusal {
    Refusal::new(
        Code::UpstreamTimeout,
        format!(
            "The provider of '{}' did not answer within {} ms. Try again, or use a model with a fallback.",
            target.name,
            after.as_millis()
        ),
    )
}

/// An error about the provider account rather than the request: out of
/// credit (402, Anthropic's "credit balance"), or Gemini's invalid key
/// (a 400 `API_KEY_INVALID`).
fn provider_side(status: u16, error: &ai::UpstreamError) -> bool {
    let message = error.message.to_ascii_lowercase();
    status == 402
        || message.contains("credit balance")
        || message.contains("api_key_invalid")
        || message.contains("api key not valid")
}

/// The Responses API reaches objects stored in the provider account the
/// gateway shares between tenants: those members are refused, and nothing
/// is stored there (`store: false`). Built-in tools the provider bills
/// apart (web search, file search, code interpreter…) are refused too.
fn responses_guard(json: &mut Value) -> Result<(), Refusal> {
    for member in [
        "previous_response_id",
        "conversation",
        "prompt",
        "background",
    ] {
        if json.get(member).is_some_and(|v| !v.is_null()) {
            return Err(Refusal::new(
                Code::BadRequest,
                format!(
                    "`{member}` is not available through the gateway: send the whole input each time."
                ),
            ));
        }
    }
    if json["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|t| t["type"] != "function"))
    {
        return Err(Refusal::new(
            Code::BadRequest,
            "Only `function` tools are available through the gateway.",
        ));
    }
    // Items stored in that account, referenced by id.
    if json["input"]
        .as_array()
        .is_some_and(|items| items.iter().any(|item| item["type"] == "item_reference"))
    {
        return Err(Refusal::new(
            Code::BadRequest,
            "Stored items (`item_reference`) are not available through the gateway: send the items themselves.",
        ));
    }
    if json["input"].to_string().contains("\"file_id\"") {
        return Err(Refusal::new(
            Code::BadRequest,
            "Files stored with the provider (`file_id`) are not available through the gateway; send the content inline.",
        ));
    }
    json["store"] = Value::Bool(false);
    Ok(())
}

/// Gemini's wait after a 429: `"retryDelay": "12s"` in the error's
/// `RetryInfo` detail (it sends no `Retry-After`).
fn retry_delay(body: &[u8]) -> Option<Duration> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value["error"]["details"]
        .as_array()?
        .iter()
        .find_map(|detail| detail["retryDelay"].as_str())
        .and_then(|text| text.strip_suffix('s'))
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
        .map(Duration::from_secs_f64)
}

/// Tokens of an embeddings `input`: a string, strings, or token arrays.
fn embedding_input_tokens(input: Option<&Value>) -> u64 {
    match input {
        Some(Value::String(text)) => ai::count_text_tokens(text),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => ai::count_text_tokens(text),
                Value::Number(_) => 1,
                Value::Array(tokens) => tokens.len() as u64,
                other => ai::count_text_tokens(&other.to_string()),
            })
            .sum(),
        Some(other) => ai::count_text_tokens(&other.to_string()),
        None => 0,
    }
}

/// Reads a body to its end, refusing more than `limit` bytes.
async fn collect_limited(
    mut body: UpstreamResponseBody,
    limit: u64,
) -> Result<Bytes, crate::body::BoxError> {
    use http_body_util::BodyExt;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() as u64 + data.len() as u64 > limit {
                return Err("answer too large".into());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// The fields whose type the gateway relies on (streaming, the output
/// bound it reserves for, the number of choices): a wrong type is the
/// caller's mistake, refused now rather than silently replaced or sent on.
fn check_types(json: &Value) -> Result<(), Refusal> {
    if json
        .get("stream")
        .is_some_and(|v| !v.is_boolean() && !v.is_null())
    {
        return Err(Refusal::new(
            Code::BadRequest,
            "`stream` must be true or false.",
        ));
    }
    for name in [
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
    ] {
        if let Some(value) = json.get(name)
            && !value.is_null()
            && value.as_u64().is_none_or(|n| n == 0)
        {
            return Err(Refusal::new(
                Code::BadRequest,
                format!("`{name}` must be a positive integer."),
            ));
        }
    }
    Ok(())
}
