//! Wallet top-ups through Stripe Checkout (a local fake of Stripe's API and
//! webhooks): the session, the signed webhook that credits exactly once,
//! refunds, and every way a webhook can be wrong.

use reqwest::Method;
use serde_json::Value;
use test_support::stripe::{FakeStripe, SECRET_KEY, SignedEvent, WEBHOOK_SECRET, signature};

use crate::money::{ledger, wallet};
use crate::*;

/// A node that takes payments through `stripe`.
fn stripe_options(stripe: &FakeStripe) -> test_support::tollgate::Options {
    test_support::tollgate::Options {
        env: vec![
            ("TOLLGATE_STRIPE__SECRET_KEY".into(), SECRET_KEY.into()),
            (
                "TOLLGATE_STRIPE__WEBHOOK_SECRET".into(),
                WEBHOOK_SECRET.into(),
            ),
            ("TOLLGATE_STRIPE__API_BASE".into(), stripe.url()),
        ],
        ..Default::default()
    }
}

async fn with_stripe(stripe: &FakeStripe) -> Tollgate {
    let tollgate = Tollgate::start_with(BIN, stripe_options(stripe)).await;
    for team in ["acme", "other"] {
        tollgate
            .create("/api/v1/teams", json!({"slug": team, "name": team}))
            .await;
    }
    tollgate
}

async fn checkout(tollgate: &Tollgate, body: Value, idempotency_key: Option<&str>) -> (u16, Value) {
    let mut request = tollgate
        .client
        .post(format!(
            "{}/api/v1/teams/acme/wallet/checkout",
            tollgate.admin_url
        ))
        .bearer_auth(test_support::tollgate::ADMIN_TOKEN)
        .json(&body);
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn deliver(tollgate: &Tollgate, body: &str, signature: Option<&str>) -> (u16, Value) {
    let mut request = tollgate
        .client
        .post(format!(
            "{}/_tollgate/webhooks/stripe",
            tollgate.gateway_url
        ))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn send(tollgate: &Tollgate, event: &SignedEvent) -> (u16, Value) {
    deliver(tollgate, &event.body, Some(&event.signature)).await
}

#[tokio::test]
async fn a_checkout_credits_the_wallet_once_on_the_signed_webhook() {
    let stripe = FakeStripe::start().await;
    let tollgate = with_stripe(&stripe).await;
    let (status, first) = checkout(&tollgate, json!({"amount": "25"}), Some("top-up-1")).await;
    assert_eq!(status, 201, "{first}\n{}", tollgate.log());
    assert_eq!(first["amount"], "25.00");
    assert_eq!(first["currency"], "USD");
    assert!(
        first["checkout_url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.stripe.com/c/pay/cs_test_")
    );
    let form = stripe.last_form();
    assert_eq!(form["mode"], "payment");
    assert_eq!(form["line_items[0][price_data][unit_amount]"], "2500");
    assert_eq!(form["line_items[0][price_data][currency]"], "usd");
    assert_eq!(form["metadata[tollgate_team]"], "acme");
    assert!(
        form["success_url"].ends_with("/_tollgate/portal/teams/acme/wallet?checkout=success"),
        "{form:?}"
    );
    // A retried request (same Idempotency-Key) opens no second session.
    let (status, again) = checkout(&tollgate, json!({"amount": "25"}), Some("top-up-1")).await;
    assert_eq!(status, 201);
    assert_eq!(again["session_id"], first["session_id"]);
    assert_eq!(stripe.sessions().len(), 1);
    // Stripe's keys are the account's: the key it gets is the team's.
    let sent = stripe.last_headers()["idempotency-key"].clone();
    assert!(
        sent.starts_with("tollgate-checkout:") && sent.ends_with(":top-up-1") && sent.len() > 30,
        "{sent}"
    );
    // The same key for another amount is refused; nothing is opened.
    let (status, body) = checkout(&tollgate, json!({"amount": "30"}), Some("top-up-1")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("Idempotency-Key"),
        "{body}"
    );
    assert_eq!(stripe.sessions().len(), 1);
    // Nothing is credited before Stripe says the payment went through.
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "0.00");

    let session = first["session_id"].as_str().unwrap();
    let paid = stripe.complete(session);
    // Tampered, stale, unsigned and wrongly signed events change nothing.
    let tampered = paid
        .body
        .replace("\"amount_total\":2500", "\"amount_total\":250000");
    assert_ne!(tampered, paid.body);
    let (status, body) = deliver(&tollgate, &tampered, Some(&paid.signature)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("signature_mismatch"))
    );
    // A problem like every refusal: with its request id, never cached.
    let response = tollgate
        .client
        .post(format!(
            "{}/_tollgate/webhooks/stripe",
            tollgate.gateway_url
        ))
        .header("stripe-signature", &paid.signature)
        .body(tampered.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["request_id"], id, "{problem}");
    assert!(problem["type"].is_string(), "{problem}");
    let stale = signature(WEBHOOK_SECRET, domain::now_ms() / 1000 - 301, &paid.body);
    let (status, body) = deliver(&tollgate, &paid.body, Some(&stale)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("signature_stale"))
    );
    let (status, body) = deliver(&tollgate, &paid.body, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("signature_missing"))
    );
    let forged = signature("whsec_someone_else", domain::now_ms() / 1000, &paid.body);
    let (status, _) = deliver(&tollgate, &paid.body, Some(&forged)).await;
    assert_eq!(status, 400);
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "0.00");

    // The real one credits; replays, even concurrent, never again.
    let (status, body) = send(&tollgate, &paid).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credited"], "25.00");
    let replays = (0..10).map(|_| send(&tollgate, &paid));
    for (status, body) in futures_util::future::join_all(replays).await {
        assert_eq!(status, 200);
        assert_eq!(body["duplicate"], true, "{body}");
    }
    let after = wallet(&tollgate, "acme").await;
    assert_eq!(after["balance"], "25.00");
    let entries = ledger(&tollgate, "acme", "").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "top_up");
    assert_eq!(entries[0]["actor"], "stripe");
    assert_eq!(
        entries[0]["idempotency_key"],
        format!("stripe:checkout:{session}")
    );

    // Refunds: Stripe reports the cumulative amount; each new part is one
    // refund entry, a repeated report nothing, and never more than paid.
    let (status, body) = send(&tollgate, &stripe.refund(session, 1000)).await;
    assert_eq!(
        (status, body["refunded"].as_str()),
        (200, Some("10.00")),
        "{body}"
    );
    let (_, body) = send(&tollgate, &stripe.refund(session, 1000)).await;
    assert_eq!(body["duplicate"], true);
    let (_, body) = send(&tollgate, &stripe.refund(session, 2500)).await;
    assert_eq!(body["refunded"], "15.00");
    let (_, body) = send(&tollgate, &stripe.refund(session, 9999)).await;
    assert_eq!(body["duplicate"], true, "capped at what was paid: {body}");
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "0.00");
    let refunds = ledger(&tollgate, "acme", "&kind=refund").await;
    assert_eq!(refunds.len(), 2);

    // Events Tollgate does not act on are acknowledged.
    let other = test_support::stripe::SignedEvent {
        body: json!({"id": "evt_x", "type": "customer.created", "data": {"object": {}}})
            .to_string(),
        signature: String::new(),
    };
    let signed = signature(WEBHOOK_SECRET, domain::now_ms() / 1000, &other.body);
    let (status, body) = deliver(&tollgate, &other.body, Some(&signed)).await;
    assert_eq!(
        (status, body["ignored"].as_str()),
        (200, Some("customer.created"))
    );
    let (status, _) = tollgate
        .client
        .get(format!(
            "{}/_tollgate/webhooks/stripe",
            tollgate.gateway_url
        ))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 405);
}

#[tokio::test]
async fn checkout_amounts_roles_and_provider_errors() {
    let stripe = FakeStripe::start().await;
    let tollgate = with_stripe(&stripe).await;
    for (amount, field_message) in [
        ("10.005", "at most 2 decimals"),
        ("-5", "must not be negative"),
        ("1e3", "decimal string"),
    ] {
        let (status, body) = checkout(&tollgate, json!({"amount": amount}), None).await;
        assert_eq!(status, 400, "{amount}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(field_message),
            "{amount}: {body}"
        );
    }
    let (status, body) = checkout(&tollgate, json!({"amount": "5", "colour": "red"}), None).await;
    assert_eq!(status, 400, "unknown fields: {body}");
    // Stripe's own refusal (its minimum charge) is passed on as a 400.
    let (status, body) = checkout(&tollgate, json!({"amount": "0.10"}), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "payment_provider_refused");
    assert_eq!(body["title"], "Bad Request", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("at least $0.50"),
        "{body}"
    );
    assert_eq!(stripe.sessions().len(), 0);

    // Team admins may start a top-up; developers may not; other teams'
    // members do not see the team.
    let (developer_id, developer) = tollgate.user_with_token("dev@acme.test").await;
    tollgate
        .create(
            "/api/v1/teams/acme/members",
            json!({"user": developer_id, "role": "developer"}),
        )
        .await;
    let (admin_id, admin) = tollgate.user_with_token("admin@acme.test").await;
    tollgate
        .create(
            "/api/v1/teams/acme/members",
            json!({"user": admin_id, "role": "admin"}),
        )
        .await;
    let path = "/api/v1/teams/acme/wallet/checkout";
    let (status, _) = tollgate
        .admin_as(&developer, Method::POST, path, Some(json!({"amount": "5"})))
        .await;
    assert_eq!(status, 403);
    let (status, body) = tollgate
        .admin_as(&admin, Method::POST, path, Some(json!({"amount": "5"})))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = tollgate
        .admin_as(
            &admin,
            Method::POST,
            "/api/v1/teams/other/wallet/checkout",
            Some(json!({"amount": "5"})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn without_stripe_there_is_no_checkout_and_no_webhook() {
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme", "name": "acme"}))
        .await;
    let (status, body) = checkout(&tollgate, json!({"amount": "5"}), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "payments_not_configured");
    let (status, _) = deliver(&tollgate, "{}", Some("t=1,v1=00")).await;
    assert_eq!(status, 404);
}

/// Pays a Checkout top-up of `amount` for `team` end to end; returns the
/// Stripe customer it made.
async fn paid_checkout(
    tollgate: &Tollgate,
    stripe: &FakeStripe,
    team: &str,
    amount: &str,
) -> String {
    let (status, session) = tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/teams/{team}/wallet/checkout"),
            Some(json!({"amount": amount})),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    let paid = stripe.complete(session["session_id"].as_str().unwrap());
    let (status, body) = send(tollgate, &paid).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&paid.body).unwrap()["data"]["object"]["customer"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_balance(tollgate: &Tollgate, team: &str, balance: &str) {
    let started = std::time::Instant::now();
    loop {
        let now = wallet(tollgate, team).await;
        if now["balance"] == balance {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "{team} has {now}, want {balance}\n{}",
            tollgate.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn auto_top_up_charges_the_saved_card_when_the_balance_runs_low() {
    let stripe = FakeStripe::start().await;
    let tollgate = with_stripe(&stripe).await;
    let receiver = test_support::webhook::WebhookReceiver::start(0).await;
    tollgate
        .create(
            "/api/v1/teams/other/webhooks",
            json!({"url": receiver.url(), "events": ["wallet.auto_top_up_failed"]}),
        )
        .await;
    let rule = "/api/v1/teams/acme/wallet/auto-top-up";
    let (status, _) = tollgate.admin(Method::GET, rule, None).await;
    assert_eq!(status, 404, "no rule yet");
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            rule,
            Some(json!({"threshold": "12", "amount": "20.001"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    paid_checkout(&tollgate, &stripe, "acme", "10").await;
    let (status, view) = tollgate
        .admin(
            Method::PUT,
            rule,
            Some(json!({"threshold": "12", "amount": "20"})),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["card_saved"], true);
    // 10 < 12: the saved card is charged 20, once.
    wait_balance(&tollgate, "acme", "30.00").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let charges = stripe.off_session_charges();
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["amount"], 2000);
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "30.00");
    let top_ups = ledger(&tollgate, "acme", "&kind=top_up").await;
    assert_eq!(top_ups.len(), 2);
    assert!(
        top_ups[1]["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("stripe:payment_intent:pi_")
    );
    // Stripe's own webhook for that charge credits nothing more.
    let event = json!({"id": "evt_pi", "object": "event", "type": "payment_intent.succeeded",
        "data": {"object": charges[0]}})
    .to_string();
    let signed = signature(WEBHOOK_SECRET, domain::now_ms() / 1000, &event);
    let (status, body) = deliver(&tollgate, &event, Some(&signed)).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "30.00");

    // A declined card: nothing credited, the reason kept, the team told.
    let customer = paid_checkout(&tollgate, &stripe, "other", "1").await;
    stripe.decline(&customer);
    let (status, _) = tollgate
        .admin(
            Method::PUT,
            "/api/v1/teams/other/wallet/auto-top-up",
            Some(json!({"threshold": "5", "amount": "10"})),
        )
        .await;
    assert_eq!(status, 200);
    let failed = receiver
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    let event = failed[0].json();
    assert_eq!(event["type"], "wallet.auto_top_up_failed");
    assert_eq!(event["data"]["error"], "Your card was declined.");
    let (_, view) = tollgate
        .admin(Method::GET, "/api/v1/teams/other/wallet/auto-top-up", None)
        .await;
    assert_eq!(view["last_error"], "Your card was declined.");
    assert_eq!(wallet(&tollgate, "other").await["balance"], "1.00");

    // Turned off: gone.
    let (status, _) = tollgate
        .admin(
            Method::DELETE,
            "/api/v1/teams/other/wallet/auto-top-up",
            None,
        )
        .await;
    assert_eq!(status, 204);
}

/// A refund can take a wallet below zero (what it paid for is spent): a
/// 402 and an admin debit then say the real balance, and how much more a
/// call needs, not 0.00.
#[tokio::test]
async fn a_wallet_a_refund_took_below_zero_says_so() {
    let stripe = FakeStripe::start().await;
    let tollgate = Tollgate::start_with(BIN, stripe_options(&stripe)).await;
    let upstream = FakeUpstream::start("w").await;
    let key = crate::money::priced_world(&tollgate, &upstream, 0).await;
    let (status, session) = checkout(&tollgate, json!({"amount": "25"}), None).await;
    assert_eq!(status, 201, "{session}");
    let session = session["session_id"].as_str().unwrap();
    assert_eq!(send(&tollgate, &stripe.complete(session)).await.0, 200);
    crate::access::wait_status(&tollgate, "/weather/forecast/paid", &key, 200).await;
    let (status, body) = send(&tollgate, &stripe.refund(session, 2500)).await;
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    let body = loop {
        let response = tollgate.get_with_key("/weather/forecast/x", &key).await;
        if response.status() == 402 {
            let body: Value = response.json().await.unwrap();
            if body["balance"] != "0.00" {
                break body;
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Below zero by what was spent of the refunded top-up (calls made
    // before the refund reached this node count too).
    assert_eq!(body["code"], "insufficient_credit", "{body}");
    let balance = body["balance"].as_str().unwrap().to_owned();
    let cents: i64 = balance.replace('.', "").parse().unwrap();
    assert!(cents < 0, "{body}");
    let needed = format!("{}.{:02}", (1 - cents) / 100, (1 - cents) % 100);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("balance is {balance} USD"))
            && body["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("needs {needed} USD more")),
        "{body}"
    );
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/teams/acme/wallet/adjustments",
            Some(json!({"amount": "-0.01", "reason": "test"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.to_string()
            .contains(&format!("{balance} USD is available")),
        "{body}"
    );
}
