//! Wallets and the ledger through the admin API.
//!
//! - `GET /teams/{team}/wallet`: the balance (any member).
//! - `GET /teams/{team}/wallet/ledger`: entries, oldest first, filtered by
//!   `kind`, `since`, `until` (RFC 3339 or epoch ms); `format=csv` for a
//!   spreadsheet (any member).
//! - `POST /teams/{team}/wallet/grants` and `/adjustments`: platform
//!   operators only (a team cannot give itself money). Each is one ledger
//!   entry with the actor, a reason and an idempotency key (the
//!   `Idempotency-Key` header or `idempotency_key` field): sending the same
//!   key again returns the entry it recorded (200) instead of a second one;
//!   the same key with a different amount or kind is a 409.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::access::{Role, Team};
use domain::money::{self, EntryKind, LedgerEntry, Sign};
use serde::{Deserialize, Serialize};
use store::{Appended, LedgerFilter, NewEntry};

use crate::AdminState;
use crate::access::{Audit, Caller, NONE, audit};
use crate::error::ApiError;
use crate::extract::{Json, ListParams};
use crate::handlers::{ListResponse, commit, ok};
use crate::tenancy::{team_in, team_or_404};

/// A team's wallet.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WalletView {
    pub team: String,
    pub currency: String,
    /// Decimal string, such as `"12.50"`.
    pub balance: String,
    /// The same in nano-units (10⁻⁹ of the currency).
    pub balance_nanos: i64,
    /// Ledger entries recorded.
    pub entries: i64,
    pub updated_at_ms: i64,
}

/// One ledger entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    pub id: String,
    pub team: String,
    pub kind: EntryKind,
    /// Signed decimal string: credits positive, charges negative.
    pub amount: String,
    pub amount_nanos: i64,
    pub currency: String,
    pub idempotency_key: String,
    pub actor: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub created_at_ms: i64,
}

/// A grant (positive) or an adjustment (either sign).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryRequest {
    /// Decimal string with at most 9 decimals, such as `"25"` or `"-0.50"`.
    pub amount: String,
    /// Why; shown in the ledger and the audit log.
    pub reason: String,
    /// Makes the request safe to repeat; also accepted as the
    /// `Idempotency-Key` header.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A recorded entry and the wallet after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryResult {
    pub entry: EntryView,
    pub wallet: WalletView,
    /// `true` when the idempotency key had been used: nothing new was recorded.
    pub replayed: bool,
}

fn entry_view(entry: LedgerEntry, team: &Team, currency: &str) -> EntryView {
    EntryView {
        id: entry.id,
        team: team.spec.slug.clone(),
        kind: entry.kind,
        amount: money::format(entry.amount_nanos),
        amount_nanos: entry.amount_nanos,
        currency: currency.to_owned(),
        idempotency_key: entry.idempotency_key,
        actor: entry.actor,
        reason: entry.reason,
        request_id: entry.request_id,
        created_at_ms: entry.created_at_ms,
    }
}

fn wallet_view(wallet: store::Wallet, team: &Team, currency: &str) -> WalletView {
    WalletView {
        team: team.spec.slug.clone(),
        currency: currency.to_owned(),
        balance: money::format(wallet.balance_nanos),
        balance_nanos: wallet.balance_nanos,
        entries: wallet.entries,
        updated_at_ms: wallet.updated_at_ms,
    }
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/wallet", tag = "wallets",
    params(("team" = String, Path, description = "slug or id")),
    responses((status = 200, body = WalletView), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_wallet(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let team = team_or_404(&state, &caller, &key).await?;
    let wallet = state.store.wallet(&team.id).await?;
    Ok(ok(&wallet_view(wallet, &team, &state.currency)))
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/wallet/ledger", tag = "wallets",
    params(("team" = String, Path, description = "slug or id"),
        ("kind" = Option<String>, Query, description = "top_up, grant, charge, refund or adjustment"),
        ("since" = Option<String>, Query, description = "RFC 3339 time or epoch milliseconds (inclusive)"),
        ("until" = Option<String>, Query, description = "RFC 3339 time or epoch milliseconds (exclusive)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
        ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<EntryView>), (status = 404, body = crate::openapi::Problem)))]
pub async fn list_ledger(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&["kind", "since", "until", "format"])?;
    let team = team_or_404(&state, &caller, &key).await?;
    let kind = params
        .filter("kind")
        .map(|text| {
            EntryKind::parse(text).ok_or_else(|| {
                ApiError::field(
                    "kind",
                    "must be one of top_up, grant, charge, refund, adjustment",
                )
            })
        })
        .transpose()?;
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        params
            .filter(name)
            .map(|text| match text.parse::<i64>() {
                Ok(ms) => Ok(ms),
                Err(_) => domain::access::parse_time_ms(text).map_err(|_| {
                    ApiError::field(name, "must be an RFC 3339 time or epoch milliseconds")
                }),
            })
            .transpose()
    };
    let filter = LedgerFilter {
        kind,
        since_ms: time("since")?,
        until_ms: time("until")?,
    };
    if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms)
        && since >= until
    {
        return Err(ApiError::field("until", "must be after since"));
    }
    let csv = match params.filter("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::field("format", "must be json or csv")),
    };
    let page = state
        .store
        .ledger(&team.id, &filter, params.after.as_deref(), params.limit)
        .await?;
    let page = store::Page {
        items: page
            .items
            .into_iter()
            .map(|entry| entry_view(entry, &team, &state.currency))
            .collect(),
        next_after: page.next_after,
    };
    if csv {
        return Ok(csv_response(&page));
    }
    Ok(ok(&ListResponse::from(page)))
}

/// The page as CSV (RFC 4180); the next cursor, if any, in `Link`-free
/// form as the `Tollgate-Next-Cursor` header.
fn csv_response(page: &store::Page<EntryView>) -> Response {
    use crate::observe::csv_field as field;
    let mut out = String::from(
        "id,created_at,kind,amount,currency,idempotency_key,actor,reason,request_id\r\n",
    );
    for entry in &page.items {
        let created = domain::access::format_time_ms(entry.created_at_ms);
        for (index, value) in [
            entry.id.as_str(),
            created.as_str(),
            entry.kind.as_str(),
            entry.amount.as_str(),
            entry.currency.as_str(),
            entry.idempotency_key.as_str(),
            entry.actor.as_str(),
            entry.reason.as_deref().unwrap_or(""),
            entry.request_id.as_deref().unwrap_or(""),
        ]
        .into_iter()
        .enumerate()
        {
            if index > 0 {
                out.push(',');
            }
            field(&mut out, value);
        }
        out.push_str("\r\n");
    }
    crate::observe::text_response(out, "text/csv; charset=utf-8", page.next_after.as_deref())
}

/// Grant credit (platform admins). Also served at `…/wallet/grants`.
#[utoipa::path(post, path = "/api/v1/teams/{team}/wallet/credits", tag = "wallets",
    params(("team" = String, Path, description = "slug or id"),
        ("Idempotency-Key" = Option<String>, Header, description = "makes the request safe to repeat")),
    request_body = EntryRequest,
    responses((status = 201, body = EntryResult), (status = 200, body = EntryResult, description = "replayed"),
        (status = 403, body = crate::openapi::Problem), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_grant(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    headers: HeaderMap,
    Json(request): Json<EntryRequest>,
) -> Result<Response, ApiError> {
    record(&state, &caller, &key, &headers, request, EntryKind::Grant).await
}

#[utoipa::path(post, path = "/api/v1/teams/{team}/wallet/adjustments", tag = "wallets",
    params(("team" = String, Path, description = "slug or id"),
        ("Idempotency-Key" = Option<String>, Header, description = "makes the request safe to repeat")),
    request_body = EntryRequest,
    responses((status = 201, body = EntryResult), (status = 200, body = EntryResult, description = "replayed"),
        (status = 403, body = crate::openapi::Problem), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_adjustment(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    headers: HeaderMap,
    Json(request): Json<EntryRequest>,
) -> Result<Response, ApiError> {
    record(
        &state,
        &caller,
        &key,
        &headers,
        request,
        EntryKind::Adjustment,
    )
    .await
}

/// Longest idempotency key and reason accepted.
const MAX_KEY_LEN: usize = 200;
const MAX_REASON_LEN: usize = 500;

async fn record(
    state: &AdminState,
    caller: &Caller,
    key: &str,
    headers: &HeaderMap,
    request: EntryRequest,
    kind: EntryKind,
) -> Result<Response, ApiError> {
    // Validate everything first, so one answer lists every problem.
    let mut errors = domain::validate::FieldErrors::new();
    let sign = if kind == EntryKind::Grant {
        Sign::Positive
    } else {
        Sign::NonZero
    };
    let amount = money::parse(&request.amount, sign)
        .map_err(|error| errors.add("amount", error.to_string()))
        .ok();
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON_LEN {
        errors.add(
            "reason",
            format!("must say why, in 1 to {MAX_REASON_LEN} characters"),
        );
    }
    let header_key = headers
        .get("idempotency-key")
        .map(|value| value.to_str().map(str::to_owned));
    let idempotency_key = match (header_key, request.idempotency_key) {
        (Some(Err(_)), _) => {
            errors.add("Idempotency-Key", "must be printable ASCII");
            None
        }
        (Some(Ok(header)), Some(body)) if header != body => {
            errors.add("idempotency_key", "differs from the Idempotency-Key header");
            None
        }
        (Some(Ok(key)), _) | (None, Some(key)) => Some(key),
        (None, None) => None,
    };
    if let Some(key) = &idempotency_key
        && (key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control))
    {
        errors.add(
            "idempotency_key",
            format!("must be 1 to {MAX_KEY_LEN} printable characters"),
        );
    } else if let Some(key) = &idempotency_key
        && key.trim() != key
    {
        // ` order-1` and `order-1` would be two keys that read as one.
        errors.add("idempotency_key", "must not start or end with spaces");
    }
    if let Some(prefix) = idempotency_key
        .as_deref()
        .and_then(domain::money::system_key_prefix)
    {
        errors.add(
            "idempotency_key",
            format!(
                "starts with '{prefix}', which the ledger keeps for its own entries (call charges, period fees, Stripe payments and entries given no key); choose a key of your own, such as an order or ticket number"
            ),
        );
    }
    errors.into_result()?;
    let Some(amount) = amount else {
        return Err(ApiError::internal("amount missing after validation"));
    };
    let mut tx = state.store.begin().await?;
    let team = team_in(&mut tx, caller, key, Role::Viewer).await?;
    caller.require_platform()?;
    // Money taken out is held where calls in flight hold theirs first.
    let held = match hold_debit(state, &team.spec.slug, -amount).await {
        Ok(held) => held,
        Err(available) => {
            // A retry of an entry already written (or being written by
            // the first try, whose hold made this one short) is replayed,
            // not refused.
            if let Some(key) = &idempotency_key
                && let Some(existing) = tx.entry_by_key(&team.id, key, domain::now_ms()).await?
            {
                drop(tx);
                return replay(state, existing, &team, kind, amount).await;
            }
            return Err(ApiError::conflict(
                "amount",
                format!(
                    "would take the balance below zero: {} {} is available now (the balance less what calls in flight hold)",
                    money::format(available),
                    state.currency
                ),
            ));
        }
    };
    let now = domain::now_ms();
    let id = domain::id::new_id();
    let entry = NewEntry {
        entry: LedgerEntry {
            id: id.clone(),
            team_id: team.id.clone(),
            kind,
            amount_nanos: amount,
            idempotency_key: idempotency_key.unwrap_or_else(|| format!("{}:{id}", kind.as_str())),
            actor: caller.actor(),
            reason: Some(reason.to_owned()),
            request_id: crate::error::REQUEST_ID.try_with(Clone::clone).ok(),
            created_at_ms: now,
        },
        // An adjustment may take money out, but not more than there is.
        min_balance_after: (amount < 0).then_some(0),
    };
    match tx.append_entry(entry).await? {
        Appended::Existing(existing) => {
            drop(tx);
            replay(state, existing, &team, kind, amount).await
        }
        Appended::Created(entry, wallet) => {
            let action = format!("wallet.{}", kind.as_str());
            let view = entry_view(entry, &team, &state.currency);
            audit(
                &mut tx,
                caller,
                Audit::new(&action, "ledger_entry", &view.id, Some(&team.spec.slug)),
                NONE,
                Some(&view),
            )
            .await?;
            hold_entries(held.as_deref(), &tx);
            commit(state, tx).await?;
            if let Some(held) = held {
                held.keep();
            }
            // A credit is spendable on this node when the answer comes
            // (other nodes see it at their next sync, within 200 ms).
            if amount > 0
                && let Some(holds) = &state.holds
            {
                holds.sync().await;
            }
            let result = EntryResult {
                entry: view,
                wallet: wallet_view(wallet, &team, &state.currency),
                replayed: false,
            };
            Ok((StatusCode::CREATED, axum::Json(result)).into_response())
        }
    }
}

/// The answer to an entry sent again with its idempotency key: the entry
/// as recorded, or a conflict when the key was used for another one.
async fn replay(
    state: &AdminState,
    existing: LedgerEntry,
    team: &Team,
    kind: EntryKind,
    amount: i64,
) -> Result<Response, ApiError> {
    if existing.kind != kind || existing.amount_nanos != amount {
        return Err(ApiError::conflict(
            "idempotency_key",
            format!(
                "was used for a {} of {} {}; use a new key for a different entry",
                existing.kind.as_str(),
                money::format(existing.amount_nanos),
                state.currency
            ),
        ));
    }
    let wallet = state.store.wallet(&team.id).await?;
    let result = EntryResult {
        entry: entry_view(existing, team, &state.currency),
        wallet: wallet_view(wallet, team, &state.currency),
        replayed: true,
    };
    Ok(ok(&result))
}

// ------------------------------------------------------------------ holds

/// The wallets calls are paid from, provided by the binary. A debit the
/// admin API writes (a fee, a negative adjustment) is first held there,
/// where calls in flight hold their prices: it competes with them
/// fairly, and a wallet that cannot pay both refuses one of them instead
/// of going below zero once every charge has landed.
pub trait Holds: Send + Sync {
    /// Holds `nanos` from team `team`'s wallet (by slug), after bringing
    /// it up to date with the ledger; else says what it has available.
    fn hold<'a>(&'a self, team: &'a str, nanos: i64) -> HoldFuture<'a>;
    /// Brings the node's wallets up to date with the ledger: a credit
    /// just committed is spendable on this node once it returns.
    fn sync(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// What [`Holds::hold`] returns.
pub type HoldFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Box<dyn Held>, i64>> + Send + 'a>>;

/// Money held for one debit. Dropped, it goes back to the wallet.
pub trait Held: Send {
    /// The ledger entry that carries the debit (appended, before commit).
    fn entry(&self, entry_id: &str);
    /// After the commit: the debit stays taken.
    fn keep(self: Box<Self>);
}

/// Holds `nanos` from `team`'s wallet when the binary provides wallets
/// (`Ok(None)` otherwise, or for nothing to hold).
pub(crate) async fn hold_debit(
    state: &AdminState,
    team: &str,
    nanos: i64,
) -> Result<Option<Box<dyn Held>>, i64> {
    match &state.holds {
        Some(holds) if nanos > 0 => holds.hold(team, nanos).await.map(Some),
        _ => Ok(None),
    }
}

/// Tells a debit's hold the entries its transaction appended (a debit's
/// transaction appends only that debit's entry).
pub(crate) fn hold_entries(held: Option<&dyn Held>, tx: &store::WriteTx) {
    if let Some(held) = held {
        for entry in tx.appended_entries() {
            held.entry(entry);
        }
    }
}

// --------------------------------------------------------------- checkout

/// Hosted payment pages (Stripe Checkout), provided by the binary: the
/// admin API knows what to ask for, not how to reach the provider.
pub trait PaymentProvider: Send + Sync {
    fn create_checkout(
        &self,
        request: CheckoutRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<CheckoutSession, PaymentError>> + Send + '_>,
    >;
}

/// A top-up to collect.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub team_id: String,
    pub team_slug: String,
    /// In the currency's minor unit (cents for USD).
    pub amount_minor: i64,
    pub amount_nanos: i64,
    /// ISO 4217, upper case.
    pub currency: String,
    pub success_url: String,
    pub cancel_url: String,
    /// Passed on, so a retried request opens one session.
    pub idempotency_key: Option<String>,
}

/// What the provider made.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckoutSession {
    pub id: String,
    /// Where the payer goes to pay.
    pub url: String,
}

#[derive(Debug)]
pub enum PaymentError {
    /// The provider refused the request (its message).
    Refused(String),
    /// The provider could not be reached or failed.
    Unavailable(String),
    /// The idempotency key was used before with other parameters.
    KeyReused,
}

/// An amount a card can be charged: positive, and whole in the currency's
/// minor unit (cents for USD). Returns (nano-units, minor units).
fn payable_amount(
    text: &str,
    currency: &str,
    errors: &mut domain::validate::FieldErrors,
) -> Option<(i64, i64)> {
    match money::parse(text, Sign::Positive) {
        Ok(nanos) => {
            let minor = money::to_minor(nanos, currency);
            if minor.is_none() {
                errors.add(
                    "amount",
                    format!(
                        "{currency} amounts have at most {} decimals",
                        money::minor_digits(currency)
                    ),
                );
            }
            minor.map(|minor| (nanos, minor))
        }
        Err(error) => {
            errors.add("amount", error.to_string());
            None
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// Decimal string in the deployment's currency, within its minor unit
    /// (at most 2 decimals for USD).
    pub amount: String,
    /// Where the payer lands after paying (default: the portal's wallet page).
    #[serde(default)]
    pub success_url: Option<String>,
    /// Where the payer lands after giving up.
    #[serde(default)]
    pub cancel_url: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckoutView {
    pub checkout_url: String,
    pub session_id: String,
    pub amount: String,
    pub currency: String,
}

/// Start a wallet top-up through Stripe Checkout (team admins). The
/// wallet is credited when Stripe's signed `checkout.session.completed`
/// webhook arrives, never before.
#[utoipa::path(post, path = "/api/v1/teams/{team}/wallet/checkout", tag = "wallets",
    params(("team" = String, Path, description = "slug or id"),
        ("Idempotency-Key" = Option<String>, Header, description = "passed to Stripe, scoped to the team: a retried request opens one session; reused with other parameters, 409")),
    request_body = CheckoutBody,
    responses((status = 201, body = CheckoutView), (status = 409, body = crate::openapi::Problem), (status = 502, body = crate::openapi::Problem),
        (status = 503, body = crate::openapi::Problem)))]
pub async fn create_checkout(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CheckoutBody>,
) -> Result<Response, ApiError> {
    let currency = state.currency.to_string();
    let mut errors = domain::validate::FieldErrors::new();
    let amount = payable_amount(&body.amount, &currency, &mut errors);
    for (field, url) in [
        ("success_url", &body.success_url),
        ("cancel_url", &body.cancel_url),
    ] {
        if let Some(url) = url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            errors.add(field, "must be an http:// or https:// URL");
        }
    }
    let idempotency_key = match headers.get("idempotency-key").map(HeaderValue::to_str) {
        Some(Ok(key)) if !key.is_empty() && key.len() <= MAX_KEY_LEN => Some(key.to_owned()),
        Some(_) => {
            errors.add(
                "Idempotency-Key",
                format!("must be 1 to {MAX_KEY_LEN} printable characters"),
            );
            None
        }
        None => None,
    };
    let mut tx = state.store.begin().await?;
    let team = team_in(&mut tx, &caller, &key, Role::Admin).await?;
    drop(tx);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let Some((amount_nanos, amount_minor)) = amount else {
        return Err(ApiError::internal("checkout amount"));
    };
    let Some(payments) = state.payments.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "payments_not_configured",
            "Top-ups through Stripe are not configured on this deployment (stripe.secret_key and stripe.webhook_secret). Ask the operator, or for a platform grant.",
        ));
    };
    let wallet_page = format!(
        "{}/_tollgate/portal/teams/{}/wallet",
        state.public_url, team.spec.slug
    );
    let session = payments
        .create_checkout(CheckoutRequest {
            team_id: team.id.clone(),
            team_slug: team.spec.slug.clone(),
            amount_minor,
            amount_nanos,
            currency: currency.clone(),
            success_url: body
                .success_url
                .unwrap_or_else(|| format!("{wallet_page}?checkout=success")),
            cancel_url: body
                .cancel_url
                .unwrap_or_else(|| format!("{wallet_page}?checkout=cancelled")),
            idempotency_key,
        })
        .await
        .map_err(|error| match error {
            PaymentError::KeyReused => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "This Idempotency-Key opened a checkout with other parameters (amount or URLs): repeat that request as it was, or use a new key for this one.",
            ),
            PaymentError::Refused(message) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "payment_provider_refused",
                format!("Stripe refused the checkout: {message}"),
            ),
            PaymentError::Unavailable(message) => {
                tracing::warn!(%message, "stripe checkout failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "payment_provider_unavailable",
                    "Stripe could not be reached or failed; nothing was charged. Try again in a moment.",
                )
            }
        })?;
    let view = CheckoutView {
        checkout_url: session.url.clone(),
        session_id: session.id.clone(),
        amount: money::format(amount_nanos),
        currency,
    };
    let mut tx = state.store.begin().await?;
    audit(
        &mut tx,
        &caller,
        Audit::new("wallet.checkout", "wallet", &team.id, Some(&team.spec.slug)),
        NONE,
        Some(&serde_json::json!({"session_id": session.id, "amount": view.amount})),
    )
    .await?;
    commit(&state, tx).await?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

// ------------------------------------------------------------ auto top-up

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoTopUpBody {
    /// Top up when the balance falls under this (decimal string, ≥ 0).
    pub threshold: String,
    /// How much to charge each time (decimal string, within the
    /// currency's minor unit).
    pub amount: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AutoTopUpView {
    pub team: String,
    pub threshold: String,
    pub amount: String,
    pub currency: String,
    /// Whether a card is saved (a Checkout top-up was paid before).
    pub card_saved: bool,
    /// The last try and how it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

async fn auto_top_up_view(
    state: &AdminState,
    team: &Team,
    rule: &store::AutoTopUp,
) -> Result<AutoTopUpView, ApiError> {
    let payer = state.store.stripe_payer(&team.id).await?;
    Ok(AutoTopUpView {
        team: team.spec.slug.clone(),
        threshold: money::format(rule.threshold_nanos),
        amount: money::format(rule.amount_nanos),
        currency: state.currency.to_string(),
        card_saved: payer.is_some_and(|(_, card)| card.is_some()),
        last_attempt_at_ms: (rule.last_attempt_at_ms > 0).then_some(rule.last_attempt_at_ms),
        last_error: rule.last_error.clone(),
    })
}

/// The team's auto top-up rule (any member).
#[utoipa::path(get, path = "/api/v1/teams/{team}/wallet/auto-top-up", tag = "wallets",
    params(("team" = String, Path, description = "slug or id")),
    responses((status = 200, body = AutoTopUpView), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_auto_top_up(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let team = team_or_404(&state, &caller, &key).await?;
    let rule = state
        .store
        .auto_top_up(&team.id)
        .await?
        .ok_or_else(|| ApiError::not_found("auto top-up of team", &key))?;
    Ok(ok(&auto_top_up_view(&state, &team, &rule).await?))
}

/// Set the team's auto top-up (team owners and admins): when the balance
/// falls under `threshold`, the card saved with the last Checkout is
/// charged `amount`.
#[utoipa::path(put, path = "/api/v1/teams/{team}/wallet/auto-top-up", tag = "wallets",
    params(("team" = String, Path, description = "slug or id")), request_body = AutoTopUpBody,
    responses((status = 200, body = AutoTopUpView), (status = 400, body = crate::openapi::Problem)))]
pub async fn put_auto_top_up(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(body): Json<AutoTopUpBody>,
) -> Result<Response, ApiError> {
    let currency = state.currency.to_string();
    let mut errors = domain::validate::FieldErrors::new();
    let threshold = money::parse(&body.threshold, Sign::NonNegative)
        .map_err(|error| errors.add("threshold", error.to_string()))
        .ok();
    let amount = payable_amount(&body.amount, &currency, &mut errors).map(|(nanos, _)| nanos);
    let mut tx = state.store.begin().await?;
    let team = team_in(&mut tx, &caller, &key, Role::Admin).await?;
    let (Some(threshold_nanos), Some(amount_nanos)) = (threshold, amount) else {
        return Err(ApiError::validation(errors));
    };
    if state.payments.is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "payments_not_configured",
            "Auto top-up charges through Stripe, which is not configured on this deployment.",
        ));
    }
    let rule = store::AutoTopUp {
        team_id: team.id.clone(),
        threshold_nanos,
        amount_nanos,
        last_attempt_at_ms: 0,
        last_error: None,
    };
    tx.put_auto_top_up(&rule, domain::now_ms()).await?;
    let view = auto_top_up_view(&state, &team, &rule).await?;
    audit(
        &mut tx,
        &caller,
        Audit::new(
            "wallet.auto_top_up.set",
            "wallet",
            &team.id,
            Some(&team.spec.slug),
        ),
        NONE,
        Some(&view),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(ok(&view))
}

/// Turn the team's auto top-up off (team owners and admins).
#[utoipa::path(delete, path = "/api/v1/teams/{team}/wallet/auto-top-up", tag = "wallets",
    params(("team" = String, Path, description = "slug or id")),
    responses((status = 204), (status = 404, body = crate::openapi::Problem)))]
pub async fn delete_auto_top_up(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let team = team_in(&mut tx, &caller, &key, Role::Admin).await?;
    if !tx.delete_auto_top_up(&team.id).await? {
        return Err(ApiError::not_found("auto top-up of team", &key));
    }
    audit(
        &mut tx,
        &caller,
        Audit::new(
            "wallet.auto_top_up.delete",
            "wallet",
            &team.id,
            Some(&team.spec.slug),
        ),
        NONE,
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
