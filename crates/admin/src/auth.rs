//! Admin authentication: `Authorization: Bearer <token>`, compared as
//! SHA-256 digests in constant time. Only digests are stored.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AdminState;
use crate::error::{ApiError, REQUEST_ID};

/// The SHA-256 digest of a token, hex-encoded (how tokens are stored).
pub fn token_digest(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `presented` matches the stored digest, in constant time.
pub fn token_matches(presented: &str, stored_digest: &str) -> bool {
    let digest = token_digest(presented);
    digest.as_bytes().ct_eq(stored_digest.as_bytes()).into()
}

/// Assigns the request id, then checks the bearer token for `/api/v1/…`
/// (the OpenAPI document and its reference page are public).
pub async fn middleware(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(domain::id::new_id);
    let header_value = HeaderValue::from_str(&request_id).ok();
    let mut response = REQUEST_ID
        .scope(request_id, async move {
            let path = request.uri().path();
            let public = matches!(
                path,
                "/api/v1/openapi.json" | "/api/v1/docs" | "/" | "/health"
            );
            if !public {
                let token = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match token {
                    None => {
                        return ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "unauthorized",
                            "Send the admin token as 'Authorization: Bearer <token>'.",
                        )
                        .into_response();
                    }
                    Some(token) if !token_matches(token, &state.root_token_digest) => {
                        return ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "unauthorized",
                            "The admin token is not valid.",
                        )
                        .into_response();
                    }
                    Some(_) => {}
                }
            }
            next.run(request).await
        })
        .await;
    if let Some(value) = header_value {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare() {
        let stored = token_digest("secret");
        assert_eq!(stored.len(), 64);
        assert!(token_matches("secret", &stored));
        assert!(!token_matches("secreT", &stored));
        assert!(!token_matches("", &stored));
    }
}
