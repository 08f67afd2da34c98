//! The usage export outbox and the Stripe customer of each team.

use sqlx::Row;

use crate::{Result, Store, WriteTx};

/// A usage event waiting for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// `<destination>:<charge id>`.
    pub id: String,
    pub destination: String,
    pub team_id: String,
    /// The event, as JSON text.
    pub event: String,
    pub attempts: i64,
}

impl WriteTx {
    pub async fn queue_usage(&mut self, rows: &[OutboxEvent], now_ms: i64) -> Result<()> {
        for row in rows {
            sqlx::query(
                "INSERT INTO usage_outbox (id, destination, team_id, event, attempts, next_attempt_at_ms, \
                 lease_until_ms, created_at_ms) VALUES ($1, $2, $3, $4, 0, $5, 0, $5) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&row.id)
            .bind(&row.destination)
            .bind(&row.team_id)
            .bind(&row.event)
            .bind(now_ms)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// Records the Stripe customer that pays for `team_id`, and the payment
    /// method it saved for later charges (auto top-up), when known.
    pub async fn set_stripe_customer(
        &mut self,
        team_id: &str,
        customer: &str,
        payment_method: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO stripe_customers (team_id, customer, payment_method, updated_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (team_id) DO UPDATE SET customer = excluded.customer, \
             payment_method = COALESCE(excluded.payment_method, stripe_customers.payment_method), \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(team_id)
        .bind(customer)
        .bind(payment_method)
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Claims up to `limit` due events of `destination` for `lease_ms`
    /// (other nodes skip claimed ones), oldest first.
    pub async fn claim_usage(
        &self,
        destination: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>> {
        let rows = sqlx::query(
            "SELECT id, destination, team_id, event, attempts FROM usage_outbox \
             WHERE destination = $1 AND next_attempt_at_ms <= $2 AND lease_until_ms <= $2 \
             ORDER BY created_at_ms LIMIT $3",
        )
        .bind(destination)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let done = sqlx::query(
                "UPDATE usage_outbox SET lease_until_ms = $2 WHERE id = $1 AND lease_until_ms <= $3",
            )
            .bind(&id)
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                claimed.push(OutboxEvent {
                    id,
                    destination: row.try_get("destination")?,
                    team_id: row.try_get("team_id")?,
                    event: row.try_get("event")?,
                    attempts: row.try_get("attempts")?,
                });
            }
        }
        Ok(claimed)
    }

    /// Delivered: gone from the outbox.
    pub async fn usage_delivered(&self, ids: &[String]) -> Result<()> {
        for id in ids {
            sqlx::query("DELETE FROM usage_outbox WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Not delivered: tried again at `next_ms`.
    pub async fn usage_retry(&self, ids: &[String], next_ms: i64) -> Result<()> {
        for id in ids {
            sqlx::query(
                "UPDATE usage_outbox SET attempts = attempts + 1, next_attempt_at_ms = $2, \
                 lease_until_ms = 0 WHERE id = $1",
            )
            .bind(id)
            .bind(next_ms)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Events still waiting, per destination (for tests and `/ready`).
    pub async fn usage_pending(&self, destination: &str) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM usage_outbox WHERE destination = $1")
            .bind(destination)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// (customer, saved payment method) of a team.
    pub async fn stripe_payer(&self, team_id: &str) -> Result<Option<(String, Option<String>)>> {
        let row =
            sqlx::query("SELECT customer, payment_method FROM stripe_customers WHERE team_id = $1")
                .bind(team_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }

    /// The Stripe customer of a team, if one paid a top-up.
    pub async fn stripe_customer(&self, team_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT customer FROM stripe_customers WHERE team_id = $1")
            .bind(team_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(row.try_get(0)?)).transpose()
    }
}

/// A team's auto top-up rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoTopUp {
    pub team_id: String,
    pub threshold_nanos: i64,
    pub amount_nanos: i64,
    pub last_attempt_at_ms: i64,
    pub last_error: Option<String>,
}

impl WriteTx {
    pub async fn put_auto_top_up(&mut self, rule: &AutoTopUp, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO auto_top_ups (team_id, threshold_nanos, amount_nanos, last_attempt_at_ms, \
             last_error, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (team_id) DO UPDATE \
             SET threshold_nanos = excluded.threshold_nanos, amount_nanos = excluded.amount_nanos, \
             last_attempt_at_ms = excluded.last_attempt_at_ms, last_error = excluded.last_error, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&rule.team_id)
        .bind(rule.threshold_nanos)
        .bind(rule.amount_nanos)
        .bind(rule.last_attempt_at_ms)
        .bind(rule.last_error.as_deref())
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn delete_auto_top_up(&mut self, team_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM auto_top_ups WHERE team_id = $1")
            .bind(team_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Claims a team's rule for a try at `now` unless one was tried since
    /// `cooldown_ms` ago (so one node tries, once per cool-down).
    pub async fn claim_auto_top_up(
        &mut self,
        team_id: &str,
        now_ms: i64,
        cooldown_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE auto_top_ups SET last_attempt_at_ms = $2 WHERE team_id = $1 AND last_attempt_at_ms <= $3",
        )
        .bind(team_id)
        .bind(now_ms)
        .bind(now_ms - cooldown_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn auto_top_up_result(&mut self, team_id: &str, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE auto_top_ups SET last_error = $2 WHERE team_id = $1")
            .bind(team_id)
            .bind(error)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}

fn auto_top_up_from(row: &sqlx::any::AnyRow) -> Result<AutoTopUp> {
    Ok(AutoTopUp {
        team_id: row.try_get("team_id")?,
        threshold_nanos: row.try_get("threshold_nanos")?,
        amount_nanos: row.try_get("amount_nanos")?,
        last_attempt_at_ms: row.try_get("last_attempt_at_ms")?,
        last_error: row.try_get("last_error")?,
    })
}

impl Store {
    pub async fn auto_top_up(&self, team_id: &str) -> Result<Option<AutoTopUp>> {
        let row = sqlx::query("SELECT * FROM auto_top_ups WHERE team_id = $1")
            .bind(team_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(auto_top_up_from).transpose()
    }

    /// Every rule, with the team's slug.
    pub async fn auto_top_ups(&self) -> Result<Vec<(String, AutoTopUp)>> {
        let rows = sqlx::query(
            "SELECT a.*, t.slug AS team_slug FROM auto_top_ups a JOIN teams t ON t.id = a.team_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("team_slug")?, auto_top_up_from(row)?)))
            .collect()
    }
}
