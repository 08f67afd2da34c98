//! The admin API: CRUD, strict input, problems that name the field,
//! pagination, the OpenAPI document.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::*;

fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends raw bytes as JSON and returns status and problem.
async fn raw(
    tollgate: &Tollgate,
    method: Method,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = tollgate
        .client
        .request(method, format!("{}{path}", tollgate.admin_url))
        .bearer_auth(test_support::tollgate::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    if !status.is_success() {
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.headers().contains_key("x-request-id"));
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn requires_the_admin_token() {
    let tollgate = Tollgate::start(BIN).await;
    let response = tollgate
        .client
        .get(format!("{}/api/v1/upstreams", tollgate.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let response = tollgate
        .client
        .get(format!("{}/api/v1/upstreams", tollgate.admin_url))
        .bearer_auth("wrong-token-value")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let tollgate = Tollgate::start(BIN).await;
    let check =
        |status: StatusCode, body: &Value, expected_status: u16, expected_fields: &[&str]| {
            assert_eq!(status.as_u16(), expected_status, "{body}");
            let found = fields(body);
            for field in expected_fields {
                assert!(
                    found.iter().any(|f| f == field),
                    "expected {field} in {found:?}: {body}"
                );
            }
        };
    let (s, b) = raw(&tollgate, Method::POST, "/api/v1/upstreams", "{\"slug\": ").await;
    check(s, &b, 400, &["slug"]);
    assert!(
        b["detail"].as_str().unwrap().contains("malformed JSON"),
        "{b}"
    );
    // Broken before any field, or not an object: the body is named.
    for text in ["nope", "{", "[1, 2]"] {
        let (s, b) = raw(&tollgate, Method::POST, "/api/v1/upstreams", text).await;
        check(s, &b, 400, &["body"]);
    }
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/upstreams",
        r#"{"slug":"a","targets":[{"url":"http://x","weight":"heavy"}]}"#,
    )
    .await;
    check(s, &b, 400, &["targets[0].weight"]);
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/upstreams",
        r#"{"slug":"a","tls":{"verify":true,"bogus":1}}"#,
    )
    .await;
    check(s, &b, 400, &["tls.bogus"]);
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/upstreams",
        r#"{"slug":"a","colour":"red"}"#,
    )
    .await;
    check(s, &b, 400, &["colour"]);
    // A health-check path the checker could never send.
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/upstreams",
        r#"{"slug":"a","targets":[{"url":"http://ok:1"}],"health_check":{"active":{"enabled":true,"path":"/hc y"}}}"#,
    )
    .await;
    check(s, &b, 400, &["health_check.active.path"]);
    // Proxy-* headers belong to the hop: not rewritable.
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/upstreams",
        r#"{"slug":"a","targets":[{"url":"http://ok:1"}]}"#,
    )
    .await;
    assert_eq!(s.as_u16(), 201, "{b}");
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/services",
        r#"{"slug":"p","base_path":"/p","upstream":"a"}"#,
    )
    .await;
    assert_eq!(s.as_u16(), 201, "{b}");
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/services/p/routes",
        r#"{"path":"/h","request_headers":{"set":{"Proxy-Foo":"v"}}}"#,
    )
    .await;
    assert_eq!(s.as_u16(), 400, "{b}");
    // Base paths the gateway answers itself.
    for base_path in ["/_TOLLGATE/x", "/mcp"] {
        let (s, b) = raw(
            &tollgate,
            Method::POST,
            "/api/v1/services",
            format!(r#"{{"slug":"q","base_path":"{base_path}","upstream":"a"}}"#),
        )
        .await;
        check(s, &b, 400, &["base_path"]);
    }
    for path in ["/api/v1/services/p", "/api/v1/upstreams/a"] {
        let (s, _) = raw(&tollgate, Method::DELETE, path, "").await;
        assert_eq!(s.as_u16(), 204, "{path}");
    }
    // Every semantic problem at once.
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/upstreams",
        r#"{"slug":"Not A Slug","targets":[{"url":"ftp://files"},{"url":"http://ok:1"},{"url":"http://ok:1"},{"url":"http://ok:0"}],"connect_timeout_ms":0}"#,
    )
    .await;
    check(
        s,
        &b,
        400,
        &[
            "slug",
            "targets[0].url",
            "targets[2].url",
            "targets[3].url",
            "connect_timeout_ms",
        ],
    );
    // A path the router cannot read (not UTF-8) is a problem too.
    let (s, b) = raw(&tollgate, Method::GET, "/api/v1/upstreams/%FF%FE", "").await;
    check(s, &b, 400, &["path"]);
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/services",
        r#"{"slug":"s","upstream":"missing"}"#,
    )
    .await;
    check(s, &b, 400, &["base_path"]);
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/services",
        r#"{"slug":"s","base_path":"/s","upstream":"missing"}"#,
    )
    .await;
    check(s, &b, 400, &["upstream"]);
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/services",
        r#"{"slug":"s","base_path":"/a/../b"}"#,
    )
    .await;
    check(s, &b, 400, &["base_path"]);
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/services",
        r#"{"slug":"s","base_path":"/_tollgate/x","upstream":"u"}"#,
    )
    .await;
    check(s, &b, 400, &["base_path"]);
    let big = format!(
        r#"{{"slug":"a","targets":[],"pad":"{}"}}"#,
        "x".repeat(3 << 20)
    );
    let (s, b) = raw(&tollgate, Method::POST, "/api/v1/upstreams", big).await;
    assert_eq!(s, 413, "{b}");
    // An empty apply body is not an empty document (with prune it would
    // delete everything).
    tollgate
        .create("/api/v1/upstreams", json!({"slug": "kept"}))
        .await;
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/config/apply?prune=true",
        "",
    )
    .await;
    check(s, &b, 400, &[]);
    assert!(b["detail"].as_str().unwrap().contains("empty"), "{b}");
    // Nor is a document that leaves a list out: `{}`, or services alone.
    for (document, missing) in [
        ("{}", "upstreams"),
        (r#"{"upstreams": null, "services": []}"#, "upstreams"),
        (r#"{"upstreams": []}"#, "services"),
    ] {
        let (s, b) = raw(
            &tollgate,
            Method::POST,
            "/api/v1/config/apply?prune=true&dry_run=true",
            document,
        )
        .await;
        check(s, &b, 400, &[missing]);
    }
    // A JSON array is not an object (serde would read it as one, by
    // position); a query parameter counts once.
    let (s, b) = raw(&tollgate, Method::POST, "/api/v1/teams", r#"["t9", "N"]"#).await;
    check(s, &b, 400, &[]);
    assert!(b["detail"].as_str().unwrap().contains("object"), "{b}");
    let (s, b) = tollgate
        .admin(Method::GET, "/api/v1/upstreams?limit=2&limit=3", None)
        .await;
    check(s, &b, 400, &["limit"]);
    // Without prune, `{}` changes nothing.
    let (s, b) = raw(&tollgate, Method::POST, "/api/v1/config/apply", "{}").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changed"], json!(false), "{b}");
    let (status, _) = tollgate
        .admin(Method::DELETE, "/api/v1/upstreams/kept", None)
        .await;
    assert_eq!(status, 204, "the upstream survived the empty apply");
    // Nothing was written by any of these.
    let (_, list) = tollgate.admin(Method::GET, "/api/v1/upstreams", None).await;
    assert_eq!(list["data"], json!([]));
    let (_, list) = tollgate.admin(Method::GET, "/api/v1/services", None).await;
    assert_eq!(list["data"], json!([]));

    // Duplicates, conflicts and references in use.
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "u", "targets": [{"url": "http://127.0.0.1:1"}]}),
        )
        .await;
    let (s, b) = tollgate
        .admin(
            Method::POST,
            "/api/v1/upstreams",
            Some(json!({"slug": "u"})),
        )
        .await;
    check(s, &b, 409, &["slug"]);
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "s", "base_path": "/s", "upstream": "u"}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "t", "base_path": "/s", "upstream": "u"}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services/s/routes",
            json!({"methods": ["GET"], "path": "/items/{id}"}),
        )
        .await;
    let (s, b) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/t/routes",
            Some(json!({"path": "/items/{other}"})),
        )
        .await;
    check(s, &b, 409, &["path"]);
    tollgate
        .create(
            "/api/v1/services/t/routes",
            json!({"methods": ["POST"], "path": "/items/{other}"}),
        )
        .await;
    let (s, b) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/s/routes",
            Some(json!({"path": "no-slash", "methods": ["FETCH"]})),
        )
        .await;
    check(s, &b, 400, &["path", "methods[0]"]);
    let (s, b) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/s/routes",
            Some(json!({"path": "/twice", "methods": ["GET", "GET"]})),
        )
        .await;
    check(s, &b, 400, &["methods[1]"]);
    // Moving a service onto paths its routes would share: the conflict is
    // the base path's, in the field and in the detail.
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "w", "base_path": "/w", "upstream": "u"}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services/w/routes",
            json!({"methods": ["GET"], "path": "/items/{id}"}),
        )
        .await;
    let (s, b) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/services/w",
            Some(json!({"base_path": "/s"})),
        )
        .await;
    check(s, &b, 409, &["base_path"]);
    assert!(
        b["detail"].as_str().unwrap().starts_with("base_path: "),
        "{b}"
    );
    let (s, b) = tollgate
        .admin(Method::DELETE, "/api/v1/upstreams/u", None)
        .await;
    check(s, &b, 409, &["upstream"]);
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("'u' is used by services: s"),
        "names the upstream and its services: {b}"
    );
    let (s, _) = tollgate
        .admin(Method::GET, "/api/v1/upstreams/nope", None)
        .await;
    assert_eq!(s, 404);
    let (s, b) = tollgate.admin(Method::GET, "/api/v1/nothing", None).await;
    assert_eq!((s.as_u16(), b["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn crud_by_slug_or_id_with_put_and_merge_patch() {
    let tollgate = Tollgate::start(BIN).await;
    let created = tollgate
        .create("/api/v1/upstreams", json!({"slug": "u", "targets": [{"url": "http://127.0.0.1:1", "weight": 2}], "tls": {"verify": false}}))
        .await;
    let id = created["id"].as_str().unwrap();
    assert!(domain_like_uuid(id));
    assert_eq!(
        created["policy"], "round_robin",
        "defaults are filled in and shown"
    );
    let (_, by_id) = tollgate
        .admin(Method::GET, &format!("/api/v1/upstreams/{id}"), None)
        .await;
    let (_, by_slug) = tollgate
        .admin(Method::GET, "/api/v1/upstreams/u", None)
        .await;
    assert_eq!(by_id, by_slug);

    let (s, patched) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/upstreams/u",
            Some(json!({"policy": "ewma", "tls": {"verify": null}})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["policy"], "ewma");
    assert_eq!(
        patched["tls"]["verify"], true,
        "null removes the member: back to its default"
    );
    assert_eq!(patched["targets"][0]["weight"], 2, "untouched fields stay");
    let (s, b) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/upstreams/u",
            Some(json!({"policy": "random"})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(fields(&b), vec!["policy"]);
    // `null` for a field that does not exist is an unknown field, not a
    // silent no-op; for a known one that is not set, it is one.
    for (patch, field) in [
        (json!({"polcy": null}), "polcy"),
        (json!({"tls": {"verfy": null}}), "tls.verfy"),
    ] {
        let (s, b) = tollgate
            .admin(Method::PATCH, "/api/v1/upstreams/u", Some(patch))
            .await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(fields(&b), vec![field], "{b}");
    }
    let (s, b) = tollgate
        .admin(
            Method::PATCH,
            "/api/v1/upstreams/u",
            Some(json!({"health_check": null, "tls": {"ca_pem": null}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["policy"], "ewma", "{b}");

    let (s, replaced) = tollgate
        .admin(
            Method::PUT,
            "/api/v1/upstreams/u",
            Some(json!({"slug": "u2"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(replaced["id"], created["id"]);
    assert_eq!(replaced["targets"], json!([]));
    assert_eq!(replaced["policy"], "round_robin");
    let (s, _) = tollgate
        .admin(Method::DELETE, "/api/v1/upstreams/u2", None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = tollgate
        .admin(Method::GET, &format!("/api/v1/upstreams/{id}"), None)
        .await;
    assert_eq!(s, 404);
}

fn domain_like_uuid(text: &str) -> bool {
    text.len() == 36 && text.chars().nth(14) == Some('7')
}

#[tokio::test]
async fn lists_are_cursor_paginated() {
    let tollgate = Tollgate::start(BIN).await;
    for n in 0..7 {
        tollgate
            .create("/api/v1/upstreams", json!({"slug": format!("u{n}")}))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/upstreams?limit=3&cursor={c}"),
            None => "/api/v1/upstreams?limit=3".to_owned(),
        };
        let (status, page) = tollgate.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200);
        pages += 1;
        for item in page["data"].as_array().unwrap() {
            seen.push(item["slug"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (0..7).map(|n| format!("u{n}")).collect::<Vec<_>>(),
        "in creation order, none twice"
    );
    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=garbage",
        "colour=red",
    ] {
        let (status, body) = tollgate
            .admin(Method::GET, &format!("/api/v1/upstreams?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(fields(&body).len(), 1, "{bad}: {body}");
    }
}

/// Edges a review found: flags given bare, lists that come in one piece,
/// `null` where an enum goes, ids as slugs, emails in another case, and
/// the 413 of the apply endpoint.
#[tokio::test]
async fn flags_one_piece_lists_nulls_and_id_shaped_slugs() {
    let tollgate = Tollgate::start(BIN).await;
    // A bare flag is refused, not read as false: a dry run stays dry.
    for query in ["dry_run", "dry_run=", "prune"] {
        let (s, b) = raw(
            &tollgate,
            Method::POST,
            &format!("/api/v1/config/apply?{query}"),
            r#"{"teams":[{"slug":"bare-flag","name":"x"}]}"#,
        )
        .await;
        assert_eq!(s, 400, "{query}: {b}");
        assert_eq!(fields(&b), [query.trim_end_matches('=')], "{b}");
    }
    let (s, b) = tollgate
        .admin(Method::GET, "/api/v1/teams/bare-flag", None)
        .await;
    assert_eq!(s, 404, "nothing applied: {b}");
    // The apply endpoint's 413 (past 64 MiB) is a problem like every other.
    let big = format!(r#"{{"teams":[],"pad":"{}"}}"#, "x".repeat(65 << 20));
    let (s, b) = raw(&tollgate, Method::POST, "/api/v1/config/apply", big).await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["code"], "body_too_large", "{b}");

    let team = tollgate
        .create("/api/v1/teams", json!({"slug": "acme", "name": "Acme"}))
        .await;
    tollgate
        .create(
            "/api/v1/upstreams",
            json!({"slug": "wu", "team": "acme", "targets": []}),
        )
        .await;
    tollgate
        .create(
            "/api/v1/services",
            json!({"slug": "w", "team": "acme", "base_path": "/w", "upstream": "wu"}),
        )
        .await;
    // Tokens are counted on AI services only.
    let (s, b) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/w/plans",
            Some(json!({"slug": "t", "included": {"tokens": 5}, "tokens_per_minute": 9})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(fields(&b), ["included.tokens", "tokens_per_minute"], "{b}");
    // A conflict found while applying stays a conflict in its detail.
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/config/apply",
        r#"{"upstreams":[{"slug":"pu","targets":[]}],"services":[{"slug":"p","base_path":"/w/x","upstream":"pu"}]}"#,
    )
    .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(fields(&b), ["services[0].base_path"], "{b}");
    let detail = b["detail"].as_str().unwrap();
    assert!(
        !detail.starts_with("The request is invalid") && !detail.contains(".."),
        "{detail}"
    );
    // Media types are case-insensitive: YAML said in capitals is YAML.
    let response = tollgate
        .client
        .post(format!("{}/api/v1/config/apply", tollgate.admin_url))
        .bearer_auth(test_support::tollgate::ADMIN_TOKEN)
        .header("content-type", "APPLICATION/YAML")
        .body("teams:\n  - slug: yaml-team\n    name: Y\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (s, b) = tollgate
        .admin(Method::GET, "/api/v1/teams/yaml-team", None)
        .await;
    assert_eq!(s, 200, "{b}");
    // Lists that come in one piece refuse paging instead of ignoring it.
    for path in [
        "/api/v1/services/w/plans",
        "/api/v1/teams/acme/members",
        "/api/v1/teams/acme/webhooks",
        "/api/v1/tokens",
        "/api/v1/catalog",
        "/api/v1/catalog/models",
    ] {
        for query in ["limit=1", "cursor=garbage", "bogus=1"] {
            let (s, b) = tollgate
                .admin(Method::GET, &format!("{path}?{query}"), None)
                .await;
            assert_eq!(s, 400, "{path}?{query}: {b}");
        }
        let (s, b) = tollgate.admin(Method::GET, path, None).await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    // `null` where an enum goes is a type error, not malformed JSON.
    let (s, b) = raw(
        &tollgate,
        Method::POST,
        "/api/v1/upstreams",
        r#"{"slug":"u1","targets":[],"policy":null}"#,
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(fields(&b), ["policy"], "{b}");
    assert!(!b.to_string().contains("malformed"), "{b}");
    // A slug shaped like an id would be another object's address.
    let id = team["id"].as_str().unwrap();
    let (s, b) = tollgate
        .admin(
            Method::POST,
            "/api/v1/upstreams",
            Some(json!({"slug": id, "targets": []})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(fields(&b), ["slug"], "{b}");
    // So would a route's name (routes are addressed by name or id).
    let (s, b) = tollgate
        .admin(
            Method::POST,
            "/api/v1/services/w/routes",
            Some(json!({"name": id, "path": "/x"})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(fields(&b), ["name"], "{b}");
    // A user is found by email in any case, as at sign-up.
    tollgate
        .create(
            "/api/v1/users",
            json!({"email": "Mixed@X.test", "password": "a long enough password"}),
        )
        .await;
    let (s, b) = tollgate
        .admin(Method::GET, "/api/v1/users/MIXED@x.TEST", None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["email"], "mixed@x.test");
    let (s, b) = tollgate
        .admin(
            Method::POST,
            "/api/v1/teams/acme/members",
            Some(json!({"user": "MiXeD@x.test", "role": "developer"})),
        )
        .await;
    assert!(s.is_success(), "{b}");
}

#[tokio::test]
async fn serves_the_openapi_document_and_reference() {
    let tollgate = Tollgate::start(BIN).await;
    let doc: Value = tollgate
        .client
        .get(format!("{}/api/v1/openapi.json", tollgate.admin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, methods) in [
        ("/api/v1/upstreams", &["get", "post"][..]),
        (
            "/api/v1/upstreams/{upstream}",
            &["get", "put", "patch", "delete"],
        ),
        ("/api/v1/services/{service}/routes", &["get", "post"]),
        ("/api/v1/services/{service}/publish", &["post"]),
        ("/api/v1/services/{service}/rollback", &["post"]),
        ("/api/v1/services/{service}/deprecate", &["post"]),
        ("/api/v1/services/{service}/retire", &["post"]),
        ("/api/v1/config/apply", &["post"]),
    ] {
        for method in methods {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }
    assert!(doc["components"]["schemas"]["UpstreamSpec"].is_object());
    // A declarative document may be sent as JSON or YAML.
    let apply = &doc["paths"]["/api/v1/config/apply"]["post"]["requestBody"]["content"];
    for media in ["application/json", "application/yaml"] {
        assert!(apply[media].is_object(), "{media}: {apply}");
    }
    let page = tollgate
        .client
        .get(format!("{}/api/v1/docs", tollgate.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("/api/v1/openapi.json"));
}
