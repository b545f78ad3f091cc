//! flotilla's wire contract, for anything that calls the fleet or serves it: subjects and
//! names, headers, the two body encodings, request and reply bodies, the error table, and a
//! typed async [`Client`]. It knows nothing about models, batching or the registry, so a Rust
//! service that only calls the fleet compiles this crate and async-nats, nothing more.
//!
//! The contract itself is `docs/protocol.md` (which restates `PROTOCOL.md` v1 and v1.1).
//!
//! # Layout
//! - [`name`]: [`ModelName`], the predict and services API subjects.
//! - [`headers`]: header names and [`RequestOptions`] (`Flotilla-Version`, `Flotilla-Timeout-Ms`).
//! - [`encoding`]: JSON and MessagePack, chosen by `Content-Type` or sniffed.
//! - [`request`]: decoding a request body (rows of any shape, text rows, binary tensors,
//!   named inputs) into flat buffers, with errors that name the spot.
//! - [`reply`]: reply bodies, written by workers and read by clients; [`Label`].
//! - [`error`]: [`ErrorKind`] (one code each), [`ServiceError`], error replies.
//! - [`client`]: [`Client`], a typed caller of `flotilla.predict.<model>`.
//! - [`connect`]: [`NatsConfig`], the `[nats]` settings, and connecting with them.
//! - [`http`]: names of the HTTP mapping (the Open Inference Protocol header, tensor names).

pub mod client;
pub mod connect;
pub mod encoding;
pub mod error;
pub mod headers;
pub mod http;
pub mod name;
pub mod reply;
pub mod request;

pub use client::{Client, ClientError, RequestSpec};
pub use connect::{ConnectError, InvalidSetting, NatsConfig};
pub use encoding::{error_encoding, Encoding};
pub use error::{error_reply, parse_error_reply, ErrorKind, ServiceError};
pub use headers::{header, RequestOptions};
pub use name::{predict_subject, validate_model_name, ModelName, DEFAULT_PREFIX};
pub use reply::{
    reply_headers, Label, MatrixRef, OutputsRef, PredictReply, Prediction, ValuesRef, YPred,
};
pub use request::{InputTensor, Inputs, PredictRequest, TensorDType, Values};
