//! Runs the real `tollgate` binary for a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "test-root-token-0123456789";

/// The master key of nodes that share a database in tests (32 bytes).
pub const SHARED_MASTER_KEY: &str = "dGVzdHMtc2hhcmUtb25lLW1hc3Rlci1rZXktMzJieXQ=";

/// How to start the binary.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Reuse this data dir (for restarts); a fresh one otherwise.
    pub data_dir: Option<PathBuf>,
    /// Extra command-line arguments after `serve`.
    pub args: Vec<String>,
    /// The admin listener's address (its port is picked here); loopback
    /// when `None`.
    pub admin_host: Option<&'static str>,
    /// The gateway's port; a free one when `None`. A node restarted on
    /// its former port keeps its name (alerts over its calls are filed
    /// under it).
    pub gateway_port: Option<u16>,
}

impl Options {
    /// Keeps its data in `data_dir`, so a restart finds it again.
    pub fn in_dir(data_dir: &std::path::Path) -> Self {
        Options {
            data_dir: Some(data_dir.to_path_buf()),
            ..Default::default()
        }
    }

    /// Trusts the proxies of `cidrs` (`gateway.trusted_proxies`): their
    /// `X-Forwarded-For` names the client.
    pub fn trusting_proxies(cidrs: &str) -> Self {
        Options {
            env: vec![("TOLLGATE_GATEWAY__TRUSTED_PROXIES".into(), cidrs.to_owned())],
            ..Default::default()
        }
    }

    /// Stores in the given database (`postgres://…`) instead of SQLite,
    /// with the master key every node sharing it needs (the same one).
    pub fn on_database(url: &str) -> Self {
        Options {
            env: vec![
                ("TOLLGATE_STORAGE__DATABASE_URL".into(), url.to_owned()),
                (
                    "TOLLGATE_SECRETS__MASTER_KEY".into(),
                    SHARED_MASTER_KEY.to_owned(),
                ),
            ],
            ..Default::default()
        }
    }
}

/// A running `tollgate serve`. Killed when dropped.
pub struct Tollgate {
    child: Option<Child>,
    pub gateway_url: String,
    pub admin_url: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
    log_path: PathBuf,
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A reqwest client that keeps no cookies, follows no redirects and uses no
/// proxy (loopback only).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Tollgate {
    pub async fn start(binary: &str) -> Self {
        Self::start_with(binary, Options::default()).await
    }

    /// Starts the binary; when one of the free ports it was given was
    /// taken by another test in the meantime, starts it again on others.
    pub async fn start_with(binary: &str, options: Options) -> Self {
        for _ in 0..4 {
            let tollgate = Self::spawn(binary, &options);
            if tollgate.wait_ready().await {
                return tollgate;
            }
        }
        panic!("tollgate found its ports taken four times in a row");
    }

    fn spawn(binary: &str, options: &Options) -> Self {
        let (data_dir, temp) = match &options.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::tempdir().unwrap();
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let gateway_port = options.gateway_port.unwrap_or_else(crate::free_port);
        let admin_port = crate::free_port();
        let log_path = data_dir.join(format!("tollgate-{gateway_port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(&options.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_DATA_DIR", &data_dir)
            .env(
                "TOLLGATE_GATEWAY__LISTEN",
                format!("127.0.0.1:{gateway_port}"),
            )
            .env(
                "TOLLGATE_ADMIN__LISTEN",
                format!("{}:{admin_port}", options.admin_host.unwrap_or("127.0.0.1")),
            )
            .env("TOLLGATE_LOG__LEVEL", "debug")
            .env("TOLLGATE_STORAGE__POLL_INTERVAL_MS", "100")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start the tollgate binary");
        Tollgate {
            child: Some(child),
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            data_dir,
            _temp: temp,
            client: client(),
            log_path,
        }
    }

    /// The process's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process's log lines (the default `json` format), each checked
    /// to be one JSON object whose keys are all different (a repeated key
    /// is lost by most log pipelines, which keep the last value).
    pub fn json_log_lines(&self) -> Vec<serde_json::Map<String, Value>> {
        self.log()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let mut deserializer = serde_json::Deserializer::from_str(line);
                serde::de::Deserializer::deserialize_map(&mut deserializer, UniqueKeys)
                    .unwrap_or_else(|error| panic!("log line {line}: {error}"))
            })
            .collect()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Waits until both listeners answer: true; false when a port was
    /// taken (the process exits saying so). The answers count only once
    /// this process has said it is ready (bound its ports): a port it
    /// failed to take may be another test's node, which answers too.
    async fn wait_ready(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.log().contains("Address already in use") {
                return false;
            }
            if self.log().contains("tollgate ready")
                && let Ok(response) = self
                    .client
                    .get(format!("{}/_tollgate/ready", self.gateway_url))
                    .send()
                    .await
                && response.status() == StatusCode::OK
                && self
                    .client
                    .get(format!("{}/api/v1/openapi.json", self.admin_url))
                    .send()
                    .await
                    .is_ok()
            {
                return true;
            }
            if self.log().contains("Address already in use") {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not become ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the exit status (bounded).
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.terminate();
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not stop after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Calls the admin API with the root token; returns the status and the
    /// JSON body (or Null).
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.admin_as(ADMIN_TOKEN, method, path, body).await
    }

    /// Calls the admin API with `token` (a personal token, say).
    pub async fn admin_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.admin_url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POST that must succeed; returns the body.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (status, response) = self.admin(Method::POST, path, Some(body.clone())).await;
        assert!(
            status.is_success(),
            "POST {path} {body} -> {status}: {response}"
        );
        response
    }

    /// A gateway GET with `Authorization: Bearer <key>`.
    pub async fn get_with_key(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.gateway_url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// [`Self::get_with_key`]'s JSON body.
    pub async fn json_with_key(&self, path: &str, key: &str) -> Value {
        self.get_with_key(path, key).await.json().await.unwrap()
    }

    /// Creates a user with a personal token: returns (user id, token).
    pub async fn user_with_token(&self, email: &str) -> (String, String) {
        let user = self
            .create(
                "/api/v1/users",
                serde_json::json!({"email": email, "password": "a long enough password"}),
            )
            .await;
        let token = self
            .create("/api/v1/tokens", serde_json::json!({"user": email}))
            .await;
        (
            user["id"].as_str().unwrap_or_default().to_owned(),
            token["token_secret"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    /// A gateway GET.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.gateway_url))
            .send()
            .await
            .unwrap()
    }

    /// Waits (up to `limit`) until `check` passes on a gateway GET of `path`;
    /// returns how long it took.
    pub async fn wait_for(
        &self,
        path: &str,
        limit: Duration,
        check: impl Fn(StatusCode) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.get(path).await.status();
            if check(status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "GET {path} still {status} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets up an upstream with `targets`, a published keyless service
    /// (`auth.anonymous`) at `base_path` and the given routes. Returns the service's JSON.
    pub async fn publish_http_service(
        &self,
        slug: &str,
        base_path: &str,
        upstream: Value,
        routes: &[Value],
    ) -> Value {
        let mut upstream = upstream;
        upstream["slug"] = Value::String(format!("{slug}-backend"));
        self.create("/api/v1/upstreams", upstream).await;
        let service = self
            .create(
                "/api/v1/services",
                serde_json::json!({"slug": slug, "kind": "http", "base_path": base_path, "upstream": format!("{slug}-backend"), "auth": {"anonymous": true}}),
            )
            .await;
        for route in routes {
            self.create(&format!("/api/v1/services/{slug}/routes"), route.clone())
                .await;
        }
        self.create(
            &format!("/api/v1/services/{slug}/publish"),
            serde_json::json!({}),
        )
        .await;
        service
    }
}

/// Reads a JSON object, refusing a key seen twice.
struct UniqueKeys;

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = serde_json::Map<String, Value>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object with unique keys")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            if object.insert(key.clone(), value).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "the key '{key}' is repeated"
                )));
            }
        }
        Ok(object)
    }
}
