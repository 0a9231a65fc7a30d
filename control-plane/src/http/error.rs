//! The one API error type: every failure becomes a status, a stable machine-readable `code` and
//! a human `message` (plus `details` for manifest errors: file, document, path).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cellfleet_api::ErrorBody;
use serde_json::json;

use crate::service;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body too large: at most {0} bytes")]
    PayloadTooLarge(usize),
    #[error(transparent)]
    Service(#[from] service::Error),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        use service::Error as S;
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) | ApiError::Service(S::Forbidden(_)) => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            // The request does not parse (its body, a parameter, a path segment): 400.
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            // It parsed, and a rule refused it (one the schema can state or one it cannot, like
            // an agent token bound to a cell, or a runbook's own parameters): 422.
            ApiError::Service(S::Invalid(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
            }
            ApiError::NotFound(_) | ApiError::Service(S::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Service(S::Manifest(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest")
            }
            ApiError::Service(S::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Service(S::Busy(_)) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Service(S::Store(_) | S::Io(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let details = match &self {
            ApiError::Service(service::Error::Manifest(m)) => {
                Some(json!({ "file": m.file, "document": m.document, "path": m.path }))
            }
            _ => None,
        };
        let retry = matches!(self, ApiError::Service(service::Error::Busy(_)));
        let message = if status.is_server_error() && !retry {
            // Log the chain where it is handled; the client gets no internals.
            tracing::error!(error = %self, "request failed");
            "internal error; the server log has the details (search for this request's correlation id)".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (
            status,
            Json(ErrorBody {
                code: code.to_owned(),
                message,
                details,
            }),
        )
            .into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
