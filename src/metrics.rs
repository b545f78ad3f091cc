//! Prometheus metrics and the small HTTP endpoint that serves them with the health checks.
//!
//! Every metric is prefixed `flotilla_` and labelled only by values with few possibilities
//! (model, version, code). The endpoint speaks just enough HTTP/1.1 for a scraper and a
//! load balancer's probe: `GET /metrics`, `GET /healthz` (the process is alive) and
//! `GET /readyz` (connected, every model loaded, not draining).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
    /// The version currently served.
    pub model_version: IntGaugeVec,
    /// Registry versions that could not be loaded, by model and reason (download, checksum,
    /// signature, invalid, manifest); the worker kept serving what it had.
    pub load_failures: IntCounterVec,
    /// Times a model's served versions changed (a new current, canary or rollback).
    pub swaps: IntCounterVec,
}

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
            LATENCY_BUCKETS,
        );
        let compute_duration = histogram(
            "flotilla_compute_duration_seconds",
            "Time to compute one batch (forward pass and reply encoding).",
            LATENCY_BUCKETS,
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
        Metrics {
            registry,
            requests,
            request_duration,
            queue_duration,
            compute_duration,
            batch_rows,
            queue_rows,
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

/// What `/readyz` reports. Shared by the worker (which sets it) and the endpoint.
#[derive(Debug, Default)]
pub struct Health {
    loaded: AtomicBool,
    draining: AtomicBool,
    client: std::sync::OnceLock<async_nats::Client>,
}

impl Health {
    pub fn set_client(&self, client: async_nats::Client) {
        let _ = self.client.set(client);
    }
    pub fn set_loaded(&self, loaded: bool) {
        self.loaded.store(loaded, Ordering::Release);
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    /// Ready: connected to NATS, every model loaded, not draining. Says why when not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining");
        }
        match self.client.get().map(|c| c.connection_state()) {
            Some(async_nats::connection::State::Connected) => {}
            _ => return Err("not connected to NATS"),
        }
        if !self.loaded.load(Ordering::Acquire) {
            return Err("models not loaded");
        }
        Ok(())
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics, &health).await {
                tracing::debug!(error = %e, "metrics endpoint: connection failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, health: &Health) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read until the end of the request head; scrapers send no body.
    let head_end = loop {
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read(&mut buf[len..]),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow client"))??;
        if n == 0 {
            return Ok(());
        }
        len += n;
        if let Some(p) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if len == buf.len() {
            break len;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match health.readiness() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
