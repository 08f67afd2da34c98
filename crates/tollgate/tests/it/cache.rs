//! Routes' response caches: what is kept, for whom, how long, and that a
//! call served from memory is still admitted, charged and logged.

use std::time::Duration;

use reqwest::{Method, Response};
use serde_json::Value;
use test_support::tollgate::{ADMIN_TOKEN, Options};

use crate::access::{wait_status, world};
use crate::money::grant;
use crate::*;

fn cache_status(response: &Response) -> String {
    response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// GET `path` on `tollgate` with `key` (when given); (Cache-Status, body).
async fn fetch(tollgate: &Tollgate, path: &str, key: Option<&str>) -> (String, Response) {
    let mut request = tollgate
        .client
        .get(format!("{}{path}", tollgate.gateway_url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    (cache_status(&response), response)
}

/// Adds a route named `cached` at `/cached/*` with `cache` to the
/// `weather` service of [`world`], republishes, and waits until it serves.
async fn add_cached_route(tollgate: &Tollgate, key: &str, cache: Value) -> String {
    let route = tollgate
        .create(
            "/api/v1/services/weather/routes",
            json!({"name": "cached", "methods": ["GET"], "path": "/cached/*", "cache": cache}),
        )
        .await;
    tollgate
        .create("/api/v1/services/weather/publish", json!({}))
        .await;
    wait_status(tollgate, "/weather/cached/ready", key, 200).await;
    // The route was live before the publish reached the gateway (its
    // service's new version keys the cache afresh): settled once an
    // answer stays kept.
    let started = std::time::Instant::now();
    while !fetch(tollgate, "/weather/cached/settled", Some(key))
        .await
        .0
        .contains("hit")
    {
        assert!(started.elapsed() < Duration::from_secs(2), "never a hit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    route["id"].as_str().unwrap().to_owned()
}

/// Waits (1 s at most) until `path` is fetched afresh, after `what`.
async fn wait_for_miss(tollgate: &Tollgate, path: &str, key: &str, what: &str) {
    let started = std::time::Instant::now();
    loop {
        let (status, _) = fetch(tollgate, path, Some(key)).await;
        if status == "tollgate; fwd=uri-miss; stored" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still {status} a second after {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes the anonymous service `svc` at `/svc/*` on `upstream`, its
/// one route cached for a minute, and waits until it serves.
async fn serve_cached_svc(tollgate: &Tollgate, upstream: &FakeUpstream) {
    tollgate
        .publish_http_service(
            "svc",
            "/svc",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*", "cache": {"ttl_s": 60}})],
        )
        .await;
    tollgate
        .wait_for("/svc/ping", Duration::from_secs(1), |s| s == 200)
        .await;
}

#[tokio::test]
async fn answers_from_memory_per_app_until_the_ttl_ends() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    add_cached_route(&tollgate, &world.key, json!({"ttl_s": 2})).await;
    let other = app_with_key(&tollgate, "acme", "acme-mobile").await;
    subscribe_app(&tollgate, "acme-mobile", "weather", "pay-as-you-go").await;
    wait_status(&tollgate, "/weather/forecast/ready", &other, 200).await;

    let path = "/weather/cached/item?a=1";
    let before = upstream.hits();
    let (status, first) = fetch(&tollgate, path, Some(&world.key)).await;
    assert_eq!(status, "tollgate; fwd=uri-miss; stored");
    assert_eq!(first.status(), 200);
    let first_body = first.bytes().await.unwrap();
    let echo: Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(echo["path"], "/cached/item");

    let (status, second) = fetch(&tollgate, path, Some(&world.key)).await;
    assert!(status.starts_with("tollgate; hit; ttl="), "{status}");
    assert_eq!(second.status(), 200);
    let age: u64 = second.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 2, "{age}");
    assert!(second.headers().contains_key("x-request-id"));
    let second_id = second.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        second.bytes().await.unwrap(),
        first_body,
        "the same answer, byte for byte"
    );

    // HEAD is answered from what GET kept: the head alone.
    let head = tollgate
        .client
        .head(format!("{}{path}", tollgate.gateway_url))
        .bearer_auth(&world.key)
        .send()
        .await
        .unwrap();
    assert!(cache_status(&head).contains("hit"));
    assert_eq!(
        head.headers()["content-length"],
        first_body.len().to_string().as_str()
    );
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(upstream.hits(), before + 1, "hits never reach the upstream");

    // Another app, another query: their own answers.
    let (status, _) = fetch(&tollgate, path, Some(&other)).await;
    assert_eq!(status, "tollgate; fwd=uri-miss; stored");
    let (status, _) = fetch(&tollgate, "/weather/cached/item?a=2", Some(&world.key)).await;
    assert_eq!(status, "tollgate; fwd=uri-miss; stored");
    assert_eq!(upstream.hits(), before + 3);

    // Past its TTL the answer is fetched again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, third) = fetch(&tollgate, path, Some(&world.key)).await;
    assert_eq!(status, "tollgate; fwd=stale; stored");
    let echo: Value = third.json().await.unwrap();
    assert_eq!(echo["hit"], (before + 4) as u64, "a fresh answer");

    // The call log names the cache as the hit's target.
    let calls = logged(
        &tollgate,
        ADMIN_TOKEN,
        &format!("request_id={second_id}"),
        1,
    )
    .await;
    assert_eq!(calls[0]["upstream_target"], "cache", "{}", calls[0]);
    assert_eq!(calls[0]["status"], 200);
    assert_eq!(calls[0]["app"], "acme-web");
    // Three hits (the GET and the HEAD, and the one that found the route
    // settled), counted for the service.
    let text = tollgate
        .client
        .get(format!("{}/metrics", tollgate.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("tollgate_cache_hits_total{service=\"weather\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn keeps_only_what_may_be_kept() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = Tollgate::start(BIN).await;
    serve_cached_svc(&tollgate, &upstream).await;

    // Asked twice, forwarded twice, with this Cache-Status each time.
    let never_kept = [
        (
            "/svc/a?header=Set-Cookie:%20s%3D1",
            "tollgate; fwd=uri-miss",
        ),
        (
            "/svc/b?header=Cache-Control:%20no-store",
            "tollgate; fwd=uri-miss",
        ),
        (
            "/svc/c?header=Cache-Control:%20private",
            "tollgate; fwd=uri-miss",
        ),
        (
            "/svc/d?header=Cache-Control:%20max-age%3D0",
            "tollgate; fwd=uri-miss",
        ),
        ("/svc/e?header=Vary:%20*", "tollgate; fwd=uri-miss"),
        ("/svc/status/500", "tollgate; fwd=uri-miss"),
        ("/svc/status/201", "tollgate; fwd=uri-miss"),
        ("/svc/bytes/2000000", "tollgate; fwd=uri-miss"),
        ("/svc/chunked/1500000", "tollgate; fwd=uri-miss"),
    ];
    for (path, expected) in never_kept {
        let before = upstream.hits();
        for _ in 0..2 {
            let (status, response) = fetch(&tollgate, path, None).await;
            assert_eq!(status, expected, "{path}");
            // Read whole: a body that outgrows the cache is still passed on.
            response.bytes().await.unwrap();
        }
        assert_eq!(
            upstream.hits(),
            before + 2,
            "{path} was served from the cache"
        );
    }

    // Requests the cache leaves to the upstream.
    let bypassed: [(Method, &str, &str); 4] = [
        (Method::GET, "authorization", "Bearer someone"),
        (Method::GET, "range", "bytes=0-1"),
        (Method::GET, "if-none-match", "\"x\""),
        (Method::POST, "x-any", "1"),
    ];
    for (method, name, value) in bypassed {
        let before = upstream.hits();
        for _ in 0..2 {
            let response = tollgate
                .client
                .request(
                    method.clone(),
                    format!("{}/svc/bypass", tollgate.gateway_url),
                )
                .header(name, value)
                .send()
                .await
                .unwrap();
            assert_eq!(cache_status(&response), "tollgate; fwd=bypass", "{name}");
        }
        assert_eq!(upstream.hits(), before + 2, "{method} with {name}");
    }

    // Kept: a streamed body, a 404, an upstream's shorter max-age.
    for path in ["/svc/chunked/3000", "/svc/status/404"] {
        let before = upstream.hits();
        let (_, first) = fetch(&tollgate, path, None).await;
        let first_status = first.status();
        let first_body = first.bytes().await.unwrap();
        let (status, second) = fetch(&tollgate, path, None).await;
        assert!(status.contains("hit"), "{path}: {status}");
        assert_eq!(second.status(), first_status);
        assert_eq!(second.bytes().await.unwrap(), first_body);
        assert_eq!(upstream.hits(), before + 1, "{path}");
    }
    let short = "/svc/short?header=Cache-Control:%20max-age%3D1";
    fetch(&tollgate, short, None).await;
    let (status, hit) = fetch(&tollgate, short, None).await;
    assert!(status.starts_with("tollgate; hit; ttl="), "{status}");
    assert_eq!(hit.headers()["cache-control"], "max-age=1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = fetch(&tollgate, short, None).await;
    assert_eq!(status, "tollgate; fwd=stale; stored");

    // The upstream's own Cache-Status is kept, the gateway's member after.
    let (status, _) = fetch(
        &tollgate,
        "/svc/cdn?header=Cache-Status:%20origin;%20hit",
        None,
    )
    .await;
    assert_eq!(status, "origin; hit, tollgate; fwd=uri-miss; stored");
    let ranged = tollgate
        .client
        .get(format!(
            "{}/svc/cdn2?header=Cache-Status:%20origin;%20hit",
            tollgate.gateway_url
        ))
        .header("range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&ranged), "origin; hit, tollgate; fwd=bypass");

    // An upstream's own Tollgate-Balance never reaches the caller (the
    // gateway's is the caller's balance), kept or not.
    for _ in 0..2 {
        let (_, forged) = fetch(
            &tollgate,
            "/svc/forged?header=Tollgate-Balance:%20999.00%20USD",
            None,
        )
        .await;
        assert!(
            !forged.headers().contains_key("tollgate-balance"),
            "{:?}",
            forged.headers()
        );
    }

    // A GET with a body (a search) is not the answer to a GET without.
    let before = upstream.hits();
    for _ in 0..2 {
        let response = tollgate
            .client
            .get(format!("{}/svc/search", tollgate.gateway_url))
            .body("{\"q\": \"one caller's question\"}")
            .send()
            .await
            .unwrap();
        assert_eq!(cache_status(&response), "tollgate; fwd=bypass");
    }
    let (status, _) = fetch(&tollgate, "/svc/search", None).await;
    assert_eq!(status, "tollgate; fwd=uri-miss; stored");
    assert_eq!(upstream.hits(), before + 3);

    // A POST that succeeds on a kept URI makes it fetched afresh.
    let (status, _) = fetch(&tollgate, "/svc/search", None).await;
    assert!(status.contains("hit"), "{status}");
    let posted = tollgate
        .client
        .post(format!("{}/svc/search", tollgate.gateway_url))
        .body("changed")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let (status, _) = fetch(&tollgate, "/svc/search", None).await;
    assert_eq!(status, "tollgate; fwd=uri-miss; stored");

    // `Vary` is compared on the headers as the upstream saw them: the
    // gateway's `X-Forwarded-For` names each client.
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .no_proxy()
            .build()
            .unwrap()
    };
    let by_client = "/svc/geo?header=Vary:%20X-Forwarded-For";
    for (ip, expected) in [
        ([127, 0, 0, 1], "tollgate; fwd=uri-miss; stored"),
        ([127, 0, 0, 1], "tollgate; hit; ttl=60"),
        ([127, 0, 0, 2], "tollgate; fwd=vary-miss; stored"),
    ] {
        let response = from(ip)
            .get(format!("{}{by_client}", tollgate.gateway_url))
            .send()
            .await
            .unwrap();
        let status = cache_status(&response);
        assert!(
            status == expected || (expected.contains("hit") && status.starts_with("tollgate; hit")),
            "{ip:?}: {status}"
        );
        let echo: Value = response.json().await.unwrap();
        let ip = std::net::IpAddr::from(ip).to_string();
        assert_eq!(
            echo["headers"]["x-forwarded-for"],
            ip.as_str(),
            "an answer made for {ip}"
        );
    }

    // Vary: served only to requests that match the one that fetched it.
    let varied = "/svc/lang?header=Vary:%20Accept-Language";
    let in_language = |language: &'static str| {
        tollgate
            .client
            .get(format!("{}{varied}", tollgate.gateway_url))
            .header("accept-language", language)
            .send()
    };
    in_language("en").await.unwrap();
    assert!(cache_status(&in_language("en").await.unwrap()).contains("hit"));
    assert_eq!(
        cache_status(&in_language("fr").await.unwrap()),
        "tollgate; fwd=vary-miss; stored"
    );
}

/// A write taken by another route than the reads of its URI still makes
/// their cached answer stale.
/// Misses of one key at once reach the upstream once; the others wait
/// and are served that answer. An answer that cannot be kept lets them
/// all through together.
#[tokio::test]
async fn a_burst_of_misses_asks_the_upstream_once() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = Tollgate::start(BIN).await;
    serve_cached_svc(&tollgate, &upstream).await;
    let burst = |path: &'static str| {
        futures_util::future::join_all((0..10).map(|_| async {
            let (status, response) = fetch(&tollgate, path, None).await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            (status, body["hit"].as_u64().unwrap())
        }))
    };

    let before = upstream.hits();
    let answers = burst("/svc/delay/300").await;
    assert_eq!(upstream.hits() - before, 1, "{answers:?}");
    let fetched = answers
        .iter()
        .filter(|(s, _)| s.contains("fwd=uri-miss"))
        .count();
    let hits = answers.iter().filter(|(s, _)| s.contains("; hit;")).count();
    assert_eq!((fetched, hits), (1, 9), "{answers:?}");
    assert!(
        answers.windows(2).all(|pair| pair[0].1 == pair[1].1),
        "one answer for all: {answers:?}"
    );

    // Not to be kept: the first answer lets the rest go to the upstream
    // at once, and the next burst does not wait at all.
    let path = "/svc/delay/300?header=Cache-Control:%20no-store";
    for round in 0..2 {
        let before = upstream.hits();
        let started = std::time::Instant::now();
        let answers = burst(path).await;
        assert_eq!(upstream.hits() - before, 10, "round {round}: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|(s, _)| s.contains("fwd=uri-miss") && !s.contains("stored")),
            "{answers:?}"
        );
        if round == 1 {
            // Not one at a time (ten delays); that they do not wait for
            // one another at all is the unit test's
            // (`misses_of_a_key_whose_answer_was_not_kept_pass_together`),
            // as times on a loaded machine cannot tell one delay from two.
            assert!(
                started.elapsed() < Duration::from_millis(300) * 10,
                "round {round} took {:?}",
                started.elapsed()
            );
        }
    }
}

#[tokio::test]
async fn a_write_through_another_route_drops_the_answer() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "wr",
            "/wr",
            json!({"targets": [{"url": upstream.url()}]}),
            &[
                json!({"name": "read", "methods": ["GET"], "path": "/items/*", "cache": {"ttl_s": 60}}),
                json!({"name": "write", "methods": ["POST", "PUT", "DELETE"], "path": "/items/*"}),
            ],
        )
        .await;
    tollgate
        .wait_for("/wr/items/ping", Duration::from_secs(1), |s| s == 200)
        .await;
    let path = "/wr/items/1";
    fetch(&tollgate, path, None).await;
    let (status, _) = fetch(&tollgate, path, None).await;
    assert!(status.contains("hit"), "{status}");
    for (method, expected) in [
        (Method::PUT, "tollgate; fwd=uri-miss; stored"),
        (Method::DELETE, "tollgate; fwd=uri-miss; stored"),
    ] {
        let written = tollgate
            .client
            .request(method.clone(), format!("{}{path}", tollgate.gateway_url))
            .body("new")
            .send()
            .await
            .unwrap();
        assert_eq!(written.status(), 200);
        assert!(
            !written.headers().contains_key("cache-status"),
            "the write's route has no cache"
        );
        let (status, _) = fetch(&tollgate, path, None).await;
        assert_eq!(status, expected, "after {method}");
    }
    // A write to another URI leaves this one's answer kept.
    let (status, _) = fetch(&tollgate, path, None).await;
    assert!(status.contains("hit"), "{status}");
    let other = tollgate
        .client
        .post(format!("{}/wr/items/2", tollgate.gateway_url))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let (status, _) = fetch(&tollgate, path, None).await;
    assert!(status.contains("hit"), "another URI's write: {status}");
}

#[tokio::test]
async fn a_changed_route_starts_afresh() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    let route = add_cached_route(&tollgate, &world.key, json!({"ttl_s": 600})).await;
    let path = "/weather/cached/item";
    fetch(&tollgate, path, Some(&world.key)).await;
    let (status, _) = fetch(&tollgate, path, Some(&world.key)).await;
    assert!(status.contains("hit"), "{status}");

    let (code, body) = tollgate
        .admin(
            Method::PATCH,
            &format!("/api/v1/services/weather/routes/{route}"),
            Some(json!({"cache": {"ttl_s": 300}})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    tollgate
        .create("/api/v1/services/weather/publish", json!({}))
        .await;
    wait_for_miss(&tollgate, path, &world.key, "the change").await;
}

#[tokio::test]
async fn a_purge_empties_the_services_caches() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    add_cached_route(&tollgate, &world.key, json!({"ttl_s": 600})).await;
    let path = "/weather/cached/item";
    fetch(&tollgate, path, Some(&world.key)).await;
    let (status, _) = fetch(&tollgate, path, Some(&world.key)).await;
    assert!(status.contains("hit"), "{status}");

    // The service's team admins may purge; a developer may not.
    let (developer_id, developer) = tollgate.user_with_token("dev@weatherco.example").await;
    tollgate
        .create(
            "/api/v1/teams/weatherco/members",
            json!({"user": developer_id, "role": "developer"}),
        )
        .await;
    let (code, body) = tollgate
        .admin_as(
            &developer,
            Method::POST,
            "/api/v1/services/weather/cache/purge",
            Some(json!({})),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    let (status, _) = fetch(&tollgate, path, Some(&world.key)).await;
    assert!(
        status.contains("hit"),
        "a refused purge purges nothing: {status}"
    );

    let (code, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/weather/cache/purge",
            Some(json!({})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["service"]["slug"], "weather");
    wait_for_miss(&tollgate, path, &world.key, "the purge").await;
    let (code, audit) = tollgate
        .admin(
            Method::GET,
            "/api/v1/audit?action=service.cache_purge",
            None,
        )
        .await;
    assert_eq!(code, 200, "{audit}");
    assert_eq!(audit["data"].as_array().unwrap().len(), 1, "{audit}");
}

#[tokio::test]
async fn no_memory_for_it_turns_caching_off() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = Tollgate::start_with(
        BIN,
        Options {
            env: vec![("TOLLGATE_GATEWAY__CACHE_MAX_BYTES".into(), "0".into())],
            ..Default::default()
        },
    )
    .await;
    serve_cached_svc(&tollgate, &upstream).await;
    let before = upstream.hits();
    for _ in 0..2 {
        let (status, _) = fetch(&tollgate, "/svc/item", None).await;
        assert_eq!(status, "tollgate; fwd=bypass");
    }
    assert_eq!(upstream.hits(), before + 2);
}

/// A hit is a call: it is charged, and refused (402) when the wallet
/// cannot pay, though its answer is in memory.
#[tokio::test]
async fn hits_are_charged_and_refused_without_credit() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = Tollgate::start(BIN).await;
    let world = world(&tollgate, &upstream, json!({}), json!({})).await;
    add_cached_route(&tollgate, &world.key, json!({"ttl_s": 600, "shared": true})).await;
    let (status, body) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/weather/plans/pay-as-you-go",
            Some(json!({"price_per_request": "0.01"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_status(&tollgate, "/weather/forecast/ready", &world.key, 402).await;
    let (status, body) = grant(
        &tollgate,
        "acme",
        json!({"amount": "0.03", "reason": "test"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // The probe spends 0.01.
    wait_status(&tollgate, "/weather/forecast/probe", &world.key, 200).await;

    let path = "/weather/cached/paid";
    let before = upstream.hits();
    let (status, miss) = fetch(&tollgate, path, Some(&world.key)).await;
    assert_eq!(status, "tollgate; fwd=uri-miss; stored");
    assert_eq!(miss.headers()["tollgate-balance"], "0.01 USD");
    let (status, hit) = fetch(&tollgate, path, Some(&world.key)).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(hit.headers()["tollgate-balance"], "0.00 USD");
    let (_, refused) = fetch(&tollgate, path, Some(&world.key)).await;
    assert!(!refused.headers().contains_key("cache-status"));
    problem(refused, 402, "insufficient_credit").await;
    assert_eq!(upstream.hits(), before + 1);
}

#[tokio::test]
async fn cache_settings_are_checked() {
    let upstream = FakeUpstream::start("up").await;
    let tollgate = gateway_with(&upstream).await;
    for (cache, methods, field) in [
        (json!({"ttl_s": 0}), json!(["GET"]), "cache.ttl_s"),
        (json!({"ttl_s": 86401}), json!(["GET"]), "cache.ttl_s"),
        (
            json!({"ttl_s": 5, "statuses": [206]}),
            json!(["GET"]),
            "cache.statuses[0]",
        ),
        (
            json!({"ttl_s": 5, "statuses": []}),
            json!(["GET"]),
            "cache.statuses",
        ),
        (json!({"ttl_s": 5}), json!(["POST"]), "cache"),
    ] {
        let (status, body) = tollgate
            .admin(
                Method::POST,
                "/api/v1/services/svc/routes",
                Some(json!({"path": "/c", "methods": methods, "cache": cache})),
            )
            .await;
        assert_eq!(status, 400, "{cache}: {body}");
        let named: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, [field], "{body}");
    }
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/svc/routes",
            Some(json!({"path": "/c", "cache": {"ttl_s": 5, "tll": 1}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("tll"), "{body}");
}
