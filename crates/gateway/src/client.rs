//! Upstream connections: hyper's connection-level client with a pool per
//! worker thread. A pooled HTTP/1.1 connection goes back to its thread's
//! pool when the response body has been read to the end; an HTTP/2
//! connection is shared by every request of the thread. Nothing here is
//! shared between threads, so checking a connection out takes no lock and
//! the connection is driven by the same runtime that uses it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::model::UpstreamProtocol;
use http::uri::Scheme;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::UpstreamRequestBody;
use crate::upstream::TargetRt;

/// Idle HTTP/1.1 connections kept per target and thread.
const IDLE_PER_TARGET: usize = 512;

/// How an upstream's connections are made.
pub struct Connector {
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub tls: Arc<rustls::ClientConfig>,
    pub server_name: Option<ServerName<'static>>,
    /// Distinguishes connections made with other settings.
    pub generation: u64,
}

/// Why a try failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timeout")]
    ConnectTimeout,
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP handshake: {0}")]
    Handshake(hyper::Error),
    #[error(transparent)]
    Request(hyper::Error),
}

impl SendError {
    /// Whether the failure happened before anything reached the upstream.
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Request(_))
    }
}

enum Sender {
    Http1(http1::SendRequest<UpstreamRequestBody>),
    Http2(http2::SendRequest<UpstreamRequestBody>),
}

thread_local! {
    static IDLE: RefCell<HashMap<u64, Vec<http1::SendRequest<UpstreamRequestBody>>>> = RefCell::new(HashMap::new());
    static SHARED: RefCell<HashMap<u64, http2::SendRequest<UpstreamRequestBody>>> = RefCell::new(HashMap::new());
}

fn pool_key(target: &TargetRt, connector: &Connector) -> u64 {
    target.state.id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ connector.generation
}

/// An HTTP/1.1 connection lent to one request; it returns to the pool of
/// the thread that drops it, if the exchange finished cleanly.
pub struct Lease {
    key: u64,
    sender: Option<http1::SendRequest<UpstreamRequestBody>>,
}

impl Lease {
    /// Gives the connection back for reuse.
    pub fn release(&mut self) {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
        {
            IDLE.with(|idle| {
                let mut idle = idle.borrow_mut();
                let list = idle.entry(self.key).or_default();
                if list.len() < IDLE_PER_TARGET {
                    list.push(sender);
                }
            });
        }
    }
}

fn take_idle(key: u64) -> Option<http1::SendRequest<UpstreamRequestBody>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    })
}

fn take_shared(key: u64) -> Option<http2::SendRequest<UpstreamRequestBody>> {
    SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        match shared.get(&key) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                shared.remove(&key);
                None
            }
            None => None,
        }
    })
}

/// Sends `request` to `target`: on an idle pooled connection when there is
/// one (a connection found closed before the request was written is
/// replaced transparently), else on a new one.
pub async fn send(
    connector: &Connector,
    target: &TargetRt,
    mut request: Request<UpstreamRequestBody>,
) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
    let key = pool_key(target, connector);
    if let Some(mut sender) = take_shared(key) {
        to_http2(&mut request, target);
        if sender.ready().await.is_ok() {
            return match sender.try_send_request(request).await {
                Ok(response) => Ok((response, None)),
                Err(mut error) => match error.take_message() {
                    Some(back) => send_new(connector, target, back, key).await,
                    None => Err(SendError::Request(error.into_error())),
                },
            };
        }
    }
    while let Some(mut sender) = take_idle(key) {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok((
                    response,
                    Some(Lease {
                        key,
                        sender: Some(sender),
                    }),
                ));
            }
            Err(mut error) => match error.take_message() {
                // Not written: the connection was closed under us; try the next.
                Some(back) => request = back,
                None => return Err(SendError::Request(error.into_error())),
            },
        }
    }
    send_new(connector, target, request, key).await
}

type Sent = Result<(Response<Incoming>, Option<Lease>), SendError>;

/// The path with a new connection. Boxed: connecting (TCP, TLS, HTTP
/// handshakes) makes a large future, and keeping it out of line keeps the
/// common path's future small, which every request moves around.
fn send_new<'a>(
    connector: &'a Connector,
    target: &'a TargetRt,
    request: Request<UpstreamRequestBody>,
    key: u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Sent> + Send + 'a>> {
    Box::pin(send_new_inner(connector, target, request, key))
}

async fn send_new_inner(
    connector: &Connector,
    target: &TargetRt,
    mut request: Request<UpstreamRequestBody>,
    key: u64,
) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
    match connect(connector, target).await? {
        Sender::Http2(mut sender) => {
            SHARED.with(|shared| shared.borrow_mut().insert(key, sender.clone()));
            to_http2(&mut request, target);
            let response = sender
                .send_request(request)
                .await
                .map_err(SendError::Request)?;
            Ok((response, None))
        }
        Sender::Http1(mut sender) => {
            *request.version_mut() = http::Version::HTTP_11;
            let response = sender
                .send_request(request)
                .await
                .map_err(SendError::Request)?;
            Ok((
                response,
                Some(Lease {
                    key,
                    sender: Some(sender),
                }),
            ))
        }
    }
}

/// HTTP/2 carries scheme and authority as pseudo-headers, not `Host`.
fn to_http2(request: &mut Request<UpstreamRequestBody>, target: &TargetRt) {
    *request.version_mut() = http::Version::HTTP_2;
    request.headers_mut().remove(http::header::HOST);
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

async fn tcp(target: &TargetRt) -> Result<TcpStream, std::io::Error> {
    let host = target.authority.host();
    let port = target
        .authority
        .port_u16()
        .unwrap_or(if target.scheme == Scheme::HTTPS {
            443
        } else {
            80
        });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => TcpStream::connect((ip, port)).await?,
        Err(_) => TcpStream::connect((host, port)).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect(connector: &Connector, target: &TargetRt) -> Result<Sender, SendError> {
    let stream = tokio::time::timeout(connector.connect_timeout, tcp(target))
        .await
        .map_err(|_| SendError::ConnectTimeout)?
        .map_err(SendError::Connect)?;
    if target.scheme == Scheme::HTTPS {
        let name = match &connector.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(
                target
                    .authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| {
                SendError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?,
        };
        let tls = tokio_rustls::TlsConnector::from(connector.tls.clone());
        let stream = tokio::time::timeout(connector.connect_timeout, tls.connect(name, stream))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Tls)?;
        let negotiated_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        handshake(
            stream,
            negotiated_h2 || connector.protocol == UpstreamProtocol::Http2,
        )
        .await
    } else {
        handshake(stream, connector.protocol == UpstreamProtocol::Http2).await
    }
}

async fn handshake<S>(stream: S, http2: bool) -> Result<Sender, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    if http2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        Ok(Sender::Http2(sender))
    } else {
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(Sender::Http1(sender))
    }
}
