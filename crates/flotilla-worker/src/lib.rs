//! A flotilla worker: serves models on `<prefix>.predict.<model>` from one queue group per
//! model, gathers concurrent requests into batches, computes them off the async runtime, and
//! replies to each caller with exactly its own rows. Models come from files or follow the
//! JetStream registry, hot-swapped without failing a request.
//!
//! Per model there are two tasks. The *read loop* (`read`) owns the subscription and only
//! admits or refuses; the *batch loop* (`compute`) takes the next batch whenever the previous
//! one is done and computes it: in place when it is microseconds of work, else on the
//! model's compute thread. What a model serves is a `live`
//! value swapped atomically; in registry mode `follow` builds new ones as manifests change.
//!
//! # Layout
//! - [`worker`]: [`run`], the set of served models, start-up and drain.
//! - `read`: the read loop: decode, check, admit or refuse at once.
//! - `inputs`: a request's inputs against the model's signature, and a batch's concatenation.
//! - [`batch`]: the row-bounded queue (a handle) and the batching state (plain code).
//! - `compute`: the batch loop, the compute thread, encoding and publishing replies.
//! - `live`: the versions served for a model, the canary, metric handles per version.
//! - `follow`: registry mode: watch manifests, load, verify, warm up, swap.
//! - [`discovery`]: the NATS services API (`$SRV.PING|INFO|STATS.flotilla`).
//! - [`metrics`]: the Prometheus metrics; [`health`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`config`]: [`WorkerConfig`] and its validation.

pub mod batch;
mod compute;
pub mod config;
pub mod discovery;
mod follow;
pub mod health;
mod inputs;
mod live;
pub mod metrics;
mod read;
pub mod worker;

pub use config::WorkerConfig;
pub use health::Health;
pub use live::ServedModel;
pub use metrics::Metrics;
pub use worker::{run, Selection, Source, WorkerError};

/// The text of a panic's payload, for logs and error replies.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
