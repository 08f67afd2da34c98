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

/// Adds the counts of `other` to `buckets`.
pub fn add_buckets(buckets: &mut [u64; LATENCY_BUCKET_COUNT], other: &[u64; LATENCY_BUCKET_COUNT]) {
    for (mine, theirs) in buckets.iter_mut().zip(other) {
        *mine += theirs;
    }
}

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
    // The wanted rank, as a fraction of the calls (as Prometheus's
    // `histogram_quantile` reads a histogram): a lone call in a bucket
    // reads as its middle at the median, not as its upper bound.
    let rank = quantile.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (index, &count) in buckets.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if (seen + count) as f64 >= rank {
            let lower = if index == 0 {
                0
            } else {
                LATENCY_BUCKETS_US[index - 1]
            };
            let Some(&upper) = LATENCY_BUCKETS_US.get(index) else {
                return Some(lower);
            };
            let within = ((rank - seen as f64) / count as f64).clamp(0.0, 1.0);
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
    /// How long the upstream kept the gateway waiting for its response
    /// body after the head (a streamed answer); for the gateway-overhead
    /// metric, not stored.
    pub upstream_body_us: Option<u64>,
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
    /// The route's pattern (`/weather/forecast/{city}`), for trace span
    /// names: set only on calls that have a span; not stored.
    pub http_route: Option<String>,
    /// The call's span, when traces are exported; not stored.
    pub trace: Option<TraceIds>,
}

/// A call's place in a W3C trace: the trace, the gateway's span for the
/// call, and the caller's span when the request carried `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
}

impl TraceIds {
    /// A span for a request whose `traceparent` header is `incoming` (a
    /// new trace when absent or malformed); `random` supplies the new ids.
    pub fn for_request(incoming: Option<&[u8]>, random: impl Fn() -> u64) -> Self {
        let span_id = random().to_be_bytes();
        if let Some((trace_id, parent)) = incoming.and_then(parse_traceparent) {
            return Self {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
            };
        }
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&random().to_be_bytes());
        trace_id[8..].copy_from_slice(&random().to_be_bytes());
        Self {
            trace_id,
            span_id,
            parent_span_id: None,
        }
    }

    /// `traceparent` for the upstream: this span as the parent, sampled.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", hex(&self.trace_id), hex(&self.span_id))
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 15)] as char);
    }
    out
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (index, pair) in text.chunks(2).enumerate() {
        out[index] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`): the trace and
/// parent span ids, unless malformed or all zeros.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.split(|&b| b == b'-');
    let version = parts.next()?;
    let trace = unhex::<16>(parts.next()?)?;
    let parent = unhex::<8>(parts.next()?)?;
    let flags = parts.next()?;
    let version_ok = version.len() == 2 && version != b"ff";
    if !version_ok || flags.len() != 2 || (version == b"00" && parts.next().is_some()) {
        return None;
    }
    (trace != [0; 16] && parent != [0; 8]).then_some((trace, parent))
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
pub const REDACTED_FIELDS: [&str; 17] = [
    "password",
    "passwd",
    "pwd",
    "cookie",
    "set_cookie",
    "session",
    "private_key",
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

/// A field name as compared: lower case, `-` as `_`.
fn normal(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn redact_value(value: &mut serde_json::Value, fields: &[String]) {
    match value {
        serde_json::Value::Object(map) => {
            // A key used as a member name is hidden too: the member keeps
            // its (redacted) value under a name that holds no key.
            if map.keys().any(|name| holds_key(name)) {
                let mut hidden = 0;
                for (name, field) in std::mem::take(map) {
                    let name = if holds_key(&name) {
                        hidden += 1;
                        if hidden == 1 {
                            "[redacted]".to_owned()
                        } else {
                            format!("[redacted {hidden}]")
                        }
                    } else {
                        name
                    };
                    map.insert(name, field);
                }
            }
            for (name, field) in map.iter_mut() {
                if fields.contains(&normal(name)) {
                    *field = serde_json::Value::String("[redacted]".into());
                } else {
                    redact_value(field, fields);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                redact_value(item, fields);
            }
        }
        serde_json::Value::String(text) if holds_key(text) => {
            *text = "[redacted]".into();
        }
        _ => {}
    }
}

/// Masks the Tollgate API keys in a request path as it is logged (a
/// caller that put its key in the URL): each keeps its visible prefix, as
/// `key_prefix` shows it (`tg_live_ab12`), and the rest of its segment
/// becomes `[redacted]`.
pub fn mask_keys_in_path(path: &mut String) {
    fn next_key(text: &str) -> Option<usize> {
        [text.find("tg_live_"), text.find("tg_test_")]
            .into_iter()
            .flatten()
            .min()
    }
    // Escaped (`tg%5Flive%5F…`, `%74g_live_…`; a key's characters are
    // all unreserved): the path is logged as routed, escapes of
    // unreserved characters decoded, so that its key is found and masked.
    if let Some(decoded) = crate::path::normalise_escapes(path)
        && next_key(&decoded).is_some()
    {
        *path = decoded;
    }
    if next_key(path).is_none() {
        return;
    }
    let mut masked = String::with_capacity(path.len());
    let mut rest = path.as_str();
    while let Some(at) = next_key(rest) {
        masked.push_str(&rest[..at]);
        let token = &rest[at..];
        let end = token.find(['/', '?', ';', '&', '#']).unwrap_or(token.len());
        let keep = token[..end].char_indices().nth(12).map_or(end, |(i, _)| i);
        masked.push_str(&token[..keep]);
        if keep < end {
            masked.push_str("[redacted]");
        }
        rest = &token[end..];
    }
    masked.push_str(rest);
    *path = masked;
}

/// Whether a client's `X-Request-Id` is kept as the call's id: 1 to 128
/// letters, digits and `._:-`, and nothing that looks like a credential
/// (an id is logged, echoed and shown to both teams of a call: a key sent
/// as one by mistake must not end up there). Otherwise the gateway makes
/// its own.
pub fn acceptable_request_id(id: &[u8]) -> bool {
    let shaped = !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b));
    shaped && {
        let has = |needle: &[u8]| {
            id.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
        };
        !(has(b"tg_live_")
            || has(b"tg_test_")
            || has(b"tg_admin_")
            || has(b"tgp_")
            || has(b"bearer"))
    }
}

/// Tollgate API keys and bearer tokens, anywhere in a text: also with
/// their `_` or space escaped as JSON (`\u005f`) or in a URL (`%5F`,
/// `%20`, `+`), as a cut-off JSON body or a `Referer` would carry them.
pub fn holds_key(text: &str) -> bool {
    let lower = text
        .to_ascii_lowercase()
        .replace("\\u005f", "_")
        .replace("%5f", "_")
        .replace("\\u0020", " ")
        .replace("%20", " ");
    lower.contains("tg_live_")
        || lower.contains("tg_test_")
        || lower.contains("bearer ")
        || lower.contains("bearer+")
}

/// A captured body as stored: a whole JSON document with its secret
/// fields (the built-in [`REDACTED_FIELDS`] and `extra`; by name at any
/// depth, without case, `-` and `_` alike) and key-like strings replaced
/// by `"[redacted]"`; other UTF-8 text as it is unless it may hold a
/// secret (a field name or a key), then withheld; binary data as its
/// length. A character cut at the end by the size cap is dropped. `None`
/// for an empty body.
pub fn redact_body(bytes: &[u8], extra: &[String]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let fields: Vec<String> = REDACTED_FIELDS
        .iter()
        .map(|field| normal(field))
        .chain(extra.iter().map(|field| normal(field)))
        .collect();
    if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        redact_value(&mut value, &fields);
        return Some(value.to_string());
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        // Only the last character was cut by the size cap.
        Err(error) if error.error_len().is_none() => {
            std::str::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return Some(format!("[binary: {} bytes not shown]", bytes.len())),
    };
    let normalised = normal(text);
    if holds_key(text)
        || fields
            .iter()
            .any(|field| normalised.contains(field.as_str()))
    {
        return Some(format!(
            "[withheld: {} bytes of text that is not a whole JSON document and may hold a secret]",
            bytes.len()
        ));
    }
    // PostgreSQL's text refuses NUL.
    Some(text.replace('\0', ""))
}

/// Microseconds as milliseconds, for people.
pub fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod request_id_tests {
    use super::acceptable_request_id;

    #[test]
    fn ids_that_look_like_credentials_are_not_kept() {
        for good in ["abc-123", "01HZX.9:trace_1", "req_42"] {
            assert!(acceptable_request_id(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "a b",
            "tg_live_5GaHbBK2w1",
            "Bearer-tg_x",
            "x-TG_TEST_1",
            "tgp_abc",
        ] {
            assert!(!acceptable_request_id(bad.as_bytes()), "{bad}");
        }
        assert!(!acceptable_request_id(&[b'a'; 129]));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn keys_in_paths_keep_only_their_prefix() {
        let mask = |path: &str| {
            let mut path = path.to_owned();
            mask_keys_in_path(&mut path);
            path
        };
        assert_eq!(mask("/weather/forecast/bern"), "/weather/forecast/bern");
        assert_eq!(
            mask("/w/k/tg_live_ab12SECRETSECRET/x"),
            "/w/k/tg_live_ab12[redacted]/x"
        );
        assert_eq!(
            mask("/a/tg_test_ZZZZ99999;v=1/tg_live_q"),
            "/a/tg_test_ZZZZ[redacted];v=1/tg_live_q"
        );
        assert_eq!(mask("/tg_live_abcdéééé"), "/tg_live_abcd[redacted]");
        // Escaped keys are found: the path is logged decoded.
        assert_eq!(
            mask("/e/tg%5flive%5fab12SECRET/x%20y"),
            "/e/tg_live_ab12[redacted]/x%20y"
        );
        assert_eq!(mask("/e/%74g_test_ab12SECRET"), "/e/tg_test_ab12[redacted]");
        assert_eq!(mask("/e/100%25/%zz"), "/e/100%25/%zz", "no key: as sent");
    }

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
        // Cookies, sessions and short password names too.
        let stored = redact_body(
            br#"{"pwd": "a", "cookie": "sid=1", "Session": "s", "private-key": "k"}"#,
            &extra,
        )
        .unwrap();
        assert_eq!(stored.matches("[redacted]").count(), 4, "{stored}");
        // Keys as member names: the members stay, under other names.
        let keyed =
            br#"{"tg_live_AAAA": 1, "n": {"tg_test_BBBB": {"ok": true}, "Bearer x": 2}, "m": 3}"#;
        let stored = redact_body(keyed, &extra).unwrap();
        assert!(
            !stored.contains("tg_live_") && !stored.contains("tg_test_"),
            "{stored}"
        );
        let value: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(value["[redacted]"], 1);
        assert_eq!(value["m"], 3);
        assert_eq!(value["n"].as_object().unwrap().len(), 2, "{stored}");
        let mut hidden = [&value["n"]["[redacted]"], &value["n"]["[redacted 2]"]];
        hidden.sort_by_key(|v| v.is_object());
        assert_eq!(
            hidden,
            [&serde_json::json!(2), &serde_json::json!({"ok": true})]
        );
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
        // Keys written with an escape, in a body cut off by the cap.
        for cut in [
            &br#"{"note": "tg\u005flive_abc", "x": "#[..],
            b"note=tg%5Flive_abc&x=",
            b"auth=Bearer%20abc&x=",
        ] {
            assert!(
                redact_body(cut, &extra).unwrap().starts_with("[withheld"),
                "{}",
                String::from_utf8_lossy(cut)
            );
        }
        assert_eq!(redact_body(b"plain text", &extra).unwrap(), "plain text");
        assert!(
            redact_body(&[0xff, 0xfe], &extra)
                .unwrap()
                .starts_with("[binary")
        );
        assert_eq!(redact_body(b"", &extra), None);
    }

    #[test]
    fn traceparent_is_read_and_written() {
        let incoming = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ids = TraceIds::for_request(Some(incoming), || 0x0102_0304_0506_0708);
        assert_eq!(hex(&ids.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ids.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(
            ids.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let ids = TraceIds::for_request(Some(bad), || 7);
            assert_eq!(ids.parent_span_id, None, "{}", String::from_utf8_lossy(bad));
        }
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
        // Three calls in three buckets: the median is the middle one's
        // bucket's middle, not its upper bound.
        let mut buckets = [0u64; LATENCY_BUCKET_COUNT];
        buckets[latency_bucket(733)] = 1;
        buckets[latency_bucket(3_152)] = 1;
        buckets[latency_bucket(5_537)] = 1;
        assert_eq!(latency_quantile(&buckets, 0.5), Some(3_750));
    }
}
