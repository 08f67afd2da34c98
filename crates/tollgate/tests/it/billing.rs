//! Plans with fees, quotas, trials and overage; subscription periods with
//! renewal, past-due and expiry; app budgets; every 402 of SPEC §4 with its
//! members and headers; `Tollgate-Warning`; `/_tollgate/me` and the problem
//! pages. Through the real binary on SQLite.
//!
//! Periods are months: to make one end, a test moves the subscription's
//! stored period into the past (through the store, as another process
//! would), and the binary's renewal task does the rest.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::money::{grant, ledger, wait_entries, wallet};
use crate::*;

/// Teams, a service `weather` (every path under `/weather` proxied to
/// `upstream`) with `plans`, and an app `acme-web` of team `acme` with a
/// key; `acme` is granted `credit` first. Returns the key.
async fn market(
    tollgate: &Tollgate,
    upstream: &FakeUpstream,
    plans: &[Value],
    credit: Option<&str>,
) -> String {
    for team in ["acme", "weatherco"] {
        tollgate
            .create("/api/v1/teams", json!({"slug": team, "name": team}))
            .await;
    }
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "weather-backend", "team": "weatherco", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "weather", "team": "weatherco", "kind": "http", "base_path": "/weather",
                "upstream": "weather-backend", "visibility": "catalog"}),
        )
        .await;
    tollgate
        .create("/api/v1/services/weather/routes", json!({"path": "/*"}))
        .await;
    for plan in plans {
        tollgate
            .create("/api/v1/services/weather/plans", plan.clone())
            .await;
    }
    tollgate
        .create("/api/v1/services/weather/publish", json!({}))
        .await;
    tollgate
        .create("/api/v1/apps", json!({"slug": "acme-web", "team": "acme"}))
        .await;
    if let Some(amount) = credit {
        let (status, body) = grant(
            tollgate,
            "acme",
            json!({"amount": amount, "reason": "test credit"}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let key = tollgate
        .create("/api/v1/apps/acme-web/keys", json!({"name": "prod"}))
        .await;
    key["key"].as_str().unwrap().to_owned()
}

async fn subscribe(tollgate: &Tollgate, app: &str, plan: &str) -> (reqwest::StatusCode, Value) {
    tollgate
        .admin(
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"app": app, "service": "weather", "plan": plan})),
        )
        .await
}

async fn store_of(tollgate: &Tollgate) -> store::Store {
    store::Store::open(&format!(
        "sqlite://{}/tollgate.db",
        tollgate.data_dir.display()
    ))
    .await
    .unwrap()
}

/// Moves a subscription's stored period so that it ends at `end_ms`
/// (keeping its length), as if that much time had passed.
async fn end_period_at(tollgate: &Tollgate, id: &str, end_ms: i64) {
    let store = store_of(tollgate).await;
    let mut tx = store.begin().await.unwrap();
    let mut subscription = tx.subscription(id).await.unwrap().unwrap();
    let start = subscription.period_start_ms.unwrap();
    let length = subscription.period_end_ms.unwrap() - start;
    let shift = subscription.period_end_ms.unwrap() - end_ms;
    subscription.period_start_ms = Some(end_ms - length);
    subscription.period_end_ms = Some(end_ms);
    subscription.anchor_ms = subscription.anchor_ms.map(|a| a - shift);
    if subscription.trial_end_ms.is_some() {
        subscription.trial_end_ms = Some(end_ms);
    }
    tx.put_subscription(&subscription).await.unwrap();
    tx.commit().await.unwrap();
    store.close().await;
}

async fn subscription(tollgate: &Tollgate, id: &str) -> Value {
    let (status, body) = tollgate
        .admin(Method::GET, &format!("/api/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits (up to 5 s) until the subscription reaches `status`.
async fn wait_subscription(tollgate: &Tollgate, id: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let body = subscription(tollgate, id).await;
        if body["status"] == status {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "subscription still {}, want {status}\n{}",
            body["status"],
            tollgate.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 2 s) until a keyed GET answers `status`; returns it.
async fn wait_call(tollgate: &Tollgate, path: &str, key: &str, status: u16) -> reqwest::Response {
    let started = Instant::now();
    loop {
        let response = tollgate.get_with_key(path, key).await;
        if response.status().as_u16() == status {
            return response;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "GET {path} still {}, want {status}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The members every 402 carries (SPEC §4).
fn assert_money_members(body: &Value) {
    assert_eq!(body["currency"], "USD", "{body}");
    assert!(body["balance"].is_string(), "{body}");
    assert!(
        body["top_up_url"]
            .as_str()
            .unwrap()
            .ends_with("/_tollgate/portal/teams/acme/wallet"),
        "{body}"
    );
    assert!(body["plan"].is_string(), "{body}");
}

fn charges(entries: &[Value]) -> Vec<i64> {
    entries
        .iter()
        .filter(|e| e["kind"] == "charge")
        .map(|e| e["amount_nanos"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn monthly_fees_renew_fall_past_due_and_expire() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[json!({"slug": "pro", "monthly_fee": "10"})],
        Some("15"),
    )
    .await;
    let (status, created) = subscribe(&tollgate, "acme-web", "pro").await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "active");
    let id = created["id"].as_str().unwrap().to_owned();
    let (start, end) = (
        created["period_start_ms"].as_i64().unwrap(),
        created["period_end_ms"].as_i64().unwrap(),
    );
    let days = (end - start) / 86_400_000;
    assert!((28..=31).contains(&days), "a month: {days} days");
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "5.00");
    wait_call(&tollgate, "/weather/now", &key, 200).await;

    // The period ends; 5 left cannot pay 10: past due, and calls get 402.
    end_period_at(&tollgate, &id, domain::now_ms() - 1000).await;
    let past_due = wait_subscription(&tollgate, &id, "past_due").await;
    assert!(past_due["period_end_ms"].as_i64().unwrap() > domain::now_ms());
    let refused = wait_call(&tollgate, "/weather/now", &key, 402).await;
    let body = problem(refused, 402, "payment_failed").await;
    assert_money_members(&body);
    assert_eq!(body["required"], "10.00");
    assert_eq!(body["balance"], "5.00");
    assert!(body["period_end"].is_string(), "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("Top up"),
        "{body}"
    );

    // A top-up: the renewal is retried and goes through.
    grant(
        &tollgate,
        "acme",
        json!({"amount": "10", "reason": "top-up"}),
    )
    .await;
    wait_subscription(&tollgate, &id, "active").await;
    wait_call(&tollgate, "/weather/now", &key, 200).await;
    let entries = ledger(&tollgate, "acme", "").await;
    assert_eq!(charges(&entries), [-10_000_000_000, -10_000_000_000]);
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "5.00");

    // Renewal off: at the period's end the subscription expires.
    let (status, patched) = tollgate
        .admin(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{id}"),
            Some(json!({"auto_renew": false})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["auto_renew"], false);
    let ended = domain::now_ms() - 1000;
    end_period_at(&tollgate, &id, ended).await;
    wait_subscription(&tollgate, &id, "expired").await;
    let refused = wait_call(&tollgate, "/weather/now", &key, 402).await;
    let body = problem(refused, 402, "subscription_expired").await;
    assert_money_members(&body);
    assert_eq!(
        body["expired_at"],
        domain::access::format_time_ms(ended),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("/renew"),
        "{body}"
    );

    // Renewing by hand needs the fee: refused with 402, nothing charged.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/subscriptions/{id}/renew"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["code"], "insufficient_credit");
    assert!(body["detail"].as_str().unwrap().contains("10.00"), "{body}");
    // The members the gateway's 402s carry, for programs.
    assert_money_members(&body);
    assert_eq!(body["required"], "10.00", "{body}");
    grant(
        &tollgate,
        "acme",
        json!({"amount": "5", "reason": "top-up"}),
    )
    .await;
    let renewed_at = domain::now_ms();
    let (status, body) = tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/subscriptions/{id}/renew"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    // A new period from now, not one on the old grid already under way.
    assert!(
        body["period_start_ms"].as_i64().unwrap() >= renewed_at,
        "{body} (renewed at {renewed_at}, expired at {ended})"
    );
    wait_call(&tollgate, "/weather/now", &key, 200).await;
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "0.00");

    // Every step is audited; the renewal task acts as system:billing.
    let (_, audit) = tollgate
        .admin(Method::GET, "/api/v1/audit?limit=100", None)
        .await;
    let actions: Vec<(String, String)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["object_id"] == id.as_str())
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for wanted in [
        ("subscription.past_due", "system:billing"),
        ("subscription.renew", "system:billing"),
        ("subscription.expire", "system:billing"),
        ("subscription.renew", "root"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, b)| (a.as_str(), b.as_str()) == wanted),
            "{wanted:?} in {actions:?}"
        );
    }
}

/// A past-due subscription renewed by hand pays for the period it is in
/// (the unpaid one), not for the month after it.
#[tokio::test]
async fn renewing_a_past_due_subscription_pays_its_unpaid_period() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    market(
        &tollgate,
        &upstream,
        &[json!({"slug": "pro", "monthly_fee": "10", "approval_required": true})],
        None,
    )
    .await;
    let (status, created) = subscribe(&tollgate, "acme-web", "pro").await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, approved) = tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/subscriptions/{id}/approve"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(
        approved["status"], "past_due",
        "an empty wallet: {approved}"
    );
    let unpaid = (
        approved["period_start_ms"].clone(),
        approved["period_end_ms"].clone(),
    );
    assert!(unpaid.1.as_i64().unwrap() > domain::now_ms());

    grant(
        &tollgate,
        "acme",
        json!({"amount": "12", "reason": "top-up"}),
    )
    .await;
    let (status, renewed) = tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/subscriptions/{id}/renew"),
            Some(json!({})),
        )
        .await;
    // 409 only if the renewal task paid it between the two requests.
    assert!(status == 200 || status == 409, "{status} {renewed}");
    let renewed = wait_subscription(&tollgate, &id, "active").await;
    assert_eq!(
        (
            renewed["period_start_ms"].clone(),
            renewed["period_end_ms"].clone()
        ),
        unpaid,
        "the unpaid period is the one paid for"
    );
    let entries = ledger(&tollgate, "acme", "").await;
    let fees: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "charge").collect();
    assert_eq!(fees.len(), 1, "{entries:?}");
    assert_eq!(fees[0]["amount_nanos"], -10_000_000_000i64);
    assert!(
        fees[0]["idempotency_key"]
            .as_str()
            .unwrap()
            .ends_with(&unpaid.0.to_string()),
        "{fees:?}"
    );
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "2.00");
}

#[tokio::test]
async fn fees_are_paid_before_access_trials_are_free_and_expiry_is_announced() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[
            json!({"slug": "pro", "monthly_fee": "10"}),
            json!({"slug": "trial", "monthly_fee": "10", "trial_days": 14, "period_alignment": "calendar"}),
        ],
        None,
    )
    .await;
    // No money, no paid subscription; nothing is recorded.
    let (status, body) = subscribe(&tollgate, "acme-web", "pro").await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["code"], "insufficient_credit");
    assert!(
        body["detail"].as_str().unwrap().contains("10.00 USD"),
        "{body}"
    );
    assert!(ledger(&tollgate, "acme", "").await.is_empty());
    let (_, list) = tollgate
        .admin(Method::GET, "/api/v1/subscriptions", None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");

    // A trial starts free and ends after 14 days.
    let (status, trial) = subscribe(&tollgate, "acme-web", "trial").await;
    assert_eq!(status, 201, "{trial}");
    let id = trial["id"].as_str().unwrap().to_owned();
    let trial_end = trial["trial_end_ms"].as_i64().unwrap();
    assert_eq!(trial["period_end_ms"].as_i64().unwrap(), trial_end);
    let days = (trial_end - trial["period_start_ms"].as_i64().unwrap()) / 86_400_000;
    assert_eq!(days, 14);
    let ok = wait_call(&tollgate, "/weather/now", &key, 200).await;
    assert_eq!(
        header(&ok, "tollgate-warning"),
        "",
        "nothing to warn of yet"
    );

    // Two days before its end, with a wallet that cannot pay the fee,
    // every response says so.
    end_period_at(&tollgate, &id, domain::now_ms() + 2 * 86_400_000 - 60_000).await;
    let started = Instant::now();
    loop {
        let response = tollgate.get_with_key("/weather/now", &key).await;
        let warning = header(&response, "tollgate-warning");
        if warning == "subscription-expiring;days=2" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{warning:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The trial ends with no money: past due. With money: the first paid
    // period runs to the month's end, its fee prorated.
    end_period_at(&tollgate, &id, domain::now_ms() - 1000).await;
    wait_subscription(&tollgate, &id, "past_due").await;
    wait_call(&tollgate, "/weather/now", &key, 402).await;
    grant(
        &tollgate,
        "acme",
        json!({"amount": "20", "reason": "top-up"}),
    )
    .await;
    let active = wait_subscription(&tollgate, &id, "active").await;
    let (start, end) = (
        active["period_start_ms"].as_i64().unwrap(),
        active["period_end_ms"].as_i64().unwrap(),
    );
    let month = domain::billing::period_containing(
        domain::billing::Alignment::Calendar,
        0,
        domain::now_ms(),
    );
    assert_eq!(end, month.1, "calendar-aligned: ends with the month");
    let expected = domain::billing::prorate(
        domain::billing::Alignment::Calendar,
        10_000_000_000,
        start,
        end,
    );
    let entries = ledger(&tollgate, "acme", "&kind=charge").await;
    assert_eq!(charges(&entries), [-expected]);
    wait_call(&tollgate, "/weather/now", &key, 200).await;

    // One trial per app and service: cancelling and subscribing again
    // starts a paid period, its fee charged now.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/subscriptions/{id}/cancel"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, again) = subscribe(&tollgate, "acme-web", "trial").await;
    assert_eq!(status, 201, "{again}");
    assert!(again["trial_end_ms"].is_null(), "{again}");
    assert_eq!(again["status"], "active", "{again}");
    let entries = ledger(&tollgate, "acme", "&kind=charge").await;
    assert_eq!(entries.len(), 2, "the new period's fee: {entries:?}");
}

#[tokio::test]
async fn quotas_block_or_charge_and_say_so_in_headers() {
    let data_dir = tempfile::tempdir().unwrap();
    let options = || test_support::tollgate::Options::in_dir(data_dir.path());
    let tollgate = Tollgate::start_with(BIN, options()).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[
            json!({"slug": "starter", "included": {"requests": 10}}),
            json!({"slug": "metered", "included": {"requests": 2}, "overage": "charge",
                "price_per_request": "0.5"}),
        ],
        Some("1"),
    )
    .await;
    let (status, body) = subscribe(&tollgate, "acme-web", "starter").await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let first = wait_call(&tollgate, "/weather/now", &key, 200).await;
    assert_eq!(
        header(&first, "ratelimit-policy"),
        "\"quota\";q=10;w=2592000".replace(
            "2592000",
            &((body["period_end_ms"].as_i64().unwrap()
                - body["period_start_ms"].as_i64().unwrap())
                / 1000)
                .to_string(),
        )
    );
    assert!(
        header(&first, "ratelimit").starts_with("\"quota\";r=9;t="),
        "{}",
        header(&first, "ratelimit")
    );
    assert_eq!(header(&first, "tollgate-balance"), "1.00 USD");
    // Failed calls do not use the quota (two: a third would eject the
    // only target).
    for _ in 0..2 {
        let failed = tollgate.get_with_key("/weather/status/503", &key).await;
        assert!(failed.status().is_server_error(), "{}", failed.status());
        // Nor do its headers count it: 9 remain, as after the first call.
        assert!(
            header(&failed, "ratelimit").starts_with("\"quota\";r=9;t="),
            "{}",
            header(&failed, "ratelimit")
        );
    }
    let mut warnings = Vec::new();
    for _ in 2..=10 {
        let response = tollgate.get_with_key("/weather/now", &key).await;
        assert_eq!(response.status(), 200);
        warnings.push(header(&response, "tollgate-warning"));
    }
    assert_eq!(warnings[7], "quota-nearly-exhausted;used-percent=90");
    assert_eq!(warnings[8], "quota-nearly-exhausted;used-percent=100");
    assert_eq!(warnings[0], "");
    let hits = upstream.hits();
    let refused = tollgate.get_with_key("/weather/now", &key).await;
    let retry_after: i64 = header(&refused, "retry-after").parse().unwrap();
    let body = problem(refused, 402, "quota_exhausted").await;
    assert_money_members(&body);
    assert_eq!(
        (body["quota"].as_u64(), body["used"].as_u64()),
        (Some(10), Some(10))
    );
    let period_end = subscription(&tollgate, &id).await["period_end_ms"]
        .as_i64()
        .unwrap();
    assert_eq!(
        body["period_end"],
        domain::access::format_time_ms(period_end)
    );
    let to_reset = (period_end - domain::now_ms()) / 1000;
    assert!(
        (to_reset - 5..=to_reset + 5).contains(&retry_after),
        "Retry-After {retry_after} ≈ time to the reset {to_reset}"
    );
    assert_eq!(upstream.hits(), hits, "the refused call never reached it");

    // The count is recorded and survives a restart.
    let started = Instant::now();
    while subscription(&tollgate, &id).await["usage"]["requests"] != 10 {
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tollgate.stop().await;
    let tollgate = Tollgate::start_with(BIN, options()).await;
    let again = tollgate.get_with_key("/weather/now", &key).await;
    problem(again, 402, "quota_exhausted").await;
    // With renewal off the quota does not reset by itself: no Retry-After,
    // and the detail says how to get a new one.
    let (status, body) = tollgate
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/subscriptions/{id}"),
            Some(json!({"auto_renew": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    loop {
        let refused = tollgate.get_with_key("/weather/now", &key).await;
        let waits = refused.headers().contains_key("retry-after");
        let body = problem(refused, 402, "quota_exhausted").await;
        if !waits {
            assert!(
                body["detail"].as_str().unwrap().contains("renewal is off"),
                "{body}"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Overage `charge`: the included calls are free, the rest are charged.
    tollgate
        .create(
            "/api/v1/apps",
            json!({"slug": "acme-batch", "team": "acme"}),
        )
        .await;
    let batch_key = tollgate
        .create("/api/v1/apps/acme-batch/keys", json!({}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = subscribe(&tollgate, "acme-batch", "metered").await;
    assert_eq!(status, 201, "{body}");
    let mut balances = Vec::new();
    let first = wait_call(&tollgate, "/weather/now", &batch_key, 200).await;
    balances.push(header(&first, "tollgate-balance"));
    for _ in 0..3 {
        let response = tollgate.get_with_key("/weather/now", &batch_key).await;
        assert_eq!(response.status(), 200);
        balances.push(header(&response, "tollgate-balance"));
    }
    assert_eq!(balances, ["1.00 USD", "1.00 USD", "0.50 USD", "0.00 USD"]);
    let refused = tollgate.get_with_key("/weather/now", &batch_key).await;
    let body = problem(refused, 402, "insufficient_credit").await;
    assert_eq!(
        (body["required"].as_str(), body["balance"].as_str()),
        (Some("0.50"), Some("0.00"))
    );
}

#[tokio::test]
async fn app_budgets_cap_spend_per_period() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[json!({"slug": "per-call", "price_per_request": "0.45"})],
        Some("100"),
    )
    .await;
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"budget": {"amount": "1", "period": "day"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = subscribe(&tollgate, "acme-web", "per-call").await;
    assert_eq!(status, 201, "{body}");
    let first = wait_call(&tollgate, "/weather/now", &key, 200).await;
    assert_eq!(header(&first, "tollgate-warning"), "");
    let second = tollgate.get_with_key("/weather/now", &key).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        header(&second, "tollgate-warning"),
        "budget-nearly-exhausted;used-percent=90"
    );
    // `/_tollgate/me` says it too.
    let me = tollgate.json_with_key("/_tollgate/me", &key).await;
    assert_eq!(
        me["budget"]["warnings"],
        json!(["budget-nearly-exhausted;used-percent=90"]),
        "{me}"
    );
    let refused = tollgate.get_with_key("/weather/now", &key).await;
    let retry_after: i64 = header(&refused, "retry-after").parse().unwrap();
    let body = problem(refused, 402, "budget_exhausted").await;
    assert_money_members(&body);
    assert_eq!(
        (
            body["budget"].as_str(),
            body["spent"].as_str(),
            body["required"].as_str()
        ),
        (Some("1.00"), Some("0.90"), Some("0.45"))
    );
    let tomorrow =
        domain::billing::budget_period(domain::billing::BudgetPeriod::Day, domain::now_ms()).1;
    assert_eq!(body["period_end"], domain::access::format_time_ms(tomorrow));
    assert!(retry_after > 0 && retry_after <= 86_400, "{retry_after}");
    // The wallet paid for the two calls and not for the refused one.
    wait_entries(&tollgate, 3).await;
    let entries = ledger(&tollgate, "acme", "&kind=charge").await;
    assert_eq!(charges(&entries), [-450_000_000, -450_000_000]);

    // A budget smaller than one call: waiting for its reset cannot help,
    // so no `Retry-After`, and the detail says why.
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"budget": {"amount": "0.40", "period": "day"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    let refused = loop {
        let refused = tollgate.get_with_key("/weather/now", &key).await;
        if refused.headers().get("retry-after").is_none()
            || started.elapsed() > Duration::from_secs(2)
        {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused.headers().get("retry-after").is_none(),
        "{:?}",
        refused.headers()
    );
    let body = problem(refused, 402, "budget_exhausted").await;
    assert!(
        body["detail"].as_str().unwrap().contains("whole budget"),
        "{body}"
    );

    // Bad budgets are refused with the field named.
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"budget": {"amount": "1.0000000001", "period": "day"}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("budget.amount"),
        "{body}"
    );

    // A bigger budget lets calls through again.
    tollgate
        .admin(
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"budget": {"amount": "2", "period": "day"}})),
        )
        .await;
    wait_call(&tollgate, "/weather/now", &key, 200).await;
}

#[tokio::test]
async fn me_shows_balance_subscriptions_quotas_and_warnings() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[
            json!({"slug": "metered", "included": {"requests": 5}, "overage": "charge",
            "price_per_request": "0.01"}),
        ],
        Some("0.5"),
    )
    .await;
    subscribe(&tollgate, "acme-web", "metered").await;
    wait_call(&tollgate, "/weather/now", &key, 200).await;

    let anonymous = tollgate.get("/_tollgate/me").await;
    problem(anonymous, 401, "missing_credentials").await;
    let wrong = tollgate.get_with_key("/_tollgate/me", "tg_live_nope").await;
    problem(wrong, 401, "invalid_credentials").await;

    let me: Value = tollgate.json_with_key("/_tollgate/me", &key).await;
    assert_eq!(
        (me["team"].as_str(), me["app"].as_str()),
        (Some("acme"), Some("acme-web")),
        "{me}"
    );
    assert_eq!(me["currency"], "USD");
    assert_eq!(me["balance"], "0.50");
    assert_eq!(me["open_reservations"], "0.00");
    assert!(
        me["key"]["prefix"]
            .as_str()
            .unwrap()
            .starts_with("tg_live_")
    );
    let subscription = &me["subscriptions"][0];
    assert_eq!(subscription["service"], "weather");
    assert_eq!(subscription["plan"], "metered");
    assert_eq!(subscription["status"], "active");
    assert_eq!(subscription["price_per_request"], "0.01");
    assert_eq!(subscription["quota"]["included"], 5);
    assert_eq!(subscription["quota"]["used"], 1);
    assert_eq!(subscription["quota"]["overage"], "charge");
    // The 4 included calls left are free; then 0.50 pays 50 at 0.01.
    assert_eq!(subscription["calls_left"], 54);
    assert_eq!(
        subscription["warnings"],
        json!(["low-balance;calls-left=54"]),
        "{me}"
    );
    assert!(subscription["period_end"].is_string());
    // A free call says so too.
    let response = tollgate.get_with_key("/weather/now", &key).await;
    assert_eq!(response.status(), 200);
    let warning = header(&response, "tollgate-warning");
    assert!(warning.contains("low-balance;calls-left=53"), "{warning}");
}

/// Included calls count before the balance: no low-balance warning while
/// many are left, whatever the wallet holds.
#[tokio::test]
async fn included_calls_are_not_a_low_balance() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[
            json!({"slug": "roomy", "included": {"requests": 1000}, "overage": "charge",
            "price_per_request": "0.01"}),
        ],
        None,
    )
    .await;
    subscribe(&tollgate, "acme-web", "roomy").await;
    let response = wait_call(&tollgate, "/weather/now", &key, 200).await;
    assert!(
        response.headers().get("tollgate-warning").is_none(),
        "{:?}",
        response.headers()
    );
    let me: Value = tollgate.json_with_key("/_tollgate/me", &key).await;
    let subscription = &me["subscriptions"][0];
    assert_eq!(subscription["calls_left"], 999, "{me}");
    assert_eq!(subscription["warnings"], json!([]), "{me}");
}

#[tokio::test]
async fn problem_pages_explain_every_code() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = gateway_with(&upstream).await;
    let index = tollgate.get("/_tollgate/problems").await;
    assert_eq!(index.status(), 200);
    assert!(header(&index, "content-type").starts_with("text/html"));
    let html = index.text().await.unwrap();
    assert_eq!(
        html.matches("<li>").count(),
        domain::code::Code::ALL.len(),
        "every code is listed"
    );
    assert!(html.contains("request-timeout"), "{html}");

    let page = tollgate
        .get("/_tollgate/problems/insufficient-credit")
        .await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for part in [
        "Insufficient credit",
        "What happened",
        "How to fix it",
        "How to prevent it",
        "402",
    ] {
        assert!(html.contains(part), "{part} in {html}");
    }
    let json: Value = tollgate
        .client
        .get(format!(
            "{}/_tollgate/problems/quota_exhausted",
            tollgate.gateway_url
        ))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["status"], 402);
    for field in ["cause", "fix", "prevent"] {
        assert!(json[field].as_str().unwrap().len() > 20, "{json}");
    }
    // An unknown code is a refusal like any other (code, type, request
    // id), and the pages are read, not posted to.
    let unknown = tollgate.get("/_tollgate/problems/no-such-code").await;
    let body = problem(unknown, 404, "route_not_found").await;
    assert!(
        body["detail"].as_str().unwrap().contains("no-such-code"),
        "{body}"
    );
    let posted = tollgate
        .client
        .post(format!(
            "{}/_tollgate/problems/quota-exhausted",
            tollgate.gateway_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.headers()["allow"], "GET, HEAD");
    problem(posted, 405, "method_not_allowed").await;
    // The `type` of a refusal leads to its page.
    let refused = tollgate.get("/nowhere").await;
    let body = problem(refused, 404, "route_not_found").await;
    let path = body["type"]
        .as_str()
        .unwrap()
        .split("/_tollgate")
        .nth(1)
        .unwrap()
        .to_owned();
    let page = tollgate.get(&format!("/_tollgate{path}")).await;
    assert_eq!(page.status(), 200);
    // A 402's `top_up_url` leads to a page that says how to top up (and
    // shows nothing of the wallet: it takes no credentials).
    let top_up = tollgate.get("/_tollgate/portal/teams/acme/wallet").await;
    assert_eq!(top_up.status(), 200);
    let html = top_up.text().await.unwrap();
    assert!(
        html.contains("/api/v1/teams/acme/wallet/checkout"),
        "{html}"
    );
    let unknown = tollgate
        .get("/_tollgate/portal/teams/Not%20A%20Slug/wallet")
        .await;
    problem(unknown, 404, "route_not_found").await;
}

#[tokio::test]
async fn warnings_fire_webhooks_once_per_crossing() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let receiver = test_support::webhook::WebhookReceiver::start(0).await;
    let key = market(
        &tollgate,
        &upstream,
        &[
            json!({"slug": "metered", "included": {"requests": 10}, "overage": "charge",
            "price_per_request": "0.01"}),
        ],
        Some("1.5"),
    )
    .await;
    tollgate
        .create(
            "/api/v1/teams/acme/webhooks",
            json!({"url": receiver.url(), "events": ["warning.low_balance", "warning.quota_nearly_exhausted"]}),
        )
        .await;
    let (status, body) = subscribe(&tollgate, "acme-web", "metered").await;
    assert_eq!(status, 201, "{body}");
    let subscription = body["id"].as_str().unwrap().to_owned();
    wait_call(&tollgate, "/weather/now", &key, 200).await;
    // 10 included calls (the quota crosses 90 %), then 60 priced ones: 0.90
    // left pays 90 calls, under the 100 of a low balance.
    for _ in 1..70 {
        let response = tollgate.get_with_key("/weather/now", &key).await;
        assert_eq!(response.status(), 200);
    }
    receiver.wait_for(2, Duration::from_secs(10)).await;
    // More calls and more checks change nothing: once per crossing.
    for _ in 0..5 {
        tollgate.get_with_key("/weather/now", &key).await;
    }
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let received = receiver.received();
    let events: Vec<Value> = received.iter().map(|r| r.json()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "warning.low_balance")
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "warning.quota_nearly_exhausted")
            .count(),
        1,
        "{kinds:?}"
    );
    let low = events
        .iter()
        .find(|e| e["type"] == "warning.low_balance")
        .unwrap();
    assert_eq!(low["data"]["team"], "acme");
    assert!(low["data"]["calls_left"].as_i64().unwrap() < 100, "{low}");
    let quota = events
        .iter()
        .find(|e| e["type"] == "warning.quota_nearly_exhausted")
        .unwrap();
    assert_eq!(quota["data"]["subscription"], subscription.as_str());
    assert!(quota["data"]["used_percent"].as_u64().unwrap() >= 90);
    // Signed like every webhook.
    assert!(
        received[0]
            .header("tollgate-signature")
            .is_some_and(|s| s.starts_with("t="))
    );
}

/// The team pays a 5 top-up through Checkout, so it becomes a Stripe
/// customer; returns the customer's id.
pub(crate) async fn stripe_customer(
    tollgate: &Tollgate,
    stripe: &test_support::stripe::FakeStripe,
    team: &str,
) -> String {
    let (status, session) = tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/teams/{team}/wallet/checkout"),
            Some(json!({"amount": "5"})),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    let paid = stripe.complete(session["session_id"].as_str().unwrap());
    let customer = serde_json::from_str::<Value>(&paid.body).unwrap()["data"]["object"]["customer"]
        .as_str()
        .unwrap()
        .to_owned();
    let delivered = tollgate
        .client
        .post(format!(
            "{}/_tollgate/webhooks/stripe",
            tollgate.gateway_url
        ))
        .header("stripe-signature", &paid.signature)
        .body(paid.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 200);
    customer
}

/// The environment for Stripe with a usage meter.
pub(crate) fn stripe_env(
    stripe: &test_support::stripe::FakeStripe,
    meter: &str,
) -> Vec<(String, String)> {
    use test_support::stripe::{SECRET_KEY, WEBHOOK_SECRET};
    vec![
        ("TOLLGATE_STRIPE__SECRET_KEY".into(), SECRET_KEY.into()),
        (
            "TOLLGATE_STRIPE__WEBHOOK_SECRET".into(),
            WEBHOOK_SECRET.into(),
        ),
        ("TOLLGATE_STRIPE__API_BASE".into(), stripe.url()),
        ("TOLLGATE_USAGE_EXPORT__STRIPE_METER".into(), meter.into()),
    ]
}

#[tokio::test]
async fn usage_events_reach_a_cloudevents_sink_and_stripe_meters_at_least_once() {
    let stripe = test_support::stripe::FakeStripe::start().await;
    // The sink refuses the first two batches: they are sent again.
    let sink = test_support::webhook::WebhookReceiver::start(2).await;
    let mut env = stripe_env(&stripe, "api_calls");
    env.push(("TOLLGATE_USAGE_EXPORT__CLOUDEVENTS_URL".into(), sink.url()));
    let options = test_support::tollgate::Options {
        env,
        ..Default::default()
    };
    let tollgate = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[
            json!({"slug": "metered", "included": {"requests": 3}, "overage": "charge",
            "price_per_request": "0.01"}),
        ],
        None,
    )
    .await;
    let customer = stripe_customer(&tollgate, &stripe, "acme").await;
    subscribe(&tollgate, "acme-web", "metered").await;

    // Ten calls, each with its own request id, each answered once.
    for n in 0..10 {
        let started = Instant::now();
        loop {
            let response = tollgate
                .client
                .get(format!("{}/weather/now", tollgate.gateway_url))
                .bearer_auth(&key)
                .header("x-request-id", format!("use-{n}"))
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{}",
                response.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The sink gets every event, the first ones more than once.
    let started = Instant::now();
    let events: std::collections::BTreeMap<String, Value> = loop {
        let received = sink.received();
        let events: std::collections::BTreeMap<String, Value> = received
            .iter()
            .filter(|r| r.header("content-type") == Some("application/cloudevents-batch+json"))
            .flat_map(|r| r.json().as_array().cloned().unwrap_or_default())
            .map(|e| (e["id"].as_str().unwrap().to_owned(), e))
            .collect();
        if events.len() >= 10 && received.len() >= 3 {
            break events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} events in {} posts\n{}",
            events.len(),
            received.len(),
            tollgate.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<&str> = events.keys().map(String::as_str).collect();
    let expected: Vec<String> = (0..10).map(|n| format!("use-{n}")).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    let first = &events["use-0"];
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["type"], "dev.tollgate.usage");
    assert_eq!(first["data"]["team"], "acme");
    assert_eq!(first["data"]["service"], "weather");
    assert_eq!(first["data"]["units"]["requests"], 1);
    let cost: i64 = events
        .values()
        .map(|e| e["data"]["cost_nanos"].as_i64().unwrap())
        .sum();
    assert_eq!(cost, 7 * 10_000_000, "3 included calls, 7 at 0.01");
    let charged: i64 = ledger(&tollgate, "acme", "&kind=charge")
        .await
        .iter()
        .map(|e| -e["amount_nanos"].as_i64().unwrap())
        .sum();
    assert_eq!(charged, cost, "the events add up to the ledger's charges");

    // Stripe's meter has one event per call, for the team's customer.
    let started = Instant::now();
    while stripe.meter_events().len() < 10 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let meter = stripe.meter_events();
    assert_eq!(meter.len(), 10);
    for event in &meter {
        assert_eq!(event["event_name"], "api_calls");
        assert_eq!(event["payload[stripe_customer_id]"], customer);
        assert_eq!(event["payload[value]"], "1");
        assert!(event["identifier"].starts_with("use-"));
    }
}

#[tokio::test]
async fn subscriptions_from_before_periods_are_given_one_without_a_fee() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[json!({"slug": "pro", "monthly_fee": "10"})],
        Some("10"),
    )
    .await;
    let (_, created) = subscribe(&tollgate, "acme-web", "pro").await;
    let id = created["id"].as_str().unwrap().to_owned();
    // As an upgrade finds it: active, no period.
    let store = store_of(&tollgate).await;
    let mut tx = store.begin().await.unwrap();
    let mut legacy = tx.subscription(&id).await.unwrap().unwrap();
    legacy.period_start_ms = None;
    legacy.period_end_ms = None;
    legacy.anchor_ms = None;
    tx.put_subscription(&legacy).await.unwrap();
    tx.commit().await.unwrap();
    store.close().await;
    let started = Instant::now();
    let adopted = loop {
        let body = subscription(&tollgate, &id).await;
        if body["period_end_ms"].is_i64() {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(adopted["status"], "active");
    assert_eq!(
        adopted["period_start_ms"].as_i64().unwrap(),
        created["created_at_ms"].as_i64().unwrap(),
        "the period that holds now, anchored at its creation"
    );
    assert_eq!(
        charges(&ledger(&tollgate, "acme", "").await),
        [-10_000_000_000],
        "only the first fee: adopting charges nothing"
    );
    wait_call(&tollgate, "/weather/now", &key, 200).await;
}

/// A subscription moves to another plan of its service at once: a dearer
/// fee is charged for the rest of the period (the difference), the calls
/// counted in the period count against the new quota (no fresh one), and
/// a move back to a cheaper plan charges nothing now. A plan that needs
/// approval, or the plan it has, is refused.
#[tokio::test]
async fn a_subscription_changes_plan_without_a_fresh_quota() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let key = market(
        &tollgate,
        &upstream,
        &[
            json!({"slug": "small", "included": {"requests": 2}, "monthly_fee": "10"}),
            json!({"slug": "large", "included": {"requests": 3}, "monthly_fee": "40"}),
            json!({"slug": "vip", "monthly_fee": "1", "approval_required": true}),
        ],
        Some("100"),
    )
    .await;
    let (status, body) = subscribe(&tollgate, "acme-web", "small").await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    wait_call(&tollgate, "/weather/now", &key, 200).await;
    assert_eq!(
        tollgate.get_with_key("/weather/now", &key).await.status(),
        200
    );
    let refused = tollgate.get_with_key("/weather/now", &key).await;
    problem(refused, 402, "quota_exhausted").await;

    let change = |plan: &'static str| {
        let tollgate = &tollgate;
        let path = format!("/api/v1/subscriptions/{id}/change-plan");
        async move {
            tollgate
                .admin(Method::POST, &path, Some(json!({"plan": plan})))
                .await
        }
    };
    let (status, changed) = change("large").await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["plan"], "large");
    assert_eq!(changed["id"], id.as_str(), "the same subscription");
    // The fee difference (30) for the rest of the period, just begun.
    wait_entries(&tollgate, 3).await;
    let mut fees = charges(&ledger(&tollgate, "acme", "&kind=charge").await);
    fees.sort_unstable();
    assert_eq!(fees.len(), 2, "{fees:?}");
    assert_eq!(fees[1], -10_000_000_000, "the first period's fee");
    assert!(
        (-30_000_000_000..=-29_990_000_000).contains(&fees[0]),
        "{fees:?}"
    );
    // Two of the new plan's three calls are used already: one more.
    wait_call(&tollgate, "/weather/now", &key, 200).await;
    let refused = tollgate.get_with_key("/weather/now", &key).await;
    problem(refused, 402, "quota_exhausted").await;

    let (status, body) = change("vip").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = change("large").await;
    assert_eq!(status, 400, "{body}");
    // Back to the cheaper plan: nothing charged now; and up again in the
    // same period: its difference is paid already.
    let (status, body) = change("small").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        charges(&ledger(&tollgate, "acme", "&kind=charge").await).len(),
        2
    );
    let (status, body) = change("large").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        charges(&ledger(&tollgate, "acme", "&kind=charge").await).len(),
        2
    );
    // The node's wallet holds nothing back for that: it says what the
    // ledger says.
    let balance = wallet(&tollgate, "acme").await["balance"].clone();
    let me = tollgate.json_with_key("/_tollgate/me", &key).await;
    assert_eq!(me["available"], balance, "{me}");
    let (status, body) = change("small").await;
    assert_eq!(status, 200, "{body}");
    // Each change is audited.
    let (_, audit) = tollgate
        .admin(
            Method::GET,
            "/api/v1/audit?action=subscription.change_plan",
            None,
        )
        .await;
    assert_eq!(audit["data"].as_array().map(Vec::len), Some(4), "{audit}");
}
