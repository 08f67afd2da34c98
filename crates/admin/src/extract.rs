//! Request extractors that turn bad input into problems naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest admin request body.
pub const BODY_LIMIT_BYTES: usize = 2 * 1024 * 1024;

/// A JSON body parsed strictly: unknown fields and wrong types are 400s that
/// name the field (`targets[0].weight`). An empty body reads as `{}`.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::<BODY_LIMIT_BYTES>::from_request(request, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// Largest declarative document (`/config/apply`): a whole deployment's
/// export, whose services may each carry up to [`BODY_LIMIT_BYTES`] (an
/// OpenAPI document), must apply again.
pub const DOCUMENT_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// A body read whole, up to `LIMIT` bytes: past that, the 413
/// `body_too_large` problem every endpoint answers.
pub struct RawBody<const LIMIT: usize = BODY_LIMIT_BYTES>(pub Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for RawBody<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        axum::body::to_bytes(request.into_body(), LIMIT)
            .await
            .map(RawBody)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("The request body is larger than {LIMIT} bytes."),
                )
            })
    }
}

/// Parses JSON into `T`, naming the failing field.
pub fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        Some(b'{') => bytes,
        // serde reads a struct from an array too (`["t9", "N"]` as a
        // team): every body of this API is an object.
        Some(_) => {
            return Err(ApiError::field("body", "must be a JSON object ({...})"));
        }
    };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value: T = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => value,
        Err(error) => {
            // Well-formed JSON that does not fit (a `null` where an enum
            // goes reads to serde_json's streaming parser as "expected
            // value"): said again from the parsed value, as a type error.
            return Err(match serde_json::from_slice::<serde_json::Value>(text) {
                Ok(parsed) => match from_value::<T>(parsed) {
                    Err(fit) => fit,
                    Ok(_) => describe(error),
                },
                Err(_) => describe(error),
            });
        }
    };
    deserializer
        .end()
        .map_err(|e| ApiError::field("", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Same as [`parse_json`] for an already parsed value.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(describe)
}

/// As [`from_value`], reporting every shape problem at once: after each
/// one (an unknown field, a value of the wrong type) the member at fault
/// is left out and the rest read again (up to 50 problems). The value
/// comes back when it reads once those members are out, so that its own
/// checks can add theirs; a required member missing ends the reading.
pub fn from_value_all<T: DeserializeOwned>(
    mut value: serde_json::Value,
) -> (Option<T>, Vec<ApiError>) {
    let mut problems = Vec::new();
    while problems.len() < 50 {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(parsed) => return (Some(parsed), problems),
            Err(error) => error,
        };
        let missing = error.inner().to_string().starts_with("missing field");
        let segments: Vec<serde_path_to_error::Segment> = error.path().iter().cloned().collect();
        problems.push(describe(error));
        if missing || !remove_member(&mut value, &segments) {
            break;
        }
    }
    (None, problems)
}

/// Removes the member `path` leads to; false when there is none (nothing
/// more can be left out).
fn remove_member(value: &mut serde_json::Value, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    // A list item of the wrong shape: the list is left out whole (the
    // items after it would move up to its place).
    if matches!(last, Segment::Seq { .. }) {
        return remove_member(value, parents);
    }
    let mut node = value;
    for segment in parents {
        node = match (segment, node) {
            (Segment::Map { key }, serde_json::Value::Object(map)) => match map.get_mut(key) {
                Some(next) => next,
                None => return false,
            },
            (Segment::Seq { index }, serde_json::Value::Array(items)) => {
                match items.get_mut(*index) {
                    Some(next) => next,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, serde_json::Value::Object(map)) => map.remove(key).is_some(),
        _ => false,
    }
}

fn describe<E: std::fmt::Display>(error: serde_path_to_error::Error<E>) -> ApiError {
    let path = error.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let message = error.inner().to_string();
    // serde names a missing or unknown field in the message, at the path of
    // the object holding it; point at the field itself.
    for marker in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(marker)
            && let Some((name, _)) = rest.split_once('`')
        {
            // For unknown fields the path already ends at the field.
            let field = if path.is_empty() {
                name.to_owned()
            } else if path == name || path.ends_with(&format!(".{name}")) {
                path.clone()
            } else {
                format!("{path}.{name}")
            };
            let text = if marker.starts_with("missing") {
                "is required".to_owned()
            } else {
                let expected = rest
                    .split_once(", expected ")
                    .map(|(_, e)| e.split(" at line ").next().unwrap_or(e))
                    .unwrap_or("");
                format!("is not a known field (expected {expected})")
            };
            return ApiError::field(field, text);
        }
    }
    if message.contains("at line")
        && (message.starts_with("EOF")
            || message.starts_with("expected")
            || message.starts_with("key must")
            || message.starts_with("trailing"))
    {
        return ApiError::field(body_or(path), format!("malformed JSON: {message}"));
    }
    // Trim serde's " at line X column Y" from type errors.
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    ApiError::field(body_or(path), message)
}

/// The field an error names: the request body itself when serde's path
/// names none (the document as a whole, or `?` where the syntax broke
/// before any field).
fn body_or(path: String) -> String {
    if path.is_empty() || path == "?" {
        "body".to_owned()
    } else {
        path
    }
}

/// `?limit=&cursor=` plus resource filters.
#[derive(Debug, Default)]
pub struct ListParams {
    pub limit: usize,
    /// The id to continue after.
    pub after: Option<String>,
    pub filters: Vec<(String, String)>,
    /// `limit` or `cursor`, if the request gave one (for endpoints that
    /// answer in one piece and take neither).
    pub paging: Option<&'static str>,
    /// Whether `limit` was given (not the default).
    pub limit_given: bool,
    /// Parameters given with no value (`?dry_run`, `?team=`): read as
    /// left out, except by [`ListParams::flag`].
    pub blank: Vec<String>,
}

pub const LIMIT_DEFAULT: usize = 50;
pub const LIMIT_MIN: usize = 1;
pub const LIMIT_MAX: usize = 500;

impl ListParams {
    pub fn filter(&self, name: &str) -> Option<&str> {
        self.filters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A `true`/`false` parameter, false when left out. A bare `?name`
    /// (or `?name=`) is refused rather than guessed: read as false it
    /// would, say, apply a document that was meant as a dry run.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        if self.blank.iter().any(|key| key == name) {
            return Err(ApiError::field(
                name.to_owned(),
                format!("must be true or false (write ?{name}=true)"),
            ));
        }
        match self.filter(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ApiError::field(name.to_owned(), "must be true or false")),
        }
    }

    /// Refuses filters other than `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        self.only_among(allowed, true)
    }

    /// Refuses parameters other than `allowed`, `limit` and `cursor`
    /// included: for an endpoint that answers in one piece.
    pub fn only_unpaged(&self, allowed: &[&str]) -> Result<(), ApiError> {
        if let Some(key) = self.paging {
            let expected = if allowed.is_empty() {
                "it takes no parameters".to_owned()
            } else {
                format!("expected one of {}", allowed.join(", "))
            };
            return Err(ApiError::field(
                key,
                format!("is not a known parameter: this answer comes in one piece ({expected})"),
            ));
        }
        self.only_among(allowed, false)
    }

    fn only_among(&self, allowed: &[&str], paged: bool) -> Result<(), ApiError> {
        // `?cursor=` is the first page's cursor: not a stranger.
        let blank = self.blank.iter().filter(|key| *key != "cursor");
        let keys = self.filters.iter().map(|(key, _)| key).chain(blank);
        for key in keys {
            if !allowed.contains(&key.as_str()) {
                let mut known = if paged {
                    vec!["limit", "cursor"]
                } else {
                    Vec::new()
                };
                known.extend_from_slice(allowed);
                let expected = if known.is_empty() {
                    "it takes no parameters".to_owned()
                } else {
                    format!("expected one of {}", known.join(", "))
                };
                return Err(ApiError::field(
                    key.clone(),
                    format!("is not a known parameter ({expected})"),
                ));
            }
        }
        Ok(())
    }
}

pub fn encode_cursor(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

impl<S: Send + Sync> FromRequestParts<S> for ListParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(parts.uri.query().unwrap_or(""));
        let mut params = ListParams {
            limit: LIMIT_DEFAULT,
            ..Default::default()
        };
        for (index, (key, _)) in pairs.iter().enumerate() {
            if pairs[..index].iter().any(|(earlier, _)| earlier == key) {
                return Err(ApiError::field(
                    key.clone(),
                    "is given twice; give each parameter once",
                ));
            }
        }
        for (key, value) in pairs {
            // `?cursor=&team=` means the same as leaving them out.
            if value.is_empty() && key != "limit" {
                params.blank.push(key);
                continue;
            }
            match key.as_str() {
                "limit" => {
                    params.paging = Some("limit");
                    params.limit_given = true;
                    params.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (LIMIT_MIN..=LIMIT_MAX).contains(n))
                        .ok_or_else(|| {
                            ApiError::field(
                                "limit",
                                format!("must be an integer from {LIMIT_MIN} to {LIMIT_MAX}"),
                            )
                        })?;
                }
                "cursor" => {
                    params.paging = Some("cursor");
                    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(value.as_bytes())
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .filter(|id| domain::id::looks_like_id(id))
                        .ok_or_else(|| {
                            ApiError::field("cursor", "is not a cursor this API returned")
                        })?;
                    params.after = Some(decoded);
                }
                _ => params.filters.push((key, value)),
            }
        }
        Ok(params)
    }
}

/// Splits a query string into decoded pairs.
fn serde_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (domain::percent::decode(key), domain::percent::decode(value))
        })
        .collect()
}

/// `#[serde(default, deserialize_with = "present")]`: a field that is
/// present (even as `null`) is `Some`; absent is `None`. For changes where
/// `null` clears a value and leaving the field out keeps it.
pub fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries() {
        assert_eq!(
            serde_urlencoded_pairs("a=1&b=x%20y&c=%zz&d"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "%zz".into()),
                ("d".into(), "".into())
            ]
        );
    }
}
