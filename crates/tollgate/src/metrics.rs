//! Prometheus metrics (`GET /metrics` on the admin listener), in the text
//! exposition format.
//!
//! Call metrics are counted by the call writer from the records it takes
//! (one lock per batch, none on the request path), so they trail the
//! calls by at most the writer's gather interval. Gauges (upstream health,
//! wallet balances, the config version) are read from the gateway when
//! scraped. Label values are bounded by configuration (services, routes,
//! models, status codes and refusal codes), and wallet balances are shown
//! for at most [`MAX_WALLETS`] teams.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use domain::calls::{CallEntry, LATENCY_BUCKET_COUNT, LATENCY_BUCKETS_US, latency_bucket};
use gateway::Gateway;

/// Teams whose wallet balance is exported, at most (the lowest balances
/// first: those are the ones to watch).
pub const MAX_WALLETS: usize = 500;

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKET_COUNT],
    sum_us: u64,
}

impl Histogram {
    fn observe(&mut self, micros: u64) {
        self.buckets[latency_bucket(micros)] += 1;
        self.sum_us = self.sum_us.saturating_add(micros);
    }

    fn merge(&mut self, buckets: &[u64; LATENCY_BUCKET_COUNT], sum_us: u64) {
        domain::calls::add_buckets(&mut self.buckets, buckets);
        self.sum_us = self.sum_us.saturating_add(sum_us);
    }
}

/// Who and what a group of calls were: the calls of one second that share
/// teams, service, app, route, model, status and code (borrowed from the
/// entries, so grouping a batch copies no string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity<'a> {
    pub second: i64,
    pub provider_team: &'a str,
    pub consumer_team: &'a str,
    pub service: &'a str,
    pub app: &'a str,
    pub route: &'a str,
    pub model: &'a str,
    pub status: u16,
    pub code: &'a str,
}

/// What a group of calls amounted to.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Counts, sums and the latency buckets, as the rollups keep them.
    pub values: store::RollupValues,
    upstream: Histogram,
    overhead: Histogram,
    /// Calls answered from a route's response cache.
    cache_hits: u64,
    /// The slowest call's latency (µs): a quantile read from the buckets
    /// is never above it.
    latency_max_us: u64,
}

/// Groups a batch of calls by [`Identity`]: the call writer then touches
/// its string-keyed maps (metrics, the recent window, rollups) once per
/// group instead of once per call. `same_as_previous(i)` may say that call
/// `i` has the identity of call `i - 1` (the writer knows it from the
/// gateway's pointer-sized [`gateway::calls::GroupKey`]): such a call
/// skips even the string compare. `|_| false` is always correct.
pub fn tally<'a>(
    entries: impl IntoIterator<Item = &'a CallEntry>,
    same_as_previous: impl Fn(usize) -> bool,
) -> Vec<(Identity<'a>, Tally)> {
    let mut groups: Vec<(Identity<'a>, Tally)> = Vec::new();
    // Group → its index in `groups`; consulted only when a call's identity
    // differs from the one before (calls come in runs of one identity, and
    // comparing is much cheaper than hashing seven strings).
    let mut index: std::collections::HashMap<Identity<'a>, usize> = Default::default();
    let mut current = usize::MAX;
    for (i, entry) in entries.into_iter().enumerate() {
        if current == usize::MAX || !same_as_previous(i) {
            current = group_of(entry, &mut groups, &mut index, current);
        }
        let Some((_, tally)) = groups.get_mut(current) else {
            continue;
        };
        tally.values.add_call(entry);
        tally.latency_max_us = tally.latency_max_us.max(entry.latency_us);
        if entry.upstream_target.as_deref() == Some(gateway::calls::CACHE_TARGET) {
            tally.cache_hits += 1;
        }
        if let Some(upstream_us) = entry.upstream_latency_us {
            tally.upstream.observe(upstream_us);
            // The upstream's share: its answer's head, and the time its
            // body kept the gateway waiting (a streamed answer).
            let waited = upstream_us.saturating_add(entry.upstream_body_us.unwrap_or(0));
            tally
                .overhead
                .observe(entry.latency_us.saturating_sub(waited));
        }
    }
    groups
}

/// The index in `groups` of `entry`'s group (added if new); `current` is
/// the previous call's group, compared first.
fn group_of<'a>(
    entry: &'a CallEntry,
    groups: &mut Vec<(Identity<'a>, Tally)>,
    index: &mut std::collections::HashMap<Identity<'a>, usize>,
    current: usize,
) -> usize {
    fn text(value: &Option<String>) -> &str {
        value.as_deref().unwrap_or("")
    }
    let identity = Identity {
        second: entry.at_ms.div_euclid(1000),
        provider_team: text(&entry.provider_team),
        consumer_team: text(&entry.consumer_team),
        service: text(&entry.service),
        app: text(&entry.app),
        route: text(&entry.route_id),
        model: text(&entry.model),
        status: entry.status,
        code: text(&entry.code),
    };
    if groups
        .get(current)
        .is_some_and(|(last, _)| *last == identity)
    {
        return current;
    }
    *index.entry(identity).or_insert_with(|| {
        groups.push((identity, Tally::default()));
        groups.len() - 1
    })
}

#[derive(Default)]
struct State {
    /// (service, route, status, code) → calls.
    requests: BTreeMap<(String, String, u16, String), u64>,
    /// (service, route, status class) → latency of whole calls; service
    /// → latency of the upstream, and the gateway's own part (total minus
    /// upstream).
    latency: BTreeMap<(String, String, &'static str), Histogram>,
    upstream: BTreeMap<String, Histogram>,
    overhead: BTreeMap<String, Histogram>,
    /// (model, "input" | "output") → tokens.
    tokens: BTreeMap<(String, &'static str), u64>,
    /// (service, model) → nano-units charged.
    charged: BTreeMap<(String, String), i64>,
    /// service → calls answered from a route's response cache.
    cache_hits: BTreeMap<String, u64>,
}

/// Call metrics, and the rendering of all metrics.
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
    recent: Mutex<Recent>,
    /// Calls in batches the database refused until the writer gave up.
    unwritten: std::sync::atomic::AtomicU64,
}

/// Who a call concerned, for alert rules: (provider team, consumer team,
/// service); empty strings for none.
pub type RecentKey = (String, String, String);

/// What calls of one second and key amounted to.
#[derive(Debug, Default, Clone)]
pub struct RecentCounts {
    pub requests: u64,
    pub status_402: u64,
    pub status_5xx: u64,
    pub latency_buckets: [u64; LATENCY_BUCKET_COUNT],
    /// The slowest call's latency (µs).
    pub latency_max_us: u64,
}

impl RecentCounts {
    pub fn merge(&mut self, other: &RecentCounts) {
        self.requests += other.requests;
        self.status_402 += other.status_402;
        self.status_5xx += other.status_5xx;
        self.latency_max_us = self.latency_max_us.max(other.latency_max_us);
        domain::calls::add_buckets(&mut self.latency_buckets, &other.latency_buckets);
    }

    /// A quantile of these calls' latency (µs), from the buckets but
    /// never above the slowest call: one bucket spans up to twice its
    /// lower bound, and a rule's threshold must not be crossed by the
    /// bucket's width alone.
    pub fn latency_quantile(&self, quantile: f64) -> Option<u64> {
        domain::calls::latency_quantile(&self.latency_buckets, quantile)
            .map(|us| us.min(self.latency_max_us))
    }
}

/// Seconds kept for alert windows (and the current one besides).
pub const RECENT_SECONDS: i64 = domain::alerts::WINDOW_SECONDS_MAX as i64;
/// Keys counted per second, at most; further ones are folded into one.
const RECENT_KEYS_MAX: usize = 10_000;

/// The calls of the last [`RECENT_SECONDS`] seconds on this node, per
/// second and key (for alert rules over call windows).
#[derive(Default)]
struct Recent {
    /// (second, counts per key), oldest first.
    seconds: std::collections::VecDeque<(i64, std::collections::HashMap<RecentKey, RecentCounts>)>,
}

impl Recent {
    fn add(&mut self, identity: &Identity<'_>, tally: &Tally) {
        let second = identity.second;
        let newest = self.seconds.back().map_or(i64::MIN, |(s, _)| *s);
        if second > newest {
            self.seconds.push_back((second, Default::default()));
        }
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| *s < second.max(newest) - RECENT_SECONDS)
        {
            self.seconds.pop_front();
        }
        let Some((_, keys)) = self.seconds.iter_mut().rev().find(|(s, _)| *s <= second) else {
            return;
        };
        let key = if keys.len() < RECENT_KEYS_MAX {
            (
                identity.provider_team.to_owned(),
                identity.consumer_team.to_owned(),
                identity.service.to_owned(),
            )
        } else {
            ("*".into(), "*".into(), "*".into())
        };
        let calls = u64::try_from(tally.values.requests).unwrap_or(0);
        let counts = keys.entry(key).or_default();
        counts.requests += calls;
        if identity.status == 402 {
            counts.status_402 += calls;
        }
        if (500..600).contains(&identity.status) {
            counts.status_5xx += calls;
        }
        domain::calls::add_buckets(&mut counts.latency_buckets, &tally.values.latency_buckets);
        counts.latency_max_us = counts.latency_max_us.max(tally.latency_max_us);
    }
}

impl Metrics {
    /// The calls of seconds `[since_s, now]` whose key passes `wanted`,
    /// added up.
    pub fn recent(&self, since_s: i64, wanted: impl Fn(&RecentKey) -> bool) -> RecentCounts {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = RecentCounts::default();
        for (_, keys) in recent.seconds.iter().filter(|(s, _)| *s >= since_s) {
            for (key, counts) in keys {
                if wanted(key) {
                    total.merge(counts);
                }
            }
        }
        total
    }

    /// Counts calls the writer could not store.
    pub fn count_dropped(&self, calls: u64) {
        self.unwritten
            .fetch_add(calls, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts calls, grouped by [`tally`].
    pub fn observe_tallies(&self, tallies: &[(Identity<'_>, Tally)]) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            for (identity, tally) in tallies {
                recent.add(identity, tally);
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (identity, tally) in tallies {
            let values = &tally.values;
            let calls = u64::try_from(values.requests).unwrap_or(0);
            let service = identity.service.to_owned();
            *state
                .requests
                .entry((
                    service.clone(),
                    identity.route.to_owned(),
                    identity.status,
                    identity.code.to_owned(),
                ))
                .or_default() += calls;
            state
                .latency
                .entry((
                    service.clone(),
                    identity.route.to_owned(),
                    status_class(identity.status),
                ))
                .or_default()
                .merge(
                    &values.latency_buckets,
                    u64::try_from(values.latency_sum_us).unwrap_or(0),
                );
            if tally.upstream.buckets.iter().any(|&count| count > 0) {
                state
                    .upstream
                    .entry(service.clone())
                    .or_default()
                    .merge(&tally.upstream.buckets, tally.upstream.sum_us);
                state
                    .overhead
                    .entry(service.clone())
                    .or_default()
                    .merge(&tally.overhead.buckets, tally.overhead.sum_us);
            }
            if tally.cache_hits > 0 {
                *state.cache_hits.entry(service.clone()).or_default() += tally.cache_hits;
            }
            if !identity.model.is_empty() {
                let tokens = |n: i64| u64::try_from(n).unwrap_or(0);
                *state
                    .tokens
                    .entry((identity.model.to_owned(), "input"))
                    .or_default() += tokens(values.input_tokens);
                *state
                    .tokens
                    .entry((identity.model.to_owned(), "output"))
                    .or_default() += tokens(values.output_tokens);
            }
            if values.cost_nanos != 0 {
                *state
                    .charged
                    .entry((service, identity.model.to_owned()))
                    .or_default() += values.cost_nanos;
            }
        }
    }

    /// Every metric, in the Prometheus text format (version 0.0.4).
    pub fn render(&self, gateway: &Gateway, currency: &str) -> String {
        let mut out = String::with_capacity(16 * 1024);
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            header(
                &mut out,
                "tollgate_requests_total",
                "counter",
                "Requests through the gateway, refusals included, by service, route, status and refusal code.",
            );
            for ((service, route, status, code), count) in &state.requests {
                let _ = writeln!(
                    out,
                    "tollgate_requests_total{{service=\"{}\",route=\"{}\",status=\"{status}\",code=\"{}\"}} {count}",
                    escape(service),
                    escape(route),
                    escape(code)
                );
            }
            histogram(
                &mut out,
                "tollgate_request_duration_seconds",
                "Time from a request's arrival to the end of its response, by service, route and status class.",
                &state.latency,
                |(service, route, class)| {
                    format!(
                        "service=\"{}\",route=\"{}\",status_class=\"{class}\"",
                        escape(service),
                        escape(route)
                    )
                },
            );
            let by_service = |service: &String| format!("service=\"{}\"", escape(service));
            histogram(
                &mut out,
                "tollgate_upstream_duration_seconds",
                "Time from sending a request upstream to its response head, by service.",
                &state.upstream,
                by_service,
            );
            histogram(
                &mut out,
                "tollgate_gateway_overhead_seconds",
                "The gateway's own share of a proxied call (total minus upstream), by service.",
                &state.overhead,
                by_service,
            );
            header(
                &mut out,
                "tollgate_cache_hits_total",
                "counter",
                "Calls answered from a route's response cache (the upstream not asked), by service.",
            );
            for (service, count) in &state.cache_hits {
                let _ = writeln!(
                    out,
                    "tollgate_cache_hits_total{{service=\"{}\"}} {count}",
                    escape(service)
                );
            }
            header(
                &mut out,
                "tollgate_tokens_total",
                "counter",
                "AI tokens metered, by model and kind (input, output).",
            );
            for ((model, kind), count) in &state.tokens {
                let _ = writeln!(
                    out,
                    "tollgate_tokens_total{{model=\"{}\",kind=\"{kind}\"}} {count}",
                    escape(model)
                );
            }
            header(
                &mut out,
                "tollgate_charged_total",
                "counter",
                "Money charged for calls, in the deployment's currency, by service and model.",
            );
            for ((service, model), nanos) in &state.charged {
                let _ = writeln!(
                    out,
                    "tollgate_charged_total{{service=\"{}\",model=\"{}\",currency=\"{}\"}} {}",
                    escape(service),
                    escape(model),
                    escape(currency),
                    decimal(*nanos)
                );
            }
        }
        header(
            &mut out,
            "tollgate_upstream_target_up",
            "gauge",
            "1 when an upstream target takes traffic (healthy, not ejected), else 0.",
        );
        for health in gateway.target_health() {
            let _ = writeln!(
                out,
                "tollgate_upstream_target_up{{upstream=\"{}\",target=\"{}\"}} {}",
                escape(&health.upstream),
                escape(&health.target),
                u8::from(health.up)
            );
        }
        header(
            &mut out,
            "tollgate_wallet_balance",
            "gauge",
            "Spendable wallet balance per team on this node, in the deployment's currency (the lowest 500).",
        );
        let mut balances = gateway.wallet_balances();
        balances.sort_by_key(|(_, nanos)| *nanos);
        for (team, nanos) in balances.iter().take(MAX_WALLETS) {
            let _ = writeln!(
                out,
                "tollgate_wallet_balance{{team=\"{}\",currency=\"{}\"}} {}",
                escape(team),
                escape(currency),
                decimal(*nanos)
            );
        }
        header(
            &mut out,
            "tollgate_config_version",
            "gauge",
            "The configuration version this node serves.",
        );
        let _ = writeln!(out, "tollgate_config_version {}", gateway.version());
        header(
            &mut out,
            "tollgate_call_records_dropped_total",
            "counter",
            "Call records dropped: the call writer's queue was full, or the database (answering) refused their batch ten times.",
        );
        let _ = writeln!(
            out,
            "tollgate_call_records_dropped_total {}",
            gateway::calls::dropped() + self.unwritten.load(std::sync::atomic::Ordering::Relaxed)
        );
        header(
            &mut out,
            "tollgate_build_info",
            "gauge",
            "The running version of tollgate.",
        );
        let _ = writeln!(
            out,
            "tollgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A histogram family: each series' buckets, sum and count, its labels
/// written by `labels` (escaped, without braces).
fn histogram<K>(
    out: &mut String,
    name: &str,
    help: &str,
    series: &BTreeMap<K, Histogram>,
    labels: impl Fn(&K) -> String,
) {
    header(out, name, "histogram", help);
    for (key, histogram) in series {
        let labels = labels(key);
        let mut cumulative = 0;
        for (index, count) in histogram.buckets.iter().enumerate() {
            cumulative += count;
            let le = LATENCY_BUCKETS_US
                .get(index)
                .map_or_else(|| "+Inf".to_owned(), |us| seconds(*us));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", seconds(histogram.sum_us));
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// `2xx`, `4xx`…: a status's class, the latency histogram's label (an
/// exact status would multiply its series).
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Microseconds as seconds, exactly (no float rounding).
fn seconds(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let fraction = micros % 1_000_000;
    if fraction == 0 {
        return whole.to_string();
    }
    let text = format!("{whole}.{fraction:06}");
    text.trim_end_matches('0').to_owned()
}

/// Nano-units as a decimal number of currency units.
fn decimal(nanos: i64) -> String {
    domain::money::format(nanos)
}

/// A label value, escaped as the text format requires.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(250), "0.00025");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(2_500_000), "2.5");
    }

    /// Interleaved identities still make one group each, with every call
    /// counted once, in order of first appearance.
    #[test]
    fn tally_groups_runs_and_returns() {
        let call = |app: &str, at_ms: i64, latency_us: u64| CallEntry {
            app: Some(app.into()),
            at_ms,
            latency_us,
            status: 200,
            ..Default::default()
        };
        let entries = [
            call("a", 1_000, 1),
            call("a", 1_500, 2),
            call("b", 1_600, 4),
            call("a", 1_700, 8),
            call("b", 1_800, 16),
            call("a", 2_000, 32),
        ];
        let groups = |same_as_previous: &dyn Fn(usize) -> bool| -> Vec<_> {
            tally(&entries, same_as_previous)
                .into_iter()
                .map(|(identity, tally)| {
                    let values = tally.values;
                    (
                        identity.app,
                        identity.second,
                        values.requests,
                        values.latency_sum_us,
                    )
                })
                .collect()
        };
        let expected = [("a", 1, 3, 11), ("b", 1, 2, 20), ("a", 2, 1, 32)];
        assert_eq!(groups(&|_| false), expected);
        // Told the truth about the one run (calls 0 and 1), same groups.
        assert_eq!(groups(&|i| i == 1), expected);
        // The hint is trusted without a compare: a false one (call 2 is
        // "b") shows that it was used.
        assert_eq!(
            groups(&|i| i == 1 || i == 2),
            [("a", 1, 4, 15), ("b", 1, 1, 16), ("a", 2, 1, 32)]
        );
    }

    /// A window's quantile is never above its slowest call: three calls
    /// of about 303 ms all fall in one wide bucket, whose top is 500 ms.
    #[test]
    fn a_windows_quantile_is_never_above_its_slowest_call() {
        let call = |latency_us: u64| CallEntry {
            app: Some("a".into()),
            service: Some("weather".into()),
            at_ms: 1_000,
            latency_us,
            status: 200,
            ..Default::default()
        };
        let entries = [call(303_000), call(303_400), call(304_300)];
        let mut recent = Recent::default();
        for (identity, tally) in &tally(&entries, |_| false) {
            recent.add(identity, tally);
        }
        let metrics = Metrics::default();
        *metrics.recent.lock().unwrap() = recent;
        let counts = metrics.recent(0, |_| true);
        assert_eq!(counts.requests, 3);
        assert_eq!(counts.latency_quantile(0.95), Some(304_300));
        assert!(
            domain::calls::latency_quantile(&counts.latency_buckets, 0.95).unwrap() > 400_000,
            "the bucket alone says more"
        );
        assert_eq!(RecentCounts::default().latency_quantile(0.95), None);
    }

    /// The gateway's overhead leaves out the upstream's time: its head
    /// and the time its body kept the gateway waiting (a stream).
    #[test]
    fn overhead_is_the_gateways_own_time() {
        let call = |latency_us: u64, upstream: Option<u64>, body: Option<u64>| CallEntry {
            app: Some("a".into()),
            at_ms: 1_000,
            latency_us,
            upstream_latency_us: upstream,
            upstream_body_us: body,
            status: 200,
            ..Default::default()
        };
        let entries = [
            call(1_300, Some(1_000), None),
            call(50_000, Some(1_000), Some(48_600)),
            call(900, None, None),
        ];
        let groups = tally(&entries, |_| true);
        let (_, tally) = &groups[0];
        assert_eq!(tally.overhead.sum_us, 300 + 400, "refusals have none");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
