//! Early warnings (SPEC §5): the thresholds behind `Tollgate-Warning`,
//! `/_tollgate/me` and the warning webhooks, in one place.

use crate::access::{AppRt, SubscriptionRt};
use crate::snapshot::Snapshot;

/// Calls left below which the balance is low.
pub const LOW_BALANCE_CALLS: i64 = 100;
/// Per cent of a quota or budget from which it is nearly exhausted.
pub const NEARLY_EXHAUSTED_PERCENT: u64 = 90;
/// Days before a period's end from which a subscription that will not
/// renew is expiring.
pub const EXPIRING_DAYS: i64 = 3;
const DAY_MS: i64 = 86_400_000;

/// Calls the balance still pays at `price`, when that is few.
pub fn low_balance(available: i64, price: i64) -> Option<i64> {
    if price <= 0 {
        return None;
    }
    let calls_left = available.max(0) / price;
    (calls_left < LOW_BALANCE_CALLS).then_some(calls_left)
}

/// Calls a subscription can still make before it is refused for want of
/// money: the included calls left in its period (free) plus the calls the
/// balance pays at its price. `None` when the balance never limits its
/// calls: they are free, or its quota refuses overage.
pub fn calls_left(subscription: &SubscriptionRt, available: i64) -> Option<i64> {
    let price = subscription.price_nanos;
    let terms = &subscription.terms;
    if price <= 0 || terms.included.is_some() && !terms.overage_charge {
        return None;
    }
    let free = match (terms.included, &terms.counter) {
        (Some(included), Some(counter)) => included.saturating_sub(counter.requests()),
        (Some(included), None) => included,
        (None, _) => 0,
    };
    let free = i64::try_from(free).unwrap_or(i64::MAX);
    Some(free.saturating_add(available.max(0) / price))
}

/// [`calls_left`], when that is few.
pub fn low_calls_left(subscription: &SubscriptionRt, available: i64) -> Option<i64> {
    calls_left(subscription, available).filter(|calls| *calls < LOW_BALANCE_CALLS)
}

/// Per cent of `limit` used, when it is nearly all.
pub fn nearly_exhausted(used: u64, limit: u64) -> Option<u64> {
    let limit = limit.max(1);
    (used.saturating_mul(100) >= limit.saturating_mul(NEARLY_EXHAUSTED_PERCENT))
        .then(|| (used.saturating_mul(100) / limit).min(100))
}

/// Days until a subscription's period ends, when it ends soon and will not
/// renew (renewal off, or the wallet cannot pay the fee).
pub fn expiring(subscription: &SubscriptionRt, available: i64, now_ms: i64) -> Option<i64> {
    let terms = &subscription.terms;
    let (_, end) = terms.period?;
    let soon = end - now_ms <= EXPIRING_DAYS * DAY_MS;
    let renews = terms.auto_renew && available >= terms.fee_nanos;
    (soon && !renews).then(|| domain::billing::days_until(now_ms, end))
}

/// A warning that holds now, for the webhooks: fired once when it starts
/// to hold (per `key`), not per call.
#[derive(Debug, Clone, PartialEq)]
pub struct WarningState {
    /// Unique per warning and period (`quota:<subscription>:<period start>`…).
    pub key: String,
    /// The consumer team, whose webhooks hear of it.
    pub team: String,
    /// `warning.low_balance`, `warning.quota_nearly_exhausted`,
    /// `warning.budget_nearly_exhausted`, `warning.subscription_expiring`.
    pub event: &'static str,
    pub data: serde_json::Value,
}

/// Every warning that holds now, from the snapshot and the node's wallets
/// and counters.
pub fn states(snapshot: &Snapshot, currency: &str, now_ms: i64) -> Vec<WarningState> {
    use domain::money::format;
    use serde_json::json;
    let mut found = Vec::new();
    let mut low_teams = std::collections::HashSet::new();
    for app in snapshot.access.apps.values() {
        let available = app.wallet.available();
        for (_, subscription) in &app.subscriptions {
            if subscription.status != domain::access::SubscriptionStatus::Active {
                continue;
            }
            let terms = &subscription.terms;
            if let Some(calls_left) = low_calls_left(subscription, available)
                && low_teams.insert(app.team.clone())
            {
                found.push(WarningState {
                    key: format!("low-balance:{}", app.team),
                    team: app.team.clone(),
                    event: "warning.low_balance",
                    data: json!({"team": app.team, "balance": format(available.max(0)),
                        "currency": currency, "calls_left": calls_left,
                        "price_per_request": format(subscription.price_nanos),
                        "subscription": &*subscription.id}),
                });
            }
            if let (Some(included), Some(counter), Some((start, end))) =
                (terms.included, &terms.counter, terms.period)
                && let Some(percent) = nearly_exhausted(counter.requests(), included)
            {
                found.push(WarningState {
                    key: format!("quota:{}:{start}", subscription.id),
                    team: app.team.clone(),
                    event: "warning.quota_nearly_exhausted",
                    data: json!({"subscription": &*subscription.id, "app": app.slug,
                        "service": subscription.service(), "plan": subscription.plan(),
                        "used_percent": percent, "quota": included, "used": counter.requests(),
                        "period_end": domain::access::format_time_ms(end)}),
                });
            }
            if let (Some(days), Some((_, end))) =
                (expiring(subscription, available, now_ms), terms.period)
            {
                found.push(WarningState {
                    key: format!("expiring:{}:{end}", subscription.id),
                    team: app.team.clone(),
                    event: "warning.subscription_expiring",
                    data: json!({"subscription": &*subscription.id, "app": app.slug,
                        "service": subscription.service(), "plan": subscription.plan(), "days": days,
                        "auto_renew": terms.auto_renew,
                        "period_end": domain::access::format_time_ms(end)}),
                });
            }
        }
        if let Some(state) = budget_state(app, currency, now_ms) {
            found.push(state);
        }
    }
    found
}

fn budget_state(app: &AppRt, currency: &str, now_ms: i64) -> Option<WarningState> {
    let budget = app.budget.as_ref()?;
    budget.counter.roll(now_ms);
    let spent = u64::try_from(budget.counter.nanos()).unwrap_or(0);
    let limit = u64::try_from(budget.limit_nanos).unwrap_or(u64::MAX);
    let percent = nearly_exhausted(spent, limit)?;
    let (start, end) = budget.counter.period();
    Some(WarningState {
        key: format!("budget:{}:{start}", app.id),
        team: app.team.clone(),
        event: "warning.budget_nearly_exhausted",
        data: serde_json::json!({"app": app.slug, "used_percent": percent,
            "budget": domain::money::format(budget.limit_nanos),
            "spent": domain::money::format(budget.counter.nanos()), "currency": currency,
            "period_end": domain::access::format_time_ms(end)}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(low_balance(99, 1), Some(99));
        assert_eq!(low_balance(100, 1), None);
        assert_eq!(low_balance(-5, 1), Some(0));
        assert_eq!(low_balance(5, 0), None, "free calls never run low");
        assert_eq!(nearly_exhausted(89, 100), None);
        assert_eq!(nearly_exhausted(90, 100), Some(90));
        assert_eq!(nearly_exhausted(150, 100), Some(100));
        assert_eq!(nearly_exhausted(9, 10), Some(90));
    }
}
