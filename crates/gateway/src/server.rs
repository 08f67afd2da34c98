//! The listener loop: accepts connections, serves HTTP/1.1 and HTTP/2 (h2c
//! by prior knowledge) on each, and shuts down gracefully: stop accepting,
//! let in-flight requests finish within `shutdown_timeout`, then return.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Shared;
use crate::refusal::Refusal;

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(256 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(512);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let peer = Arc::new(crate::pipeline::Peer::new(peer));
                let service = service_fn(move |request| {
                    let shared = shared.clone();
                    let peer = peer.clone();
                    async move {
                        let response = AssertUnwindSafe(crate::pipeline::handle(&shared, request, peer))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| {
                                tracing::error!("request handler panicked");
                                Refusal::new(domain::code::Code::InternalError, "The gateway failed on this request; it has been logged.")
                                    .into_response(&http::HeaderValue::from_static("unknown"), &shared.options.public_url)
                            });
                        Ok::<_, Infallible>(response)
                    }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let timeout = shared.options.shutdown_timeout;
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(timeout) => {
            tracing::warn!(timeout_ms = timeout.as_millis() as u64, "shutdown timeout: closing remaining connections");
        }
    }
}
