//! One HTTP request becomes one NATS request: the predict subject, the steering headers
//! (`Content-Type`, `Flotilla-Version`, `Flotilla-Timeout-Ms`), the wait bounded by the
//! request's budget, and the answer sorted into a reply or an [`ApiError`]. Which API style
//! the error is then shown in is the caller's business.

use std::time::Duration;

use async_nats::HeaderMap as NatsHeaders;
use axum::http::HeaderMap;
use bytes::Bytes;
use flotilla_proto::headers::{
    header, CONTENT_TYPE, SERVICE_ERROR_CODE, TIMEOUT_HEADER, VERSION_HEADER, WORKER_HEADER,
};
use flotilla_proto::{parse_error_reply, predict_subject, Encoding, ModelName};

use crate::error::{ApiError, ErrorKind};
use crate::fleet::{Fleet, Presence};

/// A successful reply, undecoded.
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: Bytes,
    pub encoding: Encoding,
    /// `Flotilla-Version`: the version that computed it.
    pub version: Option<u64>,
    /// `Flotilla-Worker`: who computed it.
    pub worker: Option<String>,
}

/// One predict request, encoded.
#[derive(Debug, Clone)]
pub struct Call {
    pub body: Bytes,
    pub encoding: Encoding,
    pub version: Option<u64>,
    pub budget: Duration,
}

/// Sends predict requests to the fleet. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    nats: async_nats::Client,
    prefix: String,
    fleet: Fleet,
    /// The server's `max_payload` when the gateway connected (reading it per request clones
    /// the whole server info). async-nats checks it again on publish.
    max_payload: usize,
}

impl Upstream {
    pub fn new(nats: async_nats::Client, prefix: String, fleet: Fleet) -> Upstream {
        Upstream {
            max_payload: nats.server_info().max_payload,
            nats,
            prefix,
            fleet,
        }
    }

    /// Requests a prediction of `model` and waits at most the call's budget.
    pub async fn predict(&self, model: &ModelName, call: Call) -> Result<Answer, ApiError> {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                "the gateway is not connected to NATS right now; retry shortly",
            ));
        }
        let max_payload = self.max_payload;
        if max_payload > 0 && call.body.len() > max_payload {
            return Err(ApiError::new(
                ErrorKind::TooLarge,
                format!(
                    "the request is {} bytes on NATS but the server carries at most {max_payload}",
                    call.body.len()
                ),
            ));
        }
        let mut headers = NatsHeaders::new();
        headers.insert(CONTENT_TYPE, call.encoding.content_type());
        headers.insert(TIMEOUT_HEADER, call.budget.as_millis().to_string());
        if let Some(v) = call.version {
            headers.insert(VERSION_HEADER, v.to_string());
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(call.body)
            .timeout(Some(call.budget));
        let subject = predict_subject(&self.prefix, model);
        let message = match self.nats.send_request(subject, request).await {
            Ok(m) => m,
            Err(e) => return Err(self.request_failed(model, call.budget, e).await),
        };
        let headers = message.headers.as_ref();
        if let Some(error) = parse_error_reply(headers, &message.payload) {
            let code = headers
                .and_then(|h| header(h, SERVICE_ERROR_CODE))
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or(error.kind.code());
            let encoding = Encoding::detect(headers, &message.payload).unwrap_or(Encoding::Json);
            return Err(ApiError::Fleet {
                code,
                error,
                body: message.payload,
                encoding,
            });
        }
        self.fleet.seen(model);
        let encoding = Encoding::detect(headers, &message.payload).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("the fleet's reply has an unknown encoding: {}", e.message),
            )
        })?;
        Ok(Answer {
            encoding,
            version: headers
                .and_then(|h| header(h, VERSION_HEADER))
                .and_then(|v| v.trim().parse().ok()),
            worker: headers
                .and_then(|h| header(h, WORKER_HEADER))
                .map(str::to_owned),
            body: message.payload,
        })
    }

    async fn request_failed(
        &self,
        model: &ModelName,
        budget: Duration,
        e: async_nats::RequestError,
    ) -> ApiError {
        use async_nats::RequestErrorKind as K;
        match e.kind() {
            K::TimedOut => ApiError::new(
                ErrorKind::Timeout,
                format!(
                    "model \"{model}\" did not answer within {} ms",
                    budget.as_millis()
                ),
            ),
            // "No responders": no worker subscribes to the model's subject right now.
            K::NoResponders => match self.fleet.presence(model).await {
                Presence::Unknown => {
                    ApiError::not_found(format!("no model named \"{model}\" is served by the fleet"))
                }
                Presence::Known | Presence::Served(_) => ApiError::new(
                    ErrorKind::NoWorker,
                    format!(
                        "model \"{model}\" is known but no worker serves it right now; retry shortly"
                    ),
                ),
            },
            K::Other => ApiError::new(
                ErrorKind::Unavailable,
                format!("sending the request to NATS failed: {e}"),
            ),
        }
    }
}

/// The request's budget: its `Flotilla-Timeout-Ms` header, else `default`.
pub fn budget(headers: &HeaderMap, default: Duration) -> Result<Duration, ApiError> {
    Ok(number_header(headers, TIMEOUT_HEADER)?
        .map(Duration::from_millis)
        .unwrap_or(default))
}

/// The `Flotilla-Version` header, if any.
pub fn pinned_version(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    number_header(headers, VERSION_HEADER)
}

fn number_header(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "header {name} must be a non-negative integer, got {value:?}"
            ))
        })
}

/// A model name from a URL path; a name that breaks the naming rule cannot be a model.
pub fn model_name(raw: &str) -> Result<ModelName, ApiError> {
    ModelName::new(raw).map_err(|why| ApiError::not_found(format!("no such model: {why}")))
}
