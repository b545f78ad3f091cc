//! Header names of the contract, the case-tolerant lookup every reader uses, and the request
//! headers that steer how a request is served (`Flotilla-Version`, `Flotilla-Timeout-Ms`).
//! Header names are spelled here and nowhere else.

use async_nats::header::HeaderName;
use async_nats::HeaderMap;

use crate::error::ServiceError;

/// Request header: `application/json` or `application/msgpack`.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Request header pinning a model version; reply header naming the version that computed it.
pub const VERSION_HEADER: &str = "Flotilla-Version";
/// Reply header (an extension of the contract): the id of the worker that answered, the same
/// id it registers under in the services API.
pub const WORKER_HEADER: &str = "Flotilla-Worker";
/// Request header: the caller's remaining budget in milliseconds.
pub const TIMEOUT_HEADER: &str = "Flotilla-Timeout-Ms";
/// NATS services API (ADR-32) error headers.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// The reply headers' names as [`HeaderName`]s, for the worker's hot path: a name given as a
/// `&str` is copied into a new allocation on every insert, these are static.
pub mod name {
    use super::HeaderName;

    pub const CONTENT_TYPE: HeaderName = HeaderName::from_static(super::CONTENT_TYPE);
    pub const VERSION: HeaderName = HeaderName::from_static(super::VERSION_HEADER);
    pub const WORKER: HeaderName = HeaderName::from_static(super::WORKER_HEADER);
    pub const SERVICE_ERROR: HeaderName = HeaderName::from_static(super::SERVICE_ERROR);
    pub const SERVICE_ERROR_CODE: HeaderName = HeaderName::from_static(super::SERVICE_ERROR_CODE);
}

/// Looks a header up by exact name first, then case-insensitively: clients in other
/// languages do not all preserve case.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    if let Some(v) = headers.get(name) {
        return Some(v.as_str());
    }
    headers.iter().find_map(|(k, values)| {
        let key: &str = k.as_ref();
        if key.eq_ignore_ascii_case(name) {
            values.first().map(|v| v.as_str())
        } else {
            None
        }
    })
}
/// Request headers that steer how a request is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `Flotilla-Version`: serve exactly this version or fail with 409.
    pub version: Option<u64>,
    /// `Flotilla-Timeout-Ms`: the caller's remaining budget.
    pub timeout_ms: Option<u64>,
}

impl RequestOptions {
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Self, ServiceError> {
        let Some(headers) = headers else {
            return Ok(Self::default());
        };
        let number = |name: &str| -> Result<Option<u64>, ServiceError> {
            match header(headers, name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    ServiceError::bad_request(format!(
                        "header {name} must be a non-negative integer, got {}",
                        shown(v)
                    ))
                }),
            }
        };
        Ok(RequestOptions {
            version: number(VERSION_HEADER)?,
            timeout_ms: number(TIMEOUT_HEADER)?,
        })
    }
}

/// A caller's header value as an error message may quote it: at most 64 characters, so a
/// 60,000-character value is not echoed back in `Nats-Service-Error`.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

/// The 400 for a message whose header block did not parse. The NATS client delivers such a
/// message without its headers and says why in `description` (flotilla's async-nats patch,
/// `docs/upstream/async-nats.md`), so it can be answered like any other bad
/// request instead of costing the worker its connection.
pub fn malformed_headers(message: &async_nats::Message) -> Option<ServiceError> {
    let why = message
        .description
        .as_deref()?
        .strip_prefix(async_nats::connection::MALFORMED_HEADERS_PREFIX)?;
    Some(ServiceError::bad_request(format!(
        "the request's NATS headers do not parse ({why}); send `Name: value` lines of UTF-8"
    )))
}
