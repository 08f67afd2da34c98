//! Test support: local fakes of everything Tollgate talks to, and a harness
//! that runs the real `tollgate` binary on real sockets.
//!
//! - [`upstream::FakeUpstream`]: an HTTP server with scripted behaviour
//!   (echo, status, delay, SSE streams, a health switch).
//! - [`idp::FakeIdp`]: signs JWTs (HS256, RS256, ES256) and serves its
//!   JWKS document, with key rotation.
//! - [`webhook::WebhookReceiver`]: a webhook endpoint that records what it
//!   receives and can fail the first tries.
//! - [`facilitator::FakeFacilitator`]: an x402 v2 facilitator (verify,
//!   settle) over a pretend chain: balances, nonces used once.
//! - [`collector::FakeCollector`]: an OpenTelemetry collector taking
//!   OTLP/HTTP JSON trace exports.
//! - [`stripe::FakeStripe`]: Stripe's Checkout API and its signed
//!   webhook events.
//! - [`providers`]: fake LLM providers on their own wire formats,
//!   [`FakeOpenAi`], [`FakeAnthropic`] and [`FakeGemini`]: they record
//!   requests, check keys and play scripted [`Reply`]s, streamed or not.
//! - [`python::python`]: a Python with the tests' pinned packages
//!   (the Prometheus text parser; later the official SDKs).
//! - [`tollgate::Tollgate`]: starts the binary with a fresh data dir and free
//!   ports, waits for readiness, and offers admin and gateway helpers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod collector;
pub mod facilitator;
pub mod idp;
pub mod providers;
pub mod proxy;
pub mod python;
pub mod stripe;
pub mod tollgate;
pub mod upstream;
pub mod webhook;

pub use providers::{FakeAnthropic, FakeGemini, FakeOpenAi, Recorded, Reply, Usage};

/// Serves HTTP/1.1 on a free port of 127.0.0.1 until the task is
/// aborted: each request goes to `handle` with the fake's shared state.
/// The fakes (Stripe, the x402 facilitator, webhook receivers) run on it.
pub(crate) async fn serve_http<S, F, Fut>(
    state: std::sync::Arc<S>,
    handle: F,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    S: Send + Sync + 'static,
    F: Fn(std::sync::Arc<S>, hyper::Request<hyper::body::Incoming>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (state, handle) = (state.clone(), handle.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let future = handle(state.clone(), request);
                    async move { Ok::<_, std::convert::Infallible>(future.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A fresh PostgreSQL database on the machine's server (127.0.0.1:5432),
/// dropped when the guard goes. Fails loudly when PostgreSQL is not running.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub fn create() -> Self {
        let name = format!("tollgate_it_{}_{}", std::process::id(), free_port());
        psql(&format!("CREATE DATABASE {name}"));
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        PgDatabase { name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(sql: &str) {
    let output = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql must be installed and PostgreSQL running on 127.0.0.1:5432");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An address whose accept queue is full: connections to it hang in the
/// handshake until the caller's connect timeout. Loopback only. Keep the
/// guard alive while it is used.
pub struct BlackHole {
    pub addr: std::net::SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl BlackHole {
    pub fn new() -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        // Fill the queue; once full, further handshakes are not answered.
        let mut fillers = Vec::new();
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100))
            {
                Ok(stream) => fillers.push(stream),
                Err(_) => break,
            }
        }
        BlackHole {
            addr,
            _listener: socket,
            _fillers: fillers,
        }
    }
}

impl Default for BlackHole {
    fn default() -> Self {
        Self::new()
    }
}
