//! The refusal codes of the gateway (SPEC §4): each has one HTTP status and
//! one title. Every refusal is built from a [`Code`], so the table below is
//! the single place where codes map to statuses.

/// A gateway refusal code. `as_str` is the wire name (`snake_case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    MissingCredentials,
    InvalidCredentials,
    KeyRevoked,
    KeyExpired,
    ConflictingCredentials,
    KeyInQuery,
    TokenMalformed,
    TokenAlgorithm,
    TokenExpired,
    TokenNotYetValid,
    TokenClaims,
    InsufficientCredit,
    QuotaExhausted,
    BudgetExhausted,
    SubscriptionExpired,
    PaymentFailed,
    PaymentRequired,
    NotSubscribed,
    SubscriptionPending,
    SubscriptionRejected,
    SubscriptionSuspended,
    IpDenied,
    ScopeDenied,
    TenantDenied,
    RouteNotFound,
    MethodNotAllowed,
    ServiceRetired,
    BodyTooLarge,
    RequestTimeout,
    RateLimited,
    UpstreamError,
    NoHealthyUpstream,
    CircuitOpen,
    LedgerUnavailable,
    UpstreamTimeout,
    BadRequest,
    HeadersTooLarge,
    RequestNotFound,
    ModelNotFound,
    UpstreamInvalidOutput,
    InternalError,
}

impl Code {
    /// Every code, for docs and problem pages.
    pub const ALL: [Code; 41] = [
        Code::MissingCredentials,
        Code::InvalidCredentials,
        Code::KeyRevoked,
        Code::KeyExpired,
        Code::ConflictingCredentials,
        Code::KeyInQuery,
        Code::TokenMalformed,
        Code::TokenAlgorithm,
        Code::TokenExpired,
        Code::TokenNotYetValid,
        Code::TokenClaims,
        Code::InsufficientCredit,
        Code::QuotaExhausted,
        Code::BudgetExhausted,
        Code::SubscriptionExpired,
        Code::PaymentFailed,
        Code::PaymentRequired,
        Code::NotSubscribed,
        Code::SubscriptionPending,
        Code::SubscriptionRejected,
        Code::SubscriptionSuspended,
        Code::IpDenied,
        Code::ScopeDenied,
        Code::TenantDenied,
        Code::RouteNotFound,
        Code::MethodNotAllowed,
        Code::ServiceRetired,
        Code::BodyTooLarge,
        Code::RequestTimeout,
        Code::RateLimited,
        Code::UpstreamError,
        Code::NoHealthyUpstream,
        Code::CircuitOpen,
        Code::LedgerUnavailable,
        Code::UpstreamTimeout,
        Code::BadRequest,
        Code::HeadersTooLarge,
        Code::RequestNotFound,
        Code::ModelNotFound,
        Code::UpstreamInvalidOutput,
        Code::InternalError,
    ];

    /// (wire name, HTTP status, title)
    const fn row(self) -> (&'static str, u16, &'static str) {
        match self {
            Code::MissingCredentials => ("missing_credentials", 401, "Missing credentials"),
            Code::InvalidCredentials => ("invalid_credentials", 401, "Invalid credentials"),
            Code::KeyRevoked => ("key_revoked", 401, "API key revoked"),
            Code::KeyExpired => ("key_expired", 401, "API key expired"),
            Code::ConflictingCredentials => {
                ("conflicting_credentials", 401, "Conflicting credentials")
            }
            Code::KeyInQuery => ("key_in_query", 401, "API key in the query string"),
            Code::TokenMalformed => ("token_malformed", 401, "Malformed token"),
            Code::TokenAlgorithm => (
                "token_algorithm_not_allowed",
                401,
                "Token algorithm not allowed",
            ),
            Code::TokenExpired => ("token_expired", 401, "Token expired"),
            Code::TokenNotYetValid => ("token_not_yet_valid", 401, "Token not yet valid"),
            Code::TokenClaims => ("token_claims_invalid", 401, "Token claims invalid"),
            Code::InsufficientCredit => ("insufficient_credit", 402, "Insufficient credit"),
            Code::QuotaExhausted => ("quota_exhausted", 402, "Quota exhausted"),
            Code::BudgetExhausted => ("budget_exhausted", 402, "Budget exhausted"),
            Code::SubscriptionExpired => ("subscription_expired", 402, "Subscription expired"),
            Code::PaymentFailed => ("payment_failed", 402, "Payment failed"),
            Code::PaymentRequired => ("payment_required", 402, "Payment required"),
            Code::NotSubscribed => ("not_subscribed", 403, "Not subscribed"),
            Code::SubscriptionPending => ("subscription_pending", 403, "Subscription pending"),
            Code::SubscriptionRejected => ("subscription_rejected", 403, "Subscription rejected"),
            Code::SubscriptionSuspended => {
                ("subscription_suspended", 403, "Subscription suspended")
            }
            Code::IpDenied => ("ip_denied", 403, "IP address denied"),
            Code::ScopeDenied => ("scope_denied", 403, "Scope denied"),
            Code::TenantDenied => ("tenant_denied", 403, "Tenant denied"),
            Code::RouteNotFound => ("route_not_found", 404, "Route not found"),
            Code::MethodNotAllowed => ("method_not_allowed", 405, "Method not allowed"),
            Code::ServiceRetired => ("service_retired", 410, "Service retired"),
            Code::BodyTooLarge => ("body_too_large", 413, "Request body too large"),
            Code::RequestTimeout => ("request_timeout", 408, "Request timeout"),
            Code::RateLimited => ("rate_limited", 429, "Rate limited"),
            Code::UpstreamError => ("upstream_error", 502, "Upstream error"),
            Code::NoHealthyUpstream => ("no_healthy_upstream", 503, "No healthy upstream"),
            Code::CircuitOpen => ("circuit_open", 503, "Circuit open"),
            Code::LedgerUnavailable => ("ledger_unavailable", 503, "Ledger unavailable"),
            Code::UpstreamTimeout => ("upstream_timeout", 504, "Upstream timeout"),
            Code::BadRequest => ("bad_request", 400, "Bad request"),
            Code::HeadersTooLarge => ("headers_too_large", 431, "Request header fields too large"),
            Code::RequestNotFound => ("request_not_found", 404, "Request not found"),
            Code::ModelNotFound => ("model_not_found", 404, "Model not found"),
            Code::UpstreamInvalidOutput => (
                "upstream_invalid_output",
                502,
                "Model answer does not match the output schema",
            ),
            Code::InternalError => ("internal_error", 500, "Internal error"),
        }
    }

    pub const fn as_str(self) -> &'static str {
        self.row().0
    }

    pub const fn status(self) -> u16 {
        self.row().1
    }

    pub const fn title(self) -> &'static str {
        self.row().2
    }

    /// The kebab-case form used in problem type URIs
    /// (`/_tollgate/problems/insufficient-credit`).
    pub fn slug(self) -> String {
        self.as_str().replace('_', "-")
    }

    /// Parses either the snake_case code or its kebab-case slug.
    pub fn parse(text: &str) -> Option<Code> {
        let normalised = text.replace('-', "_");
        Code::ALL
            .into_iter()
            .find(|code| code.as_str() == normalised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            assert_eq!(Code::parse(code.as_str()), Some(code));
            assert_eq!(Code::parse(&code.slug()), Some(code));
        }
        assert_eq!(Code::parse("nope"), None);
    }

    #[test]
    fn statuses_follow_the_spec_table() {
        assert_eq!(Code::InsufficientCredit.status(), 402);
        assert_eq!(Code::RouteNotFound.status(), 404);
        assert_eq!(Code::ServiceRetired.status(), 410);
        assert_eq!(Code::NoHealthyUpstream.status(), 503);
        assert_eq!(Code::UpstreamTimeout.status(), 504);
    }
}
