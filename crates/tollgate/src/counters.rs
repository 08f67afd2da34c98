//! Rate-limit counters shared between gateway nodes through Redis
//! (`storage.redis_url`, SPEC §12). Each node decides alone, in memory, on
//! every request; every 100 ms this task adds the node's new admissions of
//! each active window to a Redis counter (`INCRBY`, one round trip for all
//! windows) and feeds the totals back, so every node counts the others'
//! admissions. Between two syncs a node can admit what the others admitted
//! meanwhile on top of the limit: the overshoot is bounded by the traffic
//! of one sync interval. When Redis is unreachable, limits hold per node
//! and the task retries; what the node admitted meanwhile is added to the
//! shared counters once Redis answers (for windows still current).

use std::time::Duration;

use gateway::Gateway;
use tokio::sync::watch;

const INTERVAL: Duration = Duration::from_millis(100);

/// The Redis key of one window's counter.
fn key(item: &gateway::limit::SyncItem) -> String {
    format!(
        "tollgate:rl:{}:{}:{}",
        item.subject, item.period_ms, item.start_ms
    )
}

async fn sync(
    connection: &mut redis::aio::ConnectionManager,
    gateway: &Gateway,
    in_flight: &mut InFlight,
) -> redis::RedisResult<()> {
    in_flight.sync(connection, gateway).await?;
    let items = gateway.take_unsynced_counts();
    if items.is_empty() {
        // Nothing to share: still check that Redis answers, for readiness.
        return redis::cmd("PING").query_async::<()>(connection).await;
    }
    let mut pipe = redis::pipe();
    for item in &items {
        let key = key(item);
        // Kept two periods: the previous window's total still weighs in.
        pipe.cmd("INCRBY").arg(&key).arg(item.delta);
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(item.period_ms.saturating_mul(2))
            .ignore();
    }
    let totals: Vec<u64> = match pipe.query_async(connection).await {
        Ok(totals) => totals,
        Err(error) => {
            // Sent with the next sync that reaches Redis: what this node
            // admitted while cut off counts for every node once it is back.
            // (A reply lost after Redis applied it would count them twice:
            // limits err towards refusing.)
            gateway.give_back_unsynced(&items);
            return Err(error);
        }
    };
    for (item, total) in items.iter().zip(totals) {
        gateway.set_shared_count(item, total);
    }
    Ok(())
}

/// Requests in flight under concurrency limits, shared: each node writes
/// its count per subject into a Redis hash (`tollgate:cc:<subject>`, one
/// field per node: `count:ms`) and reads the others' fresh ones back, so a
/// node admits only what the limit leaves after the other nodes' calls.
/// A count older than [`IN_FLIGHT_FRESH_MS`] (its node gone) counts nothing.
struct InFlight {
    node: String,
    /// Subjects this node wrote a non-zero count for (to write their zero).
    published: std::collections::HashSet<String>,
}

const IN_FLIGHT_FRESH_MS: i64 = 1_000;

impl InFlight {
    fn new(node: String) -> Self {
        Self {
            node,
            published: std::collections::HashSet::new(),
        }
    }

    async fn sync(
        &mut self,
        connection: &mut redis::aio::ConnectionManager,
        gateway: &Gateway,
    ) -> redis::RedisResult<()> {
        let counts = gateway.in_flight_counts();
        if counts.is_empty() {
            return Ok(());
        }
        let now = domain::now_ms();
        let mut pipe = redis::pipe();
        for (subject, count) in &counts {
            let key = format!("tollgate:cc:{subject}");
            if *count > 0 || self.published.contains(subject) {
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg(&self.node)
                    .arg(format!("{count}:{now}"))
                    .ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(60_000).ignore();
            }
            pipe.cmd("HGETALL").arg(&key);
        }
        let all: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(connection).await?;
        for ((subject, count), fields) in counts.iter().zip(all) {
            if *count > 0 {
                self.published.insert(subject.clone());
            } else {
                self.published.remove(subject);
            }
            let others: u32 = fields
                .iter()
                .filter(|(node, _)| **node != self.node)
                .filter_map(|(_, value)| {
                    let (count, at) = value.split_once(':')?;
                    let at: i64 = at.parse().ok()?;
                    (now - at <= IN_FLIGHT_FRESH_MS).then(|| count.parse::<u32>().ok())?
                })
                .sum();
            gateway.set_remote_in_flight(subject, others);
        }
        Ok(())
    }
}

/// `node`: this node's name (its ledger actor), for its in-flight counts.
pub fn spawn(
    url: String,
    gateway: Gateway,
    node: String,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match redis::Client::open(url.as_str()) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "storage.redis_url is not usable; rate limits stay per node");
                return;
            }
        };
        // Not shared until the first sync says so.
        gateway.set_counters_reachable(false);
        // Bounded waits: a Redis that hangs must not hold counts back long.
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let mut connection = None;
        let mut failing = false;
        let mut in_flight = InFlight::new(node);
        loop {
            tokio::select! {
                () = tokio::time::sleep(INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            if connection.is_none() {
                match redis::aio::ConnectionManager::new_with_config(
                    client.clone(),
                    manager_config.clone(),
                )
                .await
                {
                    Ok(made) => connection = Some(made),
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "Redis unreachable; rate limits are per node until it answers");
                            failing = true;
                        }
                        gateway.set_counters_reachable(false);
                        continue;
                    }
                }
            }
            let Some(live) = connection.as_mut() else {
                continue;
            };
            let synced = sync(live, &gateway, &mut in_flight).await;
            gateway.set_counters_reachable(synced.is_ok());
            match synced {
                Ok(()) if failing => {
                    tracing::info!("Redis answers again; rate limits are shared");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "Redis sync failed; rate limits are per node until it answers");
                        failing = true;
                    }
                    // Per node meanwhile: the others' calls are not known.
                    for (subject, _) in gateway.in_flight_counts() {
                        gateway.set_remote_in_flight(&subject, 0);
                    }
                }
            }
        }
    })
}
