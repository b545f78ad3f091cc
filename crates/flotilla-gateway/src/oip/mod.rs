//! The Open Inference Protocol (KServe V2) REST routes: health, server metadata, model
//! metadata and readiness (from the fleet's discovery answers), and infer (one NATS request).
//! Errors are `{"error": "<message>"}` ([`OipError`]).
//!
//! # Layout
//! - [`tensor`]: infer requests (JSON and binary tensor data) into the NATS predict body.
//! - [`output`]: the fleet's reply into output tensors, and the infer response.

pub mod output;
pub mod tensor;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flotilla_proto::http::INFERENCE_HEADER_CONTENT_LENGTH;
use flotilla_proto::{Encoding, ModelName};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{json_response, ApiError, ErrorKind, OipError};
use crate::fleet::{ModelInfo, Presence};
use crate::native::body_bytes;
use crate::upstream::{budget, model_name, Call};
use crate::App;
use output::{FleetReply, INPUT, LABEL, OUTPUT, TOKENS};
use tensor::{decode_request, predict_body, Datatype, Values};

/// `{model}` and, on the `/versions/{version}` routes, `{version}`.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    model: String,
    #[serde(default)]
    version: Option<String>,
}

impl ModelPath {
    fn parse(&self) -> Result<(ModelName, Option<u64>), ApiError> {
        let model = model_name(&self.model)?;
        let version = match &self.version {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ApiError::not_found(format!(
                    "model \"{model}\" has no version {v:?} (versions are integers)"
                ))
            })?),
        };
        Ok((model, version))
    }
}

/// `GET /v2/health/live`: the process answers.
pub async fn live() -> Response {
    json_response(StatusCode::OK, &json!({"live": true}))
}

/// `GET /v2/health/ready`: connected to NATS and not shutting down.
pub async fn ready(State(app): State<App>) -> Result<Response, OipError> {
    if app.shutdown.is_cancelled() {
        return Err(ApiError::new(ErrorKind::Unavailable, "the gateway is shutting down").into());
    }
    if app.nats.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::new(ErrorKind::Unavailable, "not connected to NATS").into());
    }
    Ok(json_response(StatusCode::OK, &json!({"ready": true})))
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "name": "flotilla",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
        }),
    )
}

/// The model as the fleet describes it: 404 when unknown, 503 when no worker serves it, 404
/// when `version` is given and no worker holds it.
async fn served(app: &App, model: &ModelName, version: Option<u64>) -> Result<ModelInfo, ApiError> {
    let info = match app.fleet.presence(model).await {
        Presence::Served(info) => info,
        Presence::Known => {
            return Err(ApiError::new(
                ErrorKind::NoWorker,
                format!("model \"{model}\" is known but no worker serves it right now"),
            ))
        }
        Presence::Unknown => {
            return Err(ApiError::not_found(format!(
                "no model named \"{model}\" is served by the fleet"
            )))
        }
    };
    if let Some(v) = version {
        if !info.versions.contains(&v) {
            let held: Vec<String> = info.versions.iter().map(u64::to_string).collect();
            return Err(ApiError::not_found(format!(
                "model \"{model}\" has no version {v} (the fleet holds: {})",
                held.join(", ")
            )));
        }
    }
    Ok(info)
}

/// `GET /v2/models/{model}[/versions/{version}]`: model metadata.
pub async fn model_metadata(
    State(app): State<App>,
    Path(path): Path<ModelPath>,
) -> Result<Response, OipError> {
    let (model, version) = path.parse()?;
    let info = served(&app, &model, version).await?;
    #[derive(Serialize)]
    struct TensorMeta<'a> {
        name: &'a str,
        datatype: &'a str,
        shape: Vec<i64>,
    }
    let input = input_datatype(&info);
    let output = match input {
        Datatype::Fp64 => Datatype::Fp64,
        _ => Datatype::Fp32,
    };
    let mut outputs = vec![TensorMeta {
        name: OUTPUT,
        datatype: output.as_str(),
        shape: info.output_shape.clone().unwrap_or(vec![-1, -1]),
    }];
    if info.classifier == Some(true) {
        outputs.push(TensorMeta {
            name: LABEL,
            datatype: Datatype::Bytes.as_str(),
            shape: vec![-1],
        });
    }
    let default_shape = match input {
        Datatype::Bytes => vec![-1],
        _ => vec![-1, -1],
    };
    let versions: Vec<String> = match version {
        Some(v) => vec![v.to_string()],
        None => info.versions.iter().map(u64::to_string).collect(),
    };
    let platform = match &info.kind {
        Some(kind) => format!("flotilla_{kind}"),
        None => "flotilla".to_owned(),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "name": model.as_str(),
            "versions": versions,
            "platform": platform,
            "inputs": [TensorMeta {
                name: INPUT,
                datatype: input.as_str(),
                shape: info.input_shape.clone().unwrap_or(default_shape),
            }],
            "outputs": outputs,
        }),
    ))
}

/// The input datatype the workers report; dense models compute in f64 when they do not say.
fn input_datatype(info: &ModelInfo) -> Datatype {
    match info.dtype.as_deref() {
        Some("f32" | "float32" | "fp32") => Datatype::Fp32,
        Some("string" | "str" | "text" | "bytes") => Datatype::Bytes,
        Some(_) => Datatype::Fp64,
        None if info.kind.as_deref() == Some("text-embedding") => Datatype::Bytes,
        None => Datatype::Fp64,
    }
}

/// `GET /v2/models/{model}[/versions/{version}]/ready`: 200 only while a worker serves it.
pub async fn model_ready(
    State(app): State<App>,
    Path(path): Path<ModelPath>,
) -> Result<Response, OipError> {
    let (model, version) = path.parse()?;
    served(&app, &model, version).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": model.as_str(), "ready": true}),
    ))
}

/// `POST /v2/models/{model}[/versions/{version}]/infer`.
pub async fn infer(
    State(app): State<App>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OipError> {
    let (model, version) = path.parse()?;
    let body = body_bytes(body, app.config.max_body_bytes)?;
    let header_length = match headers.get(INFERENCE_HEADER_CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "header {INFERENCE_HEADER_CONTENT_LENGTH} must be a byte count, got {v:?}"
                    ))
                })?,
        ),
    };
    let request = decode_request(&body, header_length)?;
    if let Some(unknown) = request
        .outputs
        .iter()
        .flatten()
        .find(|(name, _)| ![OUTPUT, LABEL, TOKENS].contains(&name.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "model \"{model}\" has no output named {:?}; its outputs are {OUTPUT:?}, {LABEL:?} for classifiers and {TOKENS:?} for text models",
            unknown.0
        ))
        .into());
    }
    let datatype = match request.inputs[0].values {
        Values::F64(_) => Datatype::Fp64,
        _ => Datatype::Fp32,
    };
    let call = Call {
        body: predict_body(&request.inputs)?,
        encoding: Encoding::MsgPack,
        version,
        budget: budget(&headers, app.config.request_timeout())?,
    };
    let answer = app.upstream.predict(&model, call).await?;
    let reply = FleetReply::decode(&answer.body, answer.encoding)?;
    let served_version = answer.version.or(reply.version);
    let tensors = reply.tensors(datatype)?;
    let selected = match &request.outputs {
        // The protocol gives a text model one output, `output`: its token counts are sent
        // only to a caller who asks for the `tokens` output by name.
        None => tensors
            .iter()
            .filter(|t| t.name != TOKENS)
            .map(|t| (t, request.binary_output))
            .collect(),
        Some(wanted) => wanted
            .iter()
            .map(|(name, binary)| {
                let tensor = tensors.iter().find(|t| &t.name == name).ok_or_else(|| {
                    let not = if name == TOKENS {
                        "a text model"
                    } else {
                        "a classifier"
                    };
                    ApiError::bad_request(format!(
                        "model \"{model}\" has no output {name:?}: it is not {not}"
                    ))
                })?;
                Ok((tensor, *binary))
            })
            .collect::<Result<Vec<_>, ApiError>>()?,
    };
    let written = output::write_response(&model, served_version, request.id.as_deref(), &selected)?;
    let content_type = match written.header_length {
        Some(_) => "application/octet-stream",
        None => "application/json",
    };
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        written.body,
    )
        .into_response();
    if let Some(n) = written.header_length {
        response
            .headers_mut()
            .insert(INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(response)
}
