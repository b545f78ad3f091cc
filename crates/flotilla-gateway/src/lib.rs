//! flotilla's HTTP gateway: a stateless front that turns each HTTP request into one NATS
//! request on `<prefix>.predict.<model>`, so any number of gateways can front one fleet. It
//! holds no model; what a model is and whether it is ready, it asks the fleet.
//!
//! Routes (the HTTP part of `docs/protocol.md`):
//! - `POST /predict`: the classic `{"x": [...]}` -> `{"y_pred": ...}`, on the default model.
//! - `POST /models/{model}/predict`: the NATS body and reply, unchanged, over HTTP.
//! - The Open Inference Protocol (KServe V2): `GET /v2/health/live`, `GET /v2/health/ready`,
//!   `GET /v2`, `GET /v2/models/{model}[/versions/{v}][/ready]`,
//!   `POST /v2/models/{model}[/versions/{v}]/infer`.
//!
//! [`serve`] runs it on a listener until a [`CancellationToken`] fires, then finishes the
//! requests in flight; the binary only parses flags and wires NATS, the listener and signals.
//!
//! # Layout
//! - [`config`]: [`GatewayConfig`] and its validation.
//! - [`error`]: [`GatewayError`] (start and stop), [`ApiError`] (one request) and how each
//!   API shows it.
//! - `upstream`: one predict request over NATS, its headers and budget, its answer sorted.
//! - `fleet`: what the fleet serves, from `$SRV.INFO` and `$SRV.STATS`, cached briefly.
//! - `native`: `POST /predict` and `POST /models/{model}/predict`.
//! - `oip`: the Open Inference Protocol routes and tensors (JSON and binary data).
//! - `auth`: optional bearer tokens; `tls`: optional HTTPS (rustls).
//! - [`metrics`]: [`Metrics`] by route template and status, and their `/metrics` endpoint.

mod auth;
pub mod config;
pub mod error;
mod fleet;
pub mod metrics;
mod native;
mod oip;
mod tls;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;
pub use error::{ApiError, ErrorKind, GatewayError};
pub use metrics::Metrics;

use fleet::{Fleet, FleetSettings};
use upstream::Upstream;

/// What every handler shares, behind one `Arc`: axum clones the state for every request.
type App = Arc<Shared>;

struct Shared {
    config: Arc<GatewayConfig>,
    upstream: Upstream,
    fleet: Fleet,
    nats: async_nats::Client,
    /// Fired when shutdown begins: `/v2/health/ready` turns 503 while requests finish.
    shutdown: CancellationToken,
}

/// Serves the HTTP API on `listener` (HTTPS when `config` names a certificate and key) with
/// `nats` until `shutdown` fires; then stops accepting, answers every request in flight
/// (for at most `shutdown_timeout_secs`) and returns.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    nats: async_nats::Client,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let tokens = config
        .auth_tokens_file
        .as_deref()
        .map(auth::Tokens::load)
        .transpose()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        _ => None,
    };
    // The discovery task outlives the shutdown signal: requests still in flight may need it.
    let stop_fleet = CancellationToken::new();
    let _stop_fleet = stop_fleet.clone().drop_guard();
    let fleet = Fleet::start(
        nats.clone(),
        FleetSettings {
            prefix: config.subject_prefix.clone(),
            window: Duration::from_millis(config.discovery_window_ms),
            cache: Duration::from_millis(config.discovery_cache_ms),
            forget_after: Duration::from_secs(config.forget_models_after_secs),
        },
        stop_fleet,
    );
    let limit = Duration::from_secs(config.shutdown_timeout_secs);
    let app = Arc::new(Shared {
        upstream: Upstream::new(nats.clone(), config.subject_prefix.clone(), fleet.clone()),
        config: Arc::new(config),
        fleet,
        nats,
        shutdown: shutdown.clone(),
    });
    let router = router(app, tokens, metrics);
    let stopped = shutdown.clone().cancelled_owned();
    let server = async {
        match tls {
            None => {
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            Some(config) => {
                let listener = tls::TlsListener::new(listener, config, shutdown.clone())?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        }
    };
    tokio::select! {
        served = server => served?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(limit).await } => {
            return Err(GatewayError::ShutdownTimeout(limit));
        }
    }
    tracing::info!("gateway: every request in flight answered");
    Ok(())
}

fn router(app: App, tokens: Option<auth::Tokens>, metrics: Metrics) -> Router {
    let max_body = app.config.max_body_bytes;
    let mut router = Router::new()
        .route("/predict", post(native::classic))
        .route("/models/{model}/predict", post(native::predict))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2", get(oip::server_metadata))
        .route("/v2/models/{model}", get(oip::model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(oip::model_metadata),
        )
        .route("/v2/models/{model}/ready", get(oip::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(oip::model_ready),
        )
        .route("/v2/models/{model}/infer", post(oip::infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(oip::infer),
        )
        .fallback(not_found)
        .with_state(app)
        .layer(DefaultBodyLimit::max(max_body));
    if let Some(tokens) = tokens {
        router = router.layer(axum::middleware::from_fn_with_state(tokens, auth::require));
    }
    router.layer(axum::middleware::from_fn_with_state(
        metrics,
        metrics::track,
    ))
}

async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    error::json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": format!(
            "no route {}: try POST /predict, POST /models/<model>/predict or the /v2 (Open Inference Protocol) routes",
            uri.path()
        )}),
    )
}
