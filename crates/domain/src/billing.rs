//! Billing periods, in UTC: a subscription's monthly period (on the
//! calendar month or on the anniversary of its start), an app budget's
//! period (calendar day, ISO week or month), and proration of a monthly fee
//! over a partial period. Times are epoch milliseconds, as everywhere.

use serde::{Deserialize, Serialize};

use crate::access::PlanSpec;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

const DAY_MS: i64 = 86_400_000;

/// Where a plan's monthly periods start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Alignment {
    /// Each period starts on the day of the month the subscription
    /// started (the 31st becomes the month's last day).
    #[default]
    Anniversary,
    /// Periods are calendar months; the first one is partial and its fee
    /// prorated.
    Calendar,
}

/// How often an app's spend budget resets (calendar-aligned, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    /// ISO weeks, Monday 00:00 UTC.
    Week,
    Month,
}

fn datetime(ms: i64) -> PrimitiveDateTime {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    PrimitiveDateTime::new(at.date(), at.time())
}

fn epoch_ms(at: PrimitiveDateTime) -> i64 {
    let nanos = at.assume_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// `at` moved by `months` (may be negative), the day clamped to the
/// target month's length, the time of day kept.
fn add_months(at: PrimitiveDateTime, months: i32) -> PrimitiveDateTime {
    let index = at.year() * 12 + i32::from(u8::from(at.month())) - 1 + months;
    let year = index.div_euclid(12);
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).unwrap_or(1))
        .unwrap_or(Month::January);
    let day = at.day().min(month.length(year));
    let date = Date::from_calendar_date(year, month, day).unwrap_or(at.date());
    PrimitiveDateTime::new(date, at.time())
}

fn month_start(at: PrimitiveDateTime) -> PrimitiveDateTime {
    let date = at.date().replace_day(1).unwrap_or(at.date());
    PrimitiveDateTime::new(date, Time::MIDNIGHT)
}

/// The monthly period `[start, end)` that contains `at` for a subscription
/// whose periods are anchored at `anchor` (its first period's start).
pub fn period_containing(alignment: Alignment, anchor_ms: i64, at_ms: i64) -> (i64, i64) {
    let at = datetime(at_ms);
    match alignment {
        Alignment::Calendar => {
            let start = month_start(at);
            (epoch_ms(start), epoch_ms(add_months(start, 1)))
        }
        Alignment::Anniversary => {
            let anchor = datetime(anchor_ms);
            let mut months = (at.year() - anchor.year()) * 12
                + (i32::from(u8::from(at.month())) - i32::from(u8::from(anchor.month())));
            // Step back or forward until the period holds `at`; at most
            // one step each way, as the day and time may be before or after
            // the anchor's within the month.
            while months > 0 && epoch_ms(add_months(anchor, months)) > at_ms {
                months -= 1;
            }
            while epoch_ms(add_months(anchor, months + 1)) <= at_ms {
                months += 1;
            }
            (
                epoch_ms(add_months(anchor, months)),
                epoch_ms(add_months(anchor, months + 1)),
            )
        }
    }
}

/// The first period of a subscription that starts (or leaves its trial)
/// at `start`: anchored there, so a calendar period is cut short at the
/// month's end. Returns `(start, end)`.
pub fn first_period(alignment: Alignment, start_ms: i64) -> (i64, i64) {
    match alignment {
        Alignment::Anniversary => period_containing(alignment, start_ms, start_ms),
        Alignment::Calendar => (start_ms, period_containing(alignment, start_ms, start_ms).1),
    }
}

/// The fee for the period `[start, end)` of a plan whose full fee is
/// `fee` nano-units: the whole fee for a whole period, else the share of
/// the calendar month the period covers, rounded down (in the payer's
/// favour).
pub fn prorate(alignment: Alignment, fee: i64, start_ms: i64, end_ms: i64) -> i64 {
    if alignment == Alignment::Anniversary {
        return fee;
    }
    let (month_start, month_end) = period_containing(Alignment::Calendar, 0, start_ms);
    let whole = month_end - month_start;
    let covered = (end_ms.min(month_end) - start_ms.max(month_start)).clamp(0, whole);
    if covered == whole || whole <= 0 {
        return fee;
    }
    i64::try_from(i128::from(fee) * i128::from(covered) / i128::from(whole)).unwrap_or(fee)
}

/// What moving to a dearer plan at `now` costs for the rest of the period
/// `[start, end)`: the difference of the two fees, for the part of the
/// period left (rounded down). Nothing for a cheaper plan: what was paid
/// for this period stays paid, and the next period is at the new fee.
pub fn plan_change_charge(
    old_fee: i64,
    new_fee: i64,
    (start_ms, end_ms): (i64, i64),
    now_ms: i64,
) -> i64 {
    let difference = new_fee.saturating_sub(old_fee);
    let length = end_ms - start_ms;
    if difference <= 0 || length <= 0 || now_ms >= end_ms {
        return 0;
    }
    let left = (end_ms - now_ms.max(start_ms)).clamp(0, length);
    i64::try_from(i128::from(difference) * i128::from(left) / i128::from(length)).unwrap_or(0)
}

/// The budget period `[start, end)` that contains `at`.
pub fn budget_period(period: BudgetPeriod, at_ms: i64) -> (i64, i64) {
    match period {
        BudgetPeriod::Day => {
            let start = at_ms - at_ms.rem_euclid(DAY_MS);
            (start, start + DAY_MS)
        }
        BudgetPeriod::Week => {
            // 1970-01-01 was a Thursday: Mondays are 4 days later.
            let offset = 4 * DAY_MS;
            let start = at_ms - (at_ms - offset).rem_euclid(7 * DAY_MS);
            (start, start + 7 * DAY_MS)
        }
        BudgetPeriod::Month => period_containing(Alignment::Calendar, 0, at_ms),
    }
}

/// A period a subscription enters, and the fee due for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Where later periods are counted from.
    pub anchor_ms: i64,
    /// Set when this period is the free trial.
    pub trial_end_ms: Option<i64>,
    /// Nano-units due when the period starts (0 in a trial).
    pub fee_nanos: i64,
}

/// The first period of a subscription activated at `now`: the trial when
/// the plan has one, else the first paid period.
pub fn activation(plan: &PlanSpec, now_ms: i64) -> Period {
    if let Some(days) = plan.trial_days {
        let end = now_ms + i64::from(days) * DAY_MS;
        return Period {
            start_ms: now_ms,
            end_ms: end,
            anchor_ms: end,
            trial_end_ms: Some(end),
            fee_nanos: 0,
        };
    }
    paid_first(plan, now_ms)
}

fn paid_first(plan: &PlanSpec, start_ms: i64) -> Period {
    let (start, end) = first_period(plan.period_alignment, start_ms);
    Period {
        start_ms: start,
        end_ms: end,
        anchor_ms: start_ms,
        trial_end_ms: None,
        fee_nanos: prorate(plan.period_alignment, plan.fee_nanos(), start, end),
    }
}

/// The period an expired subscription renewed by hand starts: a paid one
/// from `now` (anchored there; no second trial), so a renewal long after
/// the expiry pays for time still to come, not for a period mostly gone.
pub fn restart(plan: &PlanSpec, now_ms: i64) -> Period {
    paid_first(plan, now_ms)
}

/// The period a subscription renews into at `now`: the one after its
/// current period, or, when that is long past (a `past_due` paid late),
/// the one that holds `now`. `trial_end` is kept so that a trial's
/// first paid period is anchored at its end.
pub fn renewal(
    plan: &PlanSpec,
    anchor_ms: i64,
    period_end_ms: i64,
    trial_end_ms: Option<i64>,
    now_ms: i64,
) -> Period {
    let at = period_end_ms.max(now_ms);
    if trial_end_ms == Some(period_end_ms) && at == period_end_ms {
        return paid_first(plan, period_end_ms);
    }
    let (start, end) = period_containing(plan.period_alignment, anchor_ms, at);
    Period {
        start_ms: start,
        end_ms: end,
        anchor_ms,
        trial_end_ms: None,
        fee_nanos: prorate(plan.period_alignment, plan.fee_nanos(), start, end),
    }
}

/// The period a renewal at `now` pays for: a `past_due` subscription's
/// own unpaid period while it still runs (its fee as it was, prorated
/// alike), else the one [`renewal`] gives. Renewing by hand and the
/// billing task agree on it.
pub fn period_to_pay(
    plan: &PlanSpec,
    past_due: bool,
    (start_ms, end_ms): (i64, i64),
    anchor_ms: Option<i64>,
    trial_end_ms: Option<i64>,
    now_ms: i64,
) -> Period {
    if past_due && now_ms < end_ms {
        return Period {
            start_ms,
            end_ms,
            anchor_ms: anchor_ms.unwrap_or(start_ms),
            trial_end_ms: None,
            fee_nanos: prorate(plan.period_alignment, plan.fee_nanos(), start_ms, end_ms),
        };
    }
    renewal(
        plan,
        anchor_ms.unwrap_or(end_ms),
        end_ms,
        trial_end_ms,
        now_ms,
    )
}

/// Whole days from `from` to `to`, rounded up (0 when `to` is past).
pub fn days_until(from_ms: i64, to_ms: i64) -> i64 {
    if to_ms <= from_ms {
        return 0;
    }
    (to_ms - from_ms + DAY_MS - 1) / DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{format_time_ms, parse_time_ms};

    fn ms(text: &str) -> i64 {
        parse_time_ms(text).unwrap_or_else(|e| unreachable!("{text}: {e}"))
    }

    #[test]
    fn a_dearer_plan_costs_the_difference_for_the_rest_of_the_period() {
        let period = (ms("2026-12-01T00:00:00Z"), ms("2026-12-31T00:00:00Z"));
        let third = ms("2026-12-21T00:00:00Z");
        // 10 → 40 with a third of the period left: 10.
        assert_eq!(
            plan_change_charge(10_000_000_000, 40_000_000_000, period, third),
            10_000_000_000
        );
        // A cheaper plan, or one at the same fee, costs nothing now.
        assert_eq!(
            plan_change_charge(40_000_000_000, 10_000_000_000, period, third),
            0
        );
        assert_eq!(plan_change_charge(10, 10, period, third), 0);
        // At the start, the whole difference; past the end, nothing.
        assert_eq!(plan_change_charge(0, 30, period, period.0), 30);
        assert_eq!(plan_change_charge(0, 30, period, period.1), 0);
    }

    fn show((start, end): (i64, i64)) -> (String, String) {
        (format_time_ms(start), format_time_ms(end))
    }

    #[test]
    fn a_past_due_subscription_pays_its_running_period_first() {
        let plan: PlanSpec = serde_json::from_value(serde_json::json!({
            "slug": "pro", "monthly_fee": "10"
        }))
        .unwrap_or_else(|e| unreachable!("{e}"));
        let (start, end) = (ms("2026-03-05T00:00:00Z"), ms("2026-04-05T00:00:00Z"));
        let now = ms("2026-03-20T00:00:00Z");
        let unpaid = period_to_pay(&plan, true, (start, end), Some(start), None, now);
        assert_eq!((unpaid.start_ms, unpaid.end_ms), (start, end));
        assert_eq!(unpaid.fee_nanos, 10_000_000_000);
        // Active (renewed at its end) or past due for a period long gone:
        // the period that holds the time of payment.
        let next = period_to_pay(&plan, false, (start, end), Some(start), None, end);
        assert_eq!(show((next.start_ms, next.end_ms)).0, "2026-04-05T00:00:00Z");
        let late = ms("2026-05-10T00:00:00Z");
        let long_past = period_to_pay(&plan, true, (start, end), Some(start), None, late);
        assert_eq!(
            show((long_past.start_ms, long_past.end_ms)),
            (
                "2026-05-05T00:00:00Z".to_owned(),
                "2026-06-05T00:00:00Z".to_owned()
            )
        );
    }

    #[test]
    fn anniversary_periods_keep_the_day_and_clamp_short_months() {
        let anchor = ms("2026-01-31T10:00:00Z");
        assert_eq!(
            show(period_containing(
                Alignment::Anniversary,
                anchor,
                ms("2026-02-15T00:00:00Z")
            )),
            ("2026-01-31T10:00:00Z".into(), "2026-02-28T10:00:00Z".into())
        );
        assert_eq!(
            show(period_containing(
                Alignment::Anniversary,
                anchor,
                ms("2026-03-31T09:59:59Z")
            )),
            ("2026-02-28T10:00:00Z".into(), "2026-03-31T10:00:00Z".into())
        );
        assert_eq!(
            show(period_containing(
                Alignment::Anniversary,
                anchor,
                ms("2027-01-31T10:00:00Z")
            )),
            ("2027-01-31T10:00:00Z".into(), "2027-02-28T10:00:00Z".into())
        );
    }

    #[test]
    fn calendar_periods_are_months_and_the_first_is_prorated() {
        let start = ms("2026-04-16T00:00:00Z");
        assert_eq!(
            show(first_period(Alignment::Calendar, start)),
            ("2026-04-16T00:00:00Z".into(), "2026-05-01T00:00:00Z".into())
        );
        let (from, to) = first_period(Alignment::Calendar, start);
        // 15 of April's 30 days.
        assert_eq!(prorate(Alignment::Calendar, 30_000, from, to), 15_000);
        let (from, to) = period_containing(Alignment::Calendar, 0, ms("2026-05-20T00:00:00Z"));
        assert_eq!(prorate(Alignment::Calendar, 30_000, from, to), 30_000);
        assert_eq!(prorate(Alignment::Anniversary, 7, 0, 1), 7);
    }

    #[test]
    fn trials_then_paid_periods() {
        let plan: PlanSpec = serde_json::from_value(serde_json::json!({
            "slug": "pro", "monthly_fee": "30", "trial_days": 14,
            "period_alignment": "calendar"}))
        .unwrap_or_else(|e| unreachable!("{e}"));
        let now = ms("2026-04-02T00:00:00Z");
        let trial = activation(&plan, now);
        assert_eq!(trial.fee_nanos, 0);
        assert_eq!(format_time_ms(trial.end_ms), "2026-04-16T00:00:00Z");
        let first = renewal(
            &plan,
            trial.anchor_ms,
            trial.end_ms,
            trial.trial_end_ms,
            trial.end_ms,
        );
        assert_eq!(
            show((first.start_ms, first.end_ms)),
            ("2026-04-16T00:00:00Z".into(), "2026-05-01T00:00:00Z".into())
        );
        assert_eq!(first.fee_nanos, 15_000_000_000, "half of April");
        let second = renewal(&plan, first.anchor_ms, first.end_ms, None, first.end_ms);
        assert_eq!(second.fee_nanos, 30_000_000_000);
        assert_eq!(format_time_ms(second.end_ms), "2026-06-01T00:00:00Z");
        // Paid two months late: the period holding now, not the missed one.
        let late = renewal(
            &plan,
            first.anchor_ms,
            first.end_ms,
            None,
            ms("2026-07-10T00:00:00Z"),
        );
        assert_eq!(format_time_ms(late.start_ms), "2026-07-01T00:00:00Z");
    }

    #[test]
    fn budget_periods_are_calendar_aligned() {
        // 2026-11-25 is a Wednesday.
        let at = ms("2026-11-25T13:00:00Z");
        assert_eq!(
            show(budget_period(BudgetPeriod::Day, at)),
            ("2026-11-25T00:00:00Z".into(), "2026-11-26T00:00:00Z".into())
        );
        assert_eq!(
            show(budget_period(BudgetPeriod::Week, at)),
            ("2026-11-23T00:00:00Z".into(), "2026-11-30T00:00:00Z".into())
        );
        assert_eq!(
            show(budget_period(BudgetPeriod::Month, at)),
            ("2026-11-01T00:00:00Z".into(), "2026-12-01T00:00:00Z".into())
        );
        assert_eq!(days_until(at, at + 1), 1);
        assert_eq!(days_until(at, at - 1), 0);
    }
}
