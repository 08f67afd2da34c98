//! Integration tests of the `mcp` crate, through its public API only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth;
mod legacy;
mod openapi;
mod pattern;
mod schema;
mod stateless;
mod transport;

use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use mcp::{
    CallError, Incoming, Limits, Reply, ReplyBody, Server, ServerInfo, Tool, ToolHost, ToolResult,
};
use serde_json::{Value, json};

/// Runs a future to completion on this thread (the test hosts never wait).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::yield_now();
    }
}

pub fn server() -> Server {
    server_with(Limits::default())
}

pub fn server_with(limits: Limits) -> Server {
    Server::with_limits(
        ServerInfo {
            name: "tollgate".into(),
            version: "1.2.3".into(),
            instructions: Some("Call the weather tools.".into()),
        },
        limits,
    )
}

/// A host with a weather tool, a paid tool and `extra` filler tools.
#[derive(Default)]
pub struct Host {
    pub extra: usize,
    /// The `_meta` of the last call.
    pub last_meta: Mutex<Option<Value>>,
    pub structured: Option<Value>,
}

pub fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 1}},
        "required": ["city"],
        "additionalProperties": false
    })
}

impl ToolHost for Host {
    async fn list_tools(&self) -> Vec<Tool> {
        let mut tools = vec![
            Tool {
                name: "get_weather".into(),
                title: Some("Weather".into()),
                description: Some("Forecast for a city".into()),
                input_schema: weather_schema(),
                output_schema: Some(json!({"type": "object"})),
                annotations: Some(json!({"readOnlyHint": true})),
            },
            Tool {
                name: "paid".into(),
                title: None,
                description: None,
                input_schema: json!({"type": "object"}),
                output_schema: Some(json!({"type": "array"})),
                annotations: None,
            },
        ];
        for n in 0..self.extra {
            tools.push(Tool {
                name: format!("tool_{n:04}"),
                title: None,
                description: None,
                input_schema: json!({"type": "object"}),
                output_schema: None,
                annotations: None,
            });
        }
        tools
    }

    async fn call_tool(
        &self,
        name: &str,
        arguments: Value,
        meta: Option<Value>,
    ) -> Result<ToolResult, CallError> {
        *self.last_meta.lock().unwrap() = meta.clone();
        match name {
            "get_weather" => {
                let errors = mcp::schema::validate(&weather_schema(), &arguments);
                if !errors.is_empty() {
                    return Err(CallError::InvalidArguments(mcp::schema::describe(&errors)));
                }
                if let Some(structured) = &self.structured {
                    return Ok(ToolResult {
                        content_text: String::new(),
                        structured: Some(structured.clone()),
                        is_error: false,
                        meta: None,
                    });
                }
                Ok(ToolResult::json(
                    json!({"city": arguments["city"], "temp_c": 21}),
                ))
            }
            "paid" => {
                let payment = meta.as_ref().and_then(|meta| meta.get("x402/payment"));
                if payment.is_some() {
                    let mut result = ToolResult::text("paid result");
                    result.meta = Some(json!({"x402/payment-response": {"success": true}}));
                    return Ok(result);
                }
                Ok(ToolResult::refusal(
                    json!({"type": "https://gw/_tollgate/problems/payment-required",
                           "title": "Payment required", "status": 402,
                           "code": "payment_required"}),
                    Some(json!({"x402Version": 2, "accepts": [{"scheme": "exact"}]})),
                ))
            }
            "broken" => Err(CallError::Internal("boom".into())),
            _ => Err(CallError::UnknownTool),
        }
    }
}

/// A request with the usual headers of a well-behaved client.
#[derive(Clone)]
pub struct Req {
    pub method: &'static str,
    pub accept: Option<&'static str>,
    pub content_type: Option<&'static str>,
    pub session: Option<String>,
    pub version: Option<&'static str>,
    pub mcp_method: Option<String>,
    pub mcp_name: Option<String>,
    pub body: Vec<u8>,
    pub caller: &'static str,
}

impl Req {
    pub fn post(body: Value) -> Req {
        Req::raw(body.to_string().into_bytes())
    }

    pub fn raw(body: Vec<u8>) -> Req {
        Req {
            method: "POST",
            accept: Some("application/json, text/event-stream"),
            content_type: Some("application/json"),
            session: None,
            version: None,
            mcp_method: None,
            mcp_name: None,
            body,
            caller: "app-1",
        }
    }

    pub fn method(method: &'static str) -> Req {
        Req {
            method,
            accept: Some("text/event-stream"),
            content_type: None,
            body: Vec::new(),
            ..Req::raw(Vec::new())
        }
    }

    pub fn session(mut self, session: &str) -> Req {
        self.session = Some(session.to_owned());
        self
    }

    pub fn version(mut self, version: &'static str) -> Req {
        self.version = Some(version);
        self
    }

    pub fn caller(mut self, caller: &'static str) -> Req {
        self.caller = caller;
        self
    }

    pub fn send(&self, server: &Server, host: &Host) -> Reply {
        let incoming = Incoming {
            method: self.method,
            accept: self.accept,
            content_type: self.content_type,
            session_id: self.session.as_deref(),
            protocol_version: self.version,
            mcp_method: self.mcp_method.as_deref(),
            mcp_name: self.mcp_name.as_deref(),
            body: &self.body,
            caller: self.caller,
        };
        block_on(server.handle(host, incoming))
    }
}

/// The JSON body of a reply.
pub fn body(reply: &Reply) -> Value {
    match &reply.body {
        ReplyBody::Json(bytes) => serde_json::from_slice(bytes).expect("JSON body"),
        other => panic!("expected a JSON body, got {other:?}"),
    }
}

/// Asserts a JSON-RPC error reply and returns its body.
pub fn assert_error(reply: &Reply, status: u16, code: i64) -> Value {
    assert_eq!(reply.status, status, "status of {reply:?}");
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    let body = body(reply);
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["code"], code, "error of {body}");
    body
}

pub fn initialize_body(version: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "test-client", "version": "0.1"}
        }
    })
}

/// Opens a session; returns its id.
pub fn initialize(server: &Server, host: &Host, version: &str) -> String {
    let reply = Req::post(initialize_body(version)).send(server, host);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
        .header("Mcp-Session-Id")
        .expect("session id")
        .to_owned()
}

/// A request in an open session, with the version header.
pub fn in_session(session: &str, version: &'static str, body: Value) -> Req {
    Req::post(body).session(session).version(version)
}

pub fn request(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}
