//! Persistence for Tollgate: one [`Store`] over sqlx's `AnyPool`, so the same
//! SQL (with `$N` placeholders) runs on the embedded SQLite file and, later,
//! on PostgreSQL. Callers never see which backend is behind it.
//!
//! - [`Store::open`] connects (creating the SQLite file and its folder) and
//!   [`Store::migrate`] applies the versioned migrations in `migrations/`.
//! - Reads are methods on [`Store`]; every write goes through a [`WriteTx`]
//!   (one transaction; `commit` bumps the configuration version that the
//!   gateway polls, so a change reaches every node).
//! - Objects are stored as their JSON spec plus the columns the store needs
//!   to query, join or keep unique (slug, team, foreign keys).
//! - `objects` holds upstreams, services, routes and releases; `access`
//!   teams, users, tokens, sessions, apps, keys, plans, subscriptions, the
//!   webhook outbox and the audit log, with [`Visible`], the team filter of
//!   tenant-scoped lists. `calls` the call log and the analytics rollups;
//!   `alerts` alert rules and the state of their subjects; `providers` AI
//!   providers and their key pools, sealed by [`secrets::MasterKey`].
//!   [`Store::changes`] says what a configuration
//!   version changed (only keys, or more), so a node can patch its keys.

mod access;
mod alerts;
mod billing;
mod calls;
mod direct;
mod export;
mod leases;
mod migrate;
mod money;
mod objects;
mod payments;
mod providers;
pub mod secrets;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use access::{AuditFilter, Delivery, Session, SubscriptionFilter, TokenOwner, Visible};
pub use billing::{Fee, NodeUsage, Usage, fee_key};
pub use calls::{
    CallBatch, CallFilter, CallRow, Figures, Granularity, GroupBy, RollupKey, RollupQuery,
    RollupSlot, RollupValues, call_id, push_call_id,
};
pub use export::{AutoTopUp, OutboxEvent};
pub use leases::{CounterUnit, Renewed};
pub use migrate::MIGRATIONS;
pub use money::{Appended, EntryDelta, LedgerFilter, NewEntry, Wallet, WalletHead};
pub use objects::{ConfigData, Page};
pub use payments::StripePayment;
pub use providers::ProviderData;

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From the store's own SQLite connection ([`direct`]).
    #[error("database error: {0}")]
    Sqlite(String),
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer; taking this before `BEGIN` turns writer
    /// contention into a queue instead of `SQLITE_BUSY` errors. Admin path
    /// only: the gateway never writes through it on a request.
    write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// SQLite: the call writer's own connection to the same file.
    direct: Option<std::sync::Arc<direct::Direct>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Connects to `database_url` (`sqlite://PATH` or `postgres://…`).
    pub async fn open(database_url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let mut direct = None;
        let (backend, url) = if let Some(path) = database_url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if path != ":memory:"
                && let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::Folder {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            direct = Some(direct::Direct::new(path));
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            (Backend::Postgres, database_url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl(database_url.to_owned()));
        };
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 10,
            })
            .acquire_timeout(Duration::from_secs(10));
        let options = match backend {
            Backend::Sqlite => options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // busy_timeout first: switching a new connection to WAL
                    // while another one writes is refused at once (SQLITE_BUSY)
                    // unless the connection already waits for locks. The page
                    // size applies only to a file not yet written (it must
                    // come before WAL): with 16 KiB pages instead of SQLite's
                    // default 4 KiB the call writer spends about 15 % less
                    // CPU per call (fewer splits, WAL frames and checkpoint
                    // writes per row; bench/README.md); an older file keeps
                    // its size.
                    sqlx::raw_sql(
                        "PRAGMA busy_timeout = 5000; PRAGMA page_size = 16384; \
                         PRAGMA journal_mode = WAL; \
                         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                    )
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            }),
            Backend::Postgres => options,
        };
        let pool = options.connect(&url).await?;
        Ok(Store {
            pool,
            backend,
            write_lock: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            direct,
        })
    }

    /// The pool, for tests and tools that need raw SQL.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// What changed after version `since` up to version `until`: only API
    /// keys (their ids), or more (reload everything). Full when the record
    /// misses a version (pruned, or written before changes were recorded).
    pub async fn changes(&self, since: i64, until: i64) -> Result<Changes> {
        if until <= since || until - since > 1000 {
            return Ok(Changes::Full);
        }
        let rows = sqlx::query(
            "SELECT version, kind, object_id FROM config_changes WHERE version > $1 AND version <= $2",
        )
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        let mut versions = std::collections::BTreeSet::new();
        let mut keys = Vec::new();
        for row in &rows {
            versions.insert(row.try_get::<i64, _>("version")?);
            if row.try_get::<String, _>("kind")? != "key" {
                return Ok(Changes::Full);
            }
            keys.push(row.try_get::<String, _>("object_id")?);
        }
        if i64::try_from(versions.len()).unwrap_or(0) != until - since {
            return Ok(Changes::Full);
        }
        keys.sort();
        keys.dedup();
        Ok(Changes::Keys(keys))
    }

    /// The configuration version: bumped by every committed write.
    pub async fn config_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT version FROM config_state WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get::<String, _>(0)?),
            None => None,
        })
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<WriteTx> {
        let guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        // SQLite: take the write lock at BEGIN (IMMEDIATE). A deferred
        // transaction that has read and then writes cannot wait for a
        // writer still finishing (a dropped transaction's rollback runs
        // after the app-level lock is released): SQLite answers "database
        // is locked" at once. IMMEDIATE waits (busy_timeout) instead.
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx {
            tx,
            backend: self.backend,
            _guard: guard,
            changed_config: false,
            changed_keys: Vec::new(),
            appended: Vec::new(),
        })
    }

    pub async fn close(&self) {
        if let Some(direct) = &self.direct {
            direct.close();
        }
        self.pool.close().await;
    }
}

/// One write transaction. Dropping it without [`WriteTx::commit`] rolls back.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Something the gateway serves changed (other than API keys alone).
    changed_config: bool,
    /// Ids of API keys created, revoked or deleted.
    changed_keys: Vec<String>,
    /// Ids of the ledger entries this transaction appended.
    appended: Vec<String>,
}

/// How many versions of change records are kept; a node further behind
/// reloads everything.
const CHANGES_KEPT: i64 = 10_000;

/// What changed between two configuration versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Only these API keys (ids) changed.
    Keys(Vec<String>),
    /// Something else changed, or the record is incomplete: reload all.
    Full,
}

/// The setting that records the sweep of [`Store::seal_stored_secrets`].
const SECRETS_SWEPT: &str = "hs256_secrets_sealed";

impl Store {
    /// Seals the HS256 secrets that versions before sealing stored in clear:
    /// in services' specs, releases' snapshots and audit records (see
    /// [`secrets::MasterKey::seal_json_secrets`]), in one transaction, once
    /// per database (every later write seals). Returns the rows changed.
    pub async fn seal_stored_secrets(&self, key: &secrets::MasterKey) -> Result<u64> {
        if self.setting(SECRETS_SWEPT).await?.is_some() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        if self.backend == Backend::Sqlite {
            // What a sealed value replaces is zeroed, not left in free space.
            sqlx::query("PRAGMA secure_delete = ON")
                .execute(&mut *tx.tx)
                .await?;
        }
        let mut changed = 0;
        for (table, column) in [
            ("services", "spec"),
            ("releases", "snapshot"),
            ("audit", "before"),
            ("audit", "after"),
        ] {
            // Audited: table and column names come from the list above.
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT id, {column} FROM {table} WHERE {column} LIKE '%\"secret\"%'"
            )))
            .fetch_all(&mut *tx.tx)
            .await?;
            for row in rows {
                let id: String = row.try_get(0)?;
                let Some(text) = row.try_get::<Option<String>, _>(1)? else {
                    continue;
                };
                let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                let sealed = key.seal_json_secrets(&mut value).map_err(|error| {
                    StoreError::Corrupt(format!("{table} {id}: cannot seal its secrets: {error}"))
                })?;
                if sealed {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE {table} SET {column} = $1 WHERE id = $2"
                    )))
                    .bind(value.to_string())
                    .bind(&id)
                    .execute(&mut *tx.tx)
                    .await?;
                    changed += 1;
                    tx.changed_config |= table == "services";
                }
            }
        }
        tx.set_setting(SECRETS_SWEPT, &domain::now_ms().to_string())
            .await?;
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA secure_delete = OFF")
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        if changed > 0 && self.backend == Backend::Sqlite {
            // The sealed pages replace the clear ones in the database file
            // now, and the log that held them is emptied.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        Ok(changed)
    }
}

impl WriteTx {
    /// The ids of the ledger entries this transaction appended so far.
    pub fn appended_entries(&self) -> &[String] {
        &self.appended
    }

    pub async fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Commits; when configuration changed, bumps the configuration version
    /// in the same transaction and records what the version changed. The
    /// version row stays locked until the commit, so versions are assigned
    /// in commit order on PostgreSQL too.
    pub async fn commit(mut self) -> Result<()> {
        if self.changed_config || !self.changed_keys.is_empty() {
            let row = sqlx::query(
                "UPDATE config_state SET version = version + 1 WHERE id = 1 RETURNING version",
            )
            .fetch_one(&mut *self.tx)
            .await?;
            let version = row.try_get::<i64, _>(0)?;
            let full = self.changed_config;
            let records: Vec<(&str, &str)> = if full {
                vec![("full", "")]
            } else {
                self.changed_keys
                    .iter()
                    .map(|id| ("key", id.as_str()))
                    .collect()
            };
            for (kind, object_id) in records {
                sqlx::query(
                    "INSERT INTO config_changes (version, kind, object_id) VALUES ($1, $2, $3)",
                )
                .bind(version)
                .bind(kind)
                .bind(object_id)
                .execute(&mut *self.tx)
                .await?;
            }
            sqlx::query("DELETE FROM config_changes WHERE version < $1")
                .bind(version - CHANGES_KEPT)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// Rows per multi-row `INSERT` of the writers that append in bulk (call
/// log, ledger): a batch goes in as statements of these sizes, largest
/// first, so a connection prepares (and caches) three statements per table
/// at most and reuses them for every batch.
pub(crate) const INSERT_ROWS: [usize; 3] = [64, 8, 1];

/// One statement per size of [`INSERT_ROWS`] and backend, made once.
pub(crate) type InsertCache = [[std::sync::OnceLock<String>; 3]; 2];

/// `<head> VALUES (…), (…) <tail>` for `INSERT_ROWS[size]` rows of
/// `columns` parameters each, from `cache`. SQLite gets anonymous `?`
/// parameters: sqlx looks numbered ones up by name, which SQLite does by
/// walking the statement's list of names, quadratic in a wide statement.
/// PostgreSQL gets `$1`, `$2`, ….
pub(crate) fn multi_row_insert(
    cache: &'static InsertCache,
    backend: Backend,
    size: usize,
    (head, columns, tail): (&str, usize, &str),
) -> &'static str {
    let numbered = backend == Backend::Postgres;
    cache[usize::from(numbered)][size].get_or_init(|| {
        use std::fmt::Write;
        let mut sql = format!("{head} VALUES ");
        for row in 0..INSERT_ROWS[size] {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..columns {
                if column > 0 {
                    sql.push_str(", ");
                }
                if numbered {
                    let _ = write!(sql, "${}", row * columns + column + 1);
                } else {
                    sql.push('?');
                }
            }
            sql.push(')');
        }
        sql.push_str(tail);
        sql
    })
}

/// The [`INSERT_ROWS`] size for the next statement of `left` rows.
pub(crate) fn insert_size(left: usize) -> usize {
    INSERT_ROWS
        .iter()
        .position(|&rows| rows <= left)
        .unwrap_or(INSERT_ROWS.len() - 1)
}

fn text(row: &AnyRow, column: &str) -> Result<String> {
    Ok(row.try_get::<String, _>(column)?)
}

fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(column)?)
}

fn int(row: &AnyRow, column: &str) -> Result<i64> {
    Ok(row.try_get::<i64, _>(column)?)
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Maps a unique-constraint violation to a [`StoreError::Conflict`] on `field`.
fn conflict_on(field: &str, message: &str) -> impl FnOnce(sqlx::Error) -> StoreError {
    let field = field.to_owned();
    let message = message.to_owned();
    move |error| match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict { field, message }
        }
        _ => StoreError::Database(error),
    }
}
