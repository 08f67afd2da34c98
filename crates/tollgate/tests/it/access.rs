//! Tenancy and access through the real binary: keys, subscriptions and
//! their states, scopes, IP rules, rate limits, roles, tenant isolation,
//! webhooks, console login and secrets at rest.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use test_support::tollgate::{ADMIN_TOKEN, Options};
use test_support::webhook::WebhookReceiver;

use crate::{BIN, FakeUpstream, Tollgate, cli, json, problem};

/// SPEC §13 minus the wallet: teams, an upstream, a published service with
/// a plan, an app with a key and an active subscription. `service` and
/// `plan` add fields to the service and plan bodies.
pub(crate) struct World {
    pub key: String,
    pub app: String,
}

pub(crate) async fn world(
    tollgate: &Tollgate,
    upstream: &FakeUpstream,
    service: Value,
    plan: Value,
) -> World {
    for team in ["acme", "weatherco"] {
        tollgate
            .create("/api/v1/teams", json!({"slug": team, "name": team}))
            .await;
    }
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "weather-backend", "team": "weatherco", "targets": [{"url": upstream.url(), "weight": 1}]}),
        )
        .await;
    let mut service_body = json!({"slug": "weather", "team": "weatherco", "kind": "http", "base_path": "/weather",
        "upstream": "weather-backend", "visibility": "catalog", "approval_required": false});
    merge(&mut service_body, service);
    tollgate.create("/api/v1/services", service_body).await;
    tollgate
        .create(
            "/api/v1/services/weather/routes",
            json!({"methods": ["GET", "POST"], "path": "/forecast/{city}"}),
        )
        .await;
    // Free unless a test sets a price (priced calls need money: money.rs).
    let mut plan_body = json!({"slug": "pay-as-you-go"});
    merge(&mut plan_body, plan);
    tollgate
        .create("/api/v1/services/weather/plans", plan_body)
        .await;
    tollgate
        .create("/api/v1/services/weather/publish", json!({}))
        .await;
    tollgate
        .create("/api/v1/apps", json!({"slug": "acme-web", "team": "acme"}))
        .await;
    let key = tollgate
        .create("/api/v1/apps/acme-web/keys", json!({"name": "prod"}))
        .await;
    let subscription = tollgate
        .create(
            "/api/v1/subscriptions",
            json!({"app": "acme-web", "service": "weather", "plan": "pay-as-you-go"}),
        )
        .await;
    let key = key["key"].as_str().unwrap().to_owned();
    wait_status(tollgate, "/weather/forecast/ready", &key, 200).await;
    World {
        key,
        app: subscription["app"].as_str().unwrap().to_owned(),
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Value::Object(target), Value::Object(extra)) = (target, extra) {
        target.extend(extra);
    }
}

async fn new_key(tollgate: &Tollgate, app: &str, body: Value) -> String {
    let created = tollgate
        .create(&format!("/api/v1/apps/{app}/keys"), body)
        .await;
    created["key"].as_str().unwrap().to_owned()
}

async fn echo(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Waits until a keyed GET answers `status` (config changes land within 1 s).
pub(crate) async fn wait_status(
    tollgate: &Tollgate,
    path: &str,
    key: &str,
    status: u16,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = tollgate.get_with_key(path, key).await.status().as_u16();
        if got == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "GET {path} still {got}, want {status}, after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to 1 s) until a keyed GET is refused with `code`, then checks
/// the refusal's shape on one more call; returns its body.
async fn refused_with(
    tollgate: &Tollgate,
    path: &str,
    key: &str,
    status: u16,
    code: &str,
) -> Value {
    let started = Instant::now();
    loop {
        let response = tollgate.get_with_key(path, key).await;
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if got == status && body["code"] == code {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "GET {path} still {got} {body}, want {status} {code}, after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    problem(tollgate.get_with_key(path, key).await, status, code).await
}

#[tokio::test]
async fn the_first_five_minutes_with_a_key() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(
        &tollgate,
        &upstream,
        json!({}),
        json!({"rate_limits": [{"requests": 100, "per": "second"}]}),
    )
    .await;
    assert!(world.key.starts_with("tg_live_") && world.key.len() >= 8 + 32);
    assert_eq!(world.app, "acme-web");

    let path = "/weather/forecast/paris";
    let response = tollgate.get_with_key(path, &world.key).await;
    assert_eq!(
        response.headers()["ratelimit-policy"],
        "\"plan-second\";q=100;w=1"
    );
    // 100 a second, less the readiness probe in `world` and this call.
    let state = response.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(state.starts_with("\"plan-second\";r=98;t="), "{state}");
    let seen = echo(response).await;
    assert_eq!(seen["path"], "/forecast/paris", "the base path is stripped");
    let headers = &seen["headers"];
    assert!(
        headers.get("authorization").is_none(),
        "the upstream never sees the caller's key: {headers}"
    );
    assert_eq!(headers["tollgate-app"], "acme-web");
    assert_eq!(headers["tollgate-team"], "acme");
    assert_eq!(headers["tollgate-plan"], "pay-as-you-go");

    // X-API-Key works too, and is removed as well; a forged identity
    // header is replaced.
    let response = tollgate
        .client
        .get(format!("{}{path}", tollgate.gateway_url))
        .header("x-api-key", &world.key)
        .header("tollgate-app", "someone-else")
        .send()
        .await
        .unwrap();
    let seen = echo(response).await;
    assert!(seen["headers"].get("x-api-key").is_none());
    assert_eq!(seen["headers"]["tollgate-app"], "acme-web");
    // An empty `X-API-Key` line beside the key in `Authorization` carries
    // no key, and is not passed on either.
    let response = tollgate
        .client
        .get(format!("{}{path}", tollgate.gateway_url))
        .bearer_auth(&world.key)
        .header("x-api-key", "")
        .send()
        .await
        .unwrap();
    let seen = echo(response).await;
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");

    // Keys in the query string are refused unless the service allows them.
    let query_path = format!("{path}?units=metric&api_key={}", world.key);
    problem(tollgate.get(&query_path).await, 401, "key_in_query").await;
    tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather",
            Some(json!({"auth": {"query_key": true}})),
        )
        .await;
    wait_status(&tollgate, &query_path, "", 200).await;
    let seen = echo(tollgate.get(&query_path).await).await;
    assert_eq!(seen["query"], "units=metric", "the key is not forwarded");
    // Nor when its name is percent-encoded (`api%5Fkey` is `api_key`).
    let encoded = format!("{path}?units=metric&api%5Fkey={}", world.key);
    let seen = echo(tollgate.get(&encoded).await).await;
    assert_eq!(seen["query"], "units=metric", "the key is not forwarded");

    // The catalog offers the service and its plan to acme.
    let (status, catalog) = tollgate.admin(Method::GET, "/api/v1/catalog", None).await;
    assert_eq!(status, 200);
    assert_eq!(catalog["data"][0]["service"]["slug"], "weather");
    assert_eq!(catalog["data"][0]["plans"][0]["slug"], "pay-as-you-go");
}

#[tokio::test]
async fn every_credential_refusal_has_its_code() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    let path = "/weather/forecast/oslo";

    let response = tollgate.get(path).await;
    let www = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(www, "Bearer realm=\"tollgate\"");
    problem(response, 401, "missing_credentials").await;

    let response = tollgate
        .get_with_key(path, "tg_live_notARealKeyAtAll0000000000000000000")
        .await;
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    problem(response, 401, "invalid_credentials").await;
    problem(
        tollgate.get_with_key(path, "not-even-a-key").await,
        401,
        "invalid_credentials",
    )
    .await;

    // Two keys of two different apps on one request.
    tollgate
        .create("/api/v1/apps", json!({"slug": "acme-cli", "team": "acme"}))
        .await;
    let other = new_key(&tollgate, "acme-cli", json!({})).await;
    wait_status(&tollgate, path, &other, 403).await;
    let response = tollgate
        .client
        .get(format!("{}{path}", tollgate.gateway_url))
        .bearer_auth(&world.key)
        .header("x-api-key", &other)
        .send()
        .await
        .unwrap();
    problem(response, 401, "conflicting_credentials").await;
    // Repeated header lines are credentials of their own, in any order.
    for (first, second) in [(&world.key, &other), (&other, &world.key)] {
        for name in ["authorization", "x-api-key"] {
            let value = |key: &str| {
                if name == "authorization" {
                    format!("Bearer {key}")
                } else {
                    key.to_owned()
                }
            };
            let response = tollgate
                .client
                .get(format!("{}{path}", tollgate.gateway_url))
                .header(name, value(first))
                .header(name, value(second))
                .send()
                .await
                .unwrap();
            problem(response, 401, "conflicting_credentials").await;
        }
    }
    // The same key twice is fine.
    let response = tollgate
        .client
        .get(format!("{}{path}", tollgate.gateway_url))
        .bearer_auth(&world.key)
        .header("x-api-key", &world.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Revocation takes effect within a second, without a restart.
    let created = tollgate
        .create("/api/v1/apps/acme-web/keys", json!({"name": "temp"}))
        .await;
    let temp = created["key"].as_str().unwrap().to_owned();
    wait_status(&tollgate, path, &temp, 200).await;
    let (status, _) = tollgate
        .admin(
            Method::DELETE,
            &format!(
                "/api/v1/apps/acme-web/keys/{}",
                created["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let took = wait_status(&tollgate, path, &temp, 401).await;
    let body = problem(tollgate.get_with_key(path, &temp).await, 401, "key_revoked").await;
    assert!(body["detail"].as_str().unwrap().contains("tg_live_"));
    println!("revocation reached the gateway in {took:?}");
    assert!(
        tollgate.log().contains("key changes applied"),
        "a key change patches the snapshot instead of reloading it all"
    );

    // Expiry.
    let soon = time_in(Duration::from_millis(1500));
    let expiring = new_key(&tollgate, "acme-web", json!({"expires_at": soon})).await;
    wait_status(&tollgate, path, &expiring, 200).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    problem(
        tollgate.get_with_key(path, &expiring).await,
        401,
        "key_expired",
    )
    .await;

    // Bad key specs are refused, naming the field.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/apps/acme-web/keys",
            Some(json!({"expires_at": "yesterday", "scopes": ["Bad Scope"], "env": "prod"})),
        )
        .await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["env", "scopes[0]", "expires_at"], "{body}");
}

fn time_in(delay: Duration) -> String {
    let at = std::time::SystemTime::now() + delay;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    // RFC 3339 with milliseconds, UTC.
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Howard Hinnant's days → civil date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

async fn action(
    tollgate: &Tollgate,
    token: &str,
    id: &str,
    name: &str,
    reason: Option<&str>,
) -> (u16, Value) {
    let body = match reason {
        Some(reason) => json!({"reason": reason}),
        None => json!({}),
    };
    let (status, value) = tollgate
        .admin_as(
            token,
            Method::POST,
            &format!("/api/v1/subscriptions/{id}/{name}"),
            Some(body),
        )
        .await;
    (status.as_u16(), value)
}

#[tokio::test]
async fn subscription_states_take_effect_without_restart_and_notify_both_teams() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    let path = "/weather/forecast/rome";
    // A second plan that needs approval, and a second app to use it.
    tollgate
        .create(
            "/api/v1/services/weather/plans",
            json!({"slug": "gold", "approval_required": true}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/apps",
            json!({"slug": "acme-mobile", "team": "acme"}),
        )
        .await;
    let key = new_key(&tollgate, "acme-mobile", json!({})).await;
    refused_with(&tollgate, path, &key, 403, "not_subscribed").await;

    // Both teams register webhooks; the provider's endpoint fails twice.
    let consumer_hook = WebhookReceiver::start(0).await;
    let provider_hook = WebhookReceiver::start(2).await;
    let mut secrets = Vec::new();
    for (team, hook) in [("acme", &consumer_hook), ("weatherco", &provider_hook)] {
        let created = tollgate
            .create(
                &format!("/api/v1/teams/{team}/webhooks"),
                json!({"url": hook.url(), "events": ["subscription.created", "subscription.approved", "subscription.suspended"]}),
            )
            .await;
        secrets.push(created["secret"].as_str().unwrap().to_owned());
    }

    // Members of each team act with their own tokens.
    let (consumer_id, consumer) = tollgate.user_with_token("dev@acme.test").await;
    let (provider_id, provider) = tollgate.user_with_token("admin@weatherco.test").await;
    tollgate
        .create(
            "/api/v1/teams/acme/members",
            json!({"user": consumer_id, "role": "developer"}),
        )
        .await;
    let added = tollgate
        .create(
            "/api/v1/teams/weatherco/members",
            json!({"user": provider_id, "role": "admin"}),
        )
        .await;
    // Adding again is not a way to change the role (it would demote her
    // silently); PATCH is, and keeps when she joined.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/teams/weatherco/members",
            Some(json!({"user": provider_id, "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["errors"][0]["field"], "user", "{body}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, changed) = tollgate
        .admin(
            Method::PATCH,
            &format!("/api/v1/teams/weatherco/members/{provider_id}"),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["role"], "admin");
    assert_eq!(changed["created_at_ms"], added["created_at_ms"]);

    let (status, subscription) = tollgate
        .admin_as(
            &consumer,
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"app": "acme-mobile", "service": "weather", "plan": "gold"})),
        )
        .await;
    assert_eq!(status, 201, "{subscription}");
    assert_eq!(subscription["status"], "pending");
    let id = subscription["id"].as_str().unwrap().to_owned();
    refused_with(&tollgate, path, &key, 403, "subscription_pending").await;
    // A second open subscription to the same service is a conflict.
    let (status, _) = tollgate
        .admin_as(
            &consumer,
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"app": "acme-mobile", "service": "weather", "plan": "pay-as-you-go"})),
        )
        .await;
    assert_eq!(status, 409);

    // Only the provider approves.
    assert_eq!(
        action(&tollgate, &consumer, &id, "approve", None).await.0,
        403
    );
    let (status, approved) = action(&tollgate, &provider, &id, "approve", None).await;
    assert_eq!((status, approved["status"].as_str()), (200, Some("active")));
    wait_status(&tollgate, path, &key, 200).await;
    // Approving twice is a state error.
    assert_eq!(
        action(&tollgate, &provider, &id, "approve", None).await.0,
        409
    );

    // Suspension needs a reason, and the caller hears it.
    assert_eq!(
        action(&tollgate, &provider, &id, "suspend", None).await.0,
        400
    );
    action(&tollgate, &provider, &id, "suspend", Some("unpaid invoice")).await;
    let body = refused_with(&tollgate, path, &key, 403, "subscription_suspended").await;
    assert!(body["detail"].as_str().unwrap().contains("unpaid invoice"));
    action(&tollgate, &provider, &id, "resume", None).await;
    wait_status(&tollgate, path, &key, 200).await;

    // The consumer cancels; the app is no longer subscribed.
    let (status, _) = action(&tollgate, &consumer, &id, "cancel", None).await;
    assert_eq!(status, 200);
    refused_with(&tollgate, path, &key, 403, "not_subscribed").await;

    // A rejected subscription says so.
    let (_, again) = tollgate
        .admin_as(
            &consumer,
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"app": "acme-mobile", "service": "weather", "plan": "gold"})),
        )
        .await;
    let again_id = again["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{again}"))
        .to_owned();
    action(&tollgate, &provider, &again_id, "reject", Some("not a fit")).await;
    let body = refused_with(&tollgate, path, &key, 403, "subscription_rejected").await;
    assert!(body["detail"].as_str().unwrap().contains("not a fit"));
    // The first app, untouched, still calls.
    assert_eq!(tollgate.get_with_key(path, &world.key).await.status(), 200);

    // Webhooks (registered after `world`'s subscription): each team heard
    // created, approved and suspended for the first subscription and
    // created for the second, signed with its own secret; the provider's
    // endpoint failed twice and got its four events after retries.
    let consumer_events = consumer_hook.wait_for(4, Duration::from_secs(10)).await;
    let provider_events = provider_hook.wait_for(6, Duration::from_secs(20)).await;
    for (events, secret) in [
        (&consumer_events, &secrets[0]),
        (&provider_events, &secrets[1]),
    ] {
        for event in events.iter() {
            let signature = event.header("tollgate-signature").unwrap();
            let (t, v1) = signature
                .strip_prefix("t=")
                .and_then(|rest| rest.split_once(",v1="))
                .unwrap();
            assert_eq!(
                v1,
                hmac_hex(secret, &format!("{t}.{}", event.body)),
                "signature"
            );
            assert_eq!(
                event.json()["type"],
                event.header("tollgate-event").unwrap()
            );
        }
    }
    let types = |events: &[test_support::webhook::Received]| {
        let mut seen: Vec<String> = events
            .iter()
            .map(|e| e.json()["type"].as_str().unwrap().to_owned())
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    assert_eq!(
        types(&consumer_events),
        [
            "subscription.approved",
            "subscription.created",
            "subscription.suspended"
        ]
    );
    assert_eq!(types(&provider_events), types(&consumer_events));
    // The provider's failed deliveries were retried after a backoff, and
    // each of its four events arrived (one delivery id each).
    let mut attempts = std::collections::BTreeMap::<String, Vec<Instant>>::new();
    for event in &provider_events {
        let id = event.header("tollgate-delivery").unwrap().to_owned();
        attempts.entry(id).or_default().push(event.at);
    }
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    let retried: Vec<&Vec<Instant>> = attempts.values().filter(|a| a.len() > 1).collect();
    assert!(!retried.is_empty());
    for tries in retried {
        assert!(tries[1].duration_since(tries[0]) >= Duration::from_millis(900));
    }

    // Every transition is audited and visible to both teams.
    for token in [&consumer, &provider] {
        let (status, audit) = tollgate
            .admin_as(
                token,
                Method::GET,
                &format!("/api/v1/audit?object_id={id}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let actions: Vec<&str> = audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                "subscription.cancel",
                "subscription.resume",
                "subscription.suspend",
                "subscription.approve",
                "subscription.create"
            ]
        );
        let approve = &audit["data"][3];
        assert_eq!(approve["actor"], "user:admin@weatherco.test");
        assert_eq!(approve["before"]["status"], "pending");
        assert_eq!(approve["after"]["status"], "active");
    }
}

fn hmac_hex(secret: &str, message: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn scopes_ip_rules_and_tenant_checks() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options::trusting_proxies("127.0.0.0/8"),
    )
    .await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    let path = "/weather/forecast/lima";

    // A scope names a service offered to the app's team.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/apps/acme-web/keys",
            Some(json!({"scopes": ["weather", "mpas"]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "scopes[1]", "{body}");
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "maps", "team": "weatherco", "kind": "http", "base_path": "/maps",
                "upstream": "weather-backend", "visibility": "catalog"}),
        )
        .await;
    let read_only = new_key(&tollgate, "acme-web", json!({"scopes": ["weather:read"]})).await;
    let elsewhere = new_key(&tollgate, "acme-web", json!({"scopes": ["maps"]})).await;
    // `elsewhere` was created last: once it is known, so is `read_only`.
    refused_with(&tollgate, path, &elsewhere, 403, "scope_denied").await;
    wait_status(&tollgate, path, &read_only, 200).await;
    let post = |key: String| {
        tollgate
            .client
            .post(format!("{}{path}", tollgate.gateway_url))
            .bearer_auth(key)
            .body("{}")
            .send()
    };
    problem(post(read_only.clone()).await.unwrap(), 403, "scope_denied").await;
    assert_eq!(post(world.key.clone()).await.unwrap().status(), 200);
    problem(
        tollgate.get_with_key(path, &elsewhere).await,
        403,
        "scope_denied",
    )
    .await;

    // App IP allow-list: the client address comes from X-Forwarded-For
    // because loopback is a trusted proxy here.
    tollgate
        .admin(
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"ip": {"allow": ["203.0.113.0/24"]}})),
        )
        .await;
    wait_status(&tollgate, path, &world.key, 403).await;
    let from = |ip: &'static str| {
        tollgate
            .client
            .get(format!("{}{path}", tollgate.gateway_url))
            .bearer_auth(&world.key)
            .header("x-forwarded-for", ip)
            .send()
    };
    problem(
        tollgate.get_with_key(path, &world.key).await,
        403,
        "ip_denied",
    )
    .await;
    assert_eq!(from("203.0.113.9").await.unwrap().status(), 200);
    problem(from("198.51.100.1").await.unwrap(), 403, "ip_denied").await;

    // Service deny-list, for everyone.
    tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather",
            Some(json!({"ip": {"deny": ["203.0.113.9/32"]}})),
        )
        .await;
    let started = Instant::now();
    while from("203.0.113.9").await.unwrap().status() != 403 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "deny-list not applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = problem(from("203.0.113.9").await.unwrap(), 403, "ip_denied").await;
    assert!(body["detail"].as_str().unwrap().contains("203.0.113.9"));
    assert_eq!(from("203.0.113.10").await.unwrap().status(), 200);

    // A service made private to its team refuses other teams' apps even
    // with a subscription.
    tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather",
            Some(json!({"visibility": "team", "ip": null})),
        )
        .await;
    let started = Instant::now();
    while from("203.0.113.10").await.unwrap().status() != 403 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "visibility not applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = problem(from("203.0.113.10").await.unwrap(), 403, "tenant_denied").await;
    // A private service is not named to those outside its team, with a
    // key or without one.
    assert!(
        !body["detail"].as_str().unwrap().contains("weather"),
        "{body}"
    );
    let body = problem(
        tollgate.get("/weather/forecast/x").await,
        401,
        "missing_credentials",
    )
    .await;
    assert!(
        !body["detail"].as_str().unwrap().contains("weather"),
        "{body}"
    );
}

#[tokio::test]
async fn rate_limits_hold_under_64_concurrent_clients() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(
        &tollgate,
        &upstream,
        json!({}),
        json!({"rate_limits": [{"requests": 50, "per": "hour"}, {"requests": 40, "per": "second"}]}),
    )
    .await;
    let path = "/weather/forecast/kyiv";

    // 64 clients, 8 requests each, as fast as they can: exactly 40 pass in
    // the first second (the per-second limit binds first) or, across
    // seconds, never more than 50 in the hour.
    let results = hammer(&tollgate, path, &world.key, 64, Stop::After(8)).await;
    let admitted = results.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Shot> = results.iter().filter(|r| r.status == 429).collect();
    assert_eq!(admitted + limited.len(), 64 * 8, "only 200 or 429");
    // `world`'s readiness probe used one of the hour's 50 (and maybe one
    // of this second's 40).
    assert!(
        admitted <= 49,
        "{admitted} admitted over an hourly limit of 50 (1 used)"
    );
    assert!(
        admitted >= 39,
        "{admitted} admitted: the second's 40 at least"
    );
    for shot in &limited {
        assert!(shot.retry_after.unwrap() >= 1);
        assert!(
            shot.policy
                .as_deref()
                .unwrap()
                .contains("\"plan-hour\";q=50;w=3600")
        );
    }
    // Now drain the hour exactly.
    let mut more = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        if tollgate.get_with_key(path, &world.key).await.status() == 200 {
            more += 1;
        }
    }
    // `world`'s readiness probe was the hour's first request.
    assert_eq!(1 + admitted + more, 50, "the hour admits its limit exactly");
    let response = tollgate.get_with_key(path, &world.key).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry_after > 60,
        "an hourly limit waits long: {retry_after}"
    );
    let body = problem(response, 429, "rate_limited").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("50 requests per hour")
    );
}

#[tokio::test]
async fn a_per_second_limit_admits_its_limit_in_each_second() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(
        &tollgate,
        &upstream,
        json!({}),
        json!({"rate_limits": [{"requests": 25, "per": "second"}], "concurrent_requests": 64}),
    )
    .await;
    let path = "/weather/forecast/quito";
    let results = hammer(
        &tollgate,
        path,
        &world.key,
        64,
        Stop::At(Instant::now() + Duration::from_millis(3500)),
    )
    .await;
    // Count admissions per epoch second. A request whose send and answer
    // fall in different seconds cannot be placed: it may count in either.
    let mut certain = std::collections::BTreeMap::<u128, usize>::new();
    let mut unsure = std::collections::BTreeMap::<u128, usize>::new();
    for shot in results.iter().filter(|s| s.status == 200) {
        let (sent, answered) = (shot.sent_ms / 1000, shot.answered_ms / 1000);
        if sent == answered {
            *certain.entry(sent).or_default() += 1;
        } else {
            *unsure.entry(sent).or_default() += 1;
            *unsure.entry(answered).or_default() += 1;
        }
    }
    let seconds: Vec<u128> = certain.keys().copied().collect();
    assert!(seconds.len() >= 3, "{certain:?}");
    // Whole seconds only (not the first or the last, partly covered).
    for second in &seconds[1..seconds.len() - 1] {
        let sure = certain[second];
        let maybe = unsure.get(second).copied().unwrap_or(0);
        assert!(sure <= 25 + 1, "second {second}: {sure} admitted");
        assert!(
            sure + maybe >= 25 - 1,
            "second {second}: {sure} (+{maybe}) admitted"
        );
    }
}

#[tokio::test]
async fn concurrent_requests_are_bounded() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(
        &tollgate,
        &upstream,
        json!({}),
        json!({"concurrent_requests": 2}),
    )
    .await;
    // A route to the fake's /delay/{ms}, so that calls overlap.
    tollgate
        .create(
            "/api/v1/services/weather/routes",
            json!({"methods": ["GET"], "path": "/delay/{ms}", "strip_prefix": true}),
        )
        .await;
    wait_status(&tollgate, "/weather/delay/1", &world.key, 200).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let client = tollgate.client.clone();
        let url = format!("{}/weather/delay/500", tollgate.gateway_url);
        let key = world.key.clone();
        tasks.push(tokio::spawn(async move {
            let response = client.get(url).bearer_auth(key).send().await.unwrap();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            (
                response.status().as_u16(),
                header("ratelimit-policy"),
                header("ratelimit"),
            )
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, policy, limit) = task.await.unwrap();
        statuses.push(status);
        if status == 429 {
            // The refusal's `RateLimit` item names a declared policy.
            let policy = policy.expect("RateLimit-Policy on a 429");
            assert!(
                policy.contains("\"plan-concurrent\";q=2;qu=\"concurrent-requests\""),
                "{policy}"
            );
            let limit = limit.expect("RateLimit on a 429");
            assert!(limit.starts_with("\"plan-concurrent\";r=0"), "{limit}");
        } else {
            // A bound in flight is a limit that applies: answers say so.
            assert_eq!(
                policy.as_deref(),
                Some("\"plan-concurrent\";q=2;qu=\"concurrent-requests\"")
            );
            let limit = limit.expect("RateLimit on an answer");
            assert!(
                limit == "\"plan-concurrent\";r=0;t=1" || limit == "\"plan-concurrent\";r=1;t=1",
                "{limit}"
            );
        }
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // Slots come back when the responses end.
    assert_eq!(
        tollgate
            .get_with_key("/weather/forecast/x", &world.key)
            .await
            .status(),
        200
    );

    // Raising the bound while two calls are in flight: they stay counted.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let client = tollgate.client.clone();
            let url = format!("{}/weather/delay/3000", tollgate.gateway_url);
            let key = world.key.clone();
            tokio::spawn(async move { client.get(url).bearer_auth(key).send().await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    change_plan(
        &tollgate,
        &world.key,
        json!({"concurrent_requests": 3}),
        "q=3",
    )
    .await;
    let more: Vec<_> = (0..3)
        .map(|_| {
            let client = tollgate.client.clone();
            let url = format!("{}/weather/delay/500", tollgate.gateway_url);
            let key = world.key.clone();
            tokio::spawn(async move {
                let response = client.get(url).bearer_auth(key).send().await.unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in more {
        statuses.push(task.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429, 429], "two of three slots are taken");
    for task in slow {
        assert_eq!(task.await.unwrap().status(), 200);
    }
}

/// Changes the weather plan by `patch`, then calls with `key` until the
/// answers' `RateLimit-Policy` holds `marker` (the change is live); the
/// statuses of those calls.
async fn change_plan(tollgate: &Tollgate, key: &str, patch: Value, marker: &str) -> Vec<u16> {
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather/plans/pay-as-you-go",
            Some(patch),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    let mut statuses = Vec::new();
    loop {
        let response = tollgate.get_with_key("/weather/forecast/x", key).await;
        statuses.push(response.status().as_u16());
        let policy = response.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        if policy.contains(marker) {
            return statuses;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{policy}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changing a plan's limits never hands out a fresh allowance: a window
/// that stays keeps its count, even when another is added or it is
/// lowered.
#[tokio::test]
async fn changed_limits_keep_what_was_counted() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(
        &tollgate,
        &upstream,
        json!({}),
        json!({"rate_limits": [{"requests": 3, "per": "hour"}]}),
    )
    .await;
    // `world` made one call: two more, then the hour is used up.
    for expected in [200, 200, 429] {
        let response = tollgate
            .get_with_key("/weather/forecast/x", &world.key)
            .await;
        assert_eq!(response.status(), expected);
    }
    for (limits, marker) in [
        (
            json!([{"requests": 3, "per": "hour"}, {"requests": 1000, "per": "day"}]),
            "plan-day",
        ),
        (json!([{"requests": 2, "per": "hour"}]), "q=2"),
    ] {
        let statuses = change_plan(
            &tollgate,
            &world.key,
            json!({"rate_limits": limits}),
            marker,
        )
        .await;
        assert!(
            statuses.iter().all(|&status| status == 429),
            "{statuses:?}: no fresh allowance"
        );
    }
}

struct Shot {
    status: u16,
    retry_after: Option<u64>,
    policy: Option<String>,
    sent_ms: u128,
    answered_ms: u128,
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

async fn shoot(client: &reqwest::Client, url: &str, key: &str) -> Shot {
    let sent_ms = epoch_ms();
    let response = client.get(url).bearer_auth(key).send().await.unwrap();
    let answered_ms = epoch_ms();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Shot {
        status: response.status().as_u16(),
        retry_after: header("retry-after").map(|v| v.parse().unwrap()),
        policy: header("ratelimit-policy"),
        sent_ms,
        answered_ms,
    }
}

/// When each of `hammer`'s clients stops.
#[derive(Clone, Copy)]
enum Stop {
    After(usize),
    At(Instant),
}

/// `clients` concurrent clients, each sending GETs one after the other
/// until `stop`.
async fn hammer(
    tollgate: &Tollgate,
    path: &str,
    key: &str,
    clients: usize,
    stop: Stop,
) -> Vec<Shot> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = test_support::tollgate::client();
        let url = format!("{}{path}", tollgate.gateway_url);
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut shots = Vec::new();
            while match stop {
                Stop::After(count) => shots.len() < count,
                Stop::At(deadline) => Instant::now() < deadline,
            } {
                shots.push(shoot(&client, &url, &key).await);
            }
            shots
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Creates, as `token`, one of each object in `team`; returns their admin
/// paths (for reads, changes and deletes by others).
async fn objects_of(
    tollgate: &Tollgate,
    token: &str,
    team: &str,
    upstream_url: &str,
) -> Vec<(String, Value)> {
    let post = |path: String, body: Value| async move {
        let (status, value) = tollgate
            .admin_as(token, Method::POST, &path, Some(body.clone()))
            .await;
        assert!(
            status.is_success(),
            "POST {path} {body} -> {status} {value}"
        );
        value
    };
    post(
        "/api/v1/upstreams".into(),
        json!({"slug": format!("{team}-up"), "team": team, "targets": [{"url": upstream_url}]}),
    )
    .await;
    post(
        "/api/v1/services".into(),
        json!({"slug": format!("{team}-svc"), "team": team, "base_path": format!("/{team}"), "upstream": format!("{team}-up")}),
    )
    .await;
    let route = post(
        format!("/api/v1/services/{team}-svc/routes"),
        json!({"path": "/*", "name": "all"}),
    )
    .await;
    post(
        format!("/api/v1/services/{team}-svc/plans"),
        json!({"slug": "free"}),
    )
    .await;
    post(format!("/api/v1/services/{team}-svc/publish"), json!({})).await;
    post(
        "/api/v1/apps".into(),
        json!({"slug": format!("{team}-app"), "team": team}),
    )
    .await;
    let key = post(format!("/api/v1/apps/{team}-app/keys"), json!({})).await;
    let subscription = post(
        "/api/v1/subscriptions".into(),
        json!({"app": format!("{team}-app"), "service": format!("{team}-svc"), "plan": "free"}),
    )
    .await;
    let hook = post(
        format!("/api/v1/teams/{team}/webhooks"),
        json!({"url": "http://127.0.0.1:9/hook"}),
    )
    .await;
    let patch = json!({"description": "changed"});
    vec![
        (format!("/api/v1/teams/{team}"), patch.clone()),
        (format!("/api/v1/teams/{team}/members"), Value::Null),
        (format!("/api/v1/teams/{team}/webhooks"), Value::Null),
        (
            format!(
                "/api/v1/teams/{team}/webhooks/{}",
                hook["id"].as_str().unwrap()
            ),
            Value::Null,
        ),
        (
            format!(
                "/api/v1/teams/{team}/webhooks/{}/deliveries",
                hook["id"].as_str().unwrap()
            ),
            Value::Null,
        ),
        (format!("/api/v1/upstreams/{team}-up"), patch.clone()),
        (format!("/api/v1/services/{team}-svc"), patch.clone()),
        (format!("/api/v1/services/{team}-svc/routes"), Value::Null),
        (
            format!(
                "/api/v1/services/{team}-svc/routes/{}",
                route["id"].as_str().unwrap()
            ),
            json!({"timeout_ms": 5}),
        ),
        (format!("/api/v1/services/{team}-svc/releases"), Value::Null),
        (
            format!("/api/v1/services/{team}-svc/releases/1"),
            Value::Null,
        ),
        (format!("/api/v1/services/{team}-svc/plans"), Value::Null),
        (
            format!("/api/v1/services/{team}-svc/plans/free"),
            json!({"name": "x"}),
        ),
        (format!("/api/v1/apps/{team}-app"), patch.clone()),
        (format!("/api/v1/apps/{team}-app/keys"), Value::Null),
        (
            format!(
                "/api/v1/apps/{team}-app/keys/{}",
                key["id"].as_str().unwrap()
            ),
            Value::Null,
        ),
        (
            format!(
                "/api/v1/subscriptions/{}",
                subscription["id"].as_str().unwrap()
            ),
            Value::Null,
        ),
    ]
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let (_, alice) = tollgate.user_with_token("alice@a.test").await;
    let (_, bob) = tollgate.user_with_token("bob@b.test").await;
    // Users create their own teams and become their owners.
    for (token, team) in [(&alice, "team-a"), (&bob, "team-b")] {
        let (status, _) = tollgate
            .admin_as(
                token,
                Method::POST,
                "/api/v1/teams",
                Some(json!({"slug": team})),
            )
            .await;
        assert_eq!(status, 201);
    }
    let _objects_a = objects_of(&tollgate, &alice, "team-a", &upstream.url()).await;
    let mut objects_b = objects_of(&tollgate, &bob, "team-b", &upstream.url()).await;
    // Bob's own user is his, not Alice's.
    objects_b.push((
        "/api/v1/users/bob@b.test".into(),
        json!({"name": "Mallory"}),
    ));
    // Nor are his personal tokens.
    let (_, bob_tokens) = tollgate
        .admin_as(&bob, Method::GET, "/api/v1/tokens", None)
        .await;
    let bob_token_id = bob_tokens["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, alice_tokens) = tollgate
        .admin_as(&alice, Method::GET, "/api/v1/tokens", None)
        .await;
    assert_eq!(status, 200);
    assert!(!alice_tokens.to_string().contains(&bob_token_id));
    let (status, _) = tollgate
        .admin_as(
            &alice,
            Method::DELETE,
            &format!("/api/v1/tokens/{bob_token_id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Naming B's upstream in a service of A's reads as naming none.
    let mut details = Vec::new();
    for upstream in ["team-b-up", "no-such-up"] {
        let (status, body) = tollgate
            .admin_as(
                &alice,
                Method::POST,
                "/api/v1/services",
                Some(json!({"slug": "probe", "team": "team-a", "base_path": "/probe", "upstream": upstream})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        details.push(body["detail"].as_str().unwrap().replace(upstream, "X"));
    }
    assert_eq!(
        details[0], details[1],
        "the answers differ only by the name"
    );
    // Creating in B's team reads as creating in a team that does not
    // exist: one answer, which says nothing of B.
    for team in ["team-b", "no-such-team"] {
        let (status, body) = tollgate
            .admin_as(
                &alice,
                Method::POST,
                "/api/v1/apps",
                Some(json!({"slug": "probe-app", "team": team})),
            )
            .await;
        assert_eq!(status, 404, "{team}: {body}");
    }
    // B's services are known to A as the catalog shows them: a draft (even
    // one meant for the catalog) or a closed plan is not offered.
    for (path, body) in [
        (
            "/api/v1/services",
            json!({"slug": "b-draft", "team": "team-b", "base_path": "/b-draft",
                "upstream": "team-b-up", "visibility": "catalog"}),
        ),
        ("/api/v1/services/b-draft/plans", json!({"slug": "free"})),
        (
            "/api/v1/services/team-b-svc/plans",
            json!({"slug": "vip", "open": false}),
        ),
    ] {
        let (status, answer) = tollgate
            .admin_as(&bob, Method::POST, path, Some(body))
            .await;
        assert_eq!(status, 201, "{path}: {answer}");
    }
    let (status, _) = tollgate
        .admin_as(
            &bob,
            Method::PATCH,
            "/api/v1/services/team-b-svc",
            Some(json!({"visibility": "catalog"})),
        )
        .await;
    assert_eq!(status, 200);
    let mut answers = Vec::new();
    for (service, plan) in [
        ("b-draft", "free"),
        ("no-such-svc", "free"),
        ("team-b-svc", "vip"),
        ("team-b-svc", "no-such-plan"),
    ] {
        let (status, body) = tollgate
            .admin_as(
                &alice,
                Method::POST,
                "/api/v1/subscriptions",
                Some(json!({"app": "team-a-app", "service": service, "plan": plan})),
            )
            .await;
        assert_eq!(status, 400, "{service}/{plan}: {body}");
        answers.push(
            body["detail"]
                .as_str()
                .unwrap()
                .replace(service, "S")
                .replace(plan, "P"),
        );
    }
    assert_eq!(answers[0], answers[1], "a draft reads as no service");
    assert_eq!(answers[2], answers[3], "a closed plan reads as no plan");
    let (status, _) = tollgate
        .admin_as(
            &bob,
            Method::PATCH,
            "/api/v1/services/team-b-svc",
            Some(json!({"visibility": "team"})),
        )
        .await;
    assert_eq!(status, 200);

    // Alice can neither read, change nor delete anything of team B.
    for (path, patch) in &objects_b {
        let (status, body) = tollgate.admin_as(&alice, Method::GET, path, None).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_eq!(body["code"], "not_found");
        if !patch.is_null() {
            let (status, _) = tollgate
                .admin_as(&alice, Method::PATCH, path, Some(patch.clone()))
                .await;
            assert_eq!(status, 404, "PATCH {path}");
        }
        let (status, _) = tollgate.admin_as(&alice, Method::DELETE, path, None).await;
        assert!(status == 404 || status == 405, "DELETE {path}: {status}");
    }
    // Actions on B's objects.
    for (path, body) in [
        ("/api/v1/services/team-b-svc/publish", json!({})),
        ("/api/v1/services/team-b-svc/retire", json!({})),
        ("/api/v1/services/team-b-svc/deprecate", json!({})),
        (
            "/api/v1/services/team-b-svc/rollback",
            json!({"release": 1}),
        ),
        ("/api/v1/services/team-b-svc/routes", json!({"path": "/x"})),
        ("/api/v1/services/team-b-svc/plans", json!({"slug": "x"})),
        ("/api/v1/apps/team-b-app/keys", json!({})),
        (
            "/api/v1/teams/team-b/members",
            json!({"user": "alice@a.test", "role": "owner"}),
        ),
        (
            "/api/v1/teams/team-b/webhooks",
            json!({"url": "http://127.0.0.1:9/"}),
        ),
    ] {
        let (status, _) = tollgate
            .admin_as(&alice, Method::POST, path, Some(body))
            .await;
        assert_eq!(status, 404, "POST {path}");
    }
    let (status, body) = tollgate
        .admin_as(
            &alice,
            Method::POST,
            "/api/v1/apps",
            Some(json!({"slug": "sneaky", "team": "team-b"})),
        )
        .await;
    assert_eq!(status, 404, "creating in another team: {body}");
    let (status, _) = tollgate
        .admin_as(
            &alice,
            Method::POST,
            "/api/v1/subscriptions",
            Some(json!({"app": "team-b-app", "service": "team-a-svc", "plan": "free"})),
        )
        .await;
    assert_eq!(status, 404, "subscribing another team's app");
    // B's subscription cannot be acted on by A.
    let subscription_b = objects_b
        .iter()
        .find(|(p, _)| p.starts_with("/api/v1/subscriptions/"))
        .unwrap()
        .0
        .clone();
    for (action, body) in [
        ("cancel", json!({})),
        ("change-plan", json!({"plan": "free"})),
    ] {
        let (status, _) = tollgate
            .admin_as(
                &alice,
                Method::POST,
                &format!("{subscription_b}/{action}"),
                Some(body),
            )
            .await;
        assert_eq!(status, 404, "{action}");
    }

    // Lists show only A's own objects.
    for path in [
        "/api/v1/teams",
        "/api/v1/upstreams",
        "/api/v1/services",
        "/api/v1/apps",
        "/api/v1/subscriptions",
        "/api/v1/audit",
        "/api/v1/catalog",
    ] {
        let (status, body) = tollgate.admin_as(&alice, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}");
        let text = body.to_string();
        assert!(!text.contains("team-b"), "{path} leaks team B: {text}");
        assert!(text.contains("team-a"), "{path} shows team A: {text}");
    }
    // Platform-only endpoints.
    for path in ["/api/v1/users", "/api/v1/config/export"] {
        let (status, _) = tollgate.admin_as(&alice, Method::GET, path, None).await;
        assert_eq!(status, 403, "{path}");
    }
    // A's key cannot call B's service (not subscribed, and not offered).
    let (_, a_key) = tollgate
        .admin_as(
            &alice,
            Method::POST,
            "/api/v1/apps/team-a-app/keys",
            Some(json!({})),
        )
        .await;
    refused_with(
        &tollgate,
        "/team-b/x",
        a_key["key"].as_str().unwrap(),
        403,
        "tenant_denied",
    )
    .await;
}

#[tokio::test]
async fn roles_limit_what_members_do() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme"}))
        .await;
    let mut tokens = std::collections::HashMap::new();
    for role in ["viewer", "developer", "admin", "owner"] {
        let (id, token) = tollgate.user_with_token(&format!("{role}@acme.test")).await;
        tollgate
            .create(
                "/api/v1/teams/acme/members",
                json!({"user": id, "role": role}),
            )
            .await;
        tokens.insert(role, token);
    }
    let as_role = |role: &'static str, method: Method, path: &'static str, body: Value| {
        let token = tokens[role].clone();
        let tollgate = &tollgate;
        async move {
            tollgate
                .admin_as(&token, method, path, Some(body))
                .await
                .0
                .as_u16()
        }
    };
    let upstream_body = json!({"slug": "up", "targets": [{"url": upstream.url()}]});
    // Viewers read but do not write.
    assert_eq!(
        as_role(
            "viewer",
            Method::POST,
            "/api/v1/upstreams",
            upstream_body.clone()
        )
        .await,
        403
    );
    // Developers build (the team is implied: their only one)…
    assert_eq!(
        as_role(
            "developer",
            Method::POST,
            "/api/v1/upstreams",
            upstream_body
        )
        .await,
        201
    );
    assert_eq!(
        as_role(
            "developer",
            Method::POST,
            "/api/v1/services",
            json!({"slug": "svc", "base_path": "/svc", "upstream": "up"})
        )
        .await,
        201
    );
    assert_eq!(
        as_role("viewer", Method::GET, "/api/v1/services/svc", json!({})).await,
        200
    );
    // …but publishing and pricing take an admin.
    assert_eq!(
        as_role(
            "developer",
            Method::POST,
            "/api/v1/services/svc/publish",
            json!({})
        )
        .await,
        403
    );
    assert_eq!(
        as_role(
            "developer",
            Method::POST,
            "/api/v1/services/svc/plans",
            json!({"slug": "p"})
        )
        .await,
        403
    );
    assert_eq!(
        as_role(
            "admin",
            Method::POST,
            "/api/v1/services/svc/plans",
            json!({"slug": "p"})
        )
        .await,
        201
    );
    assert_eq!(
        as_role(
            "admin",
            Method::POST,
            "/api/v1/services/svc/publish",
            json!({})
        )
        .await,
        201
    );
    // Admins manage members but only owners make owners.
    assert_eq!(
        as_role(
            "admin",
            Method::PATCH,
            "/api/v1/teams/acme/members/viewer@acme.test",
            json!({"role": "owner"})
        )
        .await,
        403
    );
    assert_eq!(
        as_role(
            "owner",
            Method::PATCH,
            "/api/v1/teams/acme/members/viewer@acme.test",
            json!({"role": "developer"})
        )
        .await,
        200
    );
    // The last owner cannot leave.
    let (status, body) = tollgate
        .admin_as(
            &tokens["owner"],
            Method::DELETE,
            "/api/v1/teams/acme/members/owner@acme.test",
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // Deleting a team that owns things is refused; only owners may try.
    assert_eq!(
        tollgate
            .admin_as(&tokens["admin"], Method::DELETE, "/api/v1/teams/acme", None)
            .await
            .0,
        403
    );
    assert_eq!(
        tollgate
            .admin_as(&tokens["owner"], Method::DELETE, "/api/v1/teams/acme", None)
            .await
            .0,
        409
    );
    // A team named twice in a scope is a mistake, said as such.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"user": "owner@acme.test", "teams": ["acme", "acme"]})),
        )
        .await;
    assert_eq!(
        (status, body["errors"][0]["field"].as_str()),
        (reqwest::StatusCode::BAD_REQUEST, Some("teams[1]")),
        "{body}"
    );
    // Naming oneself is leaving `user` out; naming anyone else (existing
    // or not) is the platform's, as is making someone a superadmin.
    let (status, body) = tollgate
        .admin_as(
            &tokens["owner"],
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"user": "owner@acme.test"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for user in ["developer@acme.test", "nobody@acme.test"] {
        let (status, body) = tollgate
            .admin_as(
                &tokens["owner"],
                Method::POST,
                "/api/v1/tokens",
                Some(json!({"user": user})),
            )
            .await;
        assert_eq!(status, 403, "{user}: {body}");
    }
    let (status, body) = tollgate
        .admin_as(
            &tokens["owner"],
            Method::PATCH,
            "/api/v1/users/owner@acme.test",
            Some(json!({"superadmin": true})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Parameters of an answer in one piece: the refusal says there are none.
    let (status, body) = tollgate
        .admin(Method::GET, "/api/v1/tokens?limit=5", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        !body["detail"].as_str().unwrap().contains("one of )"),
        "{body}"
    );
    // A token scoped to no team sees nothing; an expired token is refused.
    let scoped = tollgate
        .create(
            "/api/v1/tokens",
            json!({"user": "owner@acme.test", "teams": []}),
        )
        .await;
    let (status, _) = tollgate
        .admin_as(
            scoped["token_secret"].as_str().unwrap(),
            Method::GET,
            "/api/v1/services/svc",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, me) = tollgate
        .admin_as(&tokens["developer"], Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["teams"], json!([{"team": "acme", "role": "developer"}]));
    let (status, _) = tollgate
        .admin_as("tgp_not-a-token", Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn console_login_uses_a_session_cookie_and_csrf_token() {
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .create(
            "/api/v1/users",
            json!({"email": "ops@acme.test", "password": "correct horse battery"}),
        )
        .await;
    let client = test_support::tollgate::client();
    let url = |path: &str| format!("{}{path}", tollgate.admin_url);
    let wrong = client
        .post(url("/api/v1/auth/login"))
        .json(&json!({"email": "ops@acme.test", "password": "wrong password!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let login = client
        .post(url("/api/v1/auth/login"))
        .json(&json!({"email": "OPS@acme.test", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let csrf = login.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me = client
        .get(url("/api/v1/auth/me"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.json::<Value>().await.unwrap()["actor"],
        "user:ops@acme.test"
    );
    // A change without the CSRF token is refused (a forged cross-site form).
    let forged = client
        .post(url("/api/v1/teams"))
        .header("cookie", &session)
        .json(&json!({"slug": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(forged.json::<Value>().await.unwrap()["code"], "csrf_failed");
    let real = client
        .post(url("/api/v1/teams"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .json(&json!({"slug": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(real.status(), 201);
    // Logging out ends the session.
    let out = client
        .post(url("/api/v1/auth/logout"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = client
        .get(url("/api/v1/auth/me"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    // Password guessing is slowed down: after five failures the email is
    // locked for a while, even with the right password.
    tollgate
        .create(
            "/api/v1/users",
            json!({"email": "guess@acme.test", "password": "the right password"}),
        )
        .await;
    let attempt = |password: &'static str| {
        client
            .post(url("/api/v1/auth/login"))
            .json(&json!({"email": "guess@acme.test", "password": password}))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(attempt("a wrong password").await.unwrap().status(), 401);
    }
    let locked = attempt("the right password").await.unwrap();
    assert_eq!(locked.status(), 429);
    let wait: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 800, "{wait}");
    assert_eq!(
        locked.json::<Value>().await.unwrap()["code"],
        "too_many_attempts"
    );
}

#[tokio::test]
async fn the_database_never_holds_a_plaintext_secret() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    let password = "a long enough password";
    let (_, token) = tollgate.user_with_token("secret@acme.test").await;
    let hook = tollgate
        .create(
            "/api/v1/teams/acme/webhooks",
            json!({"url": "http://127.0.0.1:9/x"}),
        )
        .await;
    assert_eq!(
        tollgate
            .get_with_key("/weather/forecast/x", &world.key)
            .await
            .status(),
        200
    );
    // Keys, tokens and passwords are shown once and never listed again.
    let (_, keys) = tollgate
        .admin(Method::GET, "/api/v1/apps/acme-web/keys", None)
        .await;
    assert!(!keys.to_string().contains(&world.key));
    assert!(keys["data"][0].get("hash").is_none());
    let (_, hooks) = tollgate
        .admin(Method::GET, "/api/v1/teams/acme/webhooks", None)
        .await;
    assert!(!hooks.to_string().contains(hook["secret"].as_str().unwrap()));
    let (_, users) = tollgate.admin(Method::GET, "/api/v1/users", None).await;
    assert!(!users.to_string().contains("argon2"));
    // Every file of the data dir (the database, its WAL), byte for byte.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&tollgate.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(
        files
            .iter()
            .any(|(p, _)| p.to_string_lossy().ends_with(".db")),
        "the database is in the data dir"
    );
    let random_part = &world.key["tg_live_".len()..];
    for (path, bytes) in &files {
        for (what, secret) in [
            ("API key", random_part),
            ("password", password),
            ("personal token", &token[4..]),
            ("root token", ADMIN_TOKEN),
            (
                "webhook secret",
                &hook["secret"].as_str().unwrap()["whsec_".len()..],
            ),
        ] {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{} holds the {what} in plaintext",
                path.display()
            );
        }
    }
    // The check can fail: the key's hash is there.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(world.key.as_bytes()));
    assert!(
        files
            .iter()
            .any(|(_, bytes)| contains(bytes, digest.as_bytes()))
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn keys_and_subscriptions_reach_every_node_on_postgres() {
    let database = test_support::PgDatabase::create();
    let options = Options::on_database(&database.url);
    let first = Tollgate::start_with(BIN, options.clone()).await;
    let second = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("w").await;
    let world = world(&first, &upstream, json!({}), json!({})).await;
    let path = "/weather/forecast/turin";
    // The other node learns the key and subscription within a second…
    wait_status(&second, path, &world.key, 200).await;
    // …and the suspension, and the revocation.
    let (_, subscriptions) = first
        .admin(Method::GET, "/api/v1/subscriptions?app=acme-web", None)
        .await;
    let id = subscriptions["data"][0]["id"].as_str().unwrap().to_owned();
    // Both nodes deliver webhooks from the shared outbox: each event
    // exactly once, even when the endpoint answers slower than the nodes
    // poll (without a claim, both would send it).
    let hook = WebhookReceiver::start_slow(0, Duration::from_millis(1200)).await;
    first
        .create(
            "/api/v1/teams/acme/webhooks",
            json!({"url": hook.url(), "events": ["subscription.suspended", "subscription.resumed"]}),
        )
        .await;
    action(&first, ADMIN_TOKEN, &id, "suspend", Some("audit")).await;
    refused_with(&second, path, &world.key, 403, "subscription_suspended").await;
    action(&first, ADMIN_TOKEN, &id, "resume", None).await;
    wait_status(&second, path, &world.key, 200).await;
    let (_, keys) = first
        .admin(Method::GET, "/api/v1/apps/acme-web/keys", None)
        .await;
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    first
        .admin(
            Method::DELETE,
            &format!("/api/v1/apps/acme-web/keys/{key_id}"),
            None,
        )
        .await;
    refused_with(&second, path, &world.key, 401, "key_revoked").await;
    let received = hook.wait_for(2, Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let received = if hook.received().len() > received.len() {
        hook.received()
    } else {
        received
    };
    let mut ids: Vec<&str> = received
        .iter()
        .map(|r| r.header("tollgate-delivery").unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        (received.len(), ids.len()),
        (2, 2),
        "two events, each delivered once by one of the two nodes"
    );
    // Tenant isolation holds on PostgreSQL too (the team filter is SQL).
    let (_, token) = first.user_with_token("viewer@acme.test").await;
    first
        .create(
            "/api/v1/teams/acme/members",
            json!({"user": "viewer@acme.test", "role": "viewer"}),
        )
        .await;
    let (status, apps) = second
        .admin_as(&token, Method::GET, "/api/v1/apps", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(apps["data"].as_array().unwrap().len(), 1);
    let (status, subscriptions) = second
        .admin_as(&token, Method::GET, "/api/v1/services", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        subscriptions["data"].as_array().unwrap().is_empty(),
        "weatherco's service is not acme's"
    );
}

#[tokio::test]
async fn the_keys_command_creates_lists_and_revokes() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    world(&tollgate, &upstream, json!({}), json!({})).await;
    let path = "/weather/forecast/gent";
    let (ok, key, stderr) = cli(
        &tollgate,
        &[
            "keys",
            "create",
            "--app",
            "acme-web",
            "--name",
            "cli",
            "--scope",
            "weather:read",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(key.starts_with("tg_live_"), "only the key on stdout: {key}");
    assert!(stderr.contains("shown once"));
    wait_status(&tollgate, path, &key, 200).await;
    let (ok, listed, _) = cli(&tollgate, &["keys", "list", "--app", "acme-web"]);
    assert!(ok);
    let line = listed
        .lines()
        .find(|l| l.ends_with("\tcli"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("\tactive\t"), "{line}");
    assert!(line.contains(&key[..12]), "the prefix is listed: {line}");
    let id = line.split('\t').next().unwrap();
    let (ok, _, stderr) = cli(&tollgate, &["keys", "revoke", "--app", "acme-web", id]);
    assert!(ok, "{stderr}");
    refused_with(&tollgate, path, &key, 401, "key_revoked").await;
    // Refusals of the admin API reach the terminal, naming the field.
    let (ok, _, stderr) = cli(
        &tollgate,
        &[
            "keys",
            "create",
            "--app",
            "acme-web",
            "--scope",
            "Not A Scope",
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("scopes[0]"), "{stderr}");
}

/// The role matrix of docs/access.md, cell by cell: each role tries each
/// action on its own team's objects.
#[tokio::test]
async fn the_role_matrix_holds_cell_by_cell() {
    use domain_roles::*;
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme"}))
        .await;
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "up", "team": "acme", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "svc", "team": "acme", "base_path": "/svc", "upstream": "up"}),
        )
        .await;
    tollgate
        .create("/api/v1/apps", json!({"slug": "app0", "team": "acme"}))
        .await;
    let mut tokens = Vec::new();
    for role in ROLES {
        let (id, token) = tollgate
            .user_with_token(&format!("{role}@matrix.test"))
            .await;
        tollgate
            .create(
                "/api/v1/teams/acme/members",
                json!({"user": id, "role": role}),
            )
            .await;
        tokens.push((role, token));
    }
    // (method, path, body with {r} for the role, least role allowed)
    let actions: [(Method, &str, &str, usize); 10] = [
        (Method::GET, "/api/v1/services/svc", "", VIEWER),
        (Method::GET, "/api/v1/audit", "", VIEWER),
        (Method::GET, "/api/v1/teams/acme/members", "", VIEWER),
        (
            Method::POST,
            "/api/v1/upstreams",
            r#"{"slug": "up-{r}", "team": "acme", "targets": [{"url": "http://127.0.0.1:9"}]}"#,
            DEVELOPER,
        ),
        (
            Method::POST,
            "/api/v1/services/svc/routes",
            r#"{"path": "/{r}"}"#,
            DEVELOPER,
        ),
        (
            Method::POST,
            "/api/v1/apps",
            r#"{"slug": "app-{r}", "team": "acme"}"#,
            DEVELOPER,
        ),
        (Method::POST, "/api/v1/apps/app0/keys", "{}", DEVELOPER),
        (
            Method::POST,
            "/api/v1/services/svc/plans",
            r#"{"slug": "plan-{r}"}"#,
            ADMIN,
        ),
        (
            Method::POST,
            "/api/v1/teams/acme/webhooks",
            r#"{"url": "http://127.0.0.1:9/{r}"}"#,
            ADMIN,
        ),
        (
            Method::PATCH,
            "/api/v1/teams/acme",
            r#"{"description": "by {r}"}"#,
            ADMIN,
        ),
    ];
    for (rank, (role, token)) in tokens.iter().enumerate() {
        for (method, path, body, least) in &actions {
            let body = (!body.is_empty())
                .then(|| serde_json::from_str::<Value>(&body.replace("{r}", role)).unwrap());
            let (status, answer) = tollgate.admin_as(token, method.clone(), path, body).await;
            if rank >= *least {
                assert!(
                    status.is_success(),
                    "{role} {method} {path}: {status} {answer}"
                );
            } else {
                assert_eq!(status, 403, "{role} {method} {path}: {answer}");
                assert_eq!(answer["code"], "forbidden");
            }
        }
    }
}

mod domain_roles {
    pub const ROLES: [&str; 4] = ["viewer", "developer", "admin", "owner"];
    pub const VIEWER: usize = 0;
    pub const DEVELOPER: usize = 1;
    pub const ADMIN: usize = 2;
}

/// Two nodes on a PostgreSQL database of their own, sharing counters
/// through Redis (the database lives as long as the first item).
async fn two_nodes_sharing_redis() -> (test_support::PgDatabase, Tollgate, Tollgate) {
    let database = test_support::PgDatabase::create();
    let mut options = Options::on_database(&database.url);
    options.env.push((
        "TOLLGATE_STORAGE__REDIS_URL".into(),
        "redis://127.0.0.1:6379".into(),
    ));
    let first = Tollgate::start_with(BIN, options.clone()).await;
    let second = Tollgate::start_with(BIN, options).await;
    (database, first, second)
}

#[tokio::test]
async fn rate_limits_hold_across_nodes_sharing_redis() {
    let (_database, first, second) = two_nodes_sharing_redis().await;
    let upstream = FakeUpstream::start("w").await;
    let world = world(
        &first,
        &upstream,
        json!({}),
        json!({"rate_limits": [{"requests": 40, "per": "hour"}]}),
    )
    .await;
    let path = "/weather/forecast/oslo";
    wait_status(&second, path, &world.key, 200).await;
    let ready: Value = second.get("/_tollgate/ready").await.json().await.unwrap();
    assert_eq!(ready["shared_counters"], "ok", "{ready}");
    // `world` and the wait above used 2 of the hour's 40. Then calls
    // alternate between the nodes, 40 ms apart: together they admit the
    // limit, not twice it (62 without sharing). A node may overshoot by
    // what the other admitted since the last 100 ms sync: a few at most.
    let mut admitted = 2;
    for round in 0..60 {
        let node = if round % 2 == 0 { &first } else { &second };
        if node.get_with_key(path, &world.key).await.status() == 200 {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        (40..=44).contains(&admitted),
        "{admitted} admitted by two nodes under one hourly limit of 40"
    );
    // Both nodes now refuse, and say so with the shared count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in [&first, &second] {
        let response = node.get_with_key(path, &world.key).await;
        let body = problem(response, 429, "rate_limited").await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("40 requests per hour")
        );
    }
}

/// What a node admits while cut off from Redis counts for every node once
/// Redis answers again: the limit holds over the outage.
#[tokio::test]
async fn admissions_while_redis_is_away_count_once_it_is_back() {
    let database = test_support::PgDatabase::create();
    let proxy = test_support::proxy::FreezableProxy::start("127.0.0.1:6379").await;
    let mut options = Options::on_database(&database.url);
    options.env.push((
        "TOLLGATE_STORAGE__REDIS_URL".into(),
        "redis://127.0.0.1:6379".into(),
    ));
    let first = Tollgate::start_with(BIN, options.clone()).await;
    options.env.push((
        "TOLLGATE_STORAGE__REDIS_URL".into(),
        format!("redis://127.0.0.1:{}", proxy.port),
    ));
    let second = Tollgate::start_with(BIN, options).await;
    let upstream = FakeUpstream::start("w").await;
    let world = world(
        &first,
        &upstream,
        json!({}),
        json!({"rate_limits": [{"requests": 30, "per": "hour"}]}),
    )
    .await;
    let path = "/weather/forecast/oslo";
    wait_status(&second, path, &world.key, 200).await;
    let shared = |node: &Tollgate| {
        let request = node
            .client
            .get(format!("{}/_tollgate/ready", node.gateway_url));
        async move {
            let ready: Value = request.send().await.unwrap().json().await.unwrap();
            ready["shared_counters"] == "ok"
        }
    };
    crate::eventually_async("the second node shares counters", || shared(&second)).await;
    proxy.cut();
    crate::eventually_async("the second node sees Redis gone", || async {
        !shared(&second).await
    })
    .await;
    // 2 used by `world` and the wait; 12 more on the node cut off.
    for _ in 0..12 {
        assert_eq!(second.get_with_key(path, &world.key).await.status(), 200);
    }
    // Syncs fail meanwhile (every 100 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    proxy.restore();
    crate::eventually_async("the second node shares counters again", || shared(&second)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admitted = 0;
    while first.get_with_key(path, &world.key).await.status() == 200 {
        admitted += 1;
        assert!(admitted <= 30, "the first node never stops");
    }
    assert!(
        (16..=17).contains(&admitted),
        "the first node admitted {admitted} after the 14 of 30 used elsewhere"
    );
}

/// A bound on requests in flight holds across nodes sharing Redis: calls
/// in flight on one node count on the other.
#[tokio::test]
async fn concurrency_limits_hold_across_nodes_sharing_redis() {
    let (_database, first, second) = two_nodes_sharing_redis().await;
    let upstream = FakeUpstream::start("w").await;
    let world = world(
        &first,
        &upstream,
        json!({}),
        json!({"concurrent_requests": 2}),
    )
    .await;
    wait_status(&second, "/weather/forecast/oslo", &world.key, 200).await;
    // Two calls held at the upstream through the first node.
    let before = upstream.hits();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let request = first
                .client
                .get(format!("{}/weather/forecast/hold", first.gateway_url))
                .header("x-api-key", &world.key);
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    crate::eventually("both calls reach the upstream", || {
        upstream.hits() >= before + 2
    })
    .await;
    // The second node learns of them within a sync (100 ms) and refuses.
    let started = std::time::Instant::now();
    loop {
        let response = second
            .get_with_key("/weather/forecast/oslo", &world.key)
            .await;
        if response.status() == 429 {
            let body = problem(response, 429, "rate_limited").await;
            assert!(
                body["detail"].as_str().unwrap().contains("in flight"),
                "{body}"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    upstream.open_gate();
    for call in held {
        assert_eq!(call.await.unwrap(), 200);
    }
    // Done there: the second node admits again.
    wait_status(&second, "/weather/forecast/oslo", &world.key, 200).await;
}

/// Bad input to the access endpoints: 400 naming every offending field,
/// never a 500, never a partial write.
#[tokio::test]
async fn bad_access_input_names_the_field() {
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme"}))
        .await;
    tollgate
        .create("/api/v1/apps", json!({"slug": "web", "team": "acme"}))
        .await;
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("/api/v1/teams", json!({"slug": "Bad Slug"}), &["slug"]),
        (
            "/api/v1/teams",
            json!({"slug": "x", "colour": "red"}),
            &["colour"],
        ),
        (
            "/api/v1/users",
            json!({"email": "not-an-email", "password": "short"}),
            &["email", "password"],
        ),
        (
            "/api/v1/apps",
            json!({"slug": "a", "team": "acme", "ip": {"allow": ["10.0.0.0/33", "nope"]},
                   "rate_limits": [{"requests": 0, "per": "second"}, {"requests": 5, "per": "second"}]}),
            &[
                "ip.allow[0]",
                "ip.allow[1]",
                "rate_limits[0].requests",
                "rate_limits[1].per",
            ],
        ),
        (
            "/api/v1/apps",
            json!({"slug": "a", "team": "acme", "rate_limits": [{"requests": 5, "per": "fortnight"}]}),
            &["rate_limits[0].per"],
        ),
        (
            "/api/v1/apps",
            json!({"slug": "b", "team": "nope"}),
            &["team"],
        ),
        (
            "/api/v1/subscriptions",
            json!({"app": "web", "service": "x"}),
            &["plan"],
        ),
        (
            "/api/v1/subscriptions",
            json!({"app": "web", "service": "missing", "plan": "p"}),
            &["service"],
        ),
        (
            "/api/v1/teams/acme/webhooks",
            json!({"url": "ftp://example.test", "events": ["subscription.exploded"]}),
            &["url", "events[0]"],
        ),
        (
            "/api/v1/teams/acme/members",
            json!({"user": "nobody@x.test", "role": "owner"}),
            &["user"],
        ),
        (
            "/api/v1/teams/acme/members",
            json!({"user": "nobody@x.test", "role": "king"}),
            &["role"],
        ),
        ("/api/v1/tokens", json!({"expires_at": "soon"}), &["user"]),
    ];
    for (path, body, fields) in cases {
        let (status, answer) = tollgate.admin(Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, 400, "POST {path} {body}: {answer}");
        assert_eq!(answer["code"], "validation_failed");
        let named: Vec<&str> = answer["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        for field in fields {
            assert!(
                named.contains(field),
                "POST {path}: {field} not in {named:?}"
            );
        }
    }
    // Malformed JSON and a wrong action.
    let response = tollgate
        .client
        .post(format!("{}/api/v1/apps", tollgate.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"slug\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (status, _) = tollgate
        .admin(
            Method::POST,
            "/api/v1/subscriptions/x/explode",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404);
    // Nothing was written by any of it.
    let (_, apps) = tollgate.admin(Method::GET, "/api/v1/apps", None).await;
    assert_eq!(apps["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn without_redis_a_node_keeps_serving_and_says_so() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start_with(
        BIN,
        Options {
            // Nothing listens on port 1.
            env: vec![(
                "TOLLGATE_STORAGE__REDIS_URL".into(),
                "redis://127.0.0.1:1".into(),
            )],
            ..Default::default()
        },
    )
    .await;
    let world = world(
        &tollgate,
        &upstream,
        json!({}),
        json!({"rate_limits": [{"requests": 3, "per": "hour"}]}),
    )
    .await;
    let started = Instant::now();
    loop {
        let ready: Value = tollgate.get("/_tollgate/ready").await.json().await.unwrap();
        if ready["shared_counters"]
            .as_str()
            .is_some_and(|s| s.starts_with("unreachable"))
        {
            assert_eq!(ready["status"], "ready", "{ready}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Limits still hold, per node: 3 an hour (one used by `world`).
    let path = "/weather/forecast/lyon";
    assert_eq!(tollgate.get_with_key(path, &world.key).await.status(), 200);
    assert_eq!(tollgate.get_with_key(path, &world.key).await.status(), 200);
    problem(
        tollgate.get_with_key(path, &world.key).await,
        429,
        "rate_limited",
    )
    .await;
}

/// Every kind of admin change leaves an audit entry.
#[tokio::test]
async fn every_change_is_audited() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    world(&tollgate, &upstream, json!({}), json!({})).await;
    let (user_id, _) = tollgate.user_with_token("audited@acme.test").await;
    tollgate
        .create(
            "/api/v1/teams/acme/members",
            json!({"user": user_id, "role": "viewer"}),
        )
        .await;
    let patch = |path: &'static str, body: Value| {
        let tollgate = &tollgate;
        async move {
            let (status, answer) = tollgate.admin(Method::PATCH, path, Some(body)).await;
            assert!(status.is_success(), "PATCH {path}: {answer}");
        }
    };
    patch("/api/v1/teams/acme", json!({"name": "Acme Inc"})).await;
    patch("/api/v1/apps/acme-web", json!({"description": "web"})).await;
    patch(
        "/api/v1/upstreams/weather-backend",
        json!({"read_timeout_ms": 5000}),
    )
    .await;
    patch(
        "/api/v1/services/weather",
        json!({"description": "forecasts"}),
    )
    .await;
    patch(
        "/api/v1/services/weather/plans/pay-as-you-go",
        json!({"name": "PAYG"}),
    )
    .await;
    let hook = tollgate
        .create(
            "/api/v1/teams/acme/webhooks",
            json!({"url": "http://127.0.0.1:9/"}),
        )
        .await;
    tollgate
        .admin(
            Method::DELETE,
            &format!(
                "/api/v1/teams/acme/webhooks/{}",
                hook["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    tollgate
        .create(
            "/api/v1/services/weather/deprecate",
            json!({"sunset": "2099-01-01"}),
        )
        .await;
    let (_, audit) = tollgate
        .admin(Method::GET, "/api/v1/audit?limit=500", None)
        .await;
    let actions: std::collections::BTreeSet<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "team.create",
        "team.update",
        "upstream.create",
        "upstream.update",
        "service.create",
        "service.update",
        "service.publish",
        "service.deprecate",
        "route.create",
        "plan.create",
        "plan.update",
        "app.create",
        "app.update",
        "key.create",
        "subscription.create",
        "user.create",
        "token.create",
        "member.add",
        "webhook.create",
        "webhook.delete",
    ] {
        assert!(actions.contains(expected), "{expected} not in {actions:?}");
    }
    // Every entry names its actor and request, and updates carry both sides.
    for entry in audit["data"].as_array().unwrap() {
        assert_eq!(entry["actor"], "root");
        assert!(!entry["request_id"].as_str().unwrap().is_empty());
        if entry["action"].as_str().unwrap().ends_with(".update") {
            assert!(
                entry["before"].is_object() && entry["after"].is_object(),
                "{entry}"
            );
        }
    }
}

/// Key rotation: a new key, then a grace period on the old one.
#[tokio::test]
async fn keys_rotate_with_a_grace_period() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    let path = "/weather/forecast/riga";
    let (_, keys) = tollgate
        .admin(Method::GET, "/api/v1/apps/acme-web/keys", None)
        .await;
    let old_id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    let new_key = new_key(&tollgate, "acme-web", json!({"name": "next"})).await;
    let key_path = format!("/api/v1/apps/acme-web/keys/{old_id}");
    let (status, changed) = tollgate
        .admin(
            Method::PATCH,
            &key_path,
            Some(json!({"expires_at": time_in(Duration::from_millis(1500)), "name": "old"})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["name"], "old");
    assert!(changed["expires_at_ms"].as_i64().is_some());
    wait_status(&tollgate, path, &new_key, 200).await;
    assert_eq!(
        tollgate.get_with_key(path, &world.key).await.status(),
        200,
        "grace"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    refused_with(&tollgate, path, &world.key, 401, "key_expired").await;
    assert_eq!(tollgate.get_with_key(path, &new_key).await.status(), 200);
    // Removing the expiry brings the old key back; bad times are refused.
    let (status, changed) = tollgate
        .admin(Method::PATCH, &key_path, Some(json!({"expires_at": null})))
        .await;
    assert_eq!(status, 200);
    assert!(changed.get("expires_at_ms").is_none(), "{changed}");
    wait_status(&tollgate, path, &world.key, 200).await;
    let (status, refused) = tollgate
        .admin(
            Method::PATCH,
            &key_path,
            Some(json!({"expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(refused["errors"][0]["field"], "expires_at");
}

/// Tenants' services stay apart on the gateway too: another team cannot
/// take a base path under which a team's service answers (the most
/// specific route would win and read its callers' requests), an
/// anonymous service never receives a caller's Tollgate key, and route
/// rewrites cannot touch the message framing.
#[tokio::test]
async fn base_paths_keys_and_framing_stay_out_of_other_hands() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "acme-backend", "team": "acme", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    let service = |slug: &str, team: &str, base_path: &str| {
        json!({"slug": slug, "team": team, "kind": "http", "base_path": base_path,
            "upstream": if team == "acme" { "acme-backend" } else { "weather-backend" },
            "auth": {"anonymous": true, "query_key": true}})
    };
    // weatherco answers under /weather: acme may not answer there, under
    // it, or above it.
    for base_path in ["/weather", "/weather/forecast", "/"] {
        let (status, body) = tollgate
            .admin(
                Method::POST,
                "/api/v1/services",
                Some(service("shadow", "acme", base_path)),
            )
            .await;
        assert_eq!(status, 409, "{base_path}: {body}");
        assert_eq!(body["errors"][0]["field"], "base_path", "{body}");
        // The other team's base path is not told (nor is its service).
        assert!(
            !body["detail"].as_str().unwrap().contains("'/weather'") || base_path == "/weather",
            "{body}"
        );
    }
    // A path that only starts with the same letters is another path;
    // weatherco itself may add services under its own.
    tollgate
        .create("/api/v1/services", service("open", "acme", "/weatherly"))
        .await;
    tollgate
        .create(
            "/api/v1/services",
            service("v2", "weatherco", "/weather/v2"),
        )
        .await;
    // Moving a service onto another team's path is refused the same way.
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/open",
            Some(json!({"base_path": "/weather/v3"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // ... and so is rolling back to a release whose base path another
    // team has taken since.
    tollgate
        .create("/api/v1/services", service("roaming", "acme", "/roaming"))
        .await;
    tollgate
        .create("/api/v1/services/roaming/publish", json!({}))
        .await;
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/roaming",
            Some(json!({"base_path": "/roamed"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tollgate
        .create(
            "/api/v1/services",
            service("squat", "weatherco", "/roaming"),
        )
        .await;
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/roaming/rollback",
            Some(json!({"release": 1})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["errors"][0]["field"], "release", "{body}");
    let (_, roaming) = tollgate
        .admin(Method::GET, "/api/v1/services/roaming", None)
        .await;
    assert_eq!(roaming["base_path"], "/roamed", "{roaming}");

    // Rewrites of framing or hop-by-hop headers are refused, both ways,
    // as are those of headers the gateway sets itself.
    for (field, name) in [
        ("request_headers", "Content-Length"),
        ("request_headers", "transfer-encoding"),
        ("request_headers", "Host"),
        ("request_headers", "X-Request-Id"),
        ("response_headers", "Content-Length"),
        ("response_headers", "Connection"),
        ("response_headers", "x-request-id"),
    ] {
        let (status, body) = tollgate
            .admin(
                Method::POST,
                "/api/v1/services/open/routes",
                Some(json!({"path": "/x", field: {"set": {name: "0"}}})),
            )
            .await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(
            body["errors"][0]["field"],
            format!("{field}.set.{name}"),
            "{body}"
        );
        let (status, body) = tollgate
            .admin(
                Method::POST,
                "/api/v1/services/open/routes",
                Some(json!({"path": "/x", field: {"remove": [name]}})),
            )
            .await;
        assert_eq!(status, 400, "{name}: {body}");
    }

    // One header named twice (its case aside), or set and removed.
    for rewrite in [
        json!({"set": {"X-A": "1", "x-a": "2"}}),
        json!({"set": {"X-A": "1"}, "remove": ["x-a"]}),
    ] {
        let (status, body) = tollgate
            .admin(
                Method::POST,
                "/api/v1/services/open/routes",
                Some(json!({"path": "/x", "request_headers": rewrite})),
            )
            .await;
        assert_eq!(status, 400, "{rewrite}: {body}");
    }
    // A host is written without its final '.' (requests for `h.` match
    // `h`): two spellings of one host are not two routes.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/open/routes",
            Some(json!({"path": "/x", "host": "example.com."})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "host", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("'example.com'"),
        "{body}"
    );

    // An anonymous service reads no key, and passes none on.
    tollgate
        .create(
            "/api/v1/services/open/routes",
            json!({"methods": ["GET"], "path": "/*"}),
        )
        .await;
    tollgate
        .create("/api/v1/services/open/publish", json!({}))
        .await;
    let path = format!("/weatherly/a?units=metric&api_key={}", world.key);
    let mut seen = Value::Null;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let response = tollgate
            .client
            .get(format!("{}{path}", tollgate.gateway_url))
            .bearer_auth(&world.key)
            .header("x-api-key", &world.key)
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            seen = response.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen["path"], "/a", "{seen}");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
    assert_eq!(seen["query"], "units=metric", "{seen}");
    // The upstream's own token (not a Tollgate key) is its business.
    let seen = echo(
        tollgate
            .client
            .get(format!("{}/weatherly/b", tollgate.gateway_url))
            .bearer_auth("upstream-session-123")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        seen["headers"]["authorization"],
        "Bearer upstream-session-123"
    );
}

/// What a review found members could do beyond their role or their
/// token's scope: each is refused now.
#[tokio::test]
async fn members_stay_within_their_role_and_their_tokens_scope() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    world(
        &tollgate,
        &upstream,
        json!({"ip": {"allow": ["10.20.30.0/24", "127.0.0.1/32"]},
               "auth": {"jwt": {"issuers": [{"issuer": "https://hs.example", "algorithms": ["HS256"],
                                              "secret": "weatherco-secret-0123456789abcdef"}]}}}),
        json!({}),
    )
    .await;
    let member = |email: &'static str, memberships: &'static [(&'static str, &'static str)]| {
        let tollgate = &tollgate;
        async move {
            let (id, token) = tollgate.user_with_token(email).await;
            for (team, role) in memberships {
                tollgate
                    .create(
                        &format!("/api/v1/teams/{team}/members"),
                        json!({"user": id, "role": role}),
                    )
                    .await;
            }
            token
        }
    };
    let provider_dev = member("dev@weatherco.test", &[("weatherco", "developer")]).await;
    let provider_admin = member("admin@weatherco.test", &[("weatherco", "admin")]).await;
    let consumer_dev = member("dev@acme.test", &[("acme", "developer")]).await;
    let both = member("both@x.test", &[("acme", "viewer"), ("weatherco", "owner")]).await;

    // A team-scoped token mints only tokens within its scope.
    let (_, scoped) = tollgate
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"user": "both@x.test", "teams": ["acme"]})),
        )
        .await;
    let scoped = scoped["token_secret"].as_str().unwrap().to_owned();
    let (status, minted) = tollgate
        .admin_as(
            &scoped,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "wide"})),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["teams"], json!(["acme"]), "{minted}");
    let minted = minted["token_secret"].as_str().unwrap();
    let (status, _) = tollgate
        .admin_as(minted, Method::GET, "/api/v1/teams/weatherco", None)
        .await;
    assert_eq!(status, 404, "the minted token is as narrow as its maker");
    let (status, body) = tollgate
        .admin_as(
            &scoped,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"teams": ["weatherco"]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "teams", "{body}");
    // Nor does it make a team of its own, outside its scope.
    let (status, body) = tollgate
        .admin_as(
            &scoped,
            Method::POST,
            "/api/v1/teams",
            Some(json!({"slug": "side-team", "name": "Side"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // It does not see (or revoke) the user's wider tokens.
    let (_, listed) = tollgate
        .admin_as(&scoped, Method::GET, "/api/v1/tokens", None)
        .await;
    let listed = listed["data"].as_array().unwrap();
    assert!(
        listed.iter().all(|token| token["teams"] == json!(["acme"])),
        "{listed:?}"
    );
    let (_, all) = tollgate
        .admin_as(&both, Method::GET, "/api/v1/tokens", None)
        .await;
    let wide = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token.get("teams").is_none())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = tollgate
        .admin_as(
            &scoped,
            Method::DELETE,
            &format!("/api/v1/tokens/{wide}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // The admin scheme is case-insensitive, as on the gateway.
    let lower = tollgate
        .client
        .get(format!("{}/api/v1/auth/me", tollgate.admin_url))
        .header("authorization", format!("bearer {scoped}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);

    // A developer changes draft services, not live ones.
    let (status, body) = tollgate
        .admin_as(
            &provider_dev,
            Method::PATCH,
            "/api/v1/services/weather",
            Some(json!({"auth": {"anonymous": true}})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = tollgate
        .admin_as(
            &provider_dev,
            Method::POST,
            "/api/v1/services/weather/routes",
            Some(json!({"path": "/open"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Nor the upstream a live service sends its traffic to.
    let (status, body) = tollgate
        .admin_as(
            &provider_dev,
            Method::PATCH,
            "/api/v1/upstreams/weather-backend",
            Some(json!({"targets": [{"url": "http://127.0.0.1:9", "weight": 1}]})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("weather"),
        "names the live service: {body}"
    );
    assert_eq!(
        tollgate.get("/weather/forecast/paris").await.status(),
        401,
        "still needs a key"
    );
    let (status, body) = tollgate
        .admin_as(
            &provider_admin,
            Method::PATCH,
            "/api/v1/upstreams/weather-backend",
            Some(json!({"connect_timeout_ms": 2000})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = tollgate
        .admin_as(
            &provider_admin,
            Method::PATCH,
            "/api/v1/services/weather",
            Some(json!({"description": "Forecasts"})),
        )
        .await;
    assert_eq!(status, 200);

    // Renewing charges the consumer: the provider may not; nor may it
    // change the consumer's renewal (403: it sees the subscription).
    let (_, subscriptions) = tollgate
        .admin(Method::GET, "/api/v1/subscriptions", None)
        .await;
    let subscription = subscriptions["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = tollgate
        .admin_as(
            &provider_admin,
            Method::POST,
            &format!("/api/v1/subscriptions/{subscription}/renew"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        !body.to_string().contains("USD"),
        "no balance shown: {body}"
    );
    let (status, _) = tollgate
        .admin_as(
            &provider_admin,
            Method::PATCH,
            &format!("/api/v1/subscriptions/{subscription}"),
            Some(json!({"auto_renew": false})),
        )
        .await;
    assert_eq!(status, 403);

    // The catalog shows consumers how to call a service, not how it is built.
    let (status, catalog) = tollgate
        .admin_as(&consumer_dev, Method::GET, "/api/v1/catalog", None)
        .await;
    assert_eq!(status, 200);
    let entry = &catalog["data"][0]["service"];
    assert_eq!(entry["slug"], "weather", "{catalog}");
    assert_eq!(entry["auth"]["jwt_issuers"], json!(["https://hs.example"]));
    let text = catalog.to_string();
    for private in ["weather-backend", "10.20.30.0", "secret", "sealed"] {
        assert!(!text.contains(private), "{private} in {text}");
    }

    // A JWT identity authenticates as one app only: a second claim of it
    // (which would take over the first app's calls and bills) is refused.
    let identity = json!([{"issuer": "https://hs.example", "subject": "client-1"}]);
    let (status, _) = tollgate
        .admin_as(
            &consumer_dev,
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"jwt": identity})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = tollgate
        .admin_as(
            &provider_dev,
            Method::POST,
            "/api/v1/apps",
            Some(json!({"slug": "squatter", "jwt": identity})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["errors"][0]["field"], "jwt[0]", "{body}");
}

/// Deleting an app, or a live service with `?force=true`, cancels their
/// open subscriptions first: each cancellation is audited and sent to
/// both teams' webhooks, so neither team finds a subscription simply gone.
#[tokio::test]
async fn deleting_an_app_or_a_service_cancels_its_subscriptions_and_says_so() {
    let tollgate = Tollgate::start(BIN).await;
    let upstream = FakeUpstream::start("w").await;
    world(&tollgate, &upstream, json!({}), json!({})).await;
    let mut hooks = Vec::new();
    for team in ["acme", "weatherco"] {
        let hook = WebhookReceiver::start(0).await;
        tollgate
            .create(
                &format!("/api/v1/teams/{team}/webhooks"),
                json!({"url": hook.url(), "events": ["subscription.cancelled"]}),
            )
            .await;
        hooks.push(hook);
    }
    tollgate
        .create(
            "/api/v1/apps",
            json!({"slug": "acme-mobile", "team": "acme"}),
        )
        .await;
    let mobile = tollgate
        .create(
            "/api/v1/subscriptions",
            json!({"app": "acme-mobile", "service": "weather", "plan": "pay-as-you-go"}),
        )
        .await;
    let (status, body) = tollgate
        .admin(Method::DELETE, "/api/v1/apps/acme-mobile", None)
        .await;
    assert_eq!(status, 204, "{body}");
    // A live service goes only with force; refused, nothing is cancelled.
    let (status, body) = tollgate
        .admin(Method::DELETE, "/api/v1/services/weather", None)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = tollgate
        .admin(Method::DELETE, "/api/v1/services/weather?force=true", None)
        .await;
    assert_eq!(status, 204, "{body}");

    let (status, audit) = tollgate
        .admin(
            Method::GET,
            "/api/v1/audit?action=subscription.cancel",
            None,
        )
        .await;
    assert_eq!(status, 200, "{audit}");
    let mut cancelled: Vec<(String, String)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["after"]["app"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                entry["after"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    cancelled.sort();
    assert_eq!(
        cancelled,
        [
            ("acme-mobile".to_owned(), "cancelled".to_owned()),
            ("acme-web".to_owned(), "cancelled".to_owned())
        ],
        "{audit}"
    );
    for hook in &hooks {
        let events = hook.wait_for(2, Duration::from_secs(10)).await;
        let mut apps: Vec<String> = events
            .iter()
            .map(|event| {
                let event = event.json();
                assert_eq!(event["type"], "subscription.cancelled", "{event}");
                assert_eq!(event["data"]["subscription"]["status"], "cancelled");
                event["data"]["subscription"]["app"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        apps.sort();
        assert_eq!(apps, ["acme-mobile", "acme-web"]);
    }
    assert_eq!(mobile["status"], "active");
}
