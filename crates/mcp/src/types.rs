//! The values that cross the crate's boundary: the request as the gateway
//! read it, the reply it writes back, tools and their results.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// The protocol versions this server speaks, oldest first.
pub const VERSIONS: [&str; 3] = ["2025-06-18", "2025-11-25", "2026-07-28"];
/// The largest POST body accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The newest version negotiated with `initialize` (2026-07-28 has no
/// handshake).
pub const LATEST_WITH_INITIALIZE: &str = "2025-11-25";
/// The stateless revision: no sessions, headers mirrored from the body.
pub const STATELESS_VERSION: &str = "2026-07-28";

/// The parts of an HTTP request the protocol reads.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// `"POST"`, `"GET"`, `"DELETE"` or anything else (answered 405).
    pub method: &'a str,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// `Mcp-Session-Id`.
    pub session_id: Option<&'a str>,
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<&'a str>,
    /// `Mcp-Method` (2026-07-28).
    pub mcp_method: Option<&'a str>,
    /// `Mcp-Name` (2026-07-28), as sent (the Base64 sentinel form is decoded
    /// here).
    pub mcp_name: Option<&'a str>,
    pub body: &'a [u8],
    /// Who is calling (the app's id, after the gateway authenticated the
    /// key): a session belongs to one caller.
    pub caller: &'a str,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Response headers to send as given (`Content-Type` included whenever
    /// there is a body).
    pub headers: Vec<(&'static str, String)>,
    pub body: ReplyBody,
}

impl Reply {
    /// The value of header `name` (ASCII case-insensitive), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn json(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "application/json".to_owned())],
            body: ReplyBody::Json(body),
        }
    }

    pub(crate) fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Empty,
        }
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn sse(body: ReplyBody) -> Reply {
        Reply {
            status: 200,
            headers: vec![
                ("Content-Type", "text/event-stream".to_owned()),
                ("Cache-Control", "no-cache".to_owned()),
                ("X-Accel-Buffering", "no".to_owned()),
            ],
            body,
        }
    }
}

/// The body of a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// No body (202, 204, and some 4xx).
    Empty,
    /// One JSON document (`Content-Type: application/json` is in the headers).
    Json(Vec<u8>),
    /// GET (2025-06-18 / 2025-11-25): keep an SSE stream open for
    /// server→client messages of this session (the gateway sends keep-alive
    /// comments until the session ends — see [`crate::Server::session_open`] —
    /// or the client leaves). This server sends nothing on it, and an open
    /// stream does not keep its session from expiring when idle.
    OpenStream { session: String },
    /// POST `subscriptions/listen` (2026-07-28): write `first_event` (one
    /// complete SSE event: the subscription's acknowledgement), then keep the
    /// stream open with keep-alive comments until the client leaves. Closing
    /// it is the client's cancellation; there is nothing else to send.
    Listen { first_event: Vec<u8> },
}

/// A tool as `tools/list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub annotations: Option<Value>,
}

/// What a tool call produced. `is_error` marks a tool execution error (a
/// refusal, an upstream failure, invalid arguments in 2025-11-25 and later):
/// the model sees it and may correct itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// One text content block; when empty and `structured` is set, the
    /// serialised structured value is used instead (the spec's
    /// backwards-compatible text block).
    pub content_text: String,
    /// `structuredContent`. Sessions on 2025-06-18 / 2025-11-25 carry only
    /// objects here; other values are then left to the text block.
    pub structured: Option<Value>,
    pub is_error: bool,
    /// The result's `_meta` (for example `x402/payment-response`); an object.
    pub meta: Option<Value>,
}

impl ToolResult {
    /// A successful plain-text result.
    pub fn text(text: impl Into<String>) -> ToolResult {
        ToolResult {
            content_text: text.into(),
            structured: None,
            is_error: false,
            meta: None,
        }
    }

    /// A successful result carrying `value` as structured content and as
    /// JSON text.
    pub fn json(value: Value) -> ToolResult {
        ToolResult {
            content_text: value.to_string(),
            structured: Some(value),
            is_error: false,
            meta: None,
        }
    }

    /// A tool execution error with a message for the model.
    pub fn error(message: impl Into<String>) -> ToolResult {
        ToolResult {
            content_text: message.into(),
            structured: None,
            is_error: true,
            meta: None,
        }
    }

    /// A refusal by the gateway: the RFC 9457 problem details as
    /// `structuredContent` and the same JSON as text. With
    /// `payment_required` (an x402 v2 `PaymentRequired` object) the problem
    /// also carries `"x402/error": {"code": 402, "message", "data":
    /// PaymentRequired}`, the wrapper the x402 MCP transport lets clients find
    /// in `structuredContent` and in the text block; the client pays by
    /// retrying with `_meta["x402/payment"]`.
    pub fn refusal(problem: Value, payment_required: Option<Value>) -> ToolResult {
        let mut problem = match problem {
            Value::Object(map) => map,
            other => {
                let mut map = Map::new();
                map.insert("detail".into(), other);
                map
            }
        };
        if let Some(payment_required) = payment_required {
            let message = problem
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("Payment required")
                .to_owned();
            problem.insert(
                "x402/error".into(),
                json!({"code": 402, "message": message, "data": payment_required}),
            );
        }
        let problem = Value::Object(problem);
        ToolResult {
            content_text: problem.to_string(),
            structured: Some(problem),
            is_error: true,
            meta: None,
        }
    }
}

/// Why a tool call did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No tool of that name for this caller: JSON-RPC `-32602` "Unknown
    /// tool: …".
    #[error("unknown tool")]
    UnknownTool,
    /// The arguments fail the tool's input schema. 2025-06-18 lists invalid
    /// arguments among protocol errors (JSON-RPC `-32602`); 2025-11-25 and
    /// 2026-07-28 make input validation errors tool execution errors (a
    /// result with `isError: true`), so the model can correct itself.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The server failed (JSON-RPC `-32603`). Upstream failures and
    /// refusals are tool results, not this.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Implemented by the gateway: the caller's tools, and running one.
pub trait ToolHost {
    /// The caller's tools, in a deterministic order (2026-07-28 asks for one
    /// so clients can cache).
    fn list_tools(&self) -> impl std::future::Future<Output = Vec<Tool>> + Send;
    /// Runs tool `name`. `arguments` is the call's `arguments` object (`{}`
    /// when absent); `meta` is the request's `_meta` (e.g. `x402/payment`).
    /// Tool-level failures are `Ok(ToolResult { is_error: true, .. })`.
    fn call_tool(
        &self,
        name: &str,
        arguments: Value,
        meta: Option<Value>,
    ) -> impl std::future::Future<Output = Result<ToolResult, CallError>> + Send;
}

/// How the server names itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub name: String,
    pub version: String,
    /// Guidance for the model, sent in the `InitializeResult` and the
    /// `DiscoverResult`.
    pub instructions: Option<String>,
}

/// Bounds and hints of a [`crate::Server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Sessions held at once, all callers together.
    pub max_sessions: usize,
    /// Sessions held at once by one caller (clients that never DELETE leak
    /// sessions; the caller's oldest is evicted first).
    pub max_sessions_per_caller: usize,
    /// A session unused for this long is ended.
    pub session_idle: Duration,
    /// Tools per `tools/list` page.
    pub page_size: usize,
    /// `ttlMs` of `tools/list` results (2026-07-28).
    pub tools_ttl_ms: u64,
    /// `ttlMs` of `server/discover` results (2026-07-28).
    pub discover_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 10_000,
            max_sessions_per_caller: 64,
            session_idle: Duration::from_secs(30 * 60),
            page_size: 100,
            tools_ttl_ms: 60_000,
            discover_ttl_ms: 3_600_000,
        }
    }
}
