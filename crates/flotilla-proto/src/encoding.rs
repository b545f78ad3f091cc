//! The two body encodings, how a request's is chosen (`Content-Type`, else sniffing), and the
//! rule for which encoding an error reply uses.

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::headers::{header, shown, CONTENT_TYPE};

pub const JSON_CONTENT_TYPE: &str = "application/json";
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// One of the two body encodings. A reply always uses the request's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    /// Picks the encoding from `Content-Type`, else sniffs the body: JSON when its first
    /// non-blank byte is `{`, MessagePack otherwise.
    pub fn detect(headers: Option<&HeaderMap>, body: &[u8]) -> Result<Encoding, ServiceError> {
        if let Some(value) = headers.and_then(|h| header(h, CONTENT_TYPE)) {
            let media = value.split(';').next().unwrap_or("").trim();
            return match media.to_ascii_lowercase().as_str() {
                JSON_CONTENT_TYPE => Ok(Encoding::Json),
                MSGPACK_CONTENT_TYPE | "application/x-msgpack" => Ok(Encoding::MsgPack),
                _ => Err(ServiceError::bad_request(format!(
                    "Content-Type {} is not supported; use {JSON_CONTENT_TYPE} or {MSGPACK_CONTENT_TYPE}",
                    shown(value)
                ))),
            };
        }
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        Ok(if first == Some(&b'{') {
            Encoding::Json
        } else {
            Encoding::MsgPack
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON_CONTENT_TYPE,
            Encoding::MsgPack => MSGPACK_CONTENT_TYPE,
        }
    }

    /// Encodes any serialisable value; MessagePack maps keep their field names so that
    /// clients in other languages see a map, never a positional array.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Bytes, ServiceError> {
        let bytes = match self {
            Encoding::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Encoding::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        };
        bytes
            .map(Bytes::from)
            .map_err(|e| ServiceError::internal(format!("encoding the reply failed: {e}")))
    }
}

/// The encoding of an error reply: the request's, unless its body is not even well-formed
/// MessagePack, in which case JSON (the contract's rule for undecodable requests).
pub fn error_encoding(request: Encoding, body: &[u8]) -> Encoding {
    if request == Encoding::Json {
        return Encoding::Json;
    }
    let mut rest = body;
    let well_formed = IgnoredAny::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).is_ok();
    if well_formed && rest.is_empty() {
        Encoding::MsgPack
    } else {
        Encoding::Json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PredictRequest;

    #[test]
    fn undecodable_msgpack_is_answered_in_json() {
        let good = PredictRequest::encode(Encoding::MsgPack, &[vec![1.0]], None);
        assert_eq!(error_encoding(Encoding::MsgPack, &good), Encoding::MsgPack);
        for bad in [&[0xc1u8][..], &[0x81, 0xa6], &good[..good.len() - 1]] {
            assert_eq!(
                error_encoding(Encoding::MsgPack, bad),
                Encoding::Json,
                "{bad:?}"
            );
        }
    }
}
