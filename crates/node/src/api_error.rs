//! The HTTP API's one error type, for the mesh API, the CLI's local API and the explorer alike:
//! `{"error": ..., "problems": [...], "retry_after_s": n}` (the last two when there are any) with
//! its status code, and `Retry-After` with a 429.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_dag::Hash;

use crate::api::ErrorBody;
use crate::explorer::catalogue::Problem;

/// An error answer: what went wrong and what to do, as the command would have printed it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// One per option of a request that is wrong (the explorer's forms).
    pub problems: Vec<Problem>,
    /// Sent as `Retry-After` (seconds) with a 429.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), problems: Vec::new(), retry_after_s: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.message, problems: self.problems, retry_after_s: self.retry_after_s };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// 400.
pub fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

/// 404.
pub fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, msg)
}

/// 413.
pub fn too_large(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, msg)
}

/// 422: the request was understood and could not be done (what the command would have failed with).
pub fn unprocessable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

/// 500.
pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// A hash in a URL: `blake3:<64 hex>` or the bare hex.
pub fn parse_hash(text: &str) -> Result<Hash, ApiError> {
    let full = if text.starts_with("blake3:") { text.to_string() } else { format!("blake3:{text}") };
    full.parse().map_err(|e: String| bad(format!("`{text}` is not a hash ({e}); hashes look like blake3:<64 hex>")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_with_or_without_their_prefix() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_hash(&hex).unwrap(), parse_hash(&format!("blake3:{hex}")).unwrap());
        let e = parse_hash("blake3:xyz").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("hashes look like blake3:<64 hex>"), "{}", e.message);
    }

    #[test]
    fn a_429_says_when_to_come_back() {
        let e = ApiError { retry_after_s: Some(7), ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down") };
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
    }
}
