//! The process: start-up checks, health endpoints, token bootstrap,
//! graceful shutdown, the small commands.

use std::process::Command;
use std::time::Duration;

use crate::*;

pub(crate) fn serve_fails_with(env: &[(&str, &str)], config: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .env_clear()
        .env("TOLLGATE_DATA_DIR", dir.path());
    if let Some(text) = config {
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(path);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success(), "serve must refuse to start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_broken_configuration_is_refused_at_start_naming_the_key() {
    let stderr = serve_fails_with(&[], Some("gateway:\n  listen: 127.0.0.1:1\n  lisen: x\n"));
    assert!(stderr.contains("gateway.lisen: unknown key"), "{stderr}");
    let stderr = serve_fails_with(
        &[
            ("TOLLGATE_LOG__LEVEL", "chatty"),
            ("TOLLGATE_GATEWAY__LISTEN", "nowhere"),
        ],
        None,
    );
    assert!(
        stderr.contains("log.level") && stderr.contains("gateway.listen"),
        "both named: {stderr}"
    );
    // A value out of range names its variable too.
    let stderr = serve_fails_with(&[("TOLLGATE_CALLS__RETENTION_DAYS", "0")], None);
    assert!(
        stderr.contains("calls.retention_days (from TOLLGATE_CALLS__RETENTION_DAYS): must be"),
        "{stderr}"
    );
    let stderr = serve_fails_with(&[("TOLLGATE_STORAGE__DATABSE_URL", "sqlite://x")], None);
    assert!(
        stderr.contains("storage.databse_url (from TOLLGATE_STORAGE__DATABSE_URL): unknown key"),
        "{stderr}"
    );
    // Three capital letters are not enough: a currency ISO 4217 lists.
    let stderr = serve_fails_with(&[("TOLLGATE_MONEY__CURRENCY", "XYZ")], None);
    assert!(
        stderr.contains("money.currency") && stderr.contains("'XYZ' is not an ISO 4217"),
        "{stderr}"
    );
    let stderr = serve_fails_with(&[], Some("gateway: [1, 2\n"));
    assert!(stderr.contains("tollgate.yaml"), "{stderr}");
    // A key given twice: YAML parsers keep the last silently; refused.
    let stderr = serve_fails_with(
        &[],
        Some("admin:\n  listen: 127.0.0.1:1\n  listen: 0.0.0.0:1\n"),
    );
    assert!(
        stderr.contains("the key `listen` is given twice"),
        "{stderr}"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let tollgate = Tollgate::start(BIN).await;
    let health = tollgate.get("/_tollgate/health").await;
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = tollgate.get("/_tollgate/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["config_loaded"], true);
    assert_eq!(ready["store_reachable"], true);
}

/// The admin listener on loopback says nothing; bound beyond this machine,
/// the process warns at start (it still serves, tokens required).
#[tokio::test]
async fn an_admin_listener_beyond_loopback_is_warned_of() {
    const WARNING: &str = "the admin API listens beyond this machine";
    let quiet = Tollgate::start(BIN).await;
    assert!(!quiet.log().contains(WARNING), "{}", quiet.log());
    let wide = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options {
            admin_host: Some("0.0.0.0"),
            ..Default::default()
        },
    )
    .await;
    assert!(wide.log().contains(WARNING), "{}", wide.log());
    let (status, _) = wide
        .admin(reqwest::Method::GET, "/api/v1/upstreams", None)
        .await;
    assert_eq!(status, 200);
}

/// Text logs written to a file (not a terminal) carry no colour codes.
#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let tollgate = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options {
            env: vec![("TOLLGATE_LOG__FORMAT".into(), "text".into())],
            ..Default::default()
        },
    )
    .await;
    let log = tollgate.log();
    assert!(log.contains("tollgate ready"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[tokio::test]
async fn a_generated_root_token_is_shown_once_and_saved_privately() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let port = |_: ()| test_support::free_port().to_string();
    let start = || {
        Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("TOLLGATE_DATA_DIR", dir.path())
            .env(
                "TOLLGATE_GATEWAY__LISTEN",
                format!("127.0.0.1:{}", port(())),
            )
            .env("TOLLGATE_ADMIN__LISTEN", format!("127.0.0.1:{}", port(())))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let read_first_line = |child: &mut std::process::Child| {
        use std::io::BufRead;
        let stdout = child.stdout.take().unwrap();
        let mut output = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            output.push_str(&line);
            output.push('\n');
            if line.contains("tollgate ready") {
                break;
            }
        }
        output
    };
    let mut first = start();
    let line = read_first_line(&mut first);
    let _ = first.kill();
    let _ = first.wait();
    let token_path = dir.path().join("admin-token");
    let saved = std::fs::read_to_string(&token_path).unwrap();
    assert!(saved.trim().starts_with("tg_admin_") && saved.trim().len() >= 40);
    assert!(line.contains(saved.trim()), "printed: {line}");
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let database = std::fs::read(dir.path().join("tollgate.db")).unwrap();
    let needle = saved.trim().as_bytes();
    assert!(
        !database.windows(needle.len()).any(|w| w == needle),
        "the database holds only the token's digest"
    );

    let mut second = start();
    let line = read_first_line(&mut second);
    let _ = second.kill();
    let _ = second.wait();
    assert!(
        !line.contains("tg_admin_"),
        "shown only on the first start: {line}"
    );
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight() {
    let upstream = FakeUpstream::start("a").await;
    let tollgate = gateway_with(&upstream).await;
    let client = tollgate.client.clone();
    let url = format!("{}/svc/delay/800", tollgate.gateway_url);
    let in_flight = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gateway_url = tollgate.gateway_url.clone();
    let stopping = tokio::spawn(tollgate.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are no longer accepted.
    let fresh = test_support::tollgate::client();
    assert!(
        fresh
            .get(format!("{gateway_url}/_tollgate/health"))
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
    let response = in_flight.await.unwrap();
    assert_eq!(response.status(), 200, "the request in flight completes");
    assert!(stopping.await.unwrap().success(), "exit code 0");
}

#[test]
fn version_and_migrate() {
    let output = Command::new(BIN).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("tollgate "));
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .arg("migrate")
        .env_clear()
        .env("TOLLGATE_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("tollgate.db").exists());
    let output = Command::new(BIN)
        .args(["migrate", "--database-url", "mysql://nope"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("storage.database_url"));
}

/// Nodes started together on a new PostgreSQL database migrate it one
/// at a time: none fails on the others' half-made tables.
#[test]
fn nodes_migrating_one_database_together_all_succeed() {
    let database = test_support::PgDatabase::create();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            Command::new(BIN)
                .args(["migrate", "--database-url", &database.url])
                .env_clear()
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let output = run.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A node whose master key does not open the secrets the others sealed
/// in the shared database does not start: it would seal new ones that
/// they cannot open.
#[tokio::test]
async fn a_node_with_another_master_key_does_not_start() {
    let database = test_support::PgDatabase::create();
    let first = Tollgate::start_with(
        BIN,
        test_support::tollgate::Options::on_database(&database.url),
    )
    .await;
    first
        .create("/api/v1/teams", json!({"slug": "acme", "name": "Acme"}))
        .await;
    first
        .create(
            "/api/v1/teams/acme/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["subscription.created"]}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = test_support::free_port();
    let url = database.url.clone();
    let home = dir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("TOLLGATE_DATA_DIR", &home)
            .env("TOLLGATE_STORAGE__DATABASE_URL", &url)
            .env("TOLLGATE_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
            .env("TOLLGATE_ADMIN__LISTEN", "127.0.0.1:0")
            .env(
                "TOLLGATE_SECRETS__MASTER_KEY",
                "YW5vdGhlci1rZXktb2YtdGhpcnR5LXR3by1ieXRlcyE=",
            )
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("the node stops at once")
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not open the secrets stored in the database"),
        "{stderr}"
    );
    // The first node goes on.
    let (status, _) = first
        .admin(reqwest::Method::GET, "/api/v1/teams", None)
        .await;
    assert_eq!(status, 200);
}

/// A store keeps the currency it started with: another `money.currency`
/// would relabel every balance and ledger entry, so it stops the start.
#[tokio::test]
async fn a_store_keeps_the_currency_it_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let first =
        Tollgate::start_with(BIN, test_support::tollgate::Options::in_dir(dir.path())).await;
    drop(first);
    let stderr = serve_fails_with(
        &[
            ("TOLLGATE_DATA_DIR", dir.path().to_str().unwrap()),
            ("TOLLGATE_MONEY__CURRENCY", "EUR"),
        ],
        None,
    );
    assert!(
        stderr
            .contains("money.currency is EUR, but this store keeps its balances and ledger in USD"),
        "{stderr}"
    );
    // The same currency starts.
    let again =
        Tollgate::start_with(BIN, test_support::tollgate::Options::in_dir(dir.path())).await;
    assert_eq!(again.get("/_tollgate/health").await.status(), 200);
}
