//! The request path, as named phases over one [`RequestContext`]:
//!
//! 1. `reserved`: `/_tollgate/…` (health, readiness) is answered here.
//! 2. `match_route`: host, path and method → route, or 404 / 405.
//! 3. `check_lifecycle`: retired → 410; deprecated → headers noted.
//! 4. `check_body_size`: a declared `Content-Length` over the limit → 413.
//! 5. `admit` ([`crate::admit`]): authenticate → 401, authorize → 403, limit
//!    → 429. (Payment, the money issue, slots in after this.)
//! 6. `forward`: balancing, retries, per-try and total timeouts → 502/503/504;
//!    the caller's key is removed and `Tollgate-App`/`-Team`/`-Plan`/
//!    `-Subscription` are set for the upstream.
//! 7. `respond`: hop-by-hop headers removed, request id, deprecation and
//!    `RateLimit` headers.
//!
//! The first refusal ends the request; `handle` renders it through
//! [`Refusal::into_response`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::code::Code;
use domain::model::Lifecycle;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use crate::Shared;
use crate::admit::{Admission, strip};
use crate::body::{
    BodyProgress, BodyStalled, BodyTooLarge, ClientBodyError, GatewayBody, InFlight, LimitedBody,
    RequestBody, UpstreamRequestBody, UpstreamResponseBody,
};
use crate::cache::{Entry, Lookup, Plan, forward_status};
use crate::client::SendError;
use crate::refusal::LeaseShort;
use crate::refusal::Refusal;
use crate::router::{Match, allow_header, method_bit};
use crate::snapshot::{RouteRt, Snapshot};
use crate::upstream::{Outcome, PickInput};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
static SUNSET: HeaderName = HeaderName::from_static("sunset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TOLLGATE_BALANCE: HeaderName = HeaderName::from_static("tollgate-balance");
/// Identity headers the gateway sets for the upstream; a client's own are
/// dropped so they cannot be forged.
static IDENTITY: [HeaderName; 4] = [
    HeaderName::from_static("tollgate-app"),
    HeaderName::from_static("tollgate-team"),
    HeaderName::from_static("tollgate-plan"),
    HeaderName::from_static("tollgate-subscription"),
];

/// The client end of a connection, computed once per connection.
pub struct Peer {
    pub addr: SocketAddr,
    /// The client IP as a header value (for `X-Forwarded-For`).
    pub ip_header: HeaderValue,
    /// Interim answers for an HTTP/1.1 client's connection to write.
    pub interim: crate::h1::Interim,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip_header = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            addr,
            ip_header,
            interim: crate::h1::Interim::default(),
        }
    }
}

/// A list field's value without the whitespace and empty items at its
/// ends (`,, a, b ,` is `a, b`).
fn trim_list_ends(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| !matches!(b, b',' | b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !matches!(b, b',' | b' ' | b'\t'))
        .map_or(start, |last| last + 1);
    &value[start..end.max(start)]
}

/// Marks a request the gateway made itself (an MCP tool call): its
/// upstream's interim answers are not the client connection's to see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Internal;

/// What the phases learn about one request.
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub peer: Arc<Peer>,
    pub started: Instant,
    pub snapshot: Arc<crate::SnapshotHandle>,
    /// Index into `snapshot.routes` once matched.
    pub route: Option<usize>,
    /// `RateLimit-Policy` and `RateLimit`, once the limit phase ran.
    pub rate_headers: Option<(HeaderValue, HeaderValue)>,
    /// `Tollgate-Warning`, once the pay phase ran.
    pub warning: Option<HeaderValue>,
    /// AI endpoints: the API the caller speaks, for refusals in its dialect.
    pub dialect: Option<ai::Dialect>,
    /// A priced call's wallet and price, once the pay phase admitted it.
    pub paid_from: Option<(Arc<crate::money::WalletRt>, i64)>,
    /// The quota's `RateLimit` item as the pay phase counted it.
    pub quota_state: Option<(u64, u64)>,
}

/// What the phases found out for the call log: who called, which
/// target answered, what was charged.
#[derive(Default)]
pub(crate) struct Trace {
    pub who: crate::calls::Who,
    pub target: Option<(usize, Duration)>,
    /// The target of the try in flight and when it began: a call dropped
    /// while it waits (its client went away) logs that target and how
    /// long it had waited.
    pub trying: Option<(usize, Instant)>,
    pub cost_nanos: i64,
    /// Headers and bodies, for services that log them.
    pub capture: Option<Box<crate::calls::Capture>>,
    /// The call's trace span (traces exported).
    pub ids: Option<domain::calls::TraceIds>,
    /// AI calls: provider, model, tokens.
    pub ai: Option<Box<crate::ai::AiCall>>,
    /// A refusal answered as a response of its own (an AI provider's
    /// error relayed in the caller's dialect, `/mcp`'s 401 with its
    /// challenge): its code, for the call log and metrics.
    pub refused: Option<Code>,
    /// Answered from the route's response cache.
    pub cache_hit: bool,
}

impl RequestContext {
    fn route(&self) -> Option<&RouteRt> {
        self.route.and_then(|index| self.snapshot.routes.get(index))
    }
}

/// Status logged for a request its client gave up on before the answer
/// (nginx's convention): the connection closed while the gateway waited.
pub const CLIENT_CLOSED: u16 = 499;

/// A request on its way to an answer, with its call record. Dropped before
/// [`handle`] hands the record on, it logs the call with whatever the
/// phases had learned: as [`CLIENT_CLOSED`] when the server gave up on the
/// request (the client went away), as the 500 `internal_error` the client
/// gets when a phase panicked. The reservation and permits the dropped
/// phases held give their money and slots back on their own.
struct Unanswered {
    /// Boxed from the start: the response body keeps it boxed, and the
    /// request's futures move a pointer instead of 440 bytes.
    record: Option<Box<crate::calls::CallRecord>>,
    context: RequestContext,
    trace: Trace,
}

impl Unanswered {
    /// What the phases learned, onto the record.
    fn fill(&mut self, record: &mut crate::calls::CallRecord) {
        record.route = self.context.route;
        record.who = std::mem::take(&mut self.trace.who);
        record.target = self.trace.target.or_else(|| {
            self.trace
                .trying
                .map(|(index, started)| (index, started.elapsed()))
        });
        record.cost_nanos = self.trace.cost_nanos;
        record.capture = self.trace.capture.take();
        record.trace = self.trace.ids;
        record.ai = self.trace.ai.take();
        record.cache_hit = self.trace.cache_hit;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            self.fill(&mut record);
            if std::thread::panicking() {
                record.status = 500;
                record.code = Some(Code::InternalError);
            } else {
                record.status = CLIENT_CLOSED;
            }
            record.finish();
        }
    }
}

/// Serves one request. Never fails: every error becomes a response.
pub(crate) async fn handle(
    shared: &Shared,
    request: Request<RequestBody>,
    peer: Arc<Peer>,
) -> Response<GatewayBody> {
    let (request_id, minted) = request_id_of(request.headers());
    let context = RequestContext {
        request_id: request_id.clone(),
        peer,
        started: Instant::now(),
        snapshot: shared.local_snapshot(),
        route: None,
        rate_headers: None,
        warning: None,
        dialect: None,
        paid_from: None,
        quota_state: None,
    };
    let path = request.uri().path();
    let probe = path == "/_tollgate/health" || path == "/_tollgate/ready";
    let record = (crate::calls::enabled() && !probe).then(|| {
        // The client as IP rules see it: behind a trusted proxy, the
        // address it forwarded for.
        let trusted = &shared.options.trusted_proxies;
        let client_ip = if trusted.is_empty() {
            context.peer.addr.ip()
        } else {
            crate::access::client_ip(context.peer.addr.ip(), request.headers(), trusted)
        };
        let mut record = Box::new(crate::calls::CallRecord::start(
            &request_id,
            request.method(),
            request.uri(),
            request.headers().get(header::HOST),
            client_ip,
            context.snapshot.clone(),
            context.started,
        ));
        record.request_id_minted = minted;
        record.bytes_in = content_length(request.headers()).unwrap_or(0);
        record
    });
    let mut call = Unanswered {
        record,
        context,
        trace: Trace::default(),
    };
    if shared.options.trace && call.record.is_some() {
        call.trace.ids = Some(domain::calls::TraceIds::for_request(
            request
                .headers()
                .get(&TRACEPARENT)
                .map(HeaderValue::as_bytes),
            || fastrand::u64(1..),
        ));
    }
    let mut refused = None;
    let mut response = match run(shared, &mut call.context, &mut call.trace, request).await {
        Ok(response) => response,
        Err(refusal) => {
            refused = Some(refusal.code);
            match call.context.dialect {
                Some(dialect) => {
                    refusal.into_dialect_response(dialect, &request_id, &shared.options.public_url)
                }
                None => refusal.into_response(&request_id, &shared.options.public_url),
            }
        }
    };
    if let Some(mut record) = call.record.take() {
        call.fill(&mut record);
        record.status = response.status().as_u16();
        record.code = refused.or(call.trace.refused);
        match response.body_mut() {
            GatewayBody::Upstream(body) => body.log_on_end(record),
            GatewayBody::Ai(body) => body.log_on_end(record),
            GatewayBody::Stream(_) => {
                record.completed = true;
                record.finish();
            }
            GatewayBody::Full(data) => {
                record.bytes_out = data.as_ref().map_or(0, |d| d.len() as u64);
                if record.code.is_some() {
                    record.problem = data.clone();
                }
                record.completed = true;
                record.finish();
            }
        }
    }
    let context = &mut call.context;
    if let Some((wallet, price)) = &context.paid_from {
        // Said once the call is settled or given back: a call that was not
        // charged (an upstream's or the gateway's 5xx) leaves one more.
        let left = wallet.available();
        if let Some(calls_left) = crate::warn::low_balance(left, *price) {
            let item = format!("low-balance;calls-left={calls_left}");
            let joined = match context.warning.take() {
                Some(other) => [other.as_bytes(), b", ", item.as_bytes()].concat(),
                None => item.into_bytes(),
            };
            context.warning = HeaderValue::from_bytes(&joined).ok();
        }
        // The gateway's own refusals after admission (502, 503, 504) say
        // the balance too, as the upstream's answers do.
        if !response.headers().contains_key(&TOLLGATE_BALANCE) {
            let value = balance_header(left, &shared.options.currency);
            if let Ok(value) = value {
                response
                    .headers_mut()
                    .insert(TOLLGATE_BALANCE.clone(), value);
            }
        }
    }
    let deprecation = context
        .route()
        .and_then(|route| route.service.deprecation.as_ref());
    if context.warning.is_some() || deprecation.is_some() {
        // A warning joins the one a handler or the upstream gave.
        crate::body::materialize(&mut response);
    }
    // An upstream's own `RateLimit` stands (looked for only when the
    // gateway has a pair to add).
    let mut rate_headers = context
        .rate_headers
        .take()
        .filter(|_| !crate::body::has_header(&response, &RATELIMIT));
    // A call given back (refused after admission, or answered 5xx) left its
    // place in the quota: its item says one more remains.
    if let Some(state) = context.quota_state
        && (refused.is_some() || response.status().is_server_error())
        && let Some((_, value)) = rate_headers.as_mut()
        && let Ok(text) = value.to_str()
    {
        let counted = crate::admit::quota_item(state);
        let given_back = crate::admit::quota_item((state.0 + 1, state.1));
        if let Ok(fixed) = HeaderValue::from_str(&text.replacen(&counted, &given_back, 1)) {
            *value = fixed;
        }
    }
    // With the upstream's head raw, the request id goes with it: a plain
    // proxied answer then needs no header map at all.
    let request_id = match crate::body::RawHeaded::raw_head_mut(response.body_mut()) {
        Some(raw) => {
            raw.request_id = Some(request_id);
            None
        }
        None => Some(request_id),
    };
    let headers = response.headers_mut();
    if let Some(request_id) = request_id {
        headers.insert(X_REQUEST_ID.clone(), request_id);
    }
    if let Some((policy, state)) = rate_headers {
        headers.insert(RATELIMIT_POLICY.clone(), policy);
        headers.insert(RATELIMIT.clone(), state);
    }
    let mut warning = context.warning.take();
    if let Some(route) = context.route()
        && let Some(deprecated) = &route.service.deprecation
    {
        headers.insert(DEPRECATION.clone(), deprecated.deprecation.clone());
        if let Some(sunset) = &deprecated.sunset {
            headers.insert(SUNSET.clone(), sunset.clone());
        }
        warning = Some(match warning {
            None => deprecated.warning.clone(),
            Some(other) => HeaderValue::from_bytes(
                &[other.as_bytes(), b", ", deprecated.warning.as_bytes()].concat(),
            )
            .unwrap_or(other),
        });
    }
    if let Some(warning) = warning {
        let name = crate::admit::warning_header();
        // A handler (an AI call's token quota) or the upstream may have
        // warned too: every line of theirs joins the list.
        let mut joined = warning.as_bytes().to_vec();
        // Each line as it is (a quoted comma stays as written), less the
        // empty items at its ends and empty lines (RFC 9110 §5.6.1).
        let theirs = headers
            .get_all(name)
            .iter()
            .map(|value| trim_list_ends(value.as_bytes()))
            .filter(|items| !items.is_empty());
        for items in theirs {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(items);
        }
        let warning = HeaderValue::from_bytes(&joined).unwrap_or(warning);
        headers.insert(name.clone(), warning);
    }
    response
}

async fn run(
    shared: &Shared,
    context: &mut RequestContext,
    trace: &mut Trace,
    request: Request<RequestBody>,
) -> Result<Response<GatewayBody>, Refusal> {
    if domain::path::has_dot_segment(request.uri().path()) {
        // Routed as written it would leave its route once resolved.
        return Err(Refusal::new(
            Code::BadRequest,
            "The request path has '.' or '..' segments (possibly escaped). Send the path resolved, as RFC 3986 §5.2.4 does.",
        ));
    }
    // Escapes, when there are any (most paths have none: one scan):
    // malformed ones refused, escaped letters and digits routed as what
    // they are (`%61` is `a`).
    let request = if request.uri().path().contains('%') {
        let path = request.uri().path();
        if domain::path::has_bad_escape(path) {
            return Err(Refusal::new(
                Code::BadRequest,
                "The request path has a '%' that starts no escape, or an escaped NUL (%00). Escape '%' itself as %25.",
            ));
        }
        match domain::path::normalise_escapes(path) {
            Some(path) => with_path(request, &path)?,
            None => request,
        }
    } else {
        request
    };
    if let Some(rest) = request.uri().path().strip_prefix("/_tollgate/") {
        let problems = rest
            .strip_prefix("problems")
            .filter(|r| r.is_empty() || r.starts_with('/'));
        let top_up = rest
            .strip_prefix("portal/teams/")
            .and_then(|r| r.strip_suffix("/wallet"));
        let pages =
            rest == "me" || rest.starts_with("requests/") || problems.is_some() || top_up.is_some();
        if pages && !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut refusal = Refusal::new(
                Code::MethodNotAllowed,
                format!("/_tollgate/{rest} is read with GET."),
            );
            refusal.allow = Some("GET, HEAD".to_owned());
            return Err(refusal);
        }
        if rest == "me" {
            return crate::me::me(&context.snapshot, &request, &shared.options.currency);
        }
        if let Some(id) = rest.strip_prefix("requests/") {
            let lookup = shared.lookup.get().map(|lookup| &**lookup);
            let options = &shared.options;
            return Box::pin(crate::me::request(
                &context.snapshot,
                lookup,
                &request,
                id,
                (&options.public_url, &options.currency),
            ))
            .await;
        }
        if let Some(name) = rest.strip_prefix("webhooks/") {
            let name = name.to_owned();
            return Box::pin(hook(shared, &name, request, &context.request_id)).await;
        }
        if let Some(code) = problems {
            return crate::me::problem_page(&request, code);
        }
        if let Some(team) = top_up {
            return crate::me::top_up_page(&request, team);
        }
        if let Some(response) = reserved(shared, rest) {
            return Ok(response);
        }
    }
    if let Some(endpoint) = crate::ai::endpoint(&context.snapshot.ai, request.uri().path()) {
        return Box::pin(crate::ai::handle(shared, context, trace, request, endpoint)).await;
    }
    match request.uri().path() {
        "/mcp" => return Box::pin(crate::mcp_host::handle(shared, context, trace, request)).await,
        path if path.starts_with(mcp::auth::PROTECTED_RESOURCE_METADATA_PATH) => {
            return Ok(crate::mcp_host::resource_metadata(shared));
        }
        _ => {}
    }
    if let Some(index) = crate::ai::prompt_endpoint(&context.snapshot.ai, request.uri().path()) {
        return Box::pin(crate::ai::handle_prompt(
            shared, context, trace, request, index,
        ))
        .await;
    }
    match_route(context, &request)?;
    check_lifecycle(context)?;
    check_body_size(context, &request)?;
    // Without a facilitator a payment could not be settled: the service
    // is served as one without per-request payment.
    let paid_per_request = context.route().and_then(|route| {
        route.service.x402.clone().filter(|_| {
            shared.facilitator.get().is_some()
                && (request
                    .headers()
                    .contains_key(&crate::x402::PAYMENT_SIGNATURE)
                    || !crate::admit::has_credentials(&request))
        })
    });
    if let Some(x402) = paid_per_request {
        return Box::pin(pay_per_request(shared, context, trace, request, x402)).await;
    }
    let admission = admit_leasing(shared, context, trace, &request).await?;
    // Boxed: the forward phase is the largest part of the request's state;
    // on the heap it is allocated once instead of being copied each time
    // the request future moves.
    Box::pin(forward(shared, context, trace, request, admission)).await
}

/// Calls this node's lease of a wallet is asked for ahead, when it runs
/// short: the next calls then need no lease transaction of their own.
const LEASE_AHEAD_CALLS: i64 = 16;

/// The longest a call waits for lease and grant transactions, in all.
/// It waits only while this node is in touch with the store (its leases
/// renewed lately, see [`while_in_touch`]): a store that is away fails
/// calls as soon as the node stops spending, a slow one (a loaded
/// machine, rows locked by another node) does not.
const LEASE_WAIT: Duration = Duration::from_secs(5);

/// How often a call waiting for a lease transaction checks that its node
/// is still in touch with the store.
const IN_TOUCH_POLL: Duration = Duration::from_millis(100);

/// Rounds of asking the store a call may take when calls beside it took
/// what each round was granted (a burst on one wallet): each round served
/// others, so it ends when the store has no more to grant, a quota or
/// budget refuses, or [`LEASE_WAIT`] has passed.
const LEASE_ROUNDS: usize = 32;

/// Runs a lease or grant `transaction` while `in_touch` (the node's
/// leases still spendable), for at most `LEASE_WAIT`; `None` when it gave
/// up waiting.
async fn while_in_touch<T>(
    in_touch: impl Fn() -> bool,
    transaction: impl std::future::Future<Output = T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + LEASE_WAIT;
    let mut transaction = std::pin::pin!(transaction);
    loop {
        match tokio::time::timeout(IN_TOUCH_POLL, transaction.as_mut()).await {
            Ok(done) => return Some(done),
            Err(_) if !in_touch() || tokio::time::Instant::now() >= deadline => return None,
            Err(_) => {}
        }
    }
}

/// Many nodes: `refusal` said this node's lease of a wallet, or its grant
/// of a quota or budget, was short; asks the store for more. `Ok` when the
/// call may be admitted again (a counter whose grant could not grow then
/// counts as at its limit); else the refusal (a 402 when the balance is
/// held elsewhere, a 503 `ledger_unavailable` when the store cannot be
/// asked).
async fn lease_for(shared: &Shared, mut refusal: Refusal) -> Result<(), Refusal> {
    let Some(short) = refusal.lease_short.take() else {
        return Err(refusal);
    };
    let enough = match &*short {
        LeaseShort::Wallet(wallet, needed) => ensure_lease(shared, wallet, *needed).await,
        LeaseShort::Counter(counter, needed, limit) => {
            ensure_grant(shared, counter, *needed, *limit).await
        }
    };
    match (enough, *short) {
        (Some(true), _) | (Some(false), LeaseShort::Counter(..)) => Ok(()),
        (Some(false), LeaseShort::Wallet(..)) => Err(refusal),
        (None, _) => Err(crate::refusal::ledger_unavailable()),
    }
}

/// Many nodes: takes up to `most` (at least `least`) of this node's grant
/// of `counter` (a token quota within `limit`), asking the store for more
/// when calls here took it first; what was taken, or why nothing was.
/// One node: `most` (nothing to take).
pub(crate) async fn take_grant(
    shared: &Shared,
    counter: &Arc<crate::money::Counter>,
    (most, least): (u64, u64),
    limit: u64,
) -> Result<u64, crate::money::GrantShort> {
    use crate::money::GrantShort;
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for _ in 0..3 {
        match counter.take_from_grant(most, least) {
            None => return Ok(most),
            Some(Err(GrantShort::Ask)) => {
                if ensure_grant(shared, counter, as_i64(most), as_i64(limit))
                    .await
                    .is_none()
                {
                    return Err(GrantShort::Lost);
                }
            }
            Some(taken) => return taken,
        }
    }
    Err(GrantShort::Ask)
}

/// Many nodes: makes this node's grant of `counter` (a quota or a budget)
/// hold at least `needed` within `limit` if the store can grant it.
/// `Some(enough)` (not enough: the counter takes its limit as reached for
/// a moment), or `None` when the store could not be asked.
pub(crate) async fn ensure_grant(
    shared: &Shared,
    counter: &Arc<crate::money::Counter>,
    needed: i64,
    limit: i64,
) -> Option<bool> {
    let leases = shared.leases.get()?;
    let lease = counter.lease.as_ref()?;
    if !lease.valid() || store_failed_lately(shared) {
        return None;
    }
    let _gate = lease.gate.lock().await;
    lease.ask_within(limit);
    let headroom = lease.headroom();
    if headroom >= needed {
        return Some(true);
    }
    if store_failed_lately(shared) {
        return None;
    }
    // Calls ahead, but no more than an eighth of the limit: a small quota
    // is not taken whole by the first node that asks.
    let want = needed
        .saturating_mul(LEASE_AHEAD_CALLS)
        .min(limit / 8)
        .max(needed.saturating_sub(headroom));
    match while_in_touch(|| lease.valid(), leases.grant(counter, want, limit)).await {
        Some(Ok(total)) => Some(lease.granted_now(total, needed)),
        Some(Err(error)) => {
            tracing::warn!(scope = %counter.scope, %error, "cannot grow a quota or budget grant");
            store_failed(shared)
        }
        None => {
            tracing::warn!(scope = %counter.scope, "the store did not grant in time");
            store_failed(shared)
        }
    }
}

/// How long after a lease or grant transaction failed short calls fail at
/// once (the store is likely still away).
const LEASE_FAILED_MS: u64 = 1_000;

/// Whether a lease or grant transaction failed within the last second.
fn store_failed_lately(shared: &Shared) -> bool {
    let failed = shared
        .lease_failed_ms
        .load(std::sync::atomic::Ordering::Acquire);
    failed != 0 && crate::upstream::monotonic_ms() < failed + LEASE_FAILED_MS
}

/// Records a failed lease or grant transaction; the call fails (`None`).
fn store_failed(shared: &Shared) -> Option<bool> {
    shared.lease_failed_ms.store(
        crate::upstream::monotonic_ms().max(1),
        std::sync::atomic::Ordering::Release,
    );
    None
}

/// Many nodes: makes this node's lease of `wallet` hold at least `needed`
/// if the store can grant it. `Some(enough)`, or `None` when the store
/// could not be asked.
pub(crate) async fn ensure_lease(
    shared: &Shared,
    wallet: &Arc<crate::money::WalletRt>,
    needed: i64,
) -> Option<bool> {
    let leases = shared.leases.get()?;
    if !wallet.lease_valid() || store_failed_lately(shared) {
        return None;
    }
    // One transaction at a time per wallet: the calls that found the
    // lease short together are served by the first one's, or refused
    // when it found the store with no more to grant.
    let seen = wallet.lease_round();
    let _gate = wallet.lease_gate.lock().await;
    let lease = wallet.lease();
    if lease >= needed {
        return Some(true);
    }
    if store_failed_lately(shared) {
        return None;
    }
    if wallet.dry_since(seen) {
        return Some(false);
    }
    let want = needed
        .saturating_mul(LEASE_AHEAD_CALLS)
        .max(needed.saturating_sub(lease));
    // A store that does not answer fails the call once the node stops
    // spending, not after the pool's patience.
    match while_in_touch(|| wallet.lease_valid(), leases.adjust(&wallet.team, want)).await {
        Some(Ok(granted)) => {
            wallet.add_lease(granted);
            wallet.lease_asked(granted < want);
            Some(wallet.lease() >= needed)
        }
        Some(Err(error)) => {
            tracing::warn!(team = %wallet.team, %error, "cannot lease more of a wallet");
            store_failed(shared)
        }
        None => {
            tracing::warn!(team = %wallet.team, "the store did not grant a lease in time");
            store_failed(shared)
        }
    }
}

/// [`admit_matched`], again once this node's lease of the wallet or grant
/// of a quota or budget has been topped up when it was short (many nodes;
/// a call may find each short in turn).
pub(crate) async fn admit_leasing<B: Sync>(
    shared: &Shared,
    context: &mut RequestContext,
    trace: &mut Trace,
    request: &Request<B>,
) -> Result<Admission, Refusal> {
    let mut rounds = 0;
    let started = tokio::time::Instant::now();
    loop {
        match admit_matched(shared, context, trace, request) {
            Err(refusal)
                if refusal.lease_short.is_some()
                    && rounds < LEASE_ROUNDS
                    && started.elapsed() < LEASE_WAIT =>
            {
                rounds += 1;
                lease_for(shared, refusal).await?;
            }
            Err(mut refusal) if refusal.lease_short.is_some() => {
                refusal.lease_short = None;
                return Err(refusal);
            }
            admitted => return admitted,
        }
    }
}

/// Phase 5 for the matched route: authenticate, authorize, limit, pay;
/// the rate-limit and warning headers are noted on the context.
pub(crate) fn admit_matched<B>(
    shared: &Shared,
    context: &mut RequestContext,
    trace: &mut Trace,
    request: &Request<B>,
) -> Result<Admission, Refusal> {
    let snapshot = context.snapshot.clone();
    let Some(route) = context.route.and_then(|index| snapshot.routes.get(index)) else {
        return Err(Refusal::new(Code::RouteNotFound, "No route matched."));
    };
    let env = crate::admit::AdmitEnv {
        peer: context.peer.addr.ip(),
        trusted_proxies: &shared.options.trusted_proxies,
        jwks: &shared.jwks,
        currency: &shared.options.currency,
        export_usage: shared.options.export_usage,
        public_url: &shared.options.public_url,
        x402_payable: shared.facilitator.get().is_some(),
    };
    let mut admission = crate::admit::admit(&snapshot, route, request, &env, &mut trace.who)?;
    context.rate_headers = admission.rate_headers.take();
    context.warning = admission.warning.take();
    context.paid_from = admission.paid_from.take();
    context.quota_state = admission.quota_state.take();
    Ok(admission)
}

/// A call paid with x402 (see `x402.rs`): verified before it is
/// forwarded, settled once the upstream has answered below 500.
async fn pay_per_request(
    shared: &Shared,
    context: &mut RequestContext,
    trace: &mut Trace,
    request: Request<RequestBody>,
    x402: Arc<crate::x402::X402Rt>,
) -> Result<Response<GatewayBody>, Refusal> {
    let resource_url = format!(
        "{}{}",
        shared.options.public_url,
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let admission = {
        let Some(route) = context.route() else {
            return Err(Refusal::new(Code::RouteNotFound, "No route matched."));
        };
        crate::admit::admit_paid(
            &context.snapshot,
            route,
            &request,
            (context.peer.addr.ip(), &shared.options.trusted_proxies),
            &mut trace.who,
        )?
    };
    let facilitator = shared.facilitator.get().map(|f| &**f);
    let pending = crate::x402::verify(
        &x402,
        facilitator,
        (&shared.x402_used, shared.x402_claims.get()),
        &request,
        &resource_url,
    )
    .await?;
    context.rate_headers = None;
    let response = Box::pin(forward(shared, context, trace, request, admission)).await?;
    if response.status().as_u16() >= 500 {
        // Not settled: the payer keeps its money and its payload.
        return Ok(response);
    }
    crate::x402::settle(pending, facilitator, &x402, &resource_url, response).await
}

/// `POST /_tollgate/webhooks/<name>`: hands the body to the binary's hook.
/// A refusal of the hook's is a problem like every refusal (SPEC §4): its
/// `code` and `detail` with this request's id, never cached.
async fn hook(
    shared: &Shared,
    name: &str,
    request: Request<RequestBody>,
    request_id: &HeaderValue,
) -> Result<Response<GatewayBody>, Refusal> {
    let hook = shared
        .hooks
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned();
    let Some(hook) = hook else {
        return Err(Refusal::new(
            Code::RouteNotFound,
            format!("No webhook endpoint '{name}' is configured."),
        ));
    };
    if request.method() != Method::POST {
        let mut refusal = Refusal::new(Code::MethodNotAllowed, "Webhook endpoints take POST only.");
        refusal.allow = Some("POST".to_owned());
        return Err(refusal);
    }
    let (parts, body) = request.into_parts();
    let body = read_body(shared, body, crate::HOOK_BODY_LIMIT, || {
        format!(
            "Webhook bodies are limited to {} bytes.",
            crate::HOOK_BODY_LIMIT
        )
    })
    .await?;
    let (status, text) = hook.call(parts.headers, body).await;
    let refused = status.is_client_error() || status.is_server_error();
    let text = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(mut problem)) if refused => {
            problem
                .entry("type")
                .or_insert_with(|| "about:blank".into());
            problem.insert(
                "request_id".into(),
                request_id.to_str().unwrap_or_default().into(),
            );
            serde_json::Value::Object(problem).to_string()
        }
        _ => text,
    };
    let mut response = Response::new(GatewayBody::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if refused {
            "application/problem+json"
        } else {
            "application/json"
        }),
    );
    if refused {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(response)
}

/// `/_tollgate/…`: the gateway's own endpoints.
/// Charges a call the upstream answered below 500 (phase 8); returns the
/// wallet's balance after it.
async fn settle(
    shared: &Shared,
    context: &RequestContext,
    trace: &mut Trace,
    held: crate::money::Reservation,
    status: u16,
) -> i64 {
    let sink = shared.charges.get();
    let outcome = crate::money::Outcome {
        status,
        latency_ms: u64::try_from(context.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        tokens: None,
    };
    if shared.options.strict_charges {
        // Sets the cost only once the charge is taken: a caller gone while
        // it waited is not charged.
        Box::pin(held.settle_durably(sink, &context.request_id, outcome, &mut trace.cost_nanos))
            .await
    } else {
        trace.cost_nanos = held.amount();
        held.settle(sink, &context.request_id, outcome)
    }
}

fn reserved(shared: &Shared, rest: &str) -> Option<Response<GatewayBody>> {
    use std::sync::atomic::Ordering;
    let (status, body) = match rest {
        "health" => (StatusCode::OK, serde_json::json!({"status": "ok"})),
        "ready" => {
            let config_loaded = shared.config_loaded.load(Ordering::Acquire);
            let store_reachable = shared.store_reachable.load(Ordering::Relaxed);
            let ready = config_loaded && store_reachable;
            (
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                {
                    let mut body = serde_json::json!({
                        "status": if ready { "ready" } else { "not_ready" },
                        "config_loaded": config_loaded,
                        "config_version": shared.snapshot.load().version,
                        "store_reachable": store_reachable,
                    });
                    // With Redis: still ready without it (limits then hold
                    // per node), but said so (SPEC §12).
                    match shared.counters_state.load(Ordering::Relaxed) {
                        1 => body["shared_counters"] = "ok".into(),
                        2 => body["shared_counters"] = "unreachable: rate limits per node".into(),
                        _ => {}
                    }
                    body
                },
            )
        }
        _ => return None,
    };
    let mut response = Response::new(GatewayBody::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(response)
}

fn match_route(
    context: &mut RequestContext,
    request: &Request<RequestBody>,
) -> Result<(), Refusal> {
    let host = host_of(&context.snapshot, request);
    let path = request.uri().path();
    match context
        .snapshot
        .router
        .find(host.as_deref(), path, request.method())
    {
        Match::Found(index) => {
            context.route = Some(index);
            Ok(())
        }
        Match::MethodNotAllowed(allowed, route) => {
            // The service is known: its team sees the refusal in its log.
            context.route = Some(route);
            let allow = allow_header(allowed);
            let mut refusal = Refusal::new(
                Code::MethodNotAllowed,
                format!(
                    "{} is not allowed on {path}; use one of: {allow}.",
                    request.method()
                ),
            );
            refusal.allow = Some(allow);
            Err(refusal)
        }
        Match::NotFound => Err(Refusal::new(
            Code::RouteNotFound,
            format!(
                "No published API serves {} {path}. Check the path against the service's documentation.",
                request.method()
            ),
        )),
    }
}

pub(crate) fn check_lifecycle(context: &RequestContext) -> Result<(), Refusal> {
    let Some(route) = context.route() else {
        return Ok(());
    };
    if route.service.lifecycle == Lifecycle::Retired {
        return Err(Refusal::new(
            Code::ServiceRetired,
            format!(
                "{} has been retired and no longer answers. Move to its successor.",
                route.service.named()
            ),
        ));
    }
    Ok(())
}

fn check_body_size(
    context: &RequestContext,
    request: &Request<RequestBody>,
) -> Result<(), Refusal> {
    let Some(route) = context.route() else {
        return Ok(());
    };
    if let Some(length) = content_length(request.headers())
        && length > route.body_limit_bytes
    {
        return Err(body_too_large(route.body_limit_bytes));
    }
    Ok(())
}

fn body_too_large(limit: u64) -> Refusal {
    Refusal::new(
        Code::BodyTooLarge,
        format!(
            "The request body is larger than this route accepts ({limit} bytes). Send a smaller body."
        ),
    )
}

/// The request body as the tries will send it.
enum Outgoing {
    /// Empty or buffered: can be sent again.
    Replayable(Option<bytes::Bytes>),
    /// Streamed: one try only.
    Stream(Option<LimitedBody>),
}

async fn forward(
    shared: &Shared,
    context: &RequestContext,
    trace: &mut Trace,
    request: Request<RequestBody>,
    admission: Admission,
) -> Result<Response<GatewayBody>, Refusal> {
    let Some(route) = context.route() else {
        return Err(Refusal::new(Code::RouteNotFound, "No route matched."));
    };
    let service = &route.service;
    let Some(upstream) = service.upstream.as_ref() else {
        return Err(Refusal::new(
            Code::NoHealthyUpstream,
            format!(
                "{} has no usable upstream: none is configured, or its configuration could not be loaded. Its team can check it in the admin API.",
                service.named()
            ),
        ));
    };
    // A write makes stale what a `GET` of its URI would be answered with
    // from the cache, whichever route that `GET` takes (RFC 9111 §4.4).
    let read_route =
        (context.snapshot.cached_routes && shared.cache.enabled() && is_unsafe(request.method()))
            .then(|| {
                let host = host_of(&context.snapshot, &request);
                match context.snapshot.router.find(
                    host.as_deref(),
                    request.uri().path(),
                    &Method::GET,
                ) {
                    Match::Found(index) => context.snapshot.routes.get(index),
                    _ => None,
                }
            })
            .flatten();
    let (parts, body) = request.into_parts();
    let written = read_route.and_then(|read| {
        let rule = read.cache.as_ref()?;
        let app = trace.who.app.as_ref().map(|app| app.id.as_str());
        Some(Plan::Invalidate(crate::cache::key(rule, app, &parts)))
    });
    // The route's response cache: keyed by the request as sent, looked up
    // once its headers are as the upstream would see them.
    let cache_plan = written.or_else(|| {
        route.cache.as_ref().map(|rule| {
            // The caller's own `Authorization` (not the gateway's credential)
            // would reach the upstream: its answer is the caller's alone.
            let forwards_authorization = admission.strip & strip::AUTHORIZATION == 0
                && parts.headers.contains_key(header::AUTHORIZATION);
            let app = trace.who.app.as_ref().map(|app| app.id.as_str());
            let has_body = !http_body::Body::is_end_stream(&body);
            shared
                .cache
                .plan(rule, app, &parts, forwards_authorization, has_body)
        })
    });
    let mut deadline = context.started + route.timeout;
    let method_bit = method_bit(&parts.method);
    let retry = &route.retry;
    let may_retry = retry.retries > 0 && retry.methods & method_bit != 0;
    // Any method may be tried again when its try never reached the
    // upstream (no connection could be made): nothing was done twice.
    let may_reconnect = retry.retries > 0;

    if let Some(spec) = &service.log_bodies
        && crate::calls::enabled()
    {
        trace.capture = Some(Box::new(crate::calls::Capture::new(spec, &parts.headers)));
    }
    let tap = trace.capture.as_ref().map(|capture| capture.tap());
    // A streamed body's progress: whether a try that timed out was waiting
    // for the client's bytes (408) or for the upstream (504).
    let mut progress = None;
    let mut outgoing = if http_body::Body::is_end_stream(&body) {
        Outgoing::Replayable(None)
    } else {
        let limited = LimitedBody::new(body, route.body_limit_bytes).tapped(tap);
        match content_length(&parts.headers) {
            Some(length) if may_reconnect && length <= shared.options.retry_buffer_bytes => {
                // Boxed: keeps the request future small. Read as long as
                // it keeps coming; the route's budget starts once it has
                // all arrived, as for a streamed body.
                let bytes = Box::pin(limited.collect_while_coming(shared.options.body_timeout))
                    .await
                    .map_err(|error| body_error(&*error, route))?;
                deadline = Instant::now() + route.timeout;
                Outgoing::Replayable(Some(bytes))
            }
            _ => {
                let watch = Arc::new(BodyProgress::default());
                progress = Some(watch.clone());
                Outgoing::Stream(Some(limited.watched(watch)))
            }
        }
    };
    // A WebSocket upgrade: the upstream is asked for it, and a `101` turns
    // the connection into a tunnel. One try: the upstream may have acted
    // on it. No other protocol: `h2c` above all would give the client a
    // connection straight to the upstream on which its next requests skip
    // routing, admission and limits (h2c smuggling). Such a request is
    // served as a plain one, its `Upgrade` dropped.
    let upgrade = (parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && crate::h1::has_token(&parts.headers, &header::CONNECTION, "upgrade")
        && crate::h1::has_token(&parts.headers, &header::UPGRADE, "websocket"))
    .then(|| parts.headers.get(header::UPGRADE).cloned())
    .flatten();
    let tries = if upgrade.is_none() && may_reconnect && matches!(outgoing, Outgoing::Replayable(_))
    {
        retry.retries + 1
    } else {
        1
    };

    let mut headers = parts.headers;
    let original_host = headers.remove(header::HOST).or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let te_trailers = strip_hop_by_hop(&mut headers);
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    if admission.strip & strip::AUTHORIZATION != 0 {
        headers.remove(header::AUTHORIZATION);
    }
    if admission.strip & strip::X_API_KEY != 0 {
        headers.remove(&X_API_KEY);
    }
    if admission.strip & strip::PAYMENT != 0 {
        headers.remove(&crate::x402::PAYMENT_SIGNATURE);
    }
    // Clients rarely send these; one pass over the names finds that
    // without hashing each of them.
    if headers
        .keys()
        .any(|name| name.as_str().starts_with("tollgate-"))
    {
        for name in &IDENTITY {
            headers.remove(name);
        }
    }
    if let Some(identity) = admission.identity {
        for (name, value) in IDENTITY.iter().zip(identity) {
            headers.insert(name.clone(), value);
        }
    }
    let query_without_key;
    let query_rewrite = if admission.strip & strip::QUERY_KEY != 0 {
        let mut rewrite = route.query.clone().unwrap_or_default();
        rewrite.drop.push("api_key".to_owned());
        query_without_key = rewrite;
        Some(&query_without_key)
    } else {
        route.query.as_ref()
    };
    let mut permits = Some(admission.permits);
    let mut reservation = admission.reservation;
    // The client as the trusted proxies name it, for consistent hashing
    // (found only when the balancer reads it: an allocation otherwise
    // spent on every request); without trusted proxies, the peer.
    let trusted = &shared.options.trusted_proxies;
    let forwarded_client = (!trusted.is_empty() && upstream.reads_client_ip())
        .then(|| crate::access::client_ip(context.peer.addr.ip(), &headers, trusted).to_string());
    append_forwarded(&mut headers, &context.peer.ip_header, original_host);
    headers.insert(X_REQUEST_ID.clone(), context.request_id.clone());
    if let Some(ids) = &trace.ids
        && let Ok(value) = HeaderValue::from_str(&ids.traceparent())
    {
        // This call's span is the upstream's parent.
        headers.insert(TRACEPARENT.clone(), value);
    }
    route.request_headers.apply(&mut headers);

    // A fresh answer is served from the cache, the upstream not asked.
    let mut invalidate = None;
    let mut cache_miss = match cache_plan {
        None => None,
        Some(Plan::Look(mut key)) => {
            let get = parts.method == Method::GET;
            // A miss while another request fetches the key waits for its
            // answer, up to COALESCE_WAIT.
            let waited_until = Instant::now() + crate::cache::COALESCE_WAIT;
            loop {
                let now = Instant::now();
                match shared
                    .cache
                    .lookup(key, &headers, get, now, now < waited_until)
                {
                    Lookup::Hit(entry) => {
                        drop(permits.take());
                        return Ok(Box::pin(serve_cached(
                            shared,
                            context,
                            trace,
                            route,
                            &entry,
                            !get,
                            reservation.take(),
                            now,
                        ))
                        .await);
                    }
                    // Only a `GET` brings a body to keep.
                    Lookup::Miss {
                        key,
                        why,
                        since,
                        lock,
                    } => break Some((get.then(|| (key, headers.clone(), since, lock)), why)),
                    Lookup::Wait {
                        key: again,
                        mut done,
                    } => {
                        key = again;
                        let _ = tokio::time::timeout_at(waited_until.into(), done.changed()).await;
                    }
                }
            }
        }
        Some(Plan::Invalidate(key)) => {
            invalidate = Some(key);
            Some((None, "bypass"))
        }
        Some(Plan::Bypass) => Some((None, "bypass")),
    };

    let per_try_limit = retry
        .per_try_timeout
        .unwrap_or(Duration::from_millis(upstream.spec.read_timeout_ms));
    let read_timeout = Duration::from_millis(upstream.spec.read_timeout_ms);
    let mut tried_mask: u64 = 0;
    let mut last_refusal = None;
    // An HTTP/1.1 client gets the upstream's interim answers (1xx); an
    // HTTP/1.0 one may not (RFC 9110 §15.2), and the HTTP/2 server has no
    // way to send them.
    let interim_to = (parts.version == Version::HTTP_11
        && parts.extensions.get::<Internal>().is_none())
    .then_some(&context.peer.interim);

    for attempt in 0..tries {
        if attempt > 0 && !retry.backoff.is_zero() {
            tokio::time::sleep(
                retry
                    .backoff
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        let try_started = Instant::now();
        let remaining = deadline.saturating_duration_since(try_started);
        if remaining.is_zero() {
            return Err(timeout_refusal(service.slug.as_str(), route.timeout));
        }
        let pick = upstream.pick(&PickInput {
            client_ip: forwarded_client
                .as_deref()
                .map_or(context.peer.ip_header.as_bytes(), str::as_bytes),
            headers: &headers,
            tried: tried_mask,
        });
        let Some(index) = pick else {
            return Err(last_refusal.unwrap_or_else(|| no_target(upstream, &service.slug)));
        };
        if index < 64 {
            tried_mask |= 1 << index;
        }
        let target = &upstream.targets[index];
        let last_try = attempt + 1 == tries;
        // `Host` goes in before the copy: a clone has no room to spare, so
        // an insert into it would grow (and copy) its entries again.
        headers.insert(header::HOST, target.host_header.clone());
        let try_headers = if last_try {
            std::mem::take(&mut headers)
        } else {
            let copy = headers.clone();
            // The next try picks its target without this one's `Host`.
            headers.remove(header::HOST);
            copy
        };
        let try_body = match &mut outgoing {
            Outgoing::Replayable(None) => UpstreamRequestBody::Empty,
            Outgoing::Replayable(Some(bytes)) => UpstreamRequestBody::Full(Some(bytes.clone())),
            Outgoing::Stream(body) => match body.take() {
                Some(body) => UpstreamRequestBody::Stream(body),
                None => UpstreamRequestBody::Empty,
            },
        };
        // Origin form (`/path?query`); the client adds scheme and authority
        // where the protocol needs them (HTTP/2).
        let uri = upstream_uri(
            &target.base_path,
            &parts.uri,
            route.strip_len,
            query_rewrite,
        )
        .map_err(|_| Refusal::new(Code::BadRequest, "The request path cannot be forwarded."))?;
        let mut upstream_request = Request::new(try_body);
        *upstream_request.method_mut() = parts.method.clone();
        *upstream_request.uri_mut() = uri;
        *upstream_request.headers_mut() = try_headers;
        if te_trailers {
            upstream_request
                .extensions_mut()
                .insert(crate::client::TeTrailers);
        }

        let in_flight = upstream
            .tracks_in_flight()
            .then(|| InFlight::start(&target.state));
        trace.trying = Some((index, try_started));
        // `timeout_at`: the try's end from the clock read above, no second read.
        let try_timeout = per_try_limit.min(remaining);
        // Pinned here and lent to either wait: one copy of the send future
        // in this one's state, not one per way of waiting for it.
        let send =
            crate::client::send_raw(&upstream.connector, target, upstream_request, interim_to);
        tokio::pin!(send);
        let result = match &progress {
            // A streamed body: the wait for the answer starts once it has
            // all arrived (nginx's and Envoy's timeouts alike).
            Some(progress) => {
                uploading(
                    send.as_mut(),
                    progress,
                    try_timeout,
                    shared.options.body_timeout,
                )
                .await
            }
            None => tokio::time::timeout_at((try_started + try_timeout).into(), send.as_mut())
                .await
                .map_err(|_| Waited::ForUpstream),
        };
        let latency = try_started.elapsed();
        trace.target = Some((index, latency));
        match result {
            Ok(Ok(mut response)) => {
                let status = response.status().as_u16();
                let failed = upstream.is_failure_status(status);
                upstream.record(
                    index,
                    if failed {
                        Outcome::Failure {
                            latency: Some(latency),
                        }
                    } else {
                        Outcome::Success { latency }
                    },
                );
                if !last_try && may_retry && retry.on_statuses.contains(&status) {
                    last_refusal = Some(Refusal::new(
                        Code::UpstreamError,
                        format!(
                            "The upstream of '{}' answered {status} on every try.",
                            service.slug
                        ),
                    ));
                    continue;
                }
                // The head stays raw unless something here reads or
                // removes the upstream's headers.
                if status == 204
                    || !route.response_headers.is_empty()
                    || trace.capture.is_some()
                    || cache_miss.is_some()
                {
                    crate::body::materialize(&mut response);
                }
                let (mut response_parts, incoming) = response.into_parts();
                let switched = (status == 101)
                    .then(|| response_parts.headers.get(header::UPGRADE).cloned())
                    .flatten();
                strip_hop_by_hop(&mut response_parts.headers);
                if let Some(protocol) = switched {
                    // The tunnel's own head (the server splices after it).
                    response_parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    response_parts.headers.insert(header::UPGRADE, protocol);
                }
                if status == 204 {
                    // RFC 9110 §8.6: a 204 has no body and no length.
                    response_parts.headers.remove(header::CONTENT_LENGTH);
                }
                if let Some(key) = invalidate.take()
                    && (200..400).contains(&status)
                {
                    shared.cache.remove(&key);
                }
                let mut fill = None;
                if let (Some((keep, why)), Some(rule)) = (cache_miss.take(), &route.cache) {
                    if let Some((key, request_headers, since, lock)) = keep
                        && status != 101
                    {
                        fill = shared
                            .cache
                            .fill(
                                rule,
                                key,
                                &request_headers,
                                response_parts.status,
                                &response_parts.headers,
                                Instant::now(),
                            )
                            .map(|mut fill| {
                                fill.since = Some(since);
                                fill.lock = lock;
                                fill
                            });
                    }
                    // `stored` only when sure: a body of unknown length
                    // may yet outgrow the cache.
                    let sure = fill.is_some()
                        && (status == 204 || content_length(&response_parts.headers).is_some());
                    crate::cache::add_cache_status(
                        &mut response_parts.headers,
                        forward_status(why, sure),
                    );
                }
                // Phase 8: a call the upstream answered below 500 is
                // charged; otherwise the reservation is given back. Either
                // way the caller learns the balance (a `Tollgate-Warning`
                // about it may be on the response).
                if let Some(held) = reservation.take() {
                    let left = if status < 500 {
                        settle(shared, context, trace, held, status).await
                    } else {
                        let wallet = held.wallet().clone();
                        drop(held);
                        wallet.available()
                    };
                    if let Ok(value) = balance_header(left, &shared.options.currency) {
                        response_parts
                            .headers
                            .insert(TOLLGATE_BALANCE.clone(), value);
                    }
                }
                route.response_headers.apply(&mut response_parts.headers);
                if let Some(capture) = trace.capture.as_mut() {
                    capture.response_headers = crate::calls::header_lines(&response_parts.headers);
                }
                response_parts.version = Version::HTTP_11;
                let body = GatewayBody::Upstream(
                    UpstreamResponseBody::new(incoming, in_flight, read_timeout)
                        .with_permits(permits.take().unwrap_or_default())
                        .filling(fill),
                );
                return Ok(Response::from_parts(response_parts, body));
            }
            Ok(Err(error)) => {
                if let Some(too_large) = find_cause::<BodyTooLarge>(&error) {
                    return Err(body_too_large(too_large.limit));
                }
                if let Some(client) = find_cause::<ClientBodyError>(&error) {
                    // The client's fault: the target is not blamed (no
                    // failure counted, nothing ejected), nor retried.
                    return Err(Refusal::new(
                        Code::BadRequest,
                        format!("The request was not forwarded whole: {client}."),
                    ));
                }
                upstream.record(index, Outcome::Failure { latency: None });
                tracing::debug!(upstream = %upstream.spec.slug, target_url = %target.url, %error, "upstream try failed");
                let refusal =
                    connection_refusal(&error, &service.slug, upstream.spec.connect_timeout_ms);
                // An answer that came but cannot be passed on is not
                // tried again: the upstream acted on the call and would
                // answer alike (its status is not a listed one to retry).
                if last_try || error.is_unusable_answer() || !(may_retry || error.is_connect()) {
                    return Err(refusal);
                }
                last_refusal = Some(refusal);
            }
            Err(waited) => {
                if waited == Waited::ForClient {
                    // The client stopped sending its body: the upstream
                    // was waiting for it too, and is not blamed.
                    return Err(body_stalled(shared.options.body_timeout));
                }
                upstream.record(
                    index,
                    Outcome::Failure {
                        latency: Some(latency),
                    },
                );
                if last_try || !may_retry || try_timeout >= remaining {
                    return Err(if try_timeout >= remaining {
                        timeout_refusal(&service.slug, route.timeout)
                    } else {
                        Refusal::new(
                            Code::UpstreamTimeout,
                            format!(
                                "The upstream of '{}' did not answer within {} ms.",
                                service.slug,
                                try_timeout.as_millis()
                            ),
                        )
                    });
                }
                last_refusal = Some(Refusal::new(
                    Code::UpstreamTimeout,
                    format!(
                        "The upstream of '{}' did not answer in time on any try.",
                        service.slug
                    ),
                ));
            }
        }
    }
    Err(last_refusal.unwrap_or_else(|| Refusal::new(Code::UpstreamError, "No try was made.")))
}

/// A call answered from the route's response cache: charged and limited
/// as any other (its reservation settled with the stored status), its
/// log naming `cache` as the target.
#[allow(clippy::too_many_arguments)]
async fn serve_cached(
    shared: &Shared,
    context: &RequestContext,
    trace: &mut Trace,
    route: &RouteRt,
    entry: &Entry,
    head: bool,
    reservation: Option<crate::money::Reservation>,
    now: Instant,
) -> Response<GatewayBody> {
    trace.cache_hit = true;
    let body = if head || entry.body.is_empty() {
        GatewayBody::empty()
    } else {
        GatewayBody::Full(Some(entry.body.clone()))
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    let headers = response.headers_mut();
    *headers = entry.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(entry.age(now)));
    crate::cache::add_cache_status(headers, crate::cache::hit_status(entry, now));
    if let Some(held) = reservation {
        let left = settle(shared, context, trace, held, entry.status.as_u16()).await;
        if let Ok(value) = balance_header(left, &shared.options.currency) {
            headers.insert(TOLLGATE_BALANCE.clone(), value);
        }
    }
    route.response_headers.apply(headers);
    response
}

/// The methods whose success makes a cached answer to their target stale.
fn is_unsafe(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// `Tollgate-Balance`: what the wallet has left, in the currency.
fn balance_header(
    left: i64,
    currency: &str,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut balance = String::with_capacity(32);
    domain::money::format_into(&mut balance, left);
    balance.push(' ');
    balance.push_str(currency);
    HeaderValue::try_from(balance)
}

/// `request` with its path replaced by `path` (its query kept).
fn with_path(
    mut request: Request<RequestBody>,
    path: &str,
) -> Result<Request<RequestBody>, Refusal> {
    let uri = request.uri();
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    let unreadable = || Refusal::new(Code::BadRequest, "The request path cannot be read.");
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| unreadable())?);
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| unreadable())?;
    Ok(request)
}

/// No target to send a call to: the circuit is open (every target that
/// would serve was ejected after failures: 503 `circuit_open` with the
/// time until the first comes back), or they are down or drained.
fn no_target(upstream: &crate::upstream::UpstreamRt, service: &str) -> Refusal {
    if let Some(wait) = upstream.circuit_open_for() {
        let seconds = wait.as_millis().div_ceil(1000).max(1);
        return Refusal::new(
            Code::CircuitOpen,
            format!(
                "The backend of '{service}' failed several calls in a row, so the gateway sends it none for {seconds} s to let it recover. Retry after that (Retry-After); you were not charged."
            ),
        )
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from(u64::try_from(seconds).unwrap_or(u64::MAX)),
        );
    }
    Refusal::new(
        Code::NoHealthyUpstream,
        format!(
            "Every target of the service '{service}' is down (failing its health checks) or drained. Try again shortly."
        ),
    )
}

/// What a try gave up waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// The client's next bytes of its body.
    ForClient,
    /// The upstream: its answer, or its reading of the body.
    ForUpstream,
}

/// A try whose request body is streamed: while the body arrives, the try
/// ends only when nothing more of it comes for `idle` (the client's fault
/// when it was waiting for the client; the upstream's when it stopped
/// reading); once the body has all arrived, the upstream has `answer_within`
/// to answer.
async fn uploading<F: std::future::Future>(
    send: F,
    progress: &BodyProgress,
    answer_within: Duration,
    idle: Duration,
) -> Result<F::Output, Waited> {
    let deadline = || {
        if progress.ended() {
            progress.last_progress() + answer_within
        } else {
            progress.last_progress() + idle
        }
    };
    tokio::pin!(send);
    loop {
        let until = deadline();
        match tokio::time::timeout_at(until.into(), send.as_mut()).await {
            Ok(output) => return Ok(output),
            // Bytes came (or the body ended) meanwhile: a later deadline.
            Err(_) if deadline() > until => {}
            Err(_) if progress.ended() => return Err(Waited::ForUpstream),
            Err(_) if progress.waiting_for_client() => return Err(Waited::ForClient),
            Err(_) => return Err(Waited::ForUpstream),
        }
    }
}

fn timeout_refusal(service: &str, total: Duration) -> Refusal {
    Refusal::new(
        Code::UpstreamTimeout,
        format!(
            "The upstream of '{service}' did not answer within the route's {} ms budget.",
            total.as_millis()
        ),
    )
}

/// A refusal made before the pipeline could read the request (a head
/// that is not valid HTTP, too large, of ambiguous length): answered and
/// logged like any refusal (SPEC §2: refused calls included), under the
/// method and path when they could be read, else `-` and `*`.
pub(crate) fn unrouted_refusal(
    refusal: Refusal,
    shared: &Shared,
    peer: std::net::IpAddr,
    read: Option<(&Method, &Uri)>,
) -> Response<GatewayBody> {
    let request_id = new_request_id();
    let code = refusal.code;
    let mut response = refusal.into_response(&request_id, &shared.options.public_url);
    if crate::calls::enabled() {
        let unread = (
            Method::from_bytes(b"-").unwrap_or_default(),
            Uri::from_static("*"),
        );
        let (method, uri) = read.unwrap_or((&unread.0, &unread.1));
        let mut record = crate::calls::CallRecord::start(
            &request_id,
            method,
            uri,
            None,
            peer,
            shared.local_snapshot(),
            Instant::now(),
        );
        record.request_id_minted = true;
        record.status = response.status().as_u16();
        record.code = Some(code);
        if let GatewayBody::Full(data) = response.body() {
            record.bytes_out = data.as_ref().map_or(0, |d| d.len() as u64);
            record.problem = data.clone();
        }
        record.completed = true;
        record.finish();
    }
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    response
}

/// The client's body stopped arriving before the call's time was up.
pub(crate) fn body_stalled(waited: Duration) -> Refusal {
    Refusal::new(
        Code::RequestTimeout,
        format!(
            "The request body stopped arriving: nothing more of it came within {} ms, so the call was not completed. Send the whole body as soon as the request head is sent.",
            waited.as_millis()
        ),
    )
}

fn body_error(error: &(dyn std::error::Error + 'static), route: &RouteRt) -> Refusal {
    if error.downcast_ref::<BodyTooLarge>().is_some() {
        body_too_large(route.body_limit_bytes)
    } else {
        unreadable_body(error)
    }
}

/// A request body read whole (an AI request, prompt variables, a
/// webhook): 413 with `too_large`'s detail past `limit`, 408 when it
/// stops arriving, 400 when it breaks.
pub(crate) async fn read_body(
    shared: &Shared,
    body: RequestBody,
    limit: u64,
    too_large: impl FnOnce() -> String,
) -> Result<bytes::Bytes, Refusal> {
    LimitedBody::new(body, limit)
        .collect_by(Instant::now() + shared.options.body_timeout)
        .await
        .map_err(|error| {
            if error.downcast_ref::<BodyTooLarge>().is_some() {
                Refusal::new(Code::BodyTooLarge, too_large())
            } else {
                unreadable_body(&*error)
            }
        })
}

/// A body that could not be read whole, for a reason of the client's.
pub(crate) fn unreadable_body(error: &(dyn std::error::Error + 'static)) -> Refusal {
    if let Some(stalled) = error.downcast_ref::<BodyStalled>() {
        body_stalled(stalled.0)
    } else if let Some(client) = error.downcast_ref::<ClientBodyError>() {
        Refusal::new(Code::BadRequest, format!("The {client}."))
    } else {
        Refusal::new(Code::BadRequest, "The request body could not be read.")
    }
}

fn find_cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// A failed try, as the caller should hear of it: a connect timeout is a
/// timeout (504, as nginx), anything else a bad gateway (502).
pub(crate) fn connection_refusal(
    error: &SendError,
    service: &str,
    connect_timeout_ms: u64,
) -> Refusal {
    let timed_out = matches!(error, SendError::ConnectTimeout)
        || matches!(error, SendError::Connect(e) if e.kind() == std::io::ErrorKind::TimedOut);
    if timed_out {
        Refusal::new(
            Code::UpstreamTimeout,
            format!(
                "The upstream of '{service}' did not accept a connection within {connect_timeout_ms} ms. Try again; if it persists, tell the provider."
            ),
        )
    } else {
        use crate::h1::HeadError;
        use crate::h1::client::ExchangeError;
        let exchange = match error {
            SendError::Http1(ExchangeError::Stale { inner }) => Some(&**inner),
            SendError::Http1(inner) => Some(inner),
            _ => None,
        };
        // An answer that came but cannot be passed on names what was wrong
        // with it (as nginx's "upstream sent too big header" does).
        let unusable = match exchange {
            Some(ExchangeError::Head(HeadError::TooLarge)) => {
                Some("its response head is larger than 64 KiB or 128 fields")
            }
            Some(ExchangeError::Head(HeadError::BadLength)) => {
                Some("its response gives a conflicting or invalid body length")
            }
            Some(ExchangeError::Head(HeadError::Malformed)) => {
                Some("its response is not valid HTTP/1.1")
            }
            Some(ExchangeError::Upgrade) => {
                Some("it answered 101 Switching Protocols to a request that asked for no upgrade")
            }
            Some(ExchangeError::Coding) => Some(
                "its response body uses a transfer coding other than one chunked (gzip, or chunked twice), which the gateway does not decode; send the body plain or chunked once, with any compression in Content-Encoding",
            ),
            _ => None,
        };
        if let Some(what) = unusable {
            return Refusal::new(
                Code::UpstreamError,
                format!(
                    "The upstream of '{service}' sent an answer the gateway cannot pass on: {what}. Tell the provider."
                ),
            );
        }
        let what = match error {
            SendError::Connect(_) => "connection failed",
            SendError::Tls(_) => "TLS handshake failed",
            SendError::Handshake(_) => "HTTP handshake failed",
            _ => "connection closed before a response",
        };
        Refusal::new(
            Code::UpstreamError,
            format!(
                "The upstream of '{service}' could not be reached or broke the connection ({what}). Try again; if it persists, tell the provider."
            ),
        )
    }
}

/// The origin-form URI sent upstream: the target's base path, then the
/// request's path less the stripped base path, then the query. Built in one
/// buffer that the `Uri` takes over without copying.
fn upstream_uri(
    target_base: &str,
    uri: &Uri,
    strip_len: usize,
    query_rewrite: Option<&crate::snapshot::QueryRewrite>,
) -> Result<Uri, http::uri::InvalidUri> {
    let path = uri.path();
    let rest = path.get(strip_len..).unwrap_or("");
    let rest = if rest.is_empty() { "/" } else { rest };
    let query = uri.query();
    let mut buffer =
        String::with_capacity(target_base.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    buffer.push_str(target_base);
    buffer.push_str(rest);
    match query_rewrite {
        Some(rewrite) => rewrite.apply(query, &mut buffer),
        None => {
            if let Some(query) = query {
                buffer.push('?');
                buffer.push_str(query);
            }
        }
    }
    Uri::from_maybe_shared(bytes::Bytes::from(buffer))
}

/// The request's host, lower-case and without port; `None` when no route
/// is bound to a host (the common case costs nothing).
fn host_of(snapshot: &Snapshot, request: &Request<RequestBody>) -> Option<String> {
    if !snapshot.router.has_hosts() {
        return None;
    }
    let raw = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().host())?;
    let host = match raw.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => raw.split(':').next().unwrap_or(raw),
    };
    // `api.example.com.` (fully qualified) is the same host.
    let host = host.strip_suffix('.').unwrap_or(host);
    Some(host.to_ascii_lowercase())
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    crate::h1::is_hop_by_hop_name(name.as_str().as_bytes())
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those that
/// `Connection` names. Most messages have none: one pass over the names
/// finds that without hashing. Returns whether `TE` accepted trailers (a
/// gRPC client's `te: trailers`, which an HTTP/2 upstream gets again).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let Some(first) = headers.keys().find(|name| is_hop_by_hop(name)).cloned() else {
        return false;
    };
    let te_trailers = headers.get_all(header::TE).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',').any(|part| {
                part.split(';')
                    .next()
                    .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("trailers"))
            })
        })
    });
    // `Connection` may name more headers to drop; `keep-alive` and `close`
    // (the usual values) name none worth a lookup.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("keep-alive") && !token.eq_ignore_ascii_case("close")
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // One by one, without gathering them: there is usually one
    // (`Connection`), and a list would be an allocation per request.
    let mut next = Some(first);
    while let Some(name) = next {
        headers.remove(&name);
        next = headers.keys().find(|name| is_hop_by_hop(name)).cloned();
    }
    te_trailers
}

fn append_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    original_host: Option<HeaderValue>,
) {
    // Every `X-Forwarded-For` line the client sent, in order (RFC 9110
    // §5.3: repeated lines are one comma-separated list), then the client.
    let mut previous = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let value = if previous.peek().is_none() {
        client_ip.clone()
    } else {
        let mut joined = Vec::with_capacity(64);
        for line in previous {
            joined.extend_from_slice(line.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(client_ip.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// The client's `X-Request-Id` when well-formed (1–128 of `[A-Za-z0-9._:-]`),
/// else a new one ([`new_request_id`]); and whether it is new (minted here
/// for this request alone).
fn request_id_of(headers: &HeaderMap) -> (HeaderValue, bool) {
    if let Some(value) = headers.get(&X_REQUEST_ID)
        && domain::calls::acceptable_request_id(value.as_bytes())
    {
        return (value.clone(), false);
    }
    (new_request_id(), true)
}

/// A new request id: a UUID v7, built without the `uuid` crate's global
/// context lock.
pub(crate) fn new_request_id() -> HeaderValue {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = id.hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn request_ids() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(
            request_id_of(&headers),
            ("abc-123".try_into().unwrap(), false)
        );
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id!"));
        let (generated, minted) = request_id_of(&headers);
        assert!(minted);
        assert_eq!(generated.len(), 36);
        assert!(domain::id::looks_like_id(generated.to_str().unwrap()));
    }

    #[test]
    fn the_send_future_stays_small() {
        // Every request moves this future a few times; the connect path is
        // boxed so that it stays small.
        fn size_of_send() -> usize {
            let connector = crate::client::Connector {
                connect_timeout: Duration::from_secs(1),
                protocol: domain::model::UpstreamProtocol::Auto,
                tls: Arc::new(
                    crate::tls::client_config(
                        &Default::default(),
                        domain::model::UpstreamProtocol::Auto,
                    )
                    .unwrap(),
                ),
                server_name: None,
                generation: 0,
            };
            let registry = crate::upstream::Registry::new(1);
            let upstream: domain::model::Upstream = serde_json::from_value(serde_json::json!({
                "slug": "x", "targets": [{"url": "http://127.0.0.1:1"}]
            }))
            .map(
                |spec: domain::model::UpstreamSpec| domain::model::Upstream {
                    id: "x".into(),
                    spec,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                },
            )
            .unwrap();
            let compiled = registry.compile(&upstream).unwrap();
            let request = Request::new(UpstreamRequestBody::Empty);
            let future = crate::client::send(&connector, &compiled.targets[0], request);
            std::mem::size_of_val(&future)
        }
        let size = size_of_send();
        assert!(size < 2048, "client::send future is {size} bytes");
    }

    #[test]
    fn upstream_paths() {
        let uri: Uri = "/weather/forecast/paris?units=c".parse().unwrap();
        let check = |base: &str, uri: &Uri, strip: usize, expected: &str| {
            assert_eq!(
                upstream_uri(base, uri, strip, None).unwrap().to_string(),
                expected
            );
        };
        check("", &uri, "/weather".len(), "/forecast/paris?units=c");
        check("", &uri, 0, "/weather/forecast/paris?units=c");
        check("/v2", &uri, "/weather".len(), "/v2/forecast/paris?units=c");
        let uri: Uri = "/weather".parse().unwrap();
        check("", &uri, "/weather".len(), "/");
    }

    #[test]
    fn query_rewrites() {
        let rewrite = crate::snapshot::QueryRewrite {
            drop: vec!["api_key".into(), "units".into()],
            add: vec!["units=metric".into(), "source=tollgate%20gw".into()],
        };
        let check = |uri: &str, expected: &str| {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(
                upstream_uri("", &uri, 0, Some(&rewrite))
                    .unwrap()
                    .to_string(),
                expected
            );
        };
        check(
            "/a?city=paris&api%5Fkey=secret&units=f",
            "/a?city=paris&units=metric&source=tollgate%20gw",
        );
        check("/a", "/a?units=metric&source=tollgate%20gw");
        check("/a?&&x", "/a?x&units=metric&source=tollgate%20gw");
    }
}
