//! Upstream HTTP/1.1 connections: written by the request that uses them,
//! read by its response body, then put back in the worker thread's pool.
//!
//! A pooled connection has no task of its own. When it is taken from the
//! pool, its socket's readiness tells whether anything (a `FIN`, stray
//! bytes) arrived while it sat idle; such a connection is dropped. An
//! upstream may still close one in the instant before it is used: the
//! caller ([`crate::client::send`]) then repeats the exchange on a new
//! connection when [`ExchangeError::is_stale`] says nothing was answered.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{FieldRanges, Framing, HeadError, MAX_HEAD_BYTES, MAX_HEADERS, Step};
use crate::body::{BoxError, UpstreamRequestBody};

/// Idle connections older than this are not reused.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// A plain or TLS connection to an upstream.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(stream) => stream,
            Io::Tls(stream) => stream.get_ref().0,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// One upstream connection and what has been read from it.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// Set when the connection has carried a request before.
    reused: bool,
    idle_since: Instant,
}

impl Conn {
    pub fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            reused: false,
            idle_since: Instant::now(),
        }
    }

    /// Whether an idle connection may carry another request: not idle too
    /// long, and nothing arrived on it while idle (readiness, no syscall).
    pub fn is_usable(&self) -> bool {
        if !self.buf.is_empty() || self.idle_since.elapsed() > MAX_IDLE {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.io.tcp().poll_read_ready(&mut cx).is_pending()
    }
}

/// How a request goes on the wire, read off its head once.
#[derive(Debug, Clone, Copy)]
pub struct Wire {
    /// A streamed body of unknown length: sent chunked.
    pub chunked: bool,
    /// It asks for a protocol upgrade: a `101` answers it.
    pub upgrade: bool,
}

impl Wire {
    pub fn of(headers: &HeaderMap, body: &UpstreamRequestBody) -> Self {
        Self {
            chunked: matches!(body, UpstreamRequestBody::Stream(_))
                && !headers.contains_key(header::CONTENT_LENGTH),
            upgrade: headers.contains_key(header::UPGRADE),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("write to upstream: {0}")]
    Write(#[source] std::io::Error),
    #[error("read from upstream: {0}")]
    Read(#[source] std::io::Error),
    #[error("upstream closed the connection before answering")]
    Closed,
    #[error("upstream sent a malformed response: {0}")]
    Head(#[source] HeadError),
    #[error("upstream answered 101 Switching Protocols to a request that asked for no upgrade")]
    Upgrade,
    /// A transfer coding other than one `chunked` (`gzip, chunked`) on a
    /// body: the gateway does not decode it, and passing the coded bytes on
    /// as the body (without the hop's `Transfer-Encoding`) would corrupt it.
    #[error("upstream used a transfer coding other than one chunked")]
    Coding,
    #[error("request body: {0}")]
    Body(#[source] BoxError),
    /// Set when the connection was reused and nothing of a response came
    /// back: the upstream most likely closed it as it was being used.
    #[error("{inner}")]
    Stale { inner: Box<ExchangeError> },
}

impl ExchangeError {
    pub fn is_stale(&self) -> bool {
        matches!(self, ExchangeError::Stale { .. })
    }

    /// The upstream answered, but not in a form the gateway can pass on:
    /// it has acted on the request, and would answer alike again.
    pub fn is_unusable_answer(&self) -> bool {
        matches!(
            self,
            ExchangeError::Head(_) | ExchangeError::Coding | ExchangeError::Upgrade
        )
    }
}

/// The head of a request as written upstream.
pub fn encode_head(parts: &http::request::Parts, body: &UpstreamRequestBody, out: &mut BytesMut) {
    out.reserve(256);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    super::put_headers(out, &parts.headers);
    if !parts.headers.contains_key(header::CONTENT_LENGTH) {
        match body {
            UpstreamRequestBody::Empty => {
                if expects_body(&parts.method) {
                    out.put_slice(b"content-length: 0\r\n");
                }
            }
            UpstreamRequestBody::Full(data) => {
                out.put_slice(b"content-length: ");
                super::put_decimal(out, data.as_ref().map_or(0, |d| d.len() as u64));
                out.put_slice(b"\r\n");
            }
            UpstreamRequestBody::Stream(_) => out.put_slice(b"transfer-encoding: chunked\r\n"),
        }
    }
    out.put_slice(b"\r\n");
}

fn expects_body(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PUT || *method == Method::PATCH
}

/// Sends one request on `conn` and reads the response head. The body is
/// read by the returned [`ResponseBody`], which gives the connection back
/// to `pool_key`'s pool once the response has been read to its end.
pub async fn exchange(
    mut conn: Conn,
    head: &[u8],
    body: &mut UpstreamRequestBody,
    wire: Wire,
    method: &Method,
    pool_key: u64,
    interim: Option<&super::Interim>,
) -> Result<Response<ResponseBody>, ExchangeError> {
    let Wire { chunked, upgrade } = wire;
    let reused = conn.reused;
    let stale = |error: ExchangeError| {
        if reused {
            ExchangeError::Stale {
                inner: Box::new(error),
            }
        } else {
            error
        }
    };
    write_request(&mut conn.io, head, body, chunked)
        .await
        .map_err(|error| match error {
            ExchangeError::Write(_) => stale(error),
            other => other,
        })?;
    let (parts, framing, keep_alive) = loop {
        match parse_response(&mut conn.buf, method, upgrade)? {
            Some(Parsed::Informational(head)) => {
                if let (Some(interim), Some(head)) = (interim, head) {
                    interim.push(&head);
                }
                continue;
            }
            Some(Parsed::Final(parts, framing, keep_alive)) => break (parts, framing, keep_alive),
            None => {}
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            return Err(ExchangeError::Head(HeadError::TooLarge));
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(8 * 1024);
        }
        let nothing_yet = conn.buf.is_empty();
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) if nothing_yet => return Err(stale(ExchangeError::Closed)),
            Ok(0) => return Err(ExchangeError::Closed),
            Ok(_) => {}
            Err(error) if nothing_yet => return Err(stale(ExchangeError::Read(error))),
            Err(error) => return Err(ExchangeError::Read(error)),
        }
    };
    conn.reused = true;
    let body = ResponseBody {
        conn: Some(conn),
        framing,
        keep_alive,
        pool_key,
        raw: parts.3,
        trailers: None,
    };
    let mut response = Response::new(body);
    *response.status_mut() = parts.0;
    *response.version_mut() = parts.1;
    *response.headers_mut() = parts.2;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The connection is the caller's tunnel now (`take_upgraded`).
        return Ok(response);
    }
    if response.body().framing.is_done() {
        // No body to wait for: the connection is free now.
        response.body_mut().finish();
    }
    Ok(response)
}

async fn write_request(
    io: &mut Io,
    head: &[u8],
    body: &mut UpstreamRequestBody,
    chunked: bool,
) -> Result<(), ExchangeError> {
    let write = ExchangeError::Write;
    match body {
        UpstreamRequestBody::Empty | UpstreamRequestBody::Full(None) => {
            io.write_all(head).await.map_err(write)?;
        }
        UpstreamRequestBody::Full(Some(data)) => {
            if head.len() + data.len() <= 16 * 1024 {
                let mut out = BytesMut::with_capacity(head.len() + data.len());
                out.put_slice(head);
                out.put_slice(data);
                io.write_all(&out).await.map_err(write)?;
            } else {
                io.write_all(head).await.map_err(write)?;
                io.write_all(data).await.map_err(write)?;
            }
        }
        UpstreamRequestBody::Stream(stream) => {
            io.write_all(head).await.map_err(write)?;
            let mut out = BytesMut::new();
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_frame(cx)).await
            {
                let frame = frame.map_err(ExchangeError::Body)?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if chunked {
                    out.clear();
                    super::put_chunk(&mut out, &data);
                    io.write_all(&out).await.map_err(write)?;
                } else {
                    io.write_all(&data).await.map_err(write)?;
                }
            }
            if chunked {
                io.write_all(super::LAST_CHUNK).await.map_err(write)?;
            }
        }
    }
    io.flush().await.map_err(write)
}

/// Status, version, the head as a map, or (most heads) kept raw.
type HeadParts = (StatusCode, Version, HeaderMap, Option<Box<super::RawHead>>);

enum Parsed {
    /// A 1xx answer (`100 Continue`, `103 Early Hints`): skipped.
    /// A 1xx before the final answer: its head for the client, if it
    /// goes on.
    Informational(Option<Bytes>),
    Final(HeadParts, Framing, bool),
}

/// Parses a response head at the start of `buf`, taking it off the buffer
/// when complete. `None`: not all of it has arrived.
fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    upgrade: bool,
) -> Result<Option<Parsed>, ExchangeError> {
    let mut fields: smallvec::SmallVec<[FieldRanges; 24]> = smallvec::SmallVec::new();
    let mut connection = super::ConnectionTokens::default();
    let (length, code, minor) = {
        let mut storage =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let status = match httparse::ParserConfig::default()
            // RFC 9112 §5.1: a proxy removes whitespace between a field's
            // name and colon, and passes the response on.
            .allow_spaces_after_header_name_in_responses(true)
            .parse_response_with_uninit_headers(&mut response, buf, &mut storage)
        {
            Ok(status) => status,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::Head(HeadError::TooLarge));
            }
            Err(_) => return Err(ExchangeError::Head(HeadError::Malformed)),
        };
        let httparse::Status::Complete(length) = status else {
            return Ok(None);
        };
        let code = response.code.unwrap_or(0);
        let minor = response.version.unwrap_or(1);
        for field in response.headers.iter() {
            connection.read(field.name.as_bytes(), field.value);
            fields.push((
                super::range_in(buf, field.name.as_bytes()),
                super::range_in(buf, field.value),
            ));
        }
        (length, code, minor)
    };
    let head: Bytes = buf.split_to(length).freeze();
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Head(HeadError::Malformed))?;
    // A 101 is final for a request that asked for an upgrade (the
    // connection is a tunnel after it, no body); unasked, it is refused.
    let switched = status == StatusCode::SWITCHING_PROTOCOLS;
    if switched && !upgrade {
        return Err(ExchangeError::Upgrade);
    }
    if status.is_informational() && !switched {
        // `100 Continue` answers the gateway's own `Expect` (never sent
        // on); others (`103 Early Hints`) go to the client.
        let forwarded =
            (status != StatusCode::CONTINUE).then(|| super::interim_head(status, &head, &fields));
        return Ok(Some(Parsed::Informational(forwarded)));
    }
    // Kept raw unless its `Connection` names other headers to drop, it is
    // a tunnel's (101), or its framing headers disagree (both are fixed in
    // a map). A map gets room for the request id, `RateLimit` pair and
    // balance added on the way back.
    // A HEAD's answer, a 204 and a 304 end at their head (RFC 9112 §6.3):
    // their `Transfer-Encoding`, whatever it says, frames no bytes.
    let bodiless = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let (headers, raw, declared) = if !connection.others && !switched {
        let kept = super::RawHead::new(head, &fields);
        if !bodiless && !kept.codings_are_chunked() {
            return Err(ExchangeError::Coding);
        }
        let (declared, tidy) = kept.declared_framing().map_err(ExchangeError::Head)?;
        if tidy {
            (HeaderMap::new(), Some(Box::new(kept)), declared)
        } else {
            let mut headers = kept.to_map(4, true);
            if let Some(framing) = declared {
                super::normalise_framing(&mut headers, framing);
            }
            (headers, None, declared)
        }
    } else {
        let mut headers =
            super::header_map(&head, &fields, 4, &connection).map_err(ExchangeError::Head)?;
        if !bodiless
            && headers.contains_key(http::header::TRANSFER_ENCODING)
            && !super::only_chunked(&headers)
        {
            return Err(ExchangeError::Coding);
        }
        let (declared, tidy) = super::declared_framing(&headers).map_err(ExchangeError::Head)?;
        if let Some(framing) = declared.filter(|_| !tidy) {
            // The client is told the framing it gets: never the upstream's
            // `Content-Length` beside a chunked body it decoded.
            super::normalise_framing(&mut headers, framing);
        }
        (headers, None, declared)
    };
    let framing = if bodiless || switched {
        Framing::Done
    } else {
        declared.unwrap_or(Framing::Eof)
    };
    let keep_alive = framing != Framing::Eof
        && if minor == 0 {
            connection.keep_alive
        } else {
            !connection.close
        };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Some(Parsed::Final(
        (status, version, headers, raw),
        framing,
        keep_alive,
    )))
}

/// An upstream response body, read from its connection as the client
/// reads it.
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool_key: u64,
    /// The head's fields, when they were not put in the response's map
    /// (boxed: the body moves several times on its way to the client).
    raw: Option<Box<super::RawHead>>,
    /// The trailer section read after the last chunk, given as the
    /// body's last frame (boxed: rarely there, and the body moves).
    trailers: Option<Box<BytesMut>>,
}

impl ResponseBody {
    /// The body has been read to its end: the connection goes back to the
    /// pool, or is closed.
    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            conn.idle_since = Instant::now();
            crate::client::put_idle(self.pool_key, conn);
        }
    }

    /// The upstream's head, when kept raw ([`super::RawHead`]).
    pub fn raw_head(&self) -> Option<&super::RawHead> {
        self.raw.as_deref()
    }

    pub fn take_raw_head(&mut self) -> Option<Box<super::RawHead>> {
        self.raw.take()
    }

    pub fn raw_head_mut(&mut self) -> Option<&mut super::RawHead> {
        self.raw.as_deref_mut()
    }

    /// Whether the whole body has been read.
    pub fn is_complete(&self) -> bool {
        self.framing.is_done()
    }

    /// After `101 Switching Protocols`: the connection, as a tunnel.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        self.conn.take().map(|conn| Upgraded {
            io: conn.io,
            read_ahead: conn.buf,
        })
    }
}

/// An upstream connection after `101 Switching Protocols`: bytes both
/// ways, starting with what was read past the response head.
pub struct Upgraded {
    io: Io,
    read_ahead: BytesMut,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.step(&mut conn.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::Trailer(line)) => {
                    this.trailers
                        .get_or_insert_default()
                        .extend_from_slice(&line);
                    continue;
                }
                Ok(Step::End) => {
                    this.finish();
                    // The upstream's trailers, as the body's last frame.
                    return Poll::Ready(
                        this.trailers
                            .take()
                            .map(|section| super::trailer_fields(&section))
                            .filter(|trailers| !trailers.is_empty())
                            .map(|trailers| Ok(Frame::trailers(trailers))),
                    );
                }
                Ok(Step::More) => {}
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
            }
            match super::poll_read_more(&mut conn.io, cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => match this.framing.at_eof() {
                    Ok(_) => {
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Err(error) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(Box::new(error))));
                    }
                },
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.exact_len() {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &[u8], method: Method) -> (Option<Parsed>, BytesMut) {
        let mut buf = BytesMut::from(wire);
        let parsed = parse_response(&mut buf, &method, false).unwrap();
        (parsed, buf)
    }

    #[test]
    fn response_heads() {
        let (parsed, rest) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            Method::GET,
        );
        let Some(Parsed::Final((status, _, headers, raw), framing, keep_alive)) = parsed else {
            panic!("not final")
        };
        assert_eq!(status, 200);
        assert!(headers.is_empty());
        let raw = raw.expect("a plain head is kept raw");
        assert_eq!(raw.to_map(0, false)["x-a"], "1");
        assert!(raw.has_content_length() && !raw.has_date());
        assert_eq!(framing, Framing::Length(5));
        assert!(keep_alive);
        assert_eq!(&rest[..], b"hello");

        let (parsed, _) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::HEAD,
        );
        assert!(matches!(
            parsed,
            Some(Parsed::Final(_, Framing::Done, true))
        ));
        let (parsed, _) = parse(b"HTTP/1.0 200 OK\r\n\r\nbody", Method::GET);
        assert!(matches!(
            parsed,
            Some(Parsed::Final(_, Framing::Eof, false))
        ));
        let (parsed, _) = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            Method::GET,
        );
        assert!(matches!(
            parsed,
            Some(Parsed::Final(_, Framing::Chunked(_), false))
        ));
        let (parsed, rest) = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204", Method::GET);
        assert!(matches!(parsed, Some(Parsed::Informational(None))));
        assert_eq!(&rest[..], b"HTTP/1.1 204");
        let (parsed, _) = parse(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET);
        assert!(parsed.is_none());
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
        );
        assert!(parse_response(&mut buf, &Method::GET, false).is_err());
    }

    #[test]
    fn request_heads() {
        let request = http::Request::builder()
            .method(Method::POST)
            .uri("/a?b=1")
            .header("host", "up")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let mut out = BytesMut::new();
        encode_head(&parts, &UpstreamRequestBody::Empty, &mut out);
        assert_eq!(
            &out[..],
            b"POST /a?b=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n"
        );
        out.clear();
        encode_head(
            &parts,
            &UpstreamRequestBody::Full(Some(Bytes::from_static(b"abc"))),
            &mut out,
        );
        assert!(out.ends_with(b"content-length: 3\r\n\r\n"));
    }
}
