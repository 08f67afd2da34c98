//! Warning webhooks (SPEC §5): every 2 s this node computes the early
//! warnings that hold ([`gateway::warn::states`]: low balance, quota or
//! budget nearly exhausted, subscription expiring) and compares them with
//! the ones it knows to be active. A warning that starts to hold is raised
//! in the shared `warnings` table; only the node whose write turned it
//! active queues the `warning.*` event for the consumer team's webhooks,
//! in the same transaction. So each crossing fires once, whatever the
//! number of calls or nodes; a warning that stops holding is re-armed.

use std::collections::HashSet;
use std::time::Duration;

use gateway::Gateway;
use store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const EVERY: Duration = Duration::from_secs(2);

pub fn spawn(
    store: Store,
    gateway: Gateway,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut active: Option<HashSet<String>> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(error) = check(&store, &gateway, &mut active).await {
                tracing::warn!(%error, "warning check failed; retrying");
            }
        }
    })
}

async fn check(
    store: &Store,
    gateway: &Gateway,
    active: &mut Option<HashSet<String>>,
) -> store::Result<()> {
    let known = match active {
        Some(known) => known,
        None => active.insert(store.active_warnings().await?.into_iter().collect()),
    };
    let now = domain::now_ms();
    let states = gateway.warnings();
    let holding: HashSet<&str> = states.iter().map(|s| s.key.as_str()).collect();
    let raised: Vec<_> = states.iter().filter(|s| !known.contains(&s.key)).collect();
    let cleared: Vec<String> = known
        .iter()
        .filter(|key| !holding.contains(key.as_str()))
        .cloned()
        .collect();
    if raised.is_empty() && cleared.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    for state in &raised {
        if tx.raise_warning(&state.key, &state.team, now).await? {
            let payload = serde_json::json!({
                "id": domain::id::new_id(),
                "type": state.event,
                "created_at": domain::access::format_time_ms(now),
                "data": state.data,
            })
            .to_string();
            tx.enqueue_event(&state.team, state.event, &payload).await?;
            tracing::info!(key = %state.key, event = state.event, "warning raised");
        }
    }
    for key in &cleared {
        tx.clear_warning(key, now).await?;
    }
    tx.commit().await?;
    for state in raised {
        known.insert(state.key.clone());
    }
    for key in cleared {
        known.remove(&key);
    }
    Ok(())
}
