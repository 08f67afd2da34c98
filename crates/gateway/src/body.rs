//! Bodies that stream both ways without buffering.
//!
//! - [`UpstreamRequestBody`]: what goes to the upstream: nothing, bytes
//!   buffered for a replayable retry, or the client's body streamed through
//!   a byte limit ([`LimitedBody`]).
//! - [`GatewayBody`]: what goes to the client: a small generated body (a
//!   refusal, a health answer) or the upstream's body streamed through
//!   ([`UpstreamResponseBody`]), which holds the target's in-flight count
//!   until the last byte and enforces the idle read timeout between chunks.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::client::ResponseBody;
use crate::h1::RawHead;
use crate::upstream::TargetState;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body grew past the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The client's request body failed on the client's side: malformed (a
/// bad chunk), or cut short (the client closed or broke the connection
/// before its end). Not the upstream's doing: no try of it is counted
/// against the target.
#[derive(Debug, thiserror::Error)]
#[error("the request body {0}")]
pub struct ClientBodyError(pub &'static str);

/// The client's body had not all arrived when the time for it was up.
#[derive(Debug, thiserror::Error)]
#[error("the request body was still arriving after {0:?}")]
pub struct BodyStalled(pub Duration);

/// No data for longer than the upstream's read timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub struct IdleTimeout(pub Duration);

/// A client's request body, as the server that read the request gives it.
pub enum RequestBody {
    Empty,
    /// Made by the gateway itself (an MCP tool call's HTTP request).
    Full(Option<Bytes>),
    /// HTTP/2 (hyper's server).
    Hyper(Incoming),
    Http1(crate::h1::server::RequestBody),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            // On the server's side a body error is the client's doing (its
            // stream reset, its connection gone): never the target's.
            RequestBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(|_| {
                Box::new(ClientBodyError(
                    "could not be read: the client reset its stream or its connection broke",
                )) as BoxError
            }),
            RequestBody::Http1(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(data) => data.is_none(),
            RequestBody::Hyper(body) => body.is_end_stream(),
            RequestBody::Http1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Hyper(body) => body.size_hint(),
            RequestBody::Http1(body) => body.size_hint(),
        }
    }
}

/// The client's body, cut off with [`BodyTooLarge`] past `limit` bytes.
pub struct LimitedBody {
    inner: RequestBody,
    limit: u64,
    seen: u64,
    /// Where the body's first bytes are copied for the call log.
    tap: Option<crate::calls::Tap>,
    /// Told whether the body waits for the client, for a streamed body.
    progress: Option<Arc<BodyProgress>>,
}

/// Where a streamed request body stands, shared with the forward phase:
/// while it arrives, a try waits for the client's next bytes (a client
/// that stops sending is the client's fault, 408), and the wait for the
/// upstream's answer starts once it has all arrived.
#[derive(Debug)]
pub struct BodyProgress {
    state: std::sync::atomic::AtomicU8,
    started: std::time::Instant,
    /// When bytes last arrived (or the body ended), in ms from `started`.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for BodyProgress {
    fn default() -> Self {
        Self {
            state: std::sync::atomic::AtomicU8::new(Self::FLOWING),
            started: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl BodyProgress {
    const FLOWING: u8 = 0;
    const WAITING_FOR_CLIENT: u8 = 1;
    const ENDED: u8 = 2;

    /// The last read of the body found the client had sent nothing more.
    pub fn waiting_for_client(&self) -> bool {
        self.state.load(Ordering::Relaxed) == Self::WAITING_FOR_CLIENT
    }

    /// The whole body has been read.
    pub fn ended(&self) -> bool {
        self.state.load(Ordering::Relaxed) == Self::ENDED
    }

    /// When bytes last arrived, or the body ended.
    pub fn last_progress(&self) -> std::time::Instant {
        self.started + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
        if state != Self::WAITING_FOR_CLIENT {
            let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }
}

impl LimitedBody {
    pub fn new(inner: RequestBody, limit: u64) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            tap: None,
            progress: None,
        }
    }

    /// Keeps `progress` told whether the body waits for the client.
    pub(crate) fn watched(mut self, progress: Arc<BodyProgress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Copies the body's first bytes into `tap` as it streams.
    pub(crate) fn tapped(mut self, tap: Option<crate::calls::Tap>) -> Self {
        self.tap = tap;
        self
    }

    /// Reads the whole body into memory (for small, replayable bodies),
    /// as long as its bytes keep coming: nothing for `idle` is
    /// [`BodyStalled`].
    pub async fn collect_while_coming(
        mut self,
        idle: std::time::Duration,
    ) -> Result<Bytes, BoxError> {
        use http_body_util::BodyExt;
        let mut collected = bytes::BytesMut::new();
        loop {
            match tokio::time::timeout(idle, self.frame()).await {
                Err(_) => return Err(Box::new(BodyStalled(idle))),
                Ok(None) => return Ok(collected.freeze()),
                Ok(Some(frame)) => {
                    if let Ok(data) = frame?.into_data() {
                        collected.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Reads the whole body into memory (for small, replayable bodies),
    /// unless the client is still sending it at `deadline`
    /// ([`BodyStalled`]).
    pub async fn collect_by(self, deadline: std::time::Instant) -> Result<Bytes, BoxError> {
        use http_body_util::BodyExt;
        let started = std::time::Instant::now();
        match tokio::time::timeout_at(deadline.into(), BodyExt::collect(self)).await {
            Ok(collected) => Ok(collected?.to_bytes()),
            Err(_) => Err(Box::new(BodyStalled(
                deadline.saturating_duration_since(started),
            ))),
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(progress) = &this.progress {
            progress.set(match &polled {
                Poll::Pending => BodyProgress::WAITING_FOR_CLIENT,
                Poll::Ready(Some(Ok(_))) if !this.inner.is_end_stream() => BodyProgress::FLOWING,
                Poll::Ready(_) => BodyProgress::ENDED,
            });
        }
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(tap) = &this.tap {
                        tap.copy(data);
                    }
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body sent to an upstream.
pub enum UpstreamRequestBody {
    Empty,
    Full(Option<Bytes>),
    Stream(LimitedBody),
}

impl UpstreamRequestBody {
    /// Whether the body can be sent again (it is not a stream).
    pub fn is_replayable(&self) -> bool {
        !matches!(self, UpstreamRequestBody::Stream(_))
    }
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamRequestBody::Empty => Poll::Ready(None),
            UpstreamRequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamRequestBody::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamRequestBody::Empty => true,
            UpstreamRequestBody::Full(data) => data.is_none(),
            UpstreamRequestBody::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamRequestBody::Empty => SizeHint::with_exact(0),
            UpstreamRequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamRequestBody::Stream(body) => body.size_hint(),
        }
    }
}

/// Counts a request in flight on a target until dropped.
pub struct InFlight(Arc<TargetState>);

impl InFlight {
    pub fn start(state: &Arc<TargetState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream's response body on its way to the client. When it has been
/// read to the end, its HTTP/1.1 connection goes back to the pool.
pub struct UpstreamResponseBody {
    inner: ResponseBody,
    _in_flight: Option<InFlight>,
    /// Slots among a caller's requests in flight, freed with the body.
    _permits: Vec<crate::limit::Permit>,
    idle_timeout: Duration,
    /// Armed when the upstream makes us wait; reset by each chunk.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the upstream first made us wait for the body (the time from
    /// then to its end is the upstream's, not the gateway's).
    waiting_since: Option<tokio::time::Instant>,
    /// The call's log record, finished when the body ends or is dropped.
    log: LogOnEnd,
    /// The route's response cache, keeping a copy of this answer.
    fill: Option<Box<crate::cache::Fill>>,
}

/// A call record finished (bytes sent, total latency) when dropped.
#[derive(Default)]
struct LogOnEnd(Option<Box<crate::calls::CallRecord>>);

impl Drop for LogOnEnd {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            record.finish();
        }
    }
}

impl UpstreamResponseBody {
    pub fn new(inner: ResponseBody, in_flight: Option<InFlight>, idle_timeout: Duration) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
            _permits: Vec::new(),
            idle_timeout,
            idle: None,
            waiting_since: None,
            log: LogOnEnd::default(),
            fill: None,
        }
    }

    /// Copies the body into the response cache as it passes; stored if
    /// it ends whole.
    pub(crate) fn filling(mut self, fill: Option<Box<crate::cache::Fill>>) -> Self {
        match fill {
            // No body to wait for (a 204, an empty answer): kept now.
            Some(fill) if self.inner.is_end_stream() => fill.finish(),
            fill => self.fill = fill,
        }
        self
    }

    /// Finishes `record` when the body ends or is dropped.
    pub(crate) fn log_on_end(&mut self, record: Box<crate::calls::CallRecord>) {
        self.log.0 = Some(record);
    }

    /// After `101 Switching Protocols`: the upstream connection, for the
    /// tunnel. The body (its permits, its in-flight count, its log record)
    /// is kept until the tunnel closes.
    pub(crate) fn take_upgraded(&mut self) -> Option<crate::h1::client::Upgraded> {
        self.inner.take_upgraded()
    }

    /// Holds the caller's concurrency permits until the body ends.
    pub fn with_permits(mut self, permits: Vec<crate::limit::Permit>) -> Self {
        self._permits = permits;
        self
    }
}

impl RawHeaded for UpstreamResponseBody {
    fn raw_head(&self) -> Option<&RawHead> {
        self.inner.raw_head()
    }

    fn take_raw_head(&mut self) -> Option<Box<RawHead>> {
        self.inner.take_raw_head()
    }

    fn raw_head_mut(&mut self) -> Option<&mut RawHead> {
        self.inner.raw_head_mut()
    }
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(fill) = this.fill.as_mut() {
                    match &frame {
                        Some(Ok(frame)) if frame.is_data() => {
                            fill.push(frame.data_ref().map_or(&[][..], |data| &data[..]));
                            if this.inner.is_end_stream()
                                && let Some(fill) = this.fill.take()
                            {
                                fill.finish();
                            }
                        }
                        None => {
                            if let Some(fill) = this.fill.take() {
                                fill.finish();
                            }
                        }
                        // Trailers (not kept) or a broken body.
                        Some(_) => this.fill = None,
                    }
                }
                if let Some(record) = this.log.0.as_mut() {
                    match &frame {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                record.bytes_out += data.len() as u64;
                                if let Some(capture) = record.capture.as_mut() {
                                    capture.response_body.push(data, capture.limit);
                                }
                            }
                            record.completed = this.inner.is_end_stream();
                        }
                        None => record.completed = true,
                        Some(Err(_)) => {}
                    }
                }
                if let Some(idle) = this.idle.as_mut() {
                    // Only a body that made us wait reads the clock here.
                    let now = tokio::time::Instant::now();
                    idle.as_mut().reset(now + this.idle_timeout);
                    if let (Some(record), Some(since)) = (this.log.0.as_mut(), this.waiting_since)
                        && (record.completed || frame.is_none())
                    {
                        record.upstream_body = Some(now.saturating_duration_since(since));
                    }
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = this.idle_timeout;
                let waiting_since = &mut this.waiting_since;
                let idle = this.idle.get_or_insert_with(|| {
                    let now = tokio::time::Instant::now();
                    *waiting_since = Some(now);
                    Box::pin(tokio::time::sleep_until(now + timeout))
                });
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeout(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of every gateway response.
pub enum GatewayBody {
    Full(Option<Bytes>),
    Upstream(UpstreamResponseBody),
    /// A streamed AI answer, translated and metered as it goes.
    Ai(Box<crate::ai::AiStream>),
    /// A stream the gateway writes itself (MCP's SSE streams).
    Stream(Pin<Box<dyn futures_util::Stream<Item = Bytes> + Send>>),
}

impl GatewayBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        GatewayBody::Full(Some(data.into()))
    }

    pub fn empty() -> Self {
        GatewayBody::Full(None)
    }
}

impl RawHeaded for GatewayBody {
    fn raw_head(&self) -> Option<&RawHead> {
        match self {
            GatewayBody::Upstream(body) => body.raw_head(),
            _ => None,
        }
    }

    fn take_raw_head(&mut self) -> Option<Box<RawHead>> {
        match self {
            GatewayBody::Upstream(body) => body.take_raw_head(),
            _ => None,
        }
    }

    fn raw_head_mut(&mut self) -> Option<&mut RawHead> {
        match self {
            GatewayBody::Upstream(body) => body.raw_head_mut(),
            _ => None,
        }
    }
}

/// A response body that may carry its upstream's head raw
/// ([`RawHead`]): the response's map then holds only what the gateway set.
pub trait RawHeaded {
    fn raw_head(&self) -> Option<&RawHead>;
    fn take_raw_head(&mut self) -> Option<Box<RawHead>>;
    fn raw_head_mut(&mut self) -> Option<&mut RawHead>;
}

/// Folds a raw upstream head into the response's map: the upstream's
/// fields, then what the gateway set, which replaces the upstream's
/// fields of the same name. For code that reads, removes or records the
/// upstream's headers (and for HTTP/2 clients, whose server takes a map).
pub fn materialize<B: RawHeaded>(response: &mut http::Response<B>) {
    let Some(mut raw) = response.body_mut().take_raw_head() else {
        return;
    };
    let request_id = raw.request_id.take();
    let own = std::mem::take(response.headers_mut());
    let mut headers = raw.to_map(own.len() + 4, false);
    let mut last = None;
    for (name, value) in own {
        match name {
            Some(name) => {
                headers.insert(name.clone(), value);
                last = Some(name);
            }
            None => {
                if let Some(name) = &last {
                    headers.append(name.clone(), value);
                }
            }
        }
    }
    if let Some(id) = request_id {
        headers.insert(http::HeaderName::from_static("x-request-id"), id);
    }
    *response.headers_mut() = headers;
}

/// Whether the response has a header named `name` (lowercase), in its
/// map or in its raw upstream head.
pub fn has_header<B: RawHeaded>(response: &http::Response<B>, name: &http::HeaderName) -> bool {
    response.headers().contains_key(name)
        || response
            .body()
            .raw_head()
            .is_some_and(|raw| raw.contains(name.as_str()))
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Ai(body) => Pin::new(&mut **body).poll_frame(cx),
            GatewayBody::Stream(stream) => stream
                .as_mut()
                .poll_next(cx)
                .map(|item| item.map(|data| Ok(Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(data) => data.is_none(),
            GatewayBody::Upstream(body) => body.is_end_stream(),
            GatewayBody::Ai(body) => body.is_end_stream(),
            GatewayBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            GatewayBody::Upstream(body) => body.size_hint(),
            GatewayBody::Ai(body) => body.size_hint(),
            GatewayBody::Stream(_) => SizeHint::default(),
        }
    }
}
