//! The runtime configuration snapshot: everything the hot path reads,
//! compiled from the stored objects and swapped atomically (`ArcSwap`) when
//! they change. Requests hold an `Arc` to the snapshot they started with, so
//! a reload never disturbs a request in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::model::{Lifecycle, RetryPolicy, Rewrite as RewriteSpec, Route, Service, Upstream};
use http::{HeaderName, HeaderValue};

use crate::router::{MethodMask, Router, RouterBuilder, method_mask, route_method_mask};
use crate::upstream::{Registry, UpstreamRt};

/// Options that apply to every service unless it overrides them.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub request_body_limit_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct RetryRt {
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub methods: MethodMask,
    pub on_statuses: Vec<u16>,
    pub backoff: Duration,
}

impl RetryRt {
    /// No retries (AI calls fall back to other models instead).
    pub fn none() -> Self {
        Self {
            retries: 0,
            per_try_timeout: None,
            methods: 0,
            on_statuses: Vec::new(),
            backoff: Duration::ZERO,
        }
    }

    fn compile(policy: &RetryPolicy) -> Self {
        Self {
            retries: policy.retries,
            per_try_timeout: policy.per_try_timeout_ms.map(Duration::from_millis),
            methods: method_mask(&policy.methods),
            on_statuses: policy.on_statuses.clone(),
            backoff: Duration::from_millis(policy.backoff_ms),
        }
    }
}

/// Header rewrites, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl Rewrite {
    fn compile(rewrite: &RewriteSpec) -> Result<Self, String> {
        let name = |text: &str| {
            HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("bad header name '{text}'"))
        };
        // Framing and hop-by-hop headers are refused by the admin API;
        // one stored before that check is ignored, never applied.
        let rewritable = |name: &&String| domain::model::is_rewritable_header(name);
        let mut set = Vec::with_capacity(rewrite.set.len());
        for (key, value) in rewrite.set.iter().filter(|(key, _)| rewritable(key)) {
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("bad value for header '{key}'"))?;
            set.push((name(key)?, value));
        }
        let remove = rewrite
            .remove
            .iter()
            .filter(rewritable)
            .map(|text| name(text))
            .collect::<Result<_, _>>()?;
        Ok(Self { set, remove })
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Query rewrites, with the names to drop and the `name=value` pairs to
/// add already percent-encoded.
#[derive(Debug, Clone, Default)]
pub struct QueryRewrite {
    /// Names whose pairs are dropped (the set ones too: they are replaced).
    pub drop: Vec<String>,
    pub add: Vec<String>,
}

impl QueryRewrite {
    fn compile(rewrite: &RewriteSpec) -> Option<Self> {
        if rewrite.is_empty() {
            return None;
        }
        Some(Self {
            drop: rewrite
                .remove
                .iter()
                .chain(rewrite.set.keys())
                .cloned()
                .collect(),
            add: rewrite
                .set
                .iter()
                .map(|(name, value)| {
                    format!(
                        "{}={}",
                        domain::percent::encode(name),
                        domain::percent::encode(value)
                    )
                })
                .collect(),
        })
    }

    /// Writes the rewritten query (without `?`) after `out`'s content.
    pub fn apply(&self, query: Option<&str>, out: &mut String) {
        let mut first = true;
        let mut push = |out: &mut String, pair: &str| {
            out.push(if first { '?' } else { '&' });
            first = false;
            out.push_str(pair);
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let name = domain::percent::decode(pair.split('=').next().unwrap_or(pair));
            if !self.drop.contains(&name) {
                push(out, pair);
            }
        }
        for pair in &self.add {
            push(out, pair);
        }
    }
}

#[derive(Debug)]
pub struct ServiceRt {
    pub id: String,
    pub slug: String,
    /// The owning team; `None`: platform-owned.
    pub team: Option<String>,
    /// Visibility `team`: only apps of the owning team may call.
    pub team_only: bool,
    /// No credentials needed.
    pub anonymous: bool,
    /// `?api_key=` accepted.
    pub query_key: bool,
    /// Trusted JWT issuers, when the service takes JWTs.
    pub jwt: Option<crate::jwt::JwtRt>,
    pub ip: crate::access::IpRulesRt,
    pub lifecycle: Lifecycle,
    /// Headers for a deprecated service's responses.
    pub deprecation: Option<Deprecation>,
    pub upstream: Option<Arc<UpstreamRt>>,
    /// Per-request payment terms (x402), when the service takes them.
    pub x402: Option<Arc<crate::x402::X402Rt>>,
    /// Body capture for the call log, when the service asks for it.
    pub log_bodies: Option<crate::calls::BodyLogRt>,
}

impl ServiceRt {
    /// How refusals name the service: a team-only service is not named,
    /// so that callers outside its team do not learn it (its own callers
    /// know which service they call).
    pub fn named(&self) -> std::borrow::Cow<'_, str> {
        if self.team_only {
            "This service".into()
        } else {
            format!("The service '{}'", self.slug).into()
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteRt {
    pub id: String,
    /// The full public pattern, for logs and messages.
    pub pattern: String,
    pub service: Arc<ServiceRt>,
    /// Bytes of the request path to drop before forwarding (the base path).
    pub strip_len: usize,
    pub timeout: Duration,
    pub retry: RetryRt,
    pub body_limit_bytes: u64,
    pub request_headers: Rewrite,
    pub response_headers: Rewrite,
    pub query: Option<QueryRewrite>,
    /// The route's own limits (all callers together).
    pub limiter: Option<Arc<crate::limit::Limiter>>,
    /// The route's response cache, when it has one.
    pub cache: Option<Box<crate::cache::CacheRule>>,
}

/// Everything the data plane needs, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: i64,
    pub router: Router,
    pub routes: Vec<RouteRt>,
    /// Some route has a response cache (a write then looks for the route
    /// a `GET` of its URI takes, whose answer it makes stale).
    pub cached_routes: bool,
    pub upstreams: Vec<Arc<UpstreamRt>>,
    pub access: crate::access::AccessIndex,
    /// AI services, their models and providers.
    pub ai: Arc<crate::ai::AiRt>,
    /// The tools of `/mcp`.
    pub mcp: Arc<crate::mcp_host::McpRt>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("service {service}: {message}")]
    Service { service: String, message: String },
    #[error("route {route}: {message}")]
    Route { route: String, message: String },
    #[error("{0}")]
    Access(String),
}

/// The input of [`compile`]: the stored configuration.
pub struct Config<'a> {
    pub version: i64,
    pub upstreams: &'a [Upstream],
    pub services: &'a [Service],
    pub routes: &'a [Route],
    pub apps: &'a [domain::access::App],
    pub keys: &'a [domain::access::ApiKey],
    pub plans: &'a [domain::access::Plan],
    pub subscriptions: &'a [domain::access::Subscription],
    /// AI providers, their keys opened.
    pub providers: &'a [crate::ai::AiProvider],
    /// The model catalogue (list prices); `None`: providers' own models only.
    pub catalog: Option<&'a domain::catalog::Catalog>,
}

/// Builds a snapshot. Fails without side effects on the served snapshot; the
/// caller keeps serving the last good one.
pub fn compile(
    config: &Config<'_>,
    defaults: &Defaults,
    registry: &Registry,
    limiters: &crate::limit::LimiterRegistry,
    wallets: &crate::money::Wallets,
    ai_keys: &crate::ai::KeyRegistry,
) -> Result<Snapshot, CompileError> {
    // One team's object that cannot be compiled is left out (and logged);
    // it never holds back everyone else's changes (a revoked key, a new
    // service) by failing the whole snapshot.
    let skip = |problem: &dyn std::fmt::Display| {
        tracing::warn!(version = config.version, %problem, "left out of the configuration; the rest is served");
    };
    let mut upstreams = HashMap::new();
    let mut upstream_list = Vec::new();
    for upstream in config.upstreams {
        match registry.compile(upstream) {
            Ok(compiled) => {
                let compiled = Arc::new(compiled);
                upstreams.insert(upstream.spec.slug.clone(), compiled.clone());
                upstream_list.push(compiled);
            }
            Err(error) => skip(&error),
        }
    }
    let mut services = HashMap::new();
    for service in config.services {
        if service.lifecycle == Lifecycle::Draft {
            continue;
        }
        // A service whose upstream is left out answers 503 (no upstream).
        let upstream = service
            .spec
            .upstream
            .as_ref()
            .and_then(|slug| upstreams.get(slug).cloned());
        // Without its access rules a service is not served at all.
        let access = service
            .spec
            .auth
            .jwt
            .as_ref()
            .map(crate::jwt::JwtRt::compile)
            .transpose()
            .and_then(|jwt| Ok((jwt, crate::access::IpRulesRt::compile(&service.spec.ip)?)));
        let (jwt, ip) = match access {
            Ok(access) => access,
            Err(message) => {
                skip(&CompileError::Service {
                    service: service.spec.slug.clone(),
                    message,
                });
                continue;
            }
        };
        let deprecation =
            (service.lifecycle == Lifecycle::Deprecated).then(|| deprecation_headers(service));
        services.insert(
            service.id.clone(),
            (
                service,
                Arc::new(ServiceRt {
                    id: service.id.clone(),
                    slug: service.spec.slug.clone(),
                    team: service.spec.team.clone(),
                    team_only: service.spec.visibility == domain::model::Visibility::Team,
                    anonymous: service.spec.auth.anonymous,
                    query_key: service.spec.auth.query_key,
                    jwt,
                    ip,
                    lifecycle: service.lifecycle,
                    deprecation,
                    upstream,
                    log_bodies: service
                        .spec
                        .log_bodies
                        .as_ref()
                        .map(crate::calls::BodyLogRt::compile),
                    x402: service.spec.x402.as_ref().map(|spec| {
                        Arc::new(crate::x402::X402Rt::compile(
                            spec,
                            service
                                .spec
                                .description
                                .as_deref()
                                .or(service.spec.name.as_deref())
                                .unwrap_or(&service.spec.slug),
                        ))
                    }),
                }),
            ),
        );
    }
    let mut builder = RouterBuilder::default();
    let mut routes = Vec::new();
    for route in config.routes {
        let Some((service, service_rt)) = services.get(&route.service_id) else {
            continue;
        };
        let route_error = |message: String| CompileError::Route {
            route: route.id.clone(),
            message,
        };
        let pattern = domain::path::join(&service.spec.base_path, &route.spec.path);
        let compiled = domain::path::parse_pattern(&pattern).and_then(|segments| {
            let request_headers = Rewrite::compile(&route.spec.request_headers)?;
            let response_headers = Rewrite::compile(&route.spec.response_headers)?;
            Ok((segments, request_headers, response_headers))
        });
        let (segments, request_headers, response_headers) = match compiled {
            Ok(compiled) => compiled,
            Err(message) => {
                skip(&route_error(message));
                continue;
            }
        };
        let base = service.spec.base_path.trim_end_matches('/');
        let index = routes.len();
        builder.add(
            route.spec.host.as_deref(),
            &segments,
            route_method_mask(&route.spec.methods),
            index,
        );
        routes.push(RouteRt {
            id: route.id.clone(),
            pattern,
            service: service_rt.clone(),
            strip_len: if route.spec.strip_prefix {
                base.len()
            } else {
                0
            },
            timeout: Duration::from_millis(
                route.spec.timeout_ms.unwrap_or(service.spec.timeout_ms),
            ),
            retry: RetryRt::compile(route.spec.retry.as_ref().unwrap_or(&service.spec.retry)),
            body_limit_bytes: route
                .spec
                .request_body_limit_bytes
                .or(service.spec.request_body_limit_bytes)
                .unwrap_or(defaults.request_body_limit_bytes),
            request_headers,
            query: QueryRewrite::compile(&route.spec.query),
            response_headers,
            limiter: limiters.get(
                format!("route:{}", route.id),
                "route",
                &route.spec.rate_limits,
                None,
            ),
            cache: route.spec.cache.as_ref().map(|spec| {
                // A changed route or service keys its answers afresh.
                let scope = format!(
                    "{}@{}.{}.{}",
                    route.id,
                    route.updated_at_ms,
                    service.updated_at_ms,
                    service.current_release.unwrap_or(0)
                );
                Box::new(crate::cache::CacheRule::compile(spec, scope))
            }),
        });
    }
    let service_rts: HashMap<String, Arc<ServiceRt>> = services
        .iter()
        .map(|(id, (_, rt))| (id.clone(), rt.clone()))
        .collect();
    let empty_catalog = domain::catalog::Catalog::default();
    let mut kept_upstreams = config.upstreams.to_vec();
    let ai = crate::ai::compile(
        config.services,
        &service_rts,
        &crate::ai::AiInput {
            providers: config.providers,
            catalog: config.catalog.unwrap_or(&empty_catalog),
            keys: ai_keys,
        },
        registry,
        &mut routes,
        &mut kept_upstreams,
    )?;
    if !ai.is_empty() {
        crate::ai::warm_up_tokenizer();
    }
    let mcp = crate::mcp_host::McpRt::compile(config.services, &service_rts, &ai);
    // AI and prompt services price their calls by tokens: their
    // subscriptions count calls and spend like priced plans do.
    let priced_services: std::collections::HashSet<&str> = config
        .services
        .iter()
        .filter(|service| service.spec.kind != domain::model::ServiceKind::Http)
        .map(|service| service.id.as_str())
        .collect();
    let access = crate::access::compile(
        config.apps,
        config.keys,
        config.plans,
        config.subscriptions,
        limiters,
        wallets,
        &priced_services,
    )
    .map_err(CompileError::Access)?;
    registry.retain(&kept_upstreams);
    limiters.sweep();
    Ok(Snapshot {
        version: config.version,
        router: builder.build(),
        cached_routes: routes.iter().any(|route| route.cache.is_some()),
        routes,
        upstreams: upstream_list,
        access,
        ai: Arc::new(ai),
        mcp: Arc::new(mcp),
    })
}

/// `Deprecation` (RFC 9745), optional `Sunset` (RFC 8594) and the
/// `Tollgate-Warning` item `deprecated;sunset="…"`.
#[derive(Debug)]
pub struct Deprecation {
    pub deprecation: HeaderValue,
    pub sunset: Option<HeaderValue>,
    pub warning: HeaderValue,
}

fn deprecation_headers(service: &Service) -> Deprecation {
    // RFC 9745: a structured-field date, `@<epoch seconds>`.
    let since_s = service.deprecated_at_ms.unwrap_or(service.updated_at_ms) / 1000;
    let deprecation = HeaderValue::from_str(&format!("@{since_s}"))
        .unwrap_or_else(|_| HeaderValue::from_static("@0"));
    let sunset = service
        .sunset
        .as_deref()
        .and_then(|text| domain::model::parse_sunset(text).ok())
        .and_then(|epoch_s| u64::try_from(epoch_s).ok())
        .map(|epoch_s| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(epoch_s))
        })
        .and_then(|text| HeaderValue::from_str(&text).ok());
    let warning = match &service.sunset {
        Some(date) => format!("deprecated;sunset=\"{date}\""),
        None => "deprecated".to_owned(),
    };
    Deprecation {
        deprecation,
        sunset,
        warning: HeaderValue::from_str(&warning)
            .unwrap_or_else(|_| HeaderValue::from_static("deprecated")),
    }
}

#[cfg(test)]
mod tests {
    use super::Rewrite;

    #[test]
    fn stored_rewrites_of_framing_headers_are_ignored() {
        let spec = domain::model::Rewrite {
            set: [("Content-Length", "0"), ("X-Team", "a")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            remove: vec!["transfer-encoding".to_owned(), "x-debug".to_owned()],
        };
        let compiled = Rewrite::compile(&spec).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("content-length", http::HeaderValue::from_static("35"));
        headers.insert(
            "transfer-encoding",
            http::HeaderValue::from_static("chunked"),
        );
        headers.insert("x-debug", http::HeaderValue::from_static("1"));
        compiled.apply(&mut headers);
        assert_eq!(headers["content-length"], "35");
        assert_eq!(headers["transfer-encoding"], "chunked");
        assert_eq!(headers["x-team"], "a");
        assert!(headers.get("x-debug").is_none());
    }
}
