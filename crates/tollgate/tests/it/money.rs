//! Wallets and the ledger through the admin API: exact amounts, idempotent
//! entries under concurrency, who may move money, bad amounts, CSV export,
//! on SQLite and PostgreSQL.

use reqwest::Method;
use serde_json::Value;

use crate::access::{wait_status, world};
use crate::*;

async fn team(tollgate: &Tollgate, slug: &str) {
    tollgate
        .create("/api/v1/teams", json!({"slug": slug, "name": slug}))
        .await;
}

pub(crate) async fn grant(
    tollgate: &Tollgate,
    team: &str,
    body: Value,
) -> (reqwest::StatusCode, Value) {
    tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/teams/{team}/wallet/grants"),
            Some(body),
        )
        .await
}

pub(crate) async fn wallet(tollgate: &Tollgate, team: &str) -> Value {
    let (status, body) = tollgate
        .admin(Method::GET, &format!("/api/v1/teams/{team}/wallet"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Every entry of a team's ledger, through the pages.
pub(crate) async fn ledger(tollgate: &Tollgate, team: &str, query: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/teams/{team}/wallet/ledger?limit=7{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = tollgate.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        entries.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return entries,
        }
    }
}

/// Concurrent grants: distinct keys all count, a repeated key counts once,
/// and the balance is the exact sum of the ledger.
async fn grants_are_exact_and_idempotent(tollgate: &Tollgate) {
    team(tollgate, "acme").await;
    let fresh = wallet(tollgate, "acme").await;
    assert_eq!(fresh["balance"], "0.00");
    assert_eq!(fresh["currency"], "USD");

    // 40 distinct grants of 0.000000001 … 0.000000040, and 20 racing
    // requests that all carry the key "welcome".
    let distinct = (1..=40).map(|n| async move {
        let (status, body) = grant(
            tollgate,
            "acme",
            json!({"amount": format!("0.0000000{n:02}"), "reason": "load", "idempotency_key": format!("g-{n}")}),
        )
        .await;
        assert_eq!(status, 201, "{body}\n{}", tollgate.log());
    });
    let racing = (0..20).map(|_| async {
        let (status, body) = grant(
            tollgate,
            "acme",
            json!({"amount": "12.5", "reason": "welcome credit", "idempotency_key": "welcome"}),
        )
        .await;
        assert!(
            status == 201 || status == 200,
            "{status}: {body}\n{}",
            tollgate.log()
        );
        assert_eq!(body["entry"]["amount"], "12.50");
        assert_eq!(body["replayed"], status == 200);
        status
    });
    let (_, statuses) = tokio::join!(
        futures_util::future::join_all(distinct),
        futures_util::future::join_all(racing)
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "exactly one of the racing requests records the entry"
    );
    let expected: i64 = 12_500_000_000 + (1..=40).sum::<i64>();
    let after = wallet(tollgate, "acme").await;
    assert_eq!(after["balance_nanos"], expected, "{after}");
    assert_eq!(after["balance"], "12.50000082");
    assert_eq!(after["entries"], 41);
    let entries = ledger(tollgate, "acme", "").await;
    assert_eq!(entries.len(), 41);
    let sum: i64 = entries
        .iter()
        .map(|e| e["amount_nanos"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, expected, "balance = sum of the ledger");
    let welcome: Vec<_> = entries
        .iter()
        .filter(|e| e["idempotency_key"] == "welcome")
        .collect();
    assert_eq!(welcome.len(), 1, "one entry per idempotency key");
    assert_eq!(welcome[0]["actor"], "root");
    assert_eq!(welcome[0]["reason"], "welcome credit");
    assert_eq!(welcome[0]["kind"], "grant");

    // The same key with another amount is a conflict, and changes nothing.
    let (status, body) = grant(
        tollgate,
        "acme",
        json!({"amount": "99", "reason": "again", "idempotency_key": "welcome"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("12.50"), "{body}");
    assert_eq!(wallet(tollgate, "acme").await["balance_nanos"], expected);

    // The ledger's own keys are not for the API: such an entry would stand
    // for, and block, a Stripe payment or a period fee recorded later.
    // Nor are keys that differ from another only by spaces at an end.
    for key in [
        "stripe:checkout:cs_1",
        "fee:sub:1",
        "charge:1",
        "grant:x",
        " charge:x",
        "   ",
    ] {
        let (status, body) = grant(
            tollgate,
            "acme",
            json!({"amount": "0.01", "reason": "squat", "idempotency_key": key}),
        )
        .await;
        assert_eq!(status, 400, "{key}: {body}");
        assert_eq!(body["errors"][0]["field"], "idempotency_key", "{body}");
    }
    assert_eq!(wallet(tollgate, "acme").await["balance_nanos"], expected);
}

#[tokio::test]
async fn grants_are_exact_and_idempotent_on_sqlite() {
    let tollgate = Tollgate::start(BIN).await;
    grants_are_exact_and_idempotent(&tollgate).await;
}

#[tokio::test]
async fn grants_are_exact_and_idempotent_on_postgres() {
    let database = test_support::PgDatabase::create();
    let tollgate = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options::on_database(&database.url),
    )
    .await;
    grants_are_exact_and_idempotent(&tollgate).await;
}

/// A client retrying an adjustment at once, many times over: one entry,
/// every other answer its replay, though the first try's hold leaves too
/// little for the retries to hold theirs (7.75 holds one 4.00, not two).
#[tokio::test]
async fn an_adjustment_retried_at_once_is_replayed() {
    let tollgate = Tollgate::start(BIN).await;
    team(&tollgate, "acme").await;
    let (status, _) = grant(
        &tollgate,
        "acme",
        json!({"amount": "7.75", "reason": "start"}),
    )
    .await;
    assert_eq!(status, 201);
    let adjust = |amount: &str, key: &str| {
        let body = json!({"amount": amount, "reason": "correction", "idempotency_key": key});
        let client = tollgate.client.clone();
        let url = format!(
            "{}/api/v1/teams/acme/wallet/adjustments",
            tollgate.admin_url
        );
        async move {
            let response = client
                .post(url)
                .bearer_auth(test_support::tollgate::ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let answers = futures_util::future::join_all((0..16).map(|_| adjust("-4", "adj-burst"))).await;
    let created = answers.iter().filter(|(s, _)| s.as_u16() == 201).count();
    let replayed = answers
        .iter()
        .filter(|(s, b)| s.as_u16() == 200 && b["replayed"] == true)
        .count();
    assert_eq!((created, replayed), (1, 15), "{answers:?}");
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "3.75");
    let (status, body) = adjust("-4", "adj-3").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = adjust("-3.75", "adj-3").await;
    assert_eq!(
        status, 201,
        "a refused try wrote nothing under its key: {body}"
    );
    let (status, body) = adjust("3.75", "adj-4").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = adjust("4", "adj-4").await;
    assert_eq!(status, 409, "a key names one entry: {body}");
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "3.75");
}

#[tokio::test]
async fn adjustments_filters_csv_and_who_may_move_money() {
    let tollgate = Tollgate::start(BIN).await;
    team(&tollgate, "acme").await;
    team(&tollgate, "other").await;
    let (status, _) = grant(
        &tollgate,
        "acme",
        json!({"amount": "10", "reason": "start"}),
    )
    .await;
    assert_eq!(status, 201);

    // Adjustments go either way, but never below zero.
    let adjust = |amount: &str, key: &str| {
        let body = json!({"amount": amount, "reason": "correction, \"as agreed\""});
        let path = "/api/v1/teams/acme/wallet/adjustments".to_owned();
        let key = key.to_owned();
        let client = tollgate.client.clone();
        let url = format!("{}{path}", tollgate.admin_url);
        async move {
            let response = client
                .post(url)
                .bearer_auth(test_support::tollgate::ADMIN_TOKEN)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = adjust("-2.25", "adj-1").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["wallet"]["balance"], "7.75");
    let (status, body) = adjust("-2.25", "adj-1").await;
    assert_eq!((status.as_u16(), &body["replayed"]), (200, &json!(true)));
    let (status, body) = adjust("-8", "adj-2").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("below"), "{body}");
    assert_eq!(wallet(&tollgate, "acme").await["balance"], "7.75");

    // Bad amounts name the field and record nothing.
    for (amount, why) in [
        ("-1", "negative"),
        ("0", "greater than zero"),
        ("1.0000000001", "9 decimals"),
        ("1e3", "decimal"),
        ("", "decimal"),
        ("5000000000", "larger"),
    ] {
        let (status, body) =
            grant(&tollgate, "acme", json!({"amount": amount, "reason": "x"})).await;
        assert_eq!(status, 400, "{amount}: {body}");
        assert_eq!(body["errors"][0]["field"], "amount", "{body}");
        assert!(
            body["errors"][0]["message"].as_str().unwrap().contains(why),
            "{amount}: {body}"
        );
    }
    let (status, body) = grant(&tollgate, "acme", json!({"amount": "1", "reason": " "})).await;
    assert_eq!(
        (status.as_u16(), &body["errors"][0]["field"]),
        (400, &json!("reason"))
    );
    let (status, body) = grant(&tollgate, "acme", json!({"amount": 1, "reason": "x"})).await;
    assert_eq!(status, 400, "a number is not a decimal string: {body}");
    let (status, body) = grant(
        &tollgate,
        "acme",
        json!({"amount": "1", "reason": "x", "extra": true}),
    )
    .await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");
    assert_eq!(wallet(&tollgate, "acme").await["entries"], 2);

    // Filters and CSV.
    let grants = ledger(&tollgate, "acme", "&kind=grant").await;
    assert_eq!(grants.len(), 1);
    let (status, body) = tollgate
        .admin(
            Method::GET,
            "/api/v1/teams/acme/wallet/ledger?kind=gift",
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), &body["errors"][0]["field"]),
        (400, &json!("kind"))
    );
    let future = ledger(&tollgate, "acme", "&since=2100-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    // An inverted range is a mistake, not an empty answer.
    let (status, body) = tollgate
        .admin(
            Method::GET,
            "/api/v1/teams/acme/wallet/ledger?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), &body["errors"][0]["field"]),
        (400, &json!("until"))
    );
    let csv = tollgate
        .client
        .get(format!(
            "{}/api/v1/teams/acme/wallet/ledger?format=csv",
            tollgate.admin_url
        ))
        .bearer_auth(test_support::tollgate::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "id,created_at,kind,amount,currency,idempotency_key,actor,reason,request_id"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].contains(",grant,10.00,USD,"), "{csv}");
    assert!(
        lines[2].contains(",adjustment,-2.25,USD,adj-1,root,\"correction, \"\"as agreed\"\"\","),
        "{csv}"
    );

    // Members read their own wallet only; only the platform moves money.
    let (owner_id, owner) = tollgate.user_with_token("owner@acme.test").await;
    tollgate
        .create(
            "/api/v1/teams/acme/members",
            json!({"user": owner_id, "role": "owner"}),
        )
        .await;
    let (status, body) = tollgate
        .admin_as(&owner, Method::GET, "/api/v1/teams/acme/wallet", None)
        .await;
    assert_eq!((status.as_u16(), &body["balance"]), (200, &json!("7.75")));
    let (status, _) = tollgate
        .admin_as(&owner, Method::GET, "/api/v1/teams/other/wallet", None)
        .await;
    assert_eq!(
        status, 404,
        "another team's wallet does not exist for this token"
    );
    let (status, _) = tollgate
        .admin_as(
            &owner,
            Method::GET,
            "/api/v1/teams/other/wallet/ledger",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = tollgate
        .admin_as(
            &owner,
            Method::POST,
            "/api/v1/teams/acme/wallet/grants",
            Some(json!({"amount": "1000", "reason": "myself"})),
        )
        .await;
    assert_eq!(status, 403, "a team cannot give itself money: {body}");
    let (status, _) = tollgate
        .admin_as(
            &owner,
            Method::POST,
            "/api/v1/teams/other/wallet/grants",
            Some(json!({"amount": "1000", "reason": "them"})),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(wallet(&tollgate, "acme").await["entries"], 2);

    // Every entry is in the audit log, with its actor.
    let (status, audit) = tollgate.admin(Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("wallet."))
        .collect();
    assert_eq!(actions.len(), 2, "{audit}");

    // A team with money records cannot be deleted; one without can.
    let (status, body) = tollgate
        .admin(Method::DELETE, "/api/v1/teams/acme", None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("wallet with 2 ledger entries"),
        "{body}"
    );
    // Nothing to delete or move: the advice is what can be done.
    let detail = body["detail"].as_str().unwrap();
    assert!(!detail.contains("delete or move"), "{body}");
    assert!(detail.contains("cannot be deleted"), "{body}");
    let (status, body) = tollgate
        .admin(Method::DELETE, "/api/v1/teams/other", None)
        .await;
    assert_eq!(status, 204, "{body}");
    // Its slug is never given out again: calls, analytics and the audit
    // log still name it, and a new team would read them as its own.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/teams",
            Some(json!({"slug": "other"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["errors"][0]["field"], "slug", "{body}");
}

#[tokio::test]
async fn balances_survive_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let options = || test_support::tollgate::Options::in_dir(data_dir.path());
    let tollgate = Tollgate::start_with(BIN, options()).await;
    team(&tollgate, "acme").await;
    grant(
        &tollgate,
        "acme",
        json!({"amount": "3.333333333", "reason": "a"}),
    )
    .await;
    grant(
        &tollgate,
        "acme",
        json!({"amount": "0.000000001", "reason": "b"}),
    )
    .await;
    drop(tollgate);
    let again = Tollgate::start_with(BIN, options()).await;
    let after = wallet(&again, "acme").await;
    assert_eq!(after["balance"], "3.333333334");
    assert_eq!(after["entries"], 2);
}

#[tokio::test]
async fn the_wallet_command() {
    let tollgate = Tollgate::start(BIN).await;
    team(&tollgate, "acme").await;
    let grant = [
        "wallet",
        "grant",
        "--team",
        "acme",
        "--amount",
        "25",
        "--reason",
        "welcome",
        "--idempotency-key",
        "welcome-acme",
    ];
    let (ok, out, stderr) = cli(&tollgate, &grant);
    assert!(ok, "{stderr}");
    assert_eq!(out, "25.00 USD");
    assert!(stderr.contains("recorded"), "{stderr}");
    let (ok, out, stderr) = cli(&tollgate, &grant);
    assert!(ok, "{stderr}");
    assert_eq!(out, "25.00 USD", "the same key grants once");
    assert!(stderr.contains("already recorded"), "{stderr}");
    let (ok, out, stderr) = cli(
        &tollgate,
        &[
            "wallet",
            "adjust",
            "--team",
            "acme",
            "--amount",
            "-0.5",
            "--reason",
            "fix\tof two\nlines",
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(out, "24.50 USD");
    let (ok, out, _) = cli(&tollgate, &["wallet", "show", "--team", "acme"]);
    assert!(ok);
    assert_eq!(out, "24.50 USD");
    let (ok, out, _) = cli(&tollgate, &["wallet", "ledger", "--team", "acme"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("\tgrant\t25.00\troot\twelcome-acme\twelcome"),
        "{out}"
    );
    assert!(lines[1].contains("\tadjustment\t-0.50\troot\t"), "{out}");
    // A reason's tab and line break are escaped: one entry, one line.
    assert!(lines[1].ends_with("\tfix\\tof two\\nlines"), "{out}");
    let (ok, out, _) = cli(
        &tollgate,
        &[
            "wallet", "ledger", "--team", "acme", "--csv", "--kind", "grant",
        ],
    );
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "header and one grant: {out}");
    // Refusals reach the terminal, naming the field.
    let (ok, _, stderr) = cli(
        &tollgate,
        &[
            "wallet",
            "grant",
            "--team",
            "acme",
            "--amount",
            "1.0000000001",
            "--reason",
            "x",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("amount") && stderr.contains("9 decimals"),
        "{stderr}"
    );
}

/// A priced service (0.01 a call) whose consumer team `acme` can afford
/// exactly `calls` more calls; returns the key.
pub(crate) async fn priced_world(
    tollgate: &Tollgate,
    upstream: &FakeUpstream,
    calls: u32,
) -> String {
    let world = world(tollgate, upstream, json!({}), json!({})).await;
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather/plans/pay-as-you-go",
            Some(json!({"price_per_request": "0.01"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The price is live once an empty wallet refuses.
    wait_status(tollgate, "/weather/forecast/ready", &world.key, 402).await;
    // One call more than asked for: the probe below spends it.
    let amount = format!("{}.{:02}", (calls + 1) / 100, (calls + 1) % 100);
    let (status, body) = grant(
        tollgate,
        "acme",
        json!({"amount": amount, "reason": "test"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_status(tollgate, "/weather/forecast/probe", &world.key, 200).await;
    world.key
}

/// Waits until the ledger writer has recorded `entries` entries for acme.
pub(crate) async fn wait_entries(tollgate: &Tollgate, entries: i64) -> Value {
    let started = std::time::Instant::now();
    loop {
        let wallet = wallet(tollgate, "acme").await;
        if wallet["entries"] == entries {
            return wallet;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "ledger stuck at {wallet}, expected {entries} entries"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_thousand_concurrent_calls_against_a_wallet_for_a_hundred() {
    let tollgate = Tollgate::start(BIN).await;
    a_thousand_calls_for_a_hundred(&tollgate).await;
}

#[tokio::test]
async fn a_thousand_concurrent_calls_against_a_wallet_for_a_hundred_on_postgres() {
    let database = test_support::PgDatabase::create();
    let tollgate = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options::on_database(&database.url),
    )
    .await;
    a_thousand_calls_for_a_hundred(&tollgate).await;
}

/// acme's app on two nodes, priced 0.01 a call, once both know the key
/// and the price (an empty wallet refuses); then 1.00 granted: 100 calls.
async fn priced_on_two_nodes(
    first: &Tollgate,
    second: &Tollgate,
    upstream: &FakeUpstream,
) -> crate::access::World {
    let world = world(first, upstream, json!({}), json!({})).await;
    let (status, body) = first
        .admin(
            Method::PATCH,
            "/api/v1/services/weather/plans/pay-as-you-go",
            Some(json!({"price_per_request": "0.01"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Both nodes know the key and the price: an empty wallet refuses.
    for node in [first, second] {
        wait_status(node, "/weather/forecast/ready", &world.key, 402).await;
    }
    let (status, body) = grant(first, "acme", json!({"amount": "1.00", "reason": "test"})).await;
    assert_eq!(status, 201, "{body}");
    world
}

/// Two nodes on one PostgreSQL spend one wallet: together they take
/// exactly what it affords, never more (each spends from its own lease of
/// the balance), whichever node the calls reach, in a burst and after.
#[tokio::test]
async fn two_nodes_spend_one_wallet_exactly() {
    let database = test_support::PgDatabase::create();
    let options = test_support::tollgate::Options::on_database(&database.url);
    let first = Tollgate::start_with(BIN, options.clone()).await;
    let second = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("w").await;
    let world = priced_on_two_nodes(&first, &second, &upstream).await;

    let ok = spend_over_two_nodes(
        (&first, &second),
        &upstream,
        &world.key,
        100,
        "insufficient_credit",
    )
    .await;
    assert_eq!(ok, 100, "exactly what the wallet affords");
    let wallet = wait_entries(&first, 101).await;
    assert_eq!(wallet["balance_nanos"], 0, "{wallet}");
    let charges = ledger(&first, "acme", "&kind=charge").await;
    assert_eq!(charges.len(), 100);
}

/// Two nodes on one fresh PostgreSQL, and acme's app subscribed to a plan
/// with `plan`'s terms, known to both (each answered one call). The
/// database goes last.
struct TwoNodes {
    first: Tollgate,
    second: Tollgate,
    upstream: FakeUpstream,
    world: crate::access::World,
    _database: test_support::PgDatabase,
}

async fn two_nodes_with_plan(plan: Value) -> TwoNodes {
    let database = test_support::PgDatabase::create();
    let options = test_support::tollgate::Options::on_database(&database.url);
    let first = Tollgate::start_with(BIN, options.clone()).await;
    let second = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("w").await;
    let world = world(&first, &upstream, json!({}), plan).await;
    wait_status(&second, "/weather/forecast/ready", &world.key, 200).await;
    TwoNodes {
        first,
        second,
        upstream,
        world,
        _database: database,
    }
}

/// [`priced_on_two_nodes`] (1.00 in the wallet, `more` granted on top),
/// with acme-web's budget set to `budget` a day; returns once both nodes
/// know the budget.
async fn budget_on_two_nodes(budget: &str, more: Option<&str>) -> TwoNodes {
    let database = test_support::PgDatabase::create();
    let options = test_support::tollgate::Options::on_database(&database.url);
    let first = Tollgate::start_with(BIN, options.clone()).await;
    let second = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("w").await;
    let world = priced_on_two_nodes(&first, &second, &upstream).await;
    if let Some(amount) = more {
        let (status, body) =
            grant(&first, "acme", json!({"amount": amount, "reason": "more"})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = first
        .admin(
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"budget": {"amount": budget, "period": "day"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for node in [&first, &second] {
        let started = std::time::Instant::now();
        loop {
            let me: Value = node.json_with_key("/_tollgate/me", &world.key).await;
            if me["budget"].is_object() {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{me}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    TwoNodes {
        first,
        second,
        upstream,
        world,
        _database: database,
    }
}

/// The lines of a node's log above `info` (for failure messages).
fn warnings(log: &std::path::Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.contains(r#""level":"INFO""#) && !line.contains(r#""level":"DEBUG""#))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Calls `key`'s app through two nodes, a burst of 600 spread over both,
/// then one call at a time alternating until 20 refusals in a row (402
/// `code`): never more than `most` answered at any point (refusals first
/// wait for what one node held and did not use to come back for the
/// other). Refused calls never reach `upstream`. Returns the calls
/// answered.
async fn spend_over_two_nodes(
    (first, second): (&Tollgate, &Tollgate),
    upstream: &FakeUpstream,
    key: &str,
    most: usize,
    code: &str,
) -> usize {
    let hits_before = upstream.hits();
    let call = |node: &Tollgate, n: usize| {
        let request = node
            .client
            .get(format!("{}/weather/forecast/city-{n}", node.gateway_url))
            .header("x-api-key", key);
        let log = node.log_path().to_owned();
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status != 200 {
                assert_eq!(
                    (status, body["code"].as_str()),
                    (402, Some(code)),
                    "{body}\nthe node's warnings:\n{}",
                    warnings(&log)
                );
                // A quota or budget with room left is held by the other
                // node: the refusal says so and how soon to retry.
                let room_left = match code {
                    "quota_exhausted" => body["used"].as_u64() < body["quota"].as_u64(),
                    "budget_exhausted" => {
                        let amount =
                            |field: &str| body[field].as_str().unwrap().parse::<f64>().unwrap();
                        amount("spent") + amount("required") <= amount("budget") + 1e-9
                    }
                    _ => false,
                };
                if room_left {
                    assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
                    assert!(
                        body["detail"]
                            .as_str()
                            .unwrap()
                            .contains("held by other gateway nodes"),
                        "{body}"
                    );
                }
            }
            status
        }
    };
    let node = |n: usize| if n.is_multiple_of(2) { first } else { second };
    let statuses = futures_util::future::join_all((0..600).map(|n| call(node(n), n))).await;
    let mut ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!(ok <= most, "{ok} calls answered, at most {most} allowed");
    // Then one at a time until 4 s of refusals in a row: a node that has
    // stopped taking calls gives back its unused grant within about 2 s
    // (twice that on a loaded machine), and the other may then spend it.
    let mut refusals_in_a_row = 0;
    let mut n = 600;
    while refusals_in_a_row < 40 {
        n += 1;
        if call(node(n), n).await == 200 {
            ok += 1;
            refusals_in_a_row = 0;
        } else {
            refusals_in_a_row += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(ok <= most, "{ok} calls answered, at most {most} allowed");
    }
    assert_eq!(
        upstream.hits() - hits_before,
        ok,
        "refused calls never reach it"
    );
    ok
}

/// Two nodes on one PostgreSQL count one quota: together they answer
/// exactly the calls it includes, never more (each counts within its own
/// grant of the quota), in a burst and after.
#[tokio::test]
async fn two_nodes_count_one_quota_exactly() {
    // Both nodes answered one call.
    let TwoNodes {
        first,
        second,
        upstream,
        world,
        ..
    } = &two_nodes_with_plan(json!({"included": {"requests": 40}})).await;
    let ok =
        spend_over_two_nodes((first, second), upstream, &world.key, 38, "quota_exhausted").await;
    assert_eq!(ok, 38, "exactly what the quota includes");
}

/// Under slow traffic a node keeps about two seconds of it from its grant
/// and gives the rest back: the other node is served while the quota has
/// room, not refused until the first has used what it took in a burst.
#[tokio::test]
async fn a_node_gives_back_what_slow_traffic_does_not_need() {
    // Both nodes answered one call.
    let TwoNodes {
        first,
        second,
        world,
        ..
    } = &two_nodes_with_plan(json!({"included": {"requests": 1000}})).await;
    let call = |node: &Tollgate| {
        let request = node
            .client
            .get(format!("{}/weather/forecast/x", node.gateway_url))
            .header("x-api-key", &world.key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // The first node takes a lot in a burst (its grant sized to it).
    let burst = futures_util::future::join_all((0..600).map(|_| call(first))).await;
    let mut ok = 2 + burst.iter().filter(|&&s| s == 200).count();
    assert_eq!(ok, 602, "all within the quota");
    // Then slow traffic, alternating: the second node is soon served.
    let mut served_on_second = 0;
    for n in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let node = if n % 2 == 0 { first } else { second };
        match call(node).await {
            200 => {
                ok += 1;
                if n % 2 == 1 {
                    served_on_second += 1;
                }
            }
            402 => {}
            other => panic!("answered {other}"),
        }
        assert!(ok <= 1000, "{ok} calls on a quota of 1000");
    }
    assert!(
        served_on_second >= 10,
        "the second node was served {served_on_second} times of 20 while the quota had room"
    );
}

/// With overage charged, two nodes give exactly the calls a quota
/// includes for free between them: the rest are paid, 0.01 each, until the
/// wallet's 1.00 is spent.
#[tokio::test]
async fn two_nodes_give_exactly_the_included_calls_free() {
    let plan =
        json!({"included": {"requests": 20}, "overage": "charge", "price_per_request": "0.01"});
    // Both nodes answered one call: two free calls taken.
    let TwoNodes {
        first,
        second,
        upstream,
        world,
        ..
    } = &two_nodes_with_plan(plan).await;
    let (status, body) = grant(first, "acme", json!({"amount": "1.00", "reason": "test"})).await;
    assert_eq!(status, 201, "{body}");
    let ok = spend_over_two_nodes(
        (first, second),
        upstream,
        &world.key,
        118,
        "insufficient_credit",
    )
    .await;
    assert_eq!(ok, 118, "18 free calls left and 100 paid ones");
    let wallet = wait_entries(first, 101).await;
    assert_eq!(wallet["balance_nanos"], 0, "{wallet}");
}

/// Two nodes keep an app within its budget together: at 0.01 a call and
/// a budget of 0.25 a day, exactly 25 calls are answered (the wallet
/// affords 100), whichever node they reach.
#[tokio::test]
async fn two_nodes_keep_one_budget_exactly() {
    let TwoNodes {
        first,
        second,
        upstream,
        world,
        ..
    } = &budget_on_two_nodes("0.25", None).await;
    let ok = spend_over_two_nodes(
        (first, second),
        upstream,
        &world.key,
        25,
        "budget_exhausted",
    )
    .await;
    assert_eq!(ok, 25, "exactly what the budget allows");
    let wallet = wait_entries(first, 26).await;
    assert_eq!(wallet["balance_nanos"], 750_000_000, "{wallet}");
}

/// A budget far below what the wallet holds: every refusal names the
/// budget, never the wallet, though the nodes lease the wallet meanwhile.
#[tokio::test]
async fn two_nodes_refuse_a_small_budget_as_the_budget() {
    let TwoNodes {
        first,
        second,
        upstream,
        world,
        ..
    } = &budget_on_two_nodes("0.10", Some("9.00")).await;
    let ok = spend_over_two_nodes(
        (first, second),
        upstream,
        &world.key,
        10,
        "budget_exhausted",
    )
    .await;
    assert_eq!(ok, 10, "exactly what the budget allows");
}

/// A node cut off from the store stops spending its lease (503
/// `ledger_unavailable`) before the other nodes may take it; once back, it
/// keeps only what is still free: the wallet is never overspent.
#[tokio::test]
async fn a_node_cut_off_from_the_store_stops_spending() {
    let database = test_support::PgDatabase::create();
    let (proxy, proxied) = test_support::proxy::FreezableProxy::postgres(&database.url).await;
    let first = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options::on_database(&database.url),
    )
    .await;
    let second =
        Tollgate::start_with(BIN, test_support::tollgate::Options::on_database(&proxied)).await;
    let upstream = FakeUpstream::start("w").await;
    let world = priced_on_two_nodes(&first, &second, &upstream).await;
    let call = |node: &Tollgate| {
        let request = node
            .client
            .get(format!("{}/weather/forecast/x", node.gateway_url))
            .header("x-api-key", &world.key);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let mut ok = 0;
    for _ in 0..3 {
        assert_eq!(call(&second).await.0, 200);
        ok += 1;
    }
    proxy.cut();
    // Within seconds the cut-off node takes no paid call.
    let cut = std::time::Instant::now();
    loop {
        let (status, body) = call(&second).await;
        if status == 503 {
            assert_eq!(body["code"], "ledger_unavailable", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        ok += 1;
        assert!(
            cut.elapsed() < std::time::Duration::from_millis(6500),
            "still spending {:?} after the cut",
            cut.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Refused at once, not after the store's patience.
    let asked = std::time::Instant::now();
    assert_eq!(call(&second).await.0, 503);
    assert!(asked.elapsed() < std::time::Duration::from_millis(1500));
    // A partition of over ten seconds: the other node spends the rest,
    // never what the cut-off node held (and spent without writing it yet).
    tokio::time::sleep(std::time::Duration::from_secs(12).saturating_sub(cut.elapsed())).await;
    let mut refusals = 0;
    while refusals < 15 {
        match call(&first).await.0 {
            200 => ok += 1,
            402 => {
                refusals += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("answered {other}"),
        }
        assert!(ok <= 100, "{ok} calls on a wallet for 100");
    }
    proxy.restore();
    // Back: what it still holds and what comes back is spent, exactly.
    let mut refusals = 0;
    let mut turn = 0;
    while refusals < 30 {
        turn += 1;
        let node = if turn % 2 == 0 { &first } else { &second };
        match call(node).await.0 {
            200 => {
                ok += 1;
                refusals = 0;
            }
            402 | 503 => {
                refusals += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("answered {other}"),
        }
        assert!(ok <= 100, "{ok} calls on a wallet for 100");
    }
    let wallet = wait_entries(&first, 1 + ok as i64).await;
    assert!(wallet["balance_nanos"].as_i64().unwrap() >= 0, "{wallet}");
    assert_eq!(
        wallet["balance_nanos"].as_i64().unwrap(),
        (100 - ok as i64) * 10_000_000,
        "every answered call charged once: {wallet}"
    );
}

/// In strict mode a call waits for its charge's commit, but not forever:
/// when the database stops answering it is answered after the strict
/// wait, and its charge is committed once the database is back.
#[tokio::test]
async fn strict_calls_are_answered_when_the_database_hangs_and_charged_after() {
    let database = test_support::PgDatabase::create();
    let (proxy, url) = test_support::proxy::FreezableProxy::postgres(&database.url).await;
    let mut options = test_support::tollgate::Options::on_database(&url);
    options
        .env
        .push(("TOLLGATE_MONEY__DURABILITY".into(), "strict".into()));
    let tollgate = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("w").await;
    let key = priced_world(&tollgate, &upstream, 10).await;
    // The probe leased the node some calls' worth: the next one needs no
    // lease transaction, only its charge's commit.
    proxy.freeze();
    let started = std::time::Instant::now();
    let response = tollgate.get_with_key("/weather/forecast/x", &key).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        waited >= std::time::Duration::from_secs(9) && waited < std::time::Duration::from_secs(14),
        "answered after {waited:?}"
    );
    proxy.thaw();
    let wallet = wait_entries_for(&tollgate, 3, std::time::Duration::from_secs(15)).await;
    assert_eq!(wallet["balance"], "0.09", "{wallet}");
}

/// Waits until acme's ledger holds `entries` entries (up to `patience`).
async fn wait_entries_for(
    tollgate: &Tollgate,
    entries: i64,
    patience: std::time::Duration,
) -> Value {
    let started = std::time::Instant::now();
    loop {
        let (status, wallet) = tollgate
            .admin(Method::GET, "/api/v1/teams/acme/wallet", None)
            .await;
        if status == 200 && wallet["entries"] == entries {
            return wallet;
        }
        assert!(
            started.elapsed() < patience,
            "ledger at {wallet}, expected {entries} entries"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn a_thousand_calls_for_a_hundred(tollgate: &Tollgate) {
    let upstream = FakeUpstream::start("w").await;
    let key = priced_world(tollgate, &upstream, 100).await;
    let hits_before = upstream.hits();

    let calls = (0..1000).map(|n| {
        let key = key.clone();
        async move {
            let response = tollgate
                .get_with_key(&format!("/weather/forecast/city-{n}"), &key)
                .await;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, headers, body)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok: Vec<_> = results.iter().filter(|(s, _, _)| *s == 200).collect();
    let refused: Vec<_> = results.iter().filter(|(s, _, _)| *s == 402).collect();
    assert_eq!(ok.len(), 100, "exactly what the wallet affords");
    assert_eq!(refused.len(), 900);
    assert_eq!(
        upstream.hits() - hits_before,
        100,
        "refused calls never reach the upstream"
    );
    for (_, headers, body) in &refused {
        assert_eq!(body["code"], "insufficient_credit", "{body}");
        assert_eq!(body["status"], 402);
        assert_eq!(body["required"], "0.01");
        assert_eq!(body["currency"], "USD");
        assert_eq!(body["plan"], "pay-as-you-go");
        assert!(body["balance"].as_str().is_some());
        assert!(
            body["top_up_url"]
                .as_str()
                .unwrap()
                .ends_with("/_tollgate/portal/teams/acme/wallet"),
            "{body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains("0.01 USD"),
            "{body}"
        );
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(
            body["request_id"],
            headers["x-request-id"].to_str().unwrap()
        );
    }
    for (_, headers, _) in &ok {
        let balance = headers["tollgate-balance"].to_str().unwrap();
        assert!(balance.ends_with(" USD"), "{balance}");
    }
    // The ledger: the grant, the probe's charge and exactly 100 more; the
    // balance is exactly zero.
    let wallet = wait_entries(tollgate, 102).await;
    assert_eq!(wallet["balance_nanos"], 0, "{wallet}");
    let entries = ledger(tollgate, "acme", "&kind=charge").await;
    assert_eq!(entries.len(), 101);
    assert!(entries.iter().all(|e| e["amount"] == "-0.01"));
    let charged: std::collections::HashSet<&str> = entries
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    for (_, headers, _) in &ok {
        let id = headers["x-request-id"].to_str().unwrap();
        assert!(charged.contains(id), "call {id} was charged");
    }
}

#[tokio::test]
async fn failed_calls_are_not_charged_and_balances_survive_a_restart() {
    let upstream = FakeUpstream::start("w").await;
    let data_dir = tempfile::tempdir().unwrap();
    let options = || test_support::tollgate::Options::in_dir(data_dir.path());
    let tollgate = Tollgate::start_with(BIN, options()).await;
    // 0.05 left after the probe.
    let key = priced_world(&tollgate, &upstream, 5).await;
    let mut paid = 0;
    // Calls until `want` answers, counting the paid (200) ones.
    async fn until(tollgate: &Tollgate, key: &str, path: &str, want: u16, paid: &mut i64) {
        let started = std::time::Instant::now();
        loop {
            let response = tollgate.get_with_key(path, key).await;
            let status = response.status().as_u16();
            if status == 200 {
                *paid += 1;
            }
            if status == want {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{path}: {status}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    // An upstream 5xx is not charged.
    tollgate
        .create(
            "/api/v1/services/weather/routes",
            json!({"methods": ["GET"], "path": "/status/{code}"}),
        )
        .await;
    until(&tollgate, &key, "/weather/status/503", 503, &mut paid).await;
    // The balance is told, and it has not moved: nor has the count of
    // calls it pays (the call was given back).
    let unmoved = |response: &reqwest::Response, paid: i64| {
        assert_eq!(
            response.headers()["tollgate-balance"],
            format!("0.0{} USD", 5 - paid).as_str()
        );
        let warning = response.headers()["tollgate-warning"].to_str().unwrap();
        assert!(
            warning.contains(&format!("low-balance;calls-left={}", 5 - paid)),
            "{warning}"
        );
    };
    for _ in 0..5 {
        let response = tollgate.get_with_key("/weather/status/500", &key).await;
        assert_eq!(response.status(), 500);
        unmoved(&response, paid);
    }
    // Nor is a call the upstream never answered (connection refused).
    let upstream_to = |url: String| {
        tollgate.admin(
            Method::PATCH,
            "/api/v1/upstreams/weather-backend",
            Some(json!({"targets": [{"url": url, "weight": 1}]})),
        )
    };
    assert_eq!(upstream_to("http://127.0.0.1:9".into()).await.0, 200);
    until(&tollgate, &key, "/weather/forecast/down", 502, &mut paid).await;
    for _ in 0..5 {
        // 502, then 503 once the dead target is ejected: never charged.
        let response = tollgate.get_with_key("/weather/forecast/down", &key).await;
        assert!([502, 503].contains(&response.status().as_u16()));
        // The gateway's own refusal tells the balance as an answer does.
        unmoved(&response, paid);
    }
    assert_eq!(upstream_to(upstream.url()).await.0, 200);
    until(&tollgate, &key, "/weather/forecast/up", 200, &mut paid).await;
    assert!(paid < 5, "the test needs money left: {paid} paid calls");
    let left = 5 - paid;
    let response = tollgate
        .get_with_key("/weather/forecast/balance", &key)
        .await;
    assert_eq!(response.status(), 200);
    let left = left - 1;
    assert_eq!(
        response.headers()["tollgate-balance"],
        format!("0.0{left} USD").as_str(),
        "only the answered calls were charged"
    );
    // grant + probe + every paid call.
    let wallet = wait_entries(&tollgate, 2 + paid + 1).await;
    assert_eq!(wallet["balance"], format!("0.0{left}").as_str());
    drop(tollgate);

    // After a restart the gateway starts from the ledger: it lets through
    // exactly what is left.
    let tollgate = Tollgate::start_with(BIN, options()).await;
    for spent in 1..=left {
        let response = tollgate.get_with_key("/weather/forecast/after", &key).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["tollgate-balance"],
            format!("0.0{} USD", left - spent).as_str()
        );
    }
    let response = tollgate.get_with_key("/weather/forecast/none", &key).await;
    assert_eq!(response.status(), 402);
    let wallet = wait_entries(&tollgate, 2 + paid + 1 + left).await;
    assert_eq!(wallet["balance_nanos"], 0);
}

/// With a charge queue of one, most charges find it full: they are added
/// up per team and recorded as aggregated entries. Memory stays bounded and
/// the money is exact.
#[tokio::test]
async fn charges_that_find_the_queue_full_are_aggregated_not_lost() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options {
            env: vec![("TOLLGATE_MONEY__CHARGE_QUEUE".into(), "1".into())],
            ..Default::default()
        },
    )
    .await;
    let key = priced_world(&tollgate, &upstream, 300).await;
    let calls = (0..300).map(|n| {
        let key = key.clone();
        let tollgate = &tollgate;
        async move {
            tollgate
                .get_with_key(&format!("/weather/forecast/c-{n}"), &key)
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the wallet affords all 300"
    );
    let started = std::time::Instant::now();
    let wallet = loop {
        let wallet = wallet(&tollgate, "acme").await;
        if wallet["balance_nanos"] == 0 {
            break wallet;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{wallet}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let charges = ledger(&tollgate, "acme", "&kind=charge").await;
    let total: i64 = charges
        .iter()
        .map(|e| e["amount_nanos"].as_i64().unwrap())
        .sum();
    assert_eq!(
        total, -3_010_000_000,
        "301 calls at 0.01, exactly: {wallet}"
    );
    assert!(
        charges.len() < 301,
        "some charges were aggregated ({} entries)",
        charges.len()
    );
    assert!(
        charges
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("aggregated")),
        "an aggregated entry says so"
    );
}

/// Every charge entry of acme: (request id, amount), through 500-entry pages.
async fn charges_by_request(tollgate: &Tollgate) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/teams/acme/wallet/ledger?limit=500&kind=charge".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = tollgate.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        for entry in page["data"].as_array().unwrap() {
            found.push((
                entry["request_id"].as_str().unwrap_or_default().to_owned(),
                entry["amount_nanos"].as_i64().unwrap(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return found,
        }
    }
}

/// What the load saw of one call.
enum Seen {
    /// 200, answered at this instant.
    Paid(std::time::Instant),
    /// The connection broke (the process was killed).
    Broken,
    Other(u16),
}

/// Runs paid calls from 16 clients, kills the process with SIGKILL in the
/// middle, restarts it on the same data, and compares the ledger with what
/// the clients saw. Returns (calls answered 200, charges recorded).
async fn kill_nine_mid_load(strict: bool) -> (usize, usize) {
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, Instant};
    let data_dir = tempfile::tempdir().unwrap();
    let options = || test_support::tollgate::Options {
        env: if strict {
            vec![("TOLLGATE_MONEY__DURABILITY".into(), "strict".into())]
        } else {
            Vec::new()
        },
        ..test_support::tollgate::Options::in_dir(data_dir.path())
    };
    let tollgate = Tollgate::start_with(BIN, options()).await;
    let upstream = FakeUpstream::start("w").await;
    let key = priced_world(&tollgate, &upstream, 1_000_000).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients = (0..16).map(|client| {
        let key = key.clone();
        let stop = stop.clone();
        let answered = answered.clone();
        let url = format!("{}/weather/forecast/x", tollgate.gateway_url);
        async move {
            let http = test_support::tollgate::client();
            let mut seen = Vec::new();
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = format!("load-{client}-{n}");
                let outcome = http
                    .get(&url)
                    .bearer_auth(&key)
                    .header("x-request-id", &id)
                    .send()
                    .await;
                let outcome = match outcome {
                    Ok(response) if response.status() == 200 => match response.bytes().await {
                        Ok(_) => {
                            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Seen::Paid(Instant::now())
                        }
                        Err(_) => Seen::Broken,
                    },
                    Ok(response) => Seen::Other(response.status().as_u16()),
                    Err(_) => Seen::Broken,
                };
                let broken = matches!(outcome, Seen::Broken);
                seen.push((id, outcome));
                if broken {
                    break;
                }
            }
            seen
        }
    });
    let killer = async {
        // In the middle of the load: after 800 ms and 150 answered calls
        // (however slow the machine), or 20 s.
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(800)).await;
        while answered.load(std::sync::atomic::Ordering::Relaxed) < 150
            && started.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed_at = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-9", &tollgate.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        killed_at
    };
    let (seen, killed_at) = tokio::join!(futures_util::future::join_all(clients), killer);
    let seen: HashMap<String, Seen> = seen.into_iter().flatten().collect();
    drop(tollgate);

    let again = Tollgate::start_with(BIN, options()).await;
    // Entries of the load: one per call (with its request id), or one per
    // busy batch (many calls, no request id).
    let entries: Vec<(String, i64)> = charges_by_request(&again)
        .await
        .into_iter()
        .filter(|(id, _)| id.is_empty() || id.starts_with("load-"))
        .collect();
    let per_call: Vec<&str> = entries
        .iter()
        .filter(|(id, _)| !id.is_empty())
        .map(|(id, _)| id.as_str())
        .collect();
    let charged: HashSet<&str> = per_call.iter().copied().collect();
    assert_eq!(charged.len(), per_call.len(), "no call is charged twice");
    let charged_calls: i64 = entries.iter().map(|(_, amount)| -amount / 10_000_000).sum();
    assert!(entries.iter().all(|(_, amount)| *amount % 10_000_000 == 0));
    let paid: Vec<(&String, Instant)> = seen
        .iter()
        .filter_map(|(id, s)| match s {
            Seen::Paid(at) => Some((id, *at)),
            _ => None,
        })
        .collect();
    let broken = seen.values().filter(|s| matches!(s, Seen::Broken)).count() as i64;
    assert!(paid.len() > 100, "the load ran: {} paid calls", paid.len());
    for id in &charged {
        assert!(
            matches!(seen.get(*id), Some(Seen::Paid(_) | Seen::Broken)),
            "{id} was charged but neither answered nor cut off by the kill"
        );
        if let Some(Seen::Other(status)) = seen.get(*id) {
            panic!("{id} answered {status} and was charged");
        }
    }
    let answered = paid.len() as i64;
    assert!(
        charged_calls <= answered + broken,
        "never more charged ({charged_calls}) than answered ({answered}) or cut off ({broken})"
    );
    let lost = (answered - charged_calls).max(0);
    if strict {
        assert!(
            charged_calls >= answered,
            "strict: every answered call is charged; {charged_calls} of {answered}"
        );
    } else {
        // The documented window: only calls answered just before the kill
        // may be missing (the batch being gathered, 10 ms, and the one
        // being written; a loaded CI machine gets a second).
        let recent = paid
            .iter()
            .filter(|(_, at)| killed_at.saturating_duration_since(*at) < Duration::from_secs(1))
            .count() as i64;
        assert!(
            lost <= recent,
            "{lost} answered calls not charged, but only {recent} were answered in the last second"
        );
        println!(
            "batched: {lost} answered calls not charged ({recent} answered in the last second)"
        );
    }
    // The wallet is the ledger's sum, and the restarted node agrees.
    let wallet = wallet(&again, "acme").await;
    let (_, entries) = again
        .admin(Method::GET, "/api/v1/teams/acme/wallet", None)
        .await;
    assert_eq!(wallet["balance_nanos"], entries["balance_nanos"]);
    (paid.len(), usize::try_from(charged_calls).unwrap_or(0))
}

#[tokio::test]
async fn kill_nine_in_the_middle_of_a_load_loses_at_most_the_window() {
    let (paid, charged) = kill_nine_mid_load(false).await;
    println!("batched: {paid} calls answered, {charged} charged");
}

#[tokio::test]
async fn kill_nine_in_strict_mode_loses_no_answered_charge() {
    let (paid, charged) = kill_nine_mid_load(true).await;
    println!("strict: {paid} calls answered, {charged} charged");
}

/// Grants recorded while hundreds of paid calls are charged: no update is
/// lost. The wallet equals the ledger's sum, which equals what was granted
/// less what the answered calls cost, and the gateway's view agrees.
#[tokio::test]
async fn concurrent_top_ups_and_charges_lose_no_update() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    // Enough for 100 calls at 0.01, then 40 grants of 0.05 while calling.
    let key = priced_world(&tollgate, &upstream, 100).await;
    let calls = (0..600).map(|n| {
        let key = key.clone();
        let tollgate = &tollgate;
        async move {
            tollgate
                .get_with_key(&format!("/weather/forecast/c{n}"), &key)
                .await
                .status()
                .as_u16()
        }
    });
    let shared = &tollgate;
    let grants = (0..40).map(|n| async move {
        let (status, body) = grant(
            shared,
            "acme",
            json!({"amount": "0.05", "reason": "top-up while calling", "idempotency_key": format!("t-{n}")}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    });
    let (statuses, _) = tokio::join!(
        futures_util::future::join_all(calls),
        futures_util::future::join_all(grants)
    );
    let paid = statuses.iter().filter(|s| **s == 200).count() as i64;
    let refused = statuses.iter().filter(|s| **s == 402).count() as i64;
    assert_eq!(paid + refused, 600, "only 200 or 402");
    assert!(
        paid >= 100,
        "at least what the first credit paid for: {paid}"
    );
    assert!(paid <= 300, "never more than all credit: {paid}");
    // grant (1.01) + 40 × 0.05 − probe − paid calls, all recorded.
    let expected = 1_010_000_000 + 40 * 50_000_000 - 10_000_000 - paid * 10_000_000;
    let wallet = wait_entries(&tollgate, 1 + 40 + 1 + paid).await;
    assert_eq!(wallet["balance_nanos"], expected, "{wallet}");
    let sum: i64 = ledger(&tollgate, "acme", "")
        .await
        .iter()
        .map(|e| e["amount_nanos"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, expected, "the wallet is the ledger's sum");
    // The gateway's in-memory wallet agrees once the grants are synced.
    let started = std::time::Instant::now();
    loop {
        let me: Value = tollgate.json_with_key("/_tollgate/me", &key).await;
        if me["balance"] == domain::money::format(expected) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "gateway sees {me}, ledger {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A caller that goes away while its priced call waits for the upstream
/// is not charged: the reservation goes back, the wallet still affords
/// exactly the calls it did, and the call is logged as 499 at no cost.
#[tokio::test]
async fn a_caller_that_goes_away_before_the_answer_is_not_charged() {
    use tokio::io::AsyncWriteExt;
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    let key = priced_world(&tollgate, &upstream, 1).await;
    // The grant and the probe's charge.
    wait_entries(&tollgate, 2).await;
    let hits = upstream.hits();
    let mut stream =
        tokio::net::TcpStream::connect(tollgate.gateway_url.trim_start_matches("http://"))
            .await
            .unwrap();
    stream
        .write_all(
            format!(
                "GET /weather/forecast/hold HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    crate::eventually("the upstream has the call", || upstream.hits() > hits).await;
    drop(stream);
    crate::eventually("the upstream call is ended", || upstream.abandoned() == 1).await;
    // The money held for it is back: one call affordable, then none.
    let paid = tollgate.get_with_key("/weather/forecast/paid", &key).await;
    assert_eq!(paid.status(), 200);
    let refused = tollgate.get_with_key("/weather/forecast/more", &key).await;
    assert_eq!(refused.status(), 402);
    let wallet = wait_entries(&tollgate, 3).await;
    assert_eq!(wallet["balance_nanos"], 0, "{wallet}");
    let gone = &crate::logged(
        &tollgate,
        test_support::tollgate::ADMIN_TOKEN,
        "status=499",
        1,
    )
    .await[0];
    assert_eq!(gone["path"], "/weather/forecast/hold", "{gone}");
    assert_eq!(gone["app"], "acme-web", "who called is known: {gone}");
    assert_eq!(gone["cost"], "0.00", "{gone}");
    assert!(
        gone["upstream_target"].as_str().is_some()
            && gone["upstream_latency_ms"].as_f64().is_some(),
        "the target it waited for, and how long: {gone}"
    );
}

/// An admin debit competes with calls in flight: their held prices are not
/// spendable twice, so a negative adjustment for the whole ledger balance
/// is refused while calls hold part of it, and the wallet never ends
/// below zero.
#[tokio::test]
async fn admin_debits_cannot_spend_what_calls_in_flight_hold() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    // 10 calls' worth (0.10) plus the probe's.
    let key = priced_world(&tollgate, &upstream, 10).await;
    wait_entries(&tollgate, 2).await;
    // Five calls held at the upstream: 0.05 of the 0.10 is theirs.
    let mut calls = Vec::new();
    for _ in 0..5 {
        let client = tollgate.client.clone();
        let url = format!("{}/weather/forecast/hold", tollgate.gateway_url);
        let key = key.clone();
        calls.push(tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let hits = upstream.hits();
    crate::eventually("five calls in flight", || upstream.hits() >= hits + 5).await;
    let adjust = |amount: &'static str| {
        let tollgate = &tollgate;
        async move {
            tollgate
                .admin(
                    Method::POST,
                    "/api/v1/teams/acme/wallet/adjustments",
                    Some(json!({"amount": amount, "reason": "correction"})),
                )
                .await
        }
    };
    let (status, body) = adjust("-0.08").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("0.05"), "{body}");
    let (status, body) = adjust("-0.05").await;
    assert_eq!(status, 201, "{body}");
    upstream.open_gate();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    // Grant, probe, adjustment and five charges.
    let wallet = wait_entries(&tollgate, 8).await;
    assert_eq!(wallet["balance_nanos"], 0, "{wallet}");
    // Nothing is left for another call.
    let refused = tollgate.get_with_key("/weather/forecast/more", &key).await;
    assert_eq!(refused.status(), 402);
}

/// A call refused for money counts in no rate limit: once the wallet is
/// topped up, the next call goes through (SPEC §4: a 402 means paying
/// would let the request through now), however many 402s came before.
#[tokio::test]
async fn calls_refused_for_money_use_up_no_rate_limit() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather/plans/pay-as-you-go",
            Some(json!({"price_per_request": "0.01", "rate_limits": [{"requests": 3, "per": "minute"}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_status(&tollgate, "/weather/forecast/ready", &world.key, 402).await;
    for _ in 0..6 {
        let response = tollgate
            .get_with_key("/weather/forecast/x", &world.key)
            .await;
        assert_eq!(response.status(), 402);
    }
    let (status, body) = grant(
        &tollgate,
        "acme",
        json!({"amount": "1", "reason": "top-up"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_status(&tollgate, "/weather/forecast/paid", &world.key, 200).await;
}

/// A budget that changes kind after a restart keeps what was spent before
/// it: the restarted node reads its earlier spend as another node's, and
/// a week holds that day too.
#[tokio::test]
async fn a_budget_made_weekly_after_a_restart_keeps_the_days_spend() {
    let data_dir = tempfile::tempdir().unwrap();
    let options = || test_support::tollgate::Options::in_dir(data_dir.path());
    let tollgate = Tollgate::start_with(BIN, options()).await;
    let upstream = FakeUpstream::start("w").await;
    let key = priced_world(&tollgate, &upstream, 100).await;
    let budget = |period: &str| json!({"budget": {"amount": "0.10", "period": period}});
    let (status, body) = tollgate
        .admin(Method::PATCH, "/api/v1/apps/acme-web", Some(budget("day")))
        .await;
    assert_eq!(status, 200, "{body}");
    async fn spent(tollgate: &Tollgate, key: &str) -> String {
        let me: Value = tollgate.json_with_key("/_tollgate/me", key).await;
        me["budget"]["spent"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    let started = std::time::Instant::now();
    while spent(&tollgate, &key).await != "0.00" {
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let response = tollgate.get_with_key("/weather/forecast/x", &key).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(spent(&tollgate, &key).await, "0.05");
    assert!(tollgate.stop().await.success());

    let again = Tollgate::start_with(BIN, options()).await;
    assert_eq!(
        spent(&again, &key).await,
        "0.05",
        "the day's spend survives"
    );
    let period = |me: &Value| {
        (
            me["budget"]["period_start"].clone(),
            me["budget"]["period_end"].clone(),
        )
    };
    let daily = period(&again.json_with_key("/_tollgate/me", &key).await);
    let (status, body) = again
        .admin(Method::PATCH, "/api/v1/apps/acme-web", Some(budget("week")))
        .await;
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    loop {
        let me: Value = again.json_with_key("/_tollgate/me", &key).await;
        // A week never spans exactly the day.
        if period(&me) != daily {
            assert_eq!(me["budget"]["spent"], "0.05", "{me}");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{me}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut answered = 0;
    for _ in 0..10 {
        let response = again.get_with_key("/weather/forecast/x", &key).await;
        match response.status().as_u16() {
            200 => answered += 1,
            402 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["code"], "budget_exhausted", "{body}");
            }
            other => panic!("answered {other}"),
        }
    }
    assert_eq!(answered, 5, "the week holds the day's 0.05");
}

/// A grant is spendable on the node once its answer comes: the next call
/// is paid from it, not refused while the node catches up.
#[tokio::test]
async fn a_grant_is_spendable_when_its_answer_comes() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let key = priced_world(&tollgate, &upstream, 0).await;
    for round in 0..5 {
        let (status, body) = grant(
            &tollgate,
            "acme",
            json!({"amount": "0.01", "reason": format!("round {round}")}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let response = tollgate.get_with_key("/weather/forecast/now", &key).await;
        let status = response.status();
        assert_eq!(
            status,
            200,
            "round {round}: {}",
            response.text().await.unwrap()
        );
    }
}
