//! Integration tests: the real `tollgate` binary on real sockets, with local
//! fake upstreams (`test-support`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod access;
mod admin_api;
mod ai;
mod balancing;
mod billing;
mod cache;
mod declarative;
mod http1;
mod jwt;
mod lifecycle;
mod mcp;
mod money;
mod observe;
mod payments;
mod process;
mod protocols;
mod providers;
mod resilience;
mod routing;
mod x402;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

pub use serde_json::json;
pub use test_support::tollgate::Tollgate;
pub use test_support::upstream::FakeUpstream;

/// Starts tollgate and one published service `svc` at `/svc` proxying to
/// `upstream`, with a catch-all route.
pub async fn gateway_with(upstream: &FakeUpstream) -> Tollgate {
    let tollgate = Tollgate::start(BIN).await;
    serve_svc(&tollgate, upstream).await;
    tollgate
}

/// Publishes the anonymous service `svc` at `/svc/*` on `upstream` and
/// waits until the gateway serves it.
pub async fn serve_svc(tollgate: &Tollgate, upstream: &FakeUpstream) {
    serve_svc_on(tollgate, json!({"targets": [{"url": upstream.url()}]})).await;
}

/// The same, on a gateway that ejects the target after two failures (for
/// a minute): a test sees at once whether a failure was blamed on it.
pub async fn serve_svc_ejecting(tollgate: &Tollgate, upstream: &FakeUpstream) {
    serve_svc_on(
        tollgate,
        json!({"targets": [{"url": upstream.url()}],
               "health_check": {"passive": {"max_failures": 2, "ejection_ms": 60000}}}),
    )
    .await;
}

async fn serve_svc_on(tollgate: &Tollgate, upstream: serde_json::Value) {
    tollgate
        .publish_http_service("svc", "/svc", upstream, &[json!({"path": "/*"})])
        .await;
    tollgate
        .wait_for("/svc/ping", std::time::Duration::from_secs(1), |s| s == 200)
        .await;
}

/// A client that speaks HTTP/2 with prior knowledge (h2c).
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap()
}

/// Polls until `done` answers true (5 s at most).
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    done: impl Fn() -> F,
) {
    let started = std::time::Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "never: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Polls until `done` holds (5 s at most).
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "never: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The logged calls matching `query` (every page), waiting up to 3 s for
/// `want` of them (calls are written within a second).
pub async fn logged(
    tollgate: &Tollgate,
    token: &str,
    query: &str,
    want: usize,
) -> Vec<serde_json::Value> {
    let started = std::time::Instant::now();
    loop {
        let mut calls = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/logs?limit=3&{query}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let (status, page) = tollgate
                .admin_as(token, reqwest::Method::GET, &path, None)
                .await;
            assert_eq!(status, 200, "{path}: {page}");
            calls.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        if calls.len() >= want || started.elapsed() > std::time::Duration::from_secs(3) {
            assert_eq!(calls.len(), want, "{query}: {calls:#?}");
            return calls;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The SQLite database of `tollgate`'s data dir with its write-ahead log,
/// as text (to check what never reaches it).
pub fn database_text(tollgate: &Tollgate) -> String {
    let mut raw = Vec::new();
    for entry in std::fs::read_dir(&tollgate.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tollgate.db")
        {
            raw.extend(std::fs::read(&path).unwrap());
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The problem body of a refused response, checked for the SPEC §4 shape.
pub async fn problem(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["cache-control"], "no-store");
    let request_id = headers["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["request_id"], request_id.as_str());
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/_tollgate/problems/{}", code.replace('_', "-")))
    );
    assert!(!body["title"].as_str().unwrap().is_empty());
    assert!(
        body["detail"].as_str().unwrap().len() > 10,
        "a detail a person can act on: {body}"
    );
    body
}

/// Runs a `tollgate` admin command against `tollgate` with the root token.
pub fn run_cli(tollgate: &Tollgate, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .arg("--admin-url")
        .arg(&tollgate.admin_url)
        .env_clear()
        .env("TOLLGATE_ADMIN_TOKEN", test_support::tollgate::ADMIN_TOKEN)
        .output()
        .unwrap()
}

/// Creates app `app` of `team` and a key of it; returns the key.
pub async fn app_with_key(tollgate: &Tollgate, team: &str, app: &str) -> String {
    tollgate
        .create("/api/v1/apps", json!({"slug": app, "team": team}))
        .await;
    tollgate
        .create(&format!("/api/v1/apps/{app}/keys"), json!({}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Subscribes `app` to `service`'s `plan`.
pub async fn subscribe_app(tollgate: &Tollgate, app: &str, service: &str, plan: &str) {
    tollgate
        .create(
            "/api/v1/subscriptions",
            json!({"app": app, "service": service, "plan": plan}),
        )
        .await;
}

/// [`run_cli`] as (success, trimmed stdout, stderr).
pub fn cli(tollgate: &Tollgate, args: &[&str]) -> (bool, String, String) {
    let output = run_cli(tollgate, args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `script` with the tests' Python (`test_support::python`) and
/// `args`; its standard output, as JSON. `what` names it when it fails.
pub async fn python_json(what: &str, script: &'static str, args: Vec<String>) -> serde_json::Value {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(test_support::python::python())
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
