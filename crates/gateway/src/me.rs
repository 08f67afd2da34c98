//! The caller's own view (SPEC §5): `GET /_tollgate/me` (what the key's
//! app and team have, owe and may use, with the warnings a call would
//! carry) and `GET /_tollgate/problems[/<code>]` (what each refusal code
//! means, how to fix it and how to prevent it). Read from the snapshot and
//! the in-memory wallets and counters, like the hot path.

use domain::access::format_time_ms;
use domain::code::Code;
use domain::money::format;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::access::{AppRt, SubscriptionRt};
use crate::body::GatewayBody;
use crate::refusal::Refusal;
use crate::snapshot::Snapshot;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /_tollgate/me`, authenticated with the app's key.
pub(crate) fn me<B>(
    snapshot: &Snapshot,
    request: &Request<B>,
    currency: &str,
) -> Result<Response<GatewayBody>, Refusal> {
    let now = domain::now_ms();
    let key = crate::admit::identify_key(snapshot, request, now)?;
    let app = &key.app;
    let wallet = &app.wallet;
    let available = wallet.available();
    let mut subscriptions: Vec<Value> = app
        .subscriptions
        .iter()
        .map(|(_, subscription)| subscription_view(app, subscription, currency, now))
        .collect();
    subscriptions.sort_by(|a, b| a["service"].as_str().cmp(&b["service"].as_str()));
    let budget = app.budget.as_ref().map(|budget| {
        budget.counter.roll(now);
        let (start, end) = budget.counter.period();
        let spent = u64::try_from(budget.counter.nanos()).unwrap_or(0);
        let limit = u64::try_from(budget.limit_nanos).unwrap_or(u64::MAX);
        // As the responses say it (`Tollgate-Warning`).
        let warnings: Vec<String> = crate::warn::nearly_exhausted(spent, limit)
            .map(|percent| format!("budget-nearly-exhausted;used-percent={percent}"))
            .into_iter()
            .collect();
        json!({
            "amount": format(budget.limit_nanos),
            "spent": format(budget.counter.nanos()),
            "period_start": format_time_ms(start),
            "period_end": format_time_ms(end),
            "warnings": warnings,
        })
    });
    let body = json!({
        "team": app.team,
        "app": app.slug,
        "key": {
            "prefix": &*key.prefix,
            "expires_at": key.expires_at_ms.map(format_time_ms),
        },
        "currency": currency,
        // What the wallet holds less this node's unrecorded charges; calls
        // in flight hold `open_reservations` of it.
        "balance": format(available + wallet.reserved()),
        "available": format(available),
        "open_reservations": format(wallet.reserved()),
        "budget": budget,
        "subscriptions": subscriptions,
    });
    Ok(respond(
        StatusCode::OK,
        "application/json",
        body.to_string(),
    ))
}

fn subscription_view(
    app: &AppRt,
    subscription: &SubscriptionRt,
    currency: &str,
    now: i64,
) -> Value {
    let terms = &subscription.terms;
    let mut warnings = Vec::new();
    let mut view = json!({
        "id": &*subscription.id,
        "service": subscription.service(),
        "plan": subscription.plan(),
        "status": subscription.status.as_str(),
        "auto_renew": terms.auto_renew,
        "price_per_request": format(subscription.price_nanos),
        "monthly_fee": format(terms.fee_nanos),
        "currency": currency,
    });
    if let Some((start, end)) = terms.period {
        view["period_start"] = format_time_ms(start).into();
        view["period_end"] = format_time_ms(end).into();
        if let Some(days) = crate::warn::expiring(subscription, app.wallet.available(), now) {
            warnings.push(format!("subscription-expiring;days={days}"));
        }
    }
    if let Some(counter) = &terms.counter {
        let used = counter.requests();
        view["used"] = used.into();
        view["spent"] = format(counter.nanos()).into();
        if let Some(included) = terms.included {
            view["quota"] = json!({
                "included": included,
                "used": used,
                "remaining": included.saturating_sub(used),
                "overage": if terms.overage_charge { "charge" } else { "block" },
            });
            if let Some(percent) = crate::warn::nearly_exhausted(used, included) {
                warnings.push(format!("quota-nearly-exhausted;used-percent={percent}"));
            }
        }
    }
    // A plan's token quota (AI services), like the requests one.
    if let Some(tokens) = &subscription.tokens
        && let Some(included) = tokens.included
    {
        let used = tokens.counter.requests();
        view["token_quota"] = json!({
            "included": included,
            "used": used,
            "remaining": included.saturating_sub(used),
            "overage": if tokens.overage_charge { "charge" } else { "block" },
        });
        if let Some(percent) = crate::warn::nearly_exhausted(used, included) {
            warnings.push(format!(
                "token-quota-nearly-exhausted;used-percent={percent}"
            ));
        }
    }
    // Included calls left count: a call within the quota is free.
    if let Some(calls_left) = crate::warn::calls_left(subscription, app.wallet.available()) {
        view["calls_left"] = calls_left.into();
        if calls_left < crate::warn::LOW_BALANCE_CALLS {
            warnings.push(format!("low-balance;calls-left={calls_left}"));
        }
    }
    view["warnings"] = warnings.into();
    view
}

/// `GET /_tollgate/problems` (the list) and `/_tollgate/problems/<code>`:
/// HTML for people, JSON when the `Accept` header asks for it.
pub(crate) fn problem_page<B>(
    request: &Request<B>,
    rest: &str,
) -> Result<Response<GatewayBody>, Refusal> {
    let wants_json = wants_json(request);
    let rest = rest.trim_matches('/');
    if rest.is_empty() {
        let codes: Vec<Value> = Code::ALL
            .iter()
            .map(|&code| json!({"code": code.as_str(), "status": code.status(), "title": code.title(), "page": format!("/_tollgate/problems/{}", code.slug())}))
            .collect();
        if wants_json {
            return Ok(respond(
                StatusCode::OK,
                "application/json",
                json!({"problems": codes}).to_string(),
            ));
        }
        let mut items = String::new();
        for code in Code::ALL {
            items.push_str(&format!(
                "<li><a href=\"/_tollgate/problems/{}\">{} <code>{}</code></a>: {}</li>\n",
                code.slug(),
                code.status(),
                code.as_str(),
                escape(code.title())
            ));
        }
        return Ok(respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page("Tollgate refusal codes", &format!("<ul>\n{items}</ul>")),
        ));
    }
    let Some(code) = Code::parse(rest) else {
        // A refusal like any other: code, type, request id.
        return Err(Refusal::new(
            Code::RouteNotFound,
            format!("There is no refusal code '{rest}'. The list is at /_tollgate/problems."),
        ));
    };
    let explained = domain::problems::explain(code);
    if wants_json {
        return Ok(respond(
            StatusCode::OK,
            "application/json",
            json!({
                "code": code.as_str(),
                "status": code.status(),
                "title": code.title(),
                "cause": explained.cause,
                "fix": explained.fix,
                "prevent": explained.prevent,
            })
            .to_string(),
        ));
    }
    let body = format!(
        "<p class=\"status\">HTTP {} · <code>{}</code></p>\n<h2>What happened</h2>\n<p>{}</p>\n\
         <h2>How to fix it</h2>\n<p>{}</p>\n<h2>How to prevent it</h2>\n<p>{}</p>\n\
         <p><a href=\"/_tollgate/problems\">All refusal codes</a></p>",
        code.status(),
        code.as_str(),
        markup(explained.cause),
        markup(explained.fix),
        markup(explained.prevent),
    );
    Ok(respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page(code.title(), &body),
    ))
}

/// `GET /_tollgate/portal/teams/<team>/wallet`: where a 402's
/// `top_up_url` leads. It tells how the team's wallet is topped up; it
/// shows nothing of the wallet itself (it takes no credentials).
pub(crate) fn top_up_page<B>(
    request: &Request<B>,
    team: &str,
) -> Result<Response<GatewayBody>, Refusal> {
    if !domain::id::is_slug(team) {
        return Err(Refusal::new(
            Code::RouteNotFound,
            "No such page: a wallet page is /_tollgate/portal/teams/<team slug>/wallet.",
        ));
    }
    let checkout = format!("/api/v1/teams/{team}/wallet/checkout");
    if wants_json(request) {
        return Ok(respond(
            StatusCode::OK,
            "application/json",
            json!({
                "team": team,
                "checkout": {"method": "POST", "path": checkout, "body": {"amount": "25"},
                             "who": "an owner or admin of the team (admin API token)"},
                "auto_top_up": format!("/api/v1/teams/{team}/wallet/auto-top-up"),
                "grant": "the platform operator: tollgate wallet grant --team <team> --amount <amount> --reason <why>",
            })
            .to_string(),
        ));
    }
    let body = format!(
        "<p>Calls by team <code>{team}</code>'s apps are paid from the team's wallet. \
         When it runs short, calls are refused with <code>402</code>; topping it up lets them through at once.</p>\n\
         <h2>Top up</h2>\n<p>An owner or admin of the team asks for a payment page (Stripe Checkout) through the admin API, \
         then pays there; the money is in the wallet as soon as the payment completes:</p>\n\
         <pre>curl -X POST &lt;admin API&gt;{checkout} \\\n  -H 'Authorization: Bearer &lt;your admin token&gt;' \\\n  -H 'Content-Type: application/json' -d '{{\"amount\": \"25\"}}'</pre>\n\
         <p>Without card payments configured, ask the platform's operator for a grant.</p>\n\
         <h2>Never run short</h2>\n<p>Set an automatic top-up (<code>PUT /api/v1/teams/{team}/wallet/auto-top-up</code>), \
         watch the <code>Tollgate-Balance</code> and <code>Tollgate-Warning</code> headers of each answer, \
         and <code>GET /_tollgate/me</code> with an app's key for the balance and what is due.</p>",
        team = escape(team)
    );
    Ok(respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page(&format!("Top up team {}", escape(team)), &body),
    ))
}

/// Whether the caller asked for JSON rather than a page.
fn wants_json<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("json") && !accept.contains("text/html"))
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Tollgate</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#222}}\
         code{{background:#f3f3f3;padding:0 .25em;border-radius:3px}}.status{{color:#666}}</style>\
         </head><body><h1>{title}</h1>\n{body}\n</body></html>\n",
        title = escape(title)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escapes, then turns `code spans` into `<code>`.
fn markup(text: &str) -> String {
    let escaped = escape(text);
    let mut out = String::with_capacity(escaped.len() + 16);
    for (index, part) in escaped.split('`').enumerate() {
        if index % 2 == 1 {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Finds an app's logged calls by request id (the binary reads its call
/// log), for `GET /_tollgate/requests/<id>`. Off the hot path.
pub trait CallLookup: Send + Sync {
    /// The calls of `app` (of `team`) with `request_id`, newest first.
    fn find<'a>(
        &'a self,
        request_id: &'a str,
        team: &'a str,
        app: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Vec<domain::calls::CallEntry>> + Send + 'a>,
    >;
}

/// `GET /_tollgate/requests/<id>`, authenticated with the app's key: what
/// happened to one of the app's own calls, the decision code and the
/// numbers behind it (SPEC §5).
pub(crate) async fn request<B>(
    snapshot: &Snapshot,
    lookup: Option<&dyn CallLookup>,
    request: &Request<B>,
    request_id: &str,
    (public_url, currency): (&str, &str),
) -> Result<Response<GatewayBody>, Refusal> {
    let key = crate::admit::identify_key(snapshot, request, domain::now_ms())?;
    let not_found = || {
        Refusal::new(
            Code::RequestNotFound,
            format!(
                "Your app '{}' made no logged call with the request id '{request_id}'. Calls are logged within a second; ids of other apps' calls are not shown.",
                key.app.slug
            ),
        )
    };
    let Some(lookup) = lookup else {
        return Err(not_found());
    };
    if request_id.is_empty() || request_id.len() > 128 {
        return Err(not_found());
    }
    let own = lookup.find(request_id, &key.app.team, &key.app.slug).await;
    let Some(call) = own.first() else {
        return Err(not_found());
    };
    let problem: Option<Value> = call
        .problem
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok());
    let decision = match call.code.as_deref().and_then(Code::parse) {
        Some(code) => {
            let explanation = domain::problems::explain(code);
            json!({
                "outcome": "refused",
                "code": code.as_str(),
                "title": code.title(),
                "detail": problem.as_ref().and_then(|p| p.get("detail")).cloned(),
                "cause": explanation.cause,
                "fix": explanation.fix,
                "prevent": explanation.prevent,
                "page": format!("{public_url}/_tollgate/problems/{}", code.slug()),
            })
        }
        None if call.status >= 500 => json!({"outcome": "upstream_failed", "code": null}),
        None => json!({"outcome": "answered", "code": null}),
    };
    let millis = domain::calls::millis;
    let body = json!({
        "request_id": call.request_id,
        "time": domain::access::format_time_ms_fixed(call.at_ms),
        "method": call.method,
        "path": call.path,
        "status": call.status,
        "decision": decision,
        "problem": problem,
        "service": call.service,
        "plan": call.plan,
        "app": call.app,
        "team": call.consumer_team,
        "key_prefix": call.key_prefix,
        "cost": format(call.cost_nanos),
        "currency": currency,
        "latency_ms": millis(call.latency_us),
        "upstream_latency_ms": call.upstream_latency_us.map(millis),
        "bytes_in": call.bytes_in,
        "bytes_out": call.bytes_out,
        "completed": call.completed,
        "model": call.model,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "calls_with_this_id": own.len(),
    });
    Ok(respond(
        StatusCode::OK,
        "application/json",
        body.to_string(),
    ))
}
