//! Releases, rollback, deprecation, retirement and hot reload.

use std::time::Duration;

use reqwest::Method;

use crate::*;

#[tokio::test]
async fn drafts_are_not_served_until_published() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "up", "targets": [{"url": upstream.url()}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "svc", "base_path": "/svc", "upstream": "up", "auth": {"anonymous": true}}),
        )
        .await;
    tollgate
        .create("/api/v1/services/svc/routes", json!({"path": "/*"}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    problem(tollgate.get("/svc/x").await, 404, "route_not_found").await;
    let published = tollgate
        .create("/api/v1/services/svc/publish", json!({"note": "first"}))
        .await;
    assert_eq!(published["service"]["lifecycle"], "published");
    assert_eq!(published["release"]["version"], 1);
    assert_eq!(published["release"]["note"], "first");
    let took = tollgate
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    assert!(took < Duration::from_secs(1));
}

#[tokio::test]
async fn changes_are_live_within_a_second_without_restart() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let tollgate = gateway_with(&a).await;
    // A new route.
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "other", "targets": [{"url": b.url()}]}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "two", "base_path": "/two", "upstream": "other", "auth": {"anonymous": true}}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services/two/routes",
            json!({"methods": ["GET"], "path": "/items/{id}"}),
        )
        .await;
    tollgate
        .create("/api/v1/services/two/publish", json!({}))
        .await;
    let took = tollgate
        .wait_for("/two/items/7", Duration::from_secs(1), |s| s == 200)
        .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Retargeting an upstream.
    let (status, _) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/upstreams/svc-backend",
            Some(json!({"targets": [{"url": b.url()}]})),
        )
        .await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    loop {
        let echo: serde_json::Value = tollgate.get("/svc/x").await.json().await.unwrap();
        if echo["server"] == "b" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the new target is not live after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A deleted route stops matching.
    let routes = tollgate
        .admin(Method::GET, "/api/v1/services/two/routes", None)
        .await
        .1;
    let route_id = routes["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = tollgate
        .admin(
            Method::DELETE,
            &format!("/api/v1/services/two/routes/{route_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    tollgate
        .wait_for("/two/items/7", Duration::from_secs(1), |s| s == 404)
        .await;
}

#[tokio::test]
async fn in_flight_requests_survive_a_reload() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    let slow = tokio::spawn({
        let client = tollgate.client.clone();
        let url = format!("{}/svc/delay/700", tollgate.gateway_url);
        async move { client.get(url).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Retire the service while the request is in flight.
    tollgate
        .create("/api/v1/services/svc/retire", json!({}))
        .await;
    tollgate
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 410)
        .await;
    let response = slow.await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "an admitted request is never cut off by a config change"
    );
}

#[tokio::test]
async fn rollback_restores_an_earlier_release() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"name": "v1", "path": "/v1/*"})],
        )
        .await;
    tollgate
        .wait_for("/svc/v1/x", Duration::from_secs(1), |s| s == 200)
        .await;

    // Release 2: the v1 route replaced by v2, and a new base path.
    let (status, _) = tollgate
        .admin(Method::DELETE, "/api/v1/services/svc/routes/v1", None)
        .await;
    assert_eq!(status, 204);
    tollgate
        .create(
            "/api/v1/services/svc/routes",
            json!({"name": "v2", "path": "/v2/*"}),
        )
        .await;
    let (status, _) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/svc",
            Some(json!({"base_path": "/api"})),
        )
        .await;
    assert_eq!(status, 200);
    let second = tollgate
        .create("/api/v1/services/svc/publish", json!({}))
        .await;
    assert_eq!(second["release"]["version"], 2);
    tollgate
        .wait_for("/api/v2/x", Duration::from_secs(1), |s| s == 200)
        .await;
    assert_eq!(tollgate.get("/svc/v1/x").await.status(), 404);

    // The upstream renamed since: the rollback follows it.
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/upstreams/svc-backend",
            Some(json!({"slug": "svc-origin"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rolled = tollgate
        .create("/api/v1/services/svc/rollback", json!({"release": 1}))
        .await;
    assert_eq!(rolled["release"]["version"], 3, "{rolled}");
    assert_eq!(rolled["release"]["note"], "rollback to release 1");
    assert_eq!(rolled["service"]["base_path"], "/svc");
    assert_eq!(rolled["service"]["upstream"], "svc-origin");
    tollgate
        .wait_for("/svc/v1/x", Duration::from_secs(1), |s| s == 200)
        .await;
    assert_eq!(tollgate.get("/api/v2/x").await.status(), 404);

    let releases = tollgate
        .admin(Method::GET, "/api/v1/services/svc/releases", None)
        .await
        .1;
    let versions: Vec<i64> = releases["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/svc/rollback",
            Some(json!({"release": 42})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "release");
}

#[tokio::test]
async fn deprecation_headers_then_retirement() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    assert!(
        tollgate
            .get("/svc/x")
            .await
            .headers()
            .get("deprecation")
            .is_none()
    );

    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/svc/deprecate",
            Some(json!({"sunset": "2001-01-01"})),
        )
        .await;
    assert_eq!(status, 400, "a sunset in the past is refused");
    assert_eq!(body["errors"][0]["field"], "sunset");
    let deprecated = tollgate
        .create(
            "/api/v1/services/svc/deprecate",
            json!({"sunset": "2099-01-31"}),
        )
        .await;
    assert_eq!(deprecated["service"]["lifecycle"], "deprecated");
    let started = std::time::Instant::now();
    let response = loop {
        let response = tollgate.get("/svc/x").await;
        if response.headers().contains_key("deprecation") {
            break response;
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(response.status(), 200, "a deprecated service still answers");
    let deprecation = response.headers()["deprecation"].to_str().unwrap();
    assert!(deprecation.starts_with('@'), "RFC 9745 date: {deprecation}");
    assert_eq!(
        response.headers()["sunset"],
        "Sat, 31 Jan 2099 00:00:00 GMT"
    );
    // Deprecated again: left out, the sunset stays; `null` removes it.
    let again = tollgate
        .create("/api/v1/services/svc/deprecate", json!({}))
        .await;
    assert_eq!(again["service"]["sunset"], "2099-01-31", "{again}");
    let cleared = tollgate
        .create("/api/v1/services/svc/deprecate", json!({"sunset": null}))
        .await;
    assert!(cleared["service"]["sunset"].is_null(), "{cleared}");
    tollgate
        .create(
            "/api/v1/services/svc/deprecate",
            json!({"sunset": "2099-01-31"}),
        )
        .await;

    tollgate
        .create("/api/v1/services/svc/retire", json!({}))
        .await;
    tollgate
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 410)
        .await;
    let hits = upstream.hits();
    problem(tollgate.get("/svc/x").await, 410, "service_retired").await;
    assert_eq!(upstream.hits(), hits);
    // Retired is final.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/svc/publish",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "invalid_lifecycle");
}

#[tokio::test]
async fn configuration_is_kept_across_restart() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    let data_dir = tempfile::tempdir().unwrap();
    // Move to a data dir we own, so it outlives the first process.
    drop(tollgate);
    let options = test_support::tollgate::Options::in_dir(data_dir.path());
    let first = Tollgate::start_with(BIN, options.clone()).await;
    first
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    first
        .wait_for("/svc/x", Duration::from_secs(1), |s| s == 200)
        .await;
    assert!(first.stop().await.success(), "SIGTERM exits cleanly");
    let second = Tollgate::start_with(BIN, options).await;
    assert_eq!(
        second.get("/svc/x").await.status(),
        200,
        "served straight after restart"
    );
    let (status, service) = second
        .admin(Method::GET, "/api/v1/services/svc", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(service["lifecycle"], "published");
    assert_eq!(service["current_release"], 1);
}
