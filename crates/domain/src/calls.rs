//! The call log and its analytics: one [`CallEntry`] per request through
//! the gateway (refusals included), and the fixed latency buckets that
//! rollups and Prometheus histograms share.

/// Upper bounds (inclusive, microseconds) of the latency buckets; one more
/// bucket past the last holds everything slower. Rollups store a count per
/// bucket, so percentiles over any range and grouping are estimated from
/// them (linear within a bucket).
pub const LATENCY_BUCKETS_US: [u64; 15] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Number of latency buckets (the bounds above plus the overflow bucket).
pub const LATENCY_BUCKET_COUNT: usize = LATENCY_BUCKETS_US.len() + 1;

/// The bucket a latency falls in.
pub fn latency_bucket(latency_us: u64) -> usize {
    LATENCY_BUCKETS_US.partition_point(|&bound| bound < latency_us)
}

/// Estimates the `quantile` (0..=1) of latencies counted in `buckets`
/// (microseconds): the bucket that holds it, interpolated linearly. The
/// overflow bucket answers its lower bound. `None` when nothing was
/// counted.
pub fn latency_quantile(buckets: &[u64; LATENCY_BUCKET_COUNT], quantile: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the wanted observation, 1-based.
    let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (index, &count) in buckets.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if seen + count >= rank {
            let lower = if index == 0 {
                0
            } else {
                LATENCY_BUCKETS_US[index - 1]
            };
            let Some(&upper) = LATENCY_BUCKETS_US.get(index) else {
                return Some(lower);
            };
            let within = (rank - seen) as f64 / count as f64;
            return Some(lower + ((upper - lower) as f64 * within).round() as u64);
        }
        seen += count;
    }
    LATENCY_BUCKETS_US.last().copied()
}

/// One request through the gateway, as stored. Teams, services and apps
/// are named by slug (what people filter by and what tenancy checks);
/// routes and keys by id and prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallEntry {
    pub request_id: String,
    pub at_ms: i64,
    pub method: String,
    pub host: Option<String>,
    /// The path only: query strings may carry secrets.
    pub path: String,
    pub status: u16,
    /// The refusal's code (SPEC §4); none for an answered call.
    pub code: Option<String>,
    /// Request received → response body ended (or the client went away).
    pub latency_us: u64,
    /// Last upstream try: request sent → response head received.
    pub upstream_latency_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_ip: String,
    /// The calling app's team (consumer).
    pub consumer_team: Option<String>,
    pub app: Option<String>,
    pub key_prefix: Option<String>,
    pub subscription_id: Option<String>,
    pub plan: Option<String>,
    /// The service's team (provider).
    pub provider_team: Option<String>,
    pub service: Option<String>,
    pub route_id: Option<String>,
    /// The upstream target that answered (or was last tried).
    pub upstream_target: Option<String>,
    /// What the call was charged, in nano-units.
    pub cost_nanos: i64,
    /// A refusal's problem details, as sent (JSON).
    pub problem: Option<String>,
    /// AI calls: provider, model and tokens.
    pub provider: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// AI streams: request received → first token sent.
    pub ttft_us: Option<u64>,
    /// Whether the response body reached its end (false: the client or
    /// the upstream broke off).
    pub completed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(250), 0);
        assert_eq!(latency_bucket(251), 1);
        assert_eq!(latency_bucket(10_000_000), 14);
        assert_eq!(latency_bucket(10_000_001), 15);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut buckets = [0u64; LATENCY_BUCKET_COUNT];
        assert_eq!(latency_quantile(&buckets, 0.5), None);
        // 100 calls between 1 ms and 2.5 ms.
        buckets[3] = 100;
        assert_eq!(latency_quantile(&buckets, 0.5), Some(1_750));
        assert_eq!(latency_quantile(&buckets, 1.0), Some(2_500));
        // One slow call past the last bound answers the bound.
        buckets[15] = 1;
        assert_eq!(latency_quantile(&buckets, 1.0), Some(10_000_000));
        assert_eq!(latency_quantile(&buckets, 0.99), Some(2_500));
    }
}
