//! The error table (kind, code) and error replies: the service-error headers and the
//! `{"error": {"code", "kind", "message"}}` body, written and read back.

use std::fmt;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::encoding::Encoding;
use crate::headers::{header, name, SERVICE_ERROR, SERVICE_ERROR_CODE};

/// The protocol's error kinds; each maps to exactly one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    BadRequest,
    VersionUnavailable,
    TooLarge,
    Overloaded,
    DeadlineExceeded,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::BadRequest,
        ErrorKind::VersionUnavailable,
        ErrorKind::TooLarge,
        ErrorKind::Overloaded,
        ErrorKind::DeadlineExceeded,
        ErrorKind::Internal,
    ];

    pub fn code(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::VersionUnavailable => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Overloaded => 503,
            ErrorKind::DeadlineExceeded => 504,
            ErrorKind::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::VersionUnavailable => "version_unavailable",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn from_code(code: u16) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that is answered to the caller: a kind (hence a code) and a message that says
/// what was wrong and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind} ({code}): {message}", code = kind.code())]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ServiceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorDetail<'a>,
}

#[derive(Serialize, Deserialize)]
struct ErrorDetail<'a> {
    code: u16,
    kind: &'a str,
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

/// Headers and body of an error reply, in the request's encoding.
pub fn error_reply(encoding: Encoding, err: &ServiceError) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(name::CONTENT_TYPE, encoding.content_type());
    // Header values cannot carry line breaks; the body keeps the full message.
    let one_line: String = err
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    h.insert(name::SERVICE_ERROR, one_line);
    h.insert(name::SERVICE_ERROR_CODE, err.kind.code().to_string());
    let body = ErrorBody {
        error: ErrorDetail {
            code: err.kind.code(),
            kind: err.kind.as_str(),
            message: std::borrow::Cow::Borrowed(&err.message),
        },
    };
    let bytes = encoding
        .encode(&body)
        .unwrap_or_else(|_| Bytes::from_static(b"{\"error\":{\"code\":500,\"kind\":\"internal\",\"message\":\"encoding the error failed\"}}"));
    (h, bytes)
}

/// Reads an error reply back: from the service-error headers and, when it decodes, the body
/// (which carries the kind and the untruncated message).
pub fn parse_error_reply(headers: Option<&HeaderMap>, body: &[u8]) -> Option<ServiceError> {
    let headers = headers?;
    let code: u16 = header(headers, SERVICE_ERROR_CODE)?.trim().parse().ok()?;
    let fallback = header(headers, SERVICE_ERROR).unwrap_or("").to_owned();
    let decoded = Encoding::detect(Some(headers), body)
        .ok()
        .and_then(|enc| match enc {
            Encoding::Json => serde_json::from_slice::<ErrorBody>(body)
                .ok()
                .map(|b| (b.error.kind.to_owned(), b.error.message.into_owned())),
            Encoding::MsgPack => rmp_serde::from_slice::<ErrorBody>(body)
                .ok()
                .map(|b| (b.error.kind.to_owned(), b.error.message.into_owned())),
        });
    let (kind, message) = match decoded {
        Some((kind, message)) => (ErrorKind::from_name(&kind), message),
        None => (None, fallback),
    };
    Some(ServiceError {
        kind: kind
            .or_else(|| ErrorKind::from_code(code))
            .unwrap_or(ErrorKind::Internal),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_round_trips() {
        let err = ServiceError::new(ErrorKind::TooLarge, "too many rows");
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let (h, b) = error_reply(enc, &err);
            assert_eq!(parse_error_reply(Some(&h), &b), Some(err.clone()));
        }
    }
}
