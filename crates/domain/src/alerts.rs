//! Alert rules (SPEC §2): a metric watched over a window against a
//! threshold; crossing it fires the team's webhooks with `alert.firing`,
//! and falling back resolves it with `alert.resolved`.

use serde::{Deserialize, Serialize};

use crate::model::{check_own_slug, check_slug, check_text};
use crate::validate::FieldErrors;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// 402 answers in the window; threshold: a count.
    #[serde(rename = "refusals_402")]
    Refusals402,
    /// Share of answers with status 500–599 in the window; threshold: a
    /// fraction from 0 to 1.
    #[serde(rename = "error_rate_5xx")]
    ErrorRate5xx,
    /// 95th percentile of call latency in the window; threshold:
    /// milliseconds.
    LatencyP95,
    /// A wallet's spendable balance below the threshold (a decimal amount,
    /// as a string); one subject per team.
    LowBalance,
    /// An active subscription whose period ends within the threshold
    /// (days) and will not renew; one subject per subscription.
    SubscriptionExpiring,
    /// An upstream target that takes no traffic (unhealthy or ejected);
    /// one subject per target; no threshold.
    UpstreamDown,
}

impl AlertMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertMetric::Refusals402 => "refusals_402",
            AlertMetric::ErrorRate5xx => "error_rate_5xx",
            AlertMetric::LatencyP95 => "latency_p95",
            AlertMetric::LowBalance => "low_balance",
            AlertMetric::SubscriptionExpiring => "subscription_expiring",
            AlertMetric::UpstreamDown => "upstream_down",
        }
    }

    /// Whether the metric is computed from the calls of a window.
    pub fn uses_window(self) -> bool {
        matches!(
            self,
            AlertMetric::Refusals402 | AlertMetric::ErrorRate5xx | AlertMetric::LatencyP95
        )
    }
}

/// Bounds of a rule's window.
pub const WINDOW_SECONDS_MIN: u32 = 10;
pub const WINDOW_SECONDS_MAX: u32 = 3_600;

/// A rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleSpec {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub slug: String,
    /// The team whose calls, wallet, subscriptions or upstreams are
    /// watched, and whose webhooks hear of it. Optional when the caller
    /// is an admin of exactly one team.
    #[serde(default)]
    pub team: String,
    pub metric: AlertMetric,
    /// Counts, fractions and milliseconds as numbers; `low_balance` takes
    /// a decimal amount as a string. `upstream_down` takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = threshold_schema)]
    pub threshold: Option<serde_json::Value>,
    /// For call metrics: the window, in seconds (10 to 3600; default 300).
    #[serde(default = "default_window")]
    pub window_seconds: u32,
    /// Only calls to this service (a slug of the team's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Watch calls made by the team's apps (`consumer`) instead of calls
    /// to its services (`provider`, the default).
    #[serde(default, skip_serializing_if = "is_false")]
    pub as_consumer: bool,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_window() -> u32 {
    300
}

fn default_true() -> bool {
    true
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A threshold, read for the rule's metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Count(u64),
    Fraction(f64),
    Millis(f64),
    Nanos(i64),
    Days(u64),
    None,
}

impl AlertRuleSpec {
    /// The threshold for the metric, or what is wrong with it.
    pub fn threshold(&self) -> Result<Threshold, String> {
        let value = self.threshold.as_ref();
        match self.metric {
            AlertMetric::Refusals402 => value
                .and_then(serde_json::Value::as_u64)
                .filter(|n| *n >= 1)
                .map(Threshold::Count)
                .ok_or_else(|| "must be a whole number of 402 answers, at least 1".into()),
            AlertMetric::ErrorRate5xx => value
                .and_then(serde_json::Value::as_f64)
                .filter(|f| *f > 0.0 && *f <= 1.0)
                .map(Threshold::Fraction)
                .ok_or_else(|| "must be a fraction above 0 and at most 1 (0.05 is 5 %)".into()),
            AlertMetric::LatencyP95 => value
                .and_then(serde_json::Value::as_f64)
                .filter(|f| *f > 0.0 && *f <= 3_600_000.0)
                .map(Threshold::Millis)
                .ok_or_else(|| "must be a number of milliseconds above 0".into()),
            AlertMetric::LowBalance => value
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| "must be a decimal amount as a string, like \"5.00\"".to_owned())
                .and_then(|text| {
                    crate::money::parse(text, crate::money::Sign::Positive)
                        .map_err(|e| e.to_string())
                })
                .map(Threshold::Nanos),
            AlertMetric::SubscriptionExpiring => value
                .and_then(serde_json::Value::as_u64)
                .filter(|n| (1..=366).contains(n))
                .map(Threshold::Days)
                .ok_or_else(|| "must be a whole number of days from 1 to 366".into()),
            AlertMetric::UpstreamDown => match value {
                None => Ok(Threshold::None),
                Some(_) => Err("upstream_down takes no threshold".into()),
            },
        }
    }

    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_own_slug(&mut errors, "slug", &self.slug);
        if self.team.is_empty() {
            errors.add(
                "team",
                "is required: name the team whose calls or money the rule watches",
            );
        } else {
            check_slug(&mut errors, "team", &self.team);
        }
        check_text(&mut errors, "description", self.description.as_ref());
        if let Some(service) = &self.service {
            check_slug(&mut errors, "service", service);
        }
        if let Err(message) = self.threshold() {
            errors.add("threshold", message);
        }
        if !(WINDOW_SECONDS_MIN..=WINDOW_SECONDS_MAX).contains(&self.window_seconds) {
            errors.add(
                "window_seconds",
                format!("must be from {WINDOW_SECONDS_MIN} to {WINDOW_SECONDS_MAX}"),
            );
        }
        errors.into_result()
    }
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertRule {
    pub id: String,
    #[serde(flatten)]
    pub spec: AlertRuleSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Where one subject of a rule stands (a rule over calls has one subject,
/// `calls`; others one per team, subscription or target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertState {
    pub subject: String,
    pub firing: bool,
    /// The value that last changed the state, as text.
    pub value: String,
    pub changed_at_ms: i64,
}

/// The webhook event of a rule's subject starting or ending to fire:
/// its type (`alert.firing` or `alert.resolved`) and payload.
pub fn event(
    rule: &AlertRule,
    (subject, firing, value): (&str, bool, &str),
    details: serde_json::Value,
    now_ms: i64,
) -> (&'static str, String) {
    let event = if firing {
        "alert.firing"
    } else {
        "alert.resolved"
    };
    let payload = serde_json::json!({
        "id": crate::id::new_id(),
        "type": event,
        "created_at": crate::access::format_time_ms(now_ms),
        "data": {
            "alert": {"id": rule.id, "slug": rule.spec.slug, "metric": rule.spec.metric.as_str(),
                "threshold": rule.spec.threshold, "window_seconds": rule.spec.window_seconds,
                "service": rule.spec.service, "description": rule.spec.description},
            "team": rule.spec.team,
            "subject": subject,
            "state": if firing { "firing" } else { "resolved" },
            "value": value,
            "details": details,
        },
    });
    (event, payload.to_string())
}

/// The document's schema of a rule's `threshold`: a number, or a decimal
/// amount as a string (`low_balance`).
fn threshold_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metric: &str, threshold: serde_json::Value) -> Result<(), FieldErrors> {
        let spec: AlertRuleSpec = serde_json::from_value(serde_json::json!({
            "slug": "r", "team": "t", "metric": metric, "threshold": threshold
        }))
        .map_err(|error| {
            let mut errors = FieldErrors::new();
            errors.add("", error.to_string());
            errors
        })?;
        spec.validate()
    }

    #[test]
    fn thresholds_are_checked_per_metric() {
        assert_eq!(spec("refusals_402", serde_json::json!(5)), Ok(()));
        assert!(spec("refusals_402", serde_json::json!(0)).is_err());
        assert!(spec("refusals_402", serde_json::json!(1.5)).is_err());
        assert!(spec("error_rate_5xx", serde_json::json!(0.05)).is_ok());
        assert!(spec("error_rate_5xx", serde_json::json!(5)).is_err());
        assert!(spec("latency_p95", serde_json::json!(250)).is_ok());
        assert!(spec("low_balance", serde_json::json!("5.00")).is_ok());
        assert!(spec("low_balance", serde_json::json!(5)).is_err());
        assert!(spec("low_balance", serde_json::json!("0.0000000001")).is_err());
        assert!(spec("subscription_expiring", serde_json::json!(3)).is_ok());
        assert!(spec("upstream_down", serde_json::Value::Null).is_ok());
        assert!(spec("upstream_down", serde_json::json!(1)).is_err());
    }
}
