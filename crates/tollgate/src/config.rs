//! Process configuration, in two stages (ripgrep's low/high args):
//! [`RawConfig`] is what the user wrote (YAML file, then `TOLLGATE_…`
//! environment overrides on top), checked for unknown keys and types;
//! [`Config`] is the validated result the process runs on. Every problem is
//! reported at once, each naming its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domain::strict::StrictValue;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub public_url: Option<String>,
    pub data_dir: Option<String>,
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub money: RawMoney,
    #[serde(default)]
    pub stripe: RawStripe,
    #[serde(default)]
    pub x402: RawX402,
    #[serde(default)]
    pub usage_export: RawUsageExport,
    #[serde(default)]
    pub calls: RawCalls,
    #[serde(default)]
    pub analytics: RawAnalytics,
    #[serde(default)]
    pub alerts: RawAlerts,
    #[serde(default)]
    pub otel: RawOtel,
    #[serde(default)]
    pub secrets: RawSecrets,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    /// 32 bytes, base64: the key provider keys are sealed under. Without
    /// it one is generated into `<data_dir>/master-key`.
    pub master_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtel {
    /// An OTLP/HTTP collector (`http://127.0.0.1:4318`): one span per call.
    pub endpoint: Option<String>,
    /// `service.name` of the spans (default `tollgate`).
    pub service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// How often alert rules are evaluated.
    pub evaluate_every_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCalls {
    /// Store every call in the call log (default true).
    pub log: Option<bool>,
    /// Days a call stays in the call log.
    pub retention_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalytics {
    /// Days minute rollups are kept.
    pub minute_retention_days: Option<u64>,
    /// Days hour rollups are kept.
    pub hour_retention_days: Option<u64>,
    /// Days day rollups are kept.
    pub day_retention_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsageExport {
    /// An HTTP endpoint taking batches of CloudEvents.
    pub cloudevents_url: Option<String>,
    /// Sent as `Authorization: Bearer` to that endpoint.
    pub cloudevents_token: Option<String>,
    /// The `event_name` of a Stripe meter to report calls to.
    pub stripe_meter: Option<String>,
    /// What each meter event counts: `requests` (1 per call, the default),
    /// `tokens`, `input_tokens` or `output_tokens`.
    pub stripe_meter_value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawX402 {
    /// The facilitator that verifies and settles per-request payments.
    pub facilitator_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStripe {
    /// `sk_live_…` / `sk_test_…`: enables wallet top-ups through Checkout.
    pub secret_key: Option<String>,
    /// `whsec_…`: the webhook endpoint's signing secret.
    pub webhook_secret: Option<String>,
    /// Stripe's API (tests point it at a local fake).
    pub api_base: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMoney {
    /// ISO 4217 code of the deployment's one currency.
    pub currency: Option<String>,
    /// Settled charges queued for the ledger writer before further ones
    /// are aggregated per team.
    pub charge_queue: Option<u64>,
    /// `batched` (default) or `strict`.
    pub durability: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub listen: Option<String>,
    pub request_body_limit_bytes: Option<u64>,
    pub shutdown_timeout_ms: Option<u64>,
    pub retry_buffer_bytes: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub workers: Option<u64>,
    /// Memory for routes' response caches; 0 turns them off.
    pub cache_max_bytes: Option<u64>,
    /// CIDR blocks whose `X-Forwarded-For` is believed: a YAML list, or
    /// one comma-separated string (handy in the environment).
    pub trusted_proxies: Option<StringList>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringList {
    Many(Vec<String>),
    One(String),
}

impl StringList {
    fn items(self) -> Vec<String> {
        match self {
            StringList::Many(items) => items,
            StringList::One(text) => text
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub poll_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub public_url: String,
    pub data_dir: PathBuf,
    pub gateway_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub request_body_limit_bytes: u64,
    pub shutdown_timeout: Duration,
    pub retry_buffer_bytes: u64,
    /// How long a body read whole (AI, MCP, webhooks) may take to arrive.
    pub body_timeout: Duration,
    /// Data plane threads (0 in the file means one per CPU).
    pub gateway_workers: usize,
    /// Memory for routes' response caches (0: off).
    pub cache_max_bytes: u64,
    pub trusted_proxies: Vec<domain::net::Cidr>,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub poll_interval: Duration,
    pub log_level: String,
    pub log_json: bool,
    /// ISO 4217 code (three capital letters), `USD` unless set.
    pub currency: String,
    pub charge_queue: usize,
    /// `money.durability: strict`: a priced call answers once its charge
    /// is committed.
    pub strict_charges: bool,
    pub stripe: Option<StripeConfig>,
    /// x402 facilitator base URL.
    pub x402_facilitator: Option<String>,
    pub usage_export: UsageExportConfig,
    pub calls: crate::calls::CallsConfig,
    pub alerts_every: Duration,
    pub otel: Option<crate::otel::OtelConfig>,
    /// The configured master key (base64), if any.
    pub master_key: Option<String>,
}

/// Where usage events go (both optional).
#[derive(Debug, Clone, Default)]
pub struct UsageExportConfig {
    pub cloudevents_url: Option<String>,
    pub cloudevents_token: Option<String>,
    pub stripe_meter: Option<String>,
    pub stripe_meter_value: crate::export::MeterValue,
}

impl UsageExportConfig {
    pub fn enabled(&self) -> bool {
        self.cloudevents_url.is_some() || self.stripe_meter.is_some()
    }
}

/// Stripe, when both secrets are set.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub secret_key: String,
    pub webhook_secret: String,
    pub api_base: String,
}

/// Every problem found, each naming its key.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Environment variables that are not configuration keys.
const NOT_KEYS: [&str; 1] = ["TOLLGATE_ADMIN_TOKEN"];

/// Command-line overrides, applied last.
#[derive(Debug, Default)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
}

/// Loads the file (when given), applies `TOLLGATE_<SECTION>__<KEY>` from
/// `env`, then the command-line overrides, and validates.
pub fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    overrides: &Overrides,
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let mut tree = match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Value::Object(Default::default()),
            Ok(text) => match serde_norway::from_str::<StrictValue>(&text).map(|v| v.0) {
                Ok(Value::Null) => Value::Object(Default::default()),
                Ok(value @ Value::Object(_)) => value,
                Ok(_) => {
                    problems.push(format!("{}: must be a mapping of sections", path.display()));
                    Value::Object(Default::default())
                }
                Err(error) => {
                    return Err(ConfigErrors(vec![format!("{}: {error}", path.display())]));
                }
            },
            Err(error) => {
                return Err(ConfigErrors(vec![format!(
                    "cannot read {}: {error}",
                    path.display()
                )]));
            }
        },
        None => Value::Object(Default::default()),
    };
    let mut origins = BTreeMap::new();
    // The text of each variable, for a key that takes a string but got a
    // value that reads as a number or boolean (`service_name: 2024`).
    let mut env_texts = BTreeMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("TOLLGATE_") else {
            continue;
        };
        if NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) || path.len() > 2 {
            problems.push(format!(
                "{name}: not a configuration variable (use TOLLGATE_<SECTION>__<KEY>)"
            ));
            continue;
        }
        origins.insert(path.join("."), name.clone());
        env_texts.insert(path.join("."), value.clone());
        set_path(&mut tree, &path, env_value(value));
    }
    if let Some(url) = &overrides.database_url {
        set_path(
            &mut tree,
            &["storage".into(), "database_url".into()],
            Value::String(url.clone()),
        );
    }
    if let Some(url) = &overrides.redis_url {
        set_path(
            &mut tree,
            &["storage".into(), "redis_url".into()],
            Value::String(url.clone()),
        );
    }
    // Each unknown key or value of the wrong type is named, then left out
    // and the rest read again, so that one start lists every problem.
    let raw = loop {
        let error = match serde_path_to_error::deserialize::<_, RawConfig>(tree.clone()) {
            Ok(raw) => break Some(raw),
            Err(error) => error,
        };
        let path = error.path().to_string();
        let message = error.inner().to_string();
        // For an unknown field the path already ends with it.
        let key = match message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split_once('`'))
        {
            Some((field, _)) if path == "." => field.to_owned(),
            Some((field, _)) if path == field || path.ends_with(&format!(".{field}")) => path,
            Some((field, _)) => format!("{path}.{field}"),
            None => path,
        };
        let from = origins
            .get(&key)
            .map(|name| format!(" (from {name})"))
            .unwrap_or_default();
        // An environment value is text: where a string is expected it is
        // one, even when it reads as a number.
        if message.starts_with("invalid type:")
            && message.ends_with("expected a string")
            && let Some(text) = env_texts.remove(&key)
        {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            set_path(&mut tree, &path, Value::String(text));
            continue;
        }
        let message = if message.starts_with("unknown field") {
            "unknown key".to_owned()
        } else {
            message
        };
        problems.push(format!("{key}{from}: {message}"));
        if problems.len() >= MAX_PROBLEMS || !remove_path(&mut tree, &key) {
            break None;
        }
    };
    let Some(raw) = raw else {
        return Err(ConfigErrors(problems));
    };
    let config = validate(raw, &mut problems);
    // Name the variable a bad value came from, as for type errors.
    for problem in &mut problems {
        // A list item's variable is the list's (`trusted_proxies[1]`).
        if let Some((key, message)) = problem.split_once(": ")
            && let Some(name) = origins.get(key.split_once('[').map_or(key, |(list, _)| list))
        {
            *problem = format!("{key} (from {name}): {message}");
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(problems))
    }
}

/// Environment values are strings; numbers and booleans are read as such.
fn env_value(text: &str) -> Value {
    if let Ok(number) = text.parse::<u64>() {
        return Value::from(number);
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(text.to_owned()),
    }
}

/// Problems listed at most (the rest would repeat a broken file's story).
const MAX_PROBLEMS: usize = 50;

/// Removes `key` (`section.key`; a list item's whole list) from `tree`;
/// false when it is not there (nothing more can be left out).
fn remove_path(tree: &mut Value, key: &str) -> bool {
    let mut parts: Vec<&str> = key
        .split('.')
        .map(|part| part.split_once('[').map_or(part, |(name, _)| name))
        .collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut node = tree;
    for part in parts {
        match node.get_mut(part) {
            Some(next) => node = next,
            None => return false,
        }
    }
    node.as_object_mut()
        .is_some_and(|map| map.remove(last).is_some())
}

fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let mut node = tree;
    for (index, key) in path.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let Value::Object(map) = node else {
            return;
        };
        if index + 1 == path.len() {
            map.insert(key.clone(), value);
            return;
        }
        node = map
            .entry(key.clone())
            .or_insert(Value::Object(Default::default()));
    }
}

fn validate(raw: RawConfig, problems: &mut Vec<String>) -> Config {
    let mut listen = |key: &str, value: Option<String>, default: &str| -> SocketAddr {
        let text = value.unwrap_or_else(|| default.to_owned());
        text.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "{key}: '{text}' is not an address (IP:PORT, like 127.0.0.1:8080)"
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let gateway_listen = listen("gateway.listen", raw.gateway.listen, "0.0.0.0:8080");
    let admin_listen = listen("admin.listen", raw.admin.listen, "127.0.0.1:9080");

    let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| "./tollgate-data".into()));
    if data_dir.as_os_str().is_empty() {
        problems.push("data_dir: must not be empty".into());
    }
    let public_url = raw
        .public_url
        .unwrap_or_else(|| format!("http://localhost:{}", gateway_listen.port()));
    if !(public_url.starts_with("http://") || public_url.starts_with("https://"))
        || public_url.contains(' ')
    {
        problems.push(format!(
            "public_url: '{public_url}' must be an http:// or https:// URL"
        ));
    }
    let database_url = raw
        .storage
        .database_url
        .unwrap_or_else(|| format!("sqlite://{}/tollgate.db", data_dir.display()));
    if !["sqlite://", "postgres://", "postgresql://"]
        .iter()
        .any(|p| database_url.starts_with(p))
    {
        problems.push(format!(
            "storage.database_url: '{database_url}' must start with sqlite:// or postgres://"
        ));
    }
    if let Some(url) = &raw.storage.redis_url
        && !(url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        problems.push(format!(
            "storage.redis_url: '{url}' must start with redis:// or rediss://"
        ));
    }
    let currency = raw.money.currency.unwrap_or_else(|| "USD".into());
    if !domain::money::is_currency(&currency) {
        problems.push(format!(
            "money.currency: '{currency}' is not an ISO 4217 currency code; give one in capital letters, like USD or EUR"
        ));
    }
    if let Some(url) = &raw.x402.facilitator_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        problems.push(format!(
            "x402.facilitator_url: '{url}' must be an http:// or https:// URL"
        ));
    }
    if let Some(url) = &raw.usage_export.cloudevents_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        problems.push(format!(
            "usage_export.cloudevents_url: '{url}' must be an http:// or https:// URL"
        ));
    }
    if let Some(meter) = &raw.usage_export.stripe_meter {
        if raw.stripe.secret_key.is_none() {
            problems.push(
                "usage_export.stripe_meter: needs stripe.secret_key (meter events go to Stripe)"
                    .into(),
            );
        }
        if meter.is_empty() || meter.len() > 100 {
            problems.push("usage_export.stripe_meter: must be a meter's event name".into());
        }
    }
    let stripe_meter_value = match raw.usage_export.stripe_meter_value.as_deref() {
        None => crate::export::MeterValue::Requests,
        Some(text) => crate::export::MeterValue::parse(text).unwrap_or_else(|| {
            problems.push(format!(
                "usage_export.stripe_meter_value: '{text}' is not one of requests, tokens, \
                 input_tokens, output_tokens"
            ));
            crate::export::MeterValue::Requests
        }),
    };
    let strict_charges = match raw.money.durability.as_deref() {
        None | Some("batched") => false,
        Some("strict") => true,
        Some(other) => {
            problems.push(format!(
                "money.durability: '{other}' must be batched (default: charges committed in batches within about 50 ms) or strict (a call answers once its charge is committed)"
            ));
            false
        }
    };
    let stripe = match (raw.stripe.secret_key, raw.stripe.webhook_secret) {
        (Some(secret_key), Some(webhook_secret)) => {
            let api_base = raw
                .stripe
                .api_base
                .unwrap_or_else(|| "https://api.stripe.com".into());
            if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
                problems.push(format!(
                    "stripe.api_base: '{api_base}' must be an http:// or https:// URL"
                ));
            }
            if !secret_key.starts_with("sk_") && !secret_key.starts_with("rk_") {
                problems.push(
                    "stripe.secret_key: must be a Stripe secret or restricted key (sk_… or rk_…)"
                        .into(),
                );
            }
            if !webhook_secret.starts_with("whsec_") {
                problems.push(
                    "stripe.webhook_secret: must be the endpoint's signing secret (whsec_…)".into(),
                );
            }
            Some(StripeConfig {
                secret_key,
                webhook_secret,
                api_base,
            })
        }
        (None, None) => None,
        (Some(_), None) => {
            problems.push("stripe.webhook_secret: required with stripe.secret_key (top-ups are credited by the signed webhook)".into());
            None
        }
        (None, Some(_)) => {
            problems.push("stripe.secret_key: required with stripe.webhook_secret".into());
            None
        }
    };
    if let Some(key) = &raw.secrets.master_key
        && store::secrets::MasterKey::from_base64(key).is_err()
    {
        problems.push(
            "secrets.master_key: must be 32 random bytes in base64 (openssl rand -base64 32)"
                .into(),
        );
    }
    let otel = match raw.otel.endpoint {
        Some(endpoint) => {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                problems.push(format!(
                    "otel.endpoint: '{endpoint}' must be an http:// or https:// URL (OTLP/HTTP)"
                ));
            }
            Some(crate::otel::OtelConfig {
                endpoint,
                service_name: raw.otel.service_name.unwrap_or_else(|| "tollgate".into()),
            })
        }
        None => {
            if raw.otel.service_name.is_some() {
                problems.push("otel.service_name: needs otel.endpoint".into());
            }
            None
        }
    };
    let mut positive = |key: &str, value: Option<u64>, default: u64, max: u64| -> u64 {
        let value = value.unwrap_or(default);
        if value == 0 || value > max {
            problems.push(format!("{key}: must be between 1 and {max}"));
        }
        value
    };
    let charge_queue = positive(
        "money.charge_queue",
        raw.money.charge_queue,
        100_000,
        10_000_000,
    );
    let request_body_limit_bytes = positive(
        "gateway.request_body_limit_bytes",
        raw.gateway.request_body_limit_bytes,
        10 << 20,
        1 << 34,
    );
    let shutdown_timeout_ms = positive(
        "gateway.shutdown_timeout_ms",
        raw.gateway.shutdown_timeout_ms,
        10_000,
        600_000,
    );
    let retry_buffer_bytes = positive(
        "gateway.retry_buffer_bytes",
        raw.gateway.retry_buffer_bytes,
        64 << 10,
        16 << 20,
    );
    let body_timeout_ms = positive(
        "gateway.body_timeout_ms",
        raw.gateway.body_timeout_ms,
        60_000,
        3_600_000,
    );
    let poll_interval_ms = positive(
        "storage.poll_interval_ms",
        raw.storage.poll_interval_ms,
        250,
        60_000,
    );
    let calls = crate::calls::CallsConfig {
        log: raw.calls.log.unwrap_or(true),
        retention_days: positive("calls.retention_days", raw.calls.retention_days, 7, 3650),
        minute_retention_days: positive(
            "analytics.minute_retention_days",
            raw.analytics.minute_retention_days,
            30,
            3650,
        ),
        hour_retention_days: positive(
            "analytics.hour_retention_days",
            raw.analytics.hour_retention_days,
            365,
            36500,
        ),
        day_retention_days: positive(
            "analytics.day_retention_days",
            raw.analytics.day_retention_days,
            1095,
            36500,
        ),
    };
    let alerts_every_ms = positive(
        "alerts.evaluate_every_ms",
        raw.alerts.evaluate_every_ms,
        2_000,
        3_600_000,
    );
    let log_level = raw
        .log
        .level
        .unwrap_or_else(|| "info".into())
        .to_ascii_lowercase();
    if !["trace", "debug", "info", "warn", "error"].contains(&log_level.as_str()) {
        problems.push(format!(
            "log.level: '{log_level}' must be one of trace, debug, info, warn, error"
        ));
    }
    let log_format = raw.log.format.unwrap_or_else(|| "json".into());
    if !["json", "text"].contains(&log_format.as_str()) {
        problems.push(format!("log.format: '{log_format}' must be json or text"));
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let gateway_workers = match raw.gateway.workers {
        None | Some(0) => cpus,
        Some(n) if n <= 256 => n as usize,
        Some(_) => {
            problems.push("gateway.workers: must be between 0 (one per CPU) and 256".into());
            1
        }
    };
    let cache_max_bytes = raw.gateway.cache_max_bytes.unwrap_or(64 << 20);
    if cache_max_bytes != 0 && !(1 << 16..=1 << 36).contains(&cache_max_bytes) {
        problems.push(format!(
            "gateway.cache_max_bytes: must be between {} (64 KiB) and {} (64 GiB), or 0 to turn the response cache off",
            1u64 << 16,
            1u64 << 36
        ));
    }
    let mut trusted_proxies = Vec::new();
    for (index, text) in raw
        .gateway
        .trusted_proxies
        .map(StringList::items)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match domain::net::Cidr::parse_exact(&text) {
            Ok(cidr) => trusted_proxies.push(cidr),
            Err(message) => problems.push(format!("gateway.trusted_proxies[{index}]: {message}")),
        }
    }
    Config {
        public_url: public_url.trim_end_matches('/').to_owned(),
        trusted_proxies,
        data_dir,
        gateway_listen,
        admin_listen,
        request_body_limit_bytes,
        shutdown_timeout: Duration::from_millis(shutdown_timeout_ms),
        retry_buffer_bytes,
        body_timeout: Duration::from_millis(body_timeout_ms),
        gateway_workers,
        cache_max_bytes,
        database_url,
        redis_url: raw.storage.redis_url,
        poll_interval: Duration::from_millis(poll_interval_ms),
        log_level,
        log_json: log_format == "json",
        currency,
        charge_queue: charge_queue as usize,
        strict_charges,
        stripe,
        x402_facilitator: raw.x402.facilitator_url,
        usage_export: UsageExportConfig {
            cloudevents_url: raw.usage_export.cloudevents_url,
            cloudevents_token: raw.usage_export.cloudevents_token,
            stripe_meter: raw.usage_export.stripe_meter,
            stripe_meter_value,
        },
        calls,
        alerts_every: Duration::from_millis(alerts_every_ms),
        otel,
        master_key: raw.secrets.master_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn problems(file: &str, pairs: &[(&str, &str)]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, file).unwrap();
        load(Some(&path), &env(pairs), &Overrides::default())
            .unwrap_err()
            .0
    }

    #[test]
    fn defaults() {
        let config = load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config.gateway_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9080");
        assert_eq!(config.database_url, "sqlite://./tollgate-data/tollgate.db");
        assert_eq!(config.public_url, "http://localhost:8080");
    }

    #[test]
    fn env_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(
            &path,
            "gateway:\n  listen: 127.0.0.1:1111\nlog:\n  level: debug\n",
        )
        .unwrap();
        let config = load(
            Some(&path),
            &env(&[
                ("TOLLGATE_GATEWAY__LISTEN", "127.0.0.1:2222"),
                ("TOLLGATE_DATA_DIR", "/tmp/x"),
                ("TOLLGATE_ADMIN_TOKEN", "ignored-here"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.gateway_listen.to_string(), "127.0.0.1:2222");
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.database_url, "sqlite:///tmp/x/tollgate.db");
    }

    #[test]
    fn environment_values_are_text_where_text_is_expected() {
        let config = load(
            None,
            &env(&[
                ("TOLLGATE_OTEL__ENDPOINT", "http://127.0.0.1:4318"),
                ("TOLLGATE_OTEL__SERVICE_NAME", "2024"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.otel.unwrap().service_name, "2024");
        // A port alone where an address goes: told as such, not as a type.
        assert_eq!(
            problems("", &[("TOLLGATE_ADMIN__LISTEN", "29380")]),
            vec![
                "admin.listen (from TOLLGATE_ADMIN__LISTEN): '29380' is not an address (IP:PORT, like 127.0.0.1:8080)"
            ]
        );
        // A list item's problem names the list's variable.
        let found = problems(
            "",
            &[("TOLLGATE_GATEWAY__TRUSTED_PROXIES", "10.0.0.0/8,bogus")],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "gateway.trusted_proxies[1] (from TOLLGATE_GATEWAY__TRUSTED_PROXIES): "
            ),
            "{found:?}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        assert_eq!(
            problems("gateway:\n  lisen: 1\n", &[]),
            vec!["gateway.lisen: unknown key"]
        );
        assert_eq!(problems("bogus: 1\n", &[]), vec!["bogus: unknown key"]);
        assert_eq!(
            problems("", &[("TOLLGATE_ADMIN__PORT", "1")]),
            vec!["admin.port (from TOLLGATE_ADMIN__PORT): unknown key"]
        );
        // Every one at once, with the values of the wrong type and those
        // out of range.
        let found = problems(
            "gateway:\n  lisen: 1\n  request_body_limit_bytes: lots\n  listen: nowhere\nbogus: 1\nlog:\n  levle: info\n",
            &[("TOLLGATE_ADMIN__PORT", "1")],
        );
        assert_eq!(found.len(), 6, "{found:?}");
        for expected in [
            "gateway.lisen: unknown key",
            "bogus: unknown key",
            "log.levle: unknown key",
            "admin.port (from TOLLGATE_ADMIN__PORT): unknown key",
        ] {
            assert!(found.iter().any(|p| p == expected), "{expected}: {found:?}");
        }
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("gateway.request_body_limit_bytes: invalid type")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("gateway.listen:")),
            "{found:?}"
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let found = problems(
            "gateway:\n  listen: nowhere\nlog:\n  level: loud\nstorage:\n  database_url: mysql://x\n",
            &[],
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("gateway.listen:"));
        assert!(found.iter().any(|p| p.starts_with("log.level:")));
        assert!(found.iter().any(|p| p.starts_with("storage.database_url:")));
        let typed = problems("gateway:\n  request_body_limit_bytes: lots\n", &[]);
        assert!(
            typed[0].starts_with("gateway.request_body_limit_bytes:"),
            "{typed:?}"
        );
    }

    #[test]
    fn the_response_cache_has_a_floor_or_is_off() {
        for (value, refused) in [("0", false), ("1", true), ("65535", true), ("65536", false)] {
            let pairs = [("TOLLGATE_GATEWAY__CACHE_MAX_BYTES", value)];
            let loaded = load(None, &env(&pairs), &Overrides::default());
            match loaded {
                Ok(config) => {
                    assert!(!refused, "{value} accepted");
                    assert_eq!(config.cache_max_bytes.to_string(), value);
                }
                Err(problems) => {
                    assert!(refused, "{value}: {:?}", problems.0);
                    assert!(
                        problems.0[0].starts_with(
                            "gateway.cache_max_bytes (from TOLLGATE_GATEWAY__CACHE_MAX_BYTES): must be between 65536"
                        ),
                        "{:?}",
                        problems.0
                    );
                }
            }
        }
        assert_eq!(
            load(None, &env(&[]), &Overrides::default())
                .unwrap()
                .cache_max_bytes,
            64 << 20
        );
    }

    #[test]
    fn a_meter_counts_what_it_is_told() {
        let found = problems("usage_export:\n  stripe_meter_value: bytes\n", &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("usage_export.stripe_meter_value: 'bytes'"),
            "{found:?}"
        );
        let config = load(
            None,
            &env(&[("TOLLGATE_USAGE_EXPORT__STRIPE_METER_VALUE", "output_tokens")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            config.usage_export.stripe_meter_value,
            crate::export::MeterValue::OutputTokens
        );
    }

    #[test]
    fn stripe_needs_both_secrets_of_the_right_kinds() {
        let found = problems("stripe:\n  secret_key: sk_test_1\n", &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("stripe.webhook_secret:"), "{found:?}");
        let found = problems(
            "stripe:\n  secret_key: pk_test_1\n  webhook_secret: secret\n  api_base: ftp://x\n",
            &[],
        );
        assert_eq!(found.len(), 3, "{found:?}");
        let config = load(
            None,
            &env(&[
                ("TOLLGATE_STRIPE__SECRET_KEY", "sk_test_1"),
                ("TOLLGATE_STRIPE__WEBHOOK_SECRET", "whsec_1"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        let stripe = config.stripe.unwrap();
        assert_eq!(stripe.api_base, "https://api.stripe.com");
    }
}
