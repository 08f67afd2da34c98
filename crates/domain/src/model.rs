//! Configuration objects. Each `*Spec` is what a user writes (admin API body,
//! declarative file); the object itself adds what the system owns (id,
//! lifecycle, timestamps).
//!
//! The spec types are deliberately one shape for the admin API, the
//! declarative file and storage, so users learn it once. That makes every
//! field here part of the product contract: add fields with defaults, never
//! rename them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::FieldErrors;

/// Upper bounds on configuration sizes (TigerBeetle: a limit on everything).
pub mod limits {
    pub const TARGETS_PER_UPSTREAM: usize = 256;
    pub const TARGET_WEIGHT_MAX: u32 = 1000;
    pub const ROUTE_METHODS_MAX: usize = 16;
    pub const HEADER_REWRITES_MAX: usize = 64;
    pub const TIMEOUT_MS_MAX: u64 = 3_600_000;
    pub const RETRIES_MAX: u32 = 10;
    pub const BODY_LIMIT_MAX: u64 = 1 << 34;
    pub const TEXT_MAX: usize = 4096;
}

pub(crate) fn default_true() -> bool {
    true
}

fn default_weight() -> u32 {
    1
}

// ---------------------------------------------------------------- upstream

/// A named set of targets behind a balancing policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub slug: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub team: Option<String>,
    #[serde(default)]
    pub targets: Vec<Target>,
    #[serde(default)]
    pub policy: BalancePolicy,
    /// For `consistent_hash`: what the hash key is.
    #[serde(default)]
    pub hash_on: HashOn,
    /// For `hash_on: header`: the header whose value is hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    #[serde(default = "UpstreamSpec::default_connect_timeout_ms")]
    #[schema(minimum = 1, maximum = 3600000)]
    pub connect_timeout_ms: u64,
    /// Longest wait for response headers on one try, and longest silence
    /// between two body chunks.
    #[serde(default = "UpstreamSpec::default_read_timeout_ms")]
    #[schema(minimum = 1, maximum = 3600000)]
    pub read_timeout_ms: u64,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub tls: TlsSettings,
    #[serde(default)]
    pub health_check: HealthCheck,
}

impl UpstreamSpec {
    fn default_connect_timeout_ms() -> u64 {
        5_000
    }
    fn default_read_timeout_ms() -> u64 {
        60_000
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub url: String,
    #[serde(default = "default_weight")]
    #[schema(maximum = 1000)]
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest requests in flight, relative to weight.
    LeastRequests,
    /// Peak-EWMA latency, choosing the better of two random targets.
    Ewma,
    /// Ring hash on a header or the client IP; sticky while targets are stable.
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    #[default]
    ClientIp,
    Header,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over `http://`; ALPN (h2, then http/1.1) over `https://`.
    #[default]
    Auto,
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) over `http://`, ALPN h2 over `https://`.
    Http2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Verify the upstream's certificate (against the web PKI roots, or
    /// `ca_pem` when given).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// Overrides the SNI name and the name checked in the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Extra trusted CA certificates, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            verify: true,
            server_name: None,
            ca_pem: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub active: ActiveHealthCheck,
    #[serde(default)]
    pub passive: PassiveHealthCheck,
}

/// Probes each target with `GET path` every `interval_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealthCheck {
    pub enabled: bool,
    pub path: String,
    #[schema(minimum = 100, maximum = 3600000)]
    pub interval_ms: u64,
    #[schema(minimum = 1, maximum = 3600000)]
    pub timeout_ms: u64,
    /// Consecutive successes that bring an unhealthy target back.
    #[schema(minimum = 1, maximum = 100)]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark a target unhealthy.
    #[schema(minimum = 1, maximum = 100)]
    pub unhealthy_threshold: u32,
    /// Statuses counted as healthy; empty means 200–399.
    pub healthy_statuses: Vec<u16>,
}

impl Default for ActiveHealthCheck {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/".into(),
            interval_ms: 5_000,
            timeout_ms: 2_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            healthy_statuses: Vec::new(),
        }
    }
}

/// Ejects a target after `max_failures` consecutive failed requests (connect
/// errors, timeouts, `failure_statuses`) for `ejection_ms`; it then takes
/// traffic again and the next failure ejects it for twice as long (at most
/// ten times `ejection_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthCheck {
    pub enabled: bool,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_failures: u32,
    #[schema(minimum = 1, maximum = 3600000)]
    pub ejection_ms: u64,
    pub failure_statuses: Vec<u16>,
}

impl Default for PassiveHealthCheck {
    fn default() -> Self {
        Self {
            enabled: true,
            max_failures: 5,
            ejection_ms: 10_000,
            failure_statuses: vec![502, 503, 504],
        }
    }
}

// ---------------------------------------------------------------- service

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    #[default]
    Http,
    Ai,
    Prompt,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Team,
    Catalog,
    Public,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    #[default]
    Draft,
    Published,
    Deprecated,
    Retired,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Draft => "draft",
            Lifecycle::Published => "published",
            Lifecycle::Deprecated => "deprecated",
            Lifecycle::Retired => "retired",
        }
    }
}

/// What a user sets on a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub slug: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub kind: ServiceKind,
    #[schema(pattern = "^/")]
    pub base_path: String,
    /// Slug or id of the upstream (kind `http`). Stored as the slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default)]
    pub approval_required: bool,
    /// Total time budget (all tries) until the upstream's response headers.
    #[serde(default = "ServiceSpec::default_timeout_ms")]
    #[schema(minimum = 1, maximum = 3600000)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Overrides the gateway-wide request body limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body_limit_bytes: Option<u64>,
    /// How callers authenticate.
    #[serde(default, skip_serializing_if = "ServiceAuth::is_default")]
    pub auth: ServiceAuth,
    /// Client addresses allowed or denied (CIDR), for every caller.
    #[serde(default, skip_serializing_if = "crate::access::IpRules::is_empty")]
    pub ip: crate::access::IpRules,
    /// Per-request payment (x402 v2): a caller without an API key pays
    /// each call through the configured facilitator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x402: Option<X402Spec>,
    /// Store request and response bodies in the call log (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bodies: Option<BodyLogSpec>,
    /// Kind `ai`: the models and aliases offered (SPEC §7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<crate::ai::AiSpec>,
    /// Kind `prompt`: the model, templates, variables and output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<crate::prompt::PromptSpec>,
    /// Kind `http`: the API's OpenAPI 3.0 or 3.1 document (JSON), whose
    /// operations become MCP tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub openapi: Option<serde_json::Value>,
    /// MCP: whether the service's tools are offered at `/mcp` (default
    /// yes), and which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpSpec>,
}

/// A service's MCP switch and tool allow-list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Only these tools (their names without the service prefix); all
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
}

/// Body capture for a service's call log entries: the first `max_bytes`
/// of each body, with secrets redacted before they are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyLogSpec {
    /// Bytes kept of each body (default 4096, at most 65536).
    #[serde(default = "BodyLogSpec::default_max_bytes")]
    #[schema(minimum = 1, maximum = 65536)]
    pub max_bytes: u32,
    /// JSON fields (by name, at any depth) whose values are replaced by
    /// `"[redacted]"`, besides the built-in ones (`password`, `secret`,
    /// `token`, `api_key`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_fields: Vec<String>,
}

impl BodyLogSpec {
    pub const MAX_BYTES: u32 = 65_536;

    fn default_max_bytes() -> u32 {
        4_096
    }
}

/// What a service asks for each call paid with x402 (the
/// `PaymentRequirements` it offers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct X402Spec {
    /// The payment scheme; `exact` (the default) is the one defined.
    #[serde(default = "X402Spec::default_scheme")]
    pub scheme: String,
    /// CAIP-2 chain id, such as `eip155:8453` (Base) or `eip155:84532`.
    pub network: String,
    /// The price per call in the asset's atomic units, as a decimal
    /// integer string (`"10000"` is 0.01 USDC).
    pub amount: String,
    /// The token's contract address.
    pub asset: String,
    /// Where the money goes.
    pub pay_to: String,
    /// How long a payment may take.
    #[serde(default = "X402Spec::default_timeout")]
    pub max_timeout_seconds: u32,
    /// Scheme data, such as the token's EIP-712 domain
    /// `{"name": "USDC", "version": "2"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

impl X402Spec {
    fn default_scheme() -> String {
        "exact".into()
    }

    fn default_timeout() -> u32 {
        60
    }

    pub fn validate(&self, errors: &mut FieldErrors) {
        if self.scheme != "exact" {
            errors.add("x402.scheme", "only 'exact' is supported");
        }
        let caip2 = self
            .network
            .split_once(':')
            .is_some_and(|(namespace, reference)| {
                (3..=8).contains(&namespace.len())
                    && namespace
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && (1..=32).contains(&reference.len())
                    && reference
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !caip2 {
            errors.add(
                "x402.network",
                "must be a CAIP-2 chain id such as eip155:8453",
            );
        }
        let digits = !self.amount.is_empty()
            && self.amount.len() <= 78
            && self.amount.bytes().all(|b| b.is_ascii_digit())
            && self.amount.bytes().any(|b| b != b'0');
        if !digits {
            errors.add(
                "x402.amount",
                "must be a positive integer string in the asset's atomic units, such as \"10000\"",
            );
        }
        for (field, value) in [("x402.asset", &self.asset), ("x402.pay_to", &self.pay_to)] {
            if value.is_empty() || value.len() > 128 || value.chars().any(char::is_whitespace) {
                errors.add(field, "must be an address of 1 to 128 characters");
            }
        }
        if !(1..=3600).contains(&self.max_timeout_seconds) {
            errors.add("x402.max_timeout_seconds", "must be between 1 and 3600");
        }
        if self.extra.as_ref().is_some_and(|e| !e.is_object()) {
            errors.add("x402.extra", "must be an object");
        }
    }
}

/// How callers of a service authenticate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAuth {
    /// No credentials needed: anyone may call, without a subscription.
    #[serde(default)]
    pub anonymous: bool,
    /// Accept the key as `?api_key=` (visible in logs and browser
    /// history: off unless a client cannot send headers).
    #[serde(default)]
    pub query_key: bool,
    /// Accept JWTs from these issuers as well as API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
}

impl ServiceAuth {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn validate(&self, errors: &mut FieldErrors) {
        let Some(jwt) = &self.jwt else { return };
        if jwt.issuers.is_empty() || jwt.issuers.len() > 8 {
            errors.add("auth.jwt.issuers", "give 1 to 8 issuers");
        }
        if jwt.app_claim.is_empty() || jwt.app_claim.len() > 128 {
            errors.add("auth.jwt.app_claim", "must be 1–128 characters");
        }
        let mut seen = Vec::new();
        for (index, issuer) in jwt.issuers.iter().enumerate() {
            let field = format!("auth.jwt.issuers[{index}]");
            if issuer.issuer.is_empty() || issuer.issuer.len() > 512 {
                errors.add(format!("{field}.issuer"), "must be 1–512 characters");
            }
            if seen.contains(&&issuer.issuer) {
                errors.add(format!("{field}.issuer"), "appears twice");
            }
            seen.push(&issuer.issuer);
            if issuer.algorithms.is_empty() {
                errors.add(
                    format!("{field}.algorithms"),
                    "name at least one of HS256, RS256, ES256",
                );
            }
            let symmetric = issuer.algorithms.contains(&JwtAlgorithm::Hs256);
            let asymmetric = issuer.algorithms.iter().any(|a| *a != JwtAlgorithm::Hs256);
            if symmetric && asymmetric {
                // A public key must never double as an HMAC secret.
                errors.add(
                    format!("{field}.algorithms"),
                    "HS256 cannot be mixed with RS256 or ES256 for one issuer",
                );
            }
            if symmetric
                && issuer
                    .secret
                    .as_ref()
                    .is_none_or(|s| !s.starts_with(SEALED_PREFIX) && s.len() < 32)
            {
                errors.add(
                    format!("{field}.secret"),
                    "HS256 needs a secret of at least 32 bytes",
                );
            }
            if asymmetric && issuer.public_key_pem.is_none() && issuer.jwks_url.is_none() {
                errors.add(
                    field.clone(),
                    "RS256 and ES256 need public_key_pem or jwks_url",
                );
            }
            if issuer.public_key_pem.is_some() && issuer.jwks_url.is_some() {
                errors.add(
                    field.clone(),
                    "takes its keys from one place: public_key_pem or jwks_url, not both",
                );
            }
            if !symmetric && issuer.secret.is_some() {
                errors.add(format!("{field}.secret"), "is only for HS256");
            }
            if let Some(url) = &issuer.jwks_url
                && let Err(message) = check_target_url(url)
            {
                errors.add(format!("{field}.jwks_url"), message);
            }
            if issuer.leeway_s > 600 {
                errors.add(format!("{field}.leeway_s"), "must be at most 600");
            }
        }
    }
}

/// JWT authentication for a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    pub issuers: Vec<JwtIssuer>,
    /// The claim that names the caller; an app claims `(iss, this claim)`
    /// through its `jwt` identities.
    #[serde(default = "JwtAuth::default_app_claim")]
    pub app_claim: String,
}

impl JwtAuth {
    fn default_app_claim() -> String {
        "sub".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum JwtAlgorithm {
    #[serde(rename = "HS256")]
    Hs256,
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "ES256")]
    Es256,
}

/// How a stored secret of a spec (an HS256 issuer's `secret`) begins
/// once sealed under the master key.
pub const SEALED_PREFIX: &str = "sealed:";

/// A trusted token issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// When set, the token's `aud` must name one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub algorithms: Vec<JwtAlgorithm>,
    /// HS256 shared secret (at least 32 bytes). Stored sealed under the
    /// master key and shown back as `sealed:…`; sending that value back
    /// keeps the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RS256/ES256 public key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// RS256/ES256 keys from a JWKS document, fetched and refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "JwtIssuer::default_leeway_s")]
    pub leeway_s: u64,
}

impl JwtIssuer {
    fn default_leeway_s() -> u64 {
        30
    }
}

impl ServiceSpec {
    fn default_timeout_ms() -> u64 {
        60_000
    }
}

/// Which failures are retried, how often and how fast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Tries after the first one.
    #[schema(maximum = 10)]
    pub retries: u32,
    /// Longest wait for response headers on one try; `null` uses the
    /// upstream's `read_timeout_ms`.
    #[schema(minimum = 1, maximum = 3600000)]
    pub per_try_timeout_ms: Option<u64>,
    /// Methods that may be retried. Non-idempotent methods are retried only
    /// when listed here.
    pub methods: Vec<String>,
    /// Upstream statuses that cause a retry.
    pub on_statuses: Vec<u16>,
    #[schema(maximum = 60000)]
    pub backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 1,
            per_try_timeout_ms: None,
            methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
                .map(String::from)
                .to_vec(),
            on_statuses: vec![502, 503, 504],
            backoff_ms: 10,
        }
    }
}

/// A service as stored: the spec plus what the system owns.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Service {
    pub id: String,
    #[serde(flatten)]
    pub spec: ServiceSpec,
    pub lifecycle: Lifecycle,
    /// When the service was deprecated (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_at_ms: Option<i64>,
    /// Sunset date (RFC 3339 date or date-time) announced at deprecation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
    /// The release that the current configuration was last published as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_release: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

// ---------------------------------------------------------------- route

/// Values to set and names to remove: for headers or query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Rewrite {
    /// Names set (replacing any value the message had).
    pub set: BTreeMap<String, String>,
    /// Names removed.
    pub remove: Vec<String>,
}

impl Rewrite {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// What a user sets on a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Optional slug, unique within the service; the declarative file uses
    /// it to recognise the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: Option<String>,
    /// Allowed methods; empty allows every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Pattern under the service's base path: `/forecast/{city}`, `/files/*`.
    #[schema(pattern = "^/")]
    pub path: String,
    /// Matches only this `Host` (without port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Removes the service's base path before forwarding.
    #[serde(default = "default_true")]
    pub strip_prefix: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600000)]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Rewrite::is_empty")]
    pub request_headers: Rewrite,
    #[serde(default, skip_serializing_if = "Rewrite::is_empty")]
    pub response_headers: Rewrite,
    /// Query parameters set or removed before forwarding.
    #[serde(default, skip_serializing_if = "Rewrite::is_empty")]
    pub query: Rewrite,
    /// Limits for the route as a whole (all callers together), on top of
    /// each subscription's plan limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::access::RateLimit>,
    /// Keeps the upstream's answers to `GET` and `HEAD` in the gateway's
    /// memory and serves them again until they are `ttl_s` old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
}

/// A route's response cache. Answers are kept per app unless `shared`; a
/// call served from the cache is admitted, limited and charged like any
/// other, only the upstream is not asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// How long an answer is served from the cache, in seconds (an
    /// upstream's `s-maxage` or `max-age` may shorten it, never lengthen
    /// it).
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_s: u32,
    /// The statuses kept; by default those RFC 9110 §15.1 calls
    /// heuristically cacheable (206 aside: ranges are not cached).
    #[serde(default = "default_cache_statuses")]
    pub statuses: Vec<u16>,
    /// One answer for every caller. Off by default: each app has its own,
    /// so an answer that depends on who asked never reaches another app.
    #[serde(default)]
    pub shared: bool,
}

/// Statuses a cache may keep without being told (RFC 9110 §15.1), less
/// 206 (partial content).
pub const CACHEABLE_STATUSES: [u16; 10] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 501];

fn default_cache_statuses() -> Vec<u16> {
    vec![200, 203, 204, 300, 301, 308, 404, 410]
}

/// The longest a route may keep an answer: a day.
pub const CACHE_TTL_S_MAX: u32 = 86_400;

impl CacheSpec {
    fn validate(&self, methods: &[String], errors: &mut FieldErrors) {
        if self.ttl_s == 0 || self.ttl_s > CACHE_TTL_S_MAX {
            errors.add(
                "cache.ttl_s",
                format!("must be between 1 and {CACHE_TTL_S_MAX} (seconds)"),
            );
        }
        if self.statuses.is_empty() {
            errors.add("cache.statuses", "must list at least one status");
        }
        for (index, status) in self.statuses.iter().enumerate() {
            if !CACHEABLE_STATUSES.contains(status) {
                let allowed: Vec<String> = CACHEABLE_STATUSES.iter().map(u16::to_string).collect();
                errors.add(
                    format!("cache.statuses[{index}]"),
                    format!(
                        "{status} cannot be cached; use some of {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
        let reads = methods.is_empty()
            || methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case("GET") || m.eq_ignore_ascii_case("HEAD"));
        if !reads {
            errors.add(
                "cache",
                "caches answers to GET and HEAD, and the route allows neither: add GET to its methods or remove the cache",
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Route {
    pub id: String,
    pub service_id: String,
    #[serde(flatten)]
    pub spec: RouteSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Upstream {
    pub id: String,
    #[serde(flatten)]
    pub spec: UpstreamSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A snapshot of a service and its routes, taken at publish.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Release {
    pub id: String,
    pub service_id: String,
    pub version: i64,
    pub created_at_ms: i64,
    /// What made it: `publish` or `rollback to N`.
    pub note: String,
    pub service: ServiceSpec,
    pub routes: Vec<Route>,
    /// The id of the upstream `service.upstream` named then: a rollback
    /// follows it through renames (releases made before it was kept have
    /// none, and name it by slug only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
}

// ---------------------------------------------------------------- validation

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

pub(crate) fn check_slug(errors: &mut FieldErrors, field: &str, slug: &str) {
    if !crate::id::is_slug(slug) {
        errors.add(field, "must match [a-z0-9][a-z0-9-]{0,62}");
    }
}

/// An object's own slug: a slug that cannot be read as an id, since
/// objects are addressed by either (an id-shaped slug would name another
/// object, or none).
pub(crate) fn check_own_slug(errors: &mut FieldErrors, field: &str, slug: &str) {
    if crate::id::looks_like_id(slug) {
        errors.add(
            field,
            "must not have the shape of an id (objects are addressed by slug or id); choose a name",
        );
    } else {
        check_slug(errors, field, slug);
    }
}

fn check_timeout(errors: &mut FieldErrors, field: &str, value: u64) {
    if value == 0 || value > limits::TIMEOUT_MS_MAX {
        errors.add(
            field,
            format!("must be between 1 and {}", limits::TIMEOUT_MS_MAX),
        );
    }
}

fn check_statuses(errors: &mut FieldErrors, field: &str, statuses: &[u16]) {
    for (index, status) in statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            errors.add(
                format!("{field}[{index}]"),
                "must be an HTTP status (100–599)",
            );
        }
    }
}

fn check_methods(errors: &mut FieldErrors, field: &str, methods: &[String]) {
    if methods.len() > limits::ROUTE_METHODS_MAX {
        errors.add(field, "too many methods");
    }
    for (index, method) in methods.iter().enumerate() {
        if !KNOWN_METHODS.contains(&method.as_str()) {
            errors.add(
                format!("{field}[{index}]"),
                format!("'{method}' is not one of {}", KNOWN_METHODS.join(", ")),
            );
        } else if methods[..index].contains(method) {
            errors.add(
                format!("{field}[{index}]"),
                format!("'{method}' is listed twice"),
            );
        }
    }
}

fn check_header_name(errors: &mut FieldErrors, field: &str, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        errors.add(field, format!("'{name}' is not a valid header name"));
    }
}

/// Headers that frame a message or concern only one connection: the
/// gateway writes them itself, both ways. A rewrite of one could make the
/// upstream read a body differently from the gateway (a second request
/// smuggled inside the first) or send a client a wrong length.
pub const MANAGED_HEADERS: [&str; 10] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a route rewrite may set or remove `name` (see
/// [`MANAGED_HEADERS`]).
pub fn is_rewritable_header(name: &str) -> bool {
    let proxy = name
        .get(..6)
        .is_some_and(|start| start.eq_ignore_ascii_case("proxy-"));
    !proxy
        && !MANAGED_HEADERS
            .iter()
            .any(|managed| managed.eq_ignore_ascii_case(name))
}

fn check_rewritable(errors: &mut FieldErrors, field: &str, name: &str, request: bool) {
    if !is_rewritable_header(name) {
        errors.add(
            field,
            format!(
                "'{name}' cannot be rewritten: the gateway sets the message framing and hop-by-hop headers itself"
            ),
        );
    } else if name.eq_ignore_ascii_case("x-request-id") {
        // The client and the upstream see one id, the one the call log
        // keeps: a rewrite would break that correlation.
        errors.add(
            field,
            format!("'{name}' cannot be rewritten: the gateway sets it, the same for the client, the upstream and the call log"),
        );
    } else if request && name.eq_ignore_ascii_case("host") {
        errors.add(
            field,
            format!("'{name}' cannot be rewritten: the gateway sends the target's host (from the upstream's target URL)"),
        );
    }
}

pub(crate) fn check_text(errors: &mut FieldErrors, field: &str, text: Option<&String>) {
    let Some(text) = text else { return };
    if text.len() > limits::TEXT_MAX {
        errors.add(field, format!("must be at most {} bytes", limits::TEXT_MAX));
    }
    // Shown in lists, logs and the console: no control characters but
    // line breaks and tabs, and no bidirectional overrides, which make a
    // name read as another (U+202A–U+202E, U+2066–U+2069).
    let hidden = |c: char| {
        (c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if let Some(c) = text.chars().find(|&c| hidden(c)) {
        errors.add(
            field,
            format!(
                "must not hold control or text-direction characters (found U+{:04X})",
                u32::from(c)
            ),
        );
    }
}

/// Validates a target URL: `http` or `https`, a host, no query or fragment.
pub fn check_target_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
    // The gateway connects with `http::Uri`, which is stricter than a
    // browser's parser (no spaces, no raw Unicode): refuse here what it
    // could not use, and say how the URL is written for it.
    if url.parse::<http::Uri>().is_err() {
        return Err(format!(
            "cannot be used as written (spaces, control or non-ASCII characters); write it as '{}'",
            parsed.as_str().trim_end_matches('/')
        ));
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must use http or https".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if parsed.port() == Some(0) {
        return Err("has port 0, which nothing listens on; give the target's port".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(parsed)
}

impl RetryPolicy {
    pub fn validate(&self, field: &str, errors: &mut FieldErrors) {
        if self.retries > limits::RETRIES_MAX {
            errors.add(
                format!("{field}.retries"),
                format!("must be at most {}", limits::RETRIES_MAX),
            );
        }
        if let Some(ms) = self.per_try_timeout_ms {
            check_timeout(errors, &format!("{field}.per_try_timeout_ms"), ms);
        }
        check_methods(errors, &format!("{field}.methods"), &self.methods);
        check_statuses(errors, &format!("{field}.on_statuses"), &self.on_statuses);
        if self.backoff_ms > 60_000 {
            errors.add(format!("{field}.backoff_ms"), "must be at most 60000");
        }
    }
}

impl UpstreamSpec {
    /// Checks everything that does not need the store.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_own_slug(&mut errors, "slug", &self.slug);
        if let Some(team) = &self.team {
            check_slug(&mut errors, "team", team);
        }
        if self.targets.len() > limits::TARGETS_PER_UPSTREAM {
            errors.add(
                "targets",
                format!("at most {} targets", limits::TARGETS_PER_UPSTREAM),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (index, target) in self.targets.iter().enumerate() {
            let field = format!("targets[{index}].url");
            match check_target_url(&target.url) {
                Ok(parsed) => {
                    if !seen.insert(parsed.as_str().trim_end_matches('/').to_owned()) {
                        errors.add(field, "appears twice in this upstream");
                    }
                }
                Err(message) => errors.add(field, message),
            }
            if target.weight > limits::TARGET_WEIGHT_MAX {
                errors.add(
                    format!("targets[{index}].weight"),
                    format!("must be between 0 and {}", limits::TARGET_WEIGHT_MAX),
                );
            }
        }
        if self.policy == BalancePolicy::ConsistentHash && self.hash_on == HashOn::Header {
            match &self.hash_header {
                Some(name) => check_header_name(&mut errors, "hash_header", name),
                None => errors.add("hash_header", "is required when hash_on is 'header'"),
            }
        }
        check_timeout(&mut errors, "connect_timeout_ms", self.connect_timeout_ms);
        check_timeout(&mut errors, "read_timeout_ms", self.read_timeout_ms);
        if let Some(name) = &self.tls.server_name
            && (name.is_empty() || name.len() > 253)
        {
            errors.add("tls.server_name", "must be a DNS name");
        }
        if let Some(pem) = &self.tls.ca_pem
            && !pem.contains("-----BEGIN CERTIFICATE-----")
        {
            errors.add("tls.ca_pem", "must hold PEM certificates");
        }
        let active = &self.health_check.active;
        if !active.path.starts_with('/') {
            errors.add("health_check.active.path", "must start with '/'");
        } else if http::uri::PathAndQuery::try_from(active.path.as_str()).is_err() {
            // The checker could never send it: every target would stay up.
            errors.add(
                "health_check.active.path",
                "must be a path as sent (no spaces, control or non-ASCII characters; escape them with %)",
            );
        }
        if active.interval_ms < 100 || active.interval_ms > limits::TIMEOUT_MS_MAX {
            errors.add(
                "health_check.active.interval_ms",
                "must be between 100 and 3600000",
            );
        }
        check_timeout(
            &mut errors,
            "health_check.active.timeout_ms",
            active.timeout_ms,
        );
        if active.healthy_threshold == 0 || active.healthy_threshold > 100 {
            errors.add(
                "health_check.active.healthy_threshold",
                "must be between 1 and 100",
            );
        }
        if active.unhealthy_threshold == 0 || active.unhealthy_threshold > 100 {
            errors.add(
                "health_check.active.unhealthy_threshold",
                "must be between 1 and 100",
            );
        }
        check_statuses(
            &mut errors,
            "health_check.active.healthy_statuses",
            &active.healthy_statuses,
        );
        let passive = &self.health_check.passive;
        if passive.max_failures == 0 || passive.max_failures > 1000 {
            errors.add(
                "health_check.passive.max_failures",
                "must be between 1 and 1000",
            );
        }
        check_timeout(
            &mut errors,
            "health_check.passive.ejection_ms",
            passive.ejection_ms,
        );
        check_statuses(
            &mut errors,
            "health_check.passive.failure_statuses",
            &passive.failure_statuses,
        );
        errors.into_result()
    }
}

impl ServiceSpec {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_own_slug(&mut errors, "slug", &self.slug);
        if let Some(team) = &self.team {
            check_slug(&mut errors, "team", team);
        }
        check_text(&mut errors, "name", self.name.as_ref());
        check_text(&mut errors, "description", self.description.as_ref());
        if let Err(message) = crate::path::validate_base_path(&self.base_path) {
            errors.add("base_path", message);
        }
        if self
            .base_path
            .get(..10)
            .is_some_and(|start| start.eq_ignore_ascii_case("/_tollgate"))
        {
            errors.add(
                "base_path",
                "'/_tollgate' is reserved for the gateway itself",
            );
        } else if self.base_path == "/mcp" {
            errors.add(
                "base_path",
                "'/mcp' is the gateway's MCP endpoint: its own requests would never reach this service",
            );
        }
        match self.kind {
            ServiceKind::Http => {
                if self.upstream.is_none() {
                    errors.add("upstream", "is required for a service of kind 'http'");
                }
            }
            ServiceKind::Ai => match &self.ai {
                Some(ai) => ai.validate(&mut errors),
                None => errors.add("ai", "is required for a service of kind 'ai'"),
            },
            ServiceKind::Prompt => match &self.prompt {
                // The variables' schema is checked by the admin API, which
                // knows the validator.
                Some(prompt) => prompt.validate(&mut errors, &|_| Ok(())),
                None => errors.add("prompt", "is required for a service of kind 'prompt'"),
            },
        }
        if self.kind != ServiceKind::Http && self.openapi.is_some() {
            errors.add(
                "openapi",
                "only services of kind 'http' take a document (prompt services have a generated one)",
            );
        }
        if let Some(doc) = &self.openapi
            && (!doc.is_object() || doc.to_string().len() > 4 << 20)
        {
            errors.add(
                "openapi",
                "must be an OpenAPI document (a JSON object) of at most 4 MiB",
            );
        }
        if let Some(tools) = self.mcp.as_ref().and_then(|m| m.tools.as_ref())
            && (tools.len() > 1000 || tools.iter().any(|t| t.is_empty() || t.len() > 128))
        {
            errors.add(
                "mcp.tools",
                "at most 1000 tool names of 1 to 128 characters",
            );
        }
        if self.kind != ServiceKind::Prompt && self.prompt.is_some() {
            errors.add("prompt", "is only for services of kind 'prompt'");
        }
        if self.kind == ServiceKind::Prompt && self.upstream.is_some() {
            errors.add(
                "upstream",
                "a 'prompt' service calls its model's provider, not an upstream",
            );
        }
        if self.kind != ServiceKind::Ai && self.ai.is_some() {
            errors.add("ai", "is only for services of kind 'ai'");
        }
        if self.kind == ServiceKind::Ai && self.upstream.is_some() {
            errors.add(
                "upstream",
                "an 'ai' service calls its models' providers, not an upstream",
            );
        }
        check_timeout(&mut errors, "timeout_ms", self.timeout_ms);
        self.retry.validate("retry", &mut errors);
        if let Some(limit) = self.request_body_limit_bytes
            && limit > limits::BODY_LIMIT_MAX
        {
            errors.add("request_body_limit_bytes", "is too large");
        }
        self.ip.validate("ip", &mut errors);
        self.auth.validate(&mut errors);
        if let Some(bodies) = &self.log_bodies {
            if !(1..=BodyLogSpec::MAX_BYTES).contains(&bodies.max_bytes) {
                errors.add(
                    "log_bodies.max_bytes",
                    format!("must be from 1 to {}", BodyLogSpec::MAX_BYTES),
                );
            }
            if bodies.redact_fields.len() > 64
                || bodies
                    .redact_fields
                    .iter()
                    .any(|field| field.is_empty() || field.len() > 128)
            {
                errors.add(
                    "log_bodies.redact_fields",
                    "must be at most 64 field names of 1 to 128 characters",
                );
            }
        }
        if let Some(x402) = &self.x402 {
            x402.validate(&mut errors);
        }
        errors.into_result()
    }
}

impl RouteSpec {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        if let Some(name) = &self.name {
            // Routes are addressed by name or id, as other objects by slug.
            check_own_slug(&mut errors, "name", name);
        }
        check_methods(&mut errors, "methods", &self.methods);
        if let Err(message) = crate::path::parse_pattern(&self.path) {
            errors.add("path", message);
        }
        if let Some(host) = &self.host {
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !valid {
                errors.add("host", "must be a host name (letters, digits, '.', '-')");
            } else if let Some(bare) = host.strip_suffix('.') {
                // Requests for `example.com.` are matched as `example.com`:
                // the route is written that way, so that two spellings of
                // one host cannot be two routes.
                errors.add(
                    "host",
                    format!("write the host without its final '.' ('{bare}'); requests for '{host}' match it"),
                );
            } else if host.split('.').any(str::is_empty) {
                errors.add("host", "has an empty label ('..' or a leading '.')");
            }
        }
        if let Some(ms) = self.timeout_ms {
            check_timeout(&mut errors, "timeout_ms", ms);
        }
        if let Some(retry) = &self.retry {
            retry.validate("retry", &mut errors);
        }
        if let Some(limit) = self.request_body_limit_bytes
            && limit > limits::BODY_LIMIT_MAX
        {
            errors.add("request_body_limit_bytes", "is too large");
        }
        for (field, rewrite) in [
            ("request_headers", &self.request_headers),
            ("response_headers", &self.response_headers),
        ] {
            if rewrite.set.len() + rewrite.remove.len() > limits::HEADER_REWRITES_MAX {
                errors.add(field, "too many header rewrites");
            }
            let request = field == "request_headers";
            let mut seen: Vec<&str> = Vec::new();
            for (name, value) in &rewrite.set {
                check_header_name(&mut errors, &format!("{field}.set.{name}"), name);
                check_rewritable(&mut errors, &format!("{field}.set.{name}"), name, request);
                // Header names are case-insensitive: two spellings of one
                // name, or a name both set and removed, leave it unclear
                // which wins.
                if let Some(other) = seen.iter().find(|other| other.eq_ignore_ascii_case(name)) {
                    errors.add(
                        format!("{field}.set.{name}"),
                        format!("'{name}' is set twice (as '{other}' too); header names are case-insensitive"),
                    );
                }
                seen.push(name);
                if rewrite
                    .remove
                    .iter()
                    .any(|removed| removed.eq_ignore_ascii_case(name))
                {
                    errors.add(
                        format!("{field}.set.{name}"),
                        format!("'{name}' is both set and removed; keep one"),
                    );
                }
                if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                    errors.add(
                        format!("{field}.set.{name}"),
                        "value has control characters",
                    );
                }
            }
            for (index, name) in rewrite.remove.iter().enumerate() {
                check_header_name(&mut errors, &format!("{field}.remove[{index}]"), name);
                check_rewritable(
                    &mut errors,
                    &format!("{field}.remove[{index}]"),
                    name,
                    request,
                );
            }
        }
        if self.query.set.len() + self.query.remove.len() > limits::HEADER_REWRITES_MAX {
            errors.add("query", "too many query rewrites");
        }
        let set_names = self
            .query
            .set
            .keys()
            .map(|name| (format!("query.set.{name}"), name));
        let removed_names = (self.query.remove.iter().enumerate())
            .map(|(index, name)| (format!("query.remove[{index}]"), name));
        for (field, name) in set_names.chain(removed_names) {
            if name.is_empty() || name.len() > 256 {
                errors.add(field, "must be 1 to 256 characters");
            }
        }
        for (name, value) in &self.query.set {
            if value.len() > limits::TEXT_MAX || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
                errors.add(format!("query.set.{name}"), "must be printable text");
            }
        }
        crate::access::check_limits(&mut errors, "rate_limits", &self.rate_limits, None);
        if let Some(cache) = &self.cache {
            cache.validate(&self.methods, &mut errors);
        }
        errors.into_result()
    }

    /// The methods this route allows, upper-cased; empty means any.
    pub fn normalised_methods(&self) -> Vec<String> {
        self.methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect()
    }
}

/// Parses a sunset given as a date (`2027-01-31`, meaning midnight UTC) or an
/// RFC 3339 date-time, into epoch seconds.
pub fn parse_sunset(text: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    // A four-digit year first: the parsers below also take a signed one
    // (`+2027-01-01`), which would then be shown as written.
    let bytes = text.as_bytes();
    if !(bytes.len() >= 10 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-') {
        return Err("must be a date (2027-01-31) or an RFC 3339 date-time".to_owned());
    }
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at.unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|date| date.midnight().assume_utc().unix_timestamp())
        .map_err(|_| "must be a date (2027-01-31) or an RFC 3339 date-time".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn texts_refuse_hidden_characters() {
        let check = |text: &str| {
            let mut errors = FieldErrors::new();
            check_text(&mut errors, "name", Some(&text.to_owned()));
            errors.into_result().is_ok()
        };
        assert!(check(
            "Acme Weather\nline two\tand a tab, caf\u{e9} \u{1f468}\u{200d}\u{1f4bb}"
        ));
        for bad in [
            "nul\u{0}",
            "bell\u{7}",
            "evil\u{202e}gnp.exe",
            "\u{2066}isolated",
        ] {
            assert!(!check(bad), "{bad:?}");
        }
    }

    #[test]
    fn sunsets_are_plain_dates_or_date_times() {
        assert_eq!(parse_sunset("2027-01-01").unwrap(), 1_798_761_600);
        assert_eq!(parse_sunset("2027-01-01T00:00:00Z").unwrap(), 1_798_761_600);
        for bad in [
            "+2027-01-01",
            "-2027-01-01",
            "027-01-01",
            "2027-1-1",
            "soon",
            "",
        ] {
            assert!(parse_sunset(bad).is_err(), "{bad}");
        }
    }
}
