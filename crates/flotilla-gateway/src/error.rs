//! The gateway's errors: [`GatewayError`] when it cannot start or stop, [`ApiError`] when one
//! request fails, and how an `ApiError` is answered in each API's style: the fleet's own error
//! body on the native routes, `{"error": "<message>"}` on the Open Inference Protocol routes.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flotilla_proto::{Encoding, ServiceError};
use serde::Serialize;

/// Why the gateway could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("TLS {what} {path}: {message}")]
    Tls {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("reading bearer tokens from {path}: {source}")]
    TokensRead {
        path: String,
        source: std::io::Error,
    },
    #[error("bearer token file {path} holds no token (one per line; # starts a comment)")]
    NoTokens { path: String },
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    #[error("in-flight requests were still running {0:?} after shutdown began")]
    ShutdownTimeout(Duration),
}

/// What kind of failure the gateway itself answers; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The HTTP request is malformed: never sent to NATS.
    BadRequest,
    /// Missing or wrong bearer token.
    Unauthorized,
    /// No such model, version or route.
    NotFound,
    /// Body larger than `max_body_bytes` (or than NATS carries).
    TooLarge,
    /// The model is known but no worker serves it right now.
    NoWorker,
    /// The gateway cannot reach NATS, or is shutting down.
    Unavailable,
    /// No answer from the fleet within the request's budget.
    Timeout,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NoWorker | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `kind` in a native error body; the fleet's own names where the meaning is the same.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::NoWorker => "no_worker",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "deadline_exceeded",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Why one request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Refused or failed by the gateway.
    #[error("{message}")]
    Gateway { kind: ErrorKind, message: String },
    /// An error reply from the fleet: its code, its parsed error, and its body as sent.
    #[error("{}", error.message)]
    Fleet {
        code: u16,
        error: ServiceError,
        body: Bytes,
        encoding: Encoding,
    },
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError::Gateway {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::NotFound, message)
    }
}

/// An [`ApiError`] answered as the native routes answer: the fleet's error body and code
/// unchanged, or a body of the same shape, `{"error": {"code", "kind", "message"}}`.
pub struct NativeError(pub ApiError);

impl From<ApiError> for NativeError {
    fn from(e: ApiError) -> Self {
        NativeError(e)
    }
}

impl IntoResponse for NativeError {
    fn into_response(self) -> Response {
        match self.0 {
            ApiError::Fleet {
                code,
                body,
                encoding,
                ..
            } => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let content_type = HeaderValue::from_static(encoding.content_type());
                (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
            }
            ApiError::Gateway { kind, message } => {
                #[derive(Serialize)]
                struct Body<'a> {
                    error: Detail<'a>,
                }
                #[derive(Serialize)]
                struct Detail<'a> {
                    code: u16,
                    kind: &'a str,
                    message: &'a str,
                }
                let body = Body {
                    error: Detail {
                        code: kind.status().as_u16(),
                        kind: kind.as_str(),
                        message: &message,
                    },
                };
                json_response(kind.status(), &body)
            }
        }
    }
}

/// An [`ApiError`] answered as the Open Inference Protocol says: `{"error": "<message>"}`.
pub struct OipError(pub ApiError);

impl From<ApiError> for OipError {
    fn from(e: ApiError) -> Self {
        OipError(e)
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        let (status, message) = match self.0 {
            // 409: the worker that answered holds no such version. To an OIP client that is
            // an unknown version, and OIP has no 409.
            ApiError::Fleet {
                code: 409, error, ..
            } => (StatusCode::NOT_FOUND, error.message),
            ApiError::Fleet { code, error, .. } => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                error.message,
            ),
            ApiError::Gateway { kind, message } => (kind.status(), message),
        };
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
        }
        json_response(status, &Body { error: &message })
    }
}

/// A JSON body with its status.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding a JSON response failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
