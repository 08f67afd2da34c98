//! Fake LLM providers that speak each provider's own wire format:
//! [`FakeOpenAi`], [`FakeAnthropic`] and [`FakeGemini`].
//!
//! All three are one server, [`FakeProvider`], with a different dialect.
//! The server records every request ([`Recorded`]) and answers from a
//! queue of scripted [`Reply`]s, one per model call; when the queue is empty
//! it answers `"Hello from <name>"` with [`DEFAULT_USAGE`]. The dialect
//! renders the reply: JSON bodies, SSE streams (event order, where usage
//! goes), ids, headers and error shapes as each provider documents them.
//!
//! | | OpenAI | Anthropic | Gemini |
//! |---|---|---|---|
//! | [`FakeProvider::url`] | `http://127.0.0.1:P/v1` | `http://127.0.0.1:P` | `http://127.0.0.1:P/v1beta` |
//! | credential | `Authorization: Bearer K` | `x-api-key: K` (and `anthropic-version` required) | `x-goog-api-key: K` or `?key=K` |
//! | model calls (take a reply) | `POST /v1/chat/completions`, `/v1/responses`, `/v1/embeddings` | `POST /v1/messages` | `POST /v1beta/models/{m}:generateContent`, `:streamGenerateContent` |
//! | other endpoints (no reply taken) | `GET /v1/models`, `/v1/models/{id}` | `POST /v1/messages/count_tokens`, `GET /v1/models` | `POST …:countTokens`, `GET /v1beta/models` |
//! | wrong key | 401 `invalid_api_key` | 401 `authentication_error` | 400 `INVALID_ARGUMENT` (`API_KEY_INVALID`) |
//! | missing key | 401, `code: null` | 401 `authentication_error` | 403 `PERMISSION_DENIED` |
//!
//! [`Usage`] holds provider-neutral counts (`input` includes cached prompt
//! tokens, `output` includes reasoning tokens); each dialect maps them to
//! its own fields (Anthropic's `input_tokens` excludes cache reads and
//! writes; Gemini's `candidatesTokenCount` excludes `thoughtsTokenCount`).
//!
//! Knobs for failure tests: per-key 429s ([`FakeProvider::rate_limit_key`]),
//! a delay before the response head ([`FakeProvider::set_response_delay_ms`]),
//! a delay between stream events ([`FakeProvider::set_chunk_delay_ms`]), and
//! streams that stop sending and hold the connection open
//! ([`FakeProvider::hang_after`]) while the server counts clients that went
//! away ([`FakeProvider::disconnects`]).

mod anthropic;
mod gemini;
mod openai;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

type Body = BoxBody<Bytes, Infallible>;

/// Request bodies larger than this are refused with 413 (before any dialect
/// sees them).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Requests kept for [`FakeProvider::requests`]; older ones are dropped
/// (`hits` still counts them).
const MAX_RECORDED: usize = 10_000;
/// Scripted replies that may wait in the queue.
const MAX_QUEUED_REPLIES: usize = 10_000;
/// `hang_after` value meaning "never hang".
const NO_HANG: usize = usize::MAX;
/// Retry-after of [`FakeProvider::rate_limit_key`].
const DEFAULT_RETRY_AFTER_S: u64 = 1;

/// Token counts of one reply, provider-neutral. Each dialect maps them to
/// its own fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub input: u64,
    /// All generated tokens, reasoning included.
    pub output: u64,
    /// Prompt tokens read from the provider's cache (a part of `input`).
    pub cached_input: u64,
    /// Prompt tokens written to the cache (a part of `input`). Only
    /// Anthropic reports them (`cache_creation_input_tokens`).
    pub cache_write_input: u64,
    /// Reasoning ("thinking") tokens (a part of `output`).
    pub reasoning: u64,
}

impl Usage {
    pub const fn new(input: u64, output: u64) -> Self {
        Usage {
            input,
            output,
            cached_input: 0,
            cache_write_input: 0,
            reasoning: 0,
        }
    }

    pub const fn with_cached_input(mut self, tokens: u64) -> Self {
        self.cached_input = tokens;
        self
    }

    pub const fn with_cache_write_input(mut self, tokens: u64) -> Self {
        self.cache_write_input = tokens;
        self
    }

    pub const fn with_reasoning(mut self, tokens: u64) -> Self {
        self.reasoning = tokens;
        self
    }

    pub const fn total(&self) -> u64 {
        self.input + self.output
    }

    /// Prompt tokens neither read from nor written to the cache
    /// (Anthropic's `input_tokens`).
    pub(crate) fn uncached_input(&self) -> u64 {
        self.input
            .saturating_sub(self.cached_input)
            .saturating_sub(self.cache_write_input)
    }

    /// Output tokens that are not reasoning (Gemini's
    /// `candidatesTokenCount`).
    pub(crate) fn visible_output(&self) -> u64 {
        self.output.saturating_sub(self.reasoning)
    }
}

/// The usage of the default reply.
pub const DEFAULT_USAGE: Usage = Usage::new(10, 5);

/// Why a scripted error reply fails. The dialect picks the status (unless
/// the reply names one) and renders its own body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429 with `retry-after` (OpenAI, Anthropic) or a `RetryInfo` detail
    /// (Gemini).
    RateLimited { retry_after_s: u64 },
    /// 500.
    Server,
    /// Anthropic 529 `overloaded_error`; OpenAI and Gemini 503.
    Overloaded,
    /// 400: the prompt is longer than the model's context window.
    ContextLength,
    /// 400 with this message.
    InvalidRequest { message: String },
    /// The provider's answer to a wrong key (as if the key were revoked).
    InvalidKey,
}

/// One scripted answer to one model call.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A text answer that ends normally (`stop`, `end_turn`, `STOP`).
    Text { text: String, usage: Usage },
    /// A text answer cut by the output limit (`length`, `max_tokens`,
    /// `MAX_TOKENS`; Responses API: `incomplete`).
    Truncated { text: String, usage: Usage },
    /// Tool calls (parallel when several), each `(name, arguments as a
    /// JSON string)`, optionally after some text.
    ToolCalls {
        calls: Vec<(String, String)>,
        text: Option<String>,
        usage: Usage,
    },
    /// An error before any response byte; `status` overrides the
    /// dialect's usual status for `kind`.
    Error {
        status: Option<u16>,
        kind: ErrorKind,
    },
}

impl Reply {
    pub fn text(text: &str, usage: Usage) -> Self {
        Reply::Text {
            text: text.to_owned(),
            usage,
        }
    }

    pub fn truncated(text: &str, usage: Usage) -> Self {
        Reply::Truncated {
            text: text.to_owned(),
            usage,
        }
    }

    /// Tool calls without text: `[("get_weather", r#"{"city":"Paris"}"#)]`.
    pub fn tool_calls(calls: &[(&str, &str)], usage: Usage) -> Self {
        Reply::ToolCalls {
            calls: calls
                .iter()
                .map(|(name, arguments)| ((*name).to_owned(), (*arguments).to_owned()))
                .collect(),
            text: None,
            usage,
        }
    }

    /// An error with the dialect's usual status for `kind`.
    pub fn error(kind: ErrorKind) -> Self {
        Reply::Error { status: None, kind }
    }

    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self::error(ErrorKind::RateLimited { retry_after_s })
    }

    pub fn server_error() -> Self {
        Self::error(ErrorKind::Server)
    }

    pub fn overloaded() -> Self {
        Self::error(ErrorKind::Overloaded)
    }

    pub fn context_length_exceeded() -> Self {
        Self::error(ErrorKind::ContextLength)
    }

    pub fn invalid_request(message: &str) -> Self {
        Self::error(ErrorKind::InvalidRequest {
            message: message.to_owned(),
        })
    }

    pub(crate) fn into_answer(self) -> Result<Answer, Failure> {
        match self {
            Reply::Text { text, usage } => Ok(Answer {
                text: Some(text),
                calls: Vec::new(),
                usage,
                finish: Finish::Stop,
            }),
            Reply::Truncated { text, usage } => Ok(Answer {
                text: Some(text),
                calls: Vec::new(),
                usage,
                finish: Finish::Length,
            }),
            Reply::ToolCalls { calls, text, usage } => {
                let finish = if calls.is_empty() {
                    Finish::Stop
                } else {
                    Finish::ToolCalls
                };
                Ok(Answer {
                    text,
                    calls,
                    usage,
                    finish,
                })
            }
            Reply::Error { status, kind } => Err(Failure { status, kind }),
        }
    }
}

/// A request as the fake received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string, `""` when there is none.
    pub query: String,
    /// Header names in lower case; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON; `Null` when it is empty or not JSON.
    pub body: Value,
    /// The credential the request carried, in the dialect's place for it.
    pub key: Option<String>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// A decoded query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }
}

/// Marker of the OpenAI dialect.
pub enum OpenAi {}
/// Marker of the Anthropic dialect.
pub enum Anthropic {}
/// Marker of the Gemini dialect.
pub enum Gemini {}

pub type FakeOpenAi = FakeProvider<OpenAi>;
pub type FakeAnthropic = FakeProvider<Anthropic>;
pub type FakeGemini = FakeProvider<Gemini>;

/// A running fake provider on 127.0.0.1; stops (and closes its
/// connections) when dropped.
pub struct FakeProvider<D> {
    pub addr: SocketAddr,
    core: Arc<Core>,
    task: tokio::task::JoinHandle<()>,
    _dialect: PhantomData<fn() -> D>,
}

impl<D> Drop for FakeProvider<D> {
    fn drop(&mut self) {
        self.core.shutdown.send_replace(true);
        self.task.abort();
    }
}

impl FakeProvider<OpenAi> {
    /// Starts a fake OpenAI named `FakeOpenAi`.
    pub async fn start() -> Self {
        Self::start_named(openai::DIALECT.default_name).await
    }

    /// Starts a fake OpenAI whose default reply says `Hello from {name}`.
    pub async fn start_named(name: &str) -> Self {
        Self::spawn(name, openai::DIALECT).await
    }
}

impl FakeProvider<Anthropic> {
    /// Starts a fake Anthropic named `FakeAnthropic`.
    pub async fn start() -> Self {
        Self::start_named(anthropic::DIALECT.default_name).await
    }

    pub async fn start_named(name: &str) -> Self {
        Self::spawn(name, anthropic::DIALECT).await
    }
}

impl FakeProvider<Gemini> {
    /// Starts a fake Gemini named `FakeGemini`.
    pub async fn start() -> Self {
        Self::start_named(gemini::DIALECT.default_name).await
    }

    pub async fn start_named(name: &str) -> Self {
        Self::spawn(name, gemini::DIALECT).await
    }
}

impl<D> FakeProvider<D> {
    #[allow(
        clippy::expect_used,
        reason = "a test fixture that cannot bind loopback cannot run at all"
    )]
    async fn spawn(name: &str, dialect: Dialect) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let core = Arc::new(Core::new(name, dialect, addr));
        let shared = core.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_connection(shared.clone(), stream));
            }
        });
        FakeProvider {
            addr,
            core,
            task,
            _dialect: PhantomData,
        }
    }

    /// The base URL a provider is configured with (see the module table).
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.core.dialect.base_path)
    }

    /// `http://127.0.0.1:P`, without the dialect's base path.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The name the default reply greets with.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Accepts only these keys (an empty list accepts none).
    pub fn set_keys(&self, keys: &[&str]) {
        *lock(&self.core.keys) = Some(keys.iter().map(|key| (*key).to_owned()).collect());
    }

    /// Accepts any non-empty key again (the default).
    pub fn accept_any_key(&self) {
        *lock(&self.core.keys) = None;
    }

    /// Every request with `key` gets the dialect's 429 (retry after 1 s)
    /// until [`FakeProvider::clear_rate_limits`]; no reply is taken.
    pub fn rate_limit_key(&self, key: &str) {
        self.rate_limit_key_for(key, DEFAULT_RETRY_AFTER_S);
    }

    /// Like [`FakeProvider::rate_limit_key`], with this retry-after.
    pub fn rate_limit_key_for(&self, key: &str, retry_after_s: u64) {
        lock(&self.core.limited_keys).insert(key.to_owned(), retry_after_s);
    }

    pub fn clear_rate_limits(&self) {
        lock(&self.core.limited_keys).clear();
    }

    /// Queues a reply for the next model call (see the module table).
    /// Requests refused before the model (key, per-key 429, a malformed
    /// body) take none, and neither do count-tokens and model lists.
    pub fn push(&self, reply: Reply) {
        let mut replies = lock(&self.core.replies);
        assert!(
            replies.len() < MAX_QUEUED_REPLIES,
            "more than {MAX_QUEUED_REPLIES} scripted replies queued"
        );
        replies.push_back(reply);
    }

    /// Scripted replies not yet taken.
    pub fn pending_replies(&self) -> usize {
        lock(&self.core.replies).len()
    }

    pub fn clear_replies(&self) {
        lock(&self.core.replies).clear();
    }

    /// Requests received (the last 10 000), oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.core.requests).iter().cloned().collect()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.core.requests).back().cloned()
    }

    /// Requests received, whatever their answer.
    pub fn hits(&self) -> usize {
        self.core.hits.load(Ordering::SeqCst)
    }

    pub fn clear_requests(&self) {
        lock(&self.core.requests).clear();
        self.core.hits.store(0, Ordering::SeqCst);
    }

    /// Delay between two stream events (default 0).
    pub fn set_chunk_delay_ms(&self, ms: u64) {
        self.core.chunk_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Delay before the response head of every request (default 0).
    pub fn set_response_delay_ms(&self, ms: u64) {
        self.core.response_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Streams send at most `events` SSE events (Gemini's JSON-array
    /// streams: elements), then hold the connection open, sending nothing,
    /// until the client goes away (counted in
    /// [`FakeProvider::disconnects`]). Applies to every later stream until
    /// [`FakeProvider::no_hang`]. Non-streamed answers are not affected.
    pub fn hang_after(&self, events: usize) {
        self.core.hang_after.store(events, Ordering::SeqCst);
    }

    pub fn no_hang(&self) {
        self.core.hang_after.store(NO_HANG, Ordering::SeqCst);
    }

    /// Streams whose client went away before the stream's end.
    pub fn disconnects(&self) -> usize {
        self.core.disconnects.load(Ordering::SeqCst)
    }

    /// Waits until [`FakeProvider::disconnects`] reaches `count`; false
    /// after `timeout_ms`.
    pub async fn wait_for_disconnects(&self, count: usize, timeout_ms: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if self.disconnects() >= count {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Streams sent to their end.
    pub fn streams_completed(&self) -> usize {
        self.core.streams_completed.load(Ordering::SeqCst)
    }

    /// The models the list endpoints name.
    pub fn set_models(&self, models: &[&str]) {
        *lock(&self.core.models) = models.iter().map(|model| (*model).to_owned()).collect();
    }
}

/// The parts that make a dialect: where the key is, and how to answer.
#[derive(Clone, Copy)]
pub(crate) struct Dialect {
    pub(crate) default_name: &'static str,
    pub(crate) base_path: &'static str,
    pub(crate) default_models: &'static [&'static str],
    pub(crate) key: fn(&BTreeMap<String, String>, &str) -> Option<String>,
    pub(crate) respond: fn(&Arc<Core>, &Call) -> Response<Body>,
}

/// A request handed to a dialect.
pub(crate) struct Call {
    pub(crate) recorded: Recorded,
    /// The body was not empty and not JSON.
    pub(crate) json_error: bool,
}

impl Call {
    pub(crate) fn body(&self) -> &Value {
        &self.recorded.body
    }

    pub(crate) fn str_field(&self, name: &str) -> Option<&str> {
        self.recorded.body.get(name).and_then(Value::as_str)
    }

    pub(crate) fn bool_field(&self, name: &str) -> bool {
        self.recorded
            .body
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

pub(crate) enum KeyCheck {
    Missing,
    Invalid,
    Accepted,
}

/// What an answer says, whatever the dialect.
pub(crate) struct Answer {
    pub(crate) text: Option<String>,
    pub(crate) calls: Vec<(String, String)>,
    pub(crate) usage: Usage,
    pub(crate) finish: Finish,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
    ToolCalls,
}

/// A scripted error: the status override and the kind.
pub(crate) struct Failure {
    pub(crate) status: Option<u16>,
    pub(crate) kind: ErrorKind,
}

/// The fake's shared state.
pub(crate) struct Core {
    pub(crate) name: String,
    pub(crate) dialect: Dialect,
    requests: Mutex<VecDeque<Recorded>>,
    hits: AtomicUsize,
    replies: Mutex<VecDeque<Reply>>,
    /// `None`: any non-empty key.
    keys: Mutex<Option<Vec<String>>>,
    /// Rate-limited keys and their retry-after in seconds.
    limited_keys: Mutex<HashMap<String, u64>>,
    chunk_delay_ms: AtomicU64,
    response_delay_ms: AtomicU64,
    hang_after: AtomicUsize,
    disconnects: AtomicUsize,
    streams_completed: AtomicUsize,
    pub(crate) models: Mutex<Vec<String>>,
    /// State of the id generator (splitmix64).
    id_state: AtomicU64,
    /// A `system_fingerprint` fixed for the fake's life.
    pub(crate) fingerprint: String,
    shutdown: tokio::sync::watch::Sender<bool>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    fn new(name: &str, dialect: Dialect, addr: SocketAddr) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64)
            ^ (u64::from(addr.port()) << 48);
        let core = Core {
            name: name.to_owned(),
            dialect,
            requests: Mutex::new(VecDeque::new()),
            hits: AtomicUsize::new(0),
            replies: Mutex::new(VecDeque::new()),
            keys: Mutex::new(None),
            limited_keys: Mutex::new(HashMap::new()),
            chunk_delay_ms: AtomicU64::new(0),
            response_delay_ms: AtomicU64::new(0),
            hang_after: AtomicUsize::new(NO_HANG),
            disconnects: AtomicUsize::new(0),
            streams_completed: AtomicUsize::new(0),
            models: Mutex::new(
                dialect
                    .default_models
                    .iter()
                    .map(|model| (*model).to_owned())
                    .collect(),
            ),
            id_state: AtomicU64::new(seed),
            fingerprint: String::new(),
            shutdown: tokio::sync::watch::channel(false).0,
        };
        let fingerprint = format!("fp_{}", core.hex(10));
        Core {
            fingerprint,
            ..core
        }
    }

    fn record(&self, recorded: Recorded) {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let mut requests = lock(&self.requests);
        if requests.len() >= MAX_RECORDED {
            requests.pop_front();
        }
        requests.push_back(recorded);
    }

    pub(crate) fn check_key(&self, key: Option<&str>) -> KeyCheck {
        let Some(key) = key.filter(|key| !key.is_empty()) else {
            return KeyCheck::Missing;
        };
        match &*lock(&self.keys) {
            Some(keys) if !keys.iter().any(|accepted| accepted == key) => KeyCheck::Invalid,
            _ => KeyCheck::Accepted,
        }
    }

    /// The retry-after of a rate-limited key.
    pub(crate) fn rate_limit_for(&self, key: Option<&str>) -> Option<u64> {
        let key = key?;
        lock(&self.limited_keys).get(key).copied()
    }

    /// Takes the next scripted reply, if any.
    pub(crate) fn take_scripted(&self) -> Option<Reply> {
        lock(&self.replies).pop_front()
    }

    /// Takes the next scripted reply (or the default one).
    pub(crate) fn next_reply(&self) -> Reply {
        self.take_scripted().unwrap_or_else(|| Reply::Text {
            text: format!("Hello from {}", self.name),
            usage: DEFAULT_USAGE,
        })
    }

    /// Takes the next reply as an answer or a failure.
    pub(crate) fn next_answer(&self) -> Result<Answer, Failure> {
        self.next_reply().into_answer()
    }

    fn next_random(&self) -> u64 {
        let state = self
            .id_state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn random_string(&self, len: usize, alphabet: &[u8]) -> String {
        (0..len)
            .map(|_| {
                let index = (self.next_random() % alphabet.len() as u64) as usize;
                char::from(alphabet[index])
            })
            .collect()
    }

    /// `len` lower-case hex digits.
    pub(crate) fn hex(&self, len: usize) -> String {
        self.random_string(len, b"0123456789abcdef")
    }

    /// `len` characters of `[0-9A-Za-z]`.
    pub(crate) fn base62(&self, len: usize) -> String {
        self.random_string(
            len,
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        )
    }

    /// A response whose body is `events`, sent one by one with the chunk
    /// delay between them, hanging where [`FakeProvider::hang_after`] says.
    pub(crate) fn stream(
        self: &Arc<Self>,
        content_type: &str,
        headers: &[(&str, String)],
        events: Vec<Bytes>,
    ) -> Response<Body> {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(1);
        let delay = Duration::from_millis(self.chunk_delay_ms.load(Ordering::SeqCst));
        let hang_after = self.hang_after.load(Ordering::SeqCst);
        let core = self.clone();
        tokio::spawn(async move {
            let mut shutdown = core.shutdown.subscribe();
            for (index, event) in events.into_iter().enumerate() {
                if index == hang_after {
                    break;
                }
                if index > 0 && !delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = sender.closed() => {
                            core.disconnects.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        _ = shutdown.wait_for(|stopped| *stopped) => return,
                    }
                }
                if sender.send(event).await.is_err() {
                    core.disconnects.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            if hang_after != NO_HANG {
                // Hold the stream open, sending nothing, until the client
                // goes away (or the fake stops).
                tokio::select! {
                    _ = sender.closed() => {
                        core.disconnects.fetch_add(1, Ordering::SeqCst);
                    }
                    _ = shutdown.wait_for(|stopped| *stopped) => {}
                }
                return;
            }
            core.streams_completed.fetch_add(1, Ordering::SeqCst);
        });
        let body = StreamBody::new(
            futures_util::stream::poll_fn(move |context| receiver.poll_recv(context))
                .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))),
        );
        let mut builder = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", content_type)
            .header("cache-control", "no-cache");
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        builder
            .body(BodyExt::boxed(body))
            .unwrap_or_else(|_| Response::new(empty_body()))
    }
}

fn empty_body() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// A complete (non-streamed) response.
pub(crate) fn full_response(
    status: u16,
    content_type: &str,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", content_type);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    builder
        .body(Full::new(body.into()).boxed())
        .unwrap_or_else(|_| Response::new(empty_body()))
}

async fn serve_connection(core: Arc<Core>, stream: tokio::net::TcpStream) {
    let mut shutdown = core.shutdown.subscribe();
    let service = service_fn(move |request| {
        let core = core.clone();
        async move { Ok::<_, Infallible>(handle(core, request).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    // Dropping the connection closes the socket: a stopped fake leaves no
    // stream hanging.
    tokio::select! {
        _ = connection => {}
        _ = shutdown.wait_for(|stopped| *stopped) => {}
    }
}

async fn handle(core: Arc<Core>, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let query = parts.uri.query().unwrap_or("").to_owned();
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return full_response(413, "text/plain", &[], "request body too large"),
    };
    let (body, json_error) = if bytes.iter().all(u8::is_ascii_whitespace) {
        (Value::Null, false)
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => (value, false),
            Err(_) => (Value::Null, true),
        }
    };
    let key = (core.dialect.key)(&headers, &query);
    let recorded = Recorded {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query,
        headers,
        body,
        key,
    };
    core.record(recorded.clone());
    let delay_ms = core.response_delay_ms.load(Ordering::SeqCst);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let call = Call {
        recorded,
        json_error,
    };
    (core.dialect.respond)(&core, &call)
}

/// Seconds since the epoch.
pub(crate) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Splits text into stream deltas, one word each with the whitespace
/// before it: `"Hello from X"` → `["Hello", " from", " X"]`. The pieces
/// concatenate to the text.
pub(crate) fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for character in text.chars() {
        if character.is_whitespace() && in_word {
            pieces.push(std::mem::take(&mut current));
            in_word = false;
        }
        if !character.is_whitespace() {
            in_word = true;
        }
        current.push(character);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Splits a string into pieces of at most `size` characters.
pub(crate) fn fragments(text: &str, size: usize) -> Vec<String> {
    let characters: Vec<char> = text.chars().collect();
    characters
        .chunks(size.max(1))
        .map(|chunk| chunk.iter().collect())
        .collect()
}

/// A rough token count: one token per four characters.
pub(crate) fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// A rough token count of every string inside `value`.
pub(crate) fn estimate_value_tokens(value: &Value) -> u64 {
    fn characters(value: &Value) -> u64 {
        match value {
            Value::String(text) => text.chars().count() as u64,
            Value::Array(items) => items.iter().map(characters).sum(),
            Value::Object(fields) => fields.values().map(characters).sum(),
            _ => 0,
        }
    }
    characters(value).div_ceil(4)
}

/// Tool arguments as a JSON object (providers other than OpenAI carry
/// them parsed); `{}` when they are not a JSON object.
pub(crate) fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => Value::Object(serde_json::Map::new()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One SSE event: its `event:` name (if any) and its data.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Event {
        pub(crate) name: Option<String>,
        pub(crate) data: String,
    }

    impl Event {
        pub(crate) fn json(&self) -> Value {
            serde_json::from_str(&self.data)
                .unwrap_or_else(|error| panic!("event data {:?} is not JSON: {error}", self.data))
        }
    }

    /// Parses an SSE body whose events end with `separator`.
    pub(crate) fn parse_sse(body: &str, separator: &str) -> Vec<Event> {
        assert!(
            body.ends_with(separator),
            "stream does not end with {separator:?}: {body:?}"
        );
        let line_end = &separator[..separator.len() / 2];
        body.split(separator)
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut name = None;
                let mut data = Vec::new();
                for line in block.split(line_end) {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push(value);
                    } else {
                        panic!("unexpected SSE line {line:?} in {block:?}");
                    }
                }
                Event {
                    name,
                    data: data.join("\n"),
                }
            })
            .collect()
    }

    pub(crate) fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    #[test]
    fn words_split_and_rejoin() {
        assert_eq!(
            split_words("Hello from FakeOpenAi"),
            ["Hello", " from", " FakeOpenAi"]
        );
        assert_eq!(split_words(" a  b "), [" a", "  b", " "]);
        assert!(split_words("").is_empty());
        assert_eq!(fragments("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(estimate_tokens("abcde"), 2);
    }

    #[test]
    fn usage_maps_its_parts() {
        let usage = Usage::new(100, 40)
            .with_cached_input(30)
            .with_cache_write_input(20)
            .with_reasoning(15);
        assert_eq!(usage.uncached_input(), 50);
        assert_eq!(usage.visible_output(), 25);
        assert_eq!(usage.total(), 140);
    }

    #[tokio::test]
    async fn hang_after_holds_the_stream_until_the_client_goes() {
        let fake = FakeOpenAi::start().await;
        fake.hang_after(2);
        let response = client()
            .post(format!("{}/chat/completions", fake.url()))
            .bearer_auth("k")
            .json(&serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": true,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let mut received = String::new();
        // Two events arrive, then nothing.
        while received.matches("\n\n").count() < 2 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert_eq!(received.matches("\n\n").count(), 2);
        let more = tokio::time::timeout(Duration::from_millis(300), body.next()).await;
        assert!(more.is_err(), "the stream went on: {more:?}");
        assert_eq!(fake.disconnects(), 0);
        drop(body);
        assert!(fake.wait_for_disconnects(1, 5_000).await);
        assert_eq!(fake.streams_completed(), 0);
    }

    #[tokio::test]
    async fn a_client_leaving_mid_stream_is_counted() {
        let fake = FakeAnthropic::start().await;
        fake.set_chunk_delay_ms(50);
        fake.push(Reply::text(
            "one two three four five six seven eight nine ten",
            Usage::new(5, 10),
        ));
        let response = client()
            .post(format!("{}/v1/messages", fake.url()))
            .header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
            .json(&serde_json::json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": true,
            }))
            .send()
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).starts_with("event: message_start\n"));
        drop(body);
        assert!(fake.wait_for_disconnects(1, 5_000).await);
        assert_eq!(fake.streams_completed(), 0);
    }

    #[tokio::test]
    async fn the_response_delay_comes_before_the_head() {
        let fake = FakeGemini::start().await;
        fake.set_response_delay_ms(300);
        let outcome = client()
            .post(format!(
                "{}/models/gemini-2.5-flash:generateContent",
                fake.url()
            ))
            .header("x-goog-api-key", "k")
            .json(&serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}]}))
            .timeout(Duration::from_millis(100))
            .send()
            .await;
        // The client gave up before the head came.
        assert!(outcome.unwrap_err().is_timeout());
        // The request was recorded on arrival all the same.
        assert_eq!(fake.hits(), 1);
        fake.set_response_delay_ms(0);
        let response = client()
            .post(format!(
                "{}/models/gemini-2.5-flash:generateContent",
                fake.url()
            ))
            .header("x-goog-api-key", "k")
            .json(&serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn dropping_the_fake_closes_a_hanging_stream() {
        let fake = FakeOpenAi::start().await;
        fake.hang_after(1);
        let response = client()
            .post(format!("{}/chat/completions", fake.url()))
            .bearer_auth("k")
            .json(&serde_json::json!({
                "model": "m", "messages": [], "stream": true,
            }))
            .send()
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        body.next().await.unwrap().unwrap();
        drop(fake);
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = body.next().await {}
        })
        .await;
        assert!(end.is_ok(), "the stream stayed open after the fake stopped");
    }
}
