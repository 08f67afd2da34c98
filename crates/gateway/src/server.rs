//! The listener loop of one worker thread: accepts connections and serves
//! HTTP/1.x with [`crate::h1::server`] and HTTP/2 with prior knowledge
//! (h2c) with hyper; shuts down gracefully: stop accepting, close idle
//! connections, let requests in flight finish within `shutdown_timeout`.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::Shared;
use crate::body::{GatewayBody, RequestBody};
use crate::pipeline::Peer;
use crate::refusal::Refusal;

/// Runs the pipeline on one request; a panic becomes a 500.
pub(crate) async fn respond(
    shared: &Shared,
    request: Request<RequestBody>,
    peer: Arc<Peer>,
) -> Response<GatewayBody> {
    AssertUnwindSafe(crate::pipeline::handle(shared, request, peer))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("request handler panicked");
            Refusal::new(
                domain::code::Code::InternalError,
                "The gateway failed on this request; it has been logged.",
            )
            .into_response(
                &http::HeaderValue::from_static("unknown"),
                &shared.options.public_url,
            )
        })
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Header lists up to this size are decoded, so that the gateway's own
    // limit (the HTTP/1.1 one) answers with a problem; only past it does
    // hyper answer a bare 431.
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(512)
        .max_header_list_size(H2_HEADER_LIST_MAX);
    // This thread's own shutdown signal and connection count: connections
    // watch a channel no other thread touches.
    let (local_stop, local_shutdown) = watch::channel(false);
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
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
                let peer = Arc::new(Peer::new(peer));
                let shutdown = local_shutdown.clone();
                let alive = alive.clone();
                let http2_builder = http2.clone();
                tokio::spawn(async move {
                    let mut stopping = shutdown.clone();
                    // HTTP/1.x or h2c: the first bytes tell (a client that
                    // sends none is closed as an idle one would be).
                    let http2 = tokio::select! {
                        first = tokio::time::timeout(
                            crate::h1::server::IDLE_TIMEOUT,
                            crate::h1::server::is_http2_preface(&stream),
                        ) => first.ok(),
                        _ = stopping.changed() => None,
                    };
                    match http2 {
                        Some(true) => serve_http2(http2_builder, shared, stream, peer, shutdown).await,
                        Some(false) => crate::h1::server::serve(shared, stream, peer, shutdown).await,
                        None => {}
                    }
                    drop(alive);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = local_stop.send(true);
    drop(alive);
    let timeout = shared.options.shutdown_timeout;
    let drained = async { while all_closed.recv().await.is_some() {} };
    tokio::select! {
        () = drained => tracing::info!("all connections closed"),
        () = tokio::time::sleep(timeout) => {
            tracing::warn!(timeout_ms = timeout.as_millis() as u64, "shutdown timeout: closing remaining connections");
        }
    }
}

/// The largest HTTP/2 header list hyper decodes (RFC 9113's size: each
/// field's name and value plus 32 bytes).
const H2_HEADER_LIST_MAX: u32 = 256 * 1024;

/// Whether an HTTP/2 request's headers pass the HTTP/1.1 head's limits
/// (bytes as HTTP/1.1 would send them, and fields): the same 431.
fn too_many_headers(headers: &http::HeaderMap) -> bool {
    use crate::h1::{MAX_HEAD_BYTES, MAX_HEADERS};
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    headers.len() > MAX_HEADERS || bytes > MAX_HEAD_BYTES
}

/// An h2c connection through hyper; on shutdown it stops taking streams
/// and finishes those in flight.
async fn serve_http2(
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: Arc<Peer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        let peer = peer.clone();
        async move {
            if too_many_headers(request.headers()) {
                let refusal = crate::h1::headers_too_large();
                let read = Some((request.method(), request.uri()));
                return Ok(crate::pipeline::unrouted_refusal(
                    refusal,
                    &shared,
                    peer.addr.ip(),
                    read,
                ));
            }
            let request = request.map(RequestBody::Hyper);
            let mut response = respond(&shared, request, peer).await;
            // hyper writes the map: the upstream's raw head joins it.
            crate::body::materialize(&mut response);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP/2 connection ended with an error");
    }
}
