//! flotilla: a fleet of stateless inference workers on NATS.
//!
//! Services publish prediction requests on `flotilla.predict.<model>`; every worker serving
//! that model answers from one queue group, gathering concurrent requests into batches whose
//! forward pass runs on rayon. The wire contract is `docs/protocol.md`.
//!
//! # Layout
//! - [`protocol`]: subjects, headers, the two encodings, request decoding, replies and error codes.
//! - [`model`]: the `flotilla.model.v1` artifact, its validation and the forward pass.
//! - [`batch`]: the bounded queue and the batching state.
//! - [`registry`]: the JetStream model registry: manifests (KV), artifacts (object store), signing.
//! - [`worker`]: subscribe, admit, batch, compute on rayon, reply; drain on shutdown.
//! - [`discovery`]: the NATS services API (`$SRV.PING|INFO|STATS.flotilla`).
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`config`]: worker settings (defaults, TOML file, `FLOTILLA_*` environment) and NATS options.
//! - [`client`]: a typed Rust client for the predict subject.
//! - [`bench`]: the closed-loop load generator behind `flotilla bench`.
//! - [`train`]: fit a model to a CSV file (linear, logistic, softmax, MLP) and measure it.
//! - [`nats_server`]: starts a throwaway `nats-server` for the demo and the tests.

pub mod batch;
pub mod bench;
pub mod client;
pub mod config;
pub mod discovery;
pub mod metrics;
pub mod model;
pub mod nats_server;
pub mod protocol;
pub mod registry;
pub mod train;
pub mod worker;

pub use client::{Client, ClientError};
pub use model::Model;
pub use protocol::{ErrorKind, Prediction, ServiceError};
