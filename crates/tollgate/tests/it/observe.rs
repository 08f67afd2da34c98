//! Observability through the binary: the call log (`/api/v1/logs` with its
//! filters and exports), analytics counts equal to the calls made,
//! `/_tollgate/requests/<id>`, tenants seeing only their own calls, bad
//! analytics questions, and `/metrics` read by Prometheus' own parser.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use test_support::tollgate::ADMIN_TOKEN;

use crate::money::{grant, priced_world};
use crate::*;

/// Admin GET as `token`, raw (for CSV and NDJSON).
async fn admin_text(tollgate: &Tollgate, token: &str, path: &str) -> (u16, String, String) {
    let response = tollgate
        .client
        .get(format!("{}{path}", tollgate.admin_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// A second app of team acme, subscribed to the priced weather service,
/// whose key is live; nothing has been called with it.
async fn fresh_app(tollgate: &Tollgate) -> String {
    let key = crate::app_with_key(tollgate, "acme", "acme-test").await;
    crate::subscribe_app(tollgate, "acme-test", "weather", "pay-as-you-go").await;
    // `/_tollgate/me` is answered without the app being logged as caller.
    let started = Instant::now();
    loop {
        let response = tollgate.get_with_key("/_tollgate/me", &key).await;
        if response.status() == 200 {
            let me: Value = response.json().await.unwrap();
            if me["subscriptions"].to_string().contains("weather") {
                return key;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(2), "key not live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count_where(calls: &[Value], field: &str, value: &Value) -> usize {
    calls.iter().filter(|c| &c[field] == value).count()
}

#[tokio::test]
async fn calls_are_logged_counted_and_explained() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    // Acme can afford three calls of 0.01 with its new app.
    priced_world(&tollgate, &upstream, 0).await;
    let key = fresh_app(&tollgate).await;
    let (status, body) = grant(&tollgate, "acme", json!({"amount": "0.03", "reason": "t"})).await;
    assert_eq!(status, 201, "{body}");
    // The grant reaches the gateway's wallet within the sync interval.
    let started = Instant::now();
    loop {
        let me: Value = tollgate.json_with_key("/_tollgate/me", &key).await;
        if me["balance"] == "0.03" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{me}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    for n in 0..5 {
        let response = tollgate
            .get_with_key(&format!("/weather/forecast/c{n}"), &key)
            .await;
        statuses.push(response.status().as_u16());
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 402, 402],
        "three paid, two refused"
    );
    let all = logged(&tollgate, ADMIN_TOKEN, "app=acme-test", 5).await;
    let calls = logged(&tollgate, ADMIN_TOKEN, "app=acme-test&status=200", 3).await;
    for call in &calls {
        assert_eq!(call["method"], "GET");
        assert_eq!(call["service"], "weather");
        assert_eq!(call["provider_team"], "weatherco");
        assert_eq!(call["consumer_team"], "acme");
        assert_eq!(call["plan"], "pay-as-you-go");
        assert_eq!(call["cost"], "0.01");
        assert_eq!(call["code"], Value::Null);
        assert_eq!(call["completed"], true);
        assert!(key.starts_with(call["key_prefix"].as_str().unwrap()));
        assert_eq!(call["upstream_target"], upstream.url());
        assert!(call["bytes_out"].as_u64().unwrap() > 0);
        let total = call["latency_ms"].as_f64().unwrap();
        let upstream_ms = call["upstream_latency_ms"].as_f64().unwrap();
        assert!(upstream_ms <= total, "{call}");
    }
    let refused = logged(
        &tollgate,
        ADMIN_TOKEN,
        "app=acme-test&code=insufficient_credit",
        2,
    )
    .await;
    for call in &refused {
        assert_eq!(call["status"], 402);
        assert_eq!(call["cost"], "0.00");
        assert_eq!(call["problem"]["code"], "insufficient_credit");
        assert_eq!(call["problem"]["required"], "0.01");
        assert_eq!(call["problem"]["balance"], "0.00");
        assert_eq!(call["upstream_target"], Value::Null, "never forwarded");
    }
    // Each of our request ids is found by the filter, exactly once.
    for id in &ids {
        let found = logged(&tollgate, ADMIN_TOKEN, &format!("request_id={id}"), 1).await;
        assert_eq!(found[0]["request_id"], id.as_str());
    }
    // A call no route serves is logged with its code and no service.
    let response = tollgate.get("/nowhere").await;
    let lost = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let found = logged(&tollgate, ADMIN_TOKEN, &format!("request_id={lost}"), 1).await;
    assert_eq!(found[0]["code"], "route_not_found");
    assert_eq!(found[0]["status"], 404);
    assert_eq!(found[0]["service"], Value::Null);
    // A client that sends back the id the gateway minted for that call
    // gets a log entry of its own, and the id finds both calls.
    let again = reqwest::Client::new()
        .get(format!("{}/nowhere/again", tollgate.gateway_url))
        .header("x-request-id", &lost)
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["x-request-id"], lost.as_str());
    let found = logged(&tollgate, ADMIN_TOKEN, &format!("request_id={lost}"), 2).await;
    assert_eq!(found[0]["path"], "/nowhere/again", "newest first");
    assert_eq!(found[1]["path"], "/nowhere");
    assert_ne!(found[0]["id"], found[1]["id"]);
    // The row id of a call that carried a client's id is not a request id:
    // it finds nothing.
    let client_row = found[0]["id"].as_str().unwrap();
    let (status, none) = tollgate
        .admin(
            Method::GET,
            &format!("/api/v1/logs?request_id={client_row}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(none["data"], json!([]), "{none}");

    // Platform admins see calls of no team too (the 404 above).
    let (_, by_service) = tollgate
        .admin(
            Method::GET,
            "/api/v1/analytics/summary?group_by=service",
            None,
        )
        .await;
    let unrouted = by_service["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "")
        .unwrap_or_else(|| panic!("no group of calls without a service: {by_service}"));
    assert!(unrouted["refusals"]["route_not_found"].as_i64().unwrap() >= 1);

    // Analytics count exactly the calls made.
    let app_calls = 5;
    let app_refused = 2;
    let (status, summary) = tollgate
        .admin(
            Method::GET,
            "/api/v1/analytics/summary?app=acme-test&group_by=status",
            None,
        )
        .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["requests"], app_calls, "{summary}");
    assert_eq!(summary["errors_4xx"], app_refused);
    assert_eq!(summary["errors_5xx"], 0);
    assert_eq!(summary["refusals"]["insufficient_credit"], app_refused);
    assert_eq!(summary["revenue"], "0.03");
    assert_eq!(summary["currency"], "USD");
    let groups = summary["groups"].as_array().unwrap();
    let of = |status: &str| {
        groups
            .iter()
            .find(|g| g["group"] == status)
            .map_or(0, |g| g["requests"].as_i64().unwrap())
    };
    assert_eq!(of("200"), 3);
    assert_eq!(of("402"), app_refused);
    assert!(summary["latency_ms_p99"].as_f64().unwrap() > 0.0);
    let (status, series) = tollgate
        .admin(
            Method::GET,
            "/api/v1/analytics/timeseries?metric=requests&interval=1m&app=acme-test",
            None,
        )
        .await;
    assert_eq!(status, 200, "{series}");
    let points = series["series"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 60, "an hour of minutes by default");
    let sum: f64 = points.iter().map(|p| p["value"].as_f64().unwrap()).sum();
    assert_eq!(sum, app_calls as f64);
    // Every metric's series adds up to the summary's figure (a series
    // reads only the columns its metric needs).
    let (_, whole) = tollgate
        .admin(Method::GET, "/api/v1/analytics/summary?app=acme-test", None)
        .await;
    let figure = |name: &str| whole[name].as_f64().unwrap();
    assert!(figure("bytes_out") > 0.0, "{whole}");
    let refusals: f64 = whole["refusals"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    for (metric, expected) in [
        ("requests", figure("requests")),
        ("errors", figure("errors_4xx") + figure("errors_5xx")),
        ("refusals", refusals),
        ("bytes_in", figure("bytes_in")),
        ("bytes_out", figure("bytes_out")),
        ("tokens", figure("input_tokens") + figure("output_tokens")),
        (
            "revenue",
            whole["revenue"].as_str().unwrap().parse().unwrap(),
        ),
    ] {
        let (status, series) = tollgate
            .admin(
                Method::GET,
                &format!("/api/v1/analytics/timeseries?metric={metric}&interval=1m&app=acme-test"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{series}");
        let sum: f64 = series["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_f64().unwrap())
            .sum();
        assert!(
            (sum - expected).abs() < 1e-9,
            "{metric}: the series adds up to {sum}, the summary says {expected}"
        );
    }
    // Exports hold the same calls.
    let (status, content_type, csv) = admin_text(
        &tollgate,
        ADMIN_TOKEN,
        "/api/v1/logs?app=acme-test&format=csv",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/csv; charset=utf-8");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,request_id,time,method,host,path,status,code"));
    assert!(
        lines[0].ends_with(",subscription_id,plan,provider,ttft_ms,completed,problem"),
        "{}",
        lines[0]
    );
    assert_eq!(lines.len(), all.len() + 1, "{csv}");
    // With a limit, that many rows and where the rest starts.
    let response = tollgate
        .client
        .get(format!(
            "{}/api/v1/logs?app=acme-test&format=csv&limit=2",
            tollgate.admin_url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let cursor = response.headers()["tollgate-next-cursor"]
        .to_str()
        .unwrap()
        .to_owned();
    let first = response.text().await.unwrap();
    let (_, _, rest) = admin_text(
        &tollgate,
        ADMIN_TOKEN,
        &format!("/api/v1/logs?app=acme-test&format=csv&cursor={cursor}"),
    )
    .await;
    assert_eq!(first.lines().count(), 3, "{first}");
    assert_eq!(
        first.lines().count() + rest.lines().count(),
        all.len() + 2,
        "the two parts hold every call once: {first}{rest}"
    );
    // The OpenAPI document names both export formats.
    let (_, doc) = tollgate
        .admin(reqwest::Method::GET, "/api/v1/openapi.json", None)
        .await;
    let answers = &doc["paths"]["/api/v1/logs"]["get"]["responses"]["200"]["content"];
    for content_type in ["application/json", "text/csv", "application/x-ndjson"] {
        assert!(
            answers.get(content_type).is_some(),
            "{content_type}: {answers}"
        );
    }
    let (status, content_type, ndjson) = admin_text(
        &tollgate,
        ADMIN_TOKEN,
        "/api/v1/logs?app=acme-test&format=ndjson",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/x-ndjson");
    let rows: Vec<Value> = ndjson
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), all.len());
    assert_eq!(count_where(&rows, "status", &json!(200)), 3);

    // The caller looks up its own calls: the decision and its numbers.
    let refused_id = refused[0]["request_id"].as_str().unwrap();
    let response = tollgate
        .get_with_key(&format!("/_tollgate/requests/{refused_id}"), &key)
        .await;
    assert_eq!(response.status(), 200);
    let explained: Value = response.json().await.unwrap();
    assert_eq!(explained["decision"]["outcome"], "refused");
    assert_eq!(explained["decision"]["code"], "insufficient_credit");
    assert!(explained["decision"]["fix"].as_str().unwrap().len() > 20);
    assert_eq!(explained["problem"]["required"], "0.01");
    assert_eq!(explained["service"], "weather");
    let response = tollgate
        .get_with_key(&format!("/_tollgate/requests/{}", ids[0]), &key)
        .await;
    let explained: Value = response.json().await.unwrap();
    assert_eq!(explained["decision"]["outcome"], "answered", "{explained}");
    assert_eq!(explained["cost"], "0.01");
    // Not the caller's own call (the 404 carried no key), unknown ids, and
    // no key at all.
    for id in [lost.as_str(), "no-such-request"] {
        let response = tollgate
            .get_with_key(&format!("/_tollgate/requests/{id}"), &key)
            .await;
        problem(response, 404, "request_not_found").await;
    }
    let response = tollgate
        .get(&format!("/_tollgate/requests/{refused_id}"))
        .await;
    problem(response, 401, "missing_credentials").await;

    // Tenants: the consumer's and the provider's members see the calls,
    // a third team sees none of them.
    let mut tokens = Vec::new();
    for (email, team) in [
        ("alice@acme.test", "acme"),
        ("bob@weatherco.test", "weatherco"),
        ("carol@third.test", "third"),
    ] {
        let (_, token) = tollgate.user_with_token(email).await;
        if team == "third" {
            let (status, _) = tollgate
                .admin_as(
                    &token,
                    Method::POST,
                    "/api/v1/teams",
                    Some(json!({"slug": "third"})),
                )
                .await;
            assert_eq!(status, 201);
        } else {
            let (status, body) = tollgate
                .admin(
                    Method::POST,
                    &format!("/api/v1/teams/{team}/members"),
                    Some(json!({"user": email, "role": "viewer"})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        tokens.push(token);
    }
    for (index, token) in tokens[..2].iter().enumerate() {
        let seen = logged(&tollgate, token, "app=acme-test", all.len()).await;
        assert_eq!(seen.len(), all.len());
        // The consumer's balance is the consumer's; the upstream's address
        // the provider's.
        let consumer = index == 0;
        for call in &seen {
            if call["status"] == 402 {
                assert_eq!(call["problem"].get("balance").is_some(), consumer, "{call}");
                assert_eq!(call["problem"]["required"], "0.01");
                // Nor do the problem's words tell it.
                let detail = call["problem"]["detail"].as_str().unwrap();
                assert_eq!(detail.contains("left to spend"), consumer, "{call}");
            } else {
                assert_eq!(call["upstream_target"].is_null(), consumer, "{call}");
            }
        }
        let (_, summary) = tollgate
            .admin_as(
                token,
                Method::GET,
                "/api/v1/analytics/summary?app=acme-test",
                None,
            )
            .await;
        assert_eq!(summary["requests"], app_calls);
    }
    // A user of no team sees no call, not even the ones of no team (the
    // 404 above).
    let (_, dave) = tollgate.user_with_token("dave@nowhere.test").await;
    logged(&tollgate, &dave, "", 0).await;
    let (_, summary) = tollgate
        .admin_as(&dave, Method::GET, "/api/v1/analytics/summary", None)
        .await;
    assert_eq!(summary["requests"], 0, "{summary}");
    let carol = &tokens[2];
    logged(&tollgate, carol, "", 0).await;
    let (_, summary) = tollgate
        .admin_as(carol, Method::GET, "/api/v1/analytics/summary", None)
        .await;
    assert_eq!(summary["requests"], 0, "{summary}");
    let (status, _, _) = admin_text(&tollgate, "not-a-token", "/api/v1/logs").await;
    assert_eq!(status, 401);
    // Metrics name every team: platform admins only.
    let (status, _, _) = admin_text(&tollgate, carol, "/metrics").await;
    assert_eq!(status, 403);

    // /metrics parses with Prometheus' own parser and counts what the log
    // holds.
    // Both are read again until they agree: the last calls may still be on
    // their way to the log (metrics count a batch just before it is
    // written).
    let started = Instant::now();
    loop {
        let logged_total = logged_count(&tollgate, "").await;
        let logged_402 = logged_count(&tollgate, "code=insufficient_credit").await;
        let (status, content_type, text) = admin_text(&tollgate, ADMIN_TOKEN, "/metrics").await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        let parsed = parse_metrics(&text);
        let requests = parsed["tollgate_requests"].as_f64().unwrap();
        if requests as usize == logged_total || started.elapsed() > Duration::from_secs(5) {
            assert_eq!(requests as usize, logged_total, "{text}");
            assert_eq!(
                parsed["tollgate_requests_insufficient_credit"].as_f64(),
                Some(logged_402 as f64)
            );
            assert!(
                parsed["families"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == "tollgate_gateway_overhead_seconds")
            );
            assert_eq!(parsed["up"], 1.0, "the fake upstream is up");
            // Every call's duration, by service, route and status class.
            assert_eq!(parsed["durations"].as_f64(), Some(requests), "{text}");
            assert_eq!(
                parsed["duration_labels"],
                json!(["route", "service", "status_class"])
            );
            assert_eq!(parsed["duration_classes"], json!(["2xx", "4xx"]), "{text}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls in the log matching `query` (as root).
async fn logged_count(tollgate: &Tollgate, query: &str) -> usize {
    let (_, _, ndjson) = admin_text(
        tollgate,
        ADMIN_TOKEN,
        &format!("/api/v1/logs?format=ndjson&{query}"),
    )
    .await;
    ndjson.lines().count()
}

/// Parses the exposition with `prometheus_client.parser` (PyPI
/// `prometheus-client`, see `test_support::python`); returns a few sums.
fn parse_metrics(text: &str) -> Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(sys.stdin.read()))
out = {"families": [f.name for f in families], "tollgate_requests": 0.0,
       "tollgate_requests_insufficient_credit": 0.0, "up": None,
       "durations": 0.0, "duration_labels": [], "duration_classes": []}
for family in families:
    for sample in family.samples:
        if sample.name == "tollgate_request_duration_seconds_count":
            out["durations"] += sample.value
            out["duration_labels"] = sorted(sample.labels)
            out["duration_classes"] = sorted(set(out["duration_classes"]) | {sample.labels["status_class"]})
        if sample.name == "tollgate_requests_total":
            out["tollgate_requests"] += sample.value
            if sample.labels["code"] == "insufficient_credit":
                out["tollgate_requests_insufficient_credit"] += sample.value
        if sample.name == "tollgate_upstream_target_up" and sample.labels["upstream"] == "weather-backend":
            out["up"] = sample.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(test_support::python::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused /metrics: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn bad_analytics_questions_are_refused_with_the_limit() {
    let tollgate = Tollgate::start(BIN).await;
    for (path, field, says) in [
        (
            "/api/v1/analytics/summary?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
            "must be before 'to'",
        ),
        (
            "/api/v1/analytics/timeseries?metric=happiness",
            "metric",
            "must be one of requests, errors",
        ),
        ("/api/v1/analytics/timeseries", "metric", "is required"),
        (
            "/api/v1/analytics/timeseries?metric=requests&interval=1m&from=2026-01-01T00:00:00Z&to=2026-01-31T00:00:00Z",
            "interval",
            "at most 1440 are answered",
        ),
        (
            "/api/v1/analytics/timeseries?metric=requests&interval=2m",
            "interval",
            "must be one of 1m, 5m",
        ),
        (
            "/api/v1/analytics/summary?group_by=colour",
            "group_by",
            "must be one of service, app, team",
        ),
        (
            "/api/v1/analytics/summary?from=yesterday",
            "from",
            "RFC 3339",
        ),
        (
            "/api/v1/analytics/summary?to=9223372036854775807",
            "to",
            "epoch milliseconds below 2^47",
        ),
        ("/api/v1/logs?from=-5", "from", "between 1970"),
        ("/api/v1/logs?status=999", "status", "from 100 to 599"),
        ("/api/v1/logs?code=nope", "code", "is not a refusal code"),
        ("/api/v1/logs?format=xml", "format", "json, csv or ndjson"),
        (
            "/api/v1/logs?colour=red",
            "colour",
            "is not a known parameter",
        ),
        // Analytics answer in one piece: no paging parameters.
        (
            "/api/v1/analytics/summary?limit=5",
            "limit",
            "comes in one piece",
        ),
        (
            "/api/v1/analytics/timeseries?metric=requests&cursor=abc",
            "cursor",
            "is not a cursor",
        ),
        (
            "/api/v1/analytics/summary?colour=red",
            "expected one of from, to, group_by",
            "is not a known parameter",
        ),
    ] {
        let (status, body) = tollgate.admin(Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        let text = body.to_string();
        assert!(text.contains(field), "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    // Weeks start on Mondays: 2026-11-05 is a Thursday.
    let (status, body) = tollgate
        .admin(
            Method::GET,
            "/api/v1/analytics/timeseries?metric=requests&interval=7d&from=2026-11-05T00:00:00Z&to=2026-11-20T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["from"], "2026-11-02T00:00:00Z", "{body}");
    assert_eq!(body["to"], "2026-11-23T00:00:00Z", "{body}");
    assert_eq!(body["series"][0]["points"].as_array().unwrap().len(), 3);
    // A month at one point per hour is fine.
    let (status, body) = tollgate
        .admin(
            Method::GET,
            "/api/v1/analytics/timeseries?metric=latency_p95&interval=1h&from=2026-01-01T00:00:00Z&to=2026-01-31T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["series"][0]["points"].as_array().unwrap().len(), 720);
}

/// A burst of 402s fires the provider's alert once; more 402s while it
/// fires announce nothing; when they stop it resolves, once. Rules are
/// audited and belong to their team.
#[tokio::test]
async fn an_alert_fires_once_on_a_burst_of_402s_and_resolves() {
    let upstream = FakeUpstream::start("w").await;
    let receiver = test_support::webhook::WebhookReceiver::start(0).await;
    let tollgate = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options {
            env: vec![("TOLLGATE_ALERTS__EVALUATE_EVERY_MS".into(), "200".into())],
            ..Default::default()
        },
    )
    .await;
    // Acme's wallet is empty: every call is a 402.
    let key = priced_world(&tollgate, &upstream, 0).await;
    // The setup's own 402s leave the 10 s window before the burst.
    let setup_done = Instant::now();
    tollgate
        .create(
            "/api/v1/teams/weatherco/webhooks",
            json!({"url": receiver.url(), "events": ["alert.firing", "alert.resolved"]}),
        )
        .await;
    // Bad rules name the field.
    for (rule, field) in [
        (
            json!({"slug": "x", "team": "weatherco", "metric": "refusals_402", "threshold": 0}),
            "threshold",
        ),
        (
            json!({"slug": "x", "team": "weatherco", "metric": "refusals_402", "threshold": 5, "window_seconds": 5}),
            "window_seconds",
        ),
        (
            json!({"slug": "x", "team": "weatherco", "metric": "refusals_402", "threshold": 5, "service": "nope"}),
            "service",
        ),
        (
            json!({"slug": "x", "team": "weatherco", "metric": "happiness", "threshold": 5}),
            "metric",
        ),
    ] {
        let (status, body) = tollgate
            .admin(Method::POST, "/api/v1/alerts", Some(rule))
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    let rule = alert_on_402s(&tollgate, "too-many-402").await;
    assert_eq!(rule["enabled"], true);
    // A consumer-side rule may name a service its team's apps subscribe
    // to, though another team runs it.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/alerts",
            Some(
                json!({"slug": "acme-402", "team": "acme", "as_consumer": true,
                        "metric": "refusals_402", "threshold": 1000, "service": "weather"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = tollgate
        .admin(Method::DELETE, "/api/v1/alerts/acme-402", None)
        .await;
    assert_eq!(status, 204);
    let burst = |n: usize| {
        let tollgate = &tollgate;
        let key = &key;
        async move {
            for _ in 0..n {
                let response = tollgate.get_with_key("/weather/forecast/x", key).await;
                assert_eq!(response.status(), 402);
            }
        }
    };
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(setup_done.elapsed())).await;
    // Four 402s stay under the threshold.
    burst(4).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(receiver.received().is_empty(), "fired under the threshold");
    burst(6).await;
    let received = receiver.wait_for(1, Duration::from_secs(5)).await;
    let firing = received[0].json();
    assert_eq!(firing["type"], "alert.firing");
    assert_eq!(firing["data"]["alert"]["slug"], "too-many-402");
    assert_eq!(firing["data"]["state"], "firing");
    assert!(
        firing["data"]["value"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 5
    );
    assert!(received[0].header("tollgate-signature").is_some());
    // Still firing: more 402s announce nothing more.
    burst(10).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(receiver.received().len(), 1, "no repeats while firing");
    let (_, view) = tollgate
        .admin(Method::GET, "/api/v1/alerts/too-many-402", None)
        .await;
    let subject = view["states"][0]["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("calls@"),
        "this node's calls: {subject}"
    );
    assert_eq!(view["states"][0]["firing"], true);
    // The 402s stop: once the window has passed, it resolves, once.
    let received = receiver.wait_for(2, Duration::from_secs(15)).await;
    let resolved = received[1].json();
    assert_eq!(resolved["type"], "alert.resolved");
    assert_eq!(resolved["data"]["state"], "resolved");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 2);
    // Firing again, then disabled: what it had firing resolves, saying why.
    burst(6).await;
    let received = receiver.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(received[2].json()["type"], "alert.firing");
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/alerts/too-many-402",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let received = receiver.wait_for(4, Duration::from_secs(5)).await;
    let resolved = received[3].json();
    assert_eq!(resolved["type"], "alert.resolved", "{resolved}");
    assert_eq!(
        resolved["data"]["details"]["reason"],
        "the rule was disabled"
    );
    let (_, view) = tollgate
        .admin(Method::GET, "/api/v1/alerts/too-many-402", None)
        .await;
    assert_eq!(view["states"][0]["firing"], false, "{view}");
    // A rule deleted while firing resolves too, saying why.
    alert_on_402s(&tollgate, "burst-402").await;
    burst(6).await;
    let received = receiver.wait_for(5, Duration::from_secs(5)).await;
    assert_eq!(received[4].json()["type"], "alert.firing");
    let (status, _) = tollgate
        .admin(Method::DELETE, "/api/v1/alerts/burst-402", None)
        .await;
    assert_eq!(status, 204);
    let received = receiver.wait_for(6, Duration::from_secs(5)).await;
    let resolved = received[5].json();
    assert_eq!(
        (
            resolved["type"].as_str(),
            resolved["data"]["alert"]["slug"].as_str(),
            resolved["data"]["details"]["reason"].as_str()
        ),
        (
            Some("alert.resolved"),
            Some("burst-402"),
            Some("the rule was deleted")
        ),
        "{resolved}"
    );

    // Managed through the API and audited; invisible to other teams.
    let (status, audit) = tollgate
        .admin(Method::GET, "/api/v1/audit?action=alert.create", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["object_id"] == rule["id"]),
        "{audit}"
    );
    // Lists take a team filter, as every list does.
    for (team, count) in [("weatherco", 1), ("acme", 0)] {
        let (status, list) = tollgate
            .admin(Method::GET, &format!("/api/v1/alerts?team={team}"), None)
            .await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["data"].as_array().unwrap().len(), count, "{list}");
    }
    let (_, alice) = tollgate.user_with_token("alice@acme.test").await;
    tollgate
        .admin(
            Method::POST,
            "/api/v1/teams/acme/members",
            Some(json!({"user": "alice@acme.test", "role": "owner"})),
        )
        .await;
    let (status, _) = tollgate
        .admin_as(&alice, Method::GET, "/api/v1/alerts/too-many-402", None)
        .await;
    assert_eq!(status, 404);
    let (_, list) = tollgate
        .admin_as(&alice, Method::GET, "/api/v1/alerts", None)
        .await;
    assert_eq!(list["data"], json!([]));
    let (status, _) = tollgate
        .admin_as(
            &alice,
            Method::POST,
            "/api/v1/alerts",
            Some(json!({"slug": "sneaky", "team": "weatherco", "metric": "upstream_down"})),
        )
        .await;
    assert_eq!(status, 404);
    // Her only team is the rule's when she names none, as for any object.
    let (status, own) = tollgate
        .admin_as(
            &alice,
            Method::POST,
            "/api/v1/alerts",
            Some(json!({"slug": "acme-402s", "metric": "refusals_402", "threshold": 2, "as_consumer": true})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), own["team"].as_str()),
        (201, Some("acme")),
        "{own}"
    );
    let (status, _) = tollgate
        .admin(Method::DELETE, "/api/v1/alerts/too-many-402", None)
        .await;
    assert_eq!(status, 204);

    // The document says what the answers are: a threshold is a number or
    // a decimal string, and a role that may not change a rule is a 403.
    let (_, doc) = tollgate
        .admin(Method::GET, "/api/v1/openapi.json", None)
        .await;
    let threshold = &doc["components"]["schemas"]["AlertRuleSpec"]["properties"]["threshold"];
    let types: Vec<&str> = threshold["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{threshold}"))
        .iter()
        .filter_map(|item| item["type"].as_str())
        .collect();
    assert_eq!(types, ["number", "string", "null"], "{threshold}");
    for method in ["post", "patch", "delete"] {
        let path = if method == "post" {
            "/api/v1/alerts"
        } else {
            "/api/v1/alerts/{alert}"
        };
        assert!(
            doc["paths"][path][method]["responses"].get("403").is_some(),
            "{method} {path}"
        );
    }
}

/// A service that logs bodies: headers and the first bytes of both bodies
/// are kept with secrets redacted, and no secret reaches the database
/// file.
#[tokio::test]
async fn bodies_are_logged_on_request_without_secrets() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "echo-backend", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "echo", "kind": "http", "base_path": "/echo", "upstream": "echo-backend",
                "auth": {"anonymous": true}, "log_bodies": {"max_bytes": 200, "redact_fields": ["ssn"]}}),
        )
        .await;
    tollgate
        .create("/api/v1/services/echo/routes", json!({"path": "/*"}))
        .await;
    tollgate
        .create("/api/v1/services/echo/publish", json!({}))
        .await;
    tollgate
        .wait_for("/echo/status/204", Duration::from_secs(2), |s| s == 204)
        .await;
    let secret = "hunter2-very-secret";
    let post = |path: &'static str, body: String| {
        let tollgate = &tollgate;
        async move {
            let response = tollgate
                .client
                .post(format!("{}{path}", tollgate.gateway_url))
                .header("authorization", "Bearer not-a-real-token-1234")
                .header("content-type", "application/json")
                .header(
                    "referer",
                    "https://app.example/page?api_key=tg_live_leaked0123",
                )
                .header("x-debug", "Bearer also-secret-0123")
                .header("x-session-token", "by-its-name")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let json_id = post(
        "/echo/status/200",
        json!({"user": "ann", "password": secret, "ssn": "078-05-1120", "items": [1, 2]})
            .to_string(),
    )
    .await;
    let long = "x".repeat(300);
    let long_id = post("/echo/anything", format!("\"{long}\"")).await;
    // A key put in the path is logged with its prefix only.
    let in_path = post(
        "/echo/keys/tg_live_ab12pathsecret0987654321/x",
        String::new(),
    )
    .await;

    let stored = |request_id: String| {
        let tollgate = &tollgate;
        async move {
            let found = logged(
                tollgate,
                ADMIN_TOKEN,
                &format!("request_id={request_id}"),
                1,
            )
            .await;
            assert!(found[0].get("bodies").is_none(), "lists carry no bodies");
            let id = found[0]["id"].as_str().unwrap().to_owned();
            let (status, call) = tollgate
                .admin(Method::GET, &format!("/api/v1/logs/{id}"), None)
                .await;
            assert_eq!(status, 200, "{call}");
            call["bodies"].clone()
        }
    };
    let bodies = stored(json_id).await;
    let headers = bodies["request_headers"].as_str().unwrap();
    assert!(headers.contains("authorization: [redacted]"), "{headers}");
    // Keys anywhere in a header's value, and headers named like secrets.
    for line in [
        "referer: [redacted]",
        "x-debug: [redacted]",
        "x-session-token: [redacted]",
    ] {
        assert!(headers.contains(line), "{line} in {headers}");
    }
    for secret in ["tg_live_leaked", "also-secret", "by-its-name"] {
        assert!(!headers.contains(secret), "{secret} in {headers}");
    }
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    let request: Value = serde_json::from_str(bodies["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(request["user"], "ann");
    assert_eq!(request["password"], "[redacted]");
    assert_eq!(request["ssn"], "[redacted]", "a configured field");
    assert_eq!(request["items"], json!([1, 2]));
    let answer: Value = serde_json::from_str(bodies["response_body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["status"], 200);

    // Past max_bytes: the first 200 bytes of each body, and the lengths.
    let bodies = stored(long_id).await;
    assert_eq!(bodies["request_bytes"], 302);
    let kept = bodies["request_body"].as_str().unwrap();
    assert_eq!(kept, format!("\"{}", &long[..199]), "cut at 200 bytes");
    assert!(bodies["response_bytes"].as_u64().unwrap() > 200);
    assert!(
        bodies["response_headers"]
            .as_str()
            .unwrap()
            .contains("content-type")
    );

    // Nothing secret in the database file (nor its write-ahead log).
    let raw = crate::database_text(&tollgate);
    assert!(!raw.is_empty());
    assert!(!raw.contains(secret), "the password reached the database");
    assert!(
        !raw.contains("078-05-1120"),
        "a redacted field reached the database"
    );
    assert!(
        !raw.contains("not-a-real-token-1234"),
        "the Authorization header reached the database"
    );
    assert!(
        !raw.contains("pathsecret0987654321"),
        "a key in a path reached the database"
    );
    let (_, logged) = tollgate
        .admin(
            Method::GET,
            &format!("/api/v1/logs?request_id={in_path}"),
            None,
        )
        .await;
    assert_eq!(
        logged["data"][0]["path"], "/echo/keys/tg_live_ab12[redacted]/x",
        "{logged}"
    );

    // A service that does not ask keeps no bodies.
    let (status, _) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/echo",
            Some(json!({"log_bodies": {"max_bytes": 0}})),
        )
        .await;
    assert_eq!(status, 400, "max_bytes is checked");
}

/// With `otel.endpoint`, every call becomes an OTLP span: it continues the
/// caller's `traceparent`, is the upstream's parent, and carries the HTTP
/// attributes; a 5xx span is an error.
#[tokio::test]
async fn calls_become_trace_spans_in_the_callers_trace() {
    let upstream = FakeUpstream::start("w").await;
    let collector = test_support::collector::FakeCollector::start().await;
    let tollgate = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options {
            env: vec![
                ("TOLLGATE_OTEL__ENDPOINT".into(), collector.url()),
                ("TOLLGATE_OTEL__SERVICE_NAME".into(), "edge".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/svc/ping", Duration::from_secs(2), |s| s == 200)
        .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let echo: Value = tollgate
        .client
        .get(format!("{}/svc/hello", tollgate.gateway_url))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The upstream's parent is the gateway's span, in the caller's trace.
    let passed_on = echo["headers"]["traceparent"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = passed_on.split('-').collect();
    assert_eq!(parts.len(), 4, "{passed_on}");
    assert_eq!(parts[1], trace_id);
    assert_ne!(parts[2], "00f067aa0ba902b7");
    let (resource, span) = collector
        .wait_for(Duration::from_secs(5), |span| span["traceId"] == trace_id)
        .await;
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["spanId"], parts[2]);
    assert_eq!(span["name"], "GET /svc/*");
    assert_eq!(span["kind"], 2);
    assert_eq!(span["status"], json!({}));
    let attribute = |span: &Value, key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
    };
    assert_eq!(
        attribute(&span, "http.response.status_code"),
        Some(json!({"intValue": "200"}))
    );
    assert_eq!(
        attribute(&span, "url.path"),
        Some(json!({"stringValue": "/svc/hello"}))
    );
    assert_eq!(
        attribute(&span, "tollgate.service"),
        Some(json!({"stringValue": "svc"}))
    );
    let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start && start > 1_700_000_000_000_000_000);
    assert_eq!(
        resource,
        json!([{"key": "service.name", "value": {"stringValue": "edge"}}])
    );
    // Without a traceparent a call starts a trace of its own; a 5xx is an
    // error.
    let response = tollgate.get("/svc/status/503").await;
    assert_eq!(response.status(), 503);
    let (_, failed) = collector
        .wait_for(Duration::from_secs(5), |span| {
            span["attributes"].to_string().contains("/svc/status/503")
        })
        .await;
    assert_eq!(failed["status"], json!({"code": 2}));
    assert!(failed.get("parentSpanId").is_none());
    assert_ne!(failed["traceId"], trace_id);
}

/// A streamed answer's time is the upstream's: the gateway's overhead
/// leaves out the time its body kept the gateway waiting.
#[tokio::test]
async fn a_stream_is_not_counted_as_gateway_overhead() {
    let upstream = FakeUpstream::start("s").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "stream",
            "/stream",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    tollgate
        .wait_for("/stream/x", Duration::from_secs(1), |s| s == 200)
        .await;
    // Six events 60 ms apart: the body takes 300 ms after its head.
    let body = tollgate.get("/stream/sse/6/60").await.text().await.unwrap();
    assert_eq!(body.matches("data:").count(), 6, "{body}");
    // The service's series added up (the call's duration is by route and
    // status class too).
    let sum = |text: &str, family: &str| -> f64 {
        let prefix = format!("{family}_sum{{service=\"stream\"");
        text.lines()
            .filter(|line| line.starts_with(prefix.as_str()))
            .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    let started = Instant::now();
    loop {
        let (_, _, text) = admin_text(&tollgate, ADMIN_TOKEN, "/metrics").await;
        let total = sum(&text, "tollgate_request_duration_seconds");
        if total >= 0.3 {
            let overhead = sum(&text, "tollgate_gateway_overhead_seconds");
            assert!(overhead < 0.1, "overhead {overhead} s of {total} s: {text}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Review findings: the log's client is the one IP rules see (behind a
/// trusted proxy, the forwarded address); a revoked key's refusal names
/// its app (so its team sees it); a head the gateway refuses before the
/// pipeline is logged too; filters take ids as well as slugs.
#[tokio::test]
async fn refusals_name_who_they_can_and_filters_take_ids() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options::trusting_proxies("127.0.0.0/8"),
    )
    .await;
    let world = crate::access::world(&tollgate, &upstream, json!({}), json!({})).await;
    let request_id = |response: &reqwest::Response| {
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let by_id = async |id: &str| {
        logged(&tollgate, ADMIN_TOKEN, &format!("request_id={id}"), 1)
            .await
            .remove(0)
    };

    let response = tollgate
        .client
        .get(format!("{}/weather/forecast/fwd", tollgate.gateway_url))
        .bearer_auth(&world.key)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let call = by_id(&request_id(&response)).await;
    assert_eq!(call["client_ip"], "203.0.113.7", "{call}");

    let key = tollgate
        .create("/api/v1/apps/acme-web/keys", json!({"name": "short-lived"}))
        .await;
    let path = format!("/api/v1/apps/acme-web/keys/{}", key["id"].as_str().unwrap());
    let (status, body) = tollgate.admin(Method::DELETE, &path, None).await;
    assert!(status.is_success(), "{body}");
    let secret = key["key"].as_str().unwrap();
    crate::access::wait_status(&tollgate, "/weather/forecast/x", secret, 401).await;
    let refused = tollgate.get_with_key("/weather/forecast/x", secret).await;
    let call = by_id(&request_id(&refused)).await;
    assert_eq!(
        (&call["code"], &call["app"], &call["consumer_team"]),
        (&json!("key_revoked"), &json!("acme-web"), &json!("acme")),
        "{call}"
    );
    assert!(call["key_prefix"].is_string(), "{call}");

    // A method the path does not take: the service is known, and logged.
    let response = tollgate
        .client
        .delete(format!("{}/weather/forecast/x", tollgate.gateway_url))
        .bearer_auth(&world.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let call = by_id(&request_id(&response)).await;
    assert_eq!(
        (&call["code"], &call["service"]),
        (&json!("method_not_allowed"), &json!("weather")),
        "{call}"
    );

    // A head of ambiguous length, refused before the pipeline.
    let raw = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = tollgate
            .gateway_url
            .trim_start_matches("http://")
            .to_owned();
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /weather/forecast/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    let id = raw
        .lines()
        .find_map(|line| line.strip_prefix("x-request-id: "))
        .unwrap();
    let call = by_id(id).await;
    assert_eq!(
        (&call["status"], &call["code"]),
        (&json!(400), &json!("bad_request")),
        "{call}"
    );

    // Filters by id find what filters by slug find.
    let (_, service) = tollgate
        .admin(Method::GET, "/api/v1/services/weather", None)
        .await;
    let by_slug = logged_count(&tollgate, "service=weather").await;
    assert!(by_slug > 0);
    let service_id = service["id"].as_str().unwrap();
    assert_eq!(
        logged_count(&tollgate, &format!("service={service_id}")).await,
        by_slug
    );
    let (_, team) = tollgate
        .admin(Method::GET, "/api/v1/teams/acme", None)
        .await;
    let team_id = team["id"].as_str().unwrap();
    assert_eq!(
        logged_count(&tollgate, &format!("team={team_id}")).await,
        logged_count(&tollgate, "team=acme").await
    );
}

/// Weatherco's rule `slug`: more than 5 402s from its `weather` service
/// in 10 s.
async fn alert_on_402s(tollgate: &Tollgate, slug: &str) -> Value {
    tollgate
        .create(
            "/api/v1/alerts",
            json!({"slug": slug, "team": "weatherco", "metric": "refusals_402",
                "threshold": 5, "window_seconds": 10, "service": "weather"}),
        )
        .await
}

/// A restarted node does not resolve what it had firing over its calls
/// until it has watched a whole window: right after the start its window
/// holds no calls, which says nothing of whether the condition ended.
#[tokio::test]
async fn a_restart_resolves_no_call_alert_before_a_whole_window() {
    let upstream = FakeUpstream::start("w").await;
    let receiver = test_support::webhook::WebhookReceiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let options = |gateway_port: Option<u16>| test_support::tollgate::Options {
        env: vec![("TOLLGATE_ALERTS__EVALUATE_EVERY_MS".into(), "200".into())],
        gateway_port,
        ..test_support::tollgate::Options::in_dir(dir.path())
    };
    let tollgate = Tollgate::start_with(BIN, options(None)).await;
    let port: u16 = tollgate
        .gateway_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Acme's wallet is empty: every call is a 402.
    let key = priced_world(&tollgate, &upstream, 0).await;
    tollgate
        .create(
            "/api/v1/teams/weatherco/webhooks",
            json!({"url": receiver.url(), "events": ["alert.firing", "alert.resolved"]}),
        )
        .await;
    alert_on_402s(&tollgate, "too-many-402").await;
    for _ in 0..6 {
        let response = tollgate.get_with_key("/weather/forecast/x", &key).await;
        assert_eq!(response.status(), 402);
    }
    let received = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(received[0].json()["type"], "alert.firing");

    tollgate.stop().await;
    let _tollgate = Tollgate::start_with(BIN, options(Some(port))).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "resolved before the new window held a whole window of calls"
    );
    // Once it has watched a whole window without 402s: resolved, once.
    let received = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(received[1].json()["type"], "alert.resolved");
}
