//! What the gateway needs around authentication of the MCP endpoint: the
//! `WWW-Authenticate` challenge of a 401 pointing at the RFC 9728 protected
//! resource metadata, that metadata document, and the `Origin` check the
//! transport requires. The gateway authenticates (the app key as a Bearer
//! token) and serves the document; these are the strings it sends.

use serde_json::{Map, Value};

use crate::jsonrpc::{self, UnknownId};
use crate::types::Reply;

/// Where the protected resource metadata is served, on the gateway's origin.
pub const PROTECTED_RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Quotes `value` as an RFC 9110 `quoted-string` (backslash before `"` and
/// `\`; control characters dropped, since they cannot appear in a header).
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `WWW-Authenticate` value of a 401 on the MCP endpoint: a Bearer
/// challenge (RFC 6750 §3) whose `resource_metadata` parameter (RFC 9728
/// §5.1) is `metadata_url`, e.g. `https://gw.example/.well-known/oauth-protected-resource`.
/// `error` adds `error="invalid_token"` style codes with a description (for
/// a key that was sent but is wrong, revoked or expired; leave it out when no
/// credentials came, as RFC 6750 §3.1 asks).
pub fn www_authenticate(metadata_url: &str, error: Option<(&str, &str)>) -> String {
    let mut value = format!("Bearer resource_metadata={}", quoted(metadata_url));
    if let Some((code, description)) = error {
        value.push_str(&format!(
            ", error={}, error_description={}",
            quoted(code),
            quoted(description)
        ));
    }
    value
}

/// The RFC 9728 protected resource metadata for the MCP endpoint
/// `resource` (its absolute URL, e.g. `https://gw.example/mcp`).
/// `authorization_servers` is left out when empty: app keys are issued by
/// Tollgate itself, not through OAuth (MCP's authorization section wants at
/// least one authorization server for OAuth clients; name one if the
/// deployment has one). Bearer tokens go in the `Authorization` header only.
pub fn protected_resource_metadata(
    resource: &str,
    authorization_servers: &[String],
    resource_name: Option<&str>,
    documentation: Option<&str>,
) -> Value {
    let mut out = Map::new();
    out.insert("resource".into(), resource.into());
    if !authorization_servers.is_empty() {
        out.insert(
            "authorization_servers".into(),
            Value::Array(
                authorization_servers
                    .iter()
                    .map(|server| Value::String(server.clone()))
                    .collect(),
            ),
        );
    }
    out.insert(
        "bearer_methods_supported".into(),
        Value::Array(vec!["header".into()]),
    );
    if let Some(name) = resource_name {
        out.insert("resource_name".into(), name.into());
    }
    if let Some(documentation) = documentation {
        out.insert("resource_documentation".into(), documentation.into());
    }
    Value::Object(out)
}

/// The transport's DNS-rebinding defence: an `Origin` that is present but
/// not allowed gets 403 (with a JSON-RPC error without id). Allowed: no
/// `Origin` (not a browser), an origin whose host and port equal the request's
/// `Host`, or one listed exactly in `allowed` (e.g. `https://app.example`).
pub fn check_origin(
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
) -> Result<(), Reply> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let origin = origin.trim();
    if allowed
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    let (authority, default_port) = if let Some(rest) = origin.strip_prefix("https://") {
        (Some(rest), ":443")
    } else if let Some(rest) = origin.strip_prefix("http://") {
        (Some(rest), ":80")
    } else {
        (None, "")
    };
    if let (Some(authority), Some(host)) = (authority, host) {
        let strip = |value: &str| {
            let value = value.trim().to_ascii_lowercase();
            value
                .strip_suffix(default_port)
                .map(str::to_owned)
                .unwrap_or(value)
        };
        if !authority.contains('/') && strip(authority) == strip(host) {
            return Ok(());
        }
    }
    Err(Reply::json(
        403,
        jsonrpc::error(
            None,
            UnknownId::Omit,
            jsonrpc::INVALID_REQUEST,
            &format!("Forbidden: Origin {origin} is not allowed"),
            None,
        ),
    ))
}
