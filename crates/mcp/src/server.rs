//! [`Server::handle`]: one HTTP exchange on the MCP endpoint, for both eras of
//! the Streamable HTTP transport.
//!
//! Order of checks on POST: size (413), `Content-Type` (415), `Accept` (406),
//! JSON (-32700), JSON-RPC shape (-32600), `MCP-Protocol-Version` (400
//! -32022 when unsupported), then the era: `initialize` → a new legacy
//! session; header `2026-07-28` → stateless; a legacy header or a session id
//! → that session; neither → 400.

use serde_json::{Map, Value, json};

use crate::headers;
use crate::jsonrpc::{self, Malformed, Message, UnknownId};
use crate::session::Sessions;
use crate::types::{
    CallError, Incoming, LATEST_WITH_INITIALIZE, Limits, MAX_MESSAGE_BYTES, Reply, ReplyBody,
    STATELESS_VERSION, ServerInfo, Tool, ToolHost, ToolResult, VERSIONS,
};

/// `_meta` keys of 2026-07-28 requests and results.
const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Server state: who we are, bounds, and the sessions of the legacy versions.
#[derive(Debug)]
pub struct Server {
    info: ServerInfo,
    limits: Limits,
    sessions: Sessions,
}

/// The protocol revision a message is handled under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Era {
    /// 2025-06-18 or 2025-11-25, within a session.
    Legacy(&'static str),
    /// 2026-07-28: stateless.
    Stateless,
}

fn supported(version: &str) -> Option<&'static str> {
    VERSIONS.iter().copied().find(|v| *v == version)
}

fn is_legacy(version: &str) -> bool {
    version != STATELESS_VERSION
}

/// An error reply with a JSON-RPC error body.
fn error_reply(
    status: u16,
    id: Option<&Value>,
    unknown: UnknownId,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Reply {
    Reply::json(status, jsonrpc::error(id, unknown, code, message, data))
}

impl Server {
    /// A server with the default [`Limits`].
    pub fn new(info: ServerInfo) -> Self {
        Server::with_limits(info, Limits::default())
    }

    pub fn with_limits(info: ServerInfo, limits: Limits) -> Self {
        let sessions = Sessions::new(
            limits.max_sessions,
            limits.max_sessions_per_caller,
            limits.session_idle,
        );
        Server {
            info,
            limits,
            sessions,
        }
    }

    /// Whether session `id` is still open: the GET stream ends when it is not.
    pub fn session_open(&self, id: &str) -> bool {
        self.sessions.is_open(id)
    }

    /// Sessions held now (for metrics).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Handles one HTTP exchange on the MCP endpoint.
    pub async fn handle<H: ToolHost>(&self, host: &H, incoming: Incoming<'_>) -> Reply {
        match incoming.method {
            "POST" => self.post(host, &incoming).await,
            "GET" => self.get(&incoming),
            "DELETE" => self.delete(&incoming),
            _ => error_reply(
                405,
                None,
                UnknownId::Null,
                jsonrpc::INVALID_REQUEST,
                "Method not allowed: the MCP endpoint takes POST, GET and DELETE",
                None,
            )
            .with_header("Allow", "GET, POST, DELETE"),
        }
    }

    /// How an error names an unknown id, from the version header alone.
    fn unknown_id(incoming: &Incoming<'_>) -> UnknownId {
        if incoming.protocol_version == Some(STATELESS_VERSION) {
            UnknownId::Omit
        } else {
            UnknownId::Null
        }
    }

    fn unsupported_version(
        &self,
        requested: &str,
        id: Option<&Value>,
        unknown: UnknownId,
    ) -> Reply {
        let mut supported: Vec<&str> = VERSIONS.to_vec();
        supported.reverse();
        error_reply(
            400,
            id,
            unknown,
            jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
            &format!(
                "Unsupported protocol version: {requested} (supported: {})",
                supported.join(", ")
            ),
            Some(json!({"supported": supported, "requested": requested})),
        )
    }

    async fn post<H: ToolHost>(&self, host: &H, incoming: &Incoming<'_>) -> Reply {
        let unknown = Self::unknown_id(incoming);
        if incoming.body.len() > MAX_MESSAGE_BYTES {
            return error_reply(
                413,
                None,
                unknown,
                jsonrpc::INVALID_REQUEST,
                &format!(
                    "Message too large: {} bytes; at most {MAX_MESSAGE_BYTES} bytes",
                    incoming.body.len()
                ),
                None,
            );
        }
        if !headers::is_json_content_type(incoming.content_type) {
            return error_reply(
                415,
                None,
                unknown,
                jsonrpc::INVALID_REQUEST,
                "Unsupported Media Type: POST a JSON-RPC message as application/json",
                None,
            );
        }
        if !headers::accepts(incoming.accept, "application/json") {
            return error_reply(
                406,
                None,
                unknown,
                jsonrpc::INVALID_REQUEST,
                "Not Acceptable: the client must accept application/json and text/event-stream",
                None,
            );
        }
        let message = match jsonrpc::decode(incoming.body) {
            Ok(message) => message,
            Err(Malformed { code, message, id }) => {
                return error_reply(400, id.as_ref(), unknown, code, &message, None);
            }
        };
        let id = message.id();
        let header_version = match incoming.protocol_version {
            None => None,
            Some(requested) => match supported(requested) {
                Some(version) => Some(version),
                None => return self.unsupported_version(requested, id, unknown),
            },
        };

        if let Message::Request {
            id, method, params, ..
        } = &message
            && method == "initialize"
        {
            return self.initialize(incoming, id, params.as_ref());
        }

        match (header_version, incoming.session_id) {
            (Some(STATELESS_VERSION), _) => self.stateless(host, incoming, &message).await,
            (header, Some(session_id)) => {
                self.in_session(host, incoming, &message, session_id, header)
                    .await
            }
            (Some(_legacy), None) => error_reply(
                400,
                id,
                UnknownId::Null,
                jsonrpc::INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required (send initialize first)",
                None,
            ),
            (None, None) => {
                let modern = message
                    .params()
                    .and_then(|params| params.get("_meta"))
                    .and_then(|meta| meta.get(META_PROTOCOL_VERSION))
                    .is_some();
                if modern {
                    error_reply(
                        400,
                        id,
                        UnknownId::Omit,
                        jsonrpc::HEADER_MISMATCH,
                        "Header mismatch: the MCP-Protocol-Version header is required",
                        None,
                    )
                } else {
                    error_reply(
                        400,
                        id,
                        UnknownId::Null,
                        jsonrpc::INVALID_REQUEST,
                        "Bad Request: Mcp-Session-Id header is required (send initialize first)",
                        None,
                    )
                }
            }
        }
    }

    /// `initialize` (2025-06-18, 2025-11-25): negotiate and open a session.
    fn initialize(
        &self,
        incoming: &Incoming<'_>,
        id: &Value,
        params: Option<&Map<String, Value>>,
    ) -> Reply {
        let invalid = |message: &str| {
            error_reply(
                200,
                Some(id),
                UnknownId::Null,
                jsonrpc::INVALID_PARAMS,
                message,
                None,
            )
        };
        let Some(params) = params else {
            return invalid(
                "Invalid params: initialize needs protocolVersion, capabilities and clientInfo",
            );
        };
        let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
            return invalid("Invalid params: \"protocolVersion\" must be a string");
        };
        if !params.get("capabilities").is_some_and(Value::is_object) {
            return invalid("Invalid params: \"capabilities\" must be an object");
        }
        let client_info = params.get("clientInfo");
        let named = client_info
            .and_then(|info| info.get("name"))
            .is_some_and(Value::is_string);
        let versioned = client_info
            .and_then(|info| info.get("version"))
            .is_some_and(Value::is_string);
        if !named || !versioned {
            return invalid("Invalid params: \"clientInfo\" must have a string name and version");
        }
        // A supported handshake version is echoed; anything else (including
        // 2026-07-28, which has no handshake) gets the latest we negotiate.
        let version = supported(requested)
            .filter(|version| is_legacy(version))
            .unwrap_or(LATEST_WITH_INITIALIZE);
        let session = match self.sessions.create(incoming.caller, version) {
            Ok(session) => session,
            Err(error) => {
                return error_reply(
                    500,
                    Some(id),
                    UnknownId::Null,
                    jsonrpc::INTERNAL_ERROR,
                    &format!("Internal error: no session id could be made ({error})"),
                    None,
                );
            }
        };
        let mut result = Map::new();
        result.insert("protocolVersion".into(), version.into());
        result.insert("capabilities".into(), self.capabilities());
        result.insert("serverInfo".into(), self.implementation());
        if let Some(instructions) = &self.info.instructions {
            result.insert("instructions".into(), instructions.clone().into());
        }
        Reply::json(200, jsonrpc::result(id, Value::Object(result)))
            .with_header("Mcp-Session-Id", session)
    }

    fn capabilities(&self) -> Value {
        json!({"tools": {"listChanged": false}})
    }

    fn implementation(&self) -> Value {
        json!({"name": self.info.name, "version": self.info.version})
    }

    /// A message within a legacy session.
    async fn in_session<H: ToolHost>(
        &self,
        host: &H,
        incoming: &Incoming<'_>,
        message: &Message,
        session_id: &str,
        header_version: Option<&'static str>,
    ) -> Reply {
        let id = message.id();
        let version = match self.sessions.use_session(session_id, incoming.caller) {
            Ok(version) => version,
            Err(_) => {
                return error_reply(
                    404,
                    id,
                    UnknownId::Null,
                    jsonrpc::INVALID_REQUEST,
                    "Session not found: it ended or never existed; send a new initialize without \
                     Mcp-Session-Id",
                    None,
                );
            }
        };
        if let Some(header) = header_version
            && header != version
        {
            return error_reply(
                400,
                id,
                UnknownId::Null,
                jsonrpc::INVALID_REQUEST,
                &format!(
                    "Bad Request: MCP-Protocol-Version {header} is not this session's negotiated \
                     version {version}"
                ),
                None,
            );
        }
        let Message::Request { id, method, params } = message else {
            // Notifications (initialized, cancelled, …) and responses.
            return Reply::empty(202);
        };
        let era = Era::Legacy(version);
        let outcome = match method.as_str() {
            "ping" => Ok(json!({})),
            "tools/list" => self.tools_list(host, params.as_ref(), era).await,
            "tools/call" => self.tools_call(host, params.as_ref(), era).await,
            other => Err(Failure::new(
                jsonrpc::METHOD_NOT_FOUND,
                format!("Method not found: {other}"),
            )),
        };
        match outcome {
            Ok(result) => Reply::json(200, jsonrpc::result(id, result)),
            Err(failure) => failure.reply(id, era, 200),
        }
    }

    /// A 2026-07-28 message: every request stands alone.
    async fn stateless<H: ToolHost>(
        &self,
        host: &H,
        incoming: &Incoming<'_>,
        message: &Message,
    ) -> Reply {
        let id = message.id();
        let mismatch = |text: String| {
            error_reply(
                400,
                id,
                UnknownId::Omit,
                jsonrpc::HEADER_MISMATCH,
                &format!("Header mismatch: {text}"),
                None,
            )
        };
        let Some(method) = message.method() else {
            return error_reply(
                400,
                None,
                UnknownId::Omit,
                jsonrpc::INVALID_REQUEST,
                "Invalid Request: clients do not send JSON-RPC responses in 2026-07-28",
                None,
            );
        };
        for (name, value) in [
            ("Mcp-Method", incoming.mcp_method),
            ("Mcp-Name", incoming.mcp_name),
            ("MCP-Protocol-Version", incoming.protocol_version),
        ] {
            if let Some(value) = value
                && !headers::valid_field_value(value)
            {
                return mismatch(format!("the {name} header contains invalid characters"));
            }
        }
        match incoming.mcp_method {
            Some(header) if header != method => {
                return mismatch(format!(
                    "Mcp-Method header value '{header}' does not match body value '{method}'"
                ));
            }
            None if matches!(message, Message::Request { .. }) => {
                return mismatch("the Mcp-Method header is required".to_owned());
            }
            _ => {}
        }
        let name_source = match method {
            "tools/call" | "prompts/get" => Some("name"),
            "resources/read" => Some("uri"),
            _ => None,
        };
        if let Some(key) = name_source
            && let Some(body_name) = message
                .params()
                .and_then(|params| params.get(key))
                .and_then(Value::as_str)
        {
            let Some(raw) = incoming.mcp_name else {
                return mismatch(format!("the Mcp-Name header is required for {method}"));
            };
            let Some(decoded) = headers::decode_sentinel(raw) else {
                return mismatch(
                    "the Mcp-Name header is not valid Base64-encoded UTF-8".to_owned(),
                );
            };
            if decoded != body_name {
                return mismatch(format!(
                    "Mcp-Name header value '{decoded}' does not match body value '{body_name}'"
                ));
            }
        }
        let Message::Request { id, method, params } = message else {
            // This revision defines no client notifications over HTTP;
            // accepting one is harmless.
            return Reply::empty(202);
        };
        let meta = params
            .as_ref()
            .and_then(|params| params.get("_meta"))
            .and_then(Value::as_object);
        let meta_version = meta
            .and_then(|meta| meta.get(META_PROTOCOL_VERSION))
            .and_then(Value::as_str);
        let capabilities = meta
            .and_then(|meta| meta.get(META_CLIENT_CAPABILITIES))
            .is_some_and(Value::is_object);
        let Some(meta_version) = meta_version.filter(|_| capabilities) else {
            return error_reply(
                400,
                Some(id),
                UnknownId::Omit,
                jsonrpc::INVALID_PARAMS,
                &format!(
                    "Invalid params: _meta must carry {META_PROTOCOL_VERSION} (a string) and \
                     {META_CLIENT_CAPABILITIES} (an object)"
                ),
                None,
            );
        };
        if meta_version != STATELESS_VERSION {
            return mismatch(format!(
                "MCP-Protocol-Version header value '{STATELESS_VERSION}' does not match body \
                 value '{meta_version}'"
            ));
        }
        let era = Era::Stateless;
        let outcome = match method.as_str() {
            "server/discover" => Ok(self.discover()),
            "tools/list" => self.tools_list(host, params.as_ref(), era).await,
            "tools/call" => self.tools_call(host, params.as_ref(), era).await,
            "subscriptions/listen" => return self.listen(id, params.as_ref()),
            other => Err(Failure::new(
                jsonrpc::METHOD_NOT_FOUND,
                format!("Method not found: {other}"),
            )),
        };
        match outcome {
            Ok(result) => Reply::json(200, jsonrpc::result(id, self.stamp(result))),
            Err(failure) => {
                // The transport gives unknown methods 404 so clients can tell
                // a modern server from a legacy one; other errors answer 200.
                let status = if failure.code == jsonrpc::METHOD_NOT_FOUND {
                    404
                } else {
                    200
                };
                failure.reply(id, era, status)
            }
        }
    }

    /// Adds the 2026-07-28 result fields: `resultType` and the server's
    /// identity in `_meta`.
    fn stamp(&self, result: Value) -> Value {
        let Value::Object(mut result) = result else {
            return result;
        };
        result
            .entry("resultType")
            .or_insert_with(|| "complete".into());
        let meta = result
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            meta.insert(META_SERVER_INFO.into(), self.implementation());
        }
        Value::Object(result)
    }

    fn discover(&self) -> Value {
        let mut supported: Vec<&str> = VERSIONS.to_vec();
        supported.reverse();
        let mut result = Map::new();
        result.insert("supportedVersions".into(), json!(supported));
        result.insert("capabilities".into(), self.capabilities());
        if let Some(instructions) = &self.info.instructions {
            result.insert("instructions".into(), instructions.clone().into());
        }
        result.insert("ttlMs".into(), self.limits.discover_ttl_ms.into());
        // The same for every caller.
        result.insert("cacheScope".into(), "public".into());
        Value::Object(result)
    }

    /// `subscriptions/listen`: acknowledge, honouring no notification type
    /// (the tool list is not watched), and hold the stream open.
    fn listen(&self, id: &Value, params: Option<&Map<String, Value>>) -> Reply {
        if !params
            .and_then(|params| params.get("notifications"))
            .is_some_and(Value::is_object)
        {
            return Failure::new(
                jsonrpc::INVALID_PARAMS,
                "Invalid params: \"notifications\" must be an object".to_owned(),
            )
            .reply(id, Era::Stateless, 200);
        }
        let acknowledgement = json!({
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {
                "notifications": {},
                "_meta": {META_SUBSCRIPTION_ID: id},
            },
        });
        Reply::sse(ReplyBody::Listen {
            first_event: jsonrpc::sse_event(&acknowledgement),
        })
    }

    async fn tools_list<H: ToolHost>(
        &self,
        host: &H,
        params: Option<&Map<String, Value>>,
        era: Era,
    ) -> Result<Value, Failure> {
        let cursor = match params.and_then(|params| params.get("cursor")) {
            None | Some(Value::Null) => None,
            Some(Value::String(cursor)) => Some(cursor.as_str()),
            Some(_) => {
                return Err(Failure::new(
                    jsonrpc::INVALID_PARAMS,
                    "Invalid params: \"cursor\" must be a string".to_owned(),
                ));
            }
        };
        let tools = host.list_tools().await;
        let start = match cursor {
            None => 0,
            Some(cursor) => match decode_cursor(cursor) {
                Some(start) if start <= tools.len() => start,
                _ => {
                    return Err(Failure::new(
                        jsonrpc::INVALID_PARAMS,
                        format!("Invalid params: invalid cursor '{cursor}'"),
                    ));
                }
            },
        };
        let page_size = self.limits.page_size.max(1);
        let end = start.saturating_add(page_size).min(tools.len());
        let page: Vec<Value> = tools[start..end]
            .iter()
            .map(|tool| tool_json(tool, era))
            .collect();
        let mut result = Map::new();
        result.insert("tools".into(), Value::Array(page));
        if end < tools.len() {
            result.insert("nextCursor".into(), encode_cursor(end).into());
        }
        if era == Era::Stateless {
            result.insert("ttlMs".into(), self.limits.tools_ttl_ms.into());
            // The list depends on the caller's subscriptions.
            result.insert("cacheScope".into(), "private".into());
        }
        Ok(Value::Object(result))
    }

    async fn tools_call<H: ToolHost>(
        &self,
        host: &H,
        params: Option<&Map<String, Value>>,
        era: Era,
    ) -> Result<Value, Failure> {
        let Some(name) = params
            .and_then(|params| params.get("name"))
            .and_then(Value::as_str)
        else {
            return Err(Failure::new(
                jsonrpc::INVALID_PARAMS,
                "Invalid params: tools/call needs a string \"name\"".to_owned(),
            ));
        };
        let arguments = match params.and_then(|params| params.get("arguments")) {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::Object(arguments)) => Value::Object(arguments.clone()),
            Some(_) => {
                return Err(Failure::new(
                    jsonrpc::INVALID_PARAMS,
                    "Invalid params: \"arguments\" must be an object".to_owned(),
                ));
            }
        };
        let meta = match params.and_then(|params| params.get("_meta")) {
            None | Some(Value::Null) => None,
            Some(Value::Object(meta)) => Some(Value::Object(meta.clone())),
            Some(_) => {
                return Err(Failure::new(
                    jsonrpc::INVALID_PARAMS,
                    "Invalid params: \"_meta\" must be an object".to_owned(),
                ));
            }
        };
        match host.call_tool(name, arguments, meta).await {
            Ok(result) => Ok(tool_result_json(&result, era)),
            Err(CallError::UnknownTool) => Err(Failure::new(
                jsonrpc::INVALID_PARAMS,
                format!("Unknown tool: {name}"),
            )),
            Err(CallError::InvalidArguments(problem)) => match era {
                Era::Legacy("2025-06-18") => Err(Failure::new(
                    jsonrpc::INVALID_PARAMS,
                    format!("Invalid arguments for tool {name}: {problem}"),
                )),
                _ => Ok(tool_result_json(
                    &ToolResult::error(format!("Invalid arguments for tool {name}: {problem}")),
                    era,
                )),
            },
            Err(CallError::Internal(problem)) => Err(Failure::new(
                jsonrpc::INTERNAL_ERROR,
                format!("Internal error: {problem}"),
            )),
        }
    }

    /// GET: the session's stream (legacy), or 405 for 2026-07-28.
    fn get(&self, incoming: &Incoming<'_>) -> Reply {
        let header = match self.stream_preamble(incoming) {
            Ok(header) => header,
            Err(reply) => return reply,
        };
        let Some(session_id) = incoming.session_id else {
            return missing_session();
        };
        if !headers::accepts(incoming.accept, "text/event-stream") {
            return error_reply(
                406,
                None,
                UnknownId::Null,
                jsonrpc::INVALID_REQUEST,
                "Not Acceptable: the client must accept text/event-stream",
                None,
            );
        }
        let version = match self.sessions.use_session(session_id, incoming.caller) {
            Ok(version) => version,
            Err(_) => return session_not_found(),
        };
        if let Some(header) = header
            && header != version
        {
            return version_not_negotiated(header, version);
        }
        Reply::sse(ReplyBody::OpenStream {
            session: session_id.to_owned(),
        })
    }

    /// DELETE: end the session (legacy), or 405 for 2026-07-28.
    fn delete(&self, incoming: &Incoming<'_>) -> Reply {
        let header = match self.stream_preamble(incoming) {
            Ok(header) => header,
            Err(reply) => return reply,
        };
        let Some(session_id) = incoming.session_id else {
            return missing_session();
        };
        if let Some(header) = header {
            match self.sessions.use_session(session_id, incoming.caller) {
                Ok(version) if version != header => {
                    return version_not_negotiated(header, version);
                }
                Ok(_) => {}
                Err(_) => return session_not_found(),
            }
        }
        match self.sessions.remove(session_id, incoming.caller) {
            Ok(()) => Reply::empty(204),
            Err(_) => session_not_found(),
        }
    }

    /// The version header of a GET or DELETE: unsupported → 400; the
    /// stateless revision has neither → 405.
    fn stream_preamble(&self, incoming: &Incoming<'_>) -> Result<Option<&'static str>, Reply> {
        let Some(requested) = incoming.protocol_version else {
            return Ok(None);
        };
        match supported(requested) {
            None => Err(self.unsupported_version(requested, None, Self::unknown_id(incoming))),
            Some(STATELESS_VERSION) => Err(error_reply(
                405,
                None,
                UnknownId::Omit,
                jsonrpc::INVALID_REQUEST,
                "Method not allowed: protocol version 2026-07-28 has no GET stream and no \
                 sessions; POST requests instead",
                None,
            )
            .with_header("Allow", "POST")),
            Some(version) => Ok(Some(version)),
        }
    }
}

fn missing_session() -> Reply {
    error_reply(
        400,
        None,
        UnknownId::Null,
        jsonrpc::INVALID_REQUEST,
        "Bad Request: Mcp-Session-Id header is required",
        None,
    )
}

fn session_not_found() -> Reply {
    error_reply(
        404,
        None,
        UnknownId::Null,
        jsonrpc::INVALID_REQUEST,
        "Session not found: it ended or never existed",
        None,
    )
}

fn version_not_negotiated(header: &str, version: &str) -> Reply {
    error_reply(
        400,
        None,
        UnknownId::Null,
        jsonrpc::INVALID_REQUEST,
        &format!(
            "Bad Request: MCP-Protocol-Version {header} is not this session's negotiated version \
             {version}"
        ),
        None,
    )
}

/// A JSON-RPC error for a request whose id is known.
#[derive(Debug)]
struct Failure {
    code: i64,
    message: String,
}

impl Failure {
    fn new(code: i64, message: String) -> Failure {
        Failure { code, message }
    }

    fn reply(self, id: &Value, era: Era, status: u16) -> Reply {
        let unknown = match era {
            Era::Stateless => UnknownId::Omit,
            Era::Legacy(_) => UnknownId::Null,
        };
        error_reply(status, Some(id), unknown, self.code, &self.message, None)
    }
}

const CURSOR_PREFIX: &str = "tools:";

/// Cursors are opaque to clients; ours is the offset of the next page.
fn encode_cursor(offset: usize) -> String {
    format!("{CURSOR_PREFIX}{offset}")
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    cursor.strip_prefix(CURSOR_PREFIX)?.parse().ok()
}

fn tool_json(tool: &Tool, era: Era) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), tool.name.clone().into());
    if let Some(title) = &tool.title {
        out.insert("title".into(), title.clone().into());
    }
    if let Some(description) = &tool.description {
        out.insert("description".into(), description.clone().into());
    }
    out.insert("inputSchema".into(), tool.input_schema.clone());
    if let Some(output_schema) = &tool.output_schema {
        // Up to 2025-11-25 an output schema describes an object; 2026-07-28
        // allows any JSON Schema.
        let object_typed = output_schema.get("type").and_then(Value::as_str) == Some("object");
        if era == Era::Stateless || object_typed {
            out.insert("outputSchema".into(), output_schema.clone());
        }
    }
    if let Some(annotations) = &tool.annotations {
        out.insert("annotations".into(), annotations.clone());
    }
    Value::Object(out)
}

fn tool_result_json(result: &ToolResult, era: Era) -> Value {
    // Legacy schemas type structuredContent as an object; 2026-07-28 allows
    // any JSON value.
    let structured = result
        .structured
        .as_ref()
        .filter(|value| era == Era::Stateless || value.is_object());
    let text = if result.content_text.is_empty() {
        result
            .structured
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default()
    } else {
        result.content_text.clone()
    };
    let mut out = Map::new();
    let content = if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": text})]
    };
    out.insert("content".into(), Value::Array(content));
    if let Some(structured) = structured {
        out.insert("structuredContent".into(), structured.clone());
    }
    out.insert("isError".into(), result.is_error.into());
    if let Some(Value::Object(meta)) = &result.meta {
        out.insert("_meta".into(), Value::Object(meta.clone()));
    }
    Value::Object(out)
}
