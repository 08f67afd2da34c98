//! MCP (Model Context Protocol) server logic for the gateway's `POST /mcp`.
//! Pure protocol: no sockets, no HTTP types, no runtime. The gateway reads
//! the request into an [`Incoming`], awaits [`Server::handle`] with a
//! [`ToolHost`] for the authenticated caller, and writes the [`Reply`].
//!
//! - [`Server`] holds who we are ([`ServerInfo`]), the bounds ([`Limits`]) and
//!   the sessions of the initialize-based versions (in memory, sharded,
//!   bounded, bound to their caller). [`Server::session_open`] tells the GET
//!   stream when to stop.
//! - [`ToolHost`] is the gateway's side: the caller's [`Tool`]s and running
//!   one ([`ToolResult`], or a [`CallError`] the protocol maps per version).
//!   [`ToolResult::refusal`] shapes a gateway refusal (problem details, x402).
//! - [`openapi`] turns OpenAPI 3.0/3.1 documents into operations with tool
//!   names and input schemas, and arguments back into HTTP calls.
//! - [`schema`] validates tool arguments and prompt variables (JSON Schema
//!   subset, with an ECMA-262-subset `pattern` engine) and checks schemas
//!   before they are saved.
//! - [`auth`] has the 401 `WWW-Authenticate` challenge, the RFC 9728
//!   protected resource metadata and the `Origin` check.
//! - [`jsonrpc`] exports the error codes.
//!
//! # Versions
//!
//! [`VERSIONS`]: 2025-06-18, 2025-11-25 (the *legacy* era: `initialize`,
//! sessions) and 2026-07-28 (the *modern* era: stateless). One endpoint
//! serves both, as the 2026-07-28 versioning page allows a "dual-era"
//! server to: `initialize` selects a legacy session; a request with
//! `MCP-Protocol-Version: 2026-07-28` is served statelessly.
//!
//! | | 2025-06-18 | 2025-11-25 | 2026-07-28 |
//! |---|---|---|---|
//! | start | `initialize` → `Mcp-Session-Id` | same | none; `server/discover` optional |
//! | POST without session | 400 | 400 | no session; `Mcp-Session-Id` ignored |
//! | unknown / ended / other caller's session | 404 | 404 | — |
//! | GET | SSE stream ([`ReplyBody::OpenStream`]) | same | 405 |
//! | DELETE | 204, session gone | same | 405 |
//! | notification / client response | 202 | 202 | 202 / 400 (responses not allowed) |
//! | `Mcp-Method`, `Mcp-Name` | ignored | ignored | required, must match body: else 400 −32020 |
//! | request `_meta` version + capabilities | — | — | required: else 400 −32602 |
//! | unknown method | 200, −32601 | 200, −32601 | 404, −32601 |
//! | arguments failing the schema | −32602 | tool result, `isError` | tool result, `isError` |
//! | results | plain | plain | `resultType`, `_meta` serverInfo, `ttlMs`/`cacheScope` on lists |
//!
//! Common to all: one JSON-RPC message per POST (a batch array is 400
//! −32600: batching was removed in 2025-06-18); invalid JSON 400 −32700 with
//! `id: null` (2026-07-28: `id` left out); wrong shapes 400 −32600; body over
//! [`MAX_MESSAGE_BYTES`] 413; an unsupported `MCP-Protocol-Version` 400
//! −32022 with `data: {supported, requested}`; `tools/call` without a name or
//! with an unknown tool −32602 ("Unknown tool: …"); `tools/list` paginated
//! with an opaque `cursor` (an invalid one −32602).
//!
//! # Where the rules come from
//!
//! The specification text in `modelcontextprotocol/modelcontextprotocol`
//! (`docs/specification/<revision>/…` at the paths named):
//! - 2025-06-18: `docs/specification/2025-06-18/basic/transports.mdx`
//!   (POST body "a single JSON-RPC request, notification, or response";
//!   `Accept` listing both types; 202 with no body for notifications and
//!   responses; session id "visible ASCII (0x21–0x7E)", "cryptographically
//!   secure"; 400 without a session id, 404 for a terminated session; GET:
//!   `text/event-stream` or 405; DELETE, 405 allowed; `MCP-Protocol-Version`
//!   on all later requests, "assume 2025-03-26" when absent with no other way
//!   to know, 400 for an invalid or unsupported one), `basic/lifecycle.mdx`
//!   (echo a supported version, else "another protocol version it supports
//!   … SHOULD be the latest"), `server/tools.mdx` ("Invalid arguments" listed
//!   under protocol errors, −32602 "Unknown tool"; `structuredContent` plus
//!   the same JSON as text; `outputSchema`), and the changelog ("Remove
//!   support for JSON-RPC batching").
//! - 2025-11-25: `docs/specification/2025-11-25/changelog.mdx` (input
//!   validation errors are tool execution errors, SEP-1303; 403 for an
//!   invalid `Origin`; tool-name guidance SEP-986), `server/tools.mdx` (names
//!   1–128 characters of `A-Z a-z 0-9 _ - .`), `basic/transports.mdx`.
//! - 2026-07-28: `docs/specification/2026-07-28/basic/transports/streamable-http.mdx`
//!   (no GET stream, no sessions: GET/DELETE 405, ignore `Mcp-Session-Id`;
//!   `MCP-Protocol-Version` on every POST and equal to `_meta`
//!   `io.modelcontextprotocol/protocolVersion`; `Mcp-Method` for all
//!   requests and `Mcp-Name` for `tools/call`, `resources/read`,
//!   `prompts/get`, Base64 sentinel `=?base64?…?=`, case-sensitive values,
//!   400 + −32020 `HeaderMismatch`; unknown method 404 + −32601),
//!   `basic/versioning.mdx` (`UnsupportedProtocolVersionError`,
//!   `server/discover` MUST, dual-era servers), `basic/index.mdx`
//!   (per-request `_meta` fields, missing ones −32602 with 400; result
//!   `resultType`; `serverInfo` in result `_meta`; error code ranges),
//!   `changelog.mdx` (codes −32020/−32021/−32022, `subscriptions/listen`
//!   replaces GET, `ping` removed, `ttlMs`/`cacheScope`) and
//!   `schema/2026-07-28/schema.ts` (`DiscoverResult`, `CacheableResult`,
//!   `SubscriptionsListenRequest`, acknowledgement notification).
//! - x402 over MCP: `coinbase/x402` `specs/transports-v2/mcp.md` (a payment
//!   requirement is a tool result with `isError: true`; the client retries
//!   with `_meta["x402/payment"]`; settlement in result
//!   `_meta["x402/payment-response"]`).
//!
//! # Decisions where the specification is silent
//! - Unsupported `MCP-Protocol-Version` (any era) answers −32022 with
//!   `supported`/`requested`: the only code any revision defines for it, and
//!   a "recognised modern error" to dual-era clients.
//! - `initialize` asking for 2026-07-28 (which has no handshake) or for an
//!   unknown version gets [`LATEST_WITH_INITIALIZE`] (2025-11-25). An
//!   `initialize` that carries a session id opens a new session anyway.
//! - A legacy request whose `MCP-Protocol-Version` differs from its
//!   session's negotiated version is 400 (−32600).
//! - Missing `Accept` or `Content-Type` is taken as acceptable; present
//!   ones must admit `application/json` (else 406) / be `application/json`
//!   (else 415). Replies to requests are always single JSON documents, never
//!   SSE (the transport lets the server choose).
//! - A POST with neither version header nor session: 400; −32020 when the
//!   body carries modern `_meta` (the header is missing), else −32600 (no
//!   session). 2025-03-26 clients (no header ever) are not served.
//! - HTTP status of JSON-RPC errors: 400 for −32700/−32600 and the
//!   2026-07-28 header/meta errors, 404 for unknown methods in 2026-07-28,
//!   413/415/406 as above, 200 for errors of a well-formed request.
//! - The server sends nothing server-initiated: tools `listChanged: false`;
//!   the GET stream and `subscriptions/listen` carry only the gateway's
//!   keep-alive comments (the acknowledgement honours no notification type).
//! - Requests before `notifications/initialized` are served (the lifecycle
//!   says the client SHOULD wait; nothing requires the server to refuse).
//! - Legacy results keep `structuredContent` only when it is an object and
//!   `outputSchema` only when it describes an object (those revisions' types);
//!   2026-07-28 passes any JSON value.
//!
//! # 2026-07-28: assumptions
//! The stored revision text was read at spec commit `b488c16` (July 2026);
//! where it is thin:
//! - The `server/discover` page itself was not among the stored files; its
//!   shape follows `schema.ts` (`DiscoverResult`: `supportedVersions`
//!   newest first, `capabilities`, `instructions`, `ttlMs`, `cacheScope`), and
//!   it requires the per-request `_meta` like any request.
//! - Notification POSTs: the revision "defines no client notifications over
//!   HTTP" and no header rules for them; we accept them (202) and check
//!   `Mcp-Method` only when it is sent.
//! - `Mcp-Name` is checked when the body has the field it mirrors; a
//!   `tools/call` without `name` then fails as −32602.
//! - No `Mcp-Param-*` headers: our tools never carry `x-mcp-header`
//!   (the OpenAPI conversion strips it), so there is nothing to check.
//! - `ttlMs`: `tools/list` [`Limits::tools_ttl_ms`] (60 s) with `cacheScope:
//!   "private"` (the list depends on the caller); `server/discover`
//!   [`Limits::discover_ttl_ms`] (1 h), `"public"`.
//! - No `InputRequiredResult` (MRTR) is ever returned; x402 payment stays the
//!   x402 transport's tool-result flow, identical in every version.
//! - A caller may be modern and legacy at once (different clients of one
//!   app); the eras do not interact.
//!
//! # rmcp
//! The official Rust SDK was checked (`rmcp` 3.11.0 on crates.io): it knows
//! all three versions (`ProtocolVersion::V_2026_07_28`, `server/discover`,
//! the mirrored-header checks), but its server transport,
//! `StreamableHttpService`, is a `tower_service::Service<http::Request<B>>`
//! answering `http` responses with `http-body` bodies, that `tokio::spawn`s
//! a worker per session behind a `SessionManager` keyed by session id only.
//! It does not fit: (1) only `gateway` may know HTTP types, and the gateway
//! serves HTTP/1.1 with its own `h1` code, not `http`/hyper types; (2) the
//! data plane runs one single-threaded runtime per worker thread and a
//! request never crosses threads, while a spawned session worker pins each
//! session to one thread and makes requests from other connections hop
//! through channels; (3) sessions must belong to the authenticated app
//! (another app's session id is 404), which its session manager has no
//! notion of; (4) it brings tokio-util, tokio-stream, sse-stream, schemars,
//! http-body-util and its handler/router machinery into a crate that needs
//! serde_json. Its model types alone would not remove the per-version
//! differences this crate writes explicitly (a few `json!` shapes), so they
//! are not used either.
//!
//! # Limits
//! Bodies up to [`MAX_MESSAGE_BYTES`]; sessions up to
//! [`Limits::max_sessions`] and [`Limits::max_sessions_per_caller`], idle ones
//! ended after [`Limits::session_idle`]; `tools/list` pages of
//! [`Limits::page_size`]; schema and OpenAPI expansion bounds in their
//! modules.

pub mod auth;
mod headers;
pub mod jsonrpc;
pub mod openapi;
pub mod schema;
mod server;
mod session;
mod types;

pub use server::Server;
pub use types::{
    CallError, Incoming, LATEST_WITH_INITIALIZE, Limits, MAX_MESSAGE_BYTES, Reply, ReplyBody,
    STATELESS_VERSION, ServerInfo, Tool, ToolHost, ToolResult, VERSIONS,
};
