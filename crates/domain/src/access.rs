//! Tenancy and access: teams, users and their roles, apps with API keys,
//! plans (the access part: rate limits), subscriptions and their states,
//! webhook endpoints and the audit log.

use serde::{Deserialize, Serialize};

use crate::model::{check_own_slug, check_slug, check_text};
use crate::validate::FieldErrors;

pub mod limits {
    pub const RATE_LIMITS_MAX: usize = 8;
    pub const SCOPES_MAX: usize = 64;
    pub const CIDRS_MAX: usize = 256;
    pub const JWT_IDENTITIES_MAX: usize = 16;
    pub const PASSWORD_MIN: usize = 10;
    pub const PASSWORD_MAX: usize = 256;
    pub const WEBHOOK_EVENTS_MAX: usize = 32;
}

/// A member's role in a team, from least to most powerful.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Developer,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "viewer" => Role::Viewer,
            "developer" => Role::Developer,
            "admin" => Role::Admin,
            "owner" => Role::Owner,
            _ => return None,
        })
    }
}

// ------------------------------------------------------------------ teams

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    /// Immutable once created: objects refer to their team by slug.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub slug: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl TeamSpec {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_own_slug(&mut errors, "slug", &self.slug);
        check_text(&mut errors, "name", self.name.as_ref());
        check_text(&mut errors, "description", self.description.as_ref());
        errors.into_result()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Team {
    pub id: String,
    #[serde(flatten)]
    pub spec: TeamSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

// ------------------------------------------------------------------ users

/// A user as created by a platform administrator.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Write-only; stored as an argon2id hash.
    #[schema(min_length = 10, max_length = 256)]
    pub password: String,
    /// Sees and changes everything on the platform.
    #[serde(default)]
    pub superadmin: bool,
}

impl UserSpec {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_email(&mut errors, "email", &self.email);
        check_text(&mut errors, "name", self.name.as_ref());
        check_password(&mut errors, "password", &self.password);
        errors.into_result()
    }
}

pub fn check_email(errors: &mut FieldErrors, field: &str, email: &str) {
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        errors.add(field, "must be an email address");
    }
}

pub fn check_password(errors: &mut FieldErrors, field: &str, password: &str) {
    if password.chars().count() < limits::PASSWORD_MIN || password.len() > limits::PASSWORD_MAX {
        errors.add(
            field,
            format!(
                "must be {} to {} characters",
                limits::PASSWORD_MIN,
                limits::PASSWORD_MAX
            ),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub superadmin: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A user's role in a team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Membership {
    pub team: String,
    pub user_id: String,
    pub email: String,
    pub role: Role,
    pub created_at_ms: i64,
}

// ------------------------------------------------------------- rate limits

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
}

impl Per {
    pub fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
            Per::Day => 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
            Per::Day => "day",
        }
    }
}

/// At most `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[schema(minimum = 1)]
    pub requests: u64,
    pub per: Per,
}

/// Rate limits plus a bound on requests in flight.
pub fn check_limits(
    errors: &mut FieldErrors,
    field: &str,
    limits_list: &[RateLimit],
    concurrent: Option<u32>,
) {
    if limits_list.len() > limits::RATE_LIMITS_MAX {
        errors.add(
            field,
            format!("at most {} rate limits", limits::RATE_LIMITS_MAX),
        );
    }
    let mut seen = Vec::new();
    for (index, limit) in limits_list.iter().enumerate() {
        if limit.requests == 0 || limit.requests > u64::from(u32::MAX) {
            errors.add(
                format!("{field}[{index}].requests"),
                format!("must be between 1 and {}", u32::MAX),
            );
        }
        if seen.contains(&limit.per) {
            errors.add(
                format!("{field}[{index}].per"),
                "appears twice; give one limit per window",
            );
        }
        seen.push(limit.per);
    }
    if concurrent == Some(0) {
        errors.add(
            "concurrent_requests",
            "must be at least 1 (omit for no limit)",
        );
    }
}

fn check_cidrs(errors: &mut FieldErrors, field: &str, list: &[String]) {
    if list.len() > limits::CIDRS_MAX {
        errors.add(field, format!("at most {} entries", limits::CIDRS_MAX));
    }
    for (index, text) in list.iter().enumerate() {
        if let Err(message) = crate::net::Cidr::parse_exact(text) {
            errors.add(format!("{field}[{index}]"), message);
        }
    }
}

/// Who may call from where: IP allow and deny lists (CIDR). An empty allow
/// list allows every address; deny wins over allow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn validate(&self, field: &str, errors: &mut FieldErrors) {
        check_cidrs(errors, &format!("{field}.allow"), &self.allow);
        check_cidrs(errors, &format!("{field}.deny"), &self.deny);
    }
}

// ------------------------------------------------------------------- apps

/// A JWT identity that stands for an app: tokens from `issuer` whose
/// mapped claim equals `subject`.
///
/// On its own team's services that is all. Another team's service
/// configures the issuer's keys itself, so it could verify tokens it made
/// with keys of its own: it authenticates the app only when its issuer's
/// keys are the ones named here (the issuer's `jwks_url`, or its
/// `public_key_pem`), never with an HS256 secret (which that team knows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtIdentity {
    pub issuer: String,
    pub subject: String,
    /// The issuer's JWKS document: other teams' services that fetch their
    /// keys for `issuer` from this URL authenticate the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The issuer's RS256/ES256 public key (PEM): other teams' services
    /// configured with this key for `issuer` authenticate the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
}

/// The base64 body of a PEM document, whitespace and armour lines left
/// out: two spellings of one key compare equal.
pub fn pem_body(pem: &str) -> String {
    pem.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----"))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub slug: String,
    /// The owning team (slug). Optional when the caller belongs to exactly
    /// one team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "IpRules::is_empty")]
    pub ip: IpRules,
    /// App-wide limits, over all its subscriptions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<u32>,
    /// JWT identities that authenticate as this app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtIdentity>,
    /// The most the app may spend per period, over all its subscriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// An app's own spend limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Decimal string in the deployment's currency.
    pub amount: String,
    /// `day`, `week` or `month` (calendar, UTC).
    pub period: crate::billing::BudgetPeriod,
}

impl Budget {
    pub fn nanos(&self) -> i64 {
        nanos_of(Some(&self.amount))
    }
}

impl AppSpec {
    /// Writes a valid budget amount the way the API shows amounts.
    pub fn normalize_amounts(&mut self) {
        if let Some(budget) = &mut self.budget {
            canonical_amount(&mut budget.amount);
        }
    }

    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_own_slug(&mut errors, "slug", &self.slug);
        if let Some(team) = &self.team {
            check_slug(&mut errors, "team", team);
        }
        check_text(&mut errors, "name", self.name.as_ref());
        check_text(&mut errors, "description", self.description.as_ref());
        self.ip.validate("ip", &mut errors);
        if let Some(budget) = &self.budget
            && let Err(error) = crate::money::parse(&budget.amount, crate::money::Sign::Positive)
        {
            errors.add("budget.amount", error.to_string());
        }
        check_limits(
            &mut errors,
            "rate_limits",
            &self.rate_limits,
            self.concurrent_requests,
        );
        if self.jwt.len() > limits::JWT_IDENTITIES_MAX {
            errors.add(
                "jwt",
                format!("at most {} identities", limits::JWT_IDENTITIES_MAX),
            );
        }
        for (index, identity) in self.jwt.iter().enumerate() {
            if identity.issuer.is_empty() || identity.issuer.len() > 512 {
                errors.add(format!("jwt[{index}].issuer"), "must be 1–512 characters");
            }
            if identity.subject.is_empty() || identity.subject.len() > 512 {
                errors.add(format!("jwt[{index}].subject"), "must be 1–512 characters");
            }
            if identity.jwks_url.is_some() && identity.public_key_pem.is_some() {
                errors.add(
                    format!("jwt[{index}]"),
                    "names the issuer's keys once: jwks_url or public_key_pem, not both",
                );
            }
            if let Some(url) = &identity.jwks_url
                && let Err(message) = crate::model::check_target_url(url)
            {
                errors.add(format!("jwt[{index}].jwks_url"), message);
            }
            if let Some(pem) = &identity.public_key_pem
                && (!pem.trim_start().starts_with("-----BEGIN ")
                    || pem.len() > 16_384
                    || pem_body(pem).is_empty())
            {
                errors.add(
                    format!("jwt[{index}].public_key_pem"),
                    "must be a PEM public key (-----BEGIN PUBLIC KEY-----…), at most 16 KiB",
                );
            }
        }
        errors.into_result()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct App {
    pub id: String,
    #[serde(flatten)]
    pub spec: AppSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

// --------------------------------------------------------------- API keys

/// What a caller sets when creating a key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    #[serde(default)]
    pub name: Option<String>,
    /// `live` (default) or `test`: the `<env>` in `tg_<env>_…`.
    #[serde(default)]
    pub env: Option<String>,
    /// Empty: every service the app is subscribed to. Otherwise entries
    /// `<service>` (every method) or `<service>:read` (GET, HEAD, OPTIONS).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 3339 time after which the key is refused with `key_expired`.
    #[serde(default)]
    pub expires_at: Option<String>,
}

impl KeySpec {
    /// Checks the spec; returns the expiry in epoch ms.
    pub fn validate(&self, now_ms: i64) -> Result<Option<i64>, FieldErrors> {
        let mut errors = FieldErrors::new();
        check_text(&mut errors, "name", self.name.as_ref());
        if let Some(env) = &self.env
            && !matches!(env.as_str(), "live" | "test")
        {
            errors.add("env", "must be 'live' or 'test'");
        }
        if self.scopes.len() > limits::SCOPES_MAX {
            errors.add("scopes", format!("at most {} scopes", limits::SCOPES_MAX));
        }
        for (index, scope) in self.scopes.iter().enumerate() {
            if Scope::parse(scope).is_none() {
                errors.add(
                    format!("scopes[{index}]"),
                    format!("'{scope}' is not '<service>' or '<service>:read'"),
                );
            }
        }
        let mut expires_at_ms = None;
        if let Some(text) = &self.expires_at {
            match parse_time_ms(text) {
                Ok(ms) if ms <= now_ms => errors.add("expires_at", "must be in the future"),
                Ok(ms) => expires_at_ms = Some(ms),
                Err(message) => errors.add("expires_at", message),
            }
        }
        errors.into_result().map(|()| expires_at_ms)
    }
}

/// A key scope: a service, optionally read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope<'a> {
    pub service: &'a str,
    pub read_only: bool,
}

impl<'a> Scope<'a> {
    pub fn parse(text: &'a str) -> Option<Scope<'a>> {
        let (service, read_only) = match text.split_once(':') {
            Some((service, "read")) => (service, true),
            Some(_) => return None,
            None => (text, false),
        };
        crate::id::is_slug(service).then_some(Scope { service, read_only })
    }
}

/// Parses an RFC 3339 time into epoch milliseconds.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| "must be an RFC 3339 time, such as 2027-01-31T00:00:00Z".to_owned())?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).map_err(|_| "is out of range".into())
}

/// Formats epoch milliseconds as RFC 3339 (UTC).
pub fn format_time_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// RFC 3339 in UTC with exactly three fraction digits
/// (`2026-12-01T09:19:20.180Z`): call times, which sort as text in the
/// order they happened.
pub fn format_time_ms_fixed(ms: i64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return String::new();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// A stored key: never the key itself, only its SHA-256 and a prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The visible start of the key, such as `tg_live_ab12`.
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// Hex SHA-256 of the key; not shown through the API.
    #[serde(skip)]
    pub hash: String,
}

// ------------------------------------------------------------------ plans

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub slug: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Per subscription.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<u32>,
    /// Overrides the service's `approval_required` for this plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_required: Option<bool>,
    /// Prices, as decimal strings in the deployment's currency. With an
    /// `included` quota, `price_per_request` applies to calls beyond it
    /// (overage `charge`); without one, to every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_request: Option<String>,
    /// Charged from the team's wallet when a period starts (the first at
    /// activation, after any trial; then at each renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_fee: Option<String>,
    /// What each period includes at no per-call price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included: Option<Included>,
    /// Beyond the included quota: `block` (402 `quota_exhausted`, the
    /// default) or `charge` (`price_per_request` per call).
    #[serde(default)]
    pub overage: Overage,
    /// Free days before the first period (no monthly fee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_days: Option<u32>,
    /// Periods on the subscription's anniversary (default) or on calendar
    /// months (the first one prorated).
    #[serde(default)]
    pub period_alignment: crate::billing::Alignment,
    /// Plans can be closed to new subscriptions without touching the
    /// existing ones.
    #[serde(default = "crate::model::default_true")]
    pub open: bool,
    /// AI services: multiplier over the models' list prices (decimal
    /// string, `"1.5"`); default the service's `ai.markup`, else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markup: Option<String>,
    /// AI services: token prices per million, by model (`<provider>/<model>`),
    /// alias, or `*` for every model; they win over catalogue price × markup.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub token_prices: std::collections::BTreeMap<String, crate::ai::TokenPrice>,
    /// AI services: tokens (input plus output) per minute, per subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

impl PlanSpec {
    /// Writes valid amounts the one way the API shows them (`"000.50"` →
    /// `"0.50"`), so that equal prices compare and show equal.
    pub fn normalize_amounts(&mut self) {
        for amount in [&mut self.price_per_request, &mut self.monthly_fee]
            .into_iter()
            .flatten()
        {
            canonical_amount(amount);
        }
    }

    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_own_slug(&mut errors, "slug", &self.slug);
        check_text(&mut errors, "name", self.name.as_ref());
        check_text(&mut errors, "description", self.description.as_ref());
        check_limits(
            &mut errors,
            "rate_limits",
            &self.rate_limits,
            self.concurrent_requests,
        );
        for (field, value) in [
            ("price_per_request", &self.price_per_request),
            ("monthly_fee", &self.monthly_fee),
        ] {
            if let Some(value) = value
                && let Err(error) = crate::money::parse(value, crate::money::Sign::NonNegative)
            {
                errors.add(field, error.to_string());
            }
        }
        if let Some(included) = &self.included
            && included.requests == Some(0)
        {
            errors.add(
                "included.requests",
                "must be at least 1 (leave `included` out for no quota)",
            );
        }
        if let Some(included) = &self.included
            && included.tokens == Some(0)
        {
            errors.add(
                "included.tokens",
                "must be at least 1 (leave it out for no token quota)",
            );
        }
        if self.tokens_per_minute == Some(0) {
            errors.add(
                "tokens_per_minute",
                "must be at least 1 (leave it out for no limit)",
            );
        }
        // Tokens beyond an included token quota are charged at the token
        // prices; calls beyond an included call quota need a price per call.
        if self.overage == Overage::Charge
            && self.price_nanos() == 0
            && self.included_tokens().is_none()
        {
            errors.add(
                "overage",
                "is `charge` but the plan has no `price_per_request` to charge",
            );
        }
        if self.trial_days.is_some_and(|days| days == 0 || days > 365) {
            errors.add("trial_days", "must be between 1 and 365");
        } else if self.trial_days.is_some() && self.fee_nanos() == 0 {
            // A trial waives the fee, not the calls' prices: without a fee
            // it would promise what it does not do.
            errors.add(
                "trial_days",
                "waives the monthly fee, and this plan has none: set monthly_fee, or leave trial_days out",
            );
        }
        if let Some(markup) = &self.markup
            && let Err(message) = crate::ai::parse_markup(markup)
        {
            errors.add("markup", message);
        }
        crate::ai::validate_token_prices(&self.token_prices, &mut errors);
        errors.into_result()
    }

    /// `price_per_request` in nano-units (0 when unset or invalid).
    pub fn price_nanos(&self) -> i64 {
        nanos_of(self.price_per_request.as_deref())
    }

    /// `monthly_fee` in nano-units (0 when unset or invalid).
    pub fn fee_nanos(&self) -> i64 {
        nanos_of(self.monthly_fee.as_deref())
    }

    /// Requests included per period, if the plan has a request quota.
    pub fn included_requests(&self) -> Option<u64> {
        self.included.as_ref().and_then(|i| i.requests)
    }

    /// Tokens included per period, if the plan has a token quota.
    pub fn included_tokens(&self) -> Option<u64> {
        self.included.as_ref().and_then(|i| i.tokens)
    }

    /// What only makes sense for some kinds of service: tokens are counted
    /// on AI and prompt services, never on a plain HTTP one.
    pub fn validate_for(&self, kind: crate::model::ServiceKind) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        if kind == crate::model::ServiceKind::Http {
            let why = "counts AI tokens, and the calls of an http service have none: use included.requests or rate_limits";
            if self.included_tokens().is_some() {
                errors.add("included.tokens", why);
            }
            if self.tokens_per_minute.is_some() {
                errors.add("tokens_per_minute", why);
            }
        }
        errors.into_result()
    }
}

fn nanos_of(text: Option<&str>) -> i64 {
    text.and_then(|t| crate::money::parse(t, crate::money::Sign::NonNegative).ok())
        .unwrap_or(0)
}

/// A plan's included quota per period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Included {
    /// Calls per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// AI services: tokens (input plus output) per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

/// What happens beyond a plan's included quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overage {
    #[default]
    Block,
    Charge,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub id: String,
    pub service_id: String,
    #[serde(flatten)]
    pub spec: PlanSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

// ---------------------------------------------------------- subscriptions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Pending,
    Active,
    Rejected,
    Suspended,
    Cancelled,
    Expired,
    PastDue,
}

/// An action on a subscription, and who may take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionAction {
    Approve,
    Reject,
    Suspend,
    Resume,
    Cancel,
    /// Starts a new period of an expired or past-due subscription now,
    /// charging its fee.
    Renew,
}

impl SubscriptionAction {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "approve" => Self::Approve,
            "reject" => Self::Reject,
            "suspend" => Self::Suspend,
            "resume" => Self::Resume,
            "cancel" => Self::Cancel,
            "renew" => Self::Renew,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Renew => "renew",
        }
    }

    /// Whether the providing team takes this action (otherwise either
    /// side may: a consumer cancels its own subscription, a provider may
    /// end one too).
    pub fn by_provider(self) -> bool {
        !matches!(self, Self::Cancel | Self::Renew)
    }

    /// The status after the action, or `None` when the action is not
    /// allowed from `from` (SPEC §2's state machine).
    pub fn apply(self, from: SubscriptionStatus) -> Option<SubscriptionStatus> {
        use SubscriptionStatus as S;
        Some(match (self, from) {
            (Self::Approve, S::Pending) => S::Active,
            (Self::Reject, S::Pending) => S::Rejected,
            // Not from `past_due`: its calls are refused already, and a
            // resume would make it active with its fee still unpaid.
            (Self::Suspend, S::Active) => S::Suspended,
            (Self::Resume, S::Suspended) => S::Active,
            (Self::Cancel, S::Pending | S::Active | S::Suspended | S::PastDue) => S::Cancelled,
            (Self::Renew, S::Expired | S::PastDue) => S::Active,
            _ => return None,
        })
    }
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Rejected => "rejected",
            Self::Suspended => "suspended",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::PastDue => "past_due",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "rejected" => Self::Rejected,
            "suspended" => Self::Suspended,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            "past_due" => Self::PastDue,
            _ => return None,
        })
    }

    /// Whether the subscription still counts (one per app and service).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Active | Self::Suspended | Self::PastDue
        )
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// App slug or id.
    pub app: String,
    /// Service slug or id.
    pub service: String,
    /// Plan slug or id (of that service).
    pub plan: String,
    /// Renew each period (default `true`).
    #[serde(default = "crate::model::default_true")]
    pub auto_renew: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subscription {
    pub id: String,
    pub app: String,
    pub app_id: String,
    pub service: String,
    pub service_id: String,
    pub plan: String,
    pub plan_id: String,
    pub status: SubscriptionStatus,
    /// Why it was rejected or suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The team that owns the app.
    pub consumer_team: String,
    /// The team that owns the service (`null`: platform-owned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_team: Option<String>,
    /// The current period `[start, end)`; set once the subscription is
    /// active. For `past_due`, the period whose fee is unpaid; for
    /// `expired`, the last one (its end is when it expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end_ms: Option<i64>,
    /// When the free trial ends (the first period starts then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_end_ms: Option<i64>,
    /// Renew at the period's end (charging the monthly fee); `false`: the
    /// subscription expires then.
    #[serde(default = "crate::model::default_true")]
    pub auto_renew: bool,
    /// Where the monthly periods are counted from (activation or the
    /// trial's end); internal.
    #[serde(skip)]
    pub anchor_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

// --------------------------------------------------------------- webhooks

/// Events a webhook endpoint can receive.
pub const WEBHOOK_EVENTS: [&str; 19] = [
    "subscription.created",
    "subscription.plan_changed",
    "subscription.approved",
    "subscription.rejected",
    "subscription.suspended",
    "subscription.resumed",
    "subscription.cancelled",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.expired",
    "warning.low_balance",
    "warning.quota_nearly_exhausted",
    "warning.budget_nearly_exhausted",
    "warning.subscription_expiring",
    "wallet.auto_top_up",
    "wallet.auto_top_up_failed",
    "alert.firing",
    "alert.resolved",
    "webhook.test",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    /// Empty: every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl WebhookSpec {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        if let Err(message) = crate::model::check_target_url(&self.url) {
            errors.add("url", message);
        }
        if self.events.len() > limits::WEBHOOK_EVENTS_MAX {
            errors.add("events", "too many events");
        }
        for (index, event) in self.events.iter().enumerate() {
            if !WEBHOOK_EVENTS.contains(&event.as_str()) {
                errors.add(
                    format!("events[{index}]"),
                    format!("'{event}' is not one of {}", WEBHOOK_EVENTS.join(", ")),
                );
            }
        }
        check_text(&mut errors, "description", self.description.as_ref());
        errors.into_result()
    }

    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    pub team: String,
    #[serde(flatten)]
    pub spec: WebhookSpec,
    pub created_at_ms: i64,
}

/// A personal admin token as listed (never the token).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdminToken {
    pub id: String,
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

/// A webhook delivery as shown through the API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryStatus {
    pub id: String,
    pub event: String,
    /// `pending`, `delivered` or `failed` (gave up after its retries).
    pub state: String,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at_ms: Option<i64>,
}

// ------------------------------------------------------------------ audit

/// One admin change: who, what, when, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at_ms: i64,
    /// `root`, or `user:<email>`.
    pub actor: String,
    /// Such as `service.create`, `subscription.approve`.
    pub action: String,
    pub object_kind: String,
    pub object_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    pub request_id: String,
}

/// `amount` as [`crate::money::format`] writes it, when it parses.
fn canonical_amount(amount: &mut String) {
    if let Ok(nanos) = crate::money::parse(amount, crate::money::Sign::NonNegative) {
        *amount = crate::money::format(nanos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_times_have_three_fraction_digits() {
        let at = parse_time_ms("2026-12-01T09:19:20.18Z").unwrap();
        assert_eq!(format_time_ms_fixed(at), "2026-12-01T09:19:20.180Z");
        assert_eq!(format_time_ms_fixed(at + 820), "2026-12-01T09:19:21.000Z");
        assert_eq!(format_time_ms_fixed(0), "1970-01-01T00:00:00.000Z");
        let (earlier, later) = (format_time_ms_fixed(at), format_time_ms_fixed(at + 1));
        assert!(earlier < later, "sorted as text");
    }

    #[test]
    fn state_machine() {
        use SubscriptionAction as A;
        use SubscriptionStatus as S;
        let cases = [
            (A::Approve, S::Pending, Some(S::Active)),
            (A::Reject, S::Pending, Some(S::Rejected)),
            (A::Approve, S::Active, None),
            (A::Suspend, S::Active, Some(S::Suspended)),
            (A::Suspend, S::Pending, None),
            (A::Suspend, S::PastDue, None),
            (A::Resume, S::Suspended, Some(S::Active)),
            (A::Resume, S::Active, None),
            (A::Cancel, S::Active, Some(S::Cancelled)),
            (A::Cancel, S::Cancelled, None),
            (A::Cancel, S::Rejected, None),
            (A::Approve, S::Rejected, None),
        ];
        for (action, from, expected) in cases {
            assert_eq!(action.apply(from), expected, "{action:?} from {from:?}");
        }
    }

    #[test]
    fn plan_prices_and_quotas_are_checked() {
        let plan = |json: serde_json::Value| -> PlanSpec {
            serde_json::from_value(json).unwrap_or_else(|e| unreachable!("{e}"))
        };
        for good in ["0", "0.01", "12.500000000", "5"] {
            let spec = plan(serde_json::json!({"slug": "p", "price_per_request": good}));
            assert!(spec.validate().is_ok(), "{good}");
        }
        for bad in ["", "-1", "1.", ".5", "1.0000000001", "1e3", "abc"] {
            let spec = plan(serde_json::json!({"slug": "p", "monthly_fee": bad}));
            assert!(spec.validate().is_err(), "{bad}");
        }
        let spec = plan(serde_json::json!({"slug": "p", "included": {"requests": 0},
            "overage": "charge", "trial_days": 0}));
        let errors = spec
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for field in ["included.requests", "overage", "trial_days"] {
            assert!(errors.contains(field), "{field} in {errors}");
        }
        // A trial waives a fee: a plan without one has nothing to waive.
        let spec =
            plan(serde_json::json!({"slug": "p", "price_per_request": "0.01", "trial_days": 5}));
        assert!(spec.validate().is_err());
        let spec = plan(serde_json::json!({"slug": "p", "monthly_fee": "10", "trial_days": 5}));
        assert!(spec.validate().is_ok());
        let spec = plan(
            serde_json::json!({"slug": "p", "included": {"requests": 1000},
            "overage": "charge", "price_per_request": "0.001", "monthly_fee": "10"}),
        );
        assert!(spec.validate().is_ok());
        assert_eq!(spec.included_requests(), Some(1000));
        assert_eq!(spec.price_nanos(), 1_000_000);
        assert_eq!(spec.fee_nanos(), 10_000_000_000);
    }

    #[test]
    fn scopes() {
        assert_eq!(
            Scope::parse("weather:read"),
            Some(Scope {
                service: "weather",
                read_only: true
            })
        );
        assert!(Scope::parse("weather").is_some());
        assert!(Scope::parse("weather:write").is_none());
        assert!(Scope::parse("Weather").is_none());
    }

    #[test]
    fn times_round_trip() {
        let ms = parse_time_ms("2027-01-31T00:00:00Z").unwrap_or_default();
        assert_eq!(format_time_ms(ms), "2027-01-31T00:00:00Z");
        assert!(parse_time_ms("tomorrow").is_err());
    }
}
