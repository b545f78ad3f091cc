//! A typed Rust client for `flotilla.predict.<model>`.
//!
//! `Client::predict` sends rows and returns the decoded [`Prediction`] (with the version that
//! computed it), or a [`ClientError`] whose `Service` variant carries the protocol's code and
//! kind, so callers can tell a retryable 503 from a 400 they must fix.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::headers::{header, CONTENT_TYPE, TIMEOUT_HEADER, VERSION_HEADER};
use crate::{
    parse_error_reply, predict_subject, validate_model_name, Encoding, ErrorKind, PredictRequest,
    Prediction, ServiceError, DEFAULT_PREFIX,
};

/// Why a prediction failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The worker answered with a protocol error.
    #[error("{0}")]
    Service(ServiceError),
    /// No worker serves this model (NATS answered "no responders").
    #[error("no worker serves model {model:?} on {subject}")]
    NoResponders { model: String, subject: String },
    #[error("no reply from model {model:?} within {timeout:?}")]
    Timeout { model: String, timeout: Duration },
    #[error("invalid model name: {0}")]
    ModelName(String),
    #[error("NATS request failed: {0}")]
    Nats(#[from] async_nats::RequestError),
    #[error("undecodable reply: {0}")]
    Decode(String),
}

impl ClientError {
    /// The protocol kind, for `Service` errors.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Service(e) => Some(e.kind),
            _ => None,
        }
    }
}

/// Options of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestSpec {
    pub encoding: Encoding,
    /// Pin a version (`Flotilla-Version`).
    pub version: Option<u64>,
    /// How long to wait; also sent as `Flotilla-Timeout-Ms`.
    pub timeout: Duration,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            encoding: Encoding::MsgPack,
            version: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A raw reply: the version header, the body and its encoding.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub version: Option<u64>,
    pub encoding: Encoding,
    pub body: Bytes,
}

/// A cheap-to-clone handle for sending predictions.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    prefix: String,
    spec: RequestSpec,
}

impl Client {
    pub fn new(nats: async_nats::Client) -> Client {
        Client {
            nats,
            prefix: DEFAULT_PREFIX.into(),
            spec: RequestSpec::default(),
        }
    }

    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn with_spec(mut self, spec: RequestSpec) -> Self {
        self.spec = spec;
        self
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Predicts `rows` with the client's default options.
    pub async fn predict(&self, model: &str, rows: &[Vec<f64>]) -> Result<Prediction, ClientError> {
        self.predict_with(model, rows, self.spec).await
    }

    pub async fn predict_with(
        &self,
        model: &str,
        rows: &[Vec<f64>],
        spec: RequestSpec,
    ) -> Result<Prediction, ClientError> {
        let body = PredictRequest::encode(spec.encoding, rows, None);
        let reply = self.request(model, body, spec).await?;
        let prediction = match reply.encoding {
            Encoding::Json => serde_json::from_slice(&reply.body).map_err(|e| e.to_string()),
            Encoding::MsgPack => rmp_serde::from_slice(&reply.body).map_err(|e| e.to_string()),
        };
        prediction.map_err(ClientError::Decode)
    }

    /// Sends an already encoded body and returns the successful reply undecoded; error
    /// replies become [`ClientError::Service`].
    pub async fn request(
        &self,
        model: &str,
        body: Bytes,
        spec: RequestSpec,
    ) -> Result<RawReply, ClientError> {
        validate_model_name(model).map_err(ClientError::ModelName)?;
        let subject = predict_subject(&self.prefix, model);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, spec.encoding.content_type());
        headers.insert(TIMEOUT_HEADER, spec.timeout.as_millis().to_string());
        if let Some(v) = spec.version {
            headers.insert(VERSION_HEADER, v.to_string());
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(body)
            .timeout(Some(spec.timeout));
        let message = match self.nats.send_request(subject.clone(), request).await {
            Ok(m) => m,
            Err(e) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => ClientError::NoResponders {
                        model: model.into(),
                        subject,
                    },
                    async_nats::RequestErrorKind::TimedOut => ClientError::Timeout {
                        model: model.into(),
                        timeout: spec.timeout,
                    },
                    async_nats::RequestErrorKind::Other => ClientError::Nats(e),
                })
            }
        };
        if let Some(err) = parse_error_reply(message.headers.as_ref(), &message.payload) {
            return Err(ClientError::Service(err));
        }
        let headers = message.headers.as_ref();
        let encoding = Encoding::detect(headers, &message.payload).map_err(|e| {
            ClientError::Decode(format!("reply has an unknown encoding: {}", e.message))
        })?;
        let version = headers
            .and_then(|h| header(h, VERSION_HEADER))
            .and_then(|v| v.parse().ok());
        Ok(RawReply {
            version,
            encoding,
            body: message.payload,
        })
    }
}
