//! Test support: local fakes of everything Tollgate talks to, and a harness
//! that runs the real `tollgate` binary on real sockets.
//!
//! - [`upstream::FakeUpstream`]: an HTTP server with scripted behaviour
//!   (echo, status, delay, SSE streams, a health switch).
//! - [`tollgate::Tollgate`]: starts the binary with a fresh data dir and free
//!   ports, waits for readiness, and offers admin and gateway helpers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod tollgate;
pub mod upstream;

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
