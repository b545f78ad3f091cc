//! The native routes: `POST /models/<m>/predict`, the NATS predict body and reply carried over
//! HTTP unchanged, and the classic `POST /predict {"x": [...]}` -> `{"y_pred": ...}` on the
//! default model. The gateway only checks that a body is a well-formed map (so a malformed one
//! never reaches NATS); what the map must hold is the fleet's to judge, so requests the fleet
//! learns to accept (text rows, nested rows) pass through without a gateway change.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flotilla_proto::encoding::MSGPACK_CONTENT_TYPE;
use flotilla_proto::headers::{VERSION_HEADER, WORKER_HEADER};
use flotilla_proto::Encoding;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::{json_response, ApiError, ErrorKind, NativeError};
use crate::upstream::{budget, model_name, pinned_version, Answer, Call};
use crate::App;

/// `POST /models/<model>/predict`.
pub async fn predict(
    State(app): State<App>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NativeError> {
    let model = model_name(&model)?;
    let body = body_bytes(body, app.config.max_body_bytes)?;
    let encoding = request_encoding(&headers);
    check_map(encoding, &body)?;
    let call = Call {
        body,
        encoding,
        version: pinned_version(&headers)?,
        budget: budget(&headers, app.config.request_timeout())?,
    };
    let answer = app.upstream.predict(&model, call).await?;
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(answer.encoding.content_type()),
        )],
        answer.body.clone(),
    )
        .into_response();
    pass_reply_headers(&answer, response.headers_mut());
    Ok(response)
}

/// `POST /predict`: the classic call, `{"x": [...]}` in, `{"y_pred": ...}` out.
pub async fn classic(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NativeError> {
    let Some(model) = app.config.default_model.as_deref() else {
        return Err(ApiError::not_found(
            "this gateway has no default model for POST /predict: start it with \
             --default-model NAME, or call POST /models/<model>/predict",
        )
        .into());
    };
    let model = model_name(model)?;
    let body = body_bytes(body, app.config.max_body_bytes)?;
    #[derive(Deserialize)]
    struct Classic {
        x: Option<IgnoredAny>,
    }
    let classic: Classic = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if classic.x.is_none() {
        return Err(ApiError::bad_request(
            "POST /predict takes {\"x\": [...]} (one row); for several rows call \
             POST /models/<model>/predict with {\"inputs\": [[...], ...]}",
        )
        .into());
    }
    let call = Call {
        body,
        encoding: Encoding::Json,
        version: pinned_version(&headers)?,
        budget: budget(&headers, app.config.request_timeout())?,
    };
    let answer = app.upstream.predict(&model, call).await?;
    #[derive(Deserialize)]
    struct Reply {
        y_pred: Option<serde_json::Value>,
    }
    let reply: Reply = serde_json::from_slice(&answer.body).map_err(|e| {
        ApiError::new(
            ErrorKind::Internal,
            format!("the fleet's reply is not JSON: {e}"),
        )
    })?;
    let y_pred = reply
        .y_pred
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, "the fleet's reply has no \"y_pred\""))?;
    let mut response = json_response(StatusCode::OK, &serde_json::json!({ "y_pred": y_pred }));
    pass_reply_headers(&answer, response.headers_mut());
    Ok(response)
}

/// `Flotilla-Version` and `Flotilla-Worker` of the fleet's reply, on the HTTP reply.
fn pass_reply_headers(answer: &Answer, headers: &mut HeaderMap) {
    if let Some(v) = answer.version {
        headers.insert(VERSION_HEADER, HeaderValue::from(v));
    }
    if let Some(worker) = answer
        .worker
        .as_deref()
        .and_then(|w| HeaderValue::from_str(w).ok())
    {
        headers.insert(WORKER_HEADER, worker);
    }
}

/// The body, or 413 when it is over the limit.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, max: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorKind::TooLarge,
                format!("the request body is larger than this gateway accepts ({max} bytes)"),
            )
        } else {
            ApiError::bad_request(format!("reading the request body failed: {rejection}"))
        }
    })
}

/// MessagePack when `Content-Type` says so, JSON otherwise (`curl -d` sends a form type).
pub fn request_encoding(headers: &HeaderMap) -> Encoding {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some(MSGPACK_CONTENT_TYPE | "application/x-msgpack") => Encoding::MsgPack,
        _ => Encoding::Json,
    }
}

/// Refuses a body that is not one well-formed map in `encoding`.
pub fn check_map(encoding: Encoding, body: &[u8]) -> Result<(), ApiError> {
    match encoding {
        Encoding::Json => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            if first != Some(&b'{') {
                return Err(ApiError::bad_request(
                    "the body must be a JSON object such as {\"inputs\": [[...]]}",
                ));
            }
            serde_json::from_slice::<IgnoredAny>(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        }
        Encoding::MsgPack => {
            let is_map = matches!(body.first(), Some(0x80..=0x8f | 0xde | 0xdf));
            let mut rest = body;
            let decoded =
                IgnoredAny::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).is_ok();
            if !is_map || !decoded || !rest.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid MessagePack body: it must be exactly one map",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_maps_pass() {
        assert!(check_map(Encoding::Json, br#" {"inputs": [[1, 2]]}"#).is_ok());
        for bad in [&b"{\"inputs\": [[1, 2]"[..], b"[1, 2]", b"", b"{} {}"] {
            assert!(check_map(Encoding::Json, bad).is_err(), "{bad:?}");
        }
        let good = rmp_serde::to_vec_named(&serde_json::json!({"x": [1.0]})).unwrap();
        assert!(check_map(Encoding::MsgPack, &good).is_ok());
        assert!(check_map(Encoding::MsgPack, &good[..good.len() - 1]).is_err());
        assert!(check_map(Encoding::MsgPack, &[0x91, 0x01]).is_err());
    }
}
