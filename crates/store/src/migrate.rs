//! Versioned migrations, embedded in the binary and applied in order. Each
//! runs in its own transaction together with its row in `schema_migrations`.

use sqlx::Row;

use crate::{Result, Store, StoreError};

/// (version, name, SQL). Append only: never edit a migration that shipped.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "access", include_str!("../migrations/0002_access.sql")),
    (3, "changes", include_str!("../migrations/0003_changes.sql")),
    (4, "money", include_str!("../migrations/0004_money.sql")),
    (5, "billing", include_str!("../migrations/0005_billing.sql")),
    (
        6,
        "payments",
        include_str!("../migrations/0006_payments.sql"),
    ),
    (
        7,
        "warnings",
        include_str!("../migrations/0007_warnings.sql"),
    ),
    (
        8,
        "usage_export",
        include_str!("../migrations/0008_usage_export.sql"),
    ),
    (
        9,
        "auto_top_up",
        include_str!("../migrations/0009_auto_top_up.sql"),
    ),
    (10, "calls", include_str!("../migrations/0010_calls.sql")),
    (11, "alerts", include_str!("../migrations/0011_alerts.sql")),
    (
        12,
        "call_bodies",
        include_str!("../migrations/0012_call_bodies.sql"),
    ),
    (
        13,
        "providers",
        include_str!("../migrations/0013_providers.sql"),
    ),
    (
        14,
        "provider_models",
        include_str!("../migrations/0014_provider_models.sql"),
    ),
    (
        15,
        "call_log_indexes",
        include_str!("../migrations/0015_call_log_indexes.sql"),
    ),
    (
        16,
        "rollup_team_indexes",
        include_str!("../migrations/0016_rollup_team_indexes.sql"),
    ),
    (
        17,
        "rollups_day",
        include_str!("../migrations/0017_rollups_day.sql"),
    ),
    (
        18,
        "retired_team_slugs",
        include_str!("../migrations/0018_retired_team_slugs.sql"),
    ),
    (
        19,
        "x402_payments",
        include_str!("../migrations/0019_x402_payments.sql"),
    ),
    (
        20,
        "wallet_leases",
        include_str!("../migrations/0020_wallet_leases.sql"),
    ),
    (
        21,
        "counter_leases",
        include_str!("../migrations/0021_counter_leases.sql"),
    ),
];

impl Store {
    /// Applies every migration not yet applied; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let mut tx = self.begin().await?;
        self.lock_migrations(&mut tx).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
        )
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        let mut applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS {
            let mut tx = self.begin().await?;
            self.lock_migrations(&mut tx).await?;
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx.tx)
                .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx.tx).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(name)
            .bind(domain::now_ms())
            .execute(&mut *tx.tx)
            .await?;
            tx.commit().await?;
            applied.push(version);
        }
        let newest = sqlx::query("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?
            .try_get::<Option<i64>, _>(0)?
            .unwrap_or(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if newest > known {
            return Err(StoreError::Corrupt(format!(
                "the database is at schema version {newest}, newer than this binary knows ({known}); \
                 upgrade tollgate"
            )));
        }
        Ok(applied)
    }

    /// PostgreSQL: one node at a time migrates (others starting together
    /// wait in this transaction, then find the work done). SQLite's write
    /// transactions already take turns.
    async fn lock_migrations(&self, tx: &mut crate::WriteTx) -> Result<()> {
        if self.backend() == crate::Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx.tx)
                .await?;
        }
        Ok(())
    }
}

/// The advisory lock key migrations take on PostgreSQL ("tollgate" in
/// ASCII).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;
