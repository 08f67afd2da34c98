//! Active health checks: one task walks the current snapshot a few times a
//! second and probes each target whose check is due (`GET path`), marking
//! it unhealthy after `unhealthy_threshold` failures in a row and healthy
//! again after `healthy_threshold` successes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Uri};
use tokio::sync::watch;

use crate::Shared;
use crate::body::UpstreamRequestBody;
use crate::upstream::{TargetRt, UpstreamRt, monotonic_ms};

const TICK: Duration = Duration::from_millis(100);

pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        let snapshot = shared.snapshot.load_full();
        let now = monotonic_ms();
        for upstream in &snapshot.upstreams {
            let active = &upstream.spec.health_check.active;
            if !active.enabled {
                continue;
            }
            for index in 0..upstream.targets.len() {
                let state = &upstream.targets[index].state;
                if state.next_probe_ms.load(Ordering::Relaxed) > now {
                    continue;
                }
                state
                    .next_probe_ms
                    .store(now + active.interval_ms, Ordering::Relaxed);
                tokio::spawn(probe(upstream.clone(), index));
            }
        }
    }
}

async fn probe(upstream: Arc<UpstreamRt>, index: usize) {
    let active = &upstream.spec.health_check.active;
    let target: &TargetRt = &upstream.targets[index];
    let uri = Uri::try_from(format!("{}{}", target.base_path, active.path));
    let Ok(uri) = uri else {
        return;
    };
    let mut request = Request::new(UpstreamRequestBody::Empty);
    *request.uri_mut() = uri;
    request
        .headers_mut()
        .insert(http::header::HOST, target.host_header.clone());
    request.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("tollgate-health-check"),
    );
    let timeout = Duration::from_millis(active.timeout_ms);
    let healthy = match tokio::time::timeout(
        timeout,
        crate::client::send(&upstream.connector, target, request),
    )
    .await
    {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            // Read the (small) body so the connection can be reused.
            use http_body_util::BodyExt;
            let _ = response.into_body().collect().await;
            if active.healthy_statuses.is_empty() {
                (200..400).contains(&status)
            } else {
                active.healthy_statuses.contains(&status)
            }
        }
        _ => false,
    };
    let state = &target.state;
    if healthy {
        state.probe_failures.store(0, Ordering::Relaxed);
        let successes = state.probe_successes.fetch_add(1, Ordering::Relaxed) + 1;
        if successes >= active.healthy_threshold && !state.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(upstream = %upstream.spec.slug, target_url = %target.url, "target healthy again");
        }
    } else {
        state.probe_successes.store(0, Ordering::Relaxed);
        let failures = state.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= active.unhealthy_threshold && state.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(upstream = %upstream.spec.slug, target_url = %target.url, "target unhealthy");
        }
    }
}
