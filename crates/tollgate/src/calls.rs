//! The call writer: the gateway's call records → the call log, the
//! analytics rollups and the Prometheus metrics, off the hot path.
//!
//! Every [`GATHER`] (at once while it is behind) it takes up to [`BATCH`]
//! queued calls (without waiting on the queue, so a request never wakes
//! this task), turns each record into a [`CallEntry`], groups them by
//! identity ([`crate::metrics::tally`]) for [`Metrics`] and the rollups,
//! and writes one transaction: the calls themselves (unless `calls.log`
//! is off) and the additions to the minute, hour and day rollups. A failed
//! write is retried with the same rows (their ids repeat, so nothing is
//! logged twice; the rollups are added in the same transaction, so they
//! never count twice), for as long as the store does not answer; a batch
//! the answering store refuses [`GIVE_UP_AFTER`] times is dropped and
//! counted. At shutdown, after the gateway has finished its requests,
//! it writes what is left.
//!
//! With `otel.endpoint` set, each call's span goes to the trace exporter
//! ([`crate::otel`]) as well.
//!
//! The retention task deletes calls older than `calls.retention_days`,
//! minute rollups older than `analytics.minute_retention_days`, hour
//! rollups older than `analytics.hour_retention_days` and day rollups older
//! than `analytics.day_retention_days`, in bounded chunks, every
//! [`RETENTION_EVERY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::calls::CallEntry;
use gateway::calls::CallRecord;
use store::{CallBatch, CallRow, Granularity, RollupKey, RollupValues, Store};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::{Identity, Metrics, Tally};

/// Short: at 28k calls a second a 200 ms gather made a 25 ms burst of
/// one core's time, and requests queued behind it (bench/README.md).
const GATHER: Duration = Duration::from_millis(25);
/// The pause after a failed write grows by this much per failure, up to 5 s.
const RETRY_STEP: Duration = Duration::from_millis(200);
/// Gathers in a row that find no calls (a second at [`GATHER`]) before the
/// writer lets its spare rows go.
const IDLE_GATHERS: u32 = 40;
/// Failed writes of one batch, while the store answers, before it is
/// dropped (while it does not answer, the batch waits).
const GIVE_UP_AFTER: u32 = 10;
/// Calls written per transaction, at most.
const BATCH: usize = 5_000;
/// Batches (of up to 64 records each) the gateway may queue.
pub const QUEUE_BATCHES: usize = 1_024;
pub const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// Rows deleted per retention statement.
const DELETE_CHUNK: i64 = 10_000;
const DAY_MS: i64 = 86_400_000;

/// What the call writer keeps, and for how long.
#[derive(Debug, Clone)]
pub struct CallsConfig {
    /// Store each call in the call log (analytics and metrics count calls
    /// either way).
    pub log: bool,
    pub retention_days: u64,
    pub minute_retention_days: u64,
    pub hour_retention_days: u64,
    pub day_retention_days: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            log: true,
            retention_days: 7,
            minute_retention_days: 30,
            hour_retention_days: 365,
            day_retention_days: 1095,
        }
    }
}

/// Rows for one transaction.
#[derive(Default)]
struct Pending {
    calls: Vec<Box<CallRow>>,
    minute: HashMap<RollupKey, RollupValues>,
    hour: HashMap<RollupKey, RollupValues>,
    day: HashMap<RollupKey, RollupValues>,
}

impl Pending {
    /// Adds a batch of calls, grouped (see [`crate::metrics::tally`]), to
    /// the rollups.
    fn add(&mut self, tallies: &[(Identity<'_>, Tally)]) {
        for (identity, tally) in tallies {
            for (granularity, rows) in [
                (Granularity::Minute, &mut self.minute),
                (Granularity::Hour, &mut self.hour),
                (Granularity::Day, &mut self.day),
            ] {
                let key = RollupKey {
                    bucket_ms: granularity.bucket(identity.second * 1000),
                    provider_team: identity.provider_team.to_owned(),
                    consumer_team: identity.consumer_team.to_owned(),
                    service: identity.service.to_owned(),
                    app: identity.app.to_owned(),
                    model: identity.model.to_owned(),
                    status: i64::from(identity.status),
                    code: identity.code.to_owned(),
                };
                rows.entry(key).or_default().merge(&tally.values);
            }
        }
    }

    /// Keeps the calls themselves (with their ids, [`set_row_id`]) for
    /// the call log.
    fn keep(&mut self, mut rows: Vec<Box<CallRow>>) {
        self.calls.append(&mut rows);
    }

    fn is_empty(&self) -> bool {
        self.minute.is_empty()
    }

    /// The batch to write, its rollup rows in key order: nodes sharing
    /// PostgreSQL then lock the rows they both add to in the same order,
    /// and never deadlock each other.
    fn into_batch(self) -> CallBatch {
        let sorted = |rows: HashMap<RollupKey, RollupValues>| {
            let mut rows: Vec<_> = rows.into_iter().collect();
            rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
            rows
        };
        CallBatch {
            calls: self.calls,
            minute: sorted(self.minute),
            hour: sorted(self.hour),
            day: sorted(self.day),
        }
    }
}

/// A call's row id, set once (a retried batch repeats it): the request id
/// when the gateway minted it for this call alone, a UUID v7 of the call's
/// start like any row id (the request id index leaves such calls out: they
/// are found by their id); else a new UUID v7 of the call's time.
fn set_row_id(row: &mut CallRow, minted: bool) {
    row.id.clear();
    if minted {
        row.id.push_str(&row.entry.request_id);
    } else {
        store::push_call_id(&mut row.id, row.entry.at_ms, rand::random());
    }
}

/// Rows of written batches, kept for their text buffers: a call's entry
/// is refilled in place ([`CallRecord::fill`]), so the writer does not
/// allocate and free a dozen strings per call. At most [`BATCH`] are kept,
/// and none once the writer has been idle for a second ([`IDLE_GATHERS`]).
#[derive(Default)]
struct Spare(Vec<Box<CallRow>>);

impl Spare {
    /// `n` rows, reused ones first.
    fn take(&mut self, n: usize) -> Vec<Box<CallRow>> {
        let mut rows = self.0.split_off(self.0.len().saturating_sub(n));
        rows.resize_with(n, || {
            Box::new(CallRow {
                id: String::new(),
                entry: CallEntry::default(),
            })
        });
        rows
    }

    fn give(&mut self, rows: Vec<Box<CallRow>>) {
        let room = BATCH.saturating_sub(self.0.len());
        self.0.extend(rows.into_iter().take(room));
    }
}

/// Starts the call writer; the gateway sends its records to the returned
/// sink. `drain` tells it that the gateway has stopped: it writes what is
/// queued and ends.
pub fn spawn_writer(
    store: Store,
    metrics: Arc<Metrics>,
    config: CallsConfig,
    spans: Option<crate::otel::SpanSink>,
    drain: oneshot::Receiver<()>,
) -> (gateway::calls::CallSink, JoinHandle<()>) {
    let (sink, mut records) = mpsc::channel::<Vec<CallRecord>>(QUEUE_BATCHES);
    let task = tokio::spawn(async move {
        let mut drain = drain;
        let mut draining = false;
        let mut pending = Pending::default();
        // The batch being written, kept as it is until it is written.
        let mut writing: Option<Arc<CallBatch>> = None;
        let mut failures = 0u32;
        // Failures while the store answered (it refused the batch).
        let mut refusals = 0u32;
        let mut spare = Spare::default();
        // The last take filled a batch: more may be queued, so no pause.
        let mut backlog = false;
        let mut idle_gathers = 0u32;
        loop {
            if !draining && !backlog {
                let pause = if failures == 0 {
                    GATHER
                } else {
                    // Back off while the database fails, up to 5 s.
                    RETRY_STEP * failures.min(25)
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = &mut drain => draining = true,
                }
            }
            // A batch that failed is written again as it was before more
            // is added to it, so the retry repeats the same ids.
            if failures == 0 {
                let mut taken = 0;
                while taken < BATCH {
                    let Ok(batch) = records.try_recv() else { break };
                    taken += batch.len();
                    let keys: Vec<_> = batch.iter().map(CallRecord::group_key).collect();
                    let mut rows = spare.take(batch.len());
                    for (record, row) in batch.iter().zip(rows.iter_mut()) {
                        record.fill(&mut row.entry);
                        set_row_id(row, record.request_id_minted);
                    }
                    let tallies = crate::metrics::tally(rows.iter().map(|row| &row.entry), |i| {
                        i > 0 && keys[i].is_some() && keys[i] == keys[i - 1]
                    });
                    // The keys' pointers are only meaningful while the
                    // records keep what they point to alive.
                    drop((keys, batch));
                    metrics.observe_tallies(&tallies);
                    pending.add(&tallies);
                    drop(tallies);
                    if let Some(sink) = &spans {
                        let batch: Vec<_> = rows
                            .iter()
                            .filter_map(|row| crate::otel::span(&row.entry))
                            .collect();
                        if !batch.is_empty() && sink.try_send(batch).is_err() {
                            tracing::debug!("trace export queue full: spans dropped");
                        }
                    }
                    if config.log {
                        pending.keep(rows);
                    } else {
                        spare.give(rows);
                    }
                }
                backlog = taken >= BATCH;
                idle_gathers = if taken == 0 && writing.is_none() {
                    idle_gathers.saturating_add(1)
                } else {
                    0
                };
                if idle_gathers == IDLE_GATHERS {
                    // Idle for a while: the spare rows' memory goes back.
                    // Not sooner: at a few thousand calls a second most
                    // gathers find nothing (workers send every 64 calls or
                    // 100 ms), and each call would allocate its row again.
                    spare = Spare::default();
                }
            }
            let batch = match &writing {
                Some(batch) => batch.clone(),
                None if pending.is_empty() => {
                    if draining {
                        return;
                    }
                    continue;
                }
                None => writing
                    .insert(Arc::new(std::mem::take(&mut pending).into_batch()))
                    .clone(),
            };
            let calls = batch.calls.len();
            let written = store.write_calls(batch).await;
            match written {
                Ok(()) => {
                    failures = 0;
                    refusals = 0;
                    // Its rows' buffers serve the next calls.
                    if let Some(done) = writing.take()
                        && let Ok(done) = Arc::try_unwrap(done)
                    {
                        spare.give(done.calls);
                    }
                }
                Err(error) => {
                    failures += 1;
                    // Retried after a pause, not at once.
                    backlog = false;
                    // A store that does not answer is waited for (the
                    // gateway's queue holds the calls meanwhile, and only
                    // what overflows it is lost); one that answers but
                    // keeps refusing this batch must not stop the log:
                    // the batch is dropped (and counted).
                    if store.ping().await.is_ok() {
                        refusals += 1;
                    }
                    tracing::warn!(%error, calls, failures, refusals, "call log write failed; retrying");
                    if refusals >= GIVE_UP_AFTER || (draining && failures > 3) {
                        tracing::error!(calls, %error, "call log: batch dropped");
                        metrics.count_dropped(calls.max(1) as u64);
                        writing = None;
                        failures = 0;
                        refusals = 0;
                    }
                }
            }
        }
    });
    (sink, task)
}

/// Deletes what has outlived its retention (and x402 claims that ran
/// out), once.
pub async fn enforce_retention(
    store: &Store,
    config: &CallsConfig,
    now_ms: i64,
) -> store::Result<u64> {
    let days = |n: u64| i64::try_from(n).unwrap_or(i64::MAX / DAY_MS) * DAY_MS;
    let mut deleted = 0;
    let before = now_ms.saturating_sub(days(config.retention_days));
    loop {
        let done = store.delete_calls_before(before, DELETE_CHUNK).await?;
        deleted += done;
        if done < DELETE_CHUNK as u64 {
            break;
        }
    }
    deleted += store
        .delete_rollups_before(
            Granularity::Minute,
            now_ms.saturating_sub(days(config.minute_retention_days)),
        )
        .await?;
    deleted += store
        .delete_rollups_before(
            Granularity::Hour,
            now_ms.saturating_sub(days(config.hour_retention_days)),
        )
        .await?;
    deleted += store
        .delete_rollups_before(
            Granularity::Day,
            now_ms.saturating_sub(days(config.day_retention_days)),
        )
        .await?;
    // x402 claims whose authorization can no longer be valid, and wallet
    // leases of nodes gone an hour ago.
    deleted += store.sweep_x402_payments(now_ms).await?;
    deleted += store.sweep_leases(now_ms.saturating_sub(3_600_000)).await?;
    Ok(deleted)
}

/// Runs [`enforce_retention`] at start and every `every`.
pub fn spawn_retention(
    store: Store,
    config: CallsConfig,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match enforce_retention(&store, &config, domain::now_ms()).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(
                    deleted,
                    "retention: old calls, rollups and x402 claims deleted"
                ),
                Err(error) => tracing::warn!(%error, "retention run failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// `/_tollgate/requests/<id>` reads the call log through this.
pub struct StoreLookup(pub Store);

impl gateway::me::CallLookup for StoreLookup {
    fn find<'a>(
        &'a self,
        request_id: &'a str,
        team: &'a str,
        app: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<CallEntry>> + Send + 'a>> {
        Box::pin(async move {
            match self.0.calls_by_request(request_id, team, app, 20).await {
                Ok(rows) => rows.into_iter().map(|row| row.entry).collect(),
                Err(error) => {
                    tracing::warn!(%error, "call log lookup failed");
                    Vec::new()
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(at_ms: i64, request_id: &str) -> CallEntry {
        CallEntry {
            request_id: request_id.into(),
            at_ms,
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            client_ip: "127.0.0.1".into(),
            completed: true,
            ..Default::default()
        }
    }

    /// Retention deletes calls and rollups past their days, and nothing
    /// younger (a real SQLite file).
    #[tokio::test]
    async fn retention_keeps_what_is_young_enough() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let now = 1_800_000_000_000;
        let mut pending = Pending::default();
        // Calls 8, 6 and 0 days old; rollups of the same times.
        let kept: Vec<_> = [(8, "old"), (6, "recent"), (0, "now")]
            .into_iter()
            .map(|(days, id)| entry(now - days * DAY_MS, id))
            .collect();
        // And a minute rollup 31 days old, an hour rollup 366 days old
        // and a day rollup 1,096 days old.
        let mut all = kept.clone();
        all.push(entry(now - 31 * DAY_MS, "month-old"));
        all.push(entry(now - 366 * DAY_MS, "year-old"));
        all.push(entry(now - 1096 * DAY_MS, "three-years-old"));
        pending.add(&crate::metrics::tally(&all, |_| false));
        pending.keep(
            kept.into_iter()
                .map(|entry| {
                    let mut row = CallRow {
                        id: "a used buffer".into(),
                        entry,
                    };
                    set_row_id(&mut row, false);
                    Box::new(row)
                })
                .collect(),
        );
        store
            .write_calls(Arc::new(pending.into_batch()))
            .await
            .unwrap();
        let config = CallsConfig::default();
        let deleted = enforce_retention(&store, &config, now).await.unwrap();
        let page = store
            .calls(
                &store::Visible::all(),
                &store::CallFilter::default(),
                None,
                10,
            )
            .await
            .unwrap();
        let ids: Vec<_> = page
            .items
            .iter()
            .map(|r| r.entry.request_id.as_str())
            .collect();
        assert_eq!(ids, ["now", "recent"]);
        assert_eq!(
            deleted,
            1 + 3 + 2 + 1,
            "one call, three minute rows, two hour rows, one day row"
        );
        assert_eq!(enforce_retention(&store, &config, now).await.unwrap(), 0);
    }
}
