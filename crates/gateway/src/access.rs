//! Who is calling and whether they may: the in-memory index of API keys
//! (by SHA-256, never a database query), apps with their subscriptions and
//! limiters, and the IP rules. Compiled with the snapshot.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use domain::access::{ApiKey, App, IpRules, Plan, Scope, Subscription, SubscriptionStatus};
use domain::net::Cidr;

use crate::limit::{Limiter, LimiterRegistry};

/// Keys are looked up by their SHA-256, which is already uniformly
/// distributed: its first eight bytes are the hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (8 bytes) then its bytes; keep
        // the first 8 bytes of the digest itself.
        if bytes.len() >= 8 && self.0 == 0 {
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(first);
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

pub type Digest = [u8; 32];

/// IP allow and deny lists, parsed.
#[derive(Debug, Default)]
pub struct IpRulesRt {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl IpRulesRt {
    pub fn compile(rules: &IpRules) -> Result<Self, String> {
        Ok(Self {
            allow: domain::net::parse_list(&rules.allow)?,
            deny: domain::net::parse_list(&rules.deny)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Deny wins; an empty allow list allows every address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

/// A subscription as the gateway sees it.
#[derive(Debug)]
pub struct SubscriptionRt {
    pub id: Arc<str>,
    pub status: SubscriptionStatus,
    pub reason: Option<String>,
    pub limiter: Option<Arc<Limiter>>,
    /// The plan's price per request in nano-units (0: free).
    pub price_nanos: i64,
    /// `Tollgate-Plan` and `Tollgate-Subscription` for the upstream.
    pub identity: [http::HeaderValue; 2],
    /// Money and quota terms (see [`Terms`]).
    pub terms: Terms,
    /// Its names (plan, service, app) for refusals, charges and usage
    /// events.
    pub labels: Arc<crate::money::Labels>,
    /// AI services: the plan's markup and token prices.
    pub ai_prices: Option<Arc<PlanAiPrices>>,
    /// AI services: the plan's token quota and tokens-per-minute limit.
    pub tokens: Option<TokenTerms>,
}

/// A plan's token quota and tokens-per-minute limit, for a subscription.
#[derive(Debug)]
pub struct TokenTerms {
    /// Tokens included per period (none: no quota).
    pub included: Option<u64>,
    /// Beyond the quota: charge the token prices (else refuse).
    pub overage_charge: bool,
    /// The period's tokens over every node (`tok:<subscription>`).
    pub counter: Arc<crate::money::Counter>,
    /// Tokens per minute: the limit and its limiter.
    pub per_minute: Option<Arc<Limiter>>,
    pub tokens_per_minute: Option<u64>,
}

/// What a plan says about token prices (see `domain::ai`).
#[derive(Debug, Default)]
pub struct PlanAiPrices {
    /// Nano-units per unit; `None`: the service's markup.
    pub markup: Option<i64>,
    /// By model, alias or `*`, per million tokens.
    pub by_name: HashMap<String, domain::ai::TokenPricesNanos>,
}

impl PlanAiPrices {
    fn compile(plan: &domain::access::PlanSpec) -> Option<Arc<Self>> {
        if plan.markup.is_none() && plan.token_prices.is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            markup: plan
                .markup
                .as_deref()
                .and_then(|m| domain::ai::parse_markup(m).ok()),
            by_name: plan
                .token_prices
                .iter()
                .filter_map(|(name, price)| Some((name.clone(), price.nanos().ok()?)))
                .collect(),
        }))
    }
}

/// What a subscription's plan and period say about paying for a call.
#[derive(Debug, Default)]
pub struct Terms {
    /// Calls included per period (none: no quota).
    pub included: Option<u64>,
    /// Beyond the quota: charge `price_nanos` (else refuse).
    pub overage_charge: bool,
    /// The current period `[start, end)` (none before activation).
    pub period: Option<(i64, i64)>,
    /// Counts the period's calls and spend; present when the plan meters
    /// calls (a price or a quota).
    pub counter: Option<Arc<crate::money::Counter>>,
    /// The monthly fee, for renewal warnings and `payment_failed`.
    pub fee_nanos: i64,
    pub auto_renew: bool,
    /// `RateLimit-Policy` item of the quota: `"quota";q=…;w=…`.
    pub quota_policy: Option<String>,
}

/// An app's spend budget.
#[derive(Debug)]
pub struct BudgetRt {
    pub limit_nanos: i64,
    pub counter: Arc<crate::money::Counter>,
}

#[derive(Debug)]
pub struct AppRt {
    pub id: String,
    pub slug: String,
    pub team: String,
    pub ip: IpRulesRt,
    pub limiter: Option<Arc<Limiter>>,
    /// (service id, subscription): the open one, else the latest.
    pub subscriptions: Vec<(String, SubscriptionRt)>,
    /// The owning team's wallet, which pays for the app's calls.
    pub wallet: Arc<crate::money::WalletRt>,
    /// The app's own spend limit per period.
    pub budget: Option<BudgetRt>,
    /// `Tollgate-App` and `Tollgate-Team` for the upstream.
    pub identity: [http::HeaderValue; 2],
}

/// The app a JWT identity stands for, and the issuer keys it names for
/// other teams' services ([`domain::access::JwtIdentity`]).
#[derive(Debug, Clone)]
pub struct JwtApp {
    pub app: Arc<AppRt>,
    pub jwks_url: Option<String>,
    /// [`domain::access::pem_body`] of the public key it names.
    pub public_key_body: Option<String>,
}

impl JwtApp {
    /// Whether a token verified by a service of `service_team` with a key
    /// from `source` may stand for the app: always on its own team's
    /// services and the platform's (whose operators administer every
    /// team); on other teams' only with the issuer keys the app named.
    pub fn trusts(&self, service_team: Option<&str>, source: crate::jwt::KeySource<'_>) -> bool {
        use crate::jwt::KeySource;
        if service_team.is_none_or(|team| team == self.app.team) {
            return true;
        }
        match source {
            KeySource::Secret => false,
            KeySource::PublicKey(body) => self.public_key_body.as_deref() == Some(body),
            KeySource::Jwks(url) => self.jwks_url.as_deref() == Some(url),
        }
    }
}

/// A header value made once, when the snapshot is compiled (slugs and ids
/// are always valid header text; anything else becomes empty).
fn header_value(text: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(text).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

impl SubscriptionRt {
    /// The plan's slug.
    pub fn plan(&self) -> &str {
        &self.labels.plan
    }

    /// The service's slug.
    pub fn service(&self) -> &str {
        &self.labels.service
    }
}

impl AppRt {
    /// Whether the app may call `service` now: it takes calls without a
    /// key, or the app's subscription to it is active (the admission
    /// phases say why not; this only decides what to list).
    pub fn may_call(&self, service: &crate::snapshot::ServiceRt) -> bool {
        service.anonymous
            || self
                .subscription(&service.id)
                .is_some_and(|s| s.status == domain::access::SubscriptionStatus::Active)
    }

    pub fn subscription(&self, service_id: &str) -> Option<&SubscriptionRt> {
        self.subscriptions
            .iter()
            .find(|(id, _)| id == service_id)
            .map(|(_, s)| s)
    }
}

/// One key in the index; kept small, as there may be millions.
#[derive(Debug)]
pub struct KeyRt {
    pub id: Box<str>,
    pub prefix: Box<str>,
    pub app: Arc<AppRt>,
    /// (service slug, read only); empty: every subscribed service.
    pub scopes: Box<[(Box<str>, bool)]>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
}

impl KeyRt {
    /// Whether the key's scopes allow `service` with this method.
    pub fn allows(&self, service: &str, method: &http::Method) -> bool {
        if self.scopes.is_empty() {
            return true;
        }
        let reading = matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        self.scopes
            .iter()
            .any(|(scope, read_only)| &**scope == service && (!read_only || reading))
    }
}

/// The access part of a snapshot.
#[derive(Default, Clone)]
pub struct AccessIndex {
    pub keys: HashMap<Digest, Arc<KeyRt>, BuildHasherDefault<DigestHasher>>,
    /// (JWT issuer, subject) → the app that claims that identity.
    pub jwt_apps: HashMap<(String, String), JwtApp>,
    /// App id → app, for keys added without a full reload.
    pub apps: HashMap<String, Arc<AppRt>>,
}

impl std::fmt::Debug for AccessIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessIndex")
            .field("keys", &self.keys.len())
            .field("apps", &self.apps.len())
            .finish()
    }
}

impl std::fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestHasher")
    }
}

fn decode_digest(hex: &str) -> Option<Digest> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn is_open(status: SubscriptionStatus) -> bool {
    status.is_open()
}

/// `priced_service`: calls to the service are priced beyond the plan (AI
/// and prompt services charge their tokens), so the subscription's usage
/// counts them.
fn terms(
    plan: &domain::access::PlanSpec,
    subscription: &Subscription,
    counters: &crate::money::Counters,
    priced_service: bool,
) -> Terms {
    let period = subscription.period_start_ms.zip(subscription.period_end_ms);
    let included = plan.included_requests();
    let metered = included.is_some() || plan.price_nanos() > 0 || priced_service;
    Terms {
        included,
        overage_charge: plan.overage == domain::access::Overage::Charge,
        period,
        counter: metered.then(|| {
            counters.subscription(
                &subscription.id,
                period.unwrap_or((subscription.created_at_ms, i64::MAX)),
            )
        }),
        fee_nanos: plan.fee_nanos(),
        auto_renew: subscription.auto_renew,
        quota_policy: included.map(|quota| {
            let window = period.map_or(0, |(start, end)| (end - start) / 1000);
            format!("\"quota\";q={quota};w={window}")
        }),
    }
}

/// Builds the key index. Subscriptions are attached to their app: for each
/// service the open one wins, else the most recently changed.
pub fn compile(
    apps: &[App],
    keys: &[ApiKey],
    plans: &[Plan],
    subscriptions: &[Subscription],
    limiters: &LimiterRegistry,
    wallets: &crate::money::Wallets,
    priced_services: &std::collections::HashSet<&str>,
) -> Result<AccessIndex, String> {
    let plans: HashMap<&str, &Plan> = plans.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut chosen: HashMap<(&str, &str), &Subscription> = HashMap::new();
    for subscription in subscriptions {
        let key = (
            subscription.app_id.as_str(),
            subscription.service_id.as_str(),
        );
        let better = match chosen.get(&key) {
            None => true,
            Some(current) => match (is_open(subscription.status), is_open(current.status)) {
                (true, false) => true,
                (false, true) => false,
                _ => subscription.updated_at_ms >= current.updated_at_ms,
            },
        };
        if better {
            chosen.insert(key, subscription);
        }
    }
    let mut by_app: HashMap<&str, Vec<(String, SubscriptionRt)>> = HashMap::new();
    for ((app_id, service_id), subscription) in chosen {
        let plan = plans.get(subscription.plan_id.as_str());
        let limiter = plan.and_then(|plan| {
            limiters.get(
                format!("subscription:{}", subscription.id),
                "plan",
                &plan.spec.rate_limits,
                plan.spec.concurrent_requests,
            )
        });
        let id: Arc<str> = subscription.id.as_str().into();
        by_app.entry(app_id).or_default().push((
            service_id.to_owned(),
            SubscriptionRt {
                id: id.clone(),
                status: subscription.status,
                reason: subscription.reason.clone(),
                limiter,
                price_nanos: plan.map_or(0, |plan| plan.spec.price_nanos()),
                identity: [
                    header_value(&subscription.plan),
                    header_value(&subscription.id),
                ],
                terms: plan.map_or_else(Terms::default, |plan| {
                    terms(
                        &plan.spec,
                        subscription,
                        &wallets.counters,
                        priced_services.contains(service_id),
                    )
                }),
                labels: Arc::new(crate::money::Labels {
                    subscription: id,
                    app: subscription.app.as_str().into(),
                    service: subscription.service.as_str().into(),
                    plan: subscription.plan.as_str().into(),
                }),
                ai_prices: plan.and_then(|plan| PlanAiPrices::compile(&plan.spec)),
                tokens: plan.and_then(|plan| {
                    let spec = &plan.spec;
                    if spec.included_tokens().is_none() && spec.tokens_per_minute.is_none() {
                        return None;
                    }
                    let period = subscription
                        .period_start_ms
                        .zip(subscription.period_end_ms)
                        .unwrap_or((subscription.created_at_ms, i64::MAX));
                    Some(TokenTerms {
                        included: spec.included_tokens(),
                        overage_charge: spec.overage == domain::access::Overage::Charge,
                        counter: wallets.counters.tokens(&subscription.id, period),
                        tokens_per_minute: spec.tokens_per_minute,
                        per_minute: spec.tokens_per_minute.and_then(|tpm| {
                            limiters.get(
                                format!("tokens:{}", subscription.id),
                                "tokens",
                                &[domain::access::RateLimit {
                                    requests: tpm,
                                    per: domain::access::Per::Minute,
                                }],
                                None,
                            )
                        }),
                    })
                }),
            },
        ));
    }
    let mut app_index: HashMap<&str, Arc<AppRt>> = HashMap::with_capacity(apps.len());
    for app in apps {
        let ip =
            IpRulesRt::compile(&app.spec.ip).map_err(|e| format!("app {}: {e}", app.spec.slug))?;
        let team = app.spec.team.clone().unwrap_or_default();
        let wallet = wallets.get(&team);
        let compiled = AppRt {
            identity: [header_value(&app.spec.slug), header_value(&team)],
            id: app.id.clone(),
            slug: app.spec.slug.clone(),
            team,
            ip,
            limiter: limiters.get(
                format!("app:{}", app.id),
                "app",
                &app.spec.rate_limits,
                app.spec.concurrent_requests,
            ),
            subscriptions: by_app.remove(app.id.as_str()).unwrap_or_default(),
            wallet,
            budget: app.spec.budget.as_ref().map(|budget| BudgetRt {
                limit_nanos: budget.nanos(),
                counter: wallets
                    .counters
                    .budget(&app.id, budget.period, domain::now_ms()),
            }),
        };
        app_index.insert(app.id.as_str(), Arc::new(compiled));
    }
    let mut jwt_apps = HashMap::new();
    for app in apps {
        if let Some(compiled) = app_index.get(app.id.as_str()) {
            for identity in &app.spec.jwt {
                jwt_apps.insert(
                    (identity.issuer.clone(), identity.subject.clone()),
                    JwtApp {
                        app: compiled.clone(),
                        jwks_url: identity.jwks_url.clone(),
                        public_key_body: identity
                            .public_key_pem
                            .as_deref()
                            .map(domain::access::pem_body),
                    },
                );
            }
        }
    }
    let mut index = AccessIndex {
        keys: HashMap::with_capacity_and_hasher(keys.len(), BuildHasherDefault::default()),
        jwt_apps,
        apps: app_index
            .into_iter()
            .map(|(id, app)| (id.to_owned(), app))
            .collect(),
    };
    for key in keys {
        index.put_key(key);
    }
    Ok(index)
}

impl AccessIndex {
    /// Adds or replaces a key (a key of an unknown app is skipped: the
    /// app was deleted, and the full reload that follows drops it).
    fn put_key(&mut self, key: &ApiKey) {
        let (Some(app), Some(digest)) = (self.apps.get(&key.app_id), decode_digest(&key.hash))
        else {
            return;
        };
        let scopes = key
            .scopes
            .iter()
            .filter_map(|text| Scope::parse(text).map(|s| (Box::from(s.service), s.read_only)))
            .collect();
        let compiled = KeyRt {
            id: key.id.as_str().into(),
            prefix: key.prefix.as_str().into(),
            app: app.clone(),
            scopes,
            expires_at_ms: key.expires_at_ms,
            revoked: key.revoked_at_ms.is_some(),
        };
        self.keys.insert(digest, Arc::new(compiled));
    }

    /// A copy with `changed` keys applied: `current` are the changed keys
    /// that still exist; changed ids missing from it were deleted.
    pub fn with_key_changes(&self, changed: &[String], current: &[ApiKey]) -> AccessIndex {
        let mut next = self.clone();
        let existing: std::collections::HashSet<&str> =
            current.iter().map(|k| k.id.as_str()).collect();
        let deleted: Vec<&String> = changed
            .iter()
            .filter(|id| !existing.contains(id.as_str()))
            .collect();
        if !deleted.is_empty() {
            next.keys
                .retain(|_, key| !deleted.iter().any(|id| id.as_str() == &*key.id));
        }
        for key in current {
            next.put_key(key);
        }
        next
    }
}

/// The SHA-256 of a presented key.
pub fn digest_of(key: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(key).into()
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` entry that is not a trusted proxy.
/// One `X-Forwarded-For` entry's address: a bare IPv4 or IPv6 address, or
/// one with a port as some proxies write it (`1.2.3.4:5678`, `[2001:db8::1]`,
/// `[2001:db8::1]:5678`).
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|port| port.parse::<u16>().is_ok());
        return port_ok
            .then(|| inside.parse::<std::net::Ipv6Addr>().ok())
            .flatten()
            .map(IpAddr::V6);
    }
    entry
        .parse::<std::net::SocketAddrV4>()
        .ok()
        .map(|address| IpAddr::V4(*address.ip()))
}

pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if trusted.is_empty() || !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let mut client = peer;
    // Entries as bytes: a line with a byte that is not text is read up to
    // where it matters (the right-most entries), not skipped whole, which
    // would make the proxy the client.
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .collect::<Vec<_>>();
    for entry in entries.iter().rev() {
        let entry = std::str::from_utf8(entry).unwrap_or("").trim();
        let Some(ip) = forwarded_ip(entry) else {
            // A malformed hop: stop trusting what lies beyond it.
            break;
        };
        client = ip;
        if !trusted.iter().any(|c| c.contains(ip)) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.7"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap_or_else(|_| unreachable!());
        let stranger: IpAddr = "5.5.5.5".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(client_ip(proxy, &headers, &trusted).to_string(), "1.2.3.4");
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        // Entries with ports, and bracketed IPv6, as some proxies write them.
        for (entry, client) in [
            ("1.2.3.4:5555", "1.2.3.4"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:db8::2", "2001:db8::2"),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "x-forwarded-for",
                http::HeaderValue::from_str(entry).unwrap_or_else(|_| unreachable!()),
            );
            assert_eq!(
                client_ip(proxy, &headers, &trusted).to_string(),
                client,
                "{entry}"
            );
        }
        // A line with a byte that is not text: its right-most entries
        // still count.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff, 1.2.3.4").unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(client_ip(proxy, &headers, &trusted).to_string(), "1.2.3.4");
        // Not an address: the proxy is the client.
        for entry in ["[2001:db8::1", "1.2.3.4:99999", "[1.2.3.4]", "example.com"] {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "x-forwarded-for",
                http::HeaderValue::from_str(entry).unwrap_or_else(|_| unreachable!()),
            );
            assert_eq!(client_ip(proxy, &headers, &trusted), proxy, "{entry}");
        }
        assert_eq!(client_ip(proxy, &headers, &[]), proxy);
    }

    #[test]
    fn ip_rules_deny_wins() {
        let rules = IpRulesRt::compile(&IpRules {
            allow: vec!["10.0.0.0/8".into()],
            deny: vec!["10.9.0.0/16".into()],
        })
        .unwrap_or_default();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap_or_else(|_| unreachable!());
        assert!(rules.allows(ip("10.1.1.1")));
        assert!(!rules.allows(ip("10.9.1.1")));
        assert!(!rules.allows(ip("11.0.0.1")));
    }

    #[test]
    fn digests_decode() {
        let digest = digest_of(b"tg_live_x");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(decode_digest(&hex), Some(digest));
        assert_eq!(decode_digest("zz"), None);
    }
}
