//! `tollgate apply` and `tollgate export` through the real CLI.

use std::time::Duration;

use reqwest::Method;

use crate::*;

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

fn cli(tollgate: &Tollgate, args: &[&str]) -> Output {
    let output = crate::run_cli(tollgate, args);
    Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn document(upstream_url: &str, extra_route: bool) -> String {
    let mut text = format!(
        r#"upstreams:
  - slug: weather-backend
    targets:
      - url: {upstream_url}
        weight: 1
services:
  - slug: weather
    base_path: /weather
    upstream: weather-backend
    auth: {{anonymous: true}}
    lifecycle: published
    routes:
      - name: forecast
        methods: [GET]
        path: /forecast/{{city}}
"#
    );
    if extra_route {
        text.push_str("      - name: alerts\n        methods: [GET]\n        path: /alerts\n");
    }
    text
}

#[tokio::test]
async fn apply_is_idempotent_and_exports_round_trip() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, document(&upstream.url(), false)).unwrap();
    let file = file.to_str().unwrap();

    let first = cli(&tollgate, &["apply", "-f", file]);
    assert!(first.success, "{}{}", first.stdout, first.stderr);
    for line in [
        "+ create upstream weather-backend",
        "+ create service weather",
        "+ create route weather/forecast",
        "~ publish service weather",
    ] {
        assert!(
            first.stdout.contains(line),
            "{line} missing from:\n{}",
            first.stdout
        );
    }
    tollgate
        .wait_for("/weather/forecast/paris", Duration::from_secs(1), |s| {
            s == 200
        })
        .await;

    // Each applied object has its own audit entries, as through its own
    // endpoint: found by its id, with what it became.
    let (_, upstream_now) = tollgate
        .admin(Method::GET, "/api/v1/upstreams/weather-backend", None)
        .await;
    let (status, audit) = tollgate
        .admin(
            Method::GET,
            &format!(
                "/api/v1/audit?object_id={}",
                upstream_now["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(audit["data"][0]["action"], "upstream.create", "{audit}");
    assert_eq!(
        audit["data"][0]["after"]["slug"], "weather-backend",
        "{audit}"
    );

    let second = cli(&tollgate, &["apply", "-f", file]);
    assert!(second.success);
    assert_eq!(second.stdout.trim(), "no changes");

    // A dry run shows the diff and writes nothing.
    let other = FakeUpstream::start("b").await;
    std::fs::write(
        dir.path().join("tollgate.yaml"),
        document(&other.url(), true),
    )
    .unwrap();
    let dry = cli(&tollgate, &["apply", "-f", file, "--dry-run"]);
    assert!(dry.success, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("~ update upstream weather-backend"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains(&format!(
            "targets[0].url: \"{}\" -> \"{}\"",
            upstream.url(),
            other.url()
        )),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("+ create route weather/alerts"));
    assert!(dry.stdout.contains("dry run"));
    let (_, routes) = tollgate
        .admin(Method::GET, "/api/v1/services/weather/routes", None)
        .await;
    assert_eq!(
        routes["data"].as_array().unwrap().len(),
        1,
        "the dry run wrote nothing"
    );

    let applied = cli(&tollgate, &["apply", "-f", file]);
    assert!(applied.success);
    tollgate
        .wait_for("/weather/alerts", Duration::from_secs(1), |s| s == 200)
        .await;
    let echo: serde_json::Value = tollgate
        .get("/weather/forecast/x")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["server"], "b");
    let (_, releases) = tollgate
        .admin(Method::GET, "/api/v1/services/weather/releases", None)
        .await;
    assert_eq!(
        releases["data"].as_array().unwrap().len(),
        2,
        "a changed service is published again"
    );

    // Export, then apply the export: nothing to do.
    let exported = cli(&tollgate, &["export"]);
    assert!(exported.success, "{}", exported.stderr);
    assert!(exported.stdout.contains("slug: weather-backend"));
    let export_file = dir.path().join("export.yaml");
    std::fs::write(&export_file, &exported.stdout).unwrap();
    let reapplied = cli(&tollgate, &["apply", "-f", export_file.to_str().unwrap()]);
    assert!(reapplied.success, "{}", reapplied.stderr);
    assert_eq!(
        reapplied.stdout.trim(),
        "no changes",
        "export → apply round trip"
    );
}

#[tokio::test]
async fn prune_removes_what_the_file_does_not_name() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    tollgate
        .publish_http_service(
            "legacy",
            "/legacy",
            json!({"targets": [{"url": upstream.url()}]}),
            &[json!({"path": "/*"})],
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, document(&upstream.url(), false)).unwrap();
    let file = file.to_str().unwrap();
    let without_prune = cli(&tollgate, &["apply", "-f", file]);
    assert!(without_prune.success);
    assert!(!without_prune.stdout.contains("delete"));
    // A consumer subscribes to legacy: prune leaves it (and its
    // subscription) alone, and says why, until the subscription ends.
    tollgate
        .admin(
            reqwest::Method::PATCH,
            "/api/v1/services/legacy",
            Some(json!({"visibility": "catalog"})),
        )
        .await;
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme", "name": "Acme"}))
        .await;
    tollgate
        .create("/api/v1/services/legacy/plans", json!({"slug": "free"}))
        .await;
    crate::app_with_key(&tollgate, "acme", "acme-web").await;
    let subscription = tollgate
        .create(
            "/api/v1/subscriptions",
            json!({"app": "acme-web", "service": "legacy", "plan": "free"}),
        )
        .await;
    let refused = cli(&tollgate, &["apply", "-f", file, "--prune"]);
    assert!(!refused.success, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("open subscription"),
        "{}",
        refused.stderr
    );
    let (status, _) = tollgate
        .admin(reqwest::Method::GET, "/api/v1/services/legacy", None)
        .await;
    assert_eq!(status, 200, "legacy is still there");
    tollgate
        .create(
            &format!(
                "/api/v1/subscriptions/{}/cancel",
                subscription["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    let pruned = cli(&tollgate, &["apply", "-f", file, "--prune"]);
    assert!(pruned.success, "{}", pruned.stderr);
    assert!(
        pruned.stdout.contains("- delete service legacy"),
        "{}",
        pruned.stdout
    );
    assert!(
        pruned.stdout.contains("- delete upstream legacy-backend"),
        "{}",
        pruned.stdout
    );
    tollgate
        .wait_for("/legacy/x", Duration::from_secs(1), |s| s == 404)
        .await;
    assert_eq!(tollgate.get("/weather/forecast/x").await.status(), 200);
}

#[tokio::test]
async fn a_bad_document_names_every_field_and_changes_nothing() {
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "upstreams:\n  - slug: ok\n    targets: [{url: 'http://127.0.0.1:1'}]\n  - slug: BAD\n    targets: [{url: 'nope'}]\nservices:\n  - slug: s\n    base_path: /s\n    upstream: missing\n    routes: [{path: /x, colour: red}]\n",
    )
    .unwrap();
    let output = cli(&tollgate, &["apply", "-f", file.to_str().unwrap()]);
    assert!(!output.success);
    for field in [
        "upstreams[1].slug",
        "upstreams[1].targets[0].url",
        "services[0].routes[0].colour",
    ] {
        assert!(
            output.stderr.contains(field),
            "{field} missing from:\n{}",
            output.stderr
        );
    }
    // A dangling reference is found while applying; the whole apply rolls back.
    std::fs::write(&file, "upstreams:\n  - slug: ok\nservices:\n  - slug: s\n    base_path: /s\n    upstream: missing\n").unwrap();
    let output = cli(&tollgate, &["apply", "-f", file.to_str().unwrap()]);
    assert!(!output.success);
    assert!(
        output.stderr.contains("services[0].upstream"),
        "{}",
        output.stderr
    );
    let (_, list) = tollgate.admin(Method::GET, "/api/v1/upstreams", None).await;
    assert_eq!(list["data"], json!([]), "nothing half-written");
    // JSON is read as JSON: escapes the YAML parser refuses (a surrogate
    // pair) are fine.
    std::fs::write(
        &file,
        r#"{"teams": [{"slug": "rocket", "name": "rocket \ud83d\ude80"}]}"#,
    )
    .unwrap();
    let output = cli(&tollgate, &["apply", "-f", file.to_str().unwrap()]);
    assert!(output.success, "{}", output.stderr);
    let (_, team) = tollgate
        .admin(Method::GET, "/api/v1/teams/rocket", None)
        .await;
    assert_eq!(team["name"], "rocket \u{1f680}", "{team}");
    std::fs::write(&file, "upstreams: [\n").unwrap();
    let output = cli(&tollgate, &["apply", "-f", file.to_str().unwrap()]);
    assert!(!output.success);
    assert!(
        output.stderr.contains("not valid YAML"),
        "{}",
        output.stderr
    );
}

fn access_document(upstream_url: &str, plans: &str) -> String {
    format!(
        r#"teams:
  - slug: weatherco
    name: WeatherCo
upstreams:
  - slug: weather-backend
    team: weatherco
    targets: [{{url: {upstream_url}}}]
services:
  - slug: weather
    team: weatherco
    base_path: /weather
    upstream: weather-backend
    visibility: catalog
    lifecycle: published
    routes:
      - name: forecast
        methods: [GET]
        path: /forecast/{{city}}
    plans:
{plans}"#
    )
}

#[tokio::test]
async fn teams_and_plans_are_declarative_too() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let file = path.to_str().unwrap();
    let plans = "      - slug: free\n        rate_limits: [{requests: 10, per: minute}]\n      - slug: gold\n        approval_required: true\n";
    std::fs::write(&path, access_document(&upstream.url(), plans)).unwrap();
    let first = cli(&tollgate, &["apply", "-f", file]);
    assert!(first.success, "{}{}", first.stdout, first.stderr);
    for line in [
        "+ create team weatherco",
        "+ create plan weather/free",
        "+ create plan weather/gold",
    ] {
        assert!(first.stdout.contains(line), "{line} in:\n{}", first.stdout);
    }
    assert_eq!(
        cli(&tollgate, &["apply", "-f", file]).stdout.trim(),
        "no changes"
    );

    // The export names teams and plans, and applying it changes nothing.
    let exported = cli(&tollgate, &["export"]);
    assert!(exported.success, "{}", exported.stderr);
    for text in [
        "teams:",
        "slug: weatherco",
        "plans:",
        "slug: gold",
        "requests: 10",
    ] {
        assert!(
            exported.stdout.contains(text),
            "{text} in:\n{}",
            exported.stdout
        );
    }
    std::fs::write(&path, &exported.stdout).unwrap();
    assert_eq!(
        cli(&tollgate, &["apply", "-f", file]).stdout.trim(),
        "no changes"
    );

    // A changed limit is an update; a plan the file drops is deleted…
    let changed = "      - slug: free\n        rate_limits: [{requests: 20, per: minute}]\n";
    std::fs::write(&path, access_document(&upstream.url(), changed)).unwrap();
    let update = cli(&tollgate, &["apply", "-f", file]);
    assert!(update.success, "{}", update.stderr);
    assert!(
        update.stdout.contains("~ update plan weather/free"),
        "{}",
        update.stdout
    );
    assert!(
        update.stdout.contains("rate_limits[0].requests: 10 -> 20"),
        "{}",
        update.stdout
    );
    assert!(
        update.stdout.contains("- delete plan weather/gold"),
        "{}",
        update.stdout
    );
    let (_, plans) = tollgate
        .admin(Method::GET, "/api/v1/services/weather/plans", None)
        .await;
    assert_eq!(plans["data"].as_array().unwrap().len(), 1);

    // …unless a subscription uses it: the apply is refused as a whole.
    tollgate
        .create("/api/v1/teams", json!({"slug": "acme"}))
        .await;
    tollgate
        .create("/api/v1/apps", json!({"slug": "acme-web", "team": "acme"}))
        .await;
    tollgate
        .create(
            "/api/v1/subscriptions",
            json!({"app": "acme-web", "service": "weather", "plan": "free"}),
        )
        .await;
    std::fs::write(
        &path,
        access_document(&upstream.url(), "      - slug: other\n"),
    )
    .unwrap();
    let refused = cli(&tollgate, &["apply", "-f", file]);
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("subscriptions use this plan"),
        "{}",
        refused.stderr
    );
    let (_, plans) = tollgate
        .admin(Method::GET, "/api/v1/services/weather/plans", None)
        .await;
    assert_eq!(plans["data"][0]["slug"], "free", "nothing changed");
}

/// Applies the `weather` document with an HS256 issuer whose secret is
/// `secret`, from a file written in `dir` (returned).
fn apply_hs256(
    tollgate: &Tollgate,
    upstream: &str,
    secret: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let text = document(upstream, false).replace(
        "    auth: {anonymous: true}\n",
        &format!(
            "    auth:\n      anonymous: true\n      jwt:\n        issuers:\n          - issuer: https://hs.example\n            algorithms: [HS256]\n            secret: {secret}\n"
        ),
    );
    let file = dir.join("tollgate.yaml");
    std::fs::write(&file, &text).unwrap();
    let applied = cli(tollgate, &["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.success, "{}", applied.stderr);
    file
}

/// The `weather` service's HS256 secret as the admin API shows it.
async fn stored_secret(tollgate: &Tollgate) -> String {
    let (status, service) = tollgate
        .admin(Method::GET, "/api/v1/services/weather", None)
        .await;
    assert_eq!(status, 200, "{service}");
    service["auth"]["jwt"]["issuers"][0]["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The files of `dir` whose bytes contain `secret`.
fn files_holding(dir: &std::path::Path, secret: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
        })
        .collect()
}

/// HS256 secrets an earlier version stored in clear (in the service, its
/// releases and the audit log) are sealed when the binary starts: the
/// admin API shows them sealed, the sealed value opens (sending it back is
/// accepted), and no file of the data dir holds the secret any more.
#[tokio::test]
async fn hs256_secrets_stored_in_clear_are_sealed_at_start() {
    let upstream = FakeUpstream::start("w").await;
    let data_dir = tempfile::tempdir().unwrap();
    let options = || test_support::tollgate::Options::in_dir(data_dir.path());
    let tollgate = Tollgate::start_with(BIN, options()).await;
    let secret = "an-hs256-secret-an-earlier-version-kept-in-clear-42";
    let file = apply_hs256(&tollgate, &upstream.url(), secret, data_dir.path());
    let sealed = stored_secret(&tollgate).await;
    tollgate.stop().await;
    std::fs::remove_file(&file).unwrap();

    // What an earlier version left: the secret in clear wherever it went.
    let database = rusqlite::Connection::open(data_dir.path().join("tollgate.db")).unwrap();
    let mut cleared = 0;
    for (table, column) in [
        ("services", "spec"),
        ("releases", "snapshot"),
        ("audit", "before"),
        ("audit", "after"),
    ] {
        cleared += database
            .execute(
                &format!("UPDATE {table} SET {column} = replace({column}, ?1, ?2)"),
                (&sealed, secret),
            )
            .unwrap();
    }
    assert!(
        cleared >= 2,
        "the service and its audit record, at least: {cleared}"
    );
    database
        .execute_batch(
            "DELETE FROM settings WHERE key = 'hs256_secrets_sealed'; \
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .unwrap();
    drop(database);
    assert!(
        !files_holding(data_dir.path(), secret).is_empty(),
        "the setup left the secret in clear"
    );

    let tollgate = Tollgate::start_with(BIN, options()).await;
    let resealed = stored_secret(&tollgate).await;
    assert!(resealed.starts_with("sealed:"), "{resealed}");
    let (status, audit) = tollgate.admin(Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, 200);
    assert!(!audit.to_string().contains(secret), "{audit}");
    let auth = json!({"auth": {"anonymous": true, "jwt": {"issuers": [
        {"issuer": "https://hs.example", "algorithms": ["HS256"], "secret": resealed}]}}});
    let (status, body) = tollgate
        .admin(Method::PATCH, "/api/v1/services/weather", Some(auth))
        .await;
    assert_eq!(status, 200, "the resealed secret opens: {body}");
    let holding = files_holding(data_dir.path(), secret);
    assert!(holding.is_empty(), "{holding:?} still hold the secret");
}

/// An HS256 issuer's secret is stored sealed: the admin API and the export
/// show `sealed:…`, the database files never hold it, the same file
/// applies again with no change, the export applies back with no change,
/// and a sealed value that does not open is refused with its field named.
#[tokio::test]
async fn hs256_secrets_are_sealed_at_rest_and_apply_stays_idempotent() {
    let upstream = FakeUpstream::start("w").await;
    let tollgate = Tollgate::start(BIN).await;
    let secret = "an-hs256-secret-of-at-least-32-bytes-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = apply_hs256(&tollgate, &upstream.url(), secret, dir.path());

    let (status, service) = tollgate
        .admin(Method::GET, "/api/v1/services/weather", None)
        .await;
    assert_eq!(status, 200);
    let stored = service["auth"]["jwt"]["issuers"][0]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(stored.starts_with("sealed:"), "{stored}");
    assert!(!service.to_string().contains(secret), "{service}");

    let again = cli(&tollgate, &["apply", "-f", file.to_str().unwrap()]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.stdout.trim(), "no changes", "plaintext equals sealed");

    let exported = cli(&tollgate, &["export"]);
    assert!(exported.success, "{}", exported.stderr);
    assert!(!exported.stdout.contains(secret), "{}", exported.stdout);
    let export_file = dir.path().join("export.yaml");
    std::fs::write(&export_file, &exported.stdout).unwrap();
    let reapplied = cli(&tollgate, &["apply", "-f", export_file.to_str().unwrap()]);
    assert!(reapplied.success, "{}", reapplied.stderr);
    assert_eq!(reapplied.stdout.trim(), "no changes", "export → apply");

    // A new secret in the file: the report and the audit log say that it
    // changed, never what it is (dry run or not).
    let renewed = "a-second-hs256-secret-of-at-least-32-bytes-9876";
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace(secret, renewed)).unwrap();
    let path = file.to_str().unwrap();
    for args in [
        &["apply", "--dry-run", "-f", path][..],
        &["apply", "-f", path],
    ] {
        let output = cli(&tollgate, args);
        assert!(output.success, "{}", output.stderr);
        assert!(
            output
                .stdout
                .contains("auth.jwt.issuers[0].secret: changed"),
            "{}",
            output.stdout
        );
        assert!(!output.stdout.contains(renewed), "{}", output.stdout);
    }
    let (_, audit) = tollgate.admin(Method::GET, "/api/v1/audit", None).await;
    assert!(!audit.to_string().contains(renewed), "{audit}");
    let stored = stored_secret(&tollgate).await;

    // A sealed value sent back keeps the secret; a damaged one is refused.
    let patch = async |secret: &str| {
        let auth = json!({"auth": {"anonymous": true, "jwt": {"issuers": [
            {"issuer": "https://hs.example", "algorithms": ["HS256"], "secret": secret}]}}});
        tollgate
            .admin(Method::PATCH, "/api/v1/services/weather", Some(auth))
            .await
    };
    let (status, body) = patch(&stored).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["auth"]["jwt"]["issuers"][0]["secret"], stored.as_str());
    let flipped = if &stored[20..21] == "A" { "B" } else { "A" };
    let damaged = format!("{}{flipped}{}", &stored[..20], &stored[21..]);
    let (status, body) = patch(&damaged).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["errors"][0]["field"], "auth.jwt.issuers[0].secret",
        "{body}"
    );

    // No file of the data dir holds either secret.
    for secret in [secret, renewed] {
        let holding = files_holding(&tollgate.data_dir, secret);
        assert!(
            holding.is_empty(),
            "{holding:?} hold the HS256 secret in plaintext"
        );
    }
}

/// An apply cannot give an object another owner (as `PUT` and `PATCH`
/// cannot), and amounts are kept in the one form the API shows.
#[tokio::test]
async fn apply_keeps_owners_and_writes_amounts_one_way() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let file = path.to_str().unwrap();
    let plans =
        "      - slug: paid\n        price_per_request: '000.50'\n        monthly_fee: '3'\n";
    let text = access_document(&upstream.url(), plans);
    std::fs::write(&path, &text).unwrap();
    let applied = cli(&tollgate, &["apply", "-f", file]);
    assert!(applied.success, "{}", applied.stderr);
    let (status, listed) = tollgate
        .admin(Method::GET, "/api/v1/services/weather/plans", None)
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["data"][0]["price_per_request"], "0.50", "{listed}");
    assert_eq!(listed["data"][0]["monthly_fee"], "3.00", "{listed}");
    let again = cli(&tollgate, &["apply", "-f", file]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.stdout.trim(), "no changes", "equal amounts are equal");

    // The upstream given to another team, or to the platform.
    let owned = "    team: weatherco\n    targets";
    let moved = text
        .replace("teams:\n", "teams:\n  - slug: acme\n    name: Acme\n")
        .replacen(owned, "    team: acme\n    targets", 1);
    let unowned = text.replacen(owned, "    targets", 1);
    for document in [moved, unowned] {
        std::fs::write(&path, document).unwrap();
        let output = cli(&tollgate, &["apply", "-f", file]);
        assert!(!output.success, "{}", output.stdout);
        assert!(
            output.stderr.contains("upstreams[0].team") && output.stderr.contains("'weatherco'"),
            "{}",
            output.stderr
        );
    }
    let (_, backend) = tollgate
        .admin(Method::GET, "/api/v1/upstreams/weather-backend", None)
        .await;
    assert_eq!(backend["team"], "weatherco", "{backend}");
    let (status, _) = tollgate
        .admin(Method::GET, "/api/v1/teams/acme", None)
        .await;
    assert_eq!(status, 404, "nothing half-written");
}

/// Method lists and targets are sets: applying them in another order is
/// no change. A document that names a key twice is refused whole.
#[tokio::test]
async fn apply_reads_method_lists_as_sets_and_refuses_keys_given_twice() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    let other = FakeUpstream::start("b").await;
    let (one, two) = (
        format!("{{url: \"{}\"}}", upstream.url()),
        format!("{{url: \"{}\", weight: 2}}", other.url()),
    );
    let write = |methods: &str, retry_methods: &str, targets: &str| {
        std::fs::write(
            &file,
            format!(
                r#"upstreams:
  - slug: sets-backend
    targets: [{targets}]
services:
  - slug: sets
    base_path: /sets
    upstream: sets-backend
    auth: {{anonymous: true}}
    retry: {{retries: 1, methods: [{retry_methods}], on_statuses: [503, 502]}}
    routes:
      - name: items
        methods: [{methods}]
        path: /items
"#
            ),
        )
        .unwrap();
    };
    let path = file.to_str().unwrap();
    write("POST, GET", "PUT, GET", &format!("{one}, {two}"));
    let first = cli(&tollgate, &["apply", "-f", path]);
    assert!(first.success, "{}{}", first.stdout, first.stderr);
    write("GET, POST", "GET, PUT", &format!("{two}, {one}"));
    let again = cli(&tollgate, &["apply", "-f", path]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.stdout.trim(), "no changes");
    // A different set is a change.
    write("GET", "GET, PUT", &one);
    let changed = cli(&tollgate, &["apply", "-f", path, "--dry-run"]);
    for line in [
        "~ update route sets/items",
        "~ update upstream sets-backend",
    ] {
        assert!(changed.stdout.contains(line), "{line}: {}", changed.stdout);
    }

    std::fs::write(
        &file,
        "upstreams:\n  - slug: twice\n    slug: twice-again\n    targets: [{url: \"http://127.0.0.1:9\"}]\n",
    )
    .unwrap();
    let refused = cli(&tollgate, &["apply", "-f", path]);
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("the key `slug` is given twice"),
        "{}",
        refused.stderr
    );
    let (_, upstreams) = tollgate.admin(Method::GET, "/api/v1/upstreams", None).await;
    assert!(
        upstreams["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["slug"] != "twice" && u["slug"] != "twice-again"),
        "{upstreams}"
    );
}

/// An export holds retired services; applying it to a new deployment
/// restores them retired (published once, then retired), not refused.
#[tokio::test]
async fn a_retired_service_restores_into_a_new_deployment() {
    let restored = Restored::apply("lifecycle: retired").await;
    restored
        .tollgate
        .wait_for("/old/x", Duration::from_secs(1), |s| s == 410)
        .await;
    restored.applies_without_change();
}

/// A deployment restored from a file of one team, upstream and service
/// (`old` at `/old`, route `GET /x`) with `service` settings added.
struct Restored {
    tollgate: Tollgate,
    _upstream: FakeUpstream,
    _dir: tempfile::TempDir,
    path: String,
    applied: Output,
}

impl Restored {
    async fn apply(service: &str) -> Self {
        let upstream = FakeUpstream::start("a").await;
        let tollgate = Tollgate::start(BIN).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("restore.yaml");
        std::fs::write(
            &file,
            format!(
                r#"teams: [{{slug: t1, name: T1}}]
upstreams: [{{slug: up1, team: t1, targets: [{{url: "{}"}}]}}]
services:
  - {{slug: old, team: t1, base_path: /old, upstream: up1, {service}, routes: [{{methods: [GET], path: /x}}]}}
"#,
                upstream.url()
            ),
        )
        .unwrap();
        let path = file.to_str().unwrap().to_owned();
        let applied = cli(&tollgate, &["apply", "-f", &path]);
        assert!(applied.success, "{}{}", applied.stdout, applied.stderr);
        Restored {
            tollgate,
            _upstream: upstream,
            _dir: dir,
            path,
            applied,
        }
    }

    /// Applying the same file again changes nothing.
    fn applies_without_change(&self) {
        let again = cli(&self.tollgate, &["apply", "-f", &self.path]);
        assert_eq!(again.stdout.trim(), "no changes", "{}", again.stderr);
    }
}

/// A deprecated service whose sunset has passed restores from its export
/// into a new deployment (the sunset is history, not a mistake).
#[tokio::test]
async fn a_deprecated_service_past_its_sunset_restores() {
    let restored = Restored::apply(
        r#"auth: {anonymous: true}, lifecycle: deprecated, sunset: "2020-01-01T00:00:00Z""#,
    )
    .await;
    let (tollgate, applied) = (&restored.tollgate, &restored.applied);
    assert!(
        applied
            .stdout
            .contains(r#"sunset: none -> "2020-01-01T00:00:00Z""#),
        "the sunset is shown: {}",
        applied.stdout
    );
    tollgate
        .wait_for("/old/x", Duration::from_secs(1), |s| s == 200)
        .await;
    let response = tollgate.get("/old/x").await;
    assert!(response.headers().contains_key("sunset"));
    restored.applies_without_change();
    // By hand, a past sunset is still refused.
    let (status, body) = tollgate
        .admin(
            reqwest::Method::POST,
            "/api/v1/services/old/deprecate",
            Some(json!({"sunset": "2020-01-02T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// The YAML export reads the same in a YAML 1.1 reader (PyYAML, as many
/// tools use) as the JSON export: no slug `no` read as `false`, no name
/// `2027-01-01` read as a date. And it applies back with no change.
#[tokio::test]
async fn the_yaml_export_reads_alike_in_a_yaml_1_1_reader() {
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.json");
    std::fs::write(
        &path,
        r#"{"teams": [{"slug": "no", "name": "On"}, {"slug": "y", "name": "2027-01-01"},
            {"slug": "acme", "name": "1:20"}], "upstreams": [], "services": []}"#,
    )
    .unwrap();
    let applied = cli(&tollgate, &["apply", "-f", path.to_str().unwrap()]);
    assert!(applied.success, "{}", applied.stderr);
    let yaml = cli(&tollgate, &["export"]);
    assert!(yaml.success, "{}", yaml.stderr);
    let json = cli(&tollgate, &["export", "--format", "json"]);
    assert!(json.success, "{}", json.stderr);
    let yaml_path = dir.path().join("export.yaml");
    std::fs::write(&yaml_path, &yaml.stdout).unwrap();
    let read = python_json(
        "PyYAML",
        "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        vec![yaml_path.to_str().unwrap().to_owned()],
    )
    .await;
    let expected: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(read, expected, "{}", yaml.stdout);
    let again = cli(&tollgate, &["apply", "-f", yaml_path.to_str().unwrap()]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.stdout.trim(), "no changes");
}

/// Whatever the admin API accepted, its export applies again: three
/// services with an OpenAPI document of about a megabyte each make a
/// document larger than one request body may be elsewhere (2 MiB).
#[tokio::test]
async fn a_large_export_applies_again() {
    let source = Tollgate::start(BIN).await;
    source
        .create(
            "/api/v1/upstreams",
            serde_json::json!({"slug": "big-backend", "targets": [{"url": "http://127.0.0.1:9"}]}),
        )
        .await;
    let paths: serde_json::Map<String, serde_json::Value> = (0..9000)
        .map(|i| {
            (
                format!("/things/{i:05}/with/a/rather/long/path/name"),
                serde_json::json!({"get": {"summary": "Reads one of the many things, described at length"}}),
            )
        })
        .collect();
    let openapi = serde_json::json!({"openapi": "3.1.0", "info": {"title": "big", "version": "1"}, "paths": paths});
    assert!(openapi.to_string().len() > 800_000);
    for slug in ["big-a", "big-b", "big-c"] {
        source
            .create(
                "/api/v1/services",
                serde_json::json!({"slug": slug, "base_path": format!("/{slug}"),
                    "upstream": "big-backend", "openapi": openapi}),
            )
            .await;
    }
    let exported = cli(&source, &["export", "--format", "json"]);
    assert!(exported.success, "{}", exported.stderr);
    assert!(exported.stdout.len() > 2 << 20, "{}", exported.stdout.len());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, &exported.stdout).unwrap();
    let target = Tollgate::start(BIN).await;
    let applied = cli(&target, &["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.success, "{}", applied.stderr);
    let again = cli(&target, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(again.stdout.trim(), "no changes", "{}", again.stderr);
}

/// A sunset belongs to a deprecation: with any other lifecycle it is
/// refused, naming the field, not dropped.
#[tokio::test]
async fn a_sunset_without_a_deprecation_is_refused() {
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sunset.yaml");
    std::fs::write(
        &file,
        r#"upstreams: [{slug: up1, targets: [{url: "http://127.0.0.1:9"}]}]
services:
  - {slug: early, base_path: /early, upstream: up1, lifecycle: draft, sunset: "2030-01-01T00:00:00Z"}
"#,
    )
    .unwrap();
    let applied = cli(&tollgate, &["apply", "-f", file.to_str().unwrap()]);
    assert!(!applied.success, "{}", applied.stdout);
    assert!(
        applied.stderr.contains("services[0].sunset"),
        "{}",
        applied.stderr
    );
    let (_, services) = tollgate.admin(Method::GET, "/api/v1/services", None).await;
    assert_eq!(services["data"], json!([]), "nothing written");
}

/// What a file no longer has is removed before what replaces it is added:
/// a route moved from one service to another, and a service renamed with
/// `--prune`, apply in one go (before, each was checked against the old
/// state and refused as a conflict with itself).
#[tokio::test]
async fn moved_routes_and_renamed_services_apply_in_one_go() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, first: &str, first_route: &str, second_route: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"upstreams: [{{slug: up1, targets: [{{url: "{}"}}]}}]
services:
  - {{slug: {first}, base_path: /gamma, upstream: up1, routes: [{{methods: [GET], path: {first_route}}}]}}
  - {{slug: other, base_path: /gamma, upstream: up1, routes: [{{methods: [GET], path: {second_route}}}]}}
"#,
                upstream.url()
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    };
    let first = write("first.yaml", "sa", "/x", "/y");
    let applied = cli(&tollgate, &["apply", "-f", &first]);
    assert!(applied.success, "{}", applied.stderr);
    // The two routes change places.
    let swapped = write("swapped.yaml", "sa", "/y", "/x");
    let applied = cli(&tollgate, &["apply", "-f", &swapped]);
    assert!(applied.success, "{}", applied.stderr);
    // `sa` renamed: the old one goes, the new one takes its route.
    let renamed = write("renamed.yaml", "sa-renamed", "/y", "/x");
    let dry = cli(
        &tollgate,
        &["apply", "-f", &renamed, "--prune", "--dry-run"],
    );
    assert!(dry.success, "{}", dry.stderr);
    let applied = cli(&tollgate, &["apply", "-f", &renamed, "--prune"]);
    assert!(applied.success, "{}", applied.stderr);
    let (status, _) = tollgate
        .admin(Method::GET, "/api/v1/services/sa", None)
        .await;
    assert_eq!(status, 404);
    let (_, routes) = tollgate
        .admin(Method::GET, "/api/v1/services/sa-renamed/routes", None)
        .await;
    assert_eq!(routes["data"][0]["path"], "/y", "{routes}");
    let again = cli(&tollgate, &["apply", "-f", &renamed, "--prune"]);
    assert_eq!(again.stdout.trim(), "no changes", "{}", again.stderr);
}

/// Every problem of a file at once, shape and sense alike: an unknown
/// field does not hide the bad slug, URL and timeout beside it.
#[tokio::test]
async fn every_problem_of_an_item_is_reported_at_once() {
    let tollgate = Tollgate::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        r#"upstreams:
  - slug: "A!"
    connect_timeout_ms: 0
    targets:
      - {url: "ftp://x", weight: 1}
      - {url: "http://a:1", weight: 1, extra: 1}
services:
  - {slug: s1, base_path: /s1, upstream: "A!", surprise: true, routes: [{path: /x, methods: [GET], nonsense: 1}]}
"#,
    )
    .unwrap();
    let applied = cli(
        &tollgate,
        &["apply", "-f", file.to_str().unwrap(), "--dry-run"],
    );
    assert!(!applied.success, "{}", applied.stdout);
    for path in [
        "upstreams[0].targets[1].extra",
        "upstreams[0].slug",
        "upstreams[0].targets[0].url",
        "upstreams[0].connect_timeout_ms",
        "services[0].surprise",
        "services[0].routes[0].nonsense",
    ] {
        assert!(
            applied.stderr.contains(path),
            "{path} in {}",
            applied.stderr
        );
    }
}
