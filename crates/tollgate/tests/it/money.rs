//! Wallets and the ledger through the admin API: exact amounts, idempotent
//! entries under concurrency, who may move money, bad amounts, CSV export,
//! on SQLite and PostgreSQL.

use reqwest::Method;
use serde_json::Value;

use crate::*;

async fn team(tollgate: &Tollgate, slug: &str) {
    tollgate
        .create("/api/v1/teams", json!({"slug": slug, "name": slug}))
        .await;
}

async fn grant(tollgate: &Tollgate, team: &str, body: Value) -> (reqwest::StatusCode, Value) {
    tollgate
        .admin(
            Method::POST,
            &format!("/api/v1/teams/{team}/wallet/grants"),
            Some(body),
        )
        .await
}

async fn wallet(tollgate: &Tollgate, team: &str) -> Value {
    let (status, body) = tollgate
        .admin(Method::GET, &format!("/api/v1/teams/{team}/wallet"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Every entry of a team's ledger, through the pages.
async fn ledger(tollgate: &Tollgate, team: &str, query: &str) -> Vec<Value> {
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
        assert_eq!(status, 201, "{body}");
    });
    let racing = (0..20).map(|_| async {
        let (status, body) = grant(
            tollgate,
            "acme",
            json!({"amount": "12.5", "reason": "welcome credit", "idempotency_key": "welcome"}),
        )
        .await;
        assert!(status == 201 || status == 200, "{status}: {body}");
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
    let (status, body) = tollgate
        .admin(Method::DELETE, "/api/v1/teams/other", None)
        .await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test]
async fn balances_survive_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let options = || test_support::tollgate::Options {
        data_dir: Some(data_dir.path().to_path_buf()),
        ..Default::default()
    };
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
            "wallet", "adjust", "--team", "acme", "--amount", "-0.5", "--reason", "fix",
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
