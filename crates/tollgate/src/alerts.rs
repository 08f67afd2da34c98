//! The alert evaluator: every `alerts.evaluate_every_ms` it reads the alert
//! rules, works out each rule's subjects and whether they cross the
//! threshold, and compares that with the stored state. A subject that
//! starts (or stops) crossing is moved to firing (or resolved) in the
//! shared `alert_states` table; only the node whose conditional update
//! changed it queues `alert.firing` (or `alert.resolved`) for the team's
//! webhooks, in the same transaction. So a rule announces each transition
//! once: never again while it keeps firing, whatever the number of nodes.
//!
//! Call metrics (402s, 5xx rate, p95 latency) are read from this node's
//! window of recent calls ([`Metrics::recent`]); with several nodes each
//! judges the calls it served, under a subject of its own
//! (`calls@<host>:<port>`), so nodes never resolve each other's alerts.
//! Wallets, subscriptions and upstream health come from the gateway's
//! state, which every node shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::alerts::{AlertMetric, AlertRule, Threshold};
use gateway::Gateway;
use serde_json::{Value, json};
use store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, RecentKey};

/// The subject of a rule over calls: this node's calls.
fn calls_subject(node: &str) -> String {
    format!("calls@{node}")
}

/// This node's name in call subjects: host name and gateway port, stable
/// across restarts.
pub fn node_name(gateway_port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{gateway_port}")
}

/// One subject of a rule, as evaluated now.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub subject: String,
    pub firing: bool,
    /// The measured value, as shown in the state and the event.
    pub value: String,
    pub details: Value,
}

/// Evaluates `rule` now.
pub fn evaluate(
    rule: &AlertRule,
    metrics: &Metrics,
    gateway: &Gateway,
    (currency, node): (&str, &str),
    now_ms: i64,
) -> Vec<Verdict> {
    let spec = &rule.spec;
    let Ok(threshold) = spec.threshold() else {
        return Vec::new();
    };
    if spec.metric.uses_window() {
        // Whole seconds: the window's seconds before the current one, plus
        // the current one so far, so no call of the last `window_seconds`
        // seconds is left out.
        let since_s = now_ms.div_euclid(1000) - i64::from(spec.window_seconds);
        let wanted = |(provider, consumer, service): &RecentKey| {
            let team = if spec.as_consumer { consumer } else { provider };
            team == &spec.team && spec.service.as_ref().is_none_or(|s| s == service)
        };
        let counts = metrics.recent(since_s, wanted);
        let (firing, value) = match (spec.metric, threshold) {
            (AlertMetric::Refusals402, Threshold::Count(limit)) => {
                (counts.status_402 >= limit, counts.status_402.to_string())
            }
            (AlertMetric::ErrorRate5xx, Threshold::Fraction(limit)) => {
                let rate = if counts.requests == 0 {
                    0.0
                } else {
                    counts.status_5xx as f64 / counts.requests as f64
                };
                (counts.requests > 0 && rate >= limit, format!("{rate:.4}"))
            }
            (AlertMetric::LatencyP95, Threshold::Millis(limit)) => {
                let p95_ms = counts
                    .latency_quantile(0.95)
                    .map_or(0.0, |us| us as f64 / 1000.0);
                (p95_ms >= limit, format!("{p95_ms:.3}"))
            }
            _ => return Vec::new(),
        };
        return vec![Verdict {
            subject: calls_subject(node),
            firing,
            value,
            details: json!({"window_seconds": spec.window_seconds, "requests": counts.requests,
                "status_402": counts.status_402, "status_5xx": counts.status_5xx}),
        }];
    }
    match (spec.metric, threshold) {
        (AlertMetric::LowBalance, Threshold::Nanos(limit)) => gateway
            .wallet_balances()
            .into_iter()
            .filter(|(team, _)| **team == *spec.team)
            .map(|(team, nanos)| Verdict {
                subject: team.to_string(),
                firing: nanos < limit,
                value: domain::money::format(nanos),
                details: json!({"team": &*team, "balance": domain::money::format(nanos),
                    "currency": currency}),
            })
            .collect(),
        (AlertMetric::SubscriptionExpiring, Threshold::Days(days)) => {
            let within_ms = i64::try_from(days).unwrap_or(366) * 86_400_000;
            gateway
                .ending_subscriptions(&spec.team, now_ms, within_ms)
                .into_iter()
                .map(|(id, service, end)| Verdict {
                    subject: id.clone(),
                    firing: true,
                    value: domain::access::format_time_ms(end),
                    details: json!({"subscription": id, "service": service,
                        "period_end": domain::access::format_time_ms(end)}),
                })
                .collect()
        }
        (AlertMetric::UpstreamDown, Threshold::None) => gateway
            .target_health()
            .into_iter()
            .filter(|health| health.team.as_deref() == Some(spec.team.as_str()))
            .map(|health| Verdict {
                subject: format!("{} {}", health.upstream, health.target),
                firing: !health.up,
                value: if health.up { "up" } else { "down" }.to_owned(),
                details: json!({"upstream": health.upstream, "target": health.target}),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One round: every enabled rule evaluated; transitions stored and
/// announced.
///
/// `watching_since_ms`: when this node began to count calls. Until it has
/// watched a whole window, a rule over its calls cannot tell that a
/// condition ended (its window holds only the calls since it started):
/// what it had firing stays firing until then, so a restart announces no
/// resolution that nothing happened to cause.
pub async fn check(
    store: &Store,
    metrics: &Metrics,
    gateway: &Gateway,
    (currency, node): (&str, &str),
    watching_since_ms: i64,
) -> store::Result<usize> {
    let own_calls = calls_subject(node);
    let now = domain::now_ms();
    let mut announced = 0;
    for rule in store.all_alerts().await? {
        let stored: HashMap<String, bool> = store
            .alert_states(&rule.id)
            .await?
            .into_iter()
            .map(|state| (state.subject, state.firing))
            .collect();
        let enabled = rule.spec.enabled;
        if !enabled && !stored.values().any(|firing| *firing) {
            continue;
        }
        // A disabled rule judges nothing: what it had firing resolves.
        let mut verdicts = if enabled {
            evaluate(&rule, metrics, gateway, (currency, node), now)
        } else {
            Vec::new()
        };
        // A firing subject that is gone (a target removed, a subscription
        // renewed) is resolved; other nodes' calls are theirs to judge.
        for (subject, firing) in &stored {
            let others_calls = subject.starts_with("calls@") && *subject != own_calls;
            if *firing && !others_calls && !verdicts.iter().any(|v| &v.subject == subject) {
                verdicts.push(Verdict {
                    subject: subject.clone(),
                    firing: false,
                    value: String::new(),
                    details: if enabled {
                        json!({"reason": "the subject is gone"})
                    } else {
                        json!({"reason": "the rule was disabled"})
                    },
                });
            }
        }
        let window_unseen = enabled
            && rule.spec.metric.uses_window()
            && now - watching_since_ms < i64::from(rule.spec.window_seconds) * 1000;
        let changes: Vec<&Verdict> = verdicts
            .iter()
            .filter(|v| stored.get(&v.subject).copied().unwrap_or(false) != v.firing)
            .filter(|v| !(window_unseen && !v.firing && v.subject == own_calls))
            .collect();
        if changes.is_empty() {
            continue;
        }
        let mut tx = store.begin().await?;
        for verdict in changes {
            if !tx
                .set_alert_state(
                    &rule.id,
                    &verdict.subject,
                    verdict.firing,
                    &verdict.value,
                    now,
                )
                .await?
            {
                continue;
            }
            let (event, payload) = domain::alerts::event(
                &rule,
                (&verdict.subject, verdict.firing, &verdict.value),
                verdict.details.clone(),
                now,
            );
            tx.enqueue_event(&rule.spec.team, event, &payload).await?;
            tracing::info!(alert = %rule.spec.slug, subject = %verdict.subject, event, "alert");
            announced += 1;
        }
        tx.commit().await?;
    }
    Ok(announced)
}

pub fn spawn(
    store: Store,
    metrics: Arc<Metrics>,
    gateway: Gateway,
    (currency, node): (String, String),
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let watching_since = domain::now_ms();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(error) = check(
                &store,
                &metrics,
                &gateway,
                (&currency, &node),
                watching_since,
            )
            .await
            {
                tracing::warn!(%error, "alert evaluation failed; retrying");
            }
        }
    })
}
