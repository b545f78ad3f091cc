//! The worker's Prometheus metrics. Every metric is prefixed `flotilla_` and labelled only by
//! values with few possibilities (model, version, code, reason). [`crate::health`] serves them.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The worker's metrics, registered in their own [`Registry`]. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Replies sent, by model, serving version and protocol code (200 for success).
    pub requests: IntCounterVec,
    /// Receipt to reply, seconds.
    pub request_duration: HistogramVec,
    /// Receipt to joining a batch, seconds.
    pub queue_duration: HistogramVec,
    /// One batch's forward pass and reply encoding, seconds.
    pub compute_duration: HistogramVec,
    /// Rows per computed batch.
    pub batch_rows: HistogramVec,
    /// Rows admitted and waiting.
    pub queue_rows: IntGaugeVec,
    /// The most rows that may wait (`max_queue_rows`), so saturation is a ratio of two series.
    pub max_queue_rows: IntGaugeVec,
    /// The version currently served.
    pub model_version: IntGaugeVec,
    /// Registry versions that could not be loaded, by model and reason (download, checksum,
    /// signature, invalid, manifest); the worker kept serving what it had.
    pub load_failures: IntCounterVec,
    /// Times a model's served versions changed (a new current, canary or rollback).
    pub swaps: IntCounterVec,
    /// Times a model's registry follower died (a panic) and was restarted.
    pub follower_restarts: IntCounterVec,
}

/// Queue and compute times of small models are microseconds: these start at 1 µs so a
/// histogram can tell 2 µs from 90 µs (both were below the first request bucket).
const FINE_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const ROW_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["model"],
            )
            .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique name");
            h
        };
        let request_duration = histogram(
            "flotilla_request_duration_seconds",
            "Time from receiving a predict request to publishing its reply.",
            LATENCY_BUCKETS,
        );
        let queue_duration = histogram(
            "flotilla_queue_duration_seconds",
            "Time a request waited before its batch formed.",
            FINE_BUCKETS,
        );
        let compute_duration = histogram(
            "flotilla_compute_duration_seconds",
            "Time to compute one batch (forward pass and reply encoding).",
            FINE_BUCKETS,
        );
        let batch_rows = histogram(
            "flotilla_batch_rows",
            "Rows per computed batch.",
            ROW_BUCKETS,
        );
        let requests = IntCounterVec::new(
            Opts::new(
                "flotilla_requests_total",
                "Predict replies sent, by model, version and code (200 = success).",
            ),
            &["model", "version", "code"],
        )
        .expect("valid counter");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique name");
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["model"]).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let queue_rows = gauge(
            "flotilla_queue_rows",
            "Rows admitted and waiting for a batch.",
        );
        let model_version = gauge("flotilla_model_version", "Model version being served.");
        let max_queue_rows = gauge(
            "flotilla_max_queue_rows",
            "Rows that may wait for a batch before requests are refused (max_queue_rows).",
        );
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let load_failures = counter(
            "flotilla_model_load_failures_total",
            "Registry versions that failed to load (the previous version kept serving).",
            &["model", "reason"],
        );
        let swaps = counter(
            "flotilla_model_swaps_total",
            "Changes of the versions a model serves.",
            &["model"],
        );
        let follower_restarts = counter(
            "flotilla_follower_restarts_total",
            "Registry followers that died and were restarted.",
            &["model"],
        );
        Metrics {
            follower_restarts,
            registry,
            requests,
            request_duration,
            queue_duration,
            compute_duration,
            batch_rows,
            queue_rows,
            max_queue_rows,
            model_version,
            load_failures,
            swaps,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}
