//! The one place where a refusal becomes a response: status, reason code and
//! an RFC 9457 `application/problem+json` body, with `Cache-Control:
//! no-store`. Every phase refuses by returning a [`Refusal`].

use domain::code::Code;
use http::HeaderName;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::body::GatewayBody;

/// Why the gateway answers instead of the upstream.
#[derive(Debug)]
pub struct Refusal {
    pub code: Code,
    /// A sentence a person can act on.
    pub detail: String,
    /// For 405: the allowed methods.
    pub allow: Option<String>,
    /// Headers the refusal needs (`Retry-After`, `RateLimit`…).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Problem extension members (a 402's `balance`, `required`…).
    pub extra: Vec<(&'static str, serde_json::Value)>,
    /// Many nodes: the lease or grant on this node that was short; the
    /// pipeline asks the store for more and admits the call again (the
    /// refusal stands if it cannot get it).
    pub lease_short: Option<Box<LeaseShort>>,
}

/// Many nodes: what a call found short on its node.
#[derive(Debug)]
pub enum LeaseShort {
    /// The node's lease of a wallet, short of this much.
    Wallet(std::sync::Arc<crate::money::WalletRt>, i64),
    /// The node's grant of a quota or budget counter, short of this much
    /// (`.1`) within the limit `.2`.
    Counter(std::sync::Arc<crate::money::Counter>, i64, i64),
}

impl Refusal {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            allow: None,
            headers: Vec::new(),
            extra: Vec::new(),
            lease_short: None,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Renders the refusal. `public_url` has no trailing slash.
    pub fn into_response(
        self,
        request_id: &HeaderValue,
        public_url: &str,
    ) -> Response<GatewayBody> {
        self.render(request_id, public_url, None)
    }

    /// Renders the refusal on an AI endpoint: the error envelope of the
    /// caller's API (OpenAI or Anthropic) with the problem's members beside
    /// it (SPEC §4).
    pub fn into_dialect_response(
        self,
        dialect: ai::Dialect,
        request_id: &HeaderValue,
        public_url: &str,
    ) -> Response<GatewayBody> {
        self.render(request_id, public_url, Some(dialect))
    }

    fn render(
        self,
        request_id: &HeaderValue,
        public_url: &str,
        dialect: Option<ai::Dialect>,
    ) -> Response<GatewayBody> {
        let mut body = serde_json::json!({
            "type": format!("{public_url}/_tollgate/problems/{}", self.code.slug()),
            "title": self.code.title(),
            "status": self.code.status(),
            "detail": self.detail,
            "code": self.code.as_str(),
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        for (name, value) in self.extra {
            // A relative top-up path becomes a URL under the public one.
            let value = match (name, value) {
                ("top_up_url", serde_json::Value::String(path)) if path.starts_with('/') => {
                    serde_json::Value::String(format!("{public_url}{path}"))
                }
                (_, value) => value,
            };
            body[name] = value;
        }
        if let (Some(dialect), serde_json::Value::Object(problem)) = (dialect, &body) {
            body = ai::error_body(
                dialect,
                self.code.status(),
                self.code.as_str(),
                &self.detail,
                problem,
            );
        }
        let mut response = Response::new(GatewayBody::full(body.to_string()));
        *response.status_mut() =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(if dialect.is_some() {
                "application/json"
            } else {
                "application/problem+json"
            }),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(ALLOW, allow);
        }
        if self.code.status() == 401 {
            // RFC 6750: say how to authenticate; `invalid_token` once a
            // credential was sent and refused.
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(if matches!(self.code, Code::MissingCredentials) {
                    "Bearer realm=\"tollgate\""
                } else {
                    "Bearer realm=\"tollgate\", error=\"invalid_token\""
                }),
            );
        }
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// 503 `ledger_unavailable`: this node cannot account for a paid call
/// (its wallet leases lapsed, or the store did not grant one in time).
pub(crate) fn ledger_unavailable() -> Refusal {
    Refusal::new(
        Code::LedgerUnavailable,
        "This gateway node cannot reach its ledger to account for a paid call, so it takes none now; nothing was forwarded or charged. Retry shortly.",
    )
    .with_header(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    )
}
