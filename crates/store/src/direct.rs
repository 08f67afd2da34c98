//! A SQLite connection of the store's own, outside sqlx, for the writes the
//! gateway makes at its call rate (the call log and its rollups).
//!
//! Through sqlx, each statement is a message to sqlx's SQLite thread and
//! back (two thread switches), and each value of the `Any` driver is copied
//! twice before SQLite copies it. Here the whole batch runs in one blocking
//! task on one connection: values are bound straight from the caller's
//! rows and the statements stay prepared. It opens the same file (WAL
//! mode, set by the pool) with the same busy timeout, and writes only
//! under the store's write lock, so it queues behind the pool's writers
//! like any other.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use crate::{Result, StoreError};

/// The connection, opened on first use and again after an error.
pub(crate) struct Direct {
    path: String,
    connection: Mutex<Option<Connection>>,
}

impl Direct {
    pub(crate) fn new(path: &str) -> Arc<Direct> {
        Arc::new(Direct {
            path: path.to_owned(),
            connection: Mutex::new(None),
        })
    }

    /// Runs `work` on the connection, on this thread (call it from a
    /// blocking task). After an error the connection is closed, so the next
    /// call starts from a fresh one.
    pub(crate) fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => slot.insert(self.open()?),
        };
        let outcome = work(connection);
        if outcome.is_err() {
            *slot = None;
        }
        Ok(outcome?)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // As the pool's connections (busy timeout, durability), plus: a
        // statement's rollback journal kept in memory, and room for a whole
        // batch's pages so a transaction does not spill to the WAL early.
        connection.execute_batch(
            "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; \
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -8192;",
        )?;
        connection.set_prepared_statement_cache_capacity(16);
        Ok(connection)
    }

    /// A connection for one read, outside the writer's lock: WAL lets it
    /// read beside the writers, and analytics read tens of thousands of
    /// rows, which through sqlx's `Any` driver cost more than the query
    /// (each row and column converted and sent over a channel).
    pub(crate) fn reader(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(connection)
    }

    /// Closes the connection (it reopens if used again).
    pub(crate) fn close(&self) {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = None;
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Sqlite(error.to_string())
    }
}
