//! Observability endpoints: the call log (`/api/v1/logs`), analytics from
//! the rollups (`/api/v1/analytics/summary`, `/api/v1/analytics/timeseries`)
//! and Prometheus metrics (`/metrics`).
//!
//! Tenants see their own calls only: calls by their apps (as consumer) and
//! calls to their services (as provider). Times are RFC 3339 or epoch
//! milliseconds; analytics ranges are rounded out to whole minutes.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::calls::{CallEntry, latency_quantile};
use serde::Serialize;
use std::collections::BTreeMap;
use store::{
    CallFilter, CallRow, Granularity, GroupBy, Page, RollupQuery, RollupSlot, RollupValues,
};

use crate::AdminState;
use crate::access::Caller;
use crate::error::ApiError;
use crate::extract::ListParams;
use crate::handlers::{ListResponse, ok};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Points a timeseries answers at most, per group.
pub const MAX_POINTS: i64 = 1_440;
/// Rows one CSV or NDJSON export holds at most (then `Tollgate-Next-Cursor`).
pub const EXPORT_MAX_ROWS: usize = 100_000;

/// A call, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallView {
    pub id: String,
    pub request_id: String,
    /// RFC 3339.
    pub time: String,
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    pub status: u16,
    /// The refusal code (SPEC §4); null for an answered call.
    pub code: Option<String>,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_ip: String,
    /// The calling app's team.
    pub consumer_team: Option<String>,
    pub app: Option<String>,
    pub key_prefix: Option<String>,
    pub subscription_id: Option<String>,
    pub plan: Option<String>,
    /// The service's team.
    pub provider_team: Option<String>,
    pub service: Option<String>,
    pub route_id: Option<String>,
    pub upstream_target: Option<String>,
    /// What the call was charged (decimal string).
    pub cost: String,
    pub currency: String,
    /// A refusal's problem details, as sent to the caller.
    #[schema(value_type = Option<Object>)]
    pub problem: Option<serde_json::Value>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub ttft_ms: Option<f64>,
    /// The response body was sent to its end.
    pub completed: bool,
    /// Headers and bodies (services with `log_bodies`; single calls only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bodies: Option<BodiesView>,
}

/// What a service that logs bodies kept of a call.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BodiesView {
    pub request_headers: String,
    /// The first `max_bytes`, secrets redacted; null when empty.
    pub request_body: Option<String>,
    /// The whole body's length.
    pub request_bytes: u64,
    pub response_headers: String,
    pub response_body: Option<String>,
    pub response_bytes: u64,
}

use domain::calls::millis;

/// A call as `visible` may see it. The consuming team's wallet balance
/// (in a 402's problem, in `Tollgate-Balance`) is shown only to that team;
/// the upstream target (an internal address) only to the providing team.
pub fn call_view(row: CallRow, currency: &str, visible: &store::Visible) -> CallView {
    let CallRow { id, mut entry } = row;
    if !visible.includes(entry.consumer_team.as_deref()) {
        hide_balance(&mut entry);
    }
    if !visible.includes(entry.provider_team.as_deref()) {
        entry.upstream_target = None;
    }
    let CallEntry {
        request_id,
        at_ms,
        method,
        host,
        path,
        status,
        code,
        latency_us,
        upstream_latency_us,
        upstream_body_us: _,
        bytes_in,
        bytes_out,
        client_ip,
        consumer_team,
        app,
        key_prefix,
        subscription_id,
        plan,
        provider_team,
        service,
        route_id,
        upstream_target,
        cost_nanos,
        problem,
        provider,
        model,
        input_tokens,
        output_tokens,
        ttft_us,
        completed,
        bodies,
        http_route: _,
        trace: _,
    } = entry;
    CallView {
        id,
        request_id,
        time: domain::access::format_time_ms_fixed(at_ms),
        method,
        host,
        path,
        status,
        code,
        latency_ms: millis(latency_us),
        upstream_latency_ms: upstream_latency_us.map(millis),
        bytes_in,
        bytes_out,
        client_ip,
        consumer_team,
        app,
        key_prefix,
        subscription_id,
        plan,
        provider_team,
        service,
        route_id,
        upstream_target,
        cost: domain::money::format(cost_nanos),
        currency: currency.to_owned(),
        problem: problem.and_then(|text| serde_json::from_str(&text).ok()),
        provider,
        model,
        input_tokens,
        output_tokens,
        ttft_ms: ttft_us.map(millis),
        completed,
        bodies: bodies.map(|b| BodiesView {
            request_headers: b.request_headers,
            request_body: b.request_body,
            request_bytes: b.request_bytes,
            response_headers: b.response_headers,
            response_body: b.response_body,
            response_bytes: b.response_bytes,
        }),
    }
}

/// What a provider reads in place of a refusal's words about the
/// consumer's wallet.
const WALLET_WITHHELD: &str = "The consuming team's wallet could not pay for this call (its balance is shown only to that team).";

/// Removes the consumer's balance from a refusal (SPEC §4's problem, or an
/// AI dialect's envelope around it): the `balance` member, and the
/// sentences that state it (`detail`, `error.message`). Returns whether
/// there was one.
fn withhold_balance(value: &mut serde_json::Value) -> bool {
    let Some(object) = value.as_object_mut() else {
        return false;
    };
    if object.remove("balance").is_none() {
        return false;
    }
    if object.contains_key("detail") {
        object.insert("detail".into(), WALLET_WITHHELD.into());
    }
    if let Some(error) = object.get_mut("error").and_then(|e| e.as_object_mut())
        && error.contains_key("message")
    {
        error.insert("message".into(), WALLET_WITHHELD.into());
    }
    true
}

fn hide_balance(entry: &mut CallEntry) {
    if let Some(problem) = &entry.problem
        && let Ok(mut value) = serde_json::from_str::<serde_json::Value>(problem)
        && withhold_balance(&mut value)
    {
        entry.problem = Some(value.to_string());
    }
    if let Some(bodies) = entry.bodies.as_mut() {
        // A logged refusal body is the same problem.
        if let Some(body) = &bodies.response_body
            && let Ok(mut value) = serde_json::from_str::<serde_json::Value>(body)
            && withhold_balance(&mut value)
        {
            bodies.response_body = Some(value.to_string());
        }
        bodies.response_headers = bodies
            .response_headers
            .lines()
            .filter(|line| !line.starts_with("tollgate-balance:"))
            .map(|line| format!("{line}\n"))
            .collect();
    }
}

/// One call, with its headers and bodies when its service logs them.
#[utoipa::path(get, path = "/api/v1/logs/{id}", tag = "observability",
    params(("id" = String, Path, description = "the call's id (its request id only when the gateway minted that)")),
    responses((status = 200, body = CallView), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_log(
    State(state): State<AdminState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let call = state
        .store
        .call(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("call", &id))?;
    let visible = caller.visible();
    if !visible.includes(call.entry.consumer_team.as_deref())
        && !visible.includes(call.entry.provider_team.as_deref())
    {
        return Err(ApiError::not_found("call", &id));
    }
    Ok(ok(&call_view(call, &state.currency, &visible)))
}

/// `name` as a time (RFC 3339 or epoch milliseconds), if given.
pub(crate) fn time_param(params: &ListParams, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .filter(name)
        .map(|text| {
            let ms = match text.parse::<i64>() {
                Ok(ms) => ms,
                Err(_) => domain::access::parse_time_ms(text).map_err(|_| {
                    ApiError::field(name, "must be an RFC 3339 time or epoch milliseconds")
                })?,
            };
            if !(0..=MAX_TIME_MS).contains(&ms) {
                return Err(ApiError::field(
                    name,
                    "must be between 1970 and the year 6429 (epoch milliseconds below 2^47)",
                ));
            }
            Ok(ms)
        })
        .transpose()
}

/// The latest time a range may name (call ids hold 48 bits of time; this
/// leaves room for range arithmetic).
const MAX_TIME_MS: i64 = 1 << 47;

/// The call log, newest first.
#[utoipa::path(get, path = "/api/v1/logs", tag = "observability",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "RFC 3339 or epoch ms (inclusive)"),
        ("to" = Option<String>, Query, description = "RFC 3339 or epoch ms (exclusive)"),
        ("team" = Option<String>, Query, description = "calls by this team's apps or to its services"),
        ("app" = Option<String>, Query), ("key_prefix" = Option<String>, Query),
        ("service" = Option<String>, Query), ("route" = Option<String>, Query, description = "route id"),
        ("status" = Option<u16>, Query, minimum = 100, maximum = 599, description = "HTTP status, 100–599"),
        ("code" = Option<String>, Query, description = "refusal code"),
        ("model" = Option<String>, Query), ("request_id" = Option<String>, Query),
        ("format" = Option<String>, Query, description = "json (default), csv or ndjson; csv and ndjson export every match (up to 100,000 rows), or `limit` rows when it is given")),
    responses((status = 200, description = "a page (json), or every match as CSV (RFC 4180, a header row) or NDJSON (one CallView per line)",
            content((ListResponse<CallView> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, body = crate::openapi::Problem)))]
pub async fn list_logs(
    State(state): State<AdminState>,
    caller: Caller,
    mut params: ListParams,
) -> Result<Response, ApiError> {
    ids_as_slugs(&state, &mut params).await?;
    params.only(&[
        "from",
        "to",
        "team",
        "app",
        "key_prefix",
        "service",
        "route",
        "status",
        "code",
        "model",
        "request_id",
        "format",
    ])?;
    let status = params
        .filter("status")
        .map(|text| {
            text.parse::<u16>()
                .ok()
                .filter(|s| (100..=599).contains(s))
                .map(i64::from)
                .ok_or_else(|| ApiError::field("status", "must be an HTTP status from 100 to 599"))
        })
        .transpose()?;
    if let Some(code) = params.filter("code")
        && domain::code::Code::parse(code).is_none()
    {
        return Err(ApiError::field(
            "code",
            "is not a refusal code (see GET /_tollgate/problems for the list)",
        ));
    }
    let (from_ms, to_ms) = (time_param(&params, "from")?, time_param(&params, "to")?);
    if let (Some(from), Some(to)) = (from_ms, to_ms)
        && from >= to
    {
        return Err(ApiError::field("from", "must be before 'to'"));
    }
    let format = match params.filter("format") {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some("ndjson") => Format::Ndjson,
        Some(_) => return Err(ApiError::field("format", "must be json, csv or ndjson")),
    };
    let filter = CallFilter {
        from_ms,
        to_ms,
        team: params.filter("team"),
        app: params.filter("app"),
        key_prefix: params.filter("key_prefix"),
        service: params.filter("service"),
        route_id: params.filter("route"),
        status,
        code: params.filter("code"),
        model: params.filter("model"),
        request_id: params.filter("request_id"),
    };
    let visible = caller.visible();
    if format == Format::Json {
        let page = state
            .store
            .calls(&visible, &filter, params.after.as_deref(), params.limit)
            .await?;
        let page = Page {
            items: page
                .items
                .into_iter()
                .map(|row| call_view(row, &state.currency, &visible))
                .collect(),
            next_after: page.next_after,
        };
        return Ok(ok(&ListResponse::from(page)));
    }
    // An export: `limit` rows when given (the next page's cursor in
    // `Tollgate-Next-Cursor`), else every match, page by page, up to the
    // cap.
    let mut rows = Vec::new();
    let mut after = params.after.clone();
    if params.limit_given {
        let page = state
            .store
            .calls(&visible, &filter, after.as_deref(), params.limit)
            .await?;
        rows.extend(
            page.items
                .into_iter()
                .map(|row| call_view(row, &state.currency, &visible)),
        );
        return Ok(export(format, &rows, page.next_after.as_deref()));
    }
    let next = loop {
        let page = state
            .store
            .calls(
                &visible,
                &filter,
                after.as_deref(),
                crate::extract::LIMIT_MAX,
            )
            .await?;
        rows.extend(
            page.items
                .into_iter()
                .map(|row| call_view(row, &state.currency, &visible)),
        );
        match page.next_after {
            Some(next) if rows.len() < EXPORT_MAX_ROWS => after = Some(next),
            next => break next,
        }
    };
    Ok(export(format, &rows, next.as_deref()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Ndjson,
}

/// One field of a CSV line (RFC 4180).
///
/// A cell that a spreadsheet would read as a formula (`=`, `+`, `-`, `@`,
/// tab or carriage return first) gets a leading `'`: hosts, paths and
/// reasons come from callers.
pub(crate) fn csv_field(out: &mut String, value: &str) {
    let guarded;
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) && !is_plain_number(value) {
        guarded = format!("'{value}");
        guarded.as_str()
    } else {
        value
    };
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// Whether a spreadsheet reads `value` as a plain decimal number (an
/// optional sign, digits, at most one point, an optional exponent), not
/// `-nan`, `-Infinity` or `-1-2`, which it reads as formulas.
fn is_plain_number(value: &str) -> bool {
    let digits = value.trim_start_matches(['+', '-']);
    let (mantissa, exponent) = match digits.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (digits, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    value.len() - digits.len() <= 1
        && !(whole.is_empty() && fraction.is_empty())
        && whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
        && exponent.is_none_or(|exponent| {
            let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            !exponent.is_empty() && exponent.chars().all(|c| c.is_ascii_digit())
        })
}

/// A text response of `content_type`; the cursor to continue with, if
/// any, in `Tollgate-Next-Cursor`.
pub(crate) fn text_response(
    body: String,
    content_type: &'static str,
    next: Option<&str>,
) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(next) = next
        .map(crate::extract::encode_cursor)
        .and_then(|cursor| HeaderValue::from_str(&cursor).ok())
    {
        response.headers_mut().insert("tollgate-next-cursor", next);
    }
    response
}

fn export(format: Format, rows: &[CallView], next: Option<&str>) -> Response {
    let mut out = String::new();
    if format == Format::Ndjson {
        for row in rows {
            if let Ok(line) = serde_json::to_string(row) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        return text_response(out, "application/x-ndjson", next);
    }
    const COLUMNS: [&str; 31] = [
        "id",
        "request_id",
        "time",
        "method",
        "host",
        "path",
        "status",
        "code",
        "latency_ms",
        "upstream_latency_ms",
        "bytes_in",
        "bytes_out",
        "client_ip",
        "consumer_team",
        "app",
        "key_prefix",
        "provider_team",
        "service",
        "route_id",
        "upstream_target",
        "cost",
        "currency",
        "model",
        "input_tokens",
        "output_tokens",
        "subscription_id",
        "plan",
        "provider",
        "ttft_ms",
        "completed",
        "problem",
    ];
    out.push_str(&COLUMNS.join(","));
    out.push_str("\r\n");
    let none = String::new();
    for row in rows {
        let cells: [String; 31] = [
            row.id.clone(),
            row.request_id.clone(),
            row.time.clone(),
            row.method.clone(),
            row.host.clone().unwrap_or_default(),
            row.path.clone(),
            row.status.to_string(),
            row.code.clone().unwrap_or_default(),
            row.latency_ms.to_string(),
            row.upstream_latency_ms
                .map_or_else(String::new, |ms| ms.to_string()),
            row.bytes_in.to_string(),
            row.bytes_out.to_string(),
            row.client_ip.clone(),
            row.consumer_team.clone().unwrap_or_default(),
            row.app.clone().unwrap_or_default(),
            row.key_prefix.clone().unwrap_or_default(),
            row.provider_team.clone().unwrap_or_default(),
            row.service.clone().unwrap_or_default(),
            row.route_id.clone().unwrap_or_default(),
            row.upstream_target.clone().unwrap_or_default(),
            row.cost.clone(),
            row.currency.clone(),
            row.model.clone().unwrap_or_else(|| none.clone()),
            row.input_tokens.to_string(),
            row.output_tokens.to_string(),
            row.subscription_id.clone().unwrap_or_default(),
            row.plan.clone().unwrap_or_default(),
            row.provider.clone().unwrap_or_default(),
            row.ttft_ms.map_or_else(String::new, |ms| ms.to_string()),
            row.completed.to_string(),
            // The refusal's problem document, as JSON text.
            row.problem
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
        ];
        for (index, cell) in cells.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            csv_field(&mut out, cell);
        }
        out.push_str("\r\n");
    }
    text_response(out, "text/csv; charset=utf-8", next)
}

// -------------------------------------------------------------- analytics

/// What analytics answer for a range (and group).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Figures {
    pub requests: i64,
    /// Answers with status 400–499 and 500–599 (refusals included).
    pub errors_4xx: i64,
    pub errors_5xx: i64,
    /// Refusals (SPEC §4) by code.
    pub refusals: BTreeMap<String, i64>,
    /// Estimated from latency buckets (see docs/observability.md).
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub latency_ms_avg: Option<f64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// What the calls were charged (decimal string).
    pub revenue: String,
}

#[derive(Default, Clone)]
struct Sums {
    values: RollupValues,
    errors_4xx: i64,
    errors_5xx: i64,
    refusals: BTreeMap<String, i64>,
}

impl Sums {
    fn add(&mut self, slot: &RollupSlot) {
        self.values.merge(&slot.values);
        match slot.status {
            400..=499 => self.errors_4xx += slot.values.requests,
            500..=599 => self.errors_5xx += slot.values.requests,
            _ => {}
        }
        if !slot.code.is_empty() {
            *self.refusals.entry(slot.code.clone()).or_default() += slot.values.requests;
        }
    }

    fn quantile_ms(&self, quantile: f64) -> Option<f64> {
        latency_quantile(&self.values.latency_buckets, quantile).map(|us| us as f64 / 1000.0)
    }

    fn figures(&self) -> Figures {
        let v = &self.values;
        Figures {
            requests: v.requests,
            errors_4xx: self.errors_4xx,
            errors_5xx: self.errors_5xx,
            refusals: self.refusals.clone(),
            latency_ms_p50: self.quantile_ms(0.50),
            latency_ms_p95: self.quantile_ms(0.95),
            latency_ms_p99: self.quantile_ms(0.99),
            latency_ms_avg: (v.requests > 0)
                .then(|| v.latency_sum_us as f64 / v.requests as f64 / 1000.0),
            bytes_in: v.bytes_in,
            bytes_out: v.bytes_out,
            input_tokens: v.input_tokens,
            output_tokens: v.output_tokens,
            revenue: domain::money::format(v.cost_nanos),
        }
    }

    fn metric(&self, metric: Metric) -> f64 {
        let v = &self.values;
        match metric {
            Metric::Requests => v.requests as f64,
            Metric::Errors => (self.errors_4xx + self.errors_5xx) as f64,
            Metric::Errors4xx => self.errors_4xx as f64,
            Metric::Errors5xx => self.errors_5xx as f64,
            Metric::Refusals => self.refusals.values().sum::<i64>() as f64,
            Metric::LatencyP50 => self.quantile_ms(0.50).unwrap_or(0.0),
            Metric::LatencyP95 => self.quantile_ms(0.95).unwrap_or(0.0),
            Metric::LatencyP99 => self.quantile_ms(0.99).unwrap_or(0.0),
            Metric::Tokens => (v.input_tokens + v.output_tokens) as f64,
            Metric::Revenue => v.cost_nanos as f64 / 1e9,
            Metric::BytesIn => v.bytes_in as f64,
            Metric::BytesOut => v.bytes_out as f64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Requests,
    Errors,
    Errors4xx,
    Errors5xx,
    Refusals,
    LatencyP50,
    LatencyP95,
    LatencyP99,
    Tokens,
    Revenue,
    BytesIn,
    BytesOut,
}

impl Metric {
    /// The metric needs the latency histogram.
    fn latency(self) -> bool {
        matches!(
            self,
            Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99
        )
    }

    /// The rollup figures the metric is made of (`requests`, with the
    /// statuses and codes, always).
    fn figures(self) -> store::Figures {
        store::Figures::Only(match self {
            Metric::Requests
            | Metric::Errors
            | Metric::Errors4xx
            | Metric::Errors5xx
            | Metric::Refusals
            | Metric::LatencyP50
            | Metric::LatencyP95
            | Metric::LatencyP99 => &[],
            Metric::Tokens => &["input_tokens", "output_tokens"],
            Metric::Revenue => &["cost_nanos"],
            Metric::BytesIn => &["bytes_in"],
            Metric::BytesOut => &["bytes_out"],
        })
    }
}

const METRICS: [(&str, Metric); 12] = [
    ("requests", Metric::Requests),
    ("errors", Metric::Errors),
    ("errors_4xx", Metric::Errors4xx),
    ("errors_5xx", Metric::Errors5xx),
    ("refusals", Metric::Refusals),
    ("latency_p50", Metric::LatencyP50),
    ("latency_p95", Metric::LatencyP95),
    ("latency_p99", Metric::LatencyP99),
    ("tokens", Metric::Tokens),
    ("revenue", Metric::Revenue),
    ("bytes_in", Metric::BytesIn),
    ("bytes_out", Metric::BytesOut),
];

const INTERVALS: [(&str, i64); 7] = [
    ("1m", MINUTE_MS),
    ("5m", 5 * MINUTE_MS),
    ("15m", 15 * MINUTE_MS),
    ("1h", HOUR_MS),
    ("6h", 6 * HOUR_MS),
    ("1d", DAY_MS),
    ("7d", 7 * DAY_MS),
];

/// The range, filters and grouping common to both analytics endpoints.
struct Question {
    from_ms: i64,
    to_ms: i64,
    group_by: Option<GroupBy>,
    group_name: Option<String>,
}

fn question(params: &ListParams, default_span_ms: i64) -> Result<Question, ApiError> {
    // By default the range ends with the current minute.
    let now = domain::now_ms();
    let to_ms = time_param(params, "to")?
        .unwrap_or_else(|| (now + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS);
    let from_ms = time_param(params, "from")?.unwrap_or(to_ms - default_span_ms);
    if from_ms >= to_ms {
        return Err(ApiError::field(
            "from",
            format!(
                "must be before 'to' (the range is inverted or empty: from {} to {})",
                domain::access::format_time_ms(from_ms),
                domain::access::format_time_ms(to_ms)
            ),
        ));
    }
    let group_name = params.filter("group_by").map(str::to_owned);
    let group_by = group_name
        .as_deref()
        .map(|text| {
            GroupBy::parse(text).ok_or_else(|| {
                ApiError::field(
                    "group_by",
                    "must be one of service, app, team, model, status, code",
                )
            })
        })
        .transpose()?;
    // Whole minutes: from rounded down, to rounded up.
    let from_ms = from_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
    let to_ms = (to_ms + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS;
    Ok(Question {
        from_ms,
        to_ms,
        group_by,
        group_name,
    })
}

/// Objects are addressed by slug or id (SPEC §9), and the call log and
/// its rollups keep slugs: a `team`, `app` or `service` filter given as an
/// id is read as that object's slug. The caller's fence still applies to
/// what the filter then finds.
async fn ids_as_slugs(state: &AdminState, params: &mut ListParams) -> Result<(), ApiError> {
    for (key, value) in &mut params.filters {
        if !domain::id::looks_like_id(value) {
            continue;
        }
        let slug = match key.as_str() {
            "team" => state.store.team(value).await?.map(|team| team.spec.slug),
            "app" => state.store.app(value).await?.map(|app| app.spec.slug),
            "service" => state
                .store
                .service(value)
                .await?
                .map(|service| service.spec.slug),
            _ => None,
        };
        if let Some(slug) = slug {
            *value = slug;
        }
    }
    Ok(())
}

fn rollup_query<'a>(
    params: &'a ListParams,
    visible: &'a store::Visible,
    q: &Question,
    (granularity, latency, figures): (Granularity, bool, store::Figures),
    (from_ms, to_ms, interval_ms): (i64, i64, i64),
) -> RollupQuery<'a> {
    RollupQuery {
        granularity,
        from_ms,
        to_ms,
        interval_ms,
        group_by: q.group_by,
        visible,
        service: params.filter("service"),
        app: params.filter("app"),
        team: params.filter("team"),
        latency,
        figures,
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupFigures {
    /// The group's value (service slug, app slug, team slug, model, status
    /// or code); empty for calls without one.
    pub group: String,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub from: String,
    pub to: String,
    pub currency: String,
    #[serde(flatten)]
    pub total: Figures,
    pub group_by: Option<String>,
    /// One entry per group, when `group_by` is given.
    pub groups: Vec<GroupFigures>,
}

/// `[from_ms, to_ms)` (whole minutes) as the fewest rollup rows: whole UTC
/// days from the day rollups, the whole hours around them from the hour
/// rollups, the minutes at the edges from the minute rollups. Empty pieces
/// are left out.
fn pieces(from_ms: i64, to_ms: i64) -> Vec<(Granularity, i64, i64)> {
    let ceil = |at: i64, size: i64| (at + size - 1).div_euclid(size) * size;
    let floor = |at: i64, size: i64| at.div_euclid(size) * size;
    let (first_hour, last_hour) = (ceil(from_ms, HOUR_MS), floor(to_ms, HOUR_MS));
    if first_hour >= last_hour {
        return vec![(Granularity::Minute, from_ms, to_ms)];
    }
    let (first_day, last_day) = (ceil(first_hour, DAY_MS), floor(last_hour, DAY_MS));
    let middle = if first_day < last_day {
        vec![
            (Granularity::Hour, first_hour, first_day),
            (Granularity::Day, first_day, last_day),
            (Granularity::Hour, last_day, last_hour),
        ]
    } else {
        vec![(Granularity::Hour, first_hour, last_hour)]
    };
    std::iter::once((Granularity::Minute, from_ms, first_hour))
        .chain(middle)
        .chain(std::iter::once((Granularity::Minute, last_hour, to_ms)))
        .filter(|(_, from, to)| from < to)
        .collect()
}

/// Totals over a range (default: the last 24 hours), optionally per
/// group. Whole days are read from the day rollups, whole hours from the
/// hour rollups, the edges from the minute rollups, so the counts are
/// exact to the minute.
#[utoipa::path(get, path = "/api/v1/analytics/summary", tag = "observability",
    params(("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("group_by" = Option<String>, Query, description = "service, app, team, model, status or code"),
        ("service" = Option<String>, Query), ("app" = Option<String>, Query), ("team" = Option<String>, Query)),
    responses((status = 200, body = Summary), (status = 400, body = crate::openapi::Problem)))]
pub async fn summary(
    State(state): State<AdminState>,
    caller: Caller,
    mut params: ListParams,
) -> Result<Response, ApiError> {
    ids_as_slugs(&state, &mut params).await?;
    params.only_unpaged(&["from", "to", "group_by", "service", "app", "team"])?;
    let q = question(&params, DAY_MS)?;
    let visible = caller.visible();
    let mut total = Sums::default();
    let mut groups: BTreeMap<String, Sums> = BTreeMap::new();
    for (granularity, from_ms, to_ms) in pieces(q.from_ms, q.to_ms) {
        let query = rollup_query(
            &params,
            &visible,
            &q,
            (granularity, true, store::Figures::All),
            (from_ms, to_ms, to_ms - from_ms),
        );
        for slot in state.store.rollups(&query).await? {
            total.add(&slot);
            if q.group_by.is_some() {
                groups.entry(slot.group.clone()).or_default().add(&slot);
            }
        }
    }
    Ok(ok(&Summary {
        from: domain::access::format_time_ms(q.from_ms),
        to: domain::access::format_time_ms(q.to_ms),
        currency: state.currency.to_string(),
        total: total.figures(),
        group_by: q.group_name,
        groups: groups
            .into_iter()
            .map(|(group, sums)| GroupFigures {
                group,
                figures: sums.figures(),
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// The slot's start (RFC 3339).
    pub t: String,
    pub value: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Series {
    /// The group's value; empty when not grouped.
    pub group: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timeseries {
    pub metric: String,
    pub interval: String,
    pub from: String,
    pub to: String,
    pub group_by: Option<String>,
    /// `revenue` is in this currency; latencies in milliseconds.
    pub currency: String,
    pub series: Vec<Series>,
}

/// One metric per slot of `interval` (default 1m; the last hour by
/// default), optionally one series per group. Slots without calls are 0.
#[utoipa::path(get, path = "/api/v1/analytics/timeseries", tag = "observability",
    params(("metric" = String, Query, description = "requests, errors, errors_4xx, errors_5xx, refusals, latency_p50, latency_p95, latency_p99, tokens, revenue, bytes_in, bytes_out"),
        ("interval" = Option<String>, Query, description = "1m (default), 5m, 15m, 1h, 6h, 1d or 7d"),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("group_by" = Option<String>, Query), ("service" = Option<String>, Query),
        ("app" = Option<String>, Query), ("team" = Option<String>, Query)),
    responses((status = 200, body = Timeseries), (status = 400, body = crate::openapi::Problem)))]
pub async fn timeseries(
    State(state): State<AdminState>,
    caller: Caller,
    mut params: ListParams,
) -> Result<Response, ApiError> {
    ids_as_slugs(&state, &mut params).await?;
    params.only_unpaged(&[
        "metric", "interval", "from", "to", "group_by", "service", "app", "team",
    ])?;
    let metric_name = params
        .filter("metric")
        .ok_or_else(|| ApiError::field("metric", "is required"))?;
    let metric = METRICS
        .iter()
        .find(|(name, _)| *name == metric_name)
        .map(|(_, metric)| *metric)
        .ok_or_else(|| {
            ApiError::field(
                "metric",
                format!(
                    "must be one of {}",
                    METRICS.map(|(name, _)| name).join(", ")
                ),
            )
        })?;
    let interval_name = params.filter("interval").unwrap_or("1m");
    let interval_ms = INTERVALS
        .iter()
        .find(|(name, _)| *name == interval_name)
        .map(|(_, ms)| *ms)
        .ok_or_else(|| {
            ApiError::field(
                "interval",
                format!(
                    "must be one of {}",
                    INTERVALS.map(|(name, _)| name).join(", ")
                ),
            )
        })?;
    let mut q = question(&params, HOUR_MS)?;
    // Slots start at multiples of the interval since the epoch; weeks on
    // Mondays (the epoch was a Thursday), as ISO weeks do.
    let origin = if interval_ms == 7 * DAY_MS {
        4 * DAY_MS
    } else {
        0
    };
    q.from_ms = (q.from_ms - origin).div_euclid(interval_ms) * interval_ms + origin;
    q.to_ms = (q.to_ms - origin + interval_ms - 1).div_euclid(interval_ms) * interval_ms + origin;
    let points = (q.to_ms - q.from_ms) / interval_ms;
    if points > MAX_POINTS {
        return Err(ApiError::field(
            "interval",
            format!(
                "{interval_name} over this range makes {points} points; at most {MAX_POINTS} are answered: use a longer interval or a shorter range"
            ),
        ));
    }
    let granularity = if interval_ms % DAY_MS == 0 {
        Granularity::Day
    } else if interval_ms % HOUR_MS == 0 {
        Granularity::Hour
    } else {
        Granularity::Minute
    };
    let visible = caller.visible();
    let query = rollup_query(
        &params,
        &visible,
        &q,
        (granularity, metric.latency(), metric.figures()),
        (q.from_ms, q.to_ms, interval_ms),
    );
    let slots = state.store.rollups(&query).await?;
    let count = usize::try_from(points).unwrap_or(0);
    let mut by_group: BTreeMap<String, Vec<Sums>> = BTreeMap::new();
    if q.group_by.is_none() {
        by_group.insert(String::new(), vec![Sums::default(); count]);
    }
    for slot in &slots {
        let index = usize::try_from((slot.start_ms - q.from_ms) / interval_ms).unwrap_or(0);
        let series = by_group
            .entry(slot.group.clone())
            .or_insert_with(|| vec![Sums::default(); count]);
        if let Some(sums) = series.get_mut(index) {
            sums.add(slot);
        }
    }
    let series = by_group
        .into_iter()
        .map(|(group, slots)| Series {
            group,
            points: slots
                .iter()
                .enumerate()
                .map(|(index, sums)| Point {
                    t: domain::access::format_time_ms(q.from_ms + index as i64 * interval_ms),
                    value: sums.metric(metric),
                })
                .collect(),
        })
        .collect();
    Ok(ok(&Timeseries {
        metric: metric_name.to_owned(),
        interval: interval_name.to_owned(),
        from: domain::access::format_time_ms(q.from_ms),
        to: domain::access::format_time_ms(q.to_ms),
        group_by: q.group_name,
        currency: state.currency.to_string(),
        series,
    }))
}

/// Prometheus metrics (text format 0.0.4), for platform admins (the root
/// token or a superadmin's token as `Authorization: Bearer`): they name
/// every team's services and balances.
pub async fn metrics(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require_platform()?;
    let body = (state.metrics)();
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::{DAY_MS, Granularity, HOUR_MS, csv_field, pieces, withhold_balance};

    /// A 402 in an AI dialect keeps its envelope; the balance goes from the
    /// problem's members and from both messages that state it.
    #[test]
    fn the_balance_is_withheld_from_every_place_it_is_stated() {
        let mut value = serde_json::json!({
            "error": {"code": "insufficient_credit", "message": "team beta has 0.0002 USD left to spend"},
            "code": "insufficient_credit",
            "detail": "team beta has 0.0002 USD left to spend",
            "balance": "0.0002",
            "required": "0.01",
        });
        assert!(withhold_balance(&mut value));
        let text = value.to_string();
        assert!(!text.contains("0.0002"), "{text}");
        assert_eq!(value["required"], "0.01");
        assert_eq!(value["error"]["code"], "insufficient_credit");
        let mut other = serde_json::json!({"code": "rate_limited", "detail": "slow down"});
        assert!(!withhold_balance(&mut other));
        assert_eq!(other["detail"], "slow down");
    }

    /// Pieces cover the range exactly, each aligned to its granularity,
    /// with the coarsest rollups in the middle.
    #[test]
    fn ranges_are_read_from_the_coarsest_rollups_that_fit() {
        const MINUTE: i64 = 60_000;
        let day = 20_000 * DAY_MS;
        let cases = [
            // (from, to, granularities in order)
            (
                day + 5 * MINUTE,
                day + 50 * MINUTE,
                vec![Granularity::Minute],
            ),
            (day, day + 3 * HOUR_MS, vec![Granularity::Hour]),
            (
                day + 17 * MINUTE,
                day + 30 * DAY_MS - 23 * MINUTE,
                vec![
                    Granularity::Minute,
                    Granularity::Hour,
                    Granularity::Day,
                    Granularity::Hour,
                    Granularity::Minute,
                ],
            ),
            (day, day + 30 * DAY_MS, vec![Granularity::Day]),
            (
                day + 2 * HOUR_MS,
                day + DAY_MS + HOUR_MS,
                vec![Granularity::Hour],
            ),
            (
                day - 3 * MINUTE,
                day + 2 * DAY_MS,
                vec![Granularity::Minute, Granularity::Day],
            ),
        ];
        for (from, to, expected) in cases {
            let parts = pieces(from, to);
            let kinds: Vec<Granularity> = parts.iter().map(|(g, _, _)| *g).collect();
            assert_eq!(kinds, expected, "{from}..{to}: {parts:?}");
            assert_eq!(parts.first().unwrap().1, from);
            assert_eq!(parts.last().unwrap().2, to);
            for pair in parts.windows(2) {
                assert_eq!(pair[0].2, pair[1].1, "contiguous: {parts:?}");
            }
            for (granularity, start, end) in &parts {
                assert!(start < end);
                assert_eq!(start % granularity.millis(), 0, "{parts:?}");
                assert_eq!(end % granularity.millis(), 0, "{parts:?}");
            }
        }
    }

    fn cell(value: &str) -> String {
        let mut out = String::new();
        csv_field(&mut out, value);
        out
    }

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("-12.5"), "-12.5", "numbers stay numbers");
        assert_eq!(cell("-cmd"), "'-cmd");
        for number in ["-1", "+2.5", "-.5", "-3e7", "-1.5E-3"] {
            assert_eq!(cell(number), number, "numbers stay numbers");
        }
        for text in [
            "-nan",
            "-Infinity",
            "-inf",
            "-1-2",
            "--1",
            "-",
            "-1e",
            "-.",
            "+1.2.3",
        ] {
            assert_eq!(cell(text), format!("'{text}"), "{text} is not a number");
        }
    }
}
