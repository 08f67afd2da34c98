//! AI services compiled for the hot path: each service's models and
//! aliases resolved to provider targets with their list prices, the
//! providers' key pools, and a synthetic upstream per (service, provider)
//! so calls to providers use the gateway's own client, pools and TLS.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use domain::ai::{AiSpec, TokenPricesNanos};
use domain::catalog::Catalog;
use domain::model::{Lifecycle, Service, ServiceKind, Upstream};
use domain::providers::{Provider, ProviderKind, ProviderModel};
use http::HeaderValue;

use crate::snapshot::{CompileError, RouteRt, ServiceRt};
use crate::upstream::{Registry, UpstreamRt};

/// A provider as the binary hands it over: its keys already opened.
#[derive(Clone)]
pub struct AiProvider {
    pub provider: Provider,
    pub models: Vec<ProviderModel>,
    /// (key id, the key).
    pub keys: Vec<(String, String)>,
    /// Stored keys this node could not open (another master key).
    pub unopened: usize,
}

impl std::fmt::Debug for AiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("AiProvider")
            .field("provider", &self.provider.spec.slug)
            .field("models", &self.models.len())
            .field(
                "keys",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// How a provider takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStyle {
    Bearer,
    XApiKey,
    GoogApiKey,
    /// Azure OpenAI's `api-key`.
    ApiKey,
    None,
}

impl AuthStyle {
    fn parse(text: &str) -> Self {
        match text {
            "x-api-key" => Self::XApiKey,
            "x-goog-api-key" => Self::GoogApiKey,
            "api-key" => Self::ApiKey,
            "none" => Self::None,
            _ => Self::Bearer,
        }
    }

    pub fn header_name(self) -> Option<http::HeaderName> {
        Some(match self {
            Self::Bearer => http::header::AUTHORIZATION,
            Self::XApiKey => http::HeaderName::from_static("x-api-key"),
            Self::GoogApiKey => http::HeaderName::from_static("x-goog-api-key"),
            Self::ApiKey => http::HeaderName::from_static("api-key"),
            Self::None => return None,
        })
    }
}

/// One key of a provider's pool, with its cool-down after a 429 (or after
/// the provider refused it). Kept across reloads (by key id) so a cooled
/// key stays cooled.
#[derive(Debug)]
pub struct KeyRt {
    pub id: String,
    /// The header value as sent (`Bearer sk-…` or the bare key).
    pub value: HeaderValue,
    cool_until_ms: AtomicI64,
    /// It rests because the provider refused it (401/403), not for a 429.
    refused: AtomicBool,
}

impl KeyRt {
    pub fn new(id: String, value: HeaderValue) -> Self {
        Self {
            id,
            value,
            cool_until_ms: AtomicI64::new(0),
            refused: AtomicBool::new(false),
        }
    }

    pub fn usable(&self, now_ms: i64) -> bool {
        self.cool_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Rests the key (the provider answered 429) for `duration`.
    pub fn cool_down(&self, now_ms: i64, duration: Duration) {
        let until = now_ms.saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
        self.cool_until_ms.fetch_max(until, Ordering::Relaxed);
        self.refused.store(false, Ordering::Relaxed);
    }

    /// Rests the key the provider refused (401/403) for `duration`.
    pub fn refuse(&self, now_ms: i64, duration: Duration) {
        self.cool_down(now_ms, duration);
        self.refused.store(true, Ordering::Relaxed);
    }
}

/// Why no key of a provider can be used now.
#[derive(Debug, PartialEq, Eq)]
pub enum Resting {
    /// Keys rest after a 429: the first is usable again in this many
    /// seconds (at least 1).
    RateLimited { retry_after_s: u64 },
    /// Every resting key was refused by the provider: the operator must
    /// act; waiting will not help the caller.
    Refused,
    /// Its keys are stored, but this node cannot open them (its master key
    /// is not the one that sealed them).
    Unopened,
}

/// Key states by key id, kept across reloads.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    keys: std::sync::Mutex<HashMap<String, Arc<KeyRt>>>,
}

#[derive(Debug)]
pub struct ProviderRt {
    pub slug: String,
    pub dialect: ai::Dialect,
    pub auth: AuthStyle,
    pub keys: Vec<Arc<KeyRt>>,
    /// It has stored keys, none of which this node could open: it is not
    /// called keyless.
    pub keys_unopened: bool,
    /// An OpenAI-compatible provider other than OpenAI: it is sent the
    /// output limit as `max_tokens`, the field every such API reads
    /// (several refuse OpenAI's newer `max_completion_tokens`).
    pub legacy_max_tokens: bool,
}

impl ProviderRt {
    /// A usable key not in `tried`, starting at a random place so calls
    /// spread over the pool without a shared counter. `Some(None)`: the
    /// provider takes no key.
    /// `tried` has one flag per key (one in all for a provider without
    /// keys, which is tried once).
    pub fn pick_key(&self, tried: &[bool], now_ms: i64) -> Option<Option<usize>> {
        if self.keys.is_empty() {
            if self.keys_unopened {
                return None;
            }
            return (!tried.first().copied().unwrap_or(false)).then_some(None);
        }
        let count = self.keys.len();
        let start = fastrand::usize(..count);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&index| {
                !tried.get(index).copied().unwrap_or(true) && self.keys[index].usable(now_ms)
            })
            .map(Some)
    }
}

impl ProviderRt {
    /// Why its keys all rest (call when [`Self::pick_key`] found none):
    /// any rate-limited one decides, by when it is usable again.
    pub fn resting(&self, now_ms: i64) -> Resting {
        if self.keys.is_empty() && self.keys_unopened {
            return Resting::Unopened;
        }
        let soonest = self
            .keys
            .iter()
            .filter(|key| !key.usable(now_ms) && !key.refused.load(Ordering::Relaxed))
            .map(|key| key.cool_until_ms.load(Ordering::Relaxed) - now_ms)
            .min();
        match soonest {
            Some(ms) => Resting::RateLimited {
                retry_after_s: u64::try_from(ms).unwrap_or(0).div_ceil(1000).max(1),
            },
            None => Resting::Refused,
        }
    }
}

/// A model of a provider, as a call targets it.
#[derive(Debug)]
pub struct TargetModel {
    /// `<provider>/<model>`.
    pub name: String,
    /// The provider's own name for it.
    pub model: String,
    pub provider: Arc<ProviderRt>,
    pub upstream: Arc<UpstreamRt>,
    /// List prices per million tokens (before any markup).
    pub list: TokenPricesNanos,
    pub context_window: Option<u64>,
    pub max_output: Option<u64>,
}

/// What a caller may name: a provider's model (one target) or an alias.
#[derive(Debug)]
pub struct ModelRt {
    pub name: String,
    pub alias: bool,
    pub targets: Vec<(Arc<TargetModel>, u32)>,
    pub fallbacks: Vec<Arc<TargetModel>>,
    total_weight: u32,
}

impl ModelRt {
    /// The targets of one call in the order they are tried: one of the
    /// weighted targets, then the fallbacks.
    pub fn plan(&self) -> Vec<Arc<TargetModel>> {
        let mut out = Vec::with_capacity(1 + self.fallbacks.len());
        let mut point = fastrand::u32(..self.total_weight.max(1));
        for (target, weight) in &self.targets {
            if point < *weight {
                out.push(target.clone());
                break;
            }
            point -= weight;
        }
        if out.is_empty()
            && let Some((target, _)) = self.targets.first()
        {
            out.push(target.clone());
        }
        out.extend(self.fallbacks.iter().cloned());
        out
    }

    /// Every target a call may reach (for the most it can cost).
    pub fn all_targets(&self) -> impl Iterator<Item = &Arc<TargetModel>> {
        self.targets.iter().map(|(t, _)| t).chain(&self.fallbacks)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub total: Duration,
}

#[derive(Debug)]
pub struct AiServiceRt {
    /// Its (synthetic) route in `Snapshot::routes`: what admission, the
    /// call log and refusals see.
    pub route: usize,
    pub service: Arc<ServiceRt>,
    /// `<base_path>/v1/…` reaches this service only.
    pub base_path: String,
    pub models: HashMap<String, Arc<ModelRt>>,
    /// Over list prices, nano-units per unit.
    pub markup: i64,
    pub timeouts: Timeouts,
    pub created_s: i64,
    /// A prompt service (`POST <base_path>`), not served on `/v1/…`.
    pub prompt: Option<Arc<PromptRt>>,
}

/// A prompt service's spec and its generated OpenAPI document.
#[derive(Debug)]
pub struct PromptRt {
    pub spec: domain::prompt::PromptSpec,
    pub openapi: bytes::Bytes,
}

impl PromptRt {
    fn compile(service: &Service, spec: &domain::prompt::PromptSpec) -> Self {
        Self {
            spec: spec.clone(),
            openapi: bytes::Bytes::from(super::prompt::openapi(service, spec).to_string()),
        }
    }
}

/// Every AI service of a snapshot.
#[derive(Debug, Default)]
pub struct AiRt {
    pub services: Vec<AiServiceRt>,
    /// Model or alias name → the services offering it.
    pub by_model: HashMap<String, Vec<usize>>,
    /// Base path → AI service, and → prompt service.
    ai_paths: HashMap<String, usize>,
    prompt_paths: HashMap<String, usize>,
}

impl AiRt {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The AI service whose base path is `prefix`.
    pub fn by_base_path(&self, prefix: &str) -> Option<usize> {
        self.ai_paths.get(prefix).copied()
    }

    /// The prompt service at `path`.
    pub fn prompt_at(&self, path: &str) -> Option<usize> {
        if self.prompt_paths.is_empty() {
            return None;
        }
        self.prompt_paths.get(path.trim_end_matches('/')).copied()
    }
}

/// A model as a provider serves it: list prices and limits.
struct ModelInfo {
    list: TokenPricesNanos,
    context_window: Option<u64>,
    max_output: Option<u64>,
}

/// The models a provider serves, by its own names: its preset's
/// catalogue models with the operator's overrides and additions.
fn provider_models(catalog: &Catalog, input: &AiProvider) -> HashMap<String, ModelInfo> {
    domain::providers::effective_models(catalog, &input.provider.spec, &input.models)
        .into_iter()
        .filter_map(|view| {
            let prices = domain::ai::TokenPrice {
                input_per_million: view.input_per_million,
                output_per_million: view.output_per_million,
                cached_input_per_million: view.cached_input_per_million,
            }
            .nanos()
            .ok()?;
            Some((
                view.model,
                ModelInfo {
                    list: prices,
                    context_window: view.context_window,
                    max_output: view.max_output_tokens,
                },
            ))
        })
        .collect()
}

fn dialect(kind: ProviderKind) -> ai::Dialect {
    match kind {
        ProviderKind::Anthropic => ai::Dialect::Anthropic,
        ProviderKind::Gemini => ai::Dialect::Gemini,
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => ai::Dialect::OpenAi,
    }
}

/// A provider while compiling: its runtime, its input, its models.
type CompiledProvider<'a> = (Arc<ProviderRt>, &'a AiProvider, HashMap<String, ModelInfo>);

/// What [`compile`] needs beside the services.
pub struct AiInput<'a> {
    pub providers: &'a [AiProvider],
    pub catalog: &'a Catalog,
    pub keys: &'a KeyRegistry,
}

/// Compiles the AI services among `services` (published, deprecated or
/// retired), adding one synthetic route per service to `routes` and the
/// synthetic upstreams to `upstreams` (so the registry keeps their state).
pub fn compile(
    services: &[Service],
    service_rts: &HashMap<String, Arc<ServiceRt>>,
    input: &AiInput<'_>,
    registry: &Registry,
    routes: &mut Vec<RouteRt>,
    upstreams: &mut Vec<Upstream>,
) -> Result<AiRt, CompileError> {
    let mut out = AiRt::default();
    let live = |s: &&Service| s.lifecycle != Lifecycle::Draft;
    // AI services offer their spec; a prompt service is compiled like one
    // offering just its model (a provider's model, or an alias of an AI
    // service of its team or the platform's).
    let mut compiled_specs: Vec<(&Service, AiSpec, Option<Arc<PromptRt>>)> = Vec::new();
    for service in services.iter().filter(live) {
        match service.spec.kind {
            ServiceKind::Ai => {
                if let Some(spec) = &service.spec.ai {
                    compiled_specs.push((service, spec.clone(), None));
                }
            }
            ServiceKind::Prompt => {
                let Some(prompt) = &service.spec.prompt else {
                    continue;
                };
                let spec = if domain::ai::split_model(&prompt.model).is_some() {
                    AiSpec {
                        models: vec![prompt.model.clone()],
                        aliases: Default::default(),
                        markup: None,
                        timeouts: Default::default(),
                    }
                } else {
                    let owner = services.iter().filter(live).find_map(|other| {
                        let ai = other.spec.ai.as_ref()?;
                        let same_team =
                            other.spec.team.is_none() || other.spec.team == service.spec.team;
                        let alias = ai.aliases.get(&prompt.model)?;
                        same_team.then_some((ai, alias))
                    });
                    let Some((ai, alias)) = owner else {
                        tracing::warn!(service = %service.spec.slug, model = %prompt.model, "prompt service names an alias no AI service of its team defines; it is not served");
                        continue;
                    };
                    AiSpec {
                        models: Vec::new(),
                        aliases: [(prompt.model.clone(), alias.clone())]
                            .into_iter()
                            .collect(),
                        markup: ai.markup.clone(),
                        timeouts: ai.timeouts,
                    }
                };
                compiled_specs.push((
                    service,
                    spec,
                    Some(Arc::new(PromptRt::compile(service, prompt))),
                ));
            }
            ServiceKind::Http => {}
        }
    }
    let mut providers: HashMap<&str, CompiledProvider<'_>> = HashMap::new();
    {
        let mut registry_keys = input.keys.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = std::collections::HashSet::new();
        for provider in input.providers {
            let spec = &provider.provider.spec;
            let auth = spec
                .preset
                .as_deref()
                .and_then(|preset| input.catalog.providers.iter().find(|p| p.slug == preset))
                .map_or(
                    match spec.kind {
                        ProviderKind::Anthropic => AuthStyle::XApiKey,
                        ProviderKind::Gemini => AuthStyle::GoogApiKey,
                        _ => AuthStyle::Bearer,
                    },
                    |preset| AuthStyle::parse(&preset.auth),
                );
            let keys: Vec<Arc<KeyRt>> = provider
                .keys
                .iter()
                .filter_map(|(id, secret)| {
                    let text = if auth == AuthStyle::Bearer {
                        format!("Bearer {secret}")
                    } else {
                        secret.clone()
                    };
                    let mut value = HeaderValue::from_str(&text).ok()?;
                    value.set_sensitive(true);
                    live.insert(id.clone());
                    let key = registry_keys
                        .entry(id.clone())
                        .and_modify(|existing| {
                            if existing.value != value {
                                *existing = Arc::new(KeyRt::new(id.clone(), value.clone()));
                            }
                        })
                        .or_insert_with(|| Arc::new(KeyRt::new(id.clone(), value.clone())));
                    Some(key.clone())
                })
                .collect();
            providers.insert(
                spec.slug.as_str(),
                (
                    Arc::new(ProviderRt {
                        slug: spec.slug.clone(),
                        dialect: dialect(spec.kind),
                        auth,
                        keys_unopened: keys.is_empty() && provider.unopened > 0,
                        keys,
                        legacy_max_tokens: spec.kind
                            == domain::providers::ProviderKind::OpenaiCompatible,
                    }),
                    provider,
                    provider_models(input.catalog, provider),
                ),
            );
        }
        registry_keys.retain(|id, _| live.contains(id));
    }

    for (service, spec, prompt) in &compiled_specs {
        let service = *service;
        let Some(service_rt) = service_rts.get(&service.id) else {
            continue;
        };
        let service_error = |message: String| CompileError::Service {
            service: service.spec.slug.clone(),
            message,
        };
        let timeouts = Timeouts {
            connect: Duration::from_millis(spec.timeouts.connect_ms),
            first_token: Duration::from_millis(spec.timeouts.first_token_ms),
            total: Duration::from_millis(spec.timeouts.total_ms),
        };
        // One synthetic upstream per provider this service uses.
        let mut provider_upstreams: HashMap<&str, Arc<UpstreamRt>> = HashMap::new();
        for slug in spec.providers() {
            let Some((_, provider, _)) = providers.get(slug) else {
                tracing::warn!(service = %service.spec.slug, provider = slug, "AI service names a provider that does not exist; its models are left out");
                continue;
            };
            let Some(base_url) = provider.provider.spec.base_url(input.catalog) else {
                continue;
            };
            let upstream = synthetic_upstream(service, provider, base_url, &spec.timeouts)
                .map_err(service_error)?;
            let compiled = Arc::new(registry.compile(&upstream)?);
            upstreams.push(upstream);
            provider_upstreams.insert(slug, compiled);
        }
        let target = |name: &str| -> Option<Arc<TargetModel>> {
            let (slug, model) = domain::ai::split_model(name)?;
            let (provider_rt, _, models) = providers.get(slug)?;
            let upstream = provider_upstreams.get(slug)?;
            // A model without a price (not in the catalogue, not added by an
            // operator) is not served: it could never be charged.
            let Some(info) = models.get(model) else {
                tracing::warn!(service = %service.spec.slug, model = name, "model has no price (add it with PUT /api/v1/providers/{{p}}/models/{{m}}); not served");
                return None;
            };
            let info = Some(info);
            Some(Arc::new(TargetModel {
                name: name.to_owned(),
                model: model.to_owned(),
                provider: provider_rt.clone(),
                upstream: upstream.clone(),
                list: info.map(|i| i.list).unwrap_or_default(),
                context_window: info.and_then(|i| i.context_window),
                max_output: info.and_then(|i| i.max_output),
            }))
        };
        let mut models: HashMap<String, Arc<ModelRt>> = HashMap::new();
        let single = |name: &str, models: &mut HashMap<String, Arc<ModelRt>>| {
            if let Some(target) = target(name) {
                models.insert(
                    name.to_owned(),
                    Arc::new(ModelRt {
                        name: name.to_owned(),
                        alias: false,
                        targets: vec![(target, 1)],
                        fallbacks: Vec::new(),
                        total_weight: 1,
                    }),
                );
            }
        };
        for name in &spec.models {
            match name.strip_suffix("/*") {
                Some(slug) => {
                    if let Some((_, _, known)) = providers.get(slug) {
                        for model in known.keys() {
                            single(&format!("{slug}/{model}"), &mut models);
                        }
                    }
                }
                None => single(name, &mut models),
            }
        }
        for (alias, alias_spec) in &spec.aliases {
            let targets: Vec<(Arc<TargetModel>, u32)> = alias_spec
                .targets
                .iter()
                .filter_map(|t| Some((target(&t.model)?, t.weight)))
                .collect();
            if targets.is_empty() {
                continue;
            }
            let total_weight = targets.iter().map(|(_, w)| *w).sum();
            models.insert(
                alias.clone(),
                Arc::new(ModelRt {
                    name: alias.clone(),
                    alias: true,
                    targets,
                    fallbacks: alias_spec
                        .fallbacks
                        .iter()
                        .filter_map(|name| target(name))
                        .collect(),
                    total_weight,
                }),
            );
        }
        let index = out.services.len();
        if prompt.is_none() {
            for name in models.keys() {
                out.by_model.entry(name.clone()).or_default().push(index);
            }
        }
        let base_path = service.spec.base_path.trim_end_matches('/').to_owned();
        if prompt.is_some() {
            out.prompt_paths.insert(base_path, index);
        } else {
            out.ai_paths.insert(base_path, index);
        }
        let route = routes.len();
        routes.push(synthetic_route(
            service,
            service_rt,
            timeouts.total,
            prompt.is_some(),
        ));
        out.services.push(AiServiceRt {
            route,
            service: service_rt.clone(),
            base_path: service.spec.base_path.trim_end_matches('/').to_owned(),
            models,
            markup: markup_of(spec),
            timeouts,
            created_s: service.created_at_ms / 1000,
            prompt: prompt.clone(),
        });
    }
    Ok(out)
}

fn markup_of(spec: &AiSpec) -> i64 {
    spec.markup
        .as_deref()
        .and_then(|m| domain::ai::parse_markup(m).ok())
        .unwrap_or(domain::money::NANOS_PER_UNIT)
}

fn synthetic_upstream(
    service: &Service,
    provider: &AiProvider,
    base_url: &str,
    timeouts: &domain::ai::AiTimeouts,
) -> Result<Upstream, String> {
    let spec = serde_json::from_value(serde_json::json!({
        "slug": provider.provider.spec.slug,
        "targets": [{"url": base_url, "weight": 1}],
        "connect_timeout_ms": timeouts.connect_ms,
        "read_timeout_ms": timeouts.first_token_ms,
        // A provider's errors are handled by fallbacks, not ejection.
        "health_check": {"passive": {"enabled": false, "max_failures": 5, "ejection_ms": 10000, "failure_statuses": [502, 503, 504]}}
    }))
    .map_err(|e| format!("provider {}: {e}", provider.provider.spec.slug))?;
    Ok(Upstream {
        id: format!("ai:{}:{}", service.id, provider.provider.id),
        spec,
        created_at_ms: 0,
        updated_at_ms: 0,
    })
}

fn synthetic_route(
    service: &Service,
    service_rt: &Arc<ServiceRt>,
    total: Duration,
    prompt: bool,
) -> RouteRt {
    let base = service.spec.base_path.trim_end_matches('/');
    RouteRt {
        id: format!("ai:{}", service.id),
        pattern: if prompt {
            base.to_owned()
        } else {
            format!("{base}/v1/*")
        },
        service: service_rt.clone(),
        strip_len: 0,
        timeout: total,
        retry: crate::snapshot::RetryRt::none(),
        body_limit_bytes: service
            .spec
            .request_body_limit_bytes
            .unwrap_or(AI_BODY_LIMIT),
        request_headers: Default::default(),
        response_headers: Default::default(),
        query: None,
        limiter: None,
        cache: None,
    }
}

/// Request bodies of AI calls, unless the service sets its own limit
/// (images inline as base64 make them large).
pub const AI_BODY_LIMIT: u64 = 32 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(keys: usize) -> ProviderRt {
        ProviderRt {
            slug: "p".into(),
            dialect: ai::Dialect::OpenAi,
            auth: AuthStyle::Bearer,
            keys_unopened: false,
            legacy_max_tokens: false,
            keys: (0..keys)
                .map(|i| {
                    Arc::new(KeyRt::new(
                        i.to_string(),
                        HeaderValue::from_static("Bearer k"),
                    ))
                })
                .collect(),
        }
    }

    #[test]
    fn each_key_is_tried_once_and_a_keyless_provider_once() {
        let keyless = provider(0);
        assert_eq!(keyless.pick_key(&[false], 0), Some(None));
        assert_eq!(keyless.pick_key(&[true], 0), None);
        let pool = provider(3);
        let mut tried = vec![false; 3];
        let mut seen = Vec::new();
        while let Some(Some(index)) = pool.pick_key(&tried, 0) {
            assert!(!tried[index]);
            tried[index] = true;
            seen.push(index);
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        // A resting key is skipped until its rest is over.
        pool.keys[1].cool_down(1_000, Duration::from_secs(1));
        let tried = [true, false, true];
        assert_eq!(pool.pick_key(&tried, 1_500), None);
        assert_eq!(pool.pick_key(&tried, 2_000), Some(Some(1)));
    }

    /// A caller told to wait is told how long the first rate-limited key
    /// rests; keys the provider refused are not worth waiting for.
    #[test]
    fn resting_keys_say_how_long_or_that_waiting_will_not_help() {
        let refused = provider(2);
        refused.keys[0].refuse(0, Duration::from_secs(300));
        refused.keys[1].refuse(0, Duration::from_secs(300));
        assert_eq!(refused.resting(1_000), Resting::Refused);
        // Keys stored but not opened here: never called keyless.
        let unopened = ProviderRt {
            keys_unopened: true,
            ..provider(0)
        };
        assert_eq!(unopened.pick_key(&[false], 1_000), None);
        assert_eq!(unopened.resting(1_000), Resting::Unopened);
        assert_eq!(
            provider(0).pick_key(&[false], 1_000),
            Some(None),
            "a keyless provider"
        );
        let pool = provider(2);
        pool.keys[0].refuse(0, Duration::from_secs(300));
        pool.keys[1].cool_down(1_000, Duration::from_millis(7_000));
        assert_eq!(
            pool.resting(1_500),
            Resting::RateLimited { retry_after_s: 7 }
        );
        assert_eq!(
            pool.resting(7_900),
            Resting::RateLimited { retry_after_s: 1 }
        );
    }
}
