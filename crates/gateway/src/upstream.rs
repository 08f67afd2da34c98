//! Upstreams at run time: targets with their live state (in-flight count,
//! latency EWMA, passive ejection, active health), the balancing policies
//! that choose among them, and the pooled HTTP client per upstream.
//!
//! Target state is kept across configuration reloads (by upstream id and
//! target URL) in the [`Registry`], so a reload neither forgets an ejection
//! nor drops pooled connections. Picking a target takes no lock: it reads
//! atomics only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::Connector;
use domain::model::{BalancePolicy, HashOn, Upstream};
use http::uri::{Authority, Scheme};

/// Milliseconds on a monotonic clock local to this process.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The live state of one target. Shared by every snapshot that has it.
#[derive(Debug)]
pub struct TargetState {
    /// Unique for the life of the process (keys the connection pools).
    pub id: u64,
    pub in_flight: AtomicU32,
    /// Latency EWMA in microseconds (0 = no sample yet).
    pub ewma_us: AtomicU64,
    /// When `ewma_us` was last updated (monotonic ms): it decays from
    /// then, so a target not picked since a slow answer comes back.
    pub ewma_at_ms: AtomicU64,
    pub consecutive_failures: AtomicU32,
    /// Passive ejection: unavailable until this monotonic ms.
    pub ejected_until_ms: AtomicU64,
    /// How many ejections in a row (doubles the ejection time).
    pub ejections: AtomicU32,
    /// Active health verdict.
    pub healthy: AtomicBool,
    pub probe_successes: AtomicU32,
    pub probe_failures: AtomicU32,
    pub next_probe_ms: AtomicU64,
}

impl Default for TargetState {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            probe_successes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
        }
    }
}

/// A target, compiled.
#[derive(Debug)]
pub struct TargetRt {
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the target URL, without a trailing slash ("" for none).
    pub base_path: String,
    /// `Host` for HTTP/1.1 requests: the target's authority.
    pub host_header: http::HeaderValue,
    pub weight: u32,
    pub state: Arc<TargetState>,
}

impl TargetRt {
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.weight > 0
            && self.state.healthy.load(Ordering::Relaxed)
            && self.state.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }
}

/// An upstream, compiled.
pub struct UpstreamRt {
    pub id: String,
    pub spec: domain::model::UpstreamSpec,
    pub targets: Vec<TargetRt>,
    /// How connections to the targets are made (pools are per thread, in
    /// [`crate::client`]).
    pub connector: Connector,
    /// Weighted round robin: a precomputed smooth sequence of target indexes.
    wrr_sequence: Vec<usize>,
    /// Position in the sequence, one counter per worker thread (each on its
    /// own cache line), so workers never contend on it.
    wrr_next: Box<[PaddedCounter]>,
    /// Consistent hash ring: (point, target index), sorted by point.
    ring: Vec<(u64, usize)>,
    hash_header: Option<http::HeaderName>,
}

impl std::fmt::Debug for UpstreamRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRt")
            .field("slug", &self.spec.slug)
            .finish()
    }
}

/// Holds target states and HTTP clients across snapshots.
pub struct Registry {
    targets: Mutex<HashMap<(String, String), Arc<TargetState>>>,
    /// Per upstream: the connection settings' fingerprint and generation.
    generations: Mutex<HashMap<String, (String, u64)>>,
    next_generation: AtomicU64,
    /// Per-thread counters per upstream: gateway workers + 1 for others.
    counter_slots: usize,
}

/// An atomic counter alone on its cache line.
#[repr(align(64))]
struct PaddedCounter(AtomicUsize);

thread_local! {
    /// The gateway worker this thread is (`usize::MAX` elsewhere).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Marks the current thread as gateway worker `index`.
pub fn set_worker(index: usize) {
    WORKER.with(|worker| worker.set(index));
}

/// Why an upstream could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {slug}: target {url}: {message}")]
    Target {
        slug: String,
        url: String,
        message: String,
    },
    #[error("upstream {slug}: TLS settings: {message}")]
    Tls { slug: String, message: String },
}

impl Registry {
    pub fn new(workers: usize) -> Self {
        Self {
            targets: Mutex::default(),
            generations: Mutex::default(),
            next_generation: AtomicU64::new(1),
            counter_slots: workers.max(1) + 1,
        }
    }

    /// Compiles an upstream, reusing target state and the client when their
    /// settings did not change.
    pub fn compile(&self, upstream: &Upstream) -> Result<UpstreamRt, UpstreamError> {
        let spec = &upstream.spec;
        let mut targets = Vec::with_capacity(spec.targets.len());
        {
            let mut states = self.targets.lock().unwrap_or_else(|e| e.into_inner());
            for target in &spec.targets {
                let target_error = |message: String| UpstreamError::Target {
                    slug: spec.slug.clone(),
                    url: target.url.clone(),
                    message,
                };
                let parsed = domain::model::check_target_url(&target.url).map_err(target_error)?;
                let uri: http::Uri = target
                    .url
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| target_error(e.to_string()))?;
                let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
                let authority = uri
                    .authority()
                    .cloned()
                    .ok_or_else(|| target_error("no host".into()))?;
                let state = states
                    .entry((upstream.id.clone(), target.url.clone()))
                    .or_default()
                    .clone();
                if !spec.health_check.active.enabled {
                    // Without active checks nothing could bring it back.
                    state.healthy.store(true, Ordering::Relaxed);
                }
                let host_header = http::HeaderValue::from_str(authority.as_str())
                    .map_err(|e| target_error(e.to_string()))?;
                targets.push(TargetRt {
                    host_header,
                    url: target.url.clone(),
                    scheme,
                    authority,
                    base_path: parsed.path().trim_end_matches('/').to_owned(),
                    weight: target.weight,
                    state,
                });
            }
        }
        let connector = self.connector_for(upstream)?;
        let wrr_sequence = smooth_wrr_sequence(&targets);
        let ring = if spec.policy == BalancePolicy::ConsistentHash {
            hash_ring(&targets)
        } else {
            Vec::new()
        };
        let hash_header = match (spec.hash_on, &spec.hash_header) {
            (HashOn::Header, Some(name)) => http::HeaderName::from_bytes(name.as_bytes()).ok(),
            _ => None,
        };
        Ok(UpstreamRt {
            id: upstream.id.clone(),
            spec: spec.clone(),
            targets,
            connector,
            wrr_next: (0..self.counter_slots)
                .map(|_| {
                    PaddedCounter(AtomicUsize::new(fastrand::usize(
                        ..wrr_sequence.len().max(1),
                    )))
                })
                .collect(),
            wrr_sequence,
            ring,
            hash_header,
        })
    }

    /// Forgets the state of targets and clients no longer configured.
    pub fn retain(&self, upstreams: &[Upstream]) {
        let mut keep_targets = std::collections::HashSet::new();
        let mut keep_clients = std::collections::HashSet::new();
        for upstream in upstreams {
            keep_clients.insert(upstream.id.clone());
            for target in &upstream.spec.targets {
                keep_targets.insert((upstream.id.clone(), target.url.clone()));
            }
        }
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| keep_targets.contains(key));
        self.generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| keep_clients.contains(key));
    }

    fn connector_for(&self, upstream: &Upstream) -> Result<Connector, UpstreamError> {
        let spec = &upstream.spec;
        let tls_error = |message: String| UpstreamError::Tls {
            slug: spec.slug.clone(),
            message,
        };
        // Connections made under other settings must not be reused: a
        // change of these starts a new pool generation.
        let fingerprint = format!(
            "{}|{:?}|{:?}",
            spec.connect_timeout_ms, spec.protocol, spec.tls
        );
        let generation = {
            let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
            match generations.get(&upstream.id) {
                Some((existing, generation)) if *existing == fingerprint => *generation,
                _ => {
                    let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                    generations.insert(upstream.id.clone(), (fingerprint, generation));
                    generation
                }
            }
        };
        let tls = crate::tls::client_config(&spec.tls, spec.protocol).map_err(tls_error)?;
        let server_name = match &spec.tls.server_name {
            Some(name) => Some(
                rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| tls_error(format!("server_name: {e}")))?,
            ),
            None => None,
        };
        Ok(Connector {
            connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
            protocol: spec.protocol,
            tls: Arc::new(tls),
            server_name,
            generation,
        })
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(1)
    }
}

/// Smooth weighted round robin (as nginx), unrolled into a fixed sequence so
/// that picking is one atomic increment.
fn smooth_wrr_sequence(targets: &[TargetRt]) -> Vec<usize> {
    let weights: Vec<i64> = targets.iter().map(|t| i64::from(t.weight)).collect();
    let gcd = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = weights.iter().map(|w| w / gcd).collect();
    let total: i64 = weights.iter().sum();
    // Bound the table; beyond this, proportions are kept approximately.
    let length = total.min(4096);
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    for _ in 0..length {
        let mut best = 0;
        for index in 0..weights.len() {
            current[index] += weights[index];
            if current[index] > current[best] {
                best = index;
            }
        }
        current[best] -= total;
        sequence.push(best);
    }
    sequence
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// FNV-1a, then a 64-bit finaliser: stable across processes and versions.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash
}

const RING_POINTS_PER_WEIGHT: u32 = 100;

fn hash_ring(targets: &[TargetRt]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let points = target.weight.min(100) * RING_POINTS_PER_WEIGHT;
        for point in 0..points {
            ring.push((
                stable_hash(format!("{}#{point}", target.url).as_bytes()),
                index,
            ));
        }
    }
    ring.sort_unstable();
    ring
}

/// What a pick may use from the request.
pub struct PickInput<'a> {
    /// The client IP as text (the same bytes as `X-Forwarded-For` gets).
    pub client_ip: &'a [u8],
    pub headers: &'a http::HeaderMap,
    /// Targets already tried by this request (bit per index, first 64).
    pub tried: u64,
}

fn tried(mask: u64, index: usize) -> bool {
    index < 64 && mask & (1 << index) != 0
}

impl UpstreamRt {
    /// Whether the policy reads in-flight counts and latencies; only then
    /// are they kept up to date on the request path (they are shared
    /// between cores, so updating them costs).
    pub fn tracks_in_flight(&self) -> bool {
        matches!(
            self.spec.policy,
            BalancePolicy::LeastRequests | BalancePolicy::Ewma
        )
    }

    /// Whether [`Self::pick`] may read [`PickInput::client_ip`] (consistent
    /// hashing, on the client IP or as the fallback of a header).
    pub fn reads_client_ip(&self) -> bool {
        !self.ring.is_empty()
    }

    /// When no target is available only because passive health ejected
    /// every one that would be (weighted and, by active checks, healthy):
    /// how long until the first comes back. The circuit is open.
    pub fn circuit_open_for(&self) -> Option<std::time::Duration> {
        let now = monotonic_ms();
        let mut first_back: Option<u64> = None;
        for target in &self.targets {
            if target.weight == 0 || !target.state.healthy.load(Ordering::Relaxed) {
                continue;
            }
            let until = target.state.ejected_until_ms.load(Ordering::Relaxed);
            if until <= now {
                return None;
            }
            first_back = Some(first_back.map_or(until, |first| first.min(until)));
        }
        first_back.map(|until| std::time::Duration::from_millis(until - now))
    }

    /// Chooses a target, or `None` when none is available. Prefers targets
    /// this request has not tried yet.
    pub fn pick(&self, input: &PickInput<'_>) -> Option<usize> {
        let now = monotonic_ms();
        let choice = self.pick_with(input, now, input.tried);
        if choice.is_some() || input.tried == 0 {
            return choice;
        }
        // Every untried target is down: a retry may go to one tried before.
        self.pick_with(input, now, 0)
    }

    fn pick_with(&self, input: &PickInput<'_>, now: u64, mask: u64) -> Option<usize> {
        let usable = |index: usize| !tried(mask, index) && self.targets[index].is_available(now);
        match self.spec.policy {
            BalancePolicy::RoundRobin => {
                let length = self.wrr_sequence.len();
                if length == 0 {
                    return None;
                }
                let worker = WORKER.with(std::cell::Cell::get);
                let counter = &self.wrr_next[worker.min(self.wrr_next.len() - 1)].0;
                // An unusable target's slots are passed over one pick at a
                // time, so the others share its part by their weights (as
                // nginx leaves down peers out), rather than the slot after
                // it taking all of it.
                (0..length).find_map(|_| {
                    let index = self.wrr_sequence[counter.fetch_add(1, Ordering::Relaxed) % length];
                    usable(index).then_some(index)
                })
            }
            BalancePolicy::LeastRequests => {
                let count = self.targets.len();
                if count == 0 {
                    return None;
                }
                // Requests in flight per unit of weight (scaled to keep
                // integers); ties go to one of them at random by weight,
                // so idle targets share calls 3:1 at weights 3 and 1.
                let mut best: Option<(usize, u64)> = None;
                let mut tied_weight: u64 = 0;
                for index in 0..count {
                    if !usable(index) {
                        continue;
                    }
                    let target = &self.targets[index];
                    let weight = u64::from(target.weight);
                    let load = u64::from(target.state.in_flight.load(Ordering::Relaxed))
                        * 1_000_000
                        / weight;
                    match best {
                        Some((_, best_load)) if load > best_load => {}
                        Some((_, best_load)) if load == best_load => {
                            tied_weight += weight;
                            if fastrand::u64(..tied_weight) < weight {
                                best = Some((index, load));
                            }
                        }
                        _ => {
                            best = Some((index, load));
                            tied_weight = weight;
                        }
                    }
                }
                best.map(|(index, _)| index)
            }
            BalancePolicy::Ewma => {
                let candidates: Vec<usize> =
                    (0..self.targets.len()).filter(|&i| usable(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    n => {
                        // Two distinct random candidates.
                        let i = fastrand::usize(..n);
                        let mut j = fastrand::usize(..n - 1);
                        if j >= i {
                            j += 1;
                        }
                        let (first, second) = (candidates[i], candidates[j]);
                        let cost = |index: usize| {
                            let target = &self.targets[index];
                            let ewma = decayed_ewma(&target.state, now).max(1);
                            let load =
                                u64::from(target.state.in_flight.load(Ordering::Relaxed)) + 1;
                            ewma.saturating_mul(load) / u64::from(target.weight)
                        };
                        Some(if cost(second) < cost(first) {
                            second
                        } else {
                            first
                        })
                    }
                }
            }
            BalancePolicy::ConsistentHash => {
                if self.ring.is_empty() {
                    return None;
                }
                let key_hash = match &self.hash_header {
                    Some(name) => match input.headers.get(name) {
                        Some(value) => stable_hash(value.as_bytes()),
                        None => stable_hash(input.client_ip),
                    },
                    None => stable_hash(input.client_ip),
                };
                let start = self.ring.partition_point(|(point, _)| *point < key_hash);
                let length = self.ring.len();
                (0..length)
                    .map(|offset| self.ring[(start + offset) % length].1)
                    .find(|&index| usable(index))
            }
        }
    }

    /// Records the outcome of a request to a target for passive health and
    /// the latency EWMA.
    pub fn record(&self, index: usize, outcome: Outcome) {
        let Some(target) = self.targets.get(index) else {
            return;
        };
        let state = &target.state;
        match outcome {
            Outcome::Success { latency } => {
                // Write only what changes: these lines are shared by cores.
                if state.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    state.consecutive_failures.store(0, Ordering::Relaxed);
                }
                if state.ejections.load(Ordering::Relaxed) != 0 {
                    state.ejections.store(0, Ordering::Relaxed);
                }
                if self.spec.policy == BalancePolicy::Ewma {
                    update_ewma(state, latency);
                }
            }
            Outcome::Failure { latency } => {
                if let Some(latency) = latency
                    && self.spec.policy == BalancePolicy::Ewma
                {
                    update_ewma(state, latency);
                }
                let passive = &self.spec.health_check.passive;
                if !passive.enabled {
                    return;
                }
                let failures = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= passive.max_failures {
                    state.consecutive_failures.store(0, Ordering::Relaxed);
                    let ejections = state.ejections.fetch_add(1, Ordering::Relaxed).min(3);
                    let duration = (passive.ejection_ms << ejections).min(passive.ejection_ms * 10);
                    state
                        .ejected_until_ms
                        .store(monotonic_ms() + duration, Ordering::Relaxed);
                    tracing::warn!(
                        upstream = %self.spec.slug,
                        target_url = %target.url,
                        ejection_ms = duration,
                        "target ejected after {failures} consecutive failures"
                    );
                }
            }
        }
    }

    /// Whether a status from the upstream counts as a failure of the target.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.spec
            .health_check
            .passive
            .failure_statuses
            .contains(&status)
    }
}

/// The outcome of one try against a target.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Success { latency: Duration },
    Failure { latency: Option<Duration> },
}

/// How fast a latency EWMA forgets: it halves every `EWMA_HALF_LIFE_MS`
/// without a new sample (Finagle's and linkerd's peak EWMA decay alike).
const EWMA_HALF_LIFE_MS: f64 = 5_000.0;

/// The latency EWMA as of `now`: decayed for the time since its last
/// sample, so one slow answer does not keep a target from being picked,
/// and measured again, forever.
fn decayed_ewma(state: &TargetState, now_ms: u64) -> u64 {
    let ewma = state.ewma_us.load(Ordering::Relaxed);
    let elapsed = now_ms.saturating_sub(state.ewma_at_ms.load(Ordering::Relaxed));
    if ewma == 0 || elapsed == 0 {
        return ewma;
    }
    let factor = (-(elapsed as f64) / EWMA_HALF_LIFE_MS * std::f64::consts::LN_2).exp();
    (ewma as f64 * factor) as u64
}

/// Peak-sensitive EWMA: a slower sample is taken at once, a faster one is
/// blended in (weight 1/4) with the value decayed to now.
fn update_ewma(state: &TargetState, latency: Duration) {
    let sample = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let now = monotonic_ms();
    let old = decayed_ewma(state, now);
    let value = if old == 0 || sample > old {
        sample
    } else {
        old - (old - sample) / 4
    };
    state.ewma_us.store(value, Ordering::Relaxed);
    state.ewma_at_ms.store(now, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, weight: u32) -> TargetRt {
        TargetRt {
            url: url.into(),
            scheme: Scheme::HTTP,
            authority: Authority::from_static("127.0.0.1:1"),
            base_path: String::new(),
            host_header: http::HeaderValue::from_static("127.0.0.1:1"),
            weight,
            state: Arc::default(),
        }
    }

    #[test]
    fn smooth_wrr_keeps_proportions_and_interleaves() {
        let targets = [target("a", 5), target("b", 1), target("c", 1)];
        let sequence = smooth_wrr_sequence(&targets);
        assert_eq!(sequence.len(), 7);
        assert_eq!(sequence.iter().filter(|&&i| i == 0).count(), 5);
        // nginx's smooth sequence for 5/1/1: a a b a c a a.
        assert_eq!(sequence, vec![0, 0, 1, 0, 2, 0, 0]);
        assert!(smooth_wrr_sequence(&[target("a", 0)]).is_empty());
    }

    #[test]
    fn ring_moves_few_keys_when_a_target_goes() {
        let three = hash_ring(&[target("a", 1), target("b", 1), target("c", 1)]);
        let two = hash_ring(&[target("a", 1), target("b", 1)]);
        let owner = |ring: &[(u64, usize)], key: u64| {
            let at = ring.partition_point(|(p, _)| *p < key) % ring.len();
            ring[at].1
        };
        let mut moved = 0;
        for key in 0..1000u64 {
            let hash = stable_hash(&key.to_le_bytes());
            let before = owner(&three, hash);
            let after = owner(&two, hash);
            if before != 2 && before != after {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of surviving targets stay put");
    }

    #[test]
    fn ewma_is_peak_sensitive_and_decays() {
        let state = TargetState::default();
        update_ewma(&state, Duration::from_micros(1000));
        update_ewma(&state, Duration::from_micros(5000));
        let peak = state.ewma_us.load(Ordering::Relaxed);
        assert_eq!(peak, 5000, "a slower sample is taken at once");
        update_ewma(&state, Duration::from_micros(1000));
        let blended = state.ewma_us.load(Ordering::Relaxed);
        assert!((3990..=4000).contains(&blended), "{blended}");
        // Without samples it halves every half-life: a target left alone
        // after one slow answer is picked, and measured, again.
        state.ewma_us.store(8000, Ordering::Relaxed);
        state.ewma_at_ms.store(1_000, Ordering::Relaxed);
        let half = decayed_ewma(&state, 1_000 + 5_000);
        assert!((3990..=4010).contains(&half), "{half}");
        assert!(decayed_ewma(&state, 1_000 + 60_000) < 10);
    }

    fn compiled(policy: &str, weights: &[u32]) -> UpstreamRt {
        let targets: Vec<serde_json::Value> = weights
            .iter()
            .enumerate()
            .map(|(n, weight)| serde_json::json!({"url": format!("http://127.0.0.1:{}", 10_001 + n), "weight": weight}))
            .collect();
        let spec: domain::model::UpstreamSpec = serde_json::from_value(serde_json::json!({
            "slug": "u", "policy": policy, "targets": targets,
        }))
        .unwrap_or_else(|e| unreachable!("{e}"));
        let upstream = Upstream {
            id: "u1".into(),
            spec,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        Registry::new(1)
            .compile(&upstream)
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn shares(upstream: &UpstreamRt, picks: usize) -> Vec<usize> {
        let headers = http::HeaderMap::new();
        let input = PickInput {
            client_ip: b"127.0.0.1",
            headers: &headers,
            tried: 0,
        };
        let mut counts = vec![0; upstream.targets.len()];
        for _ in 0..picks {
            if let Some(index) = upstream.pick(&input) {
                counts[index] += 1;
            }
        }
        counts
    }

    /// A target that is down gives its part to the others by their
    /// weights, not all of it to the one after it.
    #[test]
    fn a_down_target_shares_its_part_by_weight() {
        let round_robin = compiled("round_robin", &[5, 1, 1]);
        round_robin.targets[0]
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        assert_eq!(shares(&round_robin, 700), [0, 350, 350]);
        let even = compiled("round_robin", &[1, 1, 1, 1]);
        even.targets[1]
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        assert_eq!(shares(&even, 600), [200, 0, 200, 200]);
        let least = compiled("least_requests", &[1, 1, 1]);
        least.targets[1]
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        let counts = shares(&least, 6000);
        assert!((2700..=3300).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[1], 0);
    }

    /// Idle targets tie under least requests: broken by weight, 3:1.
    #[test]
    fn least_requests_breaks_ties_by_weight() {
        let least = compiled("least_requests", &[3, 1]);
        let counts = shares(&least, 4000);
        assert!((2850..=3150).contains(&counts[0]), "{counts:?}");
    }
}
