//! Admin API errors: RFC 9457 problem+json, naming the offending fields.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::validate::{FieldError, FieldErrors};
use store::StoreError;

tokio::task_local! {
    /// The request id of the admin request being served.
    pub static REQUEST_ID: String;
}

/// A refusal of the admin API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Members beside the standard ones (a 402's `balance`, `required`…).
    pub extra: Vec<(&'static str, serde_json::Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// 400: the input is invalid; every problem is listed.
    pub fn validation(errors: FieldErrors) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "validation_failed",
            detail: invalid(&errors),
            errors: errors.0,
            extra: Vec::new(),
        }
    }

    /// 400 naming one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.add(field, message);
        Self::validation(errors)
    }

    pub fn not_found(kind: &str, key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No {kind} '{key}' exists (or it is not visible to this token)."),
        )
    }

    /// 500 for what should not happen; `what` goes to the log, not the caller.
    pub fn internal(what: &str) -> Self {
        tracing::error!(what, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Something went wrong on our side; nothing was changed. The error has been logged.",
        )
    }

    /// 502: a provider called on the caller's behalf failed.
    pub fn upstream(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", detail)
    }

    /// 409 naming the field whose value conflicts.
    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self {
            status: StatusCode::CONFLICT,
            code: "conflict",
            detail: format!("{field}: {message}"),
            errors: vec![FieldError { field, message }],
            extra: Vec::new(),
        }
    }

    /// 409 for an action not allowed in the object's current state.
    pub fn invalid_state(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_lifecycle", detail)
    }

    /// Prefixes every field name (for nested documents).
    pub fn within(mut self, prefix: &str) -> Self {
        for error in &mut self.errors {
            error.field = if error.field.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{}", error.field)
            };
        }
        if !self.errors.is_empty() {
            let errors = FieldErrors(self.errors.clone());
            // The detail names the fields as they now read; a conflict
            // stays a conflict.
            self.detail = if self.code == "validation_failed" {
                invalid(&errors)
            } else {
                errors.to_string()
            };
        }
        self
    }

    fn title(&self) -> &'static str {
        match self.code {
            "validation_failed" => "Validation failed",
            "not_found" => "Not found",
            "conflict" => "Conflict",
            "invalid_lifecycle" => "Not allowed in this lifecycle state",
            "unauthorized" => "Unauthorized",
            "forbidden" => "Forbidden",
            "csrf_failed" => "CSRF token missing or wrong",
            "too_many_attempts" => "Too many attempts",
            "body_too_large" => "Request body too large",
            "method_not_allowed" => "Method not allowed",
            "unavailable" => "Storage unavailable",
            "internal_error" => "Internal error",
            // Codes of one endpoint (`payment_provider_refused`…): the
            // status says what kind of problem it is.
            _ => self.status.canonical_reason().unwrap_or("Error"),
        }
    }
}

impl From<FieldErrors> for ApiError {
    fn from(errors: FieldErrors) -> Self {
        Self::validation(errors)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { field, message } => Self::conflict(field, message),
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
                tracing::error!(%error, "storage unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "The database did not answer; nothing was changed. Try again.",
                )
            }
            other => {
                tracing::error!(error = %other, "storage error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "The change could not be stored; nothing was changed. The error has been logged.",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        let mut body = serde_json::json!({
            "type": format!("https://tollgate.dev/problems/admin/{}", self.code.replace('_', "-")),
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
            "request_id": request_id,
        });
        if !self.errors.is_empty() {
            body["errors"] = serde_json::json!(self.errors);
        }
        for (name, value) in self.extra {
            body[name] = value;
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot be reused.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
        }
        response
    }
}

/// The detail of a 400: every problem, as one sentence.
fn invalid(errors: &FieldErrors) -> String {
    let mut detail = format!("The request is invalid: {errors}");
    if !detail.ends_with('.') {
        detail.push('.');
    }
    detail
}
