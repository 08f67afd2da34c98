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
