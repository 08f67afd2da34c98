//! Wallet leases for many nodes sharing the store (migration 0020): the
//! part of a team's balance each gateway node may spend on calls without
//! asking. Granted out of what no other live lease holds, with the
//! wallet row locked; a node's charges take from its lease where they are
//! appended ([`WriteTx::append_batch`]); other debits keep clear of what
//! live leases hold ([`WriteTx::append_entry`]).

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

    /// Renews every lease of `node` until `now_ms + ttl_ms`. A lease that
    /// ran out meanwhile (the node was cut off) may have been granted to
    /// other nodes since: it is cut to what is still free. Returns, by
    /// team slug, what was cut.
    pub async fn renew_leases(
        &self,
        node: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Vec<(String, i64)>> {
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
        Ok(cut)
    }

    /// Gives back every lease of `node` (it stops, its charges written).
    pub async fn drop_leases(&self, node: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM wallet_leases WHERE node = $1")
            .bind(node)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// Deletes leases that ran out before `before_ms` (nodes long gone).
    pub async fn sweep_leases(&self, before_ms: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM wallet_leases WHERE expires_at_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
