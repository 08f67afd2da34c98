//! The client-facing HTTP/1.x connection: read a head, run the pipeline,
//! write the response, repeat while the connection stays alive.
//!
//! - A request without a body (most) keeps the connection's reader in the
//!   loop; one with a body lends it to its [`RequestBody`] and gets it back
//!   once the body has been read to the end (else the connection closes
//!   after the response).
//! - The head and as much of the body as is ready go out in one `write`;
//!   a streamed body (SSE, chunked) is written as each part arrives.
//! - Idle and slow-head timeout: one timer per connection, re-armed only
//!   when it fires (not per request), closes a connection that has not
//!   completed a head within [`IDLE_TIMEOUT`] of its last response.
//! - Refused heads (malformed, too large, conflicting lengths) get a
//!   problem response and the connection closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{FieldRanges, Framing, HeadError, MAX_HEAD_BYTES, MAX_HEADERS, Step};
use crate::Shared;
use crate::body::{BoxError, ClientBodyError, GatewayBody, RawHeaded};
use crate::pipeline::Peer;
use crate::refusal::Refusal;
use domain::code::Code;

/// How long a connection may take to send a complete head after its
/// previous response (or after connecting).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffered response bytes written before asking the body for more.
const WRITE_BATCH: usize = 64 * 1024;

/// The connection's read side: the socket and what has been read ahead.
struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        self.half.read_buf(&mut self.buf).await
    }

    /// Ready when the peer has closed its side or the connection broke.
    /// What arrives meanwhile (a pipelined request) stays in the buffer,
    /// up to a head's worth; past that the peer is no longer watched.
    /// After a short read tokio knows the socket is drained, so an idle
    /// peer costs no syscall here.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.buf.len() < MAX_HEAD_BYTES {
            match super::poll_read_more(&mut self.half, cx, &mut self.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
            }
        }
        Poll::Pending
    }
}

/// The client's side of a connection while its request is answered: in
/// the connection loop, or lent to the request's body.
struct Watch<'a> {
    reader: Option<&'a mut Reader>,
    lent: Option<&'a Mutex<BodyState>>,
}

impl Watch<'_> {
    /// Ready when the client has closed its side or the connection broke.
    /// A body still being read is not watched: reading it finds the end.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(reader) = self.reader.as_deref_mut() {
            return reader.poll_closed(cx);
        }
        if let Some(state) = self.lent {
            let mut state = lock(state);
            if state.framing.is_done()
                && let Some(reader) = state.reader.as_mut()
            {
                return reader.poll_closed(cx);
            }
        }
        Poll::Pending
    }

    /// `future`'s output, or `None` when the client closes first (like
    /// nginx, which gives up on a request whose client closed, even half
    /// way). The future is pinned by the caller, so that this one holds a
    /// pointer, not a second copy of a request's state (kilobytes).
    async fn unless_closed<F: Future>(&mut self, mut future: Pin<&mut F>) -> Option<F::Output> {
        std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending => self.poll_closed(cx).map(|()| None),
        })
        .await
    }
}

/// A request head, parsed.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Serves one HTTP/1.x connection until it closes, breaks, idles out, or
/// `shutdown` turns true between requests.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: Arc<Peer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = Some(Reader {
        half: read,
        buf: BytesMut::with_capacity(8 * 1024),
    });
    let mut out = BytesMut::with_capacity(8 * 1024);
    let idle = tokio::time::sleep(IDLE_TIMEOUT);
    tokio::pin!(idle);
    let mut last_response = Instant::now();
    loop {
        let Some(current) = reader.as_mut() else {
            return;
        };
        let head = loop {
            match parse_request(&mut current.buf) {
                Ok(Some(head)) => break head,
                Ok(None) if current.buf.len() >= MAX_HEAD_BYTES => {
                    refuse_head(
                        &mut write,
                        &mut out,
                        HeadError::TooLarge,
                        &shared,
                        peer.addr.ip(),
                    )
                    .await;
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    refuse_head(&mut write, &mut out, error, &shared, peer.addr.ip()).await;
                    return;
                }
            }
            if *shutdown.borrow() && current.buf.is_empty() {
                return;
            }
            tokio::select! {
                biased;
                read = current.read_more() => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = &mut idle => {
                    let deadline = last_response + IDLE_TIMEOUT;
                    if Instant::now() >= deadline {
                        return;
                    }
                    idle.as_mut().reset(deadline);
                }
                _ = shutdown.changed(), if current.buf.is_empty() => return,
            }
        };

        let head_request = head.method == Method::HEAD;
        let http10 = head.version == Version::HTTP_10;
        let mut lent = None;
        let body = if head.framing.is_done() {
            crate::body::RequestBody::Empty
        } else {
            let state = Arc::new(Mutex::new(BodyState {
                reader: reader.take(),
                framing: head.framing,
                // Sent when the body is first asked for: after admission,
                // so a refused caller is not invited to upload its body.
                interim: head.expect_continue.then_some(0),
            }));
            lent = Some(state.clone());
            crate::body::RequestBody::Http1(RequestBody { state })
        };
        let mut request = Request::new(body);
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers;

        let mut watch = Watch {
            reader: reader.as_mut(),
            lent: lent.as_deref(),
        };
        let answered = {
            // Pinned in this block, so that the request's state is gone
            // before the response is written.
            let respond = std::pin::pin!(crate::server::respond(&shared, request, peer.clone()));
            let mut answering = std::pin::pin!(watch.unless_closed(respond));
            // The upstream's interim answers (`103 Early Hints`) are
            // written as they come while the request waits (as much as
            // the socket takes at once); the rest goes before the answer.
            let mut interim = BytesMut::new();
            let answered = std::future::poll_fn(|cx| {
                let polled = answering.as_mut().poll(cx);
                if let Some(heads) = peer.interim.take() {
                    interim.extend_from_slice(&heads);
                }
                if !interim.is_empty()
                    && let Ok(written) = write.try_write(&interim)
                {
                    bytes::Buf::advance(&mut interim, written);
                }
                polled
            })
            .await;
            if !interim.is_empty() && answered.is_some() && write.write_all(&interim).await.is_err()
            {
                return;
            }
            answered
        };
        let Some(mut response) = answered else {
            // The client went away before its answer: the request is
            // dropped (its upstream call with it) and logged as 499.
            return;
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let crate::body::GatewayBody::Upstream(body) = response.body_mut()
            && let Some(upstream) = body.take_upgraded()
        {
            // A protocol upgrade (WebSocket) the upstream accepted: the
            // connection is a tunnel from now on.
            if let Some(client) = reader.take() {
                tunnel(write, client, &mut out, response, upstream).await;
            }
            return;
        }
        // A body left unread (a refusal before it was needed) means the
        // next head cannot be found: say so, and close after the response.
        let body_read = lent
            .as_ref()
            .is_none_or(|state| lock(state).framing.is_done());
        let keep_alive = head.keep_alive && body_read && !*shutdown.borrow();
        let clean = write_response(
            &mut write,
            &mut out,
            response,
            Framed {
                head_request,
                http10,
                keep_alive,
            },
            &mut watch,
        )
        .await;
        if !clean || !keep_alive {
            let _ = write.shutdown().await;
            return;
        }
        if let Some(state) = lent {
            // The next head starts where the body ended.
            reader = lock(&state).reader.take();
        }
        last_response = Instant::now();
    }
}

/// After `101 Switching Protocols`: writes the head, then copies bytes
/// both ways (what the client sent past its head first) until one side
/// closes, and the other within a few seconds after. The response's body
/// (the call's permits, in-flight count and log record) lives as long.
async fn tunnel(
    mut write: OwnedWriteHalf,
    client: Reader,
    out: &mut BytesMut,
    response: Response<GatewayBody>,
    upstream: super::client::Upgraded,
) {
    let (parts, _held) = response.into_parts();
    out.clear();
    out.put_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in &parts.headers {
        super::put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        super::put_header(out, b"date", super::date().as_bytes());
    }
    out.put_slice(b"\r\n");
    if write.write_all(out).await.is_err() {
        return;
    }
    let Reader {
        half: mut client_read,
        buf: read_ahead,
    } = client;
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let to_upstream = async {
        if !read_ahead.is_empty() {
            upstream_write.write_all(&read_ahead).await?;
        }
        tokio::io::copy(&mut client_read, &mut upstream_write).await?;
        upstream_write.shutdown().await
    };
    let to_client = async {
        tokio::io::copy(&mut upstream_read, &mut write).await?;
        write.shutdown().await
    };
    tokio::pin!(to_upstream, to_client);
    tokio::select! {
        _ = &mut to_upstream => {
            let _ = tokio::time::timeout(TUNNEL_LINGER, to_client).await;
        }
        _ = &mut to_client => {
            let _ = tokio::time::timeout(TUNNEL_LINGER, to_upstream).await;
        }
    }
}

/// How long a tunnel's other direction may still run once one has ended.
const TUNNEL_LINGER: Duration = Duration::from_secs(5);

fn lock(state: &Mutex<BodyState>) -> std::sync::MutexGuard<'_, BodyState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Parses a request head at the start of `buf`, taking it off the buffer
/// when complete. `None`: not all of it has arrived.
fn parse_request(buf: &mut BytesMut) -> Result<Option<Head>, HeadError> {
    let mut fields: smallvec::SmallVec<[FieldRanges; 24]> = smallvec::SmallVec::new();
    let mut connection = super::ConnectionTokens::default();
    let mut expect = false;
    let (length, method, target, minor) = {
        let mut storage =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let status = match request.parse_with_uninit_headers(buf, &mut storage) {
            Ok(status) => status,
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        };
        let httparse::Status::Complete(length) = status else {
            return Ok(None);
        };
        let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
            .map_err(|_| HeadError::Malformed)?;
        let target = super::range_in(buf, request.path.unwrap_or("").as_bytes());
        let mut hosts = 0;
        for field in request.headers.iter() {
            connection.read(field.name.as_bytes(), field.value);
            expect |= field.name.eq_ignore_ascii_case("expect");
            if field.name.eq_ignore_ascii_case("host") {
                hosts += 1;
                // RFC 9112 §3.2: an invalid Host is a bad request.
                if !super::valid_host(field.value) {
                    return Err(HeadError::Malformed);
                }
            }
            fields.push((
                super::range_in(buf, field.name.as_bytes()),
                super::range_in(buf, field.value),
            ));
        }
        // RFC 9112 §3.2: more than one `Host` is a bad request (which one
        // a cache or the upstream would take is anyone's guess).
        // And an HTTP/1.1 request without one is too (§3.2).
        if hosts > 1 || (hosts == 0 && request.version == Some(1)) {
            return Err(HeadError::Malformed);
        }
        (length, method, target, request.version.unwrap_or(1))
    };
    let head: Bytes = buf.split_to(length).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| HeadError::Malformed)?;
    // Room for `Host`, the request id, three `X-Forwarded-*` and the
    // caller's identity, added for the upstream.
    let mut headers = super::header_map(&head, &fields, 10, &connection)?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // An absolute-form target (`GET http://host/path`) names the host:
    // `Host` is ignored for it (RFC 9112 §3.2.2), so routing, the
    // forwarded `X-Forwarded-Host` and the logs all see the same host.
    if let Some(authority) = uri.authority() {
        let host = authority.as_str().rsplit('@').next().unwrap_or_default();
        let value = http::HeaderValue::from_str(host).map_err(|_| HeadError::Malformed)?;
        headers.insert(header::HOST, value);
    }
    // Request smuggling: a length that is not exactly one number, a
    // transfer coding other than chunked, or both framings at once.
    let (declared, tidy) = super::declared_framing(&headers)?;
    let framing = match declared {
        Some(Framing::Eof) => return Err(HeadError::BadLength),
        Some(Framing::Chunked(_)) if headers.contains_key(header::CONTENT_LENGTH) => {
            return Err(HeadError::BadLength);
        }
        Some(Framing::Chunked(_)) if version == Version::HTTP_10 => {
            return Err(HeadError::BadLength);
        }
        Some(Framing::Chunked(_)) if !super::only_chunked(&headers) => {
            return Err(HeadError::BadLength);
        }
        Some(framing) => framing,
        None => Framing::Done,
    };
    if !tidy {
        super::normalise_framing(&mut headers, framing);
    }
    let keep_alive = if version == Version::HTTP_10 {
        connection.keep_alive
    } else {
        !connection.close
    };
    let expect_continue = match expect.then(|| headers.remove(header::EXPECT)).flatten() {
        // An HTTP/1.0 client cannot take an interim answer (RFC 9110 §10.1.1).
        Some(value) => {
            version == Version::HTTP_11 && value.as_bytes().eq_ignore_ascii_case(b"100-continue")
        }
        None => false,
    };
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        framing: if framing == Framing::Length(0) {
            Framing::Done
        } else {
            framing
        },
        keep_alive,
        expect_continue,
    }))
}

/// Answers a head that cannot be served, then the caller closes.
async fn refuse_head(
    write: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    error: HeadError,
    shared: &Shared,
    peer: std::net::IpAddr,
) {
    let refusal = match error {
        HeadError::TooLarge => super::headers_too_large(),
        HeadError::Malformed => Refusal::new(
            Code::BadRequest,
            "The request is not valid HTTP/1.1. Check the request line and header syntax.",
        ),
        HeadError::BadLength => Refusal::new(
            Code::BadRequest,
            "The request's body length is ambiguous: send one valid Content-Length or Transfer-Encoding: chunked, not both.",
        ),
    };
    let response = crate::pipeline::unrouted_refusal(refusal, shared, peer, None);
    let framed = Framed {
        head_request: false,
        http10: false,
        keep_alive: false,
    };
    let mut watch = Watch {
        reader: None,
        lent: None,
    };
    let _ = write_response(write, out, response, framed, &mut watch).await;
    let _ = write.shutdown().await;
}

/// How a response is framed for the request it answers.
struct Framed {
    /// A `HEAD` request: the head only.
    head_request: bool,
    /// An HTTP/1.0 client: no chunked encoding.
    http10: bool,
    /// The connection may carry another request after this one.
    keep_alive: bool,
}

/// Writes `response`. Returns whether the connection can carry another
/// request (the body went out whole and framed). While the body makes it
/// wait, it watches the client: a client that closes ends the response
/// (and the upstream's), as a failed write would, only sooner.
async fn write_response(
    write: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    response: Response<GatewayBody>,
    framed: Framed,
    watch: &mut Watch<'_>,
) -> bool {
    let Framed {
        head_request,
        http10,
        keep_alive,
    } = framed;
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.clear();
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    // The upstream's head as it came (when kept raw), less what the
    // gateway replaced, then the gateway's own fields.
    let raw = body.raw_head();
    if let Some(raw) = raw {
        raw.put_lines(out, &parts.headers);
    }
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        super::put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let (raw_date, raw_length) = raw.map_or((false, false), |raw| {
        (raw.has_date(), raw.has_content_length())
    });
    if !raw_date && !parts.headers.contains_key(header::DATE) {
        super::put_header(out, b"date", super::date().as_bytes());
    }
    #[derive(PartialEq)]
    enum Out {
        None,
        Length,
        Chunked,
        UntilClose,
    }
    let framing = if bodiless {
        Out::None
    } else if raw_length || parts.headers.contains_key(header::CONTENT_LENGTH) {
        Out::Length
    } else if let Some(exact) = body.size_hint().exact() {
        out.put_slice(b"content-length: ");
        super::put_decimal(out, exact);
        out.put_slice(b"\r\n");
        Out::Length
    } else if http10 {
        Out::UntilClose
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    };
    let keep_alive = keep_alive && framing != Out::UntilClose;
    if !keep_alive {
        out.put_slice(b"connection: close\r\n");
    } else if http10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
    if framing == Out::None {
        return write.write_all(out).await.is_ok() && keep_alive;
    }
    let mut trailers = None;
    loop {
        // Parts of the body that are ready join the buffer; the socket is
        // written when the body makes us wait (or the buffer is large).
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    if write.write_all(out).await.is_err() {
                        return false;
                    }
                    out.clear();
                }
                match watch.unless_closed(std::pin::pin!(body.frame())).await {
                    Some(frame) => frame,
                    None => return false,
                }
            }
        };
        match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if framing == Out::Chunked {
                        super::put_chunk(out, &data);
                    } else {
                        out.put_slice(&data);
                    }
                }
                // Trailers go after the last chunk; a body sent with a
                // length has nowhere to carry them.
                Err(frame) => {
                    if let Ok(fields) = frame.into_trailers()
                        && framing == Out::Chunked
                    {
                        trailers = Some(fields);
                    }
                }
            },
            Some(Err(error)) => {
                // Too late for an error response: send what came and close,
                // so that the client sees the body cut short.
                tracing::debug!(%error, "response body failed mid-stream");
                let _ = write.write_all(out).await;
                return false;
            }
        }
        if out.len() >= WRITE_BATCH {
            if write.write_all(out).await.is_err() {
                return false;
            }
            out.clear();
        }
    }
    if framing == Out::Chunked {
        match trailers {
            Some(fields) => {
                out.put_slice(b"0\r\n");
                super::put_headers(out, &fields);
                out.put_slice(b"\r\n");
            }
            None => out.put_slice(super::LAST_CHUNK),
        }
    }
    write.write_all(out).await.is_ok() && keep_alive
}

/// What a request body and its connection share.
struct BodyState {
    /// The connection's reader, lent to the body until it has been read.
    reader: Option<Reader>,
    framing: Framing,
    /// `Expect: 100-continue` not yet answered: how much of
    /// [`CONTINUE`] has been written.
    interim: Option<usize>,
}

/// The interim answer to `Expect: 100-continue` (RFC 9110 §10.1.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Writes what is left of [`CONTINUE`] from `sent` on, straight to the
/// socket (the response, which would share the write half, has not
/// started: the request is still being read).
fn poll_continue(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    sent: &mut usize,
) -> Poll<std::io::Result<()>> {
    while *sent < CONTINUE.len() {
        std::task::ready!(stream.poll_write_ready(cx))?;
        match stream.try_write(&CONTINUE[*sent..]) {
            Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => *sent += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
    Poll::Ready(Ok(()))
}

/// A request body read from the client's connection as it is forwarded.
pub struct RequestBody {
    state: Arc<Mutex<BodyState>>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let Some(reader) = state.reader.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(sent) = state.interim.as_mut() {
            // A client that sent its body without waiting needs no
            // invitation (RFC 9110 §10.1.1 lets the server omit it).
            if reader.buf.is_empty() {
                match poll_continue(reader.half.as_ref(), cx, sent) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError(
                            "could not be read: the client's connection broke",
                        )))));
                    }
                }
            }
            state.interim = None;
        }
        loop {
            match state.framing.step(&mut reader.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => return Poll::Ready(None),
                // A client's trailers are not passed on (docs/gateway.md).
                Ok(Step::Trailer(_)) => continue,
                Ok(Step::More) => {}
                Err(_) => {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError(
                        "is malformed (its chunked encoding is invalid)",
                    )))));
                }
            }
            match super::poll_read_more(&mut reader.half, cx, &mut reader.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError(
                        "ended before its declared length: the client closed the connection",
                    )))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError(
                        "could not be read: the client's connection broke",
                    )))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.state).framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match lock(&self.state).framing.exact_len() {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

/// Whether a new connection speaks HTTP/2 with prior knowledge (its first
/// bytes are the connection preface). Waits for the first bytes.
pub(crate) async fn is_http2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut first = [0u8; 14];
    for _ in 0..8 {
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if !PREFACE.starts_with(&first[..n]) => return false,
            Ok(n) if n == PREFACE.len() => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    false
}
