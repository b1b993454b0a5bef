//! HTTP-facing errors: each variant is one status code and a message that
//! names the field or limit at fault, sent as `{"error": "..."}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request as a whole cannot be read.
    #[error("{0}")]
    BadRequest(String),
    /// 408: the body did not arrive in time; the connection is closed.
    #[error("{0}")]
    Timeout(String),
    /// 413: the body is over the documented limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415: a content type or encoding desa does not read.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// 503 with `Retry-After`: the node cannot persist now; nothing of the
    /// request was acknowledged (when the store did not confirm a write in
    /// time, the message says that it may still be stored).
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u32,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        match self {
            ApiError::Unavailable {
                retry_after_secs, ..
            } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::Timeout(_) => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

impl From<desa_model::QueryError> for ApiError {
    fn from(e: desa_model::QueryError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<desa_store::StoreError> for ApiError {
    fn from(e: desa_store::StoreError) -> Self {
        let retry_after_secs = match e {
            desa_store::StoreError::Refused(_) => 60,
            _ => 1,
        };
        ApiError::Unavailable {
            message: e.to_string(),
            retry_after_secs,
        }
    }
}
