//! JWT authentication through the real binary, against a fake IdP.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::Value;
use test_support::idp::FakeIdp;

use crate::{BIN, FakeUpstream, Tollgate, json, problem};

const PATH: &str = "/weather/forecast/bern";

/// Team `acme` and a published catalog service `weather` at `/weather`
/// that authenticates as `auth` says.
async fn keyed_weather(tollgate: &Tollgate, upstream: &FakeUpstream, auth: Value) {
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme"}))
        .await;
    tollgate
        .publish_http_service(
            "weather",
            "/weather",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather",
            Some(json!({"visibility": "catalog", "auth": auth})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn setup(tollgate: &Tollgate, upstream: &FakeUpstream, idp: &FakeIdp) -> String {
    let issuers = json!([
        {"issuer": idp.issuer, "algorithms": ["ES256"], "jwks_url": idp.jwks_url(), "audiences": ["weather-api"]},
        {"issuer": "https://hs.example", "algorithms": ["HS256"], "secret": idp.secret},
        {"issuer": "https://rs.example", "algorithms": ["RS256"], "public_key_pem": idp.rsa_public_pem, "leeway_s": 0},
    ]);
    keyed_weather(
        tollgate,
        upstream,
        json!({"anonymous": false, "jwt": {"issuers": issuers}}),
    )
    .await;
    tollgate
        .create("/api/v1/services/weather/plans", json!({"slug": "free"}))
        .await;
    tollgate
        .create(
            "/api/v1/apps",
            json!({"slug": "acme-web", "team": "acme", "jwt": [
                {"issuer": idp.issuer, "subject": "client-1"},
                {"issuer": "https://hs.example", "subject": "client-1"},
                {"issuer": "https://rs.example", "subject": "client-1"}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/subscriptions",
            json!({"app": "acme-web", "service": "weather", "plan": "free"}),
        )
        .await;
    let key = tollgate
        .create("/api/v1/apps/acme-web/keys", json!({}))
        .await;
    key["key"].as_str().unwrap().to_owned()
}

fn with(mut claims: Value, extra: Value) -> Value {
    if let (Value::Object(claims), Value::Object(extra)) = (&mut claims, extra) {
        claims.extend(extra);
    }
    claims
}

async fn until_ok(tollgate: &Tollgate, token: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let response = tollgate.get_with_key(PATH, token).await;
        if response.status() == 200 {
            return;
        }
        let body: Value = response.json().await.unwrap_or_default();
        assert!(
            started.elapsed() < limit,
            "still refused after {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn jwts_from_trusted_issuers_authenticate_apps() {
    let upstream = FakeUpstream::start("w").await;
    let idp = FakeIdp::start().await;
    let tollgate = Tollgate::start(BIN).await;
    let key = setup(&tollgate, &upstream, &idp).await;

    // ES256 through the JWKS document (fetched within a second or two).
    let es = idp.sign(Algorithm::ES256, &idp.claims("client-1"));
    until_ok(&tollgate, &es, Duration::from_secs(3)).await;
    let seen: Value = tollgate.json_with_key(PATH, &es).await;
    assert_eq!(seen["headers"]["tollgate-app"], "acme-web");
    assert!(seen["headers"].get("authorization").is_none());
    // RS256 with a configured public key, HS256 with a shared secret.
    let rs = idp.sign(
        Algorithm::RS256,
        &with(idp.claims("client-1"), json!({"iss": "https://rs.example"})),
    );
    assert_eq!(tollgate.get_with_key(PATH, &rs).await.status(), 200);
    let hs = idp.sign(
        Algorithm::HS256,
        &with(idp.claims("client-1"), json!({"iss": "https://hs.example"})),
    );
    assert_eq!(tollgate.get_with_key(PATH, &hs).await.status(), 200);

    // Each bad token says what is wrong.
    let now = idp.claims("x")["iat"].as_u64().unwrap();
    let cases: Vec<(String, &str)> = vec![
        ("not.a.jwt".into(), "token_malformed"),
        // A critical header extension ({"alg":"HS256","crit":["b64"]}):
        // not understood, so not accepted (RFC 7515 §4.1.11).
        (
            "eyJhbGciOiJIUzI1NiIsImNyaXQiOlsiYjY0Il19.e30.sig".into(),
            "token_malformed",
        ),
        ("e30.e30.sig".into(), "token_claims_invalid"),
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"exp": now - 120})),
            ),
            "token_expired",
        ),
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"nbf": now + 600})),
            ),
            "token_not_yet_valid",
        ),
        // A date before 1970 has expired; one too large to read is not
        // a missing claim.
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"exp": -1})),
            ),
            "token_expired",
        ),
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"exp": 1e20})),
            ),
            "token_claims_invalid",
        ),
        // Four parts: a malformed token, not an unknown API key.
        (
            format!("{}.x", idp.sign(Algorithm::ES256, &idp.claims("client-1"))),
            "token_malformed",
        ),
        // Time claims of the wrong type say which claim is wrong.
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"nbf": "soon"})),
            ),
            "token_claims_invalid",
        ),
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"exp": "later"})),
            ),
            "token_claims_invalid",
        ),
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"aud": "another-api"})),
            ),
            "token_claims_invalid",
        ),
        // The issuer lists audiences: a token must name one of them.
        (
            idp.sign(Algorithm::ES256, &{
                let mut claims = idp.claims("client-1");
                claims.as_object_mut().unwrap().remove("aud");
                claims
            }),
            "token_claims_invalid",
        ),
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"aud": 5})),
            ),
            "token_claims_invalid",
        ),
        (
            idp.sign(
                Algorithm::ES256,
                &with(idp.claims("client-1"), json!({"aud": null})),
            ),
            "token_claims_invalid",
        ),
        (
            idp.sign(
                Algorithm::ES256,
                &with(
                    idp.claims("client-1"),
                    json!({"iss": "https://evil.example"}),
                ),
            ),
            "token_claims_invalid",
        ),
        (
            idp.sign(Algorithm::ES256, &idp.claims("client-2")),
            "invalid_credentials",
        ),
        (
            idp.forge("none", &idp.claims("client-1"), b""),
            "token_algorithm_not_allowed",
        ),
        // HS/RS confusion: HMAC over the RS issuer's public key.
        (
            {
                let claims = with(idp.claims("client-1"), json!({"iss": "https://rs.example"}));
                let key = jsonwebtoken::EncodingKey::from_secret(idp.rsa_public_pem.as_bytes());
                jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
                    .unwrap()
            },
            "token_algorithm_not_allowed",
        ),
        // A valid header and claims with someone else's signature.
        (
            {
                let good = idp.sign(Algorithm::ES256, &idp.claims("client-1"));
                let other = idp.sign(Algorithm::ES256, &idp.claims("client-9"));
                let (head, _) = good.rsplit_once('.').unwrap();
                format!("{head}.{}", other.rsplit_once('.').unwrap().1)
            },
            "invalid_credentials",
        ),
    ];
    for (token, code) in cases {
        let response = tollgate.get_with_key(PATH, &token).await;
        let body = problem(response, 401, code).await;
        assert!(!body["detail"].as_str().unwrap().is_empty());
    }
    // A JWT and a key of another app on one request.
    tollgate
        .create("/api/v1/apps", json!({"slug": "other", "team": "acme"}))
        .await;
    let other_key = tollgate.create("/api/v1/apps/other/keys", json!({})).await;
    let started = Instant::now();
    while tollgate
        .get_with_key(PATH, other_key["key"].as_str().unwrap())
        .await
        .status()
        != 403
    {
        assert!(started.elapsed() < Duration::from_secs(1), "key not loaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = tollgate
        .client
        .get(format!("{}{PATH}", tollgate.gateway_url))
        .bearer_auth(&es)
        .header("x-api-key", other_key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    problem(response, 401, "conflicting_credentials").await;
    // The JWT and the app's own key together are fine.
    let response = tollgate
        .client
        .get(format!("{}{PATH}", tollgate.gateway_url))
        .bearer_auth(&es)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Key rotation: a token signed with a new key id works once the JWKS is
    // fetched again, which the unknown key id triggers early.
    let fetches = idp.jwks_fetches();
    idp.rotate("k2");
    let rotated = idp.sign(Algorithm::ES256, &idp.claims("client-1"));
    until_ok(&tollgate, &rotated, Duration::from_secs(8)).await;
    assert!(idp.jwks_fetches() > fetches);
    // The old key still verifies (it is still published).
    assert_eq!(tollgate.get_with_key(PATH, &es).await.status(), 200);
}

#[tokio::test]
async fn jwt_settings_are_validated() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "weather",
            "/weather",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather",
            Some(json!({"auth": {"jwt": {"issuers": [
                {"issuer": "a", "algorithms": ["HS256", "RS256"], "secret": "short"},
                {"issuer": "b", "algorithms": ["ES256"]}
            ]}}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    for field in [
        "auth.jwt.issuers[0].algorithms",
        "auth.jwt.issuers[0].secret",
        "auth.jwt.issuers[1]",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    // Unknown algorithm names are refused by the parser, naming the field.
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather",
            Some(json!({"auth": {"jwt": {"issuers": [{"issuer": "c", "algorithms": ["PS512"]}]}}})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["field"], "auth.jwt.issuers[0].algorithms[0]",
        "{body}"
    );
    // Keys come from one place: a PEM and a JWKS together are refused
    // (one of them would be ignored).
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather",
            Some(
                json!({"auth": {"jwt": {"issuers": [{"issuer": "d", "algorithms": ["RS256"],
                "public_key_pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                "jwks_url": "https://idp.example/jwks.json"}]}}}),
            ),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "auth.jwt.issuers[0]", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not both"),
        "{body}"
    );
}

/// A subscription state to set up: (app suffix, plan to subscribe to,
/// actions after subscribing, expected status, expected code).
type State = (
    &'static str,
    Option<&'static str>,
    &'static [&'static str],
    u16,
    &'static str,
);

/// The matrix of credential kinds × subscription states, through the
/// gateway: every cell answers the code its state calls for.
#[tokio::test]
async fn every_credential_kind_meets_every_subscription_state() {
    let upstream = FakeUpstream::start("w").await;
    let idp = FakeIdp::start().await;
    let tollgate = Tollgate::start(BIN).await;
    let issuer = "https://hs.example";
    keyed_weather(
        &tollgate,
        &upstream,
        json!({"anonymous": false, "query_key": true,
            "jwt": {"issuers": [{"issuer": issuer, "algorithms": ["HS256"], "secret": idp.secret}]}}),
    )
    .await;
    tollgate
        .create("/api/v1/services/weather/plans", json!({"slug": "open"}))
        .await;
    tollgate
        .create(
            "/api/v1/services/weather/plans",
            json!({"slug": "vetted", "approval_required": true}),
        )
        .await;
    // One app per state: (app, plan, actions after subscribing, expected).
    let states: [State; 6] = [
        ("none", None, &[], 403, "not_subscribed"),
        ("active", Some("open"), &[], 200, ""),
        ("pending", Some("vetted"), &[], 403, "subscription_pending"),
        (
            "rejected",
            Some("vetted"),
            &["reject"],
            403,
            "subscription_rejected",
        ),
        (
            "suspended",
            Some("open"),
            &["suspend"],
            403,
            "subscription_suspended",
        ),
        (
            "cancelled",
            Some("open"),
            &["cancel"],
            403,
            "not_subscribed",
        ),
    ];
    let mut keys = std::collections::HashMap::new();
    for (state, plan, actions, _, _) in &states {
        let app = format!("app-{state}");
        tollgate
            .create(
                "/api/v1/apps",
                json!({"slug": app, "team": "acme", "jwt": [{"issuer": issuer, "subject": app}]}),
            )
            .await;
        let key = tollgate
            .create(&format!("/api/v1/apps/{app}/keys"), json!({}))
            .await;
        keys.insert(*state, key["key"].as_str().unwrap().to_owned());
        if let Some(plan) = plan {
            let subscription = tollgate
                .create(
                    "/api/v1/subscriptions",
                    json!({"app": app, "service": "weather", "plan": plan}),
                )
                .await;
            let id = subscription["id"].as_str().unwrap();
            for action in *actions {
                tollgate
                    .create(
                        &format!("/api/v1/subscriptions/{id}/{action}"),
                        json!({"reason": "matrix"}),
                    )
                    .await;
            }
        }
    }
    // The last change must have reached the gateway before the matrix runs.
    let cancelled_key = keys["cancelled"].clone();
    let started = Instant::now();
    loop {
        let response = tollgate.get_with_key(PATH, &cancelled_key).await;
        let body: Value = response.json().await.unwrap_or_default();
        if body["code"] == "not_subscribed"
            && body["detail"].as_str().unwrap_or("").contains("cancelled")
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kinds = ["bearer key", "x-api-key", "query key", "jwt"];
    for (state, _, _, status, code) in &states {
        let key = &keys[state];
        let jwt = idp.sign(
            Algorithm::HS256,
            &with(idp.claims(&format!("app-{state}")), json!({"iss": issuer})),
        );
        for kind in kinds {
            let url = format!("{}{PATH}", tollgate.gateway_url);
            let request = match kind {
                "bearer key" => tollgate.client.get(&url).bearer_auth(key),
                "x-api-key" => tollgate.client.get(&url).header("x-api-key", key),
                "query key" => tollgate.client.get(format!("{url}?api_key={key}")),
                _ => tollgate.client.get(&url).bearer_auth(&jwt),
            };
            let response = request.send().await.unwrap();
            if *status == 200 {
                assert_eq!(response.status(), 200, "{kind} × {state}");
            } else {
                let body = problem(response, *status, code).await;
                assert!(
                    !body["detail"].as_str().unwrap().is_empty(),
                    "{kind} × {state}"
                );
            }
        }
    }
}

/// A team's service names the keys of the issuers it trusts, so it could
/// verify tokens it made itself: it authenticates another team's app only
/// with the issuer keys that app's identity names (a JWKS URL or a public
/// key), never with an HS256 secret, which it knows.
#[tokio::test]
async fn another_teams_service_authenticates_an_app_only_with_keys_the_app_names() {
    let upstream = FakeUpstream::start("w").await;
    let idp = FakeIdp::start().await;
    let tollgate = Tollgate::start(BIN).await;
    for team in ["acme", "weatherco"] {
        tollgate
            .create("/api/v1/teams", json!({"slug": team}))
            .await;
    }
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "backend", "team": "weatherco", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    let own_secret = "weatherco-chose-this-secret-itself-0123456789";
    let issuers = json!([
        {"issuer": idp.issuer, "algorithms": ["ES256"], "jwks_url": idp.jwks_url(), "audiences": ["weather-api"]},
        {"issuer": "https://hs.example", "algorithms": ["HS256"], "secret": own_secret},
        {"issuer": "https://rs.example", "algorithms": ["RS256"], "public_key_pem": idp.rsa_public_pem},
    ]);
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "weather", "team": "weatherco", "kind": "http", "base_path": "/weather",
                "upstream": "backend", "visibility": "catalog", "approval_required": false,
                "auth": {"anonymous": false, "jwt": {"issuers": issuers}}}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services/weather/routes",
            json!({"methods": ["GET"], "path": "/*"}),
        )
        .await;
    tollgate
        .create("/api/v1/services/weather/plans", json!({"slug": "free"}))
        .await;
    tollgate
        .create("/api/v1/services/weather/publish", json!({}))
        .await;
    tollgate
        .create(
            "/api/v1/apps",
            json!({"slug": "acme-web", "team": "acme", "jwt": [
                {"issuer": idp.issuer, "subject": "client-1", "jwks_url": idp.jwks_url()},
                {"issuer": "https://hs.example", "subject": "client-1"},
                {"issuer": "https://rs.example", "subject": "client-1"}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/subscriptions",
            json!({"app": "acme-web", "service": "weather", "plan": "free"}),
        )
        .await;

    // The JWKS the app names: its tokens stand for it.
    let es = idp.sign(Algorithm::ES256, &idp.claims("client-1"));
    until_ok(&tollgate, &es, Duration::from_secs(3)).await;
    let seen: Value = tollgate.json_with_key(PATH, &es).await;
    assert_eq!(seen["headers"]["tollgate-app"], "acme-web");
    // A token weatherco made with its own secret does not.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &with(idp.claims("client-1"), json!({"iss": "https://hs.example"})),
        &jsonwebtoken::EncodingKey::from_secret(own_secret.as_bytes()),
    )
    .unwrap();
    let body = problem(
        tollgate.get_with_key(PATH, &forged).await,
        401,
        "invalid_credentials",
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("another team"), "{body}");
    assert!(!detail.contains("acme"), "names no other tenant: {body}");
    // Read the same as for an identity no app claims: no oracle of
    // other teams' apps.
    let unclaimed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &with(
            idp.claims("client-1"),
            json!({"iss": "https://hs.example", "sub": "nobody"}),
        ),
        &jsonwebtoken::EncodingKey::from_secret(own_secret.as_bytes()),
    )
    .unwrap();
    let other = problem(
        tollgate.get_with_key(PATH, &unclaimed).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(
        other["detail"]
            .as_str()
            .unwrap()
            .replace("nobody", "client-1"),
        detail,
        "{other}"
    );
    // Nor does a public key the app has not named; once named (spelled
    // with other line breaks), it does.
    let rs = idp.sign(
        Algorithm::RS256,
        &with(idp.claims("client-1"), json!({"iss": "https://rs.example"})),
    );
    problem(
        tollgate.get_with_key(PATH, &rs).await,
        401,
        "invalid_credentials",
    )
    .await;
    let respelled = idp.rsa_public_pem.replace('\n', "\r\n  ");
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"jwt": [
                {"issuer": idp.issuer, "subject": "client-1", "jwks_url": idp.jwks_url()},
                {"issuer": "https://rs.example", "subject": "client-1", "public_key_pem": respelled}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    until_ok(&tollgate, &rs, Duration::from_secs(3)).await;

    // Identities name the issuer's keys once, and well.
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/apps/acme-web",
            Some(json!({"jwt": [
                {"issuer": "x", "subject": "y", "jwks_url": idp.jwks_url(), "public_key_pem": idp.rsa_public_pem},
                {"issuer": "x", "subject": "z", "public_key_pem": "not a key"},
                {"issuer": "x", "subject": "w", "jwks_url": "ftp://keys.example"}]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["jwt[0]", "jwt[1].public_key_pem", "jwt[2].jwks_url"],
        "{body}"
    );
}
