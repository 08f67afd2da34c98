//! JSON-RPC 2.0 framing as MCP restricts it: one message per body (no
//! batches since 2025-06-18), object `params`, string or integer request ids
//! that are never `null`.

use serde_json::{Map, Value, json};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON is not a valid JSON-RPC message (or a batch, which MCP removed).
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not offered.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters: unknown tool, malformed call, missing `_meta`.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error of the server.
pub const INTERNAL_ERROR: i64 = -32603;
/// 2026-07-28: the HTTP headers do not match the body, or are missing.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the request needs a client capability it did not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// 2026-07-28: the requested protocol version is not supported.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// One decoded client message.
#[derive(Debug)]
pub(crate) enum Message {
    Request {
        id: Value,
        method: String,
        params: Option<Map<String, Value>>,
    },
    Notification {
        method: String,
        params: Option<Map<String, Value>>,
    },
    /// A response (result or error) to a request the server sent.
    Response,
}

impl Message {
    pub(crate) fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            Message::Response => None,
        }
    }

    pub(crate) fn params(&self) -> Option<&Map<String, Value>> {
        match self {
            Message::Request { params, .. } | Message::Notification { params, .. } => {
                params.as_ref()
            }
            Message::Response => None,
        }
    }

    pub(crate) fn id(&self) -> Option<&Value> {
        match self {
            Message::Request { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Why a body is not one acceptable JSON-RPC message.
#[derive(Debug)]
pub(crate) struct Malformed {
    pub code: i64,
    pub message: String,
    /// The request id, when it could be read.
    pub id: Option<Value>,
}

fn malformed(code: i64, message: impl Into<String>, id: Option<Value>) -> Malformed {
    Malformed {
        code,
        message: message.into(),
        id,
    }
}

/// A valid MCP request id: a string or an integer (never `null`, never a
/// fraction).
fn valid_id(id: &Value) -> bool {
    match id {
        Value::String(_) => true,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

/// Decodes one message from a body.
pub(crate) fn decode(body: &[u8]) -> Result<Message, Malformed> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(PARSE_ERROR, format!("Parse error: {e}"), None))?;
    let object = match value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Err(malformed(
                INVALID_REQUEST,
                "Invalid Request: JSON-RPC batches are not supported (removed in MCP 2025-06-18); \
                 send one message per POST",
                None,
            ));
        }
        _ => {
            return Err(malformed(
                INVALID_REQUEST,
                "Invalid Request: a JSON-RPC message must be a JSON object",
                None,
            ));
        }
    };
    let id = object.get("id").filter(|id| valid_id(id)).cloned();
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(malformed(
            INVALID_REQUEST,
            "Invalid Request: \"jsonrpc\" must be \"2.0\"",
            id,
        ));
    }
    if let Some(method) = object.get("method") {
        let Some(method) = method.as_str() else {
            return Err(malformed(
                INVALID_REQUEST,
                "Invalid Request: \"method\" must be a string",
                id,
            ));
        };
        let params = match object.get("params") {
            None => None,
            Some(Value::Object(params)) => Some(params.clone()),
            Some(_) => {
                return Err(malformed(
                    INVALID_REQUEST,
                    "Invalid Request: \"params\" must be an object",
                    id,
                ));
            }
        };
        return match object.get("id") {
            None => Ok(Message::Notification {
                method: method.to_owned(),
                params,
            }),
            Some(raw) if valid_id(raw) => Ok(Message::Request {
                id: raw.clone(),
                method: method.to_owned(),
                params,
            }),
            Some(_) => Err(malformed(
                INVALID_REQUEST,
                "Invalid Request: \"id\" must be a string or an integer (not null)",
                None,
            )),
        };
    }
    let has_result = object.contains_key("result");
    let has_error = object.contains_key("error");
    if object.contains_key("id") && has_result != has_error {
        return Ok(Message::Response);
    }
    Err(malformed(
        INVALID_REQUEST,
        "Invalid Request: neither a request, a notification nor a response",
        id,
    ))
}

/// How an error response names its request when the id is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnknownId {
    /// JSON-RPC 2.0 and MCP up to 2025-11-25: `"id": null`.
    Null,
    /// MCP 2026-07-28: the `id` member is left out.
    Omit,
}

pub(crate) fn result(id: &Value, result: Value) -> Vec<u8> {
    let message = json!({"jsonrpc": "2.0", "id": id, "result": result});
    serde_json::to_vec(&message).unwrap_or_default()
}

pub(crate) fn error(
    id: Option<&Value>,
    unknown: UnknownId,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Vec<u8> {
    let mut error = Map::new();
    error.insert("code".into(), code.into());
    error.insert("message".into(), message.into());
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    let mut envelope = Map::new();
    envelope.insert("jsonrpc".into(), "2.0".into());
    match (id, unknown) {
        (Some(id), _) => {
            envelope.insert("id".into(), id.clone());
        }
        (None, UnknownId::Null) => {
            envelope.insert("id".into(), Value::Null);
        }
        (None, UnknownId::Omit) => {}
    }
    envelope.insert("error".into(), Value::Object(error));
    serde_json::to_vec(&Value::Object(envelope)).unwrap_or_default()
}

/// A notification framed as one SSE event.
pub(crate) fn sse_event(message: &Value) -> Vec<u8> {
    let mut out = b"event: message\ndata: ".to_vec();
    // serde_json never writes a raw newline, so the event is one data line.
    out.extend(serde_json::to_vec(message).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    out
}
