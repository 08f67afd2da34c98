//! A streamed AI answer on its way to the caller: each upstream chunk is
//! translated as it arrives (never buffered whole), usage is read from the
//! events, and the call is charged once — when the stream ends, or when
//! the caller goes away (what was produced so far), or at the service's
//! total timeout. With `money.durability: strict` what closes the caller's
//! stream (the last events, then its end) waits until the charge is
//! committed: a caller that saw the answer complete was charged.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, UpstreamResponseBody};

use super::AiCall;

/// How the upstream's events become the caller's.
pub(crate) enum Mode {
    /// Chat completions and messages, through `ai::StreamTranslator`.
    Translate(Box<ai::StreamTranslator>),
    /// The Responses API, passed through; its `response.completed` event
    /// carries the usage; the output deltas count what was produced.
    Responses(ai::SseParser, Option<ai::Usage>, u64),
}

impl Mode {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        match self {
            Mode::Translate(translator) => translator.push(data, out),
            Mode::Responses(parser, usage, produced) => {
                out.extend_from_slice(data);
                let mut events = Vec::new();
                parser.push(data, &mut events);
                for event in events {
                    if event.data.contains(".delta\"")
                        && let Ok(value) = serde_json::from_str::<serde_json::Value>(&event.data)
                        && let Some(delta) = value["delta"].as_str()
                    {
                        *produced += ai::count_text_tokens(delta);
                    }
                    if !event.data.contains("\"usage\"") {
                        continue;
                    }
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&event.data) {
                        let found = &value["response"]["usage"];
                        if found.is_object() {
                            *usage = Some(ai::Usage {
                                input: found["input_tokens"].as_u64().unwrap_or(0),
                                output: found["output_tokens"].as_u64().unwrap_or(0),
                                cached_input: found["input_tokens_details"]["cached_tokens"]
                                    .as_u64()
                                    .unwrap_or(0),
                                cache_write: 0,
                                reasoning: found["output_tokens_details"]["reasoning_tokens"]
                                    .as_u64()
                                    .unwrap_or(0),
                            });
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if let Mode::Translate(translator) = self {
            translator.finish(out);
        }
    }

    /// The stream broke off: the caller is told so in its dialect (see
    /// `ai::StreamTranslator::abort`), not sent what closes a stream.
    fn abort(&mut self, message: &str, out: &mut Vec<u8>) {
        match self {
            Mode::Translate(translator) => translator.abort(message, out),
            Mode::Responses(..) => {
                let body = serde_json::json!({"type": "error", "code": "upstream_error", "message": message, "param": null});
                out.extend_from_slice(format!("event: error\ndata: {body}\n\n").as_bytes());
            }
        }
    }

    fn usage(&self) -> Option<ai::Usage> {
        match self {
            Mode::Translate(translator) => translator.usage(),
            Mode::Responses(_, usage, _) => *usage,
        }
    }

    fn produced(&self) -> u64 {
        match self {
            Mode::Translate(translator) => translator.produced_tokens(),
            Mode::Responses(_, _, produced) => *produced,
        }
    }

    /// The upstream reported an error inside its stream.
    fn failed(&self) -> bool {
        match self {
            Mode::Translate(translator) => translator.upstream_error().is_some(),
            Mode::Responses(..) => false,
        }
    }

    fn started(&self) -> bool {
        match self {
            Mode::Translate(translator) => translator.started(),
            Mode::Responses(..) => true,
        }
    }

    /// The answer is whole (see `ai::StreamTranslator::complete`; the
    /// Responses API: its `response.completed`, which carries the usage).
    fn complete(&self) -> bool {
        match self {
            Mode::Translate(translator) => translator.complete(),
            Mode::Responses(_, usage, _) => usage.is_some(),
        }
    }

    /// The upstream said the answer is complete (the Responses API: its
    /// `response.completed`, which carries the usage).
    fn closed(&self) -> bool {
        match self {
            Mode::Translate(translator) => translator.closed(),
            Mode::Responses(_, usage, _) => usage.is_some(),
        }
    }
}

/// How a stream came to its end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The provider finished its answer.
    Completed,
    /// The provider's stream broke off, ended unfinished or ran past the
    /// total timeout.
    Broken,
    /// The caller went away first.
    CallerLeft,
}

/// What settling the call needs.
pub(crate) struct Charge {
    /// What the provider's report is clamped to.
    pub bounds: super::Bounds,
    pub reservation: Option<crate::money::Reservation>,
    pub prices: ai::price::Prices,
    pub base_price: i64,
    /// Input tokens as estimated (when the upstream never said).
    pub input: u64,
    /// The call's place in its plan's token quota and limit.
    pub tokens: super::quota::TokenHold,
    pub sink: Option<crate::money::ChargeSink>,
    pub request_id: http::HeaderValue,
    /// `money.durability: strict`.
    pub strict: bool,
}

/// A strict charge on its way to the ledger.
type Commit = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct AiStream {
    inner: UpstreamResponseBody,
    mode: Mode,
    charge: Option<Charge>,
    call: AiCall,
    record: Option<Box<crate::calls::CallRecord>>,
    started: Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    bytes_out: u64,
    /// Strict: the charge being committed, and the last bytes for the
    /// caller, sent once it is.
    commit: Option<Commit>,
    tail: Option<Bytes>,
}

impl AiStream {
    pub(crate) fn new(
        inner: UpstreamResponseBody,
        mode: Mode,
        charge: Charge,
        call: AiCall,
        started: Instant,
        deadline: Instant,
    ) -> Self {
        Self {
            inner,
            mode,
            charge: Some(charge),
            call,
            record: None,
            started,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            done: false,
            bytes_out: 0,
            commit: None,
            tail: None,
        }
    }

    /// The call's log record, finished when the stream ends or is dropped.
    pub(crate) fn log_on_end(&mut self, record: Box<crate::calls::CallRecord>) {
        self.record = Some(record);
    }

    /// Charges the call once: the usage the upstream reported when the
    /// stream `completed`; else at least what was produced. In strict mode
    /// and when `wait`, the charge is committed through [`Self::commit`].
    fn settle(&mut self, ending: Ending, wait: bool) {
        let Some(mut charge) = self.charge.take() else {
            return;
        };
        let completed = ending == Ending::Completed;
        if self.mode.produced() == 0 && (self.mode.failed() || ending == Ending::Broken) {
            // The provider failed inside its stream, or it broke off,
            // before producing anything: like a 5xx, not charged
            // (dropping gives it back). A caller who left is charged.
            if let Some(record) = self.record.as_mut() {
                record.completed = completed;
            }
            return;
        }
        let reported = self.mode.usage();
        let mut usage = reported.unwrap_or_default();
        if usage.input == 0 {
            usage.input = charge.input;
        }
        if !completed || reported.is_none() {
            usage.output = usage.output.max(self.mode.produced());
        }
        let usage = charge.bounds.clamp(usage);
        let cost = charge.base_price + charge.prices.cost(&charge.tokens.settle(&usage));
        self.call.input_tokens = usage.input;
        self.call.output_tokens = usage.output;
        if let Some(mut reservation) = charge.reservation {
            reservation.adjust_to(cost);
            let outcome = crate::money::Outcome {
                status: 200,
                latency_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                tokens: Some(self.call.units(&usage)),
            };
            if wait && charge.strict {
                let (sink, request_id) = (charge.sink, charge.request_id);
                // The record shows the cost at once: a stream's commit is
                // carried on in a task if the stream is dropped (see
                // `Drop`), so the charge lands either way.
                self.commit = Some(Box::pin(async move {
                    reservation
                        .settle_durably(sink.as_ref(), &request_id, outcome, &mut 0)
                        .await;
                }));
            } else {
                reservation.settle(charge.sink.as_ref(), &charge.request_id, outcome);
            }
        }
        if let Some(record) = self.record.as_mut() {
            record.cost_nanos = cost;
            record.completed = completed;
        }
    }

    /// Ends the stream with `out` and what closes it (or, broken off, an
    /// error event saying `why`); charges the call. The last frame to send,
    /// unless it waits for the commit ([`Self::tail`]).
    fn end(&mut self, ending: Ending, mut out: Vec<u8>, why: &str) -> Option<Bytes> {
        self.done = true;
        if ending == Ending::Broken {
            self.mode.abort(why, &mut out);
        } else {
            self.mode.finish(&mut out);
        }
        self.settle(ending, true);
        self.bytes_out += out.len() as u64;
        let last = (!out.is_empty()).then(|| Bytes::from(out));
        if self.commit.is_some() {
            self.tail = last;
            return None;
        }
        last
    }
}

impl Drop for AiStream {
    fn drop(&mut self) {
        // The caller went away (or the stream ended): charge what was
        // produced, then log. Nobody waits for the commit any more, but a
        // charge on its way to the ledger still gets there.
        if let Some(commit) = self.commit.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            tracing::info!(
                "a caller went away while its stream's charge was being committed; the commit goes on"
            );
            runtime.spawn(commit);
        }
        self.settle(Ending::CallerLeft, false);
        if let Some(mut record) = self.record.take() {
            record.bytes_out = self.bytes_out;
            record.ai = Some(Box::new(std::mem::take(&mut self.call)));
            record.finish();
        }
    }
}

impl Body for AiStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(commit) = this.commit.as_mut() {
                if commit.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.commit = None;
                if let Some(tail) = this.tail.take() {
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            // What closes the stream; `None` when it waits for the commit
            // (polled at the top of the loop).
            let last = if this.deadline.as_mut().poll(cx).is_ready() {
                this.end(
                    Ending::Broken,
                    Vec::new(),
                    "The provider did not finish its answer within the service's total timeout.",
                )
            } else {
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => {
                        let Some(data) = frame.data_ref() else {
                            continue;
                        };
                        let mut out = Vec::new();
                        this.mode.push(data, &mut out);
                        if this.call.ttft.is_none() && this.mode.started() {
                            this.call.ttft = Some(this.started.elapsed());
                        }
                        if this.mode.closed() && this.charge.as_ref().is_some_and(|c| c.strict) {
                            // Strict: the closing events wait for the commit.
                            this.end(Ending::Completed, out, "")
                        } else if out.is_empty() {
                            continue;
                        } else {
                            this.bytes_out += out.len() as u64;
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        tracing::debug!(%error, "provider stream broke off");
                        this.end(
                            Ending::Broken,
                            Vec::new(),
                            "The provider's stream broke off before the answer was complete.",
                        )
                    }
                    // The upstream ended its stream: complete when it closed
                    // it as its API says, or said why it stopped and
                    // reported usage (Gemini's streams just end), with no
                    // error on the way.
                    Poll::Ready(None) if this.mode.complete() => {
                        this.end(Ending::Completed, Vec::new(), "")
                    }
                    Poll::Ready(None) => this.end(
                        Ending::Broken,
                        Vec::new(),
                        "The provider ended its stream without completing the answer.",
                    ),
                }
            };
            if this.commit.is_none() {
                return Poll::Ready(last.map(|data| Ok(Frame::data(data))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.commit.is_none() && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
