//! Upstream connections, pooled per worker thread. HTTP/1.1 goes through
//! [`crate::h1::client`]: an idle connection is taken from the thread's
//! pool, written and read by the request that uses it, and put back when
//! its response body has been read to the end. HTTP/2 (hyper's client) has
//! one shared connection per target and thread. Nothing here is shared
//! between threads, so checking a connection out takes no lock.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use domain::model::UpstreamProtocol;
use http::uri::Scheme;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::{BoxError, UpstreamRequestBody};
use crate::h1::client::{Conn, ExchangeError, Io};
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
    Http1(ExchangeError),
    #[error(transparent)]
    Http2(hyper::Error),
}

impl SendError {
    /// Whether the upstream answered in a form that cannot be passed on
    /// ([`crate::h1::client::ExchangeError::is_unusable_answer`]): such a
    /// call is not tried again.
    pub fn is_unusable_answer(&self) -> bool {
        matches!(self, SendError::Http1(error) if error.is_unusable_answer())
    }

    /// Whether the failure happened before anything reached the upstream.
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Http1(_) | SendError::Http2(_))
    }
}

/// An upstream's response body, whichever protocol carried it.
pub enum ResponseBody {
    Http1(crate::h1::client::ResponseBody),
    Http2(Incoming),
}

impl crate::body::RawHeaded for ResponseBody {
    fn raw_head(&self) -> Option<&crate::h1::RawHead> {
        match self {
            ResponseBody::Http1(body) => body.raw_head(),
            ResponseBody::Http2(_) => None,
        }
    }

    fn take_raw_head(&mut self) -> Option<Box<crate::h1::RawHead>> {
        match self {
            ResponseBody::Http1(body) => body.take_raw_head(),
            ResponseBody::Http2(_) => None,
        }
    }

    fn raw_head_mut(&mut self) -> Option<&mut crate::h1::RawHead> {
        match self {
            ResponseBody::Http1(body) => body.raw_head_mut(),
            ResponseBody::Http2(_) => None,
        }
    }
}

impl ResponseBody {
    /// After `101 Switching Protocols` (HTTP/1.1): the upstream connection.
    pub fn take_upgraded(&mut self) -> Option<crate::h1::client::Upgraded> {
        match self {
            ResponseBody::Http1(body) => body.take_upgraded(),
            ResponseBody::Http2(_) => None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Http1(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|error| Box::new(error) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Http1(body) => body.is_end_stream(),
            ResponseBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Http1(body) => body.size_hint(),
            ResponseBody::Http2(body) => body.size_hint(),
        }
    }
}

/// Per-thread pools keyed by [`pool_key`] (already mixed): looked up twice
/// per request, so hashed with foldhash rather than SipHash.
type PoolMap<V> = std::collections::HashMap<u64, V, foldhash::fast::RandomState>;

thread_local! {
    static IDLE: RefCell<PoolMap<Vec<Conn>>> = RefCell::new(PoolMap::default());
    static SHARED: RefCell<PoolMap<http2::SendRequest<UpstreamRequestBody>>> = RefCell::new(PoolMap::default());
}

fn pool_key(target: &TargetRt, connector: &Connector) -> u64 {
    target.state.id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ connector.generation
}

/// Puts an HTTP/1.1 connection whose exchange finished cleanly back in the
/// pool of the thread that finished it.
pub(crate) fn put_idle(key: u64, conn: Conn) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < IDLE_PER_TARGET {
            list.push(conn);
        }
    });
}

fn take_idle(key: u64) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(conn) = list.pop() {
            if conn.is_usable() {
                return Some(conn);
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

/// Sends `request` to `target` ([`send_raw`]); the response's headers are
/// all in its map.
pub async fn send(
    connector: &Connector,
    target: &TargetRt,
    request: Request<UpstreamRequestBody>,
) -> Result<Response<ResponseBody>, SendError> {
    let mut response = send_raw(connector, target, request, None).await?;
    crate::body::materialize(&mut response);
    Ok(response)
}

/// Sends `request` to `target`: on an idle pooled connection when there is
/// one (one that the upstream closed as it was being taken is replaced
/// transparently when the request can be sent again), else on a new one.
/// An HTTP/1.1 response's head may be kept raw ([`crate::h1::RawHead`]):
/// its map then starts empty. Interim (1xx) answers of an HTTP/1.1
/// upstream go to `interim` when given.
pub async fn send_raw(
    connector: &Connector,
    target: &TargetRt,
    request: Request<UpstreamRequestBody>,
    interim: Option<&crate::h1::Interim>,
) -> Result<Response<ResponseBody>, SendError> {
    let key = pool_key(target, connector);
    let mut request = request;
    if let Some(mut sender) = take_shared(key)
        && sender.ready().await.is_ok()
    {
        to_http2(&mut request, target);
        match sender.try_send_request(request).await {
            Ok(response) => return Ok(from_http2(response)),
            Err(mut error) => match error.take_message() {
                // Not sent: the connection closed under us; connect anew.
                Some(back) => {
                    request = back;
                    request
                        .headers_mut()
                        .insert(http::header::HOST, target.host_header.clone());
                }
                None => return Err(SendError::Http2(error.into_error())),
            },
        }
    }
    let (parts, mut body) = request.into_parts();
    let mut head = BytesMut::new();
    crate::h1::client::encode_head(&parts, &body, &mut head);
    let wire = crate::h1::client::Wire::of(&parts.headers, &body);
    while let Some(conn) = take_idle(key) {
        match crate::h1::client::exchange(conn, &head, &mut body, wire, &parts.method, key, interim)
            .await
        {
            Ok(response) => return Ok(response.map(ResponseBody::Http1)),
            // Closed under us before answering: another connection, if
            // the request can be sent again.
            Err(error)
                if error.is_stale()
                    && body.is_replayable()
                    && may_resend(&parts.method, &error) => {}
            Err(error) => return Err(SendError::Http1(error)),
        }
    }
    send_new(
        connector,
        target,
        Request::from_parts(parts, body),
        (head, wire, key),
        interim,
    )
    .await
}

/// A request on a connection closed under it is sent again when the
/// upstream cannot have acted on it: it was not written, or the method is
/// idempotent.
fn may_resend(method: &http::Method, error: &ExchangeError) -> bool {
    use http::Method;
    let not_written = matches!(error, ExchangeError::Stale { inner } if matches!(**inner, ExchangeError::Write(_)));
    not_written
        || [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ]
        .contains(method)
}

async fn send_http2(
    mut sender: http2::SendRequest<UpstreamRequestBody>,
    mut request: Request<UpstreamRequestBody>,
    target: &TargetRt,
) -> Result<Response<ResponseBody>, SendError> {
    to_http2(&mut request, target);
    let response = sender
        .send_request(request)
        .await
        .map_err(SendError::Http2)?;
    Ok(from_http2(response))
}

/// An HTTP/2 upstream's answer, less the header only the gateway sets (as
/// `h1::RawHead` leaves it out of HTTP/1.1 answers).
fn from_http2(mut response: Response<hyper::body::Incoming>) -> Response<ResponseBody> {
    response
        .headers_mut()
        .remove(http::HeaderName::from_static("tollgate-balance"));
    response.map(ResponseBody::Http2)
}

type Sent = Result<Response<ResponseBody>, SendError>;

/// The path with a new connection. Boxed: connecting (TCP, TLS, HTTP
/// handshakes) makes a large future, and keeping it out of line keeps the
/// common path's future small, which every request moves around.
fn send_new<'a>(
    connector: &'a Connector,
    target: &'a TargetRt,
    request: Request<UpstreamRequestBody>,
    (head, wire, key): (BytesMut, crate::h1::client::Wire, u64),
    interim: Option<&'a crate::h1::Interim>,
) -> Pin<Box<dyn std::future::Future<Output = Sent> + Send + 'a>> {
    Box::pin(async move {
        match connect(connector, target).await? {
            Connection::Http2(sender) => {
                SHARED.with(|shared| shared.borrow_mut().insert(key, sender.clone()));
                send_http2(sender, request, target).await
            }
            Connection::Http1(conn) => {
                let (parts, mut body) = request.into_parts();
                crate::h1::client::exchange(
                    conn,
                    &head,
                    &mut body,
                    wire,
                    &parts.method,
                    key,
                    interim,
                )
                .await
                .map(|response| response.map(ResponseBody::Http1))
                .map_err(SendError::Http1)
            }
        }
    })
}

/// Marks a request whose client sent `TE: trailers` (gRPC): over HTTP/2
/// the upstream gets it again (RFC 9113 §8.2.2 allows that one value); an
/// HTTP/1.1 upstream does not (its trailers are not passed on).
#[derive(Clone, Copy)]
pub struct TeTrailers;

/// HTTP/2 carries scheme and authority as pseudo-headers, not `Host`,
/// and has no connection-level upgrade: such a request goes as a plain one.
fn to_http2(request: &mut Request<UpstreamRequestBody>, target: &TargetRt) {
    *request.version_mut() = http::Version::HTTP_2;
    let te_trailers = request.extensions().get::<TeTrailers>().is_some();
    let headers = request.headers_mut();
    if te_trailers {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    headers.remove(http::header::HOST);
    if headers.remove(http::header::UPGRADE).is_some() {
        headers.remove(http::header::CONNECTION);
    }
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

enum Connection {
    Http1(Conn),
    Http2(http2::SendRequest<UpstreamRequestBody>),
}

async fn connect(connector: &Connector, target: &TargetRt) -> Result<Connection, SendError> {
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
        if negotiated_h2 || connector.protocol == UpstreamProtocol::Http2 {
            http2_handshake(stream).await
        } else {
            Ok(Connection::Http1(Conn::new(Io::Tls(Box::new(stream)))))
        }
    } else if connector.protocol == UpstreamProtocol::Http2 {
        http2_handshake(stream).await
    } else {
        Ok(Connection::Http1(Conn::new(Io::Plain(stream))))
    }
}

async fn http2_handshake<S>(stream: S) -> Result<Connection, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Handshake)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/2 connection ended");
        }
    });
    Ok(Connection::Http2(sender))
}
