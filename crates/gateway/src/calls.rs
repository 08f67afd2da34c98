//! The call log's hot-path half: one [`CallRecord`] per request, refusals
//! included, handed to the binary's call writer off the hot path.
//!
//! - A record holds what the request already had (the thread's snapshot
//!   handle, the matched route, the caller's app, key and subscription as
//!   shared `Arc`s); the request id, host and path are copied inline
//!   (`SmallVec`, no allocation for usual sizes) so no read buffer is kept
//!   alive, and nothing is formatted on the request path. The writer turns
//!   it into a stored [`domain::calls::CallEntry`] with
//!   [`CallRecord::entry`].
//! - A proxied response's record rides on its body and is finished when the
//!   body ends or is dropped (bytes sent, total latency); every other
//!   response's record is finished at once.
//! - Records gather in a per-thread buffer (no lock, no atomic shared by
//!   workers) and go to the [`CallSink`] 64 at a time, or when the worker's
//!   flusher ticks (every 100 ms) and at shutdown. A full sink drops the
//!   batch and counts it ([`dropped`]).

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use domain::calls::CallEntry;
use domain::code::Code;
use http::{HeaderValue, Method, Uri};
use smallvec::SmallVec;

use crate::SnapshotHandle;
use crate::access::{AppRt, KeyRt};
use crate::money::Labels;

/// Where finished records go, in batches: the binary's call writer.
pub type CallSink = tokio::sync::mpsc::Sender<Vec<CallRecord>>;

/// Records per batch sent to the sink.
const BATCH: usize = 64;
/// How often each worker sends what it has gathered.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Records dropped because the call writer's queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Who made a call, as far as the admission phases got.
#[derive(Default)]
pub struct Who {
    pub app: Option<Arc<AppRt>>,
    pub key: Option<Arc<KeyRt>>,
    pub subscription: Option<Arc<Labels>>,
}

/// The call log's target for calls answered from a route's response
/// cache.
pub const CACHE_TARGET: &str = "cache";

/// One request, as the gateway saw it.
pub struct CallRecord {
    /// Copied (inline, no allocation for UUIDs): a client's id is a slice
    /// of the connection's read buffer, which a record must not keep alive.
    pub request_id: SmallVec<[u8; 40]>,
    /// The request id was minted by this gateway for this request alone
    /// (not the client's): the call log uses it as the call's row id.
    pub request_id_minted: bool,
    pub at_ms: i64,
    pub started: Instant,
    pub method: Method,
    /// The host (first `host_len` bytes) then the path, copied likewise.
    pub host_path: SmallVec<[u8; 96]>,
    pub host_len: usize,
    pub client_ip: IpAddr,
    pub snapshot: Arc<SnapshotHandle>,
    pub route: Option<usize>,
    pub who: Who,
    pub status: u16,
    pub code: Option<Code>,
    pub latency: Duration,
    /// Index of the upstream target tried last, and its time to answer.
    pub target: Option<(usize, Duration)>,
    /// How long the upstream kept the body waiting after its head.
    pub upstream_body: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cost_nanos: i64,
    pub problem: Option<Bytes>,
    pub completed: bool,
    /// Headers and bodies, for services that log them.
    pub capture: Option<Box<Capture>>,
    /// The call's trace span, when traces are exported.
    pub trace: Option<domain::calls::TraceIds>,
    /// AI calls: provider, model, tokens, time to first token.
    pub ai: Option<Box<crate::ai::AiCall>>,
    /// Answered from the route's response cache (its target is `cache`).
    pub cache_hit: bool,
}

/// The first bytes of a body, and how long it was.
#[derive(Debug, Default, Clone)]
pub struct BodyBytes {
    pub bytes: Vec<u8>,
    pub total: u64,
}

impl BodyBytes {
    pub(crate) fn push(&mut self, data: &[u8], limit: usize) {
        self.total += data.len() as u64;
        let room = limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// A request body's first bytes, copied as the body streams to the
/// upstream (shared with the body, which may outlive the request's phases).
#[derive(Clone)]
pub(crate) struct Tap {
    bytes: Arc<std::sync::Mutex<BodyBytes>>,
    limit: usize,
}

impl Tap {
    pub(crate) fn copy(&self, data: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        bytes.push(data, self.limit);
    }
}

/// Headers that are never logged (their values are replaced).
const SECRET_HEADERS: [&str; 7] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "payment-signature",
    "payment-response",
];

/// Parts of header names that say the value is a secret
/// (`x-session-token`, `x-client-secret`, `x-auth-key`).
const SECRET_NAME_PARTS: [&str; 10] = [
    "token",
    "secret",
    "passw",
    "pwd",
    "cookie",
    "api-key",
    "apikey",
    "auth",
    "session",
    "signature",
];

/// Headers as logged: `name: value` lines, secrets replaced: headers that
/// carry credentials, headers named like a secret field, and any value
/// holding a Tollgate key or a bearer token.
pub(crate) fn header_lines(headers: &http::HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        out.push_str(name.as_str());
        out.push_str(": ");
        let text = String::from_utf8_lossy(value.as_bytes());
        // Secret by name, or a key wherever it is (a `Referer` with
        // `?api_key=`, a debug header with a bearer token).
        if SECRET_HEADERS.contains(&name.as_str())
            || SECRET_NAME_PARTS
                .iter()
                .any(|part| name.as_str().contains(part))
            || domain::calls::holds_key(&text)
        {
            out.push_str("[redacted]");
        } else {
            out.push_str(&text);
        }
        out.push('\n');
    }
    out
}

/// What a service that logs bodies keeps of one call; redacted by the
/// call writer before it is stored.
pub struct Capture {
    pub limit: usize,
    pub redact_fields: Arc<[String]>,
    pub request_headers: String,
    request_tap: Tap,
    pub response_headers: String,
    pub response_body: BodyBytes,
}

/// A service's `log_bodies`, compiled once with its snapshot.
#[derive(Debug)]
pub struct BodyLogRt {
    pub max_bytes: usize,
    pub redact_fields: Arc<[String]>,
}

impl BodyLogRt {
    pub fn compile(spec: &domain::model::BodyLogSpec) -> Self {
        Self {
            max_bytes: spec.max_bytes as usize,
            redact_fields: spec.redact_fields.clone().into(),
        }
    }
}

impl Capture {
    pub(crate) fn new(spec: &BodyLogRt, request: &http::HeaderMap) -> Self {
        let limit = spec.max_bytes;
        Self {
            limit,
            redact_fields: spec.redact_fields.clone(),
            request_headers: header_lines(request),
            request_tap: Tap {
                bytes: Arc::default(),
                limit,
            },
            response_headers: String::new(),
            response_body: BodyBytes::default(),
        }
    }

    pub(crate) fn tap(&self) -> Tap {
        self.request_tap.clone()
    }

    /// The request body's first bytes, as copied so far.
    pub fn request_body(&self) -> BodyBytes {
        self.request_tap
            .bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `slot` = `value`, in the buffer `slot` already has.
fn put(slot: &mut String, value: &str) {
    slot.clear();
    slot.push_str(value);
}

/// [`put`] for optional text: a buffer is kept while the value stays set.
fn put_opt(slot: &mut Option<String>, value: Option<&str>) {
    match (slot.as_mut(), value) {
        (Some(buffer), Some(value)) => put(buffer, value),
        (None, Some(value)) => *slot = Some(value.to_owned()),
        (_, None) => *slot = None,
    }
}

/// [`put`] of bytes that are UTF-8 (as request ids, hosts and paths
/// nearly always are) without `from_utf8_lossy`'s slower scan.
fn put_bytes(slot: &mut String, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => put(slot, text),
        Err(_) => put(slot, &String::from_utf8_lossy(value)),
    }
}

/// [`put`] of a client address: IPv4 by hand (every call has one, and
/// `Display` through the formatter cost a fifth of the call writer's task).
fn put_ip(slot: &mut String, ip: IpAddr) {
    slot.clear();
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    slot.push('.');
                }
                if octet >= 100 {
                    slot.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    slot.push(char::from(b'0' + octet / 10 % 10));
                }
                slot.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(slot, "{ip}");
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A record's rollup identity (second, teams, service, app, route,
/// model, status, code) as numbers and pointers: records with equal keys
/// have equal identities, since the snapshot and app they point to are
/// immutable and kept alive by the records. The converse does not hold
/// (each worker thread has its own snapshot handle), so unequal keys
/// prove nothing. Lets the call writer group a run of calls without
/// comparing their strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupKey {
    second: i64,
    snapshot: *const SnapshotHandle,
    route: Option<usize>,
    app: *const AppRt,
    status: u16,
    code: Option<Code>,
}

impl CallRecord {
    /// The record's [`GroupKey`]; none for AI calls (their model is text).
    pub fn group_key(&self) -> Option<GroupKey> {
        if self.ai.is_some() {
            return None;
        }
        Some(GroupKey {
            second: self.at_ms.div_euclid(1000),
            snapshot: Arc::as_ptr(&self.snapshot),
            route: self.route,
            app: self.who.app.as_ref().map_or(std::ptr::null(), Arc::as_ptr),
            status: self.status,
            code: self.code,
        })
    }

    /// The record as stored: names resolved through the snapshot it was
    /// served from.
    pub fn entry(&self) -> CallEntry {
        let mut entry = CallEntry::default();
        self.fill(&mut entry);
        entry
    }

    /// Writes the record into `entry`, every field, reusing the text
    /// buffers `entry` already has: the call writer refills the entries of
    /// batches it has written, so a call's dozen strings cost no
    /// allocation (and no free) once the writer is warm.
    pub fn fill(&self, entry: &mut CallEntry) {
        // Every field is written below; a field added to `CallEntry` stops
        // the build here until it is.
        let CallEntry {
            request_id: _,
            at_ms: _,
            method: _,
            host: _,
            path: _,
            status: _,
            code: _,
            latency_us: _,
            upstream_latency_us: _,
            upstream_body_us: _,
            bytes_in: _,
            bytes_out: _,
            client_ip: _,
            consumer_team: _,
            app: _,
            key_prefix: _,
            subscription_id: _,
            plan: _,
            provider_team: _,
            service: _,
            route_id: _,
            upstream_target: _,
            cost_nanos: _,
            problem: _,
            provider: _,
            model: _,
            input_tokens: _,
            output_tokens: _,
            ttft_us: _,
            completed: _,
            bodies: _,
            http_route: _,
            trace: _,
        } = entry;
        let route = self.route.and_then(|index| self.snapshot.routes.get(index));
        let service = route.map(|route| &route.service);
        let upstream_target = match (service.and_then(|s| s.upstream.as_ref()), self.target) {
            _ if self.cache_hit => Some(CACHE_TARGET),
            (Some(upstream), Some((index, _))) => {
                upstream.targets.get(index).map(|t| t.url.as_str())
            }
            _ => self.ai.as_ref().map(|ai| ai.url.as_str()),
        };
        let labels = self.who.subscription.as_deref();
        let app = self.who.app.as_deref();
        let ai = self.ai.as_deref();
        put_bytes(&mut entry.request_id, &self.request_id);
        entry.at_ms = self.at_ms;
        put(&mut entry.method, self.method.as_str());
        let (host, path) = self.host_path.split_at(self.host_len);
        if host.is_empty() {
            entry.host = None;
        } else {
            put_bytes(entry.host.get_or_insert_default(), host);
        }
        put_bytes(&mut entry.path, path);
        domain::calls::mask_keys_in_path(&mut entry.path);
        entry.status = self.status;
        put_opt(&mut entry.code, self.code.map(Code::as_str));
        entry.latency_us = micros(self.latency);
        entry.upstream_latency_us = self.target.map(|(_, took)| micros(took));
        entry.upstream_body_us = self.upstream_body.map(micros);
        entry.bytes_in = self.bytes_in;
        entry.bytes_out = self.bytes_out;
        put_ip(&mut entry.client_ip, self.client_ip);
        put_opt(&mut entry.consumer_team, app.map(|app| app.team.as_str()));
        put_opt(&mut entry.app, app.map(|app| app.slug.as_str()));
        put_opt(
            &mut entry.key_prefix,
            self.who.key.as_ref().map(|key| &*key.prefix),
        );
        put_opt(&mut entry.subscription_id, labels.map(|l| &*l.subscription));
        put_opt(&mut entry.plan, labels.map(|l| &*l.plan));
        put_opt(
            &mut entry.provider_team,
            service.and_then(|s| s.team.as_deref()),
        );
        put_opt(&mut entry.service, service.map(|s| s.slug.as_str()));
        put_opt(&mut entry.route_id, route.map(|r| r.id.as_str()));
        put_opt(&mut entry.upstream_target, upstream_target);
        entry.cost_nanos = self.cost_nanos;
        put_opt(
            &mut entry.problem,
            self.problem
                .as_ref()
                .map(|body| String::from_utf8_lossy(body))
                .as_deref(),
        );
        put_opt(&mut entry.provider, ai.map(|ai| ai.provider.as_str()));
        put_opt(&mut entry.model, ai.map(|ai| ai.model.as_str()));
        entry.input_tokens = ai.map_or(0, |ai| ai.input_tokens);
        entry.output_tokens = ai.map_or(0, |ai| ai.output_tokens);
        entry.ttft_us = ai.and_then(|ai| ai.ttft).map(micros);
        entry.completed = self.completed;
        // Only spans use it.
        put_opt(
            &mut entry.http_route,
            self.trace.and(route).map(|r| r.pattern.as_str()),
        );
        entry.trace = self.trace;
        entry.bodies = self.capture.as_deref().map(|capture| {
            let request = capture.request_body();
            Box::new(domain::calls::CallBodies {
                request_headers: capture.request_headers.clone(),
                request_body: domain::calls::redact_body(&request.bytes, &capture.redact_fields),
                request_bytes: request.total.max(self.bytes_in),
                response_headers: capture.response_headers.clone(),
                response_body: domain::calls::redact_body(
                    &capture.response_body.bytes,
                    &capture.redact_fields,
                ),
                response_bytes: capture.response_body.total,
            })
        });
    }

    /// A record of a request as it arrives; the rest is filled in as the
    /// request is served.
    pub(crate) fn start(
        request_id: &HeaderValue,
        method: &Method,
        uri: &Uri,
        host: Option<&HeaderValue>,
        client_ip: IpAddr,
        snapshot: Arc<SnapshotHandle>,
        started: Instant,
    ) -> Self {
        let mut host_path = SmallVec::new();
        let host = host.map_or(&[][..], HeaderValue::as_bytes);
        host_path.extend_from_slice(host);
        host_path.extend_from_slice(uri.path().as_bytes());
        Self {
            request_id: SmallVec::from_slice(request_id.as_bytes()),
            request_id_minted: false,
            at_ms: domain::now_ms(),
            started,
            method: method.clone(),
            host_path,
            host_len: host.len(),
            client_ip,
            snapshot,
            route: None,
            who: Who::default(),
            status: 0,
            code: None,
            latency: Duration::ZERO,
            target: None,
            upstream_body: None,
            bytes_in: 0,
            bytes_out: 0,
            cost_nanos: 0,
            problem: None,
            completed: false,
            capture: None,
            trace: None,
            ai: None,
            cache_hit: false,
        }
    }

    /// Finishes the record (total latency) and queues it.
    pub(crate) fn finish(mut self) {
        self.latency = self.started.elapsed();
        push(self);
    }
}

/// This thread's sink and the records not yet sent to it.
struct Buffer {
    sink: Option<CallSink>,
    records: Vec<CallRecord>,
}

thread_local! {
    static BUFFER: RefCell<Buffer> = const {
        RefCell::new(Buffer {
            sink: None,
            records: Vec::new(),
        })
    };
}

/// Makes `sink` this thread's: a gateway worker calls it once at start.
pub(crate) fn install(sink: Option<CallSink>) {
    BUFFER.with(|buffer| buffer.borrow_mut().sink = sink);
}

/// Whether this thread logs calls (a sink is installed).
pub(crate) fn enabled() -> bool {
    BUFFER.with(|buffer| buffer.borrow().sink.is_some())
}

fn push(record: CallRecord) {
    let full = BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let buffer = &mut *buffer;
        let sink = buffer.sink.as_ref()?;
        if buffer.records.capacity() == 0 {
            buffer.records.reserve_exact(BATCH);
        }
        buffer.records.push(record);
        (buffer.records.len() >= BATCH).then(|| (std::mem::take(&mut buffer.records), sink.clone()))
    });
    if let Some((batch, sink)) = full {
        send(batch, &sink);
    }
}

fn send(batch: Vec<CallRecord>, sink: &CallSink) {
    let count = batch.len() as u64;
    if let Err(error) = sink.try_send(batch) {
        DROPPED.fetch_add(count, Ordering::Relaxed);
        if matches!(error, tokio::sync::mpsc::error::TrySendError::Full(_)) {
            tracing::debug!(count, "call log queue full: records dropped");
        }
    }
}

/// Sends what this thread has gathered.
pub(crate) fn flush() {
    let gathered = BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let sink = buffer.sink.clone()?;
        (!buffer.records.is_empty()).then(|| (std::mem::take(&mut buffer.records), sink))
    });
    if let Some((batch, sink)) = gathered {
        send(batch, &sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        id: &'static str,
        method: Method,
        uri: &'static str,
        host: Option<&'static str>,
        ip: [u8; 4],
    ) -> CallRecord {
        let snapshot = Arc::new(SnapshotHandle(Arc::default()));
        CallRecord::start(
            &HeaderValue::from_static(id),
            &method,
            &Uri::from_static(uri),
            host.map(HeaderValue::from_static).as_ref(),
            IpAddr::from(ip),
            snapshot,
            Instant::now(),
        )
    }

    #[test]
    fn refilling_a_used_entry_gives_what_a_fresh_one_would() {
        let mut refused = record(
            "first-request",
            Method::POST,
            "/weather/forecast/long-enough-to-reallocate",
            Some("api.example.com"),
            [203, 0, 113, 7],
        );
        refused.status = 402;
        refused.code = Some(Code::InsufficientCredit);
        refused.problem = Some(Bytes::from_static(b"{\"code\":\"insufficient_credit\"}"));
        refused.cost_nanos = 5;
        let mut answered = record("2", Method::GET, "/h", None, [10, 0, 0, 1]);
        answered.status = 200;
        answered.completed = true;
        answered.bytes_out = 43;
        answered.latency = Duration::from_micros(476);

        let mut entry = refused.entry();
        assert_eq!(entry.host.as_deref(), Some("api.example.com"));
        assert_eq!(entry.code.as_deref(), Some("insufficient_credit"));
        // Set fields cleared, long texts shortened, numbers replaced.
        answered.fill(&mut entry);
        assert_eq!(entry, answered.entry());
        assert_eq!(entry.path, "/h");
        // And back: cleared fields set again.
        refused.fill(&mut entry);
        assert_eq!(entry, refused.entry());
        assert_eq!(entry.client_ip, "203.0.113.7");
    }

    #[test]
    fn client_addresses_read_as_display_writes_them() {
        let mut slot = String::from("a longer buffer left by an earlier call");
        let mut addresses: Vec<IpAddr> = [0u8, 1, 9, 10, 99, 100, 109, 110, 199, 200, 255]
            .into_iter()
            .flat_map(|n| [[n, 0, 0, 1], [127, n, 5, n], [255, 255, 255, n]])
            .map(IpAddr::from)
            .collect();
        addresses.push("2001:db8::7".parse().unwrap());
        addresses.push("::ffff:192.0.2.1".parse().unwrap());
        for ip in addresses {
            put_ip(&mut slot, ip);
            assert_eq!(slot, ip.to_string());
        }
        // Bytes that are not UTF-8 are replaced, not dropped.
        put_bytes(&mut slot, b"/caf\xc3");
        assert_eq!(slot, "/caf\u{fffd}");
    }
}
