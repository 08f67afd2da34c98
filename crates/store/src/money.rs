//! Wallets and the ledger.
//!
//! Appending is the only write: [`WriteTx::append_entry`] locks the team's
//! wallet row, returns the existing entry when the idempotency key was seen
//! before, else records the entry and moves the wallet's cached balance by
//! its amount, all in the caller's transaction. The cached balance always
//! equals the sum of the team's entries (checked by tests).

use domain::money::{EntryKind, LedgerEntry};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::objects::{Page, fetch_limit, page_of};
use crate::{Result, Store, StoreError, WriteTx};

/// A team's wallet: the sum of its ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wallet {
    pub balance_nanos: i64,
    pub entries: i64,
    pub updated_at_ms: i64,
}

/// An entry to append (the store assigns its place in the ledger).
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub entry: LedgerEntry,
    /// When set, the append is refused ([`StoreError::Conflict`] on
    /// `amount`) if the balance would end below this.
    pub min_balance_after: Option<i64>,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    Created(LedgerEntry, Wallet),
    /// The key was used before: this is the entry it recorded.
    Existing(LedgerEntry),
}

/// Which entries a ledger listing returns.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub kind: Option<EntryKind>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

fn entry_from(row: &AnyRow) -> Result<LedgerEntry> {
    let kind: String = row.try_get("kind")?;
    Ok(LedgerEntry {
        id: row.try_get("id")?,
        team_id: row.try_get("team_id")?,
        kind: EntryKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("ledger entry kind '{kind}'")))?,
        amount_nanos: row.try_get("amount_nanos")?,
        idempotency_key: row.try_get("idempotency_key")?,
        actor: row.try_get("actor")?,
        reason: row.try_get("reason")?,
        request_id: row.try_get("request_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn wallet_from(row: &AnyRow) -> Result<Wallet> {
    Ok(Wallet {
        balance_nanos: row.try_get("balance_nanos")?,
        entries: row.try_get("entries")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

impl WriteTx {
    /// Locks `team_id`'s wallet row (made at zero if new, `at_ms` its
    /// time): concurrent appends, leases and debits of one wallet then run
    /// one after the other. Its state.
    pub(crate) async fn lock_wallet(&mut self, team_id: &str, at_ms: i64) -> Result<Wallet> {
        let row = sqlx::query(
            "INSERT INTO wallets (team_id, balance_nanos, entries, updated_at_ms) VALUES ($1, 0, 0, $2) \
             ON CONFLICT (team_id) DO UPDATE SET updated_at_ms = wallets.updated_at_ms \
             RETURNING balance_nanos, entries, updated_at_ms",
        )
        .bind(team_id)
        .bind(at_ms)
        .fetch_one(&mut *self.tx)
        .await?;
        wallet_from(&row)
    }

    /// Appends `entry` unless the team already has an entry with its
    /// idempotency key (then returns that one, and nothing changes).
    /// Refuses an entry that would overflow the balance.
    pub async fn append_entry(&mut self, new: NewEntry) -> Result<Appended> {
        let NewEntry {
            entry,
            min_balance_after,
        } = new;
        // Lock the wallet row first (created at zero if new): concurrent
        // appends to one wallet then run one after the other, and the
        // idempotency check below sees every committed entry.
        let wallet = self
            .lock_wallet(&entry.team_id, entry.created_at_ms)
            .await?;
        let existing =
            sqlx::query("SELECT * FROM ledger WHERE team_id = $1 AND idempotency_key = $2")
                .bind(&entry.team_id)
                .bind(&entry.idempotency_key)
                .fetch_optional(&mut *self.tx)
                .await?;
        if let Some(existing) = existing {
            return Ok(Appended::Existing(entry_from(&existing)?));
        }
        let balance = wallet
            .balance_nanos
            .checked_add(entry.amount_nanos)
            .ok_or_else(|| StoreError::Conflict {
                field: "amount".into(),
                message: "would take the balance beyond what can be held".into(),
            })?;
        if let Some(floor) = min_balance_after {
            // What gateway nodes hold for calls (many nodes) is not there
            // to take: a debit keeps clear of it.
            let held = if entry.amount_nanos < 0 {
                self.leased(&entry.team_id, entry.created_at_ms, "").await?
            } else {
                0
            };
            if balance < floor.saturating_add(held) {
                let message = if held > 0 {
                    format!(
                        "would take the balance below {}: of its {}, {} is held by gateway nodes for calls (what they do not use goes back within seconds)",
                        domain::money::format(floor),
                        domain::money::format(wallet.balance_nanos),
                        domain::money::format(held)
                    )
                } else {
                    format!(
                        "would take the balance below {} (it is {})",
                        domain::money::format(floor),
                        domain::money::format(wallet.balance_nanos)
                    )
                };
                return Err(StoreError::Conflict {
                    field: "amount".into(),
                    message,
                });
            }
        }
        let seq = wallet.entries + 1;
        sqlx::query(
            "INSERT INTO ledger (id, team_id, seq, kind, amount_nanos, idempotency_key, actor, reason, \
             request_id, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&entry.id)
        .bind(&entry.team_id)
        .bind(seq)
        .bind(entry.kind.as_str())
        .bind(entry.amount_nanos)
        .bind(&entry.idempotency_key)
        .bind(&entry.actor)
        .bind(entry.reason.as_deref())
        .bind(entry.request_id.as_deref())
        .bind(entry.created_at_ms)
        .execute(&mut *self.tx)
        .await?;
        let updated = Wallet {
            balance_nanos: balance,
            entries: seq,
            updated_at_ms: entry.created_at_ms,
        };
        sqlx::query(
            "UPDATE wallets SET balance_nanos = $2, entries = $3, updated_at_ms = $4 WHERE team_id = $1",
        )
        .bind(&entry.team_id)
        .bind(updated.balance_nanos)
        .bind(updated.entries)
        .bind(updated.updated_at_ms)
        .execute(&mut *self.tx)
        .await?;
        self.appended.push(entry.id.clone());
        Ok(Appended::Created(entry, updated))
    }
}

impl WriteTx {
    /// The entry of team `team_id` recorded under `key`, read once the
    /// wallet's row is locked: a writer of the same key in flight has then
    /// committed (or given up).
    pub async fn entry_by_key(
        &mut self,
        team_id: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<LedgerEntry>> {
        self.lock_wallet(team_id, now_ms).await?;
        sqlx::query("SELECT * FROM ledger WHERE team_id = $1 AND idempotency_key = $2")
            .bind(team_id)
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|row| entry_from(&row))
            .transpose()
    }

    /// Appends many charges (or any entries) of one team at once: the
    /// wallet row is locked and updated once, and the entries go in with
    /// multi-row `INSERT`s. No floor is checked: the gateway reserved these
    /// amounts. The entries are new, or all recorded already (a batch
    /// retried after a commit that did succeed): then nothing changes.
    /// Returns how many entries were recorded.
    pub async fn append_batch(&mut self, team_id: &str, entries: &[LedgerEntry]) -> Result<usize> {
        let Some(first) = entries.first() else {
            return Ok(0);
        };
        let wallet = self.lock_wallet(team_id, first.created_at_ms).await?;
        let known = sqlx::query("SELECT 1 FROM ledger WHERE team_id = $1 AND idempotency_key = $2")
            .bind(team_id)
            .bind(&first.idempotency_key)
            .fetch_optional(&mut *self.tx)
            .await?;
        if known.is_some() {
            return Ok(0);
        }
        let mut balance = wallet.balance_nanos;
        let mut last_at = wallet.updated_at_ms;
        for entry in entries {
            balance =
                balance
                    .checked_add(entry.amount_nanos)
                    .ok_or_else(|| StoreError::Conflict {
                        field: "amount".into(),
                        message: "would take the balance beyond what can be held".into(),
                    })?;
            last_at = last_at.max(entry.created_at_ms);
        }
        let mut seq = wallet.entries;
        let mut rest = entries;
        while !rest.is_empty() {
            let size = crate::insert_size(rest.len());
            let (chunk, tail) = rest.split_at(crate::INSERT_ROWS[size]);
            let mut query = sqlx::query(insert_sql(self.backend, size));
            for entry in chunk {
                seq += 1;
                query = query
                    .bind(entry.id.as_str())
                    .bind(team_id)
                    .bind(seq)
                    .bind(entry.kind.as_str())
                    .bind(entry.amount_nanos)
                    .bind(entry.idempotency_key.as_str())
                    .bind(entry.actor.as_str())
                    .bind(entry.reason.as_deref())
                    .bind(entry.request_id.as_deref())
                    .bind(entry.created_at_ms);
            }
            query.execute(&mut *self.tx).await?;
            rest = tail;
        }
        sqlx::query(
            "UPDATE wallets SET balance_nanos = $2, entries = $3, updated_at_ms = $4 WHERE team_id = $1",
        )
        .bind(team_id)
        .bind(balance)
        .bind(seq)
        .bind(last_at)
        .execute(&mut *self.tx)
        .await?;
        // A node's charges were spent out of its lease (many nodes): the
        // lease shrinks with the balance, so leases never hold more.
        if self.backend == crate::Backend::Postgres {
            let spent: i64 = entries.iter().map(|e| e.amount_nanos).sum();
            sqlx::query(
                "UPDATE wallet_leases SET nanos = nanos + $3 WHERE team_id = $1 AND node = $2",
            )
            .bind(team_id)
            .bind(first.actor.as_str())
            .bind(spent)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(entries.len())
    }
}

/// The ledger's `INSERT` of `INSERT_ROWS[size]` entries.
fn insert_sql(backend: crate::Backend, size: usize) -> &'static str {
    static CACHE: crate::InsertCache = [const { [const { std::sync::OnceLock::new() }; 3] }; 2];
    crate::multi_row_insert(
        &CACHE,
        backend,
        size,
        (
            "INSERT INTO ledger (id, team_id, seq, kind, amount_nanos, idempotency_key, actor, \
             reason, request_id, created_at_ms)",
            10,
            "",
        ),
    )
}

/// Where one wallet's ledger stands (for the gateway's sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletHead {
    pub team_id: String,
    pub team_slug: String,
    /// The sequence number of the wallet's latest entry.
    pub entries: i64,
}

/// A ledger entry as the gateway's sync needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDelta {
    pub seq: i64,
    pub id: String,
    pub amount_nanos: i64,
    pub actor: String,
}

impl Store {
    /// Every wallet's latest sequence number.
    pub async fn wallet_heads(&self) -> Result<Vec<WalletHead>> {
        let rows = sqlx::query(
            "SELECT w.team_id, t.slug, w.entries FROM wallets w JOIN teams t ON t.id = w.team_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(WalletHead {
                    team_id: row.try_get(0)?,
                    team_slug: row.try_get(1)?,
                    entries: row.try_get(2)?,
                })
            })
            .collect()
    }

    /// A team's entries after sequence number `after`, in order.
    pub async fn entries_since(&self, team_id: &str, after: i64) -> Result<Vec<EntryDelta>> {
        let rows = sqlx::query(
            "SELECT seq, amount_nanos, actor, id FROM ledger WHERE team_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(team_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(EntryDelta {
                    seq: row.try_get(0)?,
                    amount_nanos: row.try_get(1)?,
                    actor: row.try_get(2)?,
                    id: row.try_get(3)?,
                })
            })
            .collect()
    }

    /// Team ids by slug (the ledger writer's lookup).
    pub async fn team_ids(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT slug, id FROM teams")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// A team's wallet (zero when nothing was ever recorded).
    pub async fn wallet(&self, team_id: &str) -> Result<Wallet> {
        let row = sqlx::query(
            "SELECT balance_nanos, entries, updated_at_ms FROM wallets WHERE team_id = $1",
        )
        .bind(team_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(wallet_from)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// The sum of a team's entries, computed from the ledger itself.
    pub async fn ledger_sum(&self, team_id: &str) -> Result<i64> {
        // PostgreSQL sums BIGINT into NUMERIC, which the Any driver cannot
        // read: cast back (a sum beyond i64 is an error, never a wrap).
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) AS total FROM ledger WHERE team_id = $1",
        )
        .bind(team_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("total")?)
    }

    /// A team's entries in the order they were recorded, after the entry
    /// whose id is `after`.
    pub async fn ledger(
        &self,
        team_id: &str,
        filter: &LedgerFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<LedgerEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM ledger WHERE team_id = $1 \
             AND seq > COALESCE((SELECT seq FROM ledger WHERE team_id = $1 AND id = $2), 0) \
             AND ($3 = '' OR kind = $3) \
             AND created_at_ms >= $4 AND created_at_ms < $5 ORDER BY seq LIMIT $6",
        )
        .bind(team_id)
        .bind(after.unwrap_or(""))
        .bind(filter.kind.map_or("", EntryKind::as_str))
        .bind(filter.since_ms.unwrap_or(i64::MIN))
        .bind(filter.until_ms.unwrap_or(i64::MAX))
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(entry_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |entry| &entry.id))
    }
}
