//! Wallet leases for many nodes sharing the store (migration 0020): the
//! part of a team's balance each gateway node may spend on calls without
//! asking. Granted out of what no other live lease holds, with the
//! wallet row locked; a node's charges take from its lease where they are
//! appended ([`WriteTx::append_batch`]); other debits keep clear of what
//! live leases hold ([`WriteTx::append_entry`]).
//!
//! Counter leases (migration 0021) do the same for quotas and app
//! budgets: the part of a period's limit each node may count.

use sqlx::Row;

use crate::{Result, Store, WriteTx};

impl WriteTx {
    /// What live leases hold of `team_id`'s wallet at `now_ms`, leaving
    /// out `except`'s (a node asking for more of its own).
    pub(crate) async fn leased(&mut self, team_id: &str, now_ms: i64, except: &str) -> Result<i64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN nanos > 0 THEN nanos ELSE 0 END), 0) AS BIGINT) \
             AS held FROM wallet_leases WHERE team_id = $1 AND expires_at_ms > $2 AND node <> $3",
        )
        .bind(team_id)
        .bind(now_ms)
        .bind(except)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(row.try_get::<i64, _>("held")?)
    }

    /// `node`'s lease of `team_id`'s wallet, if it has a row.
    async fn own_lease(&mut self, team_id: &str, node: &str) -> Result<Option<i64>> {
        sqlx::query("SELECT nanos FROM wallet_leases WHERE team_id = $1 AND node = $2")
            .bind(team_id)
            .bind(node)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|row| row.try_get::<i64, _>("nanos").map_err(Into::into))
            .transpose()
    }
}

impl Store {
    /// Changes `node`'s lease on `team`'s wallet (by slug) by `delta`
    /// nano-units and renews it until `now_ms + ttl_ms`; returns the change
    /// made. More is granted only out of the balance no live lease holds
    /// (possibly less than asked, or nothing); giving back (`delta < 0`)
    /// always happens. An unknown team gets nothing.
    pub async fn adjust_lease(
        &self,
        team: &str,
        node: &str,
        delta: i64,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<i64> {
        let mut tx = self.begin().await?;
        let Some(team_id) = sqlx::query("SELECT id FROM teams WHERE slug = $1")
            .bind(team)
            .fetch_optional(&mut *tx.tx)
            .await?
            .map(|row| row.try_get::<String, _>("id"))
            .transpose()?
        else {
            return Ok(0);
        };
        let balance = tx.lock_wallet(&team_id, now_ms).await?.balance_nanos;
        let granted = if delta > 0 {
            let others = tx.leased(&team_id, now_ms, node).await?;
            let own = tx.own_lease(&team_id, node).await?.unwrap_or(0);
            let free = balance.saturating_sub(others).saturating_sub(own.max(0));
            delta.min(free.max(0))
        } else {
            delta
        };
        sqlx::query(
            "INSERT INTO wallet_leases (team_id, node, nanos, expires_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (team_id, node) DO UPDATE SET nanos = wallet_leases.nanos + excluded.nanos, \
             expires_at_ms = excluded.expires_at_ms",
        )
        .bind(&team_id)
        .bind(node)
        .bind(granted)
        .bind(now_ms.saturating_add(ttl_ms))
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(granted)
    }

    /// Renews every lease of `node` until `now_ms + ttl_ms`. A wallet
    /// lease that ran out meanwhile (the node was cut off) may have been
    /// granted to other nodes since: it is cut to what is still free. A
    /// counter lease that ran out is dropped (what the node held beyond
    /// its count may be another's now). Returns what was cut and dropped.
    pub async fn renew_leases(&self, node: &str, now_ms: i64, ttl_ms: i64) -> Result<Renewed> {
        let until = now_ms.saturating_add(ttl_ms);
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE wallet_leases SET expires_at_ms = $3 WHERE node = $1 AND expires_at_ms > $2",
        )
        .bind(node)
        .bind(now_ms)
        .bind(until)
        .execute(&mut *tx.tx)
        .await?;
        // Grants that hold something, of periods that may still run
        // (none is longer than a month): the rest run out and go.
        sqlx::query(
            "UPDATE counter_leases SET expires_at_ms = $3 WHERE node = $1 AND expires_at_ms > $2 \
             AND granted > 0 AND period_start_ms > $4",
        )
        .bind(node)
        .bind(now_ms)
        .bind(until)
        .bind(now_ms.saturating_sub(GRANT_PERIOD_MAX_MS))
        .execute(&mut *tx.tx)
        .await?;
        let counters_lapsed = sqlx::query(
            "DELETE FROM counter_leases WHERE node = $1 AND expires_at_ms <= $2 \
             RETURNING scope, period_start_ms",
        )
        .bind(node)
        .bind(now_ms)
        .fetch_all(&mut *tx.tx)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(String, i64)>>>()?;
        tx.commit().await?;
        let lapsed = sqlx::query(
            "SELECT l.team_id, t.slug, l.nanos FROM wallet_leases l JOIN teams t ON t.id = l.team_id \
             WHERE l.node = $1 AND l.expires_at_ms <= $2",
        )
        .bind(node)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut cut = Vec::new();
        for row in lapsed {
            let team_id: String = row.try_get("team_id")?;
            let slug: String = row.try_get("slug")?;
            let mut tx = self.begin().await?;
            let balance = tx.lock_wallet(&team_id, now_ms).await?.balance_nanos;
            let others = tx.leased(&team_id, now_ms, node).await?;
            let nanos = tx.own_lease(&team_id, node).await?.unwrap_or(0);
            let free = balance.saturating_sub(others).max(0);
            let kept = if nanos > free { free } else { nanos };
            sqlx::query(
                "UPDATE wallet_leases SET nanos = $3, expires_at_ms = $4 WHERE team_id = $1 AND node = $2",
            )
            .bind(&team_id)
            .bind(node)
            .bind(kept)
            .bind(until)
            .execute(&mut *tx.tx)
            .await?;
            tx.commit().await?;
            if nanos > kept {
                cut.push((slug, nanos - kept));
            }
        }
        Ok(Renewed {
            wallets_cut: cut,
            counters_lapsed,
        })
    }

    /// Gives back every lease of `node` (it stops, its charges and counts
    /// written).
    pub async fn drop_leases(&self, node: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        for table in ["wallet_leases", "counter_leases"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE node = $1"
            )))
            .bind(node)
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await
    }

    /// Deletes leases that ran out before `before_ms` (nodes long gone,
    /// periods over).
    pub async fn sweep_leases(&self, before_ms: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut deleted = 0;
        for table in ["wallet_leases", "counter_leases"] {
            deleted += sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE expires_at_ms < $1"
            )))
            .bind(before_ms)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Changes `node`'s grant on a counter (`scope` in the period starting
    /// at `period_start_ms`) by `delta` and renews it until `now_ms +
    /// ttl_ms`; returns the node's grant now (the most it may count in the
    /// period). More is granted only out of `limit` less what the other
    /// nodes hold (each the larger of what it counted and, while its lease
    /// is live, what it was granted), possibly less than asked; giving
    /// back (`delta < 0`) always happens. A lease of this node's that ran
    /// out starts again from what the node counted.
    #[allow(clippy::too_many_arguments)]
    pub async fn adjust_counter_lease(
        &self,
        scope: &str,
        period_start_ms: i64,
        unit: CounterUnit,
        node: &str,
        delta: i64,
        limit: i64,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<i64> {
        let column = unit.column();
        let mut tx = self.begin().await?;
        // The period's head row, locked: one grant at a time.
        sqlx::query(
            "INSERT INTO counter_leases (scope, period_start_ms, node, granted, expires_at_ms) \
             VALUES ($1, $2, '', 0, 0) ON CONFLICT (scope, period_start_ms, node) \
             DO UPDATE SET granted = counter_leases.granted",
        )
        .bind(scope)
        .bind(period_start_ms)
        .execute(&mut *tx.tx)
        .await?;
        let held = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(COALESCE(SUM(held), 0) AS BIGINT) AS held FROM (\
             SELECT node, MAX(v) AS held FROM (\
             SELECT node, {column} AS v FROM usage_counters \
             WHERE scope = $1 AND period_start_ms = $2 AND node <> $3 \
             UNION ALL SELECT node, granted AS v FROM counter_leases \
             WHERE scope = $1 AND period_start_ms = $2 AND node <> $3 AND node <> '' \
             AND expires_at_ms > $4) AS x GROUP BY node) AS y"
        )))
        .bind(scope)
        .bind(period_start_ms)
        .bind(node)
        .bind(now_ms)
        .fetch_one(&mut *tx.tx)
        .await?
        .try_get::<i64, _>("held")?;
        let counted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {column} AS v FROM usage_counters \
             WHERE scope = $1 AND period_start_ms = $2 AND node = $3"
        )))
        .bind(scope)
        .bind(period_start_ms)
        .bind(node)
        .fetch_optional(&mut *tx.tx)
        .await?
        .map(|row| row.try_get::<i64, _>("v"))
        .transpose()?
        .unwrap_or(0);
        let own = sqlx::query(
            "SELECT granted, expires_at_ms FROM counter_leases \
             WHERE scope = $1 AND period_start_ms = $2 AND node = $3",
        )
        .bind(scope)
        .bind(period_start_ms)
        .bind(node)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let granted = match own {
            Some(row) if row.try_get::<i64, _>("expires_at_ms")? > now_ms => {
                row.try_get::<i64, _>("granted")?
            }
            // Ran out: what it held beyond its count may be another's now.
            _ => counted,
        };
        let now_granted = if delta > 0 {
            let free = limit
                .saturating_sub(held)
                .saturating_sub(granted.max(counted));
            granted.saturating_add(delta.min(free.max(0)))
        } else {
            granted.saturating_add(delta).max(0)
        };
        sqlx::query(
            "INSERT INTO counter_leases (scope, period_start_ms, node, granted, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, period_start_ms, node) \
             DO UPDATE SET granted = excluded.granted, expires_at_ms = excluded.expires_at_ms",
        )
        .bind(scope)
        .bind(period_start_ms)
        .bind(node)
        .bind(now_granted)
        .bind(now_ms.saturating_add(ttl_ms))
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(now_granted)
    }
}

/// Counter grants older than this are not renewed: no quota or budget
/// period is longer than a month.
const GRANT_PERIOD_MAX_MS: i64 = 62 * 24 * 3_600_000;

/// What [`Store::renew_leases`] changed besides renewing.
#[derive(Debug, Default)]
pub struct Renewed {
    /// By team slug, what was cut from wallet leases that ran out.
    pub wallets_cut: Vec<(String, i64)>,
    /// Counter leases that ran out, dropped: (scope, period start).
    pub counters_lapsed: Vec<(String, i64)>,
}

/// What a counter lease counts: calls or tokens (`usage_counters.requests`)
/// or nano-units (`usage_counters.nanos`, app budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterUnit {
    Requests,
    Nanos,
}

impl CounterUnit {
    fn column(self) -> &'static str {
        match self {
            CounterUnit::Requests => "requests",
            CounterUnit::Nanos => "nanos",
        }
    }
}
