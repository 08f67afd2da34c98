//! Per-request payment with x402 v2, through the real binary and a local
//! fake facilitator: the 402 with `PAYMENT-REQUIRED`, a paid retry with
//! `PAYMENT-SIGNATURE` answered with `PAYMENT-RESPONSE`, and payloads that
//! are replayed, expired, tampered, short of funds or for another price.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use test_support::facilitator::{FakeFacilitator, payment};

use crate::*;

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAYER: &str = "0x857b06519E91e3A54538791bDbb0E22373e36b66";

async fn paid_service(facilitator: &FakeFacilitator, upstream: &FakeUpstream) -> Tollgate {
    let tollgate = paying_node(facilitator, Default::default()).await;
    publish_paid_service(&tollgate, upstream).await;
    tollgate
}

/// A node with `options` that settles through `facilitator`.
async fn paying_node(
    facilitator: &FakeFacilitator,
    mut options: test_support::tollgate::Options,
) -> Tollgate {
    options
        .env
        .push(("TOLLGATE_X402__FACILITATOR_URL".into(), facilitator.url()));
    Tollgate::start_with(BIN, options).await
}

/// `/quotes` on `upstream`, paid per request with x402.
async fn publish_paid_service(tollgate: &Tollgate, upstream: &FakeUpstream) {
    publish_quotes(tollgate, upstream, 402).await;
}

/// `/quotes` on `upstream`, offering x402, once a keyless call answers
/// `status`.
async fn publish_quotes(tollgate: &Tollgate, upstream: &FakeUpstream, status: u16) {
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "quotes-backend", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "quotes", "kind": "http", "base_path": "/quotes", "upstream": "quotes-backend",
                "description": "Stock quotes", "visibility": "public",
                "x402": {"network": "eip155:84532", "amount": "10000", "asset": USDC, "pay_to": PAY_TO,
                    "max_timeout_seconds": 60, "extra": {"name": "USDC", "version": "2"}}}),
        )
        .await;
    tollgate
        .create("/api/v1/services/quotes/routes", json!({"path": "/*"}))
        .await;
    tollgate
        .create("/api/v1/services/quotes/publish", json!({}))
        .await;
    tollgate
        .wait_for("/quotes/acme", std::time::Duration::from_secs(1), |s| {
            s == status
        })
        .await;
}

/// Without a facilitator no payment could be settled: the service is
/// served as one without per-request payment, offering none.
#[tokio::test]
async fn without_a_facilitator_nothing_is_offered() {
    let upstream = FakeUpstream::start("q").await;
    let tollgate = Tollgate::start(BIN).await;
    publish_quotes(&tollgate, &upstream, 401).await;
    let signed = STANDARD.encode(json!({"x402Version": 2}).to_string());
    for payment in [None, Some(signed.as_str())] {
        let response = call(&tollgate, "/quotes/acme", payment).await;
        assert!(
            !response.headers().contains_key("payment-required"),
            "{:?}",
            response.headers()
        );
        problem(response, 401, "missing_credentials").await;
    }
    assert_eq!(upstream.hits(), 0);
}

fn decode(value: &str) -> Value {
    serde_json::from_slice(&STANDARD.decode(value).unwrap()).unwrap()
}

async fn call(tollgate: &Tollgate, path: &str, payment: Option<&str>) -> reqwest::Response {
    let mut request = tollgate
        .client
        .get(format!("{}{path}", tollgate.gateway_url));
    if let Some(payment) = payment {
        request = request.header("payment-signature", payment);
    }
    request.send().await.unwrap()
}

/// The requirements a 402 offers, checked for the v2 shape.
async fn offered(response: reqwest::Response, error: &str) -> Value {
    let header = response.headers()["payment-required"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = problem(response, 402, "payment_required").await;
    let required = decode(&header);
    assert_eq!(required["x402Version"], 2);
    assert_eq!(required["error"], error, "{required}");
    assert_eq!(body["error"], error);
    assert_eq!(body["accepts"], required["accepts"]);
    required
}

#[tokio::test]
async fn a_call_pays_for_itself_once() {
    let facilitator = FakeFacilitator::start().await;
    let upstream = FakeUpstream::start("q").await;
    let tollgate = paid_service(&facilitator, &upstream).await;

    // No payment: 402 with what to pay, never forwarded.
    let hits = upstream.hits();
    let refused = call(&tollgate, "/quotes/acme?day=1", None).await;
    let required = offered(refused, "PAYMENT-SIGNATURE header is required").await;
    assert!(
        required["resource"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/quotes/acme?day=1")
    );
    assert_eq!(required["resource"]["description"], "Stock quotes");
    let accepts = &required["accepts"][0];
    assert_eq!(
        accepts,
        &json!({"scheme": "exact", "network": "eip155:84532", "amount": "10000", "asset": USDC,
            "payTo": PAY_TO, "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}})
    );
    assert_eq!(upstream.hits(), hits);

    // Paid: forwarded (without the payment header), settled, receipt back.
    let paid = payment(accepts, PAYER, 60, |_| {});
    let response = call(&tollgate, "/quotes/acme", Some(&paid)).await;
    assert_eq!(response.status(), 200);
    let receipt = decode(response.headers()["payment-response"].to_str().unwrap());
    assert_eq!(receipt["success"], true);
    assert_eq!(receipt["network"], "eip155:84532");
    assert_eq!(receipt["payer"], PAYER);
    assert!(receipt["transaction"].as_str().unwrap().starts_with("0x"));
    let echoed: Value = response.json().await.unwrap();
    assert!(
        echoed["headers"].get("payment-signature").is_none(),
        "{echoed}"
    );
    assert_eq!(facilitator.settles(), 1);

    // The same payload again, even many at once: never settled twice.
    let replays = (0..5).map(|_| call(&tollgate, "/quotes/acme", Some(&paid)));
    for response in futures_util::future::join_all(replays).await {
        offered(response, "invalid_transaction_state").await;
    }
    // Nor the same payment written another way (spacing, key order).
    let value = decode(&paid);
    // Written by hand: a serde_json map would sort the keys back.
    let reordered: Vec<String> = value
        .as_object()
        .unwrap()
        .iter()
        .rev()
        .map(|(key, item)| format!("{}: {item}", json!(key)))
        .collect();
    for respelled in [
        serde_json::to_string_pretty(&value).unwrap(),
        format!("{{{}}}", reordered.join(", ")),
    ] {
        let header = STANDARD.encode(respelled);
        assert_ne!(header, paid);
        offered(
            call(&tollgate, "/quotes/acme", Some(&header)).await,
            "invalid_transaction_state",
        )
        .await;
    }
    assert_eq!(facilitator.settles(), 1);

    // Callers with an API key are not asked to pay per request.
    let keyed = tollgate
        .get_with_key("/quotes/acme", "tg_live_unknown")
        .await;
    problem(keyed, 401, "invalid_credentials").await;
}

#[tokio::test]
async fn bad_payments_are_refused_and_nothing_is_settled() {
    let facilitator = FakeFacilitator::start().await;
    let upstream = FakeUpstream::start("q").await;
    let tollgate = paid_service(&facilitator, &upstream).await;
    let refused = call(&tollgate, "/quotes/x", None).await;
    let accepts =
        offered(refused, "PAYMENT-SIGNATURE header is required").await["accepts"][0].clone();
    let hits = upstream.hits();

    let cases: Vec<(String, &str)> = vec![
        ("not base64!".into(), "invalid_payload"),
        (STANDARD.encode("[1,2]"), "invalid_payload"),
        (
            payment(&accepts, PAYER, 60, |p| p["x402Version"] = 1.into()),
            "invalid_x402_version",
        ),
        (
            payment(&accepts, PAYER, 60, |p| {
                p["accepted"]["amount"] = "1".into()
            }),
            "invalid_payment_requirements",
        ),
        (
            payment(&accepts, PAYER, -5, |_| {}),
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        (
            payment(&accepts, PAYER, 60, |p| {
                p["payload"]["signature"] = "0xforged".into()
            }),
            "invalid_exact_evm_payload_signature",
        ),
        (
            payment(&accepts, PAYER, 60, |p| {
                p["payload"]["authorization"]["value"] = "1".into();
            }),
            "invalid_exact_evm_payload_authorization_value",
        ),
    ];
    for (header, reason) in cases {
        let response = call(&tollgate, "/quotes/x", Some(&header)).await;
        offered(response, reason).await;
    }
    // A payer short of funds.
    facilitator.set_balance("0xpoor", 9_999);
    let poor = payment(&accepts, "0xpoor", 60, |_| {});
    offered(
        call(&tollgate, "/quotes/x", Some(&poor)).await,
        "insufficient_funds",
    )
    .await;
    assert_eq!(
        upstream.hits(),
        hits,
        "no refused payment reached the upstream"
    );
    assert_eq!(facilitator.settles(), 0);

    // An upstream failure is not paid for, and the payload stays usable.
    let good = payment(&accepts, PAYER, 60, |_| {});
    let failed = call(&tollgate, "/quotes/status/500", Some(&good)).await;
    assert_eq!(failed.status(), 500);
    assert!(failed.headers().get("payment-response").is_none());
    assert_eq!(facilitator.settles(), 0);
    let ok = call(&tollgate, "/quotes/x", Some(&good)).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(facilitator.settles(), 1);
}

#[tokio::test]
async fn a_subscriber_out_of_credit_is_offered_to_pay_per_request() {
    let facilitator = FakeFacilitator::start().await;
    let upstream = FakeUpstream::start("q").await;
    let tollgate = paid_service(&facilitator, &upstream).await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme", "name": "acme"}))
        .await;
    tollgate
        .create(
            "/api/v1/services/quotes/plans",
            json!({"slug": "per-call", "price_per_request": "0.01"}),
        )
        .await;
    let key = crate::app_with_key(&tollgate, "acme", "acme-web").await;
    crate::subscribe_app(&tollgate, "acme-web", "quotes", "per-call").await;
    // An empty wallet: the 402 also offers x402 for this one call.
    let started = std::time::Instant::now();
    let refused = loop {
        let response = tollgate.get_with_key("/quotes/acme", &key).await;
        if response.status() == 402 {
            break response;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let offer = decode(refused.headers()["payment-required"].to_str().unwrap());
    let body = problem(refused, 402, "insufficient_credit").await;
    assert!(body["detail"].as_str().unwrap().contains("x402"), "{body}");
    assert_eq!(offer["error"], "insufficient_credit");
    // Paying per request works with the key along; neither reaches the
    // upstream.
    let paid = payment(&offer["accepts"][0], PAYER, 60, |_| {});
    let response = tollgate
        .client
        .get(format!("{}/quotes/acme", tollgate.gateway_url))
        .bearer_auth(&key)
        .header("payment-signature", &paid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("payment-response"));
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let echoed: Value = response.json().await.unwrap();
    assert!(echoed["headers"].get("authorization").is_none(), "{echoed}");
    assert!(echoed["headers"].get("payment-signature").is_none());
    assert_eq!(facilitator.settles(), 1);
    // The key named the caller: its team sees the paid call as its own.
    let started = std::time::Instant::now();
    let mine = loop {
        let response = tollgate
            .get_with_key(&format!("/_tollgate/requests/{request_id}"), &key)
            .await;
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{}",
            response.status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(mine["status"], 200, "{mine}");
    let (_, logs) = tollgate
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/logs?request_id={request_id}"),
            None,
        )
        .await;
    assert_eq!(logs["data"][0]["app"], "acme-web", "{logs}");
    assert_eq!(logs["data"][0]["consumer_team"], "acme", "{logs}");
}

#[tokio::test]
async fn one_payment_serves_one_call_on_every_node_sharing_the_store() {
    let database = test_support::PgDatabase::create();
    let facilitator = FakeFacilitator::start().await;
    let upstream = FakeUpstream::start("q").await;
    let options = test_support::tollgate::Options::on_database(&database.url);
    let first = paying_node(&facilitator, options.clone()).await;
    let second = paying_node(&facilitator, options).await;
    publish_paid_service(&first, &upstream).await;
    second
        .wait_for("/quotes/acme", std::time::Duration::from_secs(1), |s| {
            s == 402
        })
        .await;
    let accepts = offered(
        call(&second, "/quotes/acme", None).await,
        "PAYMENT-SIGNATURE header is required",
    )
    .await["accepts"][0]
        .clone();

    // A payment in use on one node (its call held at the upstream) serves
    // no call on the other: the upstream does not do the work twice.
    let paid = payment(&accepts, PAYER, 60, |_| {});
    let held = tokio::spawn({
        let (client, url, paid) = (
            first.client.clone(),
            first.gateway_url.clone(),
            paid.clone(),
        );
        async move {
            client
                .get(format!("{url}/quotes/hold"))
                .header("payment-signature", paid)
                .send()
                .await
                .unwrap()
        }
    });
    eventually("the paid call reaches the upstream", || {
        upstream.hits() == 1
    })
    .await;
    let verifies = facilitator.verifies();
    offered(
        call(&second, "/quotes/acme", Some(&paid)).await,
        "invalid_transaction_state",
    )
    .await;
    assert_eq!(upstream.hits(), 1, "the second node did not forward it");
    assert_eq!(facilitator.verifies(), verifies, "refused before verifying");
    upstream.open_gate();
    let response = held.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("payment-response"));
    assert_eq!(facilitator.settles(), 1);
    // Settled: refused on either node.
    for node in [&first, &second] {
        offered(
            call(node, "/quotes/acme", Some(&paid)).await,
            "invalid_transaction_state",
        )
        .await;
    }

    // A payment whose call was not settled (the upstream failed) is given
    // back, on every node.
    let unsettled = payment(&accepts, PAYER, 60, |_| {});
    let failed = call(&first, "/quotes/status/503", Some(&unsettled)).await;
    assert_eq!(failed.status(), 503);
    assert!(!failed.headers().contains_key("payment-response"));
    eventually_async(
        "the unsettled payment serves a call on the other node",
        || async {
            call(&second, "/quotes/acme", Some(&unsettled))
                .await
                .status()
                == 200
        },
    )
    .await;
    assert_eq!(facilitator.settles(), 2);
}

#[tokio::test]
async fn a_settled_payment_stays_used_across_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let facilitator = FakeFacilitator::start().await;
    let upstream = FakeUpstream::start("q").await;
    let options = || test_support::tollgate::Options::in_dir(data_dir.path());
    let tollgate = paying_node(&facilitator, options()).await;
    publish_paid_service(&tollgate, &upstream).await;
    let accepts = offered(
        call(&tollgate, "/quotes/acme", None).await,
        "PAYMENT-SIGNATURE header is required",
    )
    .await["accepts"][0]
        .clone();
    let paid = payment(&accepts, PAYER, 60, |_| {});
    assert_eq!(
        call(&tollgate, "/quotes/acme", Some(&paid)).await.status(),
        200
    );
    tollgate.stop().await;

    let restarted = paying_node(&facilitator, options()).await;
    restarted
        .wait_for("/quotes/acme", std::time::Duration::from_secs(1), |s| {
            s == 402
        })
        .await;
    let (hits, verifies) = (upstream.hits(), facilitator.verifies());
    offered(
        call(&restarted, "/quotes/acme", Some(&paid)).await,
        "invalid_transaction_state",
    )
    .await;
    assert_eq!(
        facilitator.verifies(),
        verifies,
        "known without asking the facilitator"
    );
    assert_eq!(upstream.hits(), hits);
    assert_eq!(facilitator.settles(), 1);
}

/// A settlement whose answer is lost may have gone through: the call is
/// a 502 that says so, and the payment stays used (never settled twice,
/// the upstream never asked again for it).
#[tokio::test]
async fn a_settlement_whose_answer_is_lost_is_never_made_twice() {
    let facilitator = FakeFacilitator::start().await;
    let upstream = FakeUpstream::start("q").await;
    let tollgate = paid_service(&facilitator, &upstream).await;
    let required = offered(
        call(&tollgate, "/quotes/acme", None).await,
        "PAYMENT-SIGNATURE header is required",
    )
    .await;
    let paid = payment(&required["accepts"][0], PAYER, 60, |_| {});

    facilitator.lose_settle_answers(true);
    let hits = upstream.hits();
    let body = problem(
        call(&tollgate, "/quotes/acme", Some(&paid)).await,
        502,
        "upstream_error",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("may have been paid"),
        "{body}"
    );
    assert_eq!((facilitator.settles(), upstream.hits()), (1, hits + 1));

    facilitator.lose_settle_answers(false);
    offered(
        call(&tollgate, "/quotes/acme", Some(&paid)).await,
        "invalid_transaction_state",
    )
    .await;
    assert_eq!(
        (facilitator.settles(), upstream.hits()),
        (1, hits + 1),
        "settled once, served once"
    );
}
