//! One error type for every HTTP answer that is not a success, in OpenAI's error shape so
//! OpenAI clients surface the message: `{"error": {"message", "type", "param", "code"}}`.
//! 5xx bodies never carry internals; those go to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A message for the client.
    pub message: String,
    /// The request field at fault, like `messages[1].content`.
    pub param: Option<String>,
    /// A stable machine-readable code.
    pub code: &'static str,
}

impl ApiError {
    /// 400: the request is malformed; `param` names the field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.into()),
            code: "invalid_request",
        }
    }

    /// 400 without a specific field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param: None, code: "invalid_request" }
    }

    /// 401: missing or unknown key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::UNAUTHORIZED, message: message.into(), param: None, code: "invalid_api_key" }
    }

    /// 403: the key may not use this route.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::FORBIDDEN, message: message.into(), param: None, code: "forbidden" }
    }

    /// 409: the change contradicts the current state (an illegal transition, a name taken).
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::CONFLICT, message: message.into(), param: None, code: "conflict" }
    }

    /// The answer to a refused change to tokens or policy versions.
    pub fn from_change(error: keel_store::ChangeError) -> Self {
        use keel_store::ChangeError;
        match error {
            ChangeError::NotFound(message) => ApiError::not_found(None, message),
            ChangeError::Conflict(message) => ApiError::conflict(message),
            ChangeError::Forbidden(message) => ApiError::forbidden(message),
            ChangeError::Invalid { field, message } => ApiError::invalid(field, message),
            ChangeError::Store(e) => ApiError::internal(e),
        }
    }

    /// 404 for an unknown model or record.
    pub fn not_found(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            param: param.map(str::to_string),
            code: "not_found",
        }
    }

    /// 413: body over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body exceeds the limit of {limit} bytes"),
            param: None,
            code: "request_too_large",
        }
    }

    /// 503: Keel cannot serve the request now (e.g. no policy in force for the app).
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into(), param: None, code: "unavailable" }
    }

    /// 502: the upstream could not be reached or answered with a server error.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_GATEWAY, message: message.into(), param: None, code: "upstream_error" }
    }

    /// 504: the upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::GATEWAY_TIMEOUT, message: message.into(), param: None, code: "upstream_timeout" }
    }

    /// 500 with a generic message; the detail is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error".into(),
            param: None,
            code: "internal_error",
        }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            413 | 400 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}
