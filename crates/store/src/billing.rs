//! Subscription fees and usage counters.
//!
//! A period's fee is one ledger `charge` under the key
//! `fee:<subscription>:<period start>`, so charging it twice (two nodes
//! renewing at once, a retried renewal) records it once. Usage counters
//! are per node (see migration 0005): a node writes absolute values of
//! what it counted, and reads the others'.

use domain::access::Subscription;
use domain::money::{EntryKind, LedgerEntry};
use sqlx::Row;

use crate::money::{Appended, NewEntry};
use crate::{Result, Store, StoreError, WriteTx};

/// What charging a period's fee did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fee {
    /// Charged now (or nothing was due).
    Paid,
    /// Charged before under the same key: nothing changed.
    AlreadyPaid,
    /// The wallet holds less than the fee; nothing was charged.
    Short { balance_nanos: i64 },
}

/// A node's count for one scope and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub scope: String,
    pub period_start_ms: i64,
    pub requests: i64,
    pub nanos: i64,
}

/// Another node's count, as the sync reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUsage {
    pub node: String,
    pub usage: Usage,
}

/// Whether the billing task has something to do with `subscription` at
/// `now_ms` (the condition of [`Store::due_subscriptions`]).
pub fn is_due(subscription: &Subscription, now_ms: i64) -> bool {
    use domain::access::SubscriptionStatus;
    match subscription.status {
        SubscriptionStatus::Active => subscription.period_end_ms.is_none_or(|end| end <= now_ms),
        SubscriptionStatus::PastDue => true,
        _ => false,
    }
}

/// The idempotency key of a subscription period's fee.
pub fn fee_key(subscription_id: &str, period_start_ms: i64) -> String {
    format!("fee:{subscription_id}:{period_start_ms}")
}

impl WriteTx {
    /// Moves `subscription` into `period`: charges the period's fee from
    /// the consumer team's wallet and makes it `active`, or, when the
    /// wallet is short, `past_due` on that period (nothing charged).
    /// Saves the subscription either way; returns what the fee did.
    /// `payable: false`: the fee is known not to be payable now (the
    /// wallet as calls in flight see it cannot hold it), so nothing is
    /// charged and the subscription is past due on the period.
    pub async fn enter_period(
        &mut self,
        subscription: &mut Subscription,
        period: &domain::billing::Period,
        actor: &str,
        now_ms: i64,
        payable: bool,
    ) -> Result<Fee> {
        let team = self
            .team(&subscription.consumer_team)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "subscription {} names a missing team '{}'",
                    subscription.id, subscription.consumer_team
                ))
            })?;
        let fee = if payable || period.fee_nanos <= 0 {
            self.charge_fee(
                &team.id,
                subscription,
                period.start_ms,
                period.fee_nanos,
                actor,
                now_ms,
            )
            .await?
        } else {
            Fee::Short {
                balance_nanos: self.balance_nanos(&team.id).await?,
            }
        };
        subscription.status = match fee {
            Fee::Paid | Fee::AlreadyPaid => domain::access::SubscriptionStatus::Active,
            Fee::Short { .. } => domain::access::SubscriptionStatus::PastDue,
        };
        subscription.period_start_ms = Some(period.start_ms);
        subscription.period_end_ms = Some(period.end_ms);
        subscription.anchor_ms = Some(period.anchor_ms);
        if period.trial_end_ms.is_some() {
            subscription.trial_end_ms = period.trial_end_ms;
        }
        subscription.updated_at_ms = now_ms;
        self.put_subscription(subscription).await?;
        Ok(fee)
    }

    /// Charges `fee` for the period of `subscription` that starts at
    /// `period_start` from team `team_id`'s wallet, never below zero.
    pub async fn charge_fee(
        &mut self,
        team_id: &str,
        subscription: &Subscription,
        period_start_ms: i64,
        fee_nanos: i64,
        actor: &str,
        now_ms: i64,
    ) -> Result<Fee> {
        let reason = format!(
            "monthly fee: {} on {} ({}), period from {}",
            subscription.app,
            subscription.service,
            subscription.plan,
            domain::access::format_time_ms(period_start_ms)
        );
        let key = fee_key(&subscription.id, period_start_ms);
        self.charge_once(team_id, key, fee_nanos, reason, actor, now_ms)
            .await
    }

    /// Charges a move of `subscription` to a dearer plan (id `plan_id`)
    /// during the period that starts at `period_start`: `amount`, the
    /// difference of the two fees for the rest of the period. Once per
    /// period and plan.
    #[allow(clippy::too_many_arguments)]
    pub async fn charge_plan_change(
        &mut self,
        team_id: &str,
        subscription: &Subscription,
        period_start_ms: i64,
        plan_id: &str,
        amount_nanos: i64,
        actor: &str,
        now_ms: i64,
    ) -> Result<Fee> {
        let reason = format!(
            "plan change: {} on {}, from {} for the rest of the period from {}",
            subscription.app,
            subscription.service,
            subscription.plan,
            domain::access::format_time_ms(period_start_ms)
        );
        let key = format!("{}:{plan_id}", fee_key(&subscription.id, period_start_ms));
        self.charge_once(team_id, key, amount_nanos, reason, actor, now_ms)
            .await
    }

    /// Appends a charge of `nanos` under `key` (once), never below zero.
    async fn charge_once(
        &mut self,
        team_id: &str,
        key: String,
        nanos: i64,
        reason: String,
        actor: &str,
        now_ms: i64,
    ) -> Result<Fee> {
        if nanos <= 0 {
            return Ok(Fee::Paid);
        }
        let entry = LedgerEntry {
            id: domain::id::new_id(),
            team_id: team_id.to_owned(),
            kind: EntryKind::Charge,
            amount_nanos: -nanos,
            idempotency_key: key,
            actor: actor.to_owned(),
            reason: Some(reason),
            request_id: None,
            created_at_ms: now_ms,
        };
        match self
            .append_entry(NewEntry {
                entry,
                min_balance_after: Some(0),
            })
            .await
        {
            Ok(Appended::Created(..)) => Ok(Fee::Paid),
            Ok(Appended::Existing(_)) => Ok(Fee::AlreadyPaid),
            Err(StoreError::Conflict { field, .. }) if field == "amount" => Ok(Fee::Short {
                balance_nanos: self.balance_nanos(team_id).await?,
            }),
            Err(error) => Err(error),
        }
    }

    /// A team's balance as the ledger has it (0 without a wallet).
    async fn balance_nanos(&mut self, team_id: &str) -> Result<i64> {
        let row = sqlx::query("SELECT balance_nanos FROM wallets WHERE team_id = $1")
            .bind(team_id)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(match row {
            Some(row) => row.try_get(0)?,
            None => 0,
        })
    }

    /// Marks warning `key` active; true when it was not (a crossing: the
    /// caller fires its webhook in this transaction).
    pub async fn raise_warning(&mut self, key: &str, team: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO warnings (key, team, active, changed_at_ms) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (key) DO UPDATE SET active = 1, changed_at_ms = excluded.changed_at_ms \
             WHERE warnings.active = 0",
        )
        .bind(key)
        .bind(team)
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Re-arms warning `key` (its condition ended).
    pub async fn clear_warning(&mut self, key: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE warnings SET active = 0, changed_at_ms = $2 WHERE key = $1 AND active = 1",
        )
        .bind(key)
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records this node's counts (absolute values, replacing earlier ones).
    pub async fn put_usage(&mut self, node: &str, rows: &[Usage], now_ms: i64) -> Result<()> {
        for row in rows {
            sqlx::query(
                "INSERT INTO usage_counters (scope, period_start_ms, node, requests, nanos, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, period_start_ms, node) DO UPDATE \
                 SET requests = excluded.requests, nanos = excluded.nanos, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&row.scope)
            .bind(row.period_start_ms)
            .bind(node)
            .bind(row.requests)
            .bind(row.nanos)
            .bind(now_ms)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}

impl Store {
    /// Subscriptions the renewal task must look at: active ones whose
    /// period ended (or that never had one), and past-due ones.
    pub async fn due_subscriptions(&self, now_ms: i64, limit: usize) -> Result<Vec<Subscription>> {
        let ids = sqlx::query(
            "SELECT id FROM subscriptions WHERE (status = 'active' AND \
             (period_end_ms IS NULL OR period_end_ms <= $1)) OR status = 'past_due' \
             ORDER BY period_end_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut due = Vec::with_capacity(ids.len());
        for row in ids {
            let id: String = row.try_get(0)?;
            // Read after the ids: another node may have renewed it since,
            // and what is no longer due is not handed on.
            if let Some(subscription) = self.subscription(&id).await?
                && is_due(&subscription, now_ms)
            {
                due.push(subscription);
            }
        }
        Ok(due)
    }

    /// Other nodes' counts written after `since_ms`, for periods that
    /// started at or after `min_period_ms`.
    pub async fn usage_of_others(
        &self,
        node: &str,
        since_ms: i64,
        min_period_ms: i64,
    ) -> Result<Vec<NodeUsage>> {
        let rows = sqlx::query(
            "SELECT scope, period_start_ms, node, requests, nanos FROM usage_counters \
             WHERE node <> $1 AND updated_at_ms > $2 AND period_start_ms >= $3",
        )
        .bind(node)
        .bind(since_ms)
        .bind(min_period_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(NodeUsage {
                    node: row.try_get(2)?,
                    usage: Usage {
                        scope: row.try_get(0)?,
                        period_start_ms: row.try_get(1)?,
                        requests: row.try_get(3)?,
                        nanos: row.try_get(4)?,
                    },
                })
            })
            .collect()
    }

    /// The keys of the warnings active now.
    pub async fn active_warnings(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT key FROM warnings WHERE active = 1")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// A scope's use in one period, over every node: (requests, nanos).
    pub async fn usage(&self, scope: &str, period_start_ms: i64) -> Result<(i64, i64)> {
        let rows = sqlx::query(
            "SELECT requests, nanos FROM usage_counters WHERE scope = $1 AND period_start_ms = $2",
        )
        .bind(scope)
        .bind(period_start_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut total = (0i64, 0i64);
        for row in rows {
            total.0 += row.try_get::<i64, _>(0)?;
            total.1 += row.try_get::<i64, _>(1)?;
        }
        Ok(total)
    }
}
