//! The response cache of routes that set `cache` (SPEC §2, route options):
//! upstream answers to `GET` kept in this node's memory and served again,
//! to `GET` and `HEAD`, until they expire.
//!
//! - **Where it sits.** After admission: a call served from the cache is
//!   authenticated, limited, charged and logged like any other; only the
//!   upstream is not asked (the call log names `cache` as its target).
//! - **Keys.** The route's scope (its id and the versions of its and its
//!   service's configuration, so a changed route starts afresh), the app
//!   (unless the route's cache is `shared`), the host, and the path and
//!   query as the caller sent them. One entry per key; a `Vary`ing answer
//!   is served only to requests whose varied headers match.
//! - **What is kept.** An answer whose status the route lists, not
//!   server-sent events, without
//!   `Set-Cookie`, not marked `no-store`, `no-cache` or `private`, not
//!   `Vary: *`, with no trailers, whose body arrives whole and within
//!   [`ResponseCache::entry_max`]. It lives for the route's TTL, or less
//!   when the upstream's `s-maxage`, `max-age` or `Expires` (less its
//!   `Age`) says so.
//! - **Vary.** Compared on the request's headers as forwarded (the
//!   gateway's `X-Forwarded-For` and identity headers included), which is
//!   why the lookup waits until they are set.
//! - **What is not looked up.** Ranges, conditional requests (the upstream
//!   answers them), `GET`s with a body, and requests that would reach the
//!   upstream with an `Authorization` header (RFC 9111 §3.5). The caller's
//!   own `Cache-Control` is not obeyed (as nginx and Kong): the cache is
//!   the provider's, to spare its upstream. A successful `POST`, `PUT`,
//!   `PATCH` or `DELETE` drops what its URI holds (RFC 9111 §4.4).
//! - **Memory.** Sixteen shards, each under its own lock (no lock shared
//!   by all requests) with its share of `gateway.cache_max_bytes`; the
//!   oldest entries go first when a shard is full. Expired entries are
//!   dropped when met or pushed out.
//! - **Collapsed forwarding.** A `GET` that misses while another request
//!   is fetching the same key waits for that answer (at most
//!   [`COALESCE_WAIT`], as nginx's `proxy_cache_lock`) and is served from
//!   it: a burst of misses reaches the upstream once. When that answer
//!   could not be kept, the key's requests go to the upstream together,
//!   not one at a time, for [`PASS_FOR`] (Varnish's hit-for-miss).
//! - **Telling the caller.** `Cache-Status` (RFC 9211) on every answer of
//!   a cached route: `tollgate; hit; ttl=N`, `tollgate; fwd=uri-miss;
//!   stored`, `fwd=stale`, `fwd=vary-miss` or `fwd=bypass`, and `Age` on
//!   hits.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

/// The largest body kept.
pub const ENTRY_MAX_BYTES: usize = 1024 * 1024;

/// The longest a `GET` that missed waits for another request's answer
/// to the same key before it asks the upstream itself.
pub const COALESCE_WAIT: Duration = Duration::from_secs(5);

/// After an answer to a key could not be kept (not cacheable, too large,
/// cut short, or none came), how long its misses go to the upstream
/// together rather than waiting for one another.
pub const PASS_FOR: Duration = Duration::from_secs(10);

const SHARDS: usize = 16;

/// `Cache-Status` (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A route's cache settings, compiled.
#[derive(Debug, Clone)]
pub struct CacheRule {
    pub ttl: Duration,
    pub statuses: Vec<u16>,
    pub shared: bool,
    /// Names this route's configuration in keys: a changed route (or
    /// service) does not serve what its earlier version kept.
    pub scope: Box<str>,
}

impl CacheRule {
    pub fn compile(spec: &domain::model::CacheSpec, scope: String) -> Self {
        Self {
            ttl: Duration::from_secs(u64::from(spec.ttl_s)),
            statuses: spec.statuses.clone(),
            shared: spec.shared,
            scope: scope.into(),
        }
    }
}

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The upstream's headers (hop-by-hop ones and `Age` removed), before
    /// the route's response rewrites.
    pub headers: HeaderMap,
    pub body: Bytes,
    stored: Instant,
    expires: Instant,
    /// The upstream's `Age` when it answered, in seconds.
    initial_age: u64,
    /// The request headers the answer varies on, with the values of the
    /// request that fetched it.
    vary: Box<[(HeaderName, Option<HeaderValue>)]>,
    seq: u64,
    size: usize,
}

impl Entry {
    /// `Age` (RFC 9111 §5.1) at `now`, in seconds.
    pub fn age(&self, now: Instant) -> u64 {
        self.initial_age + now.saturating_duration_since(self.stored).as_secs()
    }

    /// Whole seconds left to live at `now`.
    pub fn ttl(&self, now: Instant) -> u64 {
        self.expires.saturating_duration_since(now).as_secs()
    }

    fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }
}

/// What a request may do with the cache.
pub enum Plan {
    /// Look its key up (a `GET` or `HEAD` without a body).
    Look(Box<str>),
    /// Forget what its key holds if the upstream accepts it (`POST`,
    /// `PUT`, `PATCH`, `DELETE`; made by `forward`, not by `plan`).
    Invalidate(Box<str>),
    /// Nothing (a range, a conditional request, a body, a request the
    /// upstream sees with `Authorization`, other methods, writes, no
    /// memory).
    Bypass,
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh answer for it.
    Hit(Arc<Entry>),
    /// Nothing usable: ask the upstream; `why` is the `fwd` parameter
    /// (`uri-miss`, `vary-miss`, `stale`).
    Miss {
        key: Box<str>,
        why: &'static str,
        /// The shard's count of writes' removals when looked up: an
        /// answer fetched across a write is not kept ([`Fill::since`]).
        since: u64,
        /// This request fetches the key for the others that miss it
        /// meanwhile (a `GET`, when coalescing): they wait until it is
        /// dropped ([`Fill::lock`]).
        lock: Option<FillLock>,
    },
    /// Another request is fetching the key: wait until `done` says it
    /// ended (its sender dropped), then look up again.
    Wait {
        key: Box<str>,
        done: tokio::sync::watch::Receiver<()>,
    },
}

/// A key some request is fetching, or whose last answer could not be
/// kept.
enum Pending {
    /// Fetched by the [`FillLock`] of this id.
    Filling(u64, tokio::sync::watch::Receiver<()>),
    /// Misses go to the upstream without waiting until then.
    Pass(Instant),
}

/// What became of the answer a [`FillLock`] fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// Not kept: not cacheable, too large, cut short, or none came.
    No,
    /// Stored.
    Stored,
    /// Cacheable, but a write landed in its shard while it was fetched
    /// (it may be from before the write).
    Raced,
}

/// Held by the request that fetches a key others wait for. Dropped, it
/// wakes them: they find the answer it stored; or one of them fetches
/// again (the answer raced a write); or (nothing could be kept) the key
/// passes for [`PASS_FOR`] and they all ask the upstream.
pub struct FillLock {
    cache: Arc<ResponseCache>,
    key: Box<str>,
    id: u64,
    kept: Kept,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for FillLock {
    fn drop(&mut self) {
        let mut shard = self
            .cache
            .shard(&self.key)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if matches!(shard.pending.get(&*self.key), Some(Pending::Filling(id, _)) if *id == self.id)
        {
            if self.kept != Kept::No {
                shard.pending.remove(&*self.key);
            } else {
                shard
                    .pending
                    .insert(self.key.clone(), Pending::Pass(Instant::now() + PASS_FOR));
            }
        }
        // The waiters wake when `_done` drops, after this.
    }
}

/// The node's cache (one per gateway, shared by its threads).
pub struct ResponseCache {
    shards: Box<[Mutex<Shard>]>,
    shard_bytes: usize,
    hasher: foldhash::fast::FixedState,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Arc<Entry>>,
    /// Keys in the order they were stored, with the entry's `seq` (a key
    /// stored again leaves its earlier place behind, skipped when met).
    order: VecDeque<(Box<str>, u64)>,
    bytes: usize,
    next_seq: u64,
    /// Entries removed by writes so far.
    dropped: u64,
    /// Keys being fetched, or passing (see [`FillLock`]).
    pending: HashMap<Box<str>, Pending>,
    next_lock: u64,
    /// Size of `pending` at which passes that ended are swept out.
    sweep_at: usize,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("shard_bytes", &self.shard_bytes)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// A cache of at most `max_bytes` (bodies, headers and keys).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_bytes: max_bytes / SHARDS,
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    /// Whether anything can be kept (`gateway.cache_max_bytes` is not 0).
    pub fn enabled(&self) -> bool {
        self.shard_bytes > 0
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[index]
    }

    /// What `request` may do with the cache. `forwards_authorization`:
    /// the upstream would see an `Authorization` header (not the
    /// gateway's own credential); `has_body`: the request has a body
    /// (a `GET` with one is a search whose answer the key cannot tell).
    pub fn plan(
        &self,
        rule: &CacheRule,
        app: Option<&str>,
        request: &http::request::Parts,
        forwards_authorization: bool,
        has_body: bool,
    ) -> Plan {
        if !self.enabled() {
            return Plan::Bypass;
        }
        // Writes are not looked up: `forward` drops what they make stale
        // (the key of the route a `GET` of their target takes).
        if !matches!(request.method, Method::GET | Method::HEAD)
            || forwards_authorization
            || has_body
            || BYPASSING
                .iter()
                .any(|name| request.headers.contains_key(name))
        {
            return Plan::Bypass;
        }
        Plan::Look(key(rule, app, request))
    }

    /// Looks `key` up for a request whose headers as forwarded to the
    /// upstream are `forwarded` (what a `Vary` names is compared there:
    /// the gateway sets `X-Forwarded-For` and the caller's identity).
    /// `get`: the request is a `GET`, whose answer would replace a stale
    /// entry (dropped here). `coalesce`: a `GET` that misses while
    /// another request fetches the key is told to wait for it
    /// ([`Lookup::Wait`]), and otherwise takes the key's [`FillLock`].
    pub fn lookup(
        self: &Arc<Self>,
        key: Box<str>,
        forwarded: &HeaderMap,
        get: bool,
        now: Instant,
        coalesce: bool,
    ) -> Lookup {
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        let why = match shard.map.get(&*key) {
            None => "uri-miss",
            Some(entry) if entry.expires <= now => "stale",
            Some(entry) if !entry.matches(forwarded) => "vary-miss",
            Some(entry) => return Lookup::Hit(entry.clone()),
        };
        if why == "stale"
            && get
            && let Some(entry) = shard.map.remove(&*key)
        {
            shard.bytes -= entry.size;
        }
        let mut lock = None;
        if get && coalesce {
            match shard.pending.get(&*key) {
                Some(Pending::Filling(_, done)) => {
                    return Lookup::Wait {
                        key,
                        done: done.clone(),
                    };
                }
                Some(Pending::Pass(until)) if *until > now => {}
                _ => {
                    if shard.pending.len() >= shard.sweep_at {
                        shard.pending.retain(
                            |_, pending| !matches!(pending, Pending::Pass(until) if *until <= now),
                        );
                        shard.sweep_at = (shard.pending.len() * 2).max(1024);
                    }
                    shard.next_lock += 1;
                    let (done, waiting) = tokio::sync::watch::channel(());
                    shard
                        .pending
                        .insert(key.clone(), Pending::Filling(shard.next_lock, waiting));
                    lock = Some(FillLock {
                        cache: self.clone(),
                        key: key.clone(),
                        id: shard.next_lock,
                        kept: Kept::No,
                        _done: done,
                    });
                }
            }
        }
        Lookup::Miss {
            key,
            why,
            since: shard.dropped,
            lock,
        }
    }

    /// Forgets what was kept under `key` (an unsafe method succeeded).
    pub fn remove(&self, key: &str) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.dropped += 1;
        if let Some(entry) = shard.map.remove(key) {
            shard.bytes -= entry.size;
        }
    }

    /// The largest body kept: 1 MiB, or a quarter of a shard's memory
    /// when that is less.
    pub fn entry_max(&self) -> usize {
        ENTRY_MAX_BYTES.min(self.shard_bytes / 4)
    }

    /// Starts keeping an answer to a `GET` whose lookup missed, when the
    /// answer may be kept: `None` when it may not. `headers` are the
    /// upstream's, hop-by-hop ones removed; `forwarded` the request's
    /// headers as the upstream saw them.
    pub fn fill(
        self: &Arc<Self>,
        rule: &CacheRule,
        key: Box<str>,
        forwarded: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<Box<Fill>> {
        // Server-sent events are a stream, not a document: kept, it would
        // reach the requests waiting for it only once it ended.
        let stream = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.get(..17)
                    .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
            });
        if !rule.statuses.contains(&status.as_u16())
            || headers.contains_key(header::SET_COOKIE)
            || headers.contains_key(header::TRAILER)
            || stream
        {
            return None;
        }
        let control = ResponseControl::read(headers);
        if control.no_store {
            return None;
        }
        // RFC 9111 §5.1: the first value counts; one that is not a
        // number is ignored.
        let age_value = headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| delta_seconds(v.split(',').next().unwrap_or("")))
            .unwrap_or(0);
        let date = headers
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        // RFC 9111 §4.2.3: the answer is at least as old as its `Date`
        // says.
        let apparent_age = date
            .and_then(|date| SystemTime::now().duration_since(date).ok())
            .map_or(0, |age| age.as_secs());
        let initial_age = age_value.max(apparent_age);
        let lifetime = match control.max_age {
            Some(max_age) => Some(max_age),
            // `Expires` counts only without `max-age` (RFC 9111 §5.3); one
            // that cannot be read is in the past.
            None => headers.get(header::EXPIRES).map(|expires| {
                let expires = expires
                    .to_str()
                    .ok()
                    .and_then(|v| httpdate::parse_http_date(v).ok());
                match expires {
                    Some(expires) => expires
                        .duration_since(date.unwrap_or_else(SystemTime::now))
                        .map_or(0, |left| left.as_secs()),
                    None => 0,
                }
            }),
        };
        let mut ttl = rule.ttl;
        if let Some(lifetime) = lifetime {
            ttl = ttl.min(Duration::from_secs(lifetime.saturating_sub(initial_age)));
        }
        if ttl.is_zero() {
            return None;
        }
        let mut vary = Vec::new();
        for value in headers.get_all(header::VARY) {
            for name in value.to_str().ok()?.split(',') {
                let name = name.trim();
                if name == "*" {
                    return None;
                }
                if name.is_empty() {
                    continue;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                let value = forwarded.get(&name).cloned();
                vary.push((name, value));
            }
        }
        // The body's room: what the entry may take, less its key and
        // headers.
        let overhead = entry_size(&key, headers, 0);
        let entry_max = self
            .entry_max()
            .min((self.shard_bytes / 4).saturating_sub(overhead));
        let length = crate::pipeline::content_length(headers);
        if overhead > self.shard_bytes / 4 || length.is_some_and(|length| length > entry_max as u64)
        {
            return None;
        }
        let mut kept = headers.clone();
        kept.remove(header::AGE);
        kept.remove(http::HeaderName::from_static("x-request-id"));
        // A hit says when it was fetched (with `Age`), not when it was
        // served.
        if date.is_none()
            && let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
        {
            kept.insert(header::DATE, value);
        }
        Some(Box::new(Fill {
            cache: self.clone(),
            key,
            status,
            headers: kept,
            body: BytesMut::with_capacity(length.unwrap_or(0) as usize),
            ttl,
            started: now,
            initial_age,
            vary: vary.into(),
            limit: entry_max,
            overflowed: false,
            since: None,
            lock: None,
        }))
    }

    /// Stores `entry` unless it is too large or a write came `since`;
    /// what became of it.
    fn insert(&self, key: Box<str>, mut entry: Entry, since: Option<u64>) -> Kept {
        let size = entry_size(&key, &entry.headers, entry.body.len());
        if size > self.shard_bytes {
            return Kept::No;
        }
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        if since.is_some_and(|since| since != shard.dropped) {
            // A write landed while this answer was fetched: it may be
            // from before it (the shard's writes are counted, not each
            // key's: rarely, another key's write costs this one a miss).
            return Kept::Raced;
        }
        shard.next_seq += 1;
        entry.seq = shard.next_seq;
        entry.size = size;
        if let Some(old) = shard.map.remove(&key) {
            shard.bytes -= old.size;
        }
        while shard.bytes + size > self.shard_bytes {
            let Some((old_key, seq)) = shard.order.pop_front() else {
                break;
            };
            if shard.map.get(&old_key).is_some_and(|old| old.seq == seq)
                && let Some(old) = shard.map.remove(&old_key)
            {
                shard.bytes -= old.size;
            }
        }
        if shard.order.len() > 2 * shard.map.len() + 16 {
            // Keys stored again (or found stale) left places behind.
            let map = &shard.map;
            shard
                .order
                .retain(|(key, seq)| map.get(key).is_some_and(|entry| entry.seq == *seq));
        }
        shard.order.push_back((key.clone(), entry.seq));
        shard.bytes += size;
        shard.map.insert(key, Arc::new(entry));
        Kept::Stored
    }

    /// Entries and bytes held (for tests and metrics).
    pub fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(entries, bytes), shard| {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            (entries + shard.map.len(), bytes + shard.bytes)
        })
    }
}

/// The memory an entry is counted for: its body, key and headers, and a
/// little for the rest.
fn entry_size(key: &str, headers: &HeaderMap, body: usize) -> usize {
    body + key.len()
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum::<usize>()
        + 128
}

/// Requests the cache leaves to the upstream.
static BYPASSING: [HeaderName; 5] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// The key of the answer to a `GET` of `request`'s target on the route
/// whose cache `rule` is.
pub fn key(rule: &CacheRule, app: Option<&str>, request: &http::request::Parts) -> Box<str> {
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
    let app = if rule.shared { "" } else { app.unwrap_or("-") };
    let mut key =
        String::with_capacity(rule.scope.len() + app.len() + host.len() + target.len() + 3);
    for part in [&*rule.scope, app, host] {
        key.push_str(part);
        key.push('\n');
    }
    key.push_str(target);
    key.into()
}

/// A `delta-seconds` value (RFC 9111 §1.2.2): digits; one too large is
/// 2^31 seconds.
fn delta_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(1 << 31).min(1 << 31))
}

/// What an upstream's `Cache-Control` says to a shared cache.
#[derive(Debug, Default, PartialEq)]
struct ResponseControl {
    /// `no-store`, `no-cache` or `private` (with or without field names).
    no_store: bool,
    /// `s-maxage`, else `max-age`.
    max_age: Option<u64>,
}

impl ResponseControl {
    fn read(headers: &HeaderMap) -> Self {
        let mut control = Self::default();
        let mut s_maxage = None;
        let mut max_age = None;
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else {
                control.no_store = true;
                continue;
            };
            for directive in value.split(',') {
                let (name, argument) = match directive.split_once('=') {
                    Some((name, argument)) => {
                        (name.trim(), Some(argument.trim().trim_matches('"')))
                    }
                    None => (directive.trim(), None),
                };
                // Not a number: stale at once (RFC 9111 §4.2.1).
                let seconds = || argument.and_then(delta_seconds).unwrap_or(0);
                if name.eq_ignore_ascii_case("no-store")
                    || name.eq_ignore_ascii_case("no-cache")
                    || name.eq_ignore_ascii_case("private")
                {
                    control.no_store = true;
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    s_maxage = Some(seconds());
                } else if name.eq_ignore_ascii_case("max-age") {
                    max_age = Some(seconds());
                }
            }
        }
        control.max_age = s_maxage.or(max_age);
        control
    }
}

/// An answer on its way to the client and into the cache: its body is
/// copied as it passes, and the entry stored when it ends whole.
pub struct Fill {
    cache: Arc<ResponseCache>,
    key: Box<str>,
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
    ttl: Duration,
    started: Instant,
    initial_age: u64,
    vary: Box<[(HeaderName, Option<HeaderValue>)]>,
    /// The largest body kept.
    limit: usize,
    overflowed: bool,
    /// The shard's count of writes' removals when the request looked
    /// the key up ([`Lookup::Miss`]); the answer is dropped if it moved.
    pub since: Option<u64>,
    /// The key's lock when others wait for this answer: let go once it
    /// is stored, or as soon as it cannot be.
    pub lock: Option<FillLock>,
}

impl Fill {
    /// A part of the body passed to the client.
    pub fn push(&mut self, data: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.body.len() + data.len() > self.limit {
            self.overflowed = true;
            self.body = BytesMut::new();
            // The waiting requests go to the upstream now, not when this
            // long body ends.
            self.lock = None;
            return;
        }
        self.body.extend_from_slice(data);
    }

    /// The body ended whole: the answer is stored (unless it grew too
    /// large). Its lifetime counts from when the upstream answered.
    pub fn finish(self) {
        if self.overflowed {
            return;
        }
        let Fill {
            cache,
            key,
            status,
            mut headers,
            body,
            ttl,
            started,
            initial_age,
            vary,
            limit: _,
            overflowed: _,
            since,
            mut lock,
        } = self;
        let body = body.freeze();
        if status != StatusCode::NO_CONTENT {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let kept = cache.insert(
            key,
            Entry {
                status,
                headers,
                body,
                stored: started,
                expires: started + ttl,
                initial_age,
                vary,
                seq: 0,
                size: 0,
            },
            since,
        );
        if let Some(lock) = &mut lock {
            lock.kept = kept;
        }
    }
}

/// Adds the gateway's member to a response's `Cache-Status`, after the
/// upstream's own (RFC 9211 §2: the list runs from the origin towards the
/// caller).
pub fn add_cache_status(headers: &mut HeaderMap, ours: HeaderValue) {
    let theirs: Vec<&[u8]> = headers
        .get_all(&CACHE_STATUS)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let value = if theirs.is_empty() {
        ours
    } else {
        let mut joined = theirs.join(&b", "[..]);
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(ours.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or(ours)
    };
    headers.insert(CACHE_STATUS.clone(), value);
}

/// `Cache-Status` for a hit.
pub fn hit_status(entry: &Entry, now: Instant) -> HeaderValue {
    let mut value = String::with_capacity(32);
    value.push_str("tollgate; hit; ttl=");
    domain::money::push_u64(&mut value, entry.ttl(now));
    HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static("tollgate; hit"))
}

/// `Cache-Status` for a request the upstream answered.
pub fn forward_status(why: &'static str, stored: bool) -> HeaderValue {
    let value = match (why, stored) {
        ("uri-miss", true) => "tollgate; fwd=uri-miss; stored",
        ("uri-miss", false) => "tollgate; fwd=uri-miss",
        ("stale", true) => "tollgate; fwd=stale; stored",
        ("stale", false) => "tollgate; fwd=stale",
        ("vary-miss", true) => "tollgate; fwd=vary-miss; stored",
        ("vary-miss", false) => "tollgate; fwd=vary-miss",
        _ => "tollgate; fwd=bypass",
    };
    HeaderValue::from_static(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(ttl_s: u64, shared: bool) -> CacheRule {
        CacheRule {
            ttl: Duration::from_secs(ttl_s),
            statuses: vec![200, 404],
            shared,
            scope: "route-1@1".into(),
        }
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::get(path).header("host", "api.example");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn answer(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// What `fill` makes of a 200 with `headers` to `request` (key `k`).
    fn offer(
        cache: &Arc<ResponseCache>,
        rule: &CacheRule,
        request: &http::request::Parts,
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<Box<Fill>> {
        cache.fill(
            rule,
            "k".into(),
            &request.headers,
            StatusCode::OK,
            headers,
            now,
        )
    }

    /// Plans and looks `request` up (its headers as forwarded).
    fn look(
        cache: &Arc<ResponseCache>,
        rule: &CacheRule,
        app: Option<&str>,
        request: &http::request::Parts,
        now: Instant,
    ) -> Lookup {
        let Plan::Look(key) = cache.plan(rule, app, request, false, false) else {
            panic!("not looked up");
        };
        cache.lookup(
            key,
            &request.headers,
            request.method == Method::GET,
            now,
            false,
        )
    }

    /// Looks up, fills with `body` and finishes; returns the lookup's
    /// `fwd` reason and whether the answer was taken.
    fn miss_and_fill(
        cache: &Arc<ResponseCache>,
        rule: &CacheRule,
        app: Option<&str>,
        request: &http::request::Parts,
        headers: &HeaderMap,
        body: &[u8],
        now: Instant,
    ) -> (&'static str, bool) {
        let Lookup::Miss { key, why, .. } = look(cache, rule, app, request, now) else {
            panic!("expected a miss");
        };
        let fill = cache.fill(rule, key, &request.headers, StatusCode::OK, headers, now);
        let taken = fill.is_some();
        if let Some(mut fill) = fill {
            fill.push(body);
            fill.finish();
        }
        (why, taken)
    }

    /// Plans `request` (a `GET`) and looks it up, coalescing.
    fn look_coalescing(
        cache: &Arc<ResponseCache>,
        rule: &CacheRule,
        request: &http::request::Parts,
        now: Instant,
    ) -> Lookup {
        let Plan::Look(key) = cache.plan(rule, None, request, false, false) else {
            panic!("not looked up");
        };
        cache.lookup(key, &request.headers, true, now, true)
    }

    /// The first miss of `request` (coalescing) as the request that
    /// fetches it: its key, and its fill of a plain 200 holding the key's
    /// lock.
    fn first_miss_fill(
        cache: &Arc<ResponseCache>,
        rule: &CacheRule,
        request: &http::request::Parts,
        now: Instant,
    ) -> (Box<str>, Box<Fill>) {
        let Lookup::Miss {
            key,
            since,
            lock: Some(lock),
            ..
        } = look_coalescing(cache, rule, request, now)
        else {
            panic!("the first miss fetches");
        };
        let mut fill = cache
            .fill(
                rule,
                key.clone(),
                &request.headers,
                StatusCode::OK,
                &answer(&[]),
                now,
            )
            .unwrap();
        fill.since = Some(since);
        fill.lock = Some(lock);
        (key, fill)
    }

    #[tokio::test]
    async fn misses_of_one_key_wait_for_the_request_that_fetches_it() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(10, true);
        let request = get("/a", &[]);
        let now = Instant::now();
        let (key, mut fill) = first_miss_fill(&cache, &rule, &request, now);
        let Lookup::Wait { mut done, .. } = look_coalescing(&cache, &rule, &request, now) else {
            panic!("the second waits");
        };
        // A `HEAD` brings nothing to keep: it neither waits nor fetches.
        let head = cache.lookup(key, &request.headers, false, now, true);
        assert!(matches!(head, Lookup::Miss { lock: None, .. }));
        fill.push(b"body");
        assert!(done.has_changed().is_ok(), "waiting while the body comes");
        fill.finish();
        assert!(done.changed().await.is_err(), "woken once it is stored");
        assert!(matches!(
            look_coalescing(&cache, &rule, &request, Instant::now()),
            Lookup::Hit(_)
        ));
    }

    /// An answer dropped because a write landed while it was fetched is
    /// not "not cacheable": the next miss fetches for the others again.
    #[test]
    fn an_answer_that_raced_a_write_does_not_make_its_key_pass() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(10, true);
        let request = get("/a", &[]);
        let (key, mut fill) = first_miss_fill(&cache, &rule, &request, Instant::now());
        cache.remove(&key);
        fill.push(b"from before the write");
        fill.finish();
        assert!(matches!(
            look_coalescing(&cache, &rule, &request, Instant::now()),
            Lookup::Miss { lock: Some(_), .. }
        ));
    }

    #[test]
    fn misses_of_a_key_whose_answer_was_not_kept_pass_together() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(10, true);
        let request = get("/a", &[]);
        let now = Instant::now();
        let Lookup::Miss {
            key,
            lock: Some(lock),
            ..
        } = look_coalescing(&cache, &rule, &request, now)
        else {
            panic!("the first miss fetches");
        };
        // `no-store`: nothing to keep, the lock goes with the answer.
        let kept = cache.fill(
            &rule,
            key,
            &request.headers,
            StatusCode::OK,
            &answer(&[("cache-control", "no-store")]),
            now,
        );
        assert!(kept.is_none());
        drop(lock);
        for _ in 0..2 {
            assert!(matches!(
                look_coalescing(&cache, &rule, &request, Instant::now()),
                Lookup::Miss { lock: None, .. }
            ));
        }
        // Once the pass ends, a miss fetches for the others again; one
        // cut short (a body beyond the limit) lets them go at once.
        let later = Instant::now() + PASS_FOR + Duration::from_secs(1);
        let (_, mut fill) = first_miss_fill(&cache, &rule, &request, later);
        let Lookup::Wait { done, .. } = look_coalescing(&cache, &rule, &request, later) else {
            panic!("waits again");
        };
        fill.push(&vec![b'x'; cache.entry_max() + 1]);
        assert!(
            done.has_changed().is_err(),
            "let go when it outgrew the cache"
        );
    }

    #[test]
    fn serves_what_it_kept_until_the_ttl_ends() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(10, false);
        let request = get("/a?x=1", &[]);
        let now = Instant::now();
        let (why, taken) = miss_and_fill(
            &cache,
            &rule,
            Some("app1"),
            &request,
            &answer(&[]),
            b"hello",
            now,
        );
        assert_eq!((why, taken), ("uri-miss", true));
        let later = now + Duration::from_secs(4);
        let Lookup::Hit(entry) = look(&cache, &rule, Some("app1"), &request, later) else {
            panic!("expected a hit");
        };
        assert_eq!(&entry.body[..], b"hello");
        assert_eq!(entry.headers.get("content-length").unwrap(), "5");
        assert_eq!(entry.age(later), 4);
        assert_eq!(entry.ttl(later), 6);
        assert!(matches!(
            look(
                &cache,
                &rule,
                Some("app1"),
                &request,
                now + Duration::from_secs(10)
            ),
            Lookup::Miss { why: "stale", .. }
        ));
        assert_eq!(cache.usage().0, 0, "the stale entry is dropped when met");
    }

    #[test]
    fn keys_separate_apps_queries_and_hosts_unless_shared() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let now = Instant::now();
        let own = rule(60, false);
        let request = get("/a?x=1", &[]);
        miss_and_fill(
            &cache,
            &own,
            Some("app1"),
            &request,
            &answer(&[]),
            b"one",
            now,
        );
        for (app, path, host) in [
            (Some("app2"), "/a?x=1", "api.example"),
            (None, "/a?x=1", "api.example"),
            (Some("app1"), "/a?x=2", "api.example"),
            (Some("app1"), "/a?x=1", "other.example"),
        ] {
            let mut other = get(path, &[]);
            other
                .headers
                .insert("host", HeaderValue::from_str(host).unwrap());
            assert!(
                matches!(look(&cache, &own, app, &other, now), Lookup::Miss { .. }),
                "{app:?} {path} {host}"
            );
        }
        let shared = CacheRule {
            scope: "route-2@1".into(),
            ..rule(60, true)
        };
        miss_and_fill(
            &cache,
            &shared,
            Some("app1"),
            &request,
            &answer(&[]),
            b"one",
            now,
        );
        assert!(matches!(
            look(&cache, &shared, Some("app2"), &request, now),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            look(&cache, &shared, None, &request, now),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn plans_and_bypasses() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(60, true);
        let bypass =
            |cache: &ResponseCache, request: &http::request::Parts, auth: bool, body: bool| {
                matches!(cache.plan(&rule, None, request, auth, body), Plan::Bypass)
            };
        for header in ["range", "if-none-match", "if-modified-since"] {
            assert!(
                bypass(&cache, &get("/a", &[(header, "x")]), false, false),
                "{header}"
            );
        }
        assert!(
            bypass(&cache, &get("/a", &[]), true, false),
            "authorization"
        );
        assert!(bypass(&cache, &get("/a", &[]), false, true), "a body");
        let mut options = get("/a", &[]);
        options.method = Method::OPTIONS;
        assert!(bypass(&cache, &options, false, false));
        let mut post = get("/a", &[]);
        post.method = Method::POST;
        assert!(
            bypass(&cache, &post, false, true),
            "writes are not looked up"
        );
        assert!(!ResponseCache::new(0).enabled());
        assert!(bypass(
            &ResponseCache::new(0),
            &get("/a", &[]),
            false,
            false
        ));
        assert!(matches!(
            cache.plan(&rule, None, &get("/a", &[]), false, false),
            Plan::Look(_)
        ));
    }

    #[test]
    fn keeps_only_what_may_be_kept() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(60, true);
        let request = get("/a", &[]);
        let now = Instant::now();
        let key = || -> Box<str> { "k".into() };
        for refused in [
            answer(&[("set-cookie", "a=b")]),
            answer(&[("cache-control", "no-store")]),
            answer(&[("cache-control", "public, No-Cache")]),
            answer(&[("cache-control", "private=\"x\"")]),
            answer(&[("cache-control", "max-age=0")]),
            answer(&[("cache-control", "max-age=5"), ("age", "9")]),
            answer(&[("vary", "accept, *")]),
            answer(&[("content-length", "2000000")]),
            // The first `Age` counts; one past 2^31 is 2^31.
            answer(&[("cache-control", "max-age=10"), ("age", "50, 5")]),
            answer(&[
                ("cache-control", "max-age=100"),
                ("age", "99999999999999999999"),
            ]),
            // `Expires` in the past, or unreadable, without `max-age`.
            answer(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]),
            answer(&[("expires", "0")]),
            // A stream: its waiters would get nothing until it ends.
            answer(&[("content-type", "text/event-stream; charset=utf-8")]),
        ] {
            assert!(
                offer(&cache, &rule, &request, &refused, now).is_none(),
                "{refused:?}"
            );
        }
        assert!(
            cache
                .fill(
                    &rule,
                    key(),
                    &request.headers,
                    StatusCode::CREATED,
                    &answer(&[]),
                    now
                )
                .is_none()
        );
        // `s-maxage` over `max-age`, less the upstream's `Age`.
        let headers = answer(&[("cache-control", "max-age=100, s-maxage=30"), ("age", "10")]);
        let mut fill = offer(&cache, &rule, &request, &headers, now).unwrap();
        fill.push(b"x");
        assert_eq!(fill.ttl, Duration::from_secs(20));
        assert_eq!(fill.initial_age, 10);
        // A body that outgrows the limit is not kept.
        fill.push(&vec![0; ENTRY_MAX_BYTES]);
        fill.finish();
        assert_eq!(cache.usage().0, 0);
    }

    #[test]
    fn lifetimes_dates_and_the_upstreams_cache_status() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(60, true);
        let request = get("/a", &[]);
        let now = Instant::now();
        let fill = |headers: &[(&str, &str)]| {
            offer(&cache, &rule, &request, &answer(headers), now).unwrap()
        };
        // A huge max-age is the route's TTL.
        assert_eq!(
            fill(&[("cache-control", "max-age=99999999999999999999")])
                .ttl
                .as_secs(),
            60
        );
        // `Expires` 30 s after `Date`, when there is no `max-age`.
        let fetched = SystemTime::now();
        let date = httpdate::fmt_http_date(fetched);
        let expires = httpdate::fmt_http_date(fetched + Duration::from_secs(30));
        let expiring = fill(&[("date", &date), ("expires", &expires)]);
        assert_eq!(expiring.ttl.as_secs(), 30);
        assert_eq!(
            expiring.headers["date"],
            date.as_str(),
            "the upstream's Date kept"
        );
        // An `Expires` after `Date`, both long past: as old as `Date` says.
        let long_ago = httpdate::fmt_http_date(fetched - Duration::from_secs(600));
        let expired = httpdate::fmt_http_date(fetched - Duration::from_secs(300));
        let past = answer(&[("date", &long_ago), ("expires", &expired)]);
        assert!(offer(&cache, &rule, &request, &past, now).is_none());
        let aged = fill(&[("date", &long_ago), ("cache-control", "max-age=630")]);
        assert!((29..=30).contains(&aged.ttl.as_secs()), "{:?}", aged.ttl);
        assert!((600..=601).contains(&aged.initial_age));
        // An answer without `Date` is given the time it was fetched.
        let undated = fill(&[]);
        let stamped = httpdate::parse_http_date(undated.headers["date"].to_str().unwrap()).unwrap();
        assert!(stamped <= SystemTime::now() && stamped + Duration::from_secs(2) >= fetched);
        // The gateway's member goes after the upstream's.
        let mut headers = answer(&[("cache-status", "origin-cdn; hit")]);
        add_cache_status(&mut headers, forward_status("uri-miss", true));
        assert_eq!(
            headers["cache-status"],
            "origin-cdn; hit, tollgate; fwd=uri-miss; stored"
        );
        let mut headers = HeaderMap::new();
        add_cache_status(&mut headers, forward_status("bypass", false));
        assert_eq!(headers["cache-status"], "tollgate; fwd=bypass");
    }

    #[test]
    fn small_caches_keep_small_answers_and_forget_on_request() {
        // 16 shards of 4 KiB: bodies up to 1 KiB.
        let cache = Arc::new(ResponseCache::new(16 * 4096));
        assert_eq!(cache.entry_max(), 1024);
        let rule = rule(60, true);
        let request = get("/a", &[]);
        let now = Instant::now();
        let too_long = answer(&[("content-length", "1025")]);
        assert!(offer(&cache, &rule, &request, &too_long, now).is_none());
        let (_, taken) = miss_and_fill(
            &cache,
            &rule,
            None,
            &request,
            &answer(&[]),
            &[b'x'; 1025],
            now,
        );
        assert!(taken);
        assert_eq!(
            cache.usage().0,
            0,
            "a streamed body past the limit is not kept"
        );
        // The key and headers count in the quarter of a shard.
        let fill = |headers: HeaderMap| offer(&cache, &rule, &request, &headers, now);
        assert!(fill(answer(&[("x-padding", &"p".repeat(1000))])).is_none());
        assert!(fill(answer(&[("content-length", "900")])).is_none());
        miss_and_fill(
            &cache,
            &rule,
            None,
            &request,
            &answer(&[]),
            &[b'x'; 500],
            now,
        );
        assert!(matches!(
            look(&cache, &rule, None, &request, now),
            Lookup::Hit(_)
        ));
        let Plan::Look(key) = cache.plan(&rule, None, &request, false, false) else {
            panic!("not looked up");
        };
        cache.remove(&key);
        assert_eq!(cache.usage(), (0, 0));
        assert_eq!(ResponseCache::new(15).entry_max(), 0);
    }

    #[test]
    fn an_answer_fetched_across_a_write_is_not_kept() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(60, true);
        let request = get("/a", &[]);
        let now = Instant::now();
        let Lookup::Miss { key, since, .. } = look(&cache, &rule, None, &request, now) else {
            panic!("expected a miss");
        };
        // The write lands while the GET waits for the upstream.
        cache.remove(&key);
        let mut fill = cache
            .fill(
                &rule,
                key,
                &request.headers,
                StatusCode::OK,
                &answer(&[]),
                now,
            )
            .unwrap();
        fill.since = Some(since);
        fill.push(b"from before the write");
        fill.finish();
        assert_eq!(cache.usage().0, 0);
        // The next GET's answer is kept.
        let (why, taken) =
            miss_and_fill(&cache, &rule, None, &request, &answer(&[]), b"after", now);
        assert_eq!((why, taken), ("uri-miss", true));
        assert!(matches!(
            look(&cache, &rule, None, &request, now),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn vary_matches_on_the_request_that_fetched_it() {
        let cache = Arc::new(ResponseCache::new(1 << 20));
        let rule = rule(60, true);
        let now = Instant::now();
        let english = get("/a", &[("accept-language", "en")]);
        let headers = answer(&[("vary", "Accept-Language")]);
        miss_and_fill(&cache, &rule, None, &english, &headers, b"hi", now);
        assert!(matches!(
            look(&cache, &rule, None, &english, now),
            Lookup::Hit(_)
        ));
        let french = get("/a", &[("accept-language", "fr")]);
        assert!(matches!(
            look(&cache, &rule, None, &french, now),
            Lookup::Miss {
                why: "vary-miss",
                ..
            }
        ));
        assert!(matches!(
            look(&cache, &rule, None, &get("/a", &[]), now),
            Lookup::Miss {
                why: "vary-miss",
                ..
            }
        ));
    }

    #[test]
    fn a_full_shard_lets_its_oldest_entries_go() {
        // 16 shards of 4 KiB.
        let cache = Arc::new(ResponseCache::new(16 * 4096));
        let rule = rule(60, true);
        let now = Instant::now();
        for index in 0..400 {
            let request = get(&format!("/item/{index}"), &[]);
            miss_and_fill(
                &cache,
                &rule,
                None,
                &request,
                &answer(&[]),
                &[b'x'; 500],
                now,
            );
        }
        let (entries, bytes) = cache.usage();
        assert!(bytes <= 16 * 4096, "{bytes}");
        assert!(entries > 16 && entries < 400, "{entries}");
        // The newest are there, the oldest gone.
        assert!(matches!(
            look(&cache, &rule, None, &get("/item/399", &[]), now),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            look(&cache, &rule, None, &get("/item/0", &[]), now),
            Lookup::Miss { .. }
        ));
        // Storing one key again and again leaves no trail behind.
        for _ in 0..1000 {
            miss_and_fill_again(&cache, &rule, now);
        }
        let shards_order: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().order.len())
            .sum();
        assert!(shards_order < 2 * 400 + 16 * 16, "{shards_order}");
    }

    fn miss_and_fill_again(cache: &Arc<ResponseCache>, rule: &CacheRule, now: Instant) {
        let request = get("/again", &[]);
        let key = key(rule, None, &request);
        let mut fill = cache
            .fill(
                rule,
                key,
                &request.headers,
                StatusCode::OK,
                &answer(&[]),
                now,
            )
            .unwrap();
        fill.push(b"again");
        fill.finish();
    }

    #[test]
    fn cache_control_is_read_as_a_shared_cache_would() {
        let read = |value: &str| ResponseControl::read(&answer(&[("cache-control", value)]));
        assert_eq!(read("public, max-age=60").max_age, Some(60));
        assert_eq!(read("max-age=\"60\"").max_age, Some(60));
        assert_eq!(read("max-age=60, s-maxage=5").max_age, Some(5));
        assert_eq!(read("max-age=junk").max_age, Some(0));
        assert!(read("no-cache=\"set-cookie\"").no_store);
        assert!(!read("public, must-revalidate").no_store);
    }
}
