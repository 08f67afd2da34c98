//! The MCP server at `/mcp` (SPEC §8): the protocol is the `mcp` crate's;
//! this module is its HTTP side and its tools.
//!
//! - Tools ([`McpRt`], compiled with the snapshot): one per operation of
//!   each published `http` service with an OpenAPI document
//!   (`<service>.<operation>`), one per `prompt` service (`<service>`), one
//!   `<service>.chat` per AI service; a service's `mcp.enabled: false`
//!   hides its tools, `mcp.tools` keeps only those named.
//! - A caller authenticates with its app key (401 with a `WWW-Authenticate`
//!   pointing at the RFC 9728 metadata at
//!   `/.well-known/oauth-protected-resource`) and sees only the tools of
//!   services its app may call (active subscription, or keyless).
//! - `tools/call` becomes the HTTP request the tool stands for, with the
//!   caller's own credentials, and runs through the whole pipeline
//!   ([`crate::pipeline::handle`]): the same admission, limits, money, call
//!   log and usage. A refusal comes back as a tool result with `isError`,
//!   the problem details as `structuredContent` (with x402's
//!   `PaymentRequired` when the service takes x402); `_meta["x402/payment"]`
//!   is sent as `PAYMENT-SIGNATURE`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use domain::code::Code;
use domain::model::{Lifecycle, Service, ServiceKind};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::Shared;
use crate::access::AppRt;
use crate::body::{GatewayBody, LimitedBody, RequestBody};
use crate::pipeline::{Peer, RequestContext, Trace};
use crate::refusal::Refusal;
use crate::snapshot::{ServiceRt, Snapshot};

/// Keep-alive comments on an idle SSE stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Largest answer of a tool call read back.
const ANSWER_LIMIT: usize = 8 << 20;

/// What a tool stands for.
#[derive(Debug)]
enum ToolKind {
    /// An operation of an `http` service's OpenAPI document.
    Http(Box<mcp::openapi::Operation>),
    /// A prompt service: the arguments are its variables.
    Prompt,
    /// An AI service's chat completions.
    Chat,
}

#[derive(Debug)]
struct ToolRt {
    tool: mcp::Tool,
    service: Arc<ServiceRt>,
    base_path: String,
    kind: ToolKind,
}

/// Every tool of a snapshot, by name.
#[derive(Debug, Default)]
pub struct McpRt {
    tools: Vec<ToolRt>,
    by_name: HashMap<String, usize>,
}

impl McpRt {
    /// Compiles the tools of the served services (`service_rts` by id).
    pub(crate) fn compile(
        services: &[Service],
        service_rts: &HashMap<String, Arc<ServiceRt>>,
        ai: &crate::ai::AiRt,
    ) -> Self {
        let mut out = McpRt::default();
        for service in services {
            if matches!(service.lifecycle, Lifecycle::Draft | Lifecycle::Retired) {
                continue;
            }
            let Some(service_rt) = service_rts.get(&service.id) else {
                continue;
            };
            let mcp_spec = service.spec.mcp.as_ref();
            if mcp_spec.is_some_and(|m| !m.enabled) {
                continue;
            }
            let allowed = |name: &str| {
                mcp_spec
                    .and_then(|m| m.tools.as_ref())
                    .is_none_or(|list| list.iter().any(|t| t == name))
            };
            let slug = &service.spec.slug;
            let base_path = service.spec.base_path.trim_end_matches('/').to_owned();
            let description = service
                .spec
                .description
                .clone()
                .or_else(|| service.spec.name.clone());
            match service.spec.kind {
                ServiceKind::Http => {
                    let Some(doc) = &service.spec.openapi else {
                        continue;
                    };
                    let operations = match mcp::openapi::operations(doc) {
                        Ok(operations) => operations,
                        Err(error) => {
                            tracing::warn!(service = %slug, %error, "OpenAPI document not usable for MCP tools");
                            continue;
                        }
                    };
                    for operation in operations {
                        if !allowed(&operation.tool_name) {
                            continue;
                        }
                        let name = tool_name(slug, Some(&operation.tool_name));
                        let tool = mcp::Tool {
                            name: name.clone(),
                            title: operation.summary.clone(),
                            description: operation
                                .description
                                .clone()
                                .or_else(|| operation.summary.clone())
                                .or_else(|| {
                                    Some(format!(
                                        "{} {}{} ({})",
                                        operation.method, base_path, operation.path, slug
                                    ))
                                }),
                            input_schema: operation.input_schema.clone(),
                            output_schema: None,
                            annotations: Some(json!({
                                "readOnlyHint": operation.method == "GET" || operation.method == "HEAD",
                                "openWorldHint": true,
                            })),
                        };
                        out.push(
                            tool,
                            service_rt,
                            &base_path,
                            ToolKind::Http(Box::new(operation)),
                        );
                    }
                }
                ServiceKind::Prompt => {
                    let Some(prompt) = &service.spec.prompt else {
                        continue;
                    };
                    if !allowed(slug) {
                        continue;
                    }
                    let output_schema = match &prompt.output {
                        domain::prompt::PromptOutput::Json { schema } => Some(json!({
                            "type": "object", "properties": {"output": schema}, "required": ["output"]})),
                        domain::prompt::PromptOutput::Text => None,
                    };
                    let tool = mcp::Tool {
                        name: tool_name(slug, None),
                        title: service.spec.name.clone(),
                        description: description.clone(),
                        input_schema: prompt.variables.clone(),
                        output_schema,
                        annotations: Some(json!({"readOnlyHint": true, "openWorldHint": true})),
                    };
                    out.push(tool, service_rt, &base_path, ToolKind::Prompt);
                }
                ServiceKind::Ai => {
                    if !allowed("chat") {
                        continue;
                    }
                    let mut models: Vec<&String> = ai
                        .services
                        .iter()
                        .find(|s| s.service.id == service.id && s.prompt.is_none())
                        .map(|s| s.models.keys().collect())
                        .unwrap_or_default();
                    models.sort();
                    if models.is_empty() {
                        continue;
                    }
                    let tool = mcp::Tool {
                        name: tool_name(slug, Some("chat")),
                        title: Some(format!("Chat with {slug}")),
                        description: Some(format!(
                            "Ask one of {slug}'s models (OpenAI chat completions: model, messages, max_tokens, temperature); returns the answer's text. {}",
                            description.clone().unwrap_or_default()
                        )),
                        input_schema: json!({
                            "type": "object",
                            "required": ["model", "messages"],
                            "properties": {
                                "model": {"type": "string", "enum": models},
                                "messages": {"type": "array", "minItems": 1, "items": {
                                    "type": "object", "required": ["role", "content"],
                                    "properties": {"role": {"enum": ["system", "user", "assistant"]},
                                                   "content": {"type": "string"}}}},
                                "max_tokens": {"type": "integer", "minimum": 1},
                                "temperature": {"type": "number", "minimum": 0, "maximum": 2}
                            }
                        }),
                        output_schema: None,
                        annotations: Some(json!({"readOnlyHint": true, "openWorldHint": true})),
                    };
                    out.push(tool, service_rt, &base_path, ToolKind::Chat);
                }
            }
        }
        // A stable order, whatever the services' order (clients cache lists).
        out.tools.sort_by(|a, b| a.tool.name.cmp(&b.tool.name));
        out.by_name = out
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| (t.tool.name.clone(), i))
            .collect();
        out
    }

    fn push(&mut self, tool: mcp::Tool, service: &Arc<ServiceRt>, base_path: &str, kind: ToolKind) {
        if self.by_name.contains_key(&tool.name) {
            return;
        }
        self.by_name.insert(tool.name.clone(), self.tools.len());
        self.tools.push(ToolRt {
            tool,
            service: service.clone(),
            base_path: base_path.to_owned(),
            kind,
        });
    }
}

/// `<service>.<tool>`, in MCP's tool-name alphabet and length.
fn tool_name(service: &str, tool: Option<&str>) -> String {
    let name = match tool {
        Some(tool) => format!("{service}.{tool}"),
        None => service.to_owned(),
    };
    mcp::openapi::sanitize_tool_name(&name)
}

/// The MCP server of a gateway (sessions of the initialize-based versions
/// live on this node).
pub(crate) fn server() -> mcp::Server {
    mcp::Server::new(mcp::ServerInfo {
        name: "tollgate".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        instructions: Some(
            "Tools are the APIs, prompts and AI models your app is subscribed to. Calls are metered and charged like direct API calls; a refused call returns the gateway's problem details (status, code, how to fix it).".into(),
        ),
    })
}

/// `/.well-known/oauth-protected-resource[/mcp]` (RFC 9728).
pub(crate) fn resource_metadata(shared: &Shared) -> Response<GatewayBody> {
    let public = &shared.options.public_url;
    let body = mcp::auth::protected_resource_metadata(
        &format!("{public}/mcp"),
        &[],
        Some("Tollgate MCP"),
        Some(&format!("{public}/_tollgate/problems")),
    );
    let mut response = Response::new(GatewayBody::full(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves `/mcp`.
pub(crate) async fn handle(
    shared: &Shared,
    context: &mut RequestContext,
    trace: &mut Trace,
    request: Request<RequestBody>,
) -> Result<Response<GatewayBody>, Refusal> {
    let snapshot = context.snapshot.clone();
    let metadata_url = format!(
        "{}{}",
        shared.options.public_url,
        mcp::auth::PROTECTED_RESOURCE_METADATA_PATH
    );
    let key = match crate::admit::identify_key(&snapshot, &request, domain::now_ms()) {
        Ok(key) => key,
        Err(refusal) => {
            let error = (refusal.code != Code::MissingCredentials)
                .then(|| ("invalid_token", refusal.detail.clone()));
            let challenge = mcp::auth::www_authenticate(
                &metadata_url,
                error
                    .as_ref()
                    .map(|(code, detail)| (*code, detail.as_str())),
            );
            trace.refused = Some(refusal.code);
            let mut response =
                refusal.into_response(&context.request_id, &shared.options.public_url);
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            return Ok(response);
        }
    };
    let app = key.app.clone();
    trace.who.app = Some(app.clone());
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A browser's Origin must be the gateway's own public origin (the
    // request's Host is the caller's to choose: no defence against DNS
    // rebinding).
    let public_host = shared
        .options
        .public_url
        .split("://")
        .nth(1)
        .map(|rest| rest.split('/').next().unwrap_or(rest));
    if let Err(reply) = mcp::auth::check_origin(text("origin"), public_host, &[]) {
        return Ok(into_response(reply, shared));
    }
    // The caller's credentials, replayed on the calls its tools make.
    let credentials: Vec<(HeaderName, HeaderValue)> = [
        header::AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
        // The client's address as the outer request gave it, so IP rules
        // behind trusted proxies see the same client; and its Host, for
        // routes bound to one.
        HeaderName::from_static("x-forwarded-for"),
        header::HOST,
    ]
    .into_iter()
    .filter_map(|name| headers.get(&name).cloned().map(|value| (name, value)))
    .collect();
    let (parts, body) = request.into_parts();
    let limit = (mcp::MAX_MESSAGE_BYTES as u64) + 1;
    let deadline = std::time::Instant::now() + shared.options.body_timeout;
    let bytes = match LimitedBody::new(body, limit).collect_by(deadline).await {
        Ok(bytes) => bytes,
        Err(error) if error.downcast_ref::<crate::body::BodyTooLarge>().is_some() => {
            // More than the protocol takes: the server answers 413.
            Bytes::from(vec![b' '; mcp::MAX_MESSAGE_BYTES + 1])
        }
        Err(error) => return Err(crate::pipeline::unreadable_body(&*error)),
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let incoming = mcp::Incoming {
        method: parts.method.as_str(),
        accept: header("accept"),
        content_type: header("content-type"),
        session_id: header("mcp-session-id"),
        protocol_version: header("mcp-protocol-version"),
        mcp_method: header("mcp-method"),
        mcp_name: header("mcp-name"),
        body: &bytes,
        caller: &app.id,
    };
    let host = Host {
        shared,
        snapshot: &snapshot,
        app: &app,
        credentials: &credentials,
        peer: context.peer.clone(),
    };
    let reply = shared.mcp.handle(&host, incoming).await;
    Ok(into_response(reply, shared))
}

fn into_response(reply: mcp::Reply, shared: &Shared) -> Response<GatewayBody> {
    let body = match reply.body {
        mcp::ReplyBody::Empty => GatewayBody::empty(),
        mcp::ReplyBody::Json(bytes) => GatewayBody::full(bytes),
        mcp::ReplyBody::OpenStream { session } => keep_alive(shared, Some(session), Vec::new()),
        mcp::ReplyBody::Listen { first_event } => keep_alive(shared, None, first_event),
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// An SSE stream that sends `first` (or a comment), then a keep-alive
/// comment every 15 s until the session ends (or, without one, until the
/// client leaves).
fn keep_alive(shared: &Shared, session: Option<String>, first: Vec<u8>) -> GatewayBody {
    let first = if first.is_empty() {
        b": stream open\n\n".to_vec()
    } else {
        first
    };
    let server = shared.mcp_handle();
    let stream = futures_util::stream::unfold(
        (Some(Bytes::from(first)), session, server),
        |(first, session, server)| async move {
            if let Some(first) = first {
                return Some((first, (None, session, server)));
            }
            tokio::time::sleep(KEEP_ALIVE).await;
            if let Some(id) = &session
                && !server.session_open(id)
            {
                return None;
            }
            Some((
                Bytes::from_static(b": keep-alive\n\n"),
                (None, session, server),
            ))
        },
    );
    GatewayBody::Stream(Box::pin(stream))
}

/// The caller's view of the tools, and how they run.
struct Host<'a> {
    shared: &'a Shared,
    snapshot: &'a Snapshot,
    app: &'a Arc<AppRt>,
    credentials: &'a [(HeaderName, HeaderValue)],
    peer: Arc<Peer>,
}

type Handled<'a> = Pin<Box<dyn Future<Output = Response<GatewayBody>> + Send + 'a>>;

impl mcp::ToolHost for Host<'_> {
    fn list_tools(&self) -> impl Future<Output = Vec<mcp::Tool>> + Send {
        let tools = self
            .snapshot
            .mcp
            .tools
            .iter()
            .filter(|t| self.app.may_call(&t.service))
            .map(|t| t.tool.clone())
            .collect();
        std::future::ready(tools)
    }

    fn call_tool(
        &self,
        name: &str,
        arguments: Value,
        meta: Option<Value>,
    ) -> impl Future<Output = Result<mcp::ToolResult, mcp::CallError>> + Send {
        let found = self
            .snapshot
            .mcp
            .by_name
            .get(name)
            .and_then(|&i| self.snapshot.mcp.tools.get(i))
            .filter(|t| self.app.may_call(&t.service));
        let prepared = found.ok_or(mcp::CallError::UnknownTool).and_then(|tool| {
            self.request(tool, &arguments, meta.as_ref())
                .map(|r| (tool, r))
        });
        async move {
            let (tool, request) = prepared?;
            let handled: Handled<'_> = Box::pin(crate::pipeline::handle(
                self.shared,
                request,
                self.peer.clone(),
            ));
            let mut response = handled.await;
            crate::body::materialize(&mut response);
            Ok(tool_result(tool, response).await)
        }
    }
}

impl Host<'_> {
    /// The HTTP request a tool call stands for.
    fn request(
        &self,
        tool: &ToolRt,
        arguments: &Value,
        meta: Option<&Value>,
    ) -> Result<Request<RequestBody>, mcp::CallError> {
        let errors = mcp::schema::validate(&tool.tool.input_schema, arguments);
        if !errors.is_empty() {
            return Err(mcp::CallError::InvalidArguments(mcp::schema::describe(
                &errors,
            )));
        }
        let (method, target, body, extra) = match &tool.kind {
            ToolKind::Http(operation) => {
                let call = mcp::openapi::build_call(operation, arguments)
                    .map_err(mcp::CallError::InvalidArguments)?;
                (
                    call.method.clone(),
                    format!("{}{}", tool.base_path, call.path_and_query()),
                    call.body.clone(),
                    call.headers.clone(),
                )
            }
            ToolKind::Prompt => (
                "POST".to_owned(),
                tool.base_path.clone(),
                Some((
                    "application/json".to_owned(),
                    arguments.to_string().into_bytes(),
                )),
                Vec::new(),
            ),
            ToolKind::Chat => {
                let mut body = arguments.clone();
                body["stream"] = Value::Bool(false);
                (
                    "POST".to_owned(),
                    format!("{}/v1/chat/completions", tool.base_path),
                    Some(("application/json".to_owned(), body.to_string().into_bytes())),
                    Vec::new(),
                )
            }
        };
        let internal = |why: &str| mcp::CallError::Internal(why.to_owned());
        // The call must reach the tool's own service, not another route the
        // arguments happen to spell.
        let host = self
            .credentials
            .iter()
            .find(|(name, _)| name == header::HOST)
            .and_then(|(_, value)| value.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase());
        let path = target.split('?').next().unwrap_or(&target);
        let reaches_service = match &tool.kind {
            ToolKind::Http(_) => {
                let method = http::Method::from_bytes(method.as_bytes())
                    .map_err(|_| internal("bad method"))?;
                let host = host.as_deref().filter(|_| self.snapshot.router.has_hosts());
                match self.snapshot.router.find(host, path, &method) {
                    crate::router::Match::Found(index) => self
                        .snapshot
                        .routes
                        .get(index)
                        .is_some_and(|route| route.service.id == tool.service.id),
                    _ => true,
                }
            }
            _ => true,
        };
        if !reaches_service || path == "/mcp" || path.starts_with("/_tollgate/") {
            return Err(mcp::CallError::InvalidArguments(
                "the arguments lead outside this tool's API".into(),
            ));
        }
        let mut builder = Request::builder()
            .method(method.as_str())
            .uri(target.as_str())
            .extension(crate::pipeline::Internal);
        if !self
            .credentials
            .iter()
            .any(|(name, _)| name == header::HOST)
        {
            builder = builder.header(header::HOST, "mcp.internal");
        }
        for (name, value) in extra {
            let lower = name.to_ascii_lowercase();
            // Parameters never set what the gateway decides.
            let reserved = matches!(
                lower.as_str(),
                "host"
                    | "authorization"
                    | "x-api-key"
                    | "payment-signature"
                    | "content-length"
                    | "transfer-encoding"
                    | "connection"
                    | "forwarded"
                    | "x-request-id"
            ) || lower.starts_with("x-forwarded-")
                || lower.starts_with("tollgate-");
            if !reserved {
                builder = builder.header(name.as_str(), value.as_str());
            }
        }
        for (name, value) in self.credentials {
            builder = builder.header(name, value);
        }
        if let Some(payment) = meta.and_then(|m| m.get("x402/payment")) {
            let encoded = base64::engine::general_purpose::STANDARD.encode(payment.to_string());
            builder = builder.header("payment-signature", encoded);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                builder = builder
                    .header(header::CONTENT_TYPE, content_type)
                    .header(header::CONTENT_LENGTH, bytes.len());
                RequestBody::Full(Some(Bytes::from(bytes)))
            }
            None => RequestBody::Empty,
        };
        builder
            .body(body)
            .map_err(|_| internal("the tool's request could not be built"))
    }
}

/// A tool's HTTP answer as an MCP result.
async fn tool_result(tool: &ToolRt, response: Response<GatewayBody>) -> mcp::ToolResult {
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, ANSWER_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return mcp::ToolResult::error(
                "The API's answer could not be read (too large or broken off).",
            );
        }
    };
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let decode = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .ok()
            })
            .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
    };
    let status = parts.status.as_u16();
    if status >= 400 {
        let is_problem = json
            .as_ref()
            .is_some_and(|v| v.get("code").is_some() && v.get("request_id").is_some());
        if is_problem {
            let problem = json.unwrap_or(Value::Null);
            return mcp::ToolResult::refusal(problem, decode("payment-required"));
        }
        let mut result = mcp::ToolResult::error(format!("The API answered {status}: {text}"));
        result.structured =
            Some(json!({"status": status, "body": json.unwrap_or(Value::String(text))}));
        return result;
    }
    let mut result = match (&tool.kind, json) {
        (ToolKind::Chat, Some(answer)) => {
            let content = answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            mcp::ToolResult {
                content_text: content,
                structured: Some(answer),
                is_error: false,
                meta: None,
            }
        }
        (_, Some(value)) => mcp::ToolResult::json(value),
        (_, None) => mcp::ToolResult::text(text),
    };
    if let Some(settled) = decode("payment-response") {
        result.meta = Some(json!({"x402/payment-response": settled}));
    }
    result
}
