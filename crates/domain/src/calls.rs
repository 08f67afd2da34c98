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
    /// Headers and the first bytes of the bodies, for services that log
    /// them (secrets redacted).
    pub bodies: Option<Box<CallBodies>>,
}

/// What a service that logs bodies keeps of a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallBodies {
    /// `name: value` lines; `Authorization`, cookies, API key and payment
    /// headers read `[redacted]`.
    pub request_headers: String,
    /// The first bytes of the body, redacted (see [`redact_body`]).
    pub request_body: Option<String>,
    /// The body's whole length.
    pub request_bytes: u64,
    pub response_headers: String,
    pub response_body: Option<String>,
    pub response_bytes: u64,
}

/// JSON fields whose values are never stored, at any depth (compared
/// without case; `-` and `_` alike).
pub const REDACTED_FIELDS: [&str; 12] = [
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "authorization",
    "card_number",
];

fn field_matches(name: &str, wanted: &str) -> bool {
    let normal = |c: char| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_lowercase()
        }
    };
    name.len() == wanted.len() && name.chars().map(normal).eq(wanted.chars().map(normal))
}

fn redact_value(value: &mut serde_json::Value, extra: &[String]) {
    match value {
        serde_json::Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                let secret = REDACTED_FIELDS.iter().any(|w| field_matches(name, w))
                    || extra.iter().any(|w| field_matches(name, w));
                if secret {
                    *field = serde_json::Value::String("[redacted]".into());
                } else {
                    redact_value(field, extra);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                redact_value(item, extra);
            }
        }
        serde_json::Value::String(text) if looks_like_key(text) => {
            *text = "[redacted]".into();
        }
        _ => {}
    }
}

/// Tollgate API keys and bearer tokens in free text.
fn looks_like_key(text: &str) -> bool {
    text.starts_with("tg_live_") || text.starts_with("tg_test_") || text.starts_with("Bearer ")
}

/// A captured body as stored: a whole JSON document with its secret
/// fields (the built-in [`REDACTED_FIELDS`] and `extra`) and key-like
/// strings replaced by `"[redacted]"`; other UTF-8 text as it is unless
/// it may hold a secret (a field name or a key), then withheld; binary
/// data as its length. `None` for an empty body.
pub fn redact_body(bytes: &[u8], extra: &[String]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        redact_value(&mut value, extra);
        return Some(value.to_string());
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Some(format!("[binary: {} bytes not shown]", bytes.len()));
    };
    let lower = text.to_ascii_lowercase();
    let risky = text.contains("tg_live_")
        || text.contains("tg_test_")
        || REDACTED_FIELDS.iter().any(|field| lower.contains(field))
        || extra
            .iter()
            .any(|field| lower.contains(&field.to_ascii_lowercase()));
    if risky {
        return Some(format!(
            "[withheld: {} bytes of text that is not a whole JSON document and may hold a secret]",
            bytes.len()
        ));
    }
    Some(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_stored_without_their_secrets() {
        let extra = vec!["ssn".to_owned()];
        let body = br#"{"user": "ann", "Password": "hunter2", "nested": [{"api-key": "x", "ssn": "123"}], "note": "tg_live_abc"}"#;
        let stored = redact_body(body, &extra).unwrap();
        let value: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(value["user"], "ann");
        assert_eq!(value["Password"], "[redacted]");
        assert_eq!(value["nested"][0]["api-key"], "[redacted]");
        assert_eq!(value["nested"][0]["ssn"], "[redacted]");
        assert_eq!(value["note"], "[redacted]");
        // Cut-off JSON or forms that name a secret are withheld whole.
        assert!(
            redact_body(br#"{"password": "hun"#, &extra)
                .unwrap()
                .starts_with("[withheld")
        );
        assert!(
            redact_body(b"user=ann&password=x", &extra)
                .unwrap()
                .starts_with("[withheld")
        );
        assert_eq!(redact_body(b"plain text", &extra).unwrap(), "plain text");
        assert!(
            redact_body(&[0xff, 0xfe], &extra)
                .unwrap()
                .starts_with("[binary")
        );
        assert_eq!(redact_body(b"", &extra), None);
    }

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
