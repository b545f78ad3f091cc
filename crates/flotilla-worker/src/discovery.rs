//! The NATS services API (ADR-32) for a worker: answers `$SRV.PING`, `$SRV.INFO` and
//! `$SRV.STATS` (bare, by service name, and by instance id) so that `nats micro ls`, or any
//! client, can list the fleet, the models each worker serves and its per-model counts.
//!
//! The predict subscriptions themselves belong to the worker; this module only reports on
//! them through [`EndpointStats`], which the worker updates as it replies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use flotilla_proto::name::SERVICE_NAME;
use flotilla_proto::name::{service_subject, ServiceVerb};

/// Per-endpoint counters in the shape ADR-32 reports them.
#[derive(Debug, Default)]
pub struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_ns: AtomicU64,
    last_error: ArcSwapOption<String>,
}

impl EndpointStats {
    /// Records one reply; `error` is `Some((code, message))` for an error reply.
    pub fn record(&self, elapsed: Duration, error: Option<(u16, &str)>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.processing_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if let Some((code, message)) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.last_error
                .store(Some(Arc::new(format!("{code}:{message}"))));
        }
    }
}

/// One endpoint (one model) as the services API describes it.
#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub subject: String,
    pub queue_group: String,
    pub stats: Arc<EndpointStats>,
    /// The endpoint's `data` in STATS replies: always a JSON object.
    pub data: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// The endpoint's `metadata` in INFO replies: a JSON object of strings (ADR-32 metadata
    /// is a string map), describing the model as served now.
    pub metadata: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

#[derive(Serialize)]
struct EndpointInfo<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'a str,
    metadata: serde_json::Value,
}

/// A running services API responder.
pub struct Service {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Subscribes to the services API subjects as instance `id` and answers from `endpoints`,
    /// which the worker may grow while it runs.
    pub async fn start(
        client: async_nats::Client,
        id: &str,
        endpoints: Arc<ArcSwap<Vec<Endpoint>>>,
    ) -> Result<Service, async_nats::SubscribeError> {
        let mut subscriptions = Vec::new();
        for verb in ServiceVerb::ALL {
            for subject in [
                service_subject(verb, None, None),
                service_subject(verb, Some(SERVICE_NAME), None),
                service_subject(verb, Some(SERVICE_NAME), Some(id)),
            ] {
                let sub = client.subscribe(subject).await?;
                subscriptions.push(sub.map(move |m| (verb, m)));
            }
        }
        tracing::info!(service = SERVICE_NAME, %id, "registered with the NATS services API");
        let stop = CancellationToken::new();
        let task = tokio::spawn(answer(
            client,
            id.to_owned(),
            futures::stream::select_all(subscriptions),
            endpoints,
            stop.clone(),
        ));
        Ok(Service { stop, task })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn answer(
    client: async_nats::Client,
    id: String,
    mut requests: impl futures::Stream<Item = (ServiceVerb, async_nats::Message)> + Unpin,
    endpoints: Arc<ArcSwap<Vec<Endpoint>>>,
    stop: CancellationToken,
) {
    let started = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats any UTC time");
    let version = env!("CARGO_PKG_VERSION");
    let base = json!({"name": SERVICE_NAME, "id": id, "version": version, "metadata": {}});
    loop {
        let (verb, message) = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            next = requests.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let Some(reply) = message.reply else { continue };
        let endpoints = endpoints.load();
        let mut body = base.clone();
        let fields = body.as_object_mut().expect("object");
        match verb {
            ServiceVerb::Ping => {
                fields.insert("type".into(), "io.nats.micro.v1.ping_response".into());
            }
            ServiceVerb::Info => {
                fields.insert("type".into(), "io.nats.micro.v1.info_response".into());
                fields.insert(
                    "description".into(),
                    "flotilla inference workers: one endpoint per served model".into(),
                );
                let infos: Vec<_> = endpoints
                    .iter()
                    .map(|e| EndpointInfo {
                        name: &e.name,
                        subject: &e.subject,
                        queue_group: &e.queue_group,
                        metadata: (e.metadata)(),
                    })
                    .collect();
                fields.insert("endpoints".into(), json!(infos));
            }
            ServiceVerb::Stats => {
                fields.insert("type".into(), "io.nats.micro.v1.stats_response".into());
                fields.insert("started".into(), started.clone().into());
                let stats: Vec<_> = endpoints.iter().map(endpoint_stats).collect();
                fields.insert("endpoints".into(), json!(stats));
            }
        }
        let payload = serde_json::to_vec(&body).expect("JSON values encode");
        if let Err(e) = client.publish(reply, payload.into()).await {
            tracing::warn!(error = %e, "services API: reply failed");
        }
    }
}

fn endpoint_stats(e: &Endpoint) -> serde_json::Value {
    let requests = e.stats.requests.load(Ordering::Relaxed);
    let processing = e.stats.processing_ns.load(Ordering::Relaxed);
    let last_error = e
        .stats
        .last_error
        .load_full()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    json!({
        "name": e.name,
        "subject": e.subject,
        "queue_group": e.queue_group,
        "num_requests": requests,
        "num_errors": e.stats.errors.load(Ordering::Relaxed),
        "last_error": last_error,
        "processing_time": processing,
        "average_processing_time": processing.checked_div(requests).unwrap_or(0),
        "data": (e.data)(),
    })
}
