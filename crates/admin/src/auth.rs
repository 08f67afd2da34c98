//! Admin authentication. Three ways in: the root token, a user's personal
//! token (both `Authorization: Bearer <token>`) or a console session cookie
//! (plus `X-CSRF-Token` on changes). Tokens and session ids are stored only
//! as SHA-256 digests; the root token is compared in constant time.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AdminState;
use crate::access::{Caller, UserCaller};
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

/// A random secret of `length` base62 characters, from the OS generator.
pub fn random_secret(length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(length);
    let mut bytes = [0u8; 64];
    while out.len() < length {
        if getrandom::fill(&mut bytes).is_err() {
            // Without an OS generator there is nothing safe to hand out;
            // the caller gets an empty secret and refuses it.
            return String::new();
        }
        for &byte in &bytes {
            // 248 = 4 × 62: rejection sampling keeps the choice uniform.
            if byte < 248 && out.len() < length {
                out.push(char::from(ALPHABET[usize::from(byte % 62)]));
            }
        }
    }
    out
}

/// The console session cookie.
pub const SESSION_COOKIE: &str = "tollgate_session";

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

/// The caller for a user, with roles narrowed to `token_teams` when given.
pub async fn user_caller(
    store: &store::Store,
    user: domain::access::User,
    token_teams: Option<&[String]>,
) -> Result<Caller, ApiError> {
    let memberships = store.memberships_of_user(&user.id).await?;
    let roles = memberships
        .into_iter()
        .filter(|m| token_teams.is_none_or(|teams| teams.contains(&m.team)))
        .map(|m| (m.team, m.role))
        .collect();
    Ok(Caller::User(UserCaller {
        platform: user.superadmin && token_teams.is_none(),
        user,
        roles,
        scope: token_teams.map(<[String]>::to_vec),
    }))
}

/// Who sent `request`: root token, personal token or console session.
/// `Ok(None)`: no credentials at all.
async fn identify(
    state: &AdminState,
    headers: &axum::http::HeaderMap,
    method: &axum::http::Method,
) -> Result<Option<Caller>, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1), as on the gateway.
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    if let Some(token) = bearer {
        if token_matches(token, &state.root_token_digest) {
            return Ok(Some(Caller::Root));
        }
        let owner = state.store.token_owner(&token_digest(token)).await?;
        let Some(owner) = owner else {
            return Err(unauthorized(
                "The admin token is not valid (revoked, or never issued).",
            ));
        };
        if owner.expires_at_ms.is_some_and(|at| at <= domain::now_ms()) {
            return Err(unauthorized(
                "The admin token has expired; create a new one.",
            ));
        }
        return user_caller(&state.store, owner.user, owner.teams.as_deref())
            .await
            .map(Some);
    }
    let Some(cookie) = session_cookie(headers) else {
        return Ok(None);
    };
    let Some(session) = state.store.session(&token_digest(cookie)).await? else {
        return Err(unauthorized("The session has ended; log in again."));
    };
    if session.expires_at_ms <= domain::now_ms() {
        return Err(unauthorized("The session has expired; log in again."));
    }
    // Cookies ride along on cross-site requests: a change must also carry
    // the session's CSRF token, which only the console's own pages know.
    let safe = matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe {
        let presented = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !bool::from(presented.as_bytes().ct_eq(session.csrf.as_bytes())) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "Send the session's CSRF token (from the login answer) as 'X-CSRF-Token'.",
            ));
        }
    }
    let Some(user) = state.store.user(&session.user_id).await? else {
        return Err(unauthorized("The session's user no longer exists."));
    };
    user_caller(&state.store, user, None).await.map(Some)
}

/// Assigns the request id, then identifies the caller of `/api/v1/…` (the
/// OpenAPI document, its reference page and login are public).
/// A refusal made by the router itself, not by a handler (a path segment
/// that is not UTF-8…), comes as plain text: it is answered as the
/// problem every other refusal is.
async fn as_problem(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(plain && response.status().is_client_error()) {
        return response;
    }
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 16 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let error = if status == axum::http::StatusCode::BAD_REQUEST {
        ApiError::field("path", text)
    } else {
        ApiError::new(status, "bad_request", text)
    };
    error.into_response()
}

pub async fn middleware(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| domain::calls::acceptable_request_id(v.as_bytes()))
        .map(str::to_owned)
        .unwrap_or_else(domain::id::new_id);
    let header_value = HeaderValue::from_str(&request_id).ok();
    let mut response = REQUEST_ID
        .scope(request_id, async move {
            let path = request.uri().path();
            let public = matches!(
                path,
                "/api/v1/openapi.json" | "/api/v1/docs" | "/" | "/health" | "/api/v1/auth/login"
            );
            let headers = request.headers().clone();
            let method = request.method().clone();
            match identify(&state, &headers, &method).await {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                }
                Ok(None) if public => {}
                Ok(None) => {
                    return unauthorized(
                        "Send an admin token as 'Authorization: Bearer <token>', or log in (POST /api/v1/auth/login).",
                    )
                    .into_response();
                }
                Err(error) if public => {
                    tracing::debug!(code = error.code, "public path with bad credentials");
                }
                Err(error) => return error.into_response(),
            }
            as_problem(next.run(request).await).await
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
