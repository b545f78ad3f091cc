//! Health and metrics over HTTP: `GET /metrics` (Prometheus text), `GET /healthz` (the process
//! is alive) and `GET /readyz` (connected to NATS, every model loaded, not draining), on axum.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What `/readyz` reports. Shared by the worker (which sets it) and the endpoint.
#[derive(Debug, Default)]
pub struct Health {
    loaded: AtomicBool,
    draining: AtomicBool,
    /// Registry followers that died and are being restarted: the worker may be serving a
    /// version its registry has moved past, so it does not call itself ready.
    followers_down: AtomicUsize,
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
    pub fn follower_down(&self) {
        self.followers_down.fetch_add(1, Ordering::AcqRel);
    }
    pub fn follower_up(&self) {
        self.followers_down.fetch_sub(1, Ordering::AcqRel);
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
        if self.followers_down.load(Ordering::Acquire) > 0 {
            return Err("a registry follower failed and is restarting");
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
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n") })
        .with_state((metrics, health));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn render_metrics(State((metrics, _)): State<(Metrics, Arc<Health>)>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn readiness(State((_, health)): State<(Metrics, Arc<Health>)>) -> impl IntoResponse {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
