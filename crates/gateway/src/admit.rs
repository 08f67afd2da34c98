//! Pipeline phases 3–5 (SPEC §3): authenticate (401), authorize (403) and
//! limit (429). They read only the snapshot's [`crate::access::AccessIndex`]
//! and the limiters' own counters.

use std::net::IpAddr;
use std::sync::Arc;

use domain::access::SubscriptionStatus;
use domain::code::Code;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request};

use crate::access::{AppRt, KeyRt, SubscriptionRt, client_ip, digest_of};
use crate::jwt::{self, JwksCache};
use crate::limit::{Exceeded, Limiter, Permit, Quota};
use crate::money::{GrantShort, Short};
use crate::refusal::Refusal;
use crate::snapshot::{RouteRt, ServiceRt, Snapshot};

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Credentials the gateway removes before forwarding, so the upstream
/// never sees the caller's Tollgate key.
pub mod strip {
    pub const AUTHORIZATION: u8 = 1;
    pub const X_API_KEY: u8 = 2;
    pub const QUERY_KEY: u8 = 4;
    /// An x402 payment (`PAYMENT-SIGNATURE`), settled by the gateway.
    pub const PAYMENT: u8 = 8;
}

/// What the admission phases decided about an admitted request.
#[derive(Default)]
pub struct Admission {
    /// Which credential carriers to remove before forwarding.
    pub strip: u8,
    /// `Tollgate-App`, `-Team`, `-Plan` and `-Subscription` for the
    /// upstream, in that order (see `pipeline::IDENTITY`).
    pub identity: Option<[HeaderValue; 4]>,
    /// `RateLimit-Policy` and `RateLimit` for the response.
    pub rate_headers: Option<(HeaderValue, HeaderValue)>,
    /// Concurrency slots, released when the response body ends.
    pub permits: Vec<Permit>,
    /// The call's price, held in the team's wallet until the upstream
    /// answers (settled) or the call fails (given back).
    pub reservation: Option<crate::money::Reservation>,
    /// `Tollgate-Warning` for the response.
    pub warning: Option<HeaderValue>,
    /// The wallet a priced call pays from, and its price: the response
    /// says what is left once the call is settled or given back (its
    /// `Tollgate-Balance` and a `low-balance` warning).
    pub paid_from: Option<(Arc<crate::money::WalletRt>, i64)>,
    /// The quota's `RateLimit` item as counted with this call
    /// (remaining, seconds to reset): one more remains if the call is
    /// given back.
    pub quota_state: Option<(u64, u64)>,
}

/// Where a credential came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Authorization,
    XApiKey,
    Query,
}

impl Source {
    /// The [`strip`] bit that removes this carrier before forwarding.
    fn strip_bit(self) -> u8 {
        match self {
            Source::Authorization => strip::AUTHORIZATION,
            Source::XApiKey => strip::X_API_KEY,
            Source::Query => strip::QUERY_KEY,
        }
    }
}

/// The credentials a request carries ([`credentials`]), read as a list.
struct Presented<'r> {
    found: smallvec::SmallVec<[(&'r str, Source); 2]>,
    /// It has an `X-API-Key` line, empty ones included.
    x_api_key_line: bool,
}

impl<'r> std::ops::Deref for Presented<'r> {
    type Target = [(&'r str, Source)];

    fn deref(&self) -> &Self::Target {
        &self.found
    }
}

impl<'r> IntoIterator for Presented<'r> {
    type Item = (&'r str, Source);
    type IntoIter = smallvec::IntoIter<[(&'r str, Source); 2]>;

    fn into_iter(self) -> Self::IntoIter {
        self.found.into_iter()
    }
}

/// Every credential the request carries, each header line apart: a
/// repeated `Authorization` or `X-API-Key` line is a credential of its own,
/// so lines naming different apps conflict.
fn credentials<B>(request: &Request<B>) -> Presented<'_> {
    let mut found = smallvec::SmallVec::new();
    let mut x_api_key_line = false;
    for value in request.headers().get_all(header::AUTHORIZATION) {
        let Ok(text) = value.to_str() else { continue };
        let token = text
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| text[7..].trim());
        // Another scheme (Basic…) is the upstream's business, not ours.
        if let Some(token) = token {
            found.push((token, Source::Authorization));
        }
    }
    for value in request.headers().get_all("x-api-key") {
        x_api_key_line = true;
        // An empty line carries no key, as an empty `Bearer` carries none.
        if let Ok(text) = value.to_str()
            && !text.trim().is_empty()
        {
            found.push((text.trim(), Source::XApiKey));
        }
    }
    if let Some(query) = request.uri().query() {
        for pair in query.split('&') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            // `api%5Fkey` is the same name: found, so it is also removed.
            if name == "api_key"
                || (name.contains('%') && domain::percent::decode(name) == "api_key")
            {
                found.push((value, Source::Query));
            }
        }
    }
    Presented {
        found,
        x_api_key_line,
    }
}

fn refuse_key(code: Code, key: Option<&KeyRt>, detail: &str) -> Refusal {
    let prefix = key.map_or(String::new(), |k| format!(" ({}…)", k.prefix));
    Refusal::new(code, format!("{detail}{prefix}"))
}

/// Who is calling: an app, through one of its keys or a JWT identity.
struct Caller<'s> {
    app: &'s Arc<AppRt>,
    /// `None` for a JWT (no key scopes apply).
    key: Option<&'s Arc<KeyRt>>,
}

/// Phase 3: the caller's key, from `Authorization: Bearer`, `X-API-Key` or
/// (where the service allows it) `?api_key=`; or a JWT from an issuer the
/// service trusts, as `Authorization: Bearer`.
fn authenticate<'s, B>(
    snapshot: &'s Snapshot,
    service: &ServiceRt,
    request: &Request<B>,
    now_ms: i64,
    jwks: &JwksCache,
    admission: &mut Admission,
) -> Result<Caller<'s>, Refusal> {
    let presented = credentials(request);
    // `X-API-Key` is the gateway's own carrier on a keyed service: even a
    // line with no key on it (empty) is not passed on.
    if presented.x_api_key_line {
        admission.strip |= strip::X_API_KEY;
    }
    if presented.is_empty() {
        return Err(Refusal::new(
            Code::MissingCredentials,
            format!(
                "{} needs an API key: send 'Authorization: Bearer tg_…' or 'X-API-Key: tg_…'. Create a key for your app in the portal.",
                service.named()
            ),
        ));
    }
    let mut resolved: Option<Caller<'s>> = None;
    for (token, source) in presented {
        if source == Source::Query && !service.query_key {
            return Err(Refusal::new(
                Code::KeyInQuery,
                format!(
                    "{} does not take keys in the query string (they end up in logs and browser history). Send the key in the 'Authorization' or 'X-API-Key' header.",
                    service.named()
                ),
            ));
        }
        admission.strip |= source.strip_bit();
        let caller = if source == Source::Authorization && jwt::looks_like_jwt(token) {
            let Some(config) = &service.jwt else {
                return Err(Refusal::new(
                    Code::InvalidCredentials,
                    format!(
                        "{} takes API keys, not JWTs. Send your app's key.",
                        service.named()
                    ),
                ));
            };
            let verified = jwt::verify(config, token, jwks)?;
            let (issuer, subject) = (&verified.issuer, &verified.subject);
            // One answer whether no app claims the identity or its app
            // does not trust this service's keys: which it is would tell
            // the service's team about other teams' apps.
            let Some(claimed) = snapshot
                .access
                .jwt_apps
                .get(&(issuer.clone(), subject.clone()))
                .filter(|claimed| claimed.trusts(service.team.as_deref(), verified.source))
            else {
                return Err(Refusal::new(
                    Code::InvalidCredentials,
                    format!(
                        "No app that this service may authenticate claims the identity '{subject}' of '{issuer}'. An app claims it in its 'jwt' identities; an app of another team than the service's must also name there the issuer's public keys that verified the token ('jwks_url' or 'public_key_pem'), and a shared HS256 secret never authenticates it."
                    ),
                ));
            };
            Caller {
                app: &claimed.app,
                key: None,
            }
        } else {
            let key = resolve_key(snapshot, token, now_ms)?;
            Caller {
                app: &key.app,
                key: Some(key),
            }
        };
        match &resolved {
            Some(previous) if previous.app.id != caller.app.id => {
                return Err(Refusal::new(
                    Code::ConflictingCredentials,
                    format!(
                        "The request carries credentials of two different apps ('{}' and '{}'). Send one.",
                        previous.app.slug, caller.app.slug
                    ),
                ));
            }
            _ => resolved = Some(caller),
        }
    }
    resolved.ok_or_else(|| Refusal::new(Code::MissingCredentials, "No API key was sent."))
}

/// The API key a request carries (`Authorization: Bearer` or
/// `X-API-Key`), for the gateway's own endpoints (`/_tollgate/me`).
pub(crate) fn identify_key<'s, B>(
    snapshot: &'s Snapshot,
    request: &Request<B>,
    now_ms: i64,
) -> Result<&'s KeyRt, Refusal> {
    let presented = credentials(request);
    let mut found: Option<&KeyRt> = None;
    for (token, source) in presented {
        if source == Source::Query {
            continue;
        }
        let key = resolve_key(snapshot, token, now_ms)?;
        if found.is_some_and(|other| other.app.id != key.app.id) {
            return Err(Refusal::new(
                Code::ConflictingCredentials,
                "The request carries keys of two different apps. Send one.",
            ));
        }
        found = Some(key);
    }
    found.ok_or_else(|| {
        Refusal::new(
            Code::MissingCredentials,
            "This needs your app's API key: send 'Authorization: Bearer tg_…' or 'X-API-Key: tg_…'. Create a key for your app in the portal.",
        )
    })
}

fn resolve_key<'s>(
    snapshot: &'s Snapshot,
    token: &str,
    now_ms: i64,
) -> Result<&'s Arc<KeyRt>, Refusal> {
    let Some(key) = lookup_key(snapshot, token) else {
        return Err(Refusal::new(
            Code::InvalidCredentials,
            "The API key is not valid. Check that it was copied whole; keys are shown once, at creation, so create a new one if it is lost.",
        ));
    };
    if key.revoked {
        return Err(refuse_key(
            Code::KeyRevoked,
            Some(key),
            "This API key has been revoked. Create a new key for your app",
        ));
    }
    if key.expires_at_ms.is_some_and(|at| at <= now_ms) {
        return Err(refuse_key(
            Code::KeyExpired,
            Some(key),
            "This API key has expired. Create a new key for your app",
        ));
    }
    Ok(key)
}

/// The key a Tollgate token names, revoked or expired ones included.
fn lookup_key<'s>(snapshot: &'s Snapshot, token: &str) -> Option<&'s Arc<KeyRt>> {
    token
        .starts_with("tg_")
        .then(|| snapshot.access.keys.get(&digest_of(token.as_bytes())))
        .flatten()
}

/// The app and key behind a revoked or expired key, for the call log.
fn name_refused_key<B>(snapshot: &Snapshot, request: &Request<B>, who: &mut crate::calls::Who) {
    let known = credentials(request)
        .into_iter()
        .find_map(|(token, _)| lookup_key(snapshot, token));
    if let Some(key) = known {
        who.app = Some(key.app.clone());
        who.key = Some(key.clone());
    }
}

/// Phase 4: the app's subscription, IP rules and the key's scopes.
fn authorize<'s>(
    service: &ServiceRt,
    caller: &Caller<'s>,
    method: &Method,
    ip: impl FnOnce() -> IpAddr,
) -> Result<&'s SubscriptionRt, Refusal> {
    let app: &'s AppRt = caller.app;
    if !app.ip.is_empty() {
        let ip = ip();
        if !app.ip.allows(ip) {
            return Err(Refusal::new(
                Code::IpDenied,
                format!(
                    "The app '{}' may not call from {ip}; its owners can add this address to the app's IP allow-list.",
                    app.slug
                ),
            ));
        }
    }
    if service.team_only && service.team.as_deref() != Some(app.team.as_str()) {
        return Err(Refusal::new(
            Code::TenantDenied,
            format!(
                "{} is private to its team; the app '{}' belongs to another team.",
                service.named(),
                app.slug
            ),
        ));
    }
    let Some(subscription) = app.subscription(&service.id) else {
        return Err(Refusal::new(
            Code::NotSubscribed,
            format!(
                "The app '{}' is not subscribed to '{}'. Subscribe to one of its plans in the portal (POST /api/v1/subscriptions).",
                app.slug, service.slug
            ),
        ));
    };
    let reason = subscription.reason.as_deref().map_or(String::new(), |r| {
        // The provider's words, as one sentence before ours.
        let end = if r.trim_end().ends_with(['.', '!', '?']) {
            ""
        } else {
            "."
        };
        format!(" Reason: {}{end}", r.trim_end())
    });
    let refusal = match subscription.status {
        SubscriptionStatus::Active => None,
        SubscriptionStatus::Pending => Some((
            Code::SubscriptionPending,
            format!(
                "The subscription of '{}' to '{}' waits for the provider's approval; calls work once it is approved.",
                app.slug, service.slug
            ),
        )),
        SubscriptionStatus::Rejected => Some((
            Code::SubscriptionRejected,
            format!(
                "The provider rejected the subscription of '{}' to '{}'.{reason}",
                app.slug, service.slug
            ),
        )),
        SubscriptionStatus::Suspended => Some((
            Code::SubscriptionSuspended,
            format!(
                "The provider suspended the subscription of '{}' to '{}'.{reason} Contact the provider to have it resumed.",
                app.slug, service.slug
            ),
        )),
        SubscriptionStatus::Cancelled => Some((
            Code::NotSubscribed,
            format!(
                "The subscription of '{}' to '{}' was cancelled. Subscribe again to call it.",
                app.slug, service.slug
            ),
        )),
        // Money matters: refused with 402 in the pay phase.
        SubscriptionStatus::Expired | SubscriptionStatus::PastDue => None,
    };
    if let Some((code, detail)) = refusal {
        return Err(Refusal::new(code, detail));
    }
    if let Some(key) = caller.key
        && !key.allows(&service.slug, method)
    {
        return Err(refuse_key(
            Code::ScopeDenied,
            Some(key),
            &format!(
                "This key's scopes do not cover {method} on '{}'. Use a key with the scope '{}' (or '{}:read' for reads)",
                service.slug, service.slug, service.slug
            ),
        ));
    }
    Ok(subscription)
}

pub(crate) fn rate_limited(exceeded: &Exceeded, policy: Option<HeaderValue>) -> Refusal {
    // On a refusal the quota has room again when `Retry-After` says (a
    // sliding window frees up before its fixed window ends, or after).
    let quota = &Quota {
        reset_s: exceeded.retry_after_s,
        ..exceeded.quota
    };
    let detail = if exceeded.concurrency {
        format!(
            "Too many requests in flight: the {} allows {} at once. Wait for one to finish.",
            quota.scope, quota.limit
        )
    } else if quota.scope == "tokens" {
        format!(
            "The plan allows {} tokens per {}; retry in {} s. Send smaller requests, spread them out, or move to a plan with higher limits.",
            quota.limit, quota.name, exceeded.retry_after_s
        )
    } else {
        format!(
            "The {} allows {} requests per {}; retry in {} s. Spread requests out, or move to a plan with higher limits.",
            quota.scope, quota.limit, quota.name, exceeded.retry_after_s
        )
    };
    let mut refusal = Refusal::new(Code::RateLimited, detail).with_header(
        header::RETRY_AFTER,
        HeaderValue::from(exceeded.retry_after_s),
    );
    if let Some(policy) = policy {
        refusal = refusal.with_header(RATELIMIT_POLICY.clone(), policy);
    }
    if let Ok(value) = HeaderValue::try_from(ratelimit_value(quota)) {
        refusal = refusal.with_header(RATELIMIT.clone(), value);
    }
    refusal
}

pub(crate) fn ratelimit_value(quota: &Quota) -> String {
    // Written per call: pushed, not formatted.
    let mut out = String::with_capacity(quota.scope.len() + quota.name.len() + 48);
    out.push('"');
    out.push_str(quota.scope);
    out.push('-');
    out.push_str(quota.name);
    out.push_str("\";r=");
    domain::money::push_u64(&mut out, quota.remaining);
    out.push_str(";t=");
    domain::money::push_u64(&mut out, quota.reset_s);
    out
}

/// `RateLimit-Policy` for these limiters: each one's text is made once, so
/// a request with a single windowed limiter copies it and nothing else.
fn policy_value(limiters: &[&Arc<Limiter>]) -> Option<HeaderValue> {
    let mut parts = limiters
        .iter()
        .map(|l| l.policy())
        .filter(|p| !p.is_empty());
    let first = parts.next()?;
    let text = match parts.next() {
        None => HeaderValue::from_str(first),
        Some(second) => {
            let mut joined = format!("{first}, {second}");
            for part in parts {
                joined.push_str(", ");
                joined.push_str(part);
            }
            HeaderValue::from_str(&joined)
        }
    };
    text.ok()
}

/// Phase 5: the plan's, app's and route's limits (each optional). An
/// admission is counted in every limiter or in none.
fn limit(
    limiters: [Option<&Arc<Limiter>>; 3],
    now_ms: u64,
    admission: &mut Admission,
) -> Result<(), Refusal> {
    let present: smallvec::SmallVec<[&Arc<Limiter>; 3]> = limiters.into_iter().flatten().collect();
    if present.is_empty() {
        return Ok(());
    }
    let policy = policy_value(&present);
    let mut tightest: Option<Quota> = None;
    for (index, limiter) in present.iter().enumerate() {
        let outcome = limiter.admit(now_ms).and_then(|quota| {
            limiter.enter().map(|entered| match entered {
                Some((permit, bound)) => {
                    admission.permits.push(permit);
                    // The tighter of the windows and the bound in flight.
                    Some(match quota {
                        Some(window) if window.remaining <= bound.remaining => window,
                        _ => bound,
                    })
                }
                None => quota,
            })
        });
        match outcome {
            Ok(Some(quota)) => {
                if tightest.is_none_or(|t| quota.remaining < t.remaining) {
                    tightest = Some(quota);
                }
            }
            Ok(None) => {}
            Err(exceeded) => {
                // Give back what the earlier limiters (and, for a
                // concurrency refusal, this one) counted.
                let counted = if exceeded.concurrency {
                    index + 1
                } else {
                    index
                };
                for earlier in &present[..counted] {
                    earlier.refund(now_ms);
                }
                admission.permits.clear();
                return Err(rate_limited(&exceeded, policy));
            }
        }
    }
    if let (Some(policy), Some(quota)) = (policy, tightest)
        && let Ok(value) = HeaderValue::try_from(ratelimit_value(&quota))
    {
        admission.rate_headers = Some((policy, value));
    }
    Ok(())
}

fn now_epoch_ms() -> i64 {
    domain::now_ms()
}

/// A call with no caller to authenticate (an anonymous service, or one
/// paid per request): only the route's limits apply.
fn open(route: &RouteRt, mut admission: Admission) -> Result<Admission, Refusal> {
    if route.limiter.is_some() {
        let now = u64::try_from(now_epoch_ms()).unwrap_or(0);
        limit([None, None, route.limiter.as_ref()], now, &mut admission)?;
    }
    Ok(admission)
}

/// Admits a call paid per request (x402): the service's IP rules and the
/// route's limits; the payment header is not forwarded.
pub(crate) fn admit_paid<B>(
    snapshot: &Snapshot,
    route: &RouteRt,
    request: &Request<B>,
    (peer, trusted_proxies): (IpAddr, &[domain::net::Cidr]),
    who: &mut crate::calls::Who,
) -> Result<Admission, Refusal> {
    let service = &route.service;
    if !service.ip.is_empty() {
        let ip = client_ip(peer, request.headers(), trusted_proxies);
        if !service.ip.allows(ip) {
            return Err(Refusal::new(
                Code::IpDenied,
                format!("{} does not accept calls from {ip}.", service.named()),
            ));
        }
    }
    // A Tollgate key sent along is not the upstream's business either.
    let presented = credentials(request);
    let mut carriers = strip::PAYMENT;
    for (_, source) in presented.iter() {
        carriers |= source.strip_bit();
    }
    // The payment pays, not the key; but a valid key names the caller in
    // the call log, so its team sees the call (and can look it up).
    name_caller(snapshot, &presented, who);
    let admission = Admission {
        strip: carriers,
        ..Admission::default()
    };
    open(route, admission)
}

/// Names in `who` (for the call log) the app of the first valid key the
/// request carries, when nothing has yet: a call refused before admission
/// (no such model, a per-request payment) is still its caller's, to see
/// in its logs and look up by request id.
pub(crate) fn note_caller<B>(
    snapshot: &Snapshot,
    request: &Request<B>,
    who: &mut crate::calls::Who,
) {
    name_caller(snapshot, &credentials(request), who);
}

/// [`note_caller`], from credentials already read.
fn name_caller(snapshot: &Snapshot, presented: &[(&str, Source)], who: &mut crate::calls::Who) {
    if who.key.is_some() {
        return;
    }
    let now_ms = now_epoch_ms();
    for &(token, _) in presented {
        if let Ok(key) = resolve_key(snapshot, token, now_ms) {
            who.app = Some(key.app.clone());
            who.key = Some(key.clone());
            return;
        }
    }
}

/// Whether a request carries any caller credential.
pub(crate) fn has_credentials<B>(request: &Request<B>) -> bool {
    !credentials(request).is_empty()
}

/// What admission needs besides the request: where it came from and the
/// gateway's settings.
pub(crate) struct AdmitEnv<'a> {
    pub peer: IpAddr,
    pub trusted_proxies: &'a [domain::net::Cidr],
    pub jwks: &'a JwksCache,
    pub currency: &'a str,
    /// Queue usage events of unpriced calls too.
    pub export_usage: bool,
    pub public_url: &'a str,
    /// An x402 facilitator is configured: a service's per-request payment
    /// is offered (without one it could not be settled).
    pub x402_payable: bool,
}

/// Runs phases 3–6 for a matched route; `who` learns the caller as far
/// as authentication and authorization got (for the call log), also when
/// a later phase refuses.
pub(crate) fn admit<B>(
    snapshot: &Snapshot,
    route: &RouteRt,
    request: &Request<B>,
    env: &AdmitEnv<'_>,
    who: &mut crate::calls::Who,
) -> Result<Admission, Refusal> {
    let AdmitEnv {
        peer,
        trusted_proxies,
        jwks,
        ..
    } = *env;
    let service = &route.service;
    let mut admission = Admission::default();
    let ip = || client_ip(peer, request.headers(), trusted_proxies);
    if !service.ip.is_empty() {
        let ip = ip();
        if !service.ip.allows(ip) {
            return Err(Refusal::new(
                Code::IpDenied,
                format!("{} does not accept calls from {ip}.", service.named()),
            ));
        }
    }
    if service.anonymous {
        // Nothing is checked, but a Tollgate key sent along (a caller's
        // habit, or a key meant for another service) must not reach the
        // upstream: it would collect callers' keys. Another token in
        // `Authorization` (the upstream's own) passes.
        for (token, source) in credentials(request) {
            if token.starts_with("tg_") {
                admission.strip |= source.strip_bit();
            }
        }
        return open(route, admission);
    }
    let now_ms = now_epoch_ms();
    let now_u = u64::try_from(now_ms).unwrap_or(0);
    let caller = match authenticate(snapshot, service, request, now_ms, jwks, &mut admission) {
        Ok(caller) => caller,
        Err(refusal) => {
            if matches!(refusal.code, Code::KeyRevoked | Code::KeyExpired) {
                // The key is known: its app's team sees the refusal.
                name_refused_key(snapshot, request, who);
            }
            return Err(refusal);
        }
    };
    who.app = Some(caller.app.clone());
    who.key = caller.key.cloned();
    let subscription = authorize(service, &caller, request.method(), ip)?;
    who.subscription = Some(subscription.labels.clone());
    let app = caller.app;
    limit(
        [
            subscription.limiter.as_ref(),
            app.limiter.as_ref(),
            route.limiter.as_ref(),
        ],
        now_u,
        &mut admission,
    )?;
    if let Err(mut refusal) = pay(
        app,
        subscription,
        (env.currency, env.export_usage),
        now_ms,
        &mut admission,
    ) {
        // A call refused for money counts in no rate limit: paying must
        // let the next one through at once (SPEC §4: 402 means paying
        // would, 429 that only waiting would), and a call admitted again
        // once this node's lease is topped up is counted then.
        for limiter in [
            subscription.limiter.as_ref(),
            app.limiter.as_ref(),
            route.limiter.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            limiter.refund(now_u);
        }
        // A service that also takes per-request payment says how to pay
        // this one call instead.
        if let Some(x402) = service.x402.as_ref().filter(|_| env.x402_payable)
            && matches!(
                refusal.code,
                Code::InsufficientCredit
                    | Code::QuotaExhausted
                    | Code::BudgetExhausted
                    | Code::SubscriptionExpired
                    | Code::PaymentFailed
            )
        {
            let url = format!(
                "{}{}",
                env.public_url,
                request.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            let offer =
                crate::x402::payment_required(x402, &url, refusal.code.as_str(), String::new());
            refusal.headers.extend(offer.headers);
            refusal.detail.push_str(
                " Or pay for this call alone with x402: sign the offer in the PAYMENT-REQUIRED header and send it as PAYMENT-SIGNATURE.",
            );
        }
        return Err(refusal);
    }
    let [app_slug, team] = app.identity.clone();
    let [plan, id] = subscription.identity.clone();
    admission.identity = Some([app_slug, team, plan, id]);
    Ok(admission)
}

static TOLLGATE_WARNING: HeaderName = HeaderName::from_static("tollgate-warning");

/// Many nodes: what to do about a quota or budget whose rest other nodes
/// hold right now.
pub(crate) const HELD_ELSEWHERE_RETRY: &str =
    " Retry in a second or two: what they do not use comes back to be used.";

/// `Retry-After: 1`: the refusal may not stand a second from now (the
/// rest of a quota or budget held by other nodes).
pub(crate) fn retry_soon(mut refusal: Refusal) -> Refusal {
    refusal
        .headers
        .retain(|(name, _)| name != header::RETRY_AFTER);
    refusal.with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// Many nodes: `refusal` (a 402 for a quota or budget) said more than is
/// true: the rest of `what` is held by other gateway nodes for their calls
/// right now, and comes back within a second or two.
pub(crate) fn held_elsewhere(mut refusal: Refusal, what: &str) -> Refusal {
    refusal.detail.push_str(&format!(
        " The rest of the {what} is held by other gateway nodes for their calls right now.{HELD_ELSEWHERE_RETRY}"
    ));
    retry_soon(refusal)
}

/// Many nodes: the refusal for a call whose node could not count it within
/// its grant of `counter`: a 503 `ledger_unavailable` when the node's
/// leases are not renewed, else the same 503 asking the pipeline to grow
/// the grant by `needed` within `limit` and admit the call again (it
/// stands only if that keeps failing).
fn grant_short(
    counter: &Arc<crate::money::Counter>,
    short: GrantShort,
    needed: impl TryInto<i64>,
    limit: impl TryInto<i64>,
) -> Refusal {
    let mut refusal = crate::refusal::ledger_unavailable();
    if short == GrantShort::Ask {
        refusal.lease_short = Some(Box::new(crate::refusal::LeaseShort::Counter(
            counter.clone(),
            needed.try_into().unwrap_or(i64::MAX),
            limit.try_into().unwrap_or(i64::MAX),
        )));
    }
    refusal
}

/// A 402 with the members every money refusal carries (SPEC §4).
/// What a team's wallet has for a call that costs `required`, in the
/// words of an `insufficient_credit` refusal: below zero (refunds took it
/// there) it says so, and how much more the call needs.
pub(crate) fn wallet_left(team: &str, available: i64, required: i64, currency: &str) -> String {
    use domain::money::format;
    if available < 0 {
        format!(
            "team {team}'s balance is {} {currency} (a refund took it below zero), so it needs {} {currency} more for this call",
            format(available),
            format(required.saturating_sub(available))
        )
    } else {
        format!(
            "team {team} has {} {currency} left to spend",
            format(available)
        )
    }
}

pub(crate) fn money_refusal(
    code: Code,
    detail: String,
    app: &AppRt,
    subscription: &SubscriptionRt,
    currency: &str,
) -> Refusal {
    let mut refusal = Refusal::new(code, detail);
    refusal.extra = vec![
        (
            "balance",
            // Below zero when refunds took it there: the caller learns
            // how much it needs.
            domain::money::format(app.wallet.available()).into(),
        ),
        ("currency", currency.into()),
        ("plan", subscription.plan().into()),
        (
            "top_up_url",
            format!("/_tollgate/portal/teams/{}/wallet", app.team).into(),
        ),
    ];
    refusal
}

fn seconds_until(end_ms: i64, now_ms: i64) -> i64 {
    ((end_ms - now_ms).max(0) + 999) / 1000
}

pub(crate) fn retry_after(refusal: Refusal, end_ms: i64, now_ms: i64) -> Refusal {
    let seconds = seconds_until(end_ms, now_ms).max(1);
    refusal.with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
}

/// Phase 6, money: the subscription's standing, its quota, the app's
/// budget and the team's wallet, in that order. What the call takes is
/// held in `admission.reservation` until the upstream answers.
fn pay(
    app: &AppRt,
    subscription: &SubscriptionRt,
    (currency, export_usage): (&str, bool),
    now_ms: i64,
    admission: &mut Admission,
) -> Result<(), Refusal> {
    use domain::money::format;
    let terms = &subscription.terms;
    let period_end = terms.period.map(|(_, end)| end);
    match subscription.status {
        SubscriptionStatus::Expired => {
            let mut refusal = money_refusal(
                Code::SubscriptionExpired,
                format!(
                    "The subscription of '{}' (plan {}) ended{} without renewal. Renew it (POST /api/v1/subscriptions/{}/renew) or subscribe again to continue.",
                    app.slug,
                    subscription.plan(),
                    period_end.map_or(String::new(), |end| format!(
                        " on {}",
                        domain::access::format_time_ms(end)
                    )),
                    subscription.id
                ),
                app,
                subscription,
                currency,
            );
            if let Some(end) = period_end {
                refusal
                    .extra
                    .push(("expired_at", domain::access::format_time_ms(end).into()));
            }
            if terms.fee_nanos > 0 {
                refusal
                    .extra
                    .push(("required", format(terms.fee_nanos).into()));
            }
            return Err(refusal);
        }
        SubscriptionStatus::PastDue => {
            let mut refusal = money_refusal(
                Code::PaymentFailed,
                format!(
                    "The monthly fee of {} {currency} for the subscription of '{}' (plan {}) could not be charged: team {} has {} {currency}. Top up the team's wallet; the renewal is retried within seconds.",
                    format(terms.fee_nanos),
                    app.slug,
                    subscription.plan(),
                    app.team,
                    format(app.wallet.available()),
                ),
                app,
                subscription,
                currency,
            );
            refusal
                .extra
                .push(("required", format(terms.fee_nanos).into()));
            if let Some(end) = period_end {
                refusal
                    .extra
                    .push(("period_end", domain::access::format_time_ms(end).into()));
            }
            return Err(refusal);
        }
        _ => {}
    }
    let mut warnings = Warnings::default();
    if let Some(days) = crate::warn::expiring(subscription, app.wallet.available(), now_ms) {
        warnings.push(format_args!("subscription-expiring;days={days}"));
    }
    let mut price = subscription.price_nanos;
    if terms.counter.is_none() && price == 0 {
        admission.warning = warnings.into_value();
        return Ok(());
    }
    let mut reservation =
        crate::money::Reservation::new(&app.wallet, &subscription.labels, export_usage);
    if let Some(counter) = &terms.counter {
        let place = match terms.included {
            Some(included) => reservation
                .count_request_within(counter, included)
                .map_err(|short| grant_short(counter, short, 1, included))?,
            None => crate::money::QuotaPlace {
                before: reservation.count_request(counter),
                within: false,
                held_elsewhere: false,
            },
        };
        let (before, held_elsewhere) = (place.before, place.held_elsewhere);
        if let Some(included) = terms.included {
            let end = period_end.unwrap_or(i64::MAX);
            if !place.within {
                if !terms.overage_charge {
                    reservation.uncount_request();
                    if held_elsewhere {
                        let detail = format!(
                            "The plan '{}' includes {included} calls per period and {before} are used; the rest is held by other gateway nodes for their calls right now.{HELD_ELSEWHERE_RETRY}",
                            subscription.plan()
                        );
                        let mut refusal = money_refusal(
                            Code::QuotaExhausted,
                            detail,
                            app,
                            subscription,
                            currency,
                        );
                        refusal.extra.extend([
                            ("quota", included.into()),
                            ("used", before.into()),
                            ("period_end", domain::access::format_time_ms(end).into()),
                        ]);
                        return Err(retry_soon(refusal));
                    }
                    // With renewal off the period's end is the
                    // subscription's: the quota does not reset by itself.
                    let detail = if terms.auto_renew {
                        format!(
                            "The plan '{}' includes {included} calls per period and all {before} are used; it resets on {}. Move to a larger plan or one that charges for overage to continue now.",
                            subscription.plan(),
                            domain::access::format_time_ms(end)
                        )
                    } else {
                        format!(
                            "The plan '{}' includes {included} calls per period and all {before} are used, and the subscription ends on {} (its renewal is off). Turn renewal on to get a new quota then, or move to a larger plan or one that charges for overage to continue now.",
                            subscription.plan(),
                            domain::access::format_time_ms(end)
                        )
                    };
                    let mut refusal =
                        money_refusal(Code::QuotaExhausted, detail, app, subscription, currency);
                    refusal.extra.extend([
                        ("quota", included.into()),
                        ("used", before.into()),
                        ("period_end", domain::access::format_time_ms(end).into()),
                    ]);
                    // SPEC §4: `Retry-After` only for a quota that resets
                    // by itself.
                    return Err(if terms.auto_renew {
                        retry_after(refusal, end, now_ms)
                    } else {
                        refusal
                    });
                }
            } else {
                price = 0;
                // Free within the quota; beyond it the wallet pays: few
                // calls left in all is a low balance already.
                if let Some(calls) =
                    crate::warn::low_calls_left(subscription, app.wallet.available())
                {
                    warnings.push(format_args!("low-balance;calls-left={calls}"));
                }
            }
            let used = before + 1;
            if let Some(percent) = crate::warn::nearly_exhausted(used, included) {
                warnings.push(format_args!(
                    "quota-nearly-exhausted;used-percent={percent}"
                ));
            }
            if let Some(policy) = &terms.quota_policy {
                let reset = u64::try_from(seconds_until(end, now_ms)).unwrap_or(0);
                let state = (included.saturating_sub(used), reset);
                add_rate_headers(admission, policy, &quota_item(state));
                admission.quota_state = Some(state);
            }
        }
    }
    if price > 0 {
        if let Some(budget) = &app.budget {
            budget.counter.roll(now_ms);
            let limit = budget.limit_nanos;
            if let Err(over) = reservation.take_budget(&budget.counter, limit, price) {
                let spent = over.spent;
                // Many nodes: the store had nothing more to grant though the
                // budget would hold the call: other nodes hold the rest.
                let held_elsewhere = match over.grant {
                    Some(GrantShort::Denied) => spent.saturating_add(price) <= limit,
                    Some(short) => {
                        return Err(grant_short(&budget.counter, short, price, limit));
                    }
                    None => false,
                };
                let end = budget.counter.period().1;
                let detail = if held_elsewhere {
                    format!(
                        "This call costs {} {currency}; the app '{}' has spent {} of its {} {currency} budget for this period, and the rest is held by other gateway nodes for their calls right now.{HELD_ELSEWHERE_RETRY}",
                        format(price),
                        app.slug,
                        format(spent),
                        format(limit),
                    )
                } else if price > limit {
                    // No reset helps: one call costs more than the whole
                    // budget.
                    format!(
                        "This call costs {} {currency}, more than the app '{}''s whole budget of {} {currency} per period: waiting for the reset will not help. A team admin can raise the budget (PATCH /api/v1/apps/{}).",
                        format(price),
                        app.slug,
                        format(limit),
                        app.slug
                    )
                } else {
                    format!(
                        "This call costs {} {currency}; the app '{}' has spent {} of its {} {currency} budget for this period, which resets on {}. A team admin can raise the budget (PATCH /api/v1/apps/{}).",
                        format(price),
                        app.slug,
                        format(spent),
                        format(limit),
                        domain::access::format_time_ms(end),
                        app.slug
                    )
                };
                let mut refusal =
                    money_refusal(Code::BudgetExhausted, detail, app, subscription, currency);
                refusal.extra.extend([
                    ("required", format(price).into()),
                    ("budget", format(limit).into()),
                    ("spent", format(spent).into()),
                    ("period_end", domain::access::format_time_ms(end).into()),
                ]);
                // SPEC §4: `Retry-After` only where waiting helps.
                return Err(if held_elsewhere {
                    retry_soon(refusal)
                } else if price > limit {
                    refusal
                } else {
                    retry_after(refusal, end, now_ms)
                });
            }
            let spent = u64::try_from(budget.counter.nanos()).unwrap_or(0);
            let limit = u64::try_from(limit).unwrap_or(u64::MAX);
            if let Some(percent) = crate::warn::nearly_exhausted(spent, limit) {
                warnings.push(format_args!(
                    "budget-nearly-exhausted;used-percent={percent}"
                ));
            }
        }
        if let Err(short) = reservation.take_wallet(price) {
            let available = short.available();
            let balance = format(available);
            let required = format(price);
            if let Short::LeaseLost(_) = short {
                return Err(crate::refusal::ledger_unavailable());
            }
            let detail = if available >= price {
                // Many nodes: the rest of the balance is held by the
                // others for their calls right now.
                format!(
                    "This call costs {required} {currency}; team {} has {balance} {currency} as this node last saw it, but the rest of it is held by other gateway nodes for their calls right now. Retry in a second or two (what they do not use comes back to be spent), or top up the team's wallet (top_up_url).",
                    app.team
                )
            } else {
                format!(
                    "This call costs {required} {currency}; {}. Top up the team's wallet (top_up_url) and call again.",
                    wallet_left(&app.team, available, price, currency)
                )
            };
            let mut refusal = money_refusal(
                Code::InsufficientCredit,
                detail,
                app,
                subscription,
                currency,
            );
            refusal.extra[0].1 = balance.into();
            refusal.extra.push(("required", required.into()));
            if let Short::Lease(_) = short {
                refusal.lease_short = Some(Box::new(crate::refusal::LeaseShort::Wallet(
                    app.wallet.clone(),
                    price,
                )));
                if available >= price {
                    refusal =
                        refusal.with_header(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
            }
            return Err(refusal);
        }
        admission.paid_from = Some((app.wallet.clone(), price));
    }
    admission.warning = warnings.into_value();
    admission.reservation = Some(reservation);
    Ok(())
}

/// A quota's `RateLimit` item: remaining calls and seconds to the reset.
pub(crate) fn quota_item((remaining, reset_s): (u64, u64)) -> String {
    format!("\"quota\";r={remaining};t={reset_s}")
}

/// Appends one item to `RateLimit-Policy` and `RateLimit`.
fn add_rate_headers(admission: &mut Admission, policy: &str, state: &str) {
    let joined = match admission.rate_headers.take() {
        Some((p, s)) => (
            [p.to_str().unwrap_or_default(), policy].join(", "),
            [s.to_str().unwrap_or_default(), state].join(", "),
        ),
        None => (policy.to_owned(), state.to_owned()),
    };
    if let (Ok(policy), Ok(state)) = (
        HeaderValue::from_str(&joined.0),
        HeaderValue::from_str(&joined.1),
    ) {
        admission.rate_headers = Some((policy, state));
    }
}

/// `Tollgate-Warning` items, built only when there is one.
#[derive(Default)]
struct Warnings(Option<String>);

impl Warnings {
    fn push(&mut self, item: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        let text = self.0.get_or_insert_with(String::new);
        if !text.is_empty() {
            text.push_str(", ");
        }
        let _ = text.write_fmt(item);
    }

    fn into_value(self) -> Option<HeaderValue> {
        self.0.and_then(|text| HeaderValue::from_str(&text).ok())
    }
}

/// The header name, for the pipeline.
pub fn warning_header() -> &'static HeaderName {
    &TOLLGATE_WARNING
}

#[cfg(test)]
mod tests {
    use super::wallet_left;

    #[test]
    fn a_wallet_below_zero_says_what_a_call_needs() {
        assert_eq!(
            wallet_left("acme", 250_000_000, 1_000_000_000, "USD"),
            "team acme has 0.25 USD left to spend"
        );
        assert_eq!(
            wallet_left("acme", -1_000_000_000, 10_000_000, "USD"),
            "team acme's balance is -1.00 USD (a refund took it below zero), so it needs 1.01 USD more for this call"
        );
    }
}
