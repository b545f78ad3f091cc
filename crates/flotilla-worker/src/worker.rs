//! Running a worker: the set of models it serves, each with a read loop (`read`) and
//! a batch loop (`compute`), started from files or from the registry
//! (`follow`), and drained on shutdown.
//!
//! Every request that reaches a read loop gets exactly one reply. Shutdown is a
//! [`CancellationToken`]: read loops drain their subscriptions and exit, which closes the
//! queues; batch loops finish what was admitted and exit; then the connection is flushed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;
use flotilla_proto::{predict_subject, validate_model_name};
use flotilla_registry::{Registry, RegistryError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Limits};
use crate::compute::{self, Job};
use crate::config::WorkerConfig;
use crate::discovery::{self, Endpoint};
use crate::follow;
use crate::health::Health;
use crate::live::{Live, ServedModel, Slot, Version};
use crate::metrics::Metrics;
use crate::read::{read_loop, DecodeBudget};

/// Why a worker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
    #[error("starting a model's compute thread: {0}")]
    Thread(std::io::Error),
    #[error("building the compute pool: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
    #[error(
        "no models to serve; pass --model NAME=PATH, --models NAME (from the registry), or list them under [models] in the config"
    )]
    NoModels,
    #[error("model name: {0}")]
    ModelName(String),
    #[error("model {model:?} has no current version in the registry; publish one with `flotilla train` or `flotilla models publish`")]
    NoCurrentVersion { model: String },
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("services API: {0}")]
    Discovery(async_nats::SubscribeError),
    #[error("shutdown did not finish within {0:?}; some accepted requests may be unanswered")]
    ShutdownTimeout(Duration),
}

/// Which registry models a worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every model in the registry, including those published later.
    All,
    Named(Vec<String>),
}

impl Selection {
    /// Parses `--models`: `*` or a comma-separated list of names.
    pub fn parse(spec: &str) -> Result<Selection, String> {
        if spec.trim() == "*" {
            return Ok(Selection::All);
        }
        let names: Vec<String> = spec
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Err("--models needs '*' or a comma-separated list of model names".into());
        }
        for n in &names {
            validate_model_name(n)?;
        }
        Ok(Selection::Named(names))
    }

    pub(crate) fn wants(&self, model: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Named(names) => names.iter().any(|n| n == model),
        }
    }
}

/// Where a worker's models come from.
pub enum Source {
    /// Fixed models, e.g. from artifact files; each is version 1 unless said otherwise.
    Fixed(Vec<ServedModel>),
    /// Follow the JetStream registry: serve each selected model's current version (and
    /// canary), and swap as manifests change.
    Registry {
        registry: Box<Registry>,
        models: Selection,
        trusted: Arc<Vec<VerifyingKey>>,
    },
}

/// Settings the read and batch loops consult per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) max_request_rows: usize,
    pub(crate) inline_decode_bytes: usize,
    pub(crate) inline_compute_rows: usize,
}

/// Context shared by all tasks of the worker.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) client: async_nats::Client,
    pub(crate) pool: Arc<rayon::ThreadPool>,
    pub(crate) settings: Settings,
    /// Bounds the bytes of large bodies waiting to be decoded on the pool.
    pub(crate) decoding: Arc<DecodeBudget>,
    /// This worker's id: the services API instance id and the `Flotilla-Worker` reply header.
    pub(crate) worker_id: Arc<String>,
    pub(crate) metrics: Metrics,
}

/// The set of models one worker serves, growing as the registry gains models (with
/// `--models '*'`).
pub(crate) struct ServedModels {
    pub(crate) shared: Shared,
    prefix: String,
    queue_group: String,
    limits: Limits,
    /// Names already served, so none is served twice.
    served: HashSet<String>,
    endpoints: Arc<ArcSwap<Vec<Endpoint>>>,
    read_loops: JoinSet<()>,
    batch_loops: JoinSet<()>,
    shutdown: CancellationToken,
}

impl ServedModels {
    /// Subscribes and starts serving `live` as model `name`.
    pub(crate) async fn add(&mut self, name: &str, live: Live) -> Result<Arc<Slot>, WorkerError> {
        validate_model_name(name).map_err(WorkerError::ModelName)?;
        if self.served.contains(name) {
            return Err(WorkerError::ModelName(format!(
                "model {name:?} is listed twice"
            )));
        }
        let subject = predict_subject(&self.prefix, name);
        let current = &live.current.served;
        tracing::info!(
            model = %name,
            version = current.version,
            inputs = current.model.inputs(),
            outputs = current.model.outputs(),
            %subject,
            "serving model"
        );
        let slot = Arc::new(Slot::new(name, live, &self.shared.metrics));
        let subscription = self
            .shared
            .client
            .queue_subscribe(subject.clone(), self.queue_group.clone())
            .await
            .map_err(|source| WorkerError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
        let (queue, batcher) = batch::channel(self.limits);
        self.shared
            .metrics
            .max_queue_rows
            .with_label_values(&[name])
            .set(self.limits.max_queue_rows as i64);
        let mut endpoints = Vec::clone(&self.endpoints.load());
        endpoints.push(endpoint(&slot, &subject, &self.queue_group, &queue));
        self.endpoints.store(Arc::new(endpoints));
        self.read_loops.spawn(read_loop(
            self.shared.clone(),
            slot.clone(),
            subscription,
            queue,
            self.shutdown.clone(),
        ));
        let ended = compute::spawn_batch_loop(
            tokio::runtime::Handle::current(),
            self.shared.clone(),
            slot.clone(),
            batcher,
        )
        .map_err(WorkerError::Thread)?;
        self.batch_loops.spawn(async move {
            let _ = ended.await;
        });
        self.served.insert(name.to_owned());
        Ok(slot)
    }
}

/// Serves models from `source` until `shutdown` fires, then answers everything accepted and
/// returns.
pub async fn run(
    client: async_nats::Client,
    config: &WorkerConfig,
    source: Source,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let threads = match config.compute_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("flotilla-compute-{i}"))
        .build()?;
    let worker_id = Arc::new(nuid::next().to_string());
    let shared = Shared {
        client: client.clone(),
        pool: Arc::new(pool),
        settings: Settings {
            max_request_rows: config.max_request_rows,
            inline_decode_bytes: config.inline_decode_bytes,
            inline_compute_rows: config.inline_compute_rows,
        },
        decoding: DecodeBudget::new(config.max_decode_bytes),
        worker_id: worker_id.clone(),
        metrics: metrics.clone(),
    };
    health.set_client(client.clone());
    let mut fleet = ServedModels {
        shared,
        prefix: config.subject_prefix.clone(),
        queue_group: config.queue_group.clone(),
        limits: Limits {
            max_batch_rows: config.max_batch_rows,
            max_batch_tokens: config.max_batch_tokens,
            max_queue_rows: config.max_queue_rows,
            max_queue_tokens: config.max_queue_tokens,
            max_batch_delay: config.max_batch_delay(),
        },
        served: HashSet::new(),
        endpoints: Arc::default(),
        read_loops: JoinSet::new(),
        batch_loops: JoinSet::new(),
        shutdown: shutdown.clone(),
    };

    let follower = match source {
        Source::Fixed(models) => {
            if models.is_empty() {
                return Err(WorkerError::NoModels);
            }
            for served in models {
                let name = served.name.clone();
                let version = Arc::new(Version::new(served, &metrics, &worker_id));
                fleet.add(&name, Live::single(version)).await?;
            }
            None
        }
        Source::Registry {
            registry,
            models,
            trusted,
        } => Some(
            follow::Follower::start(
                *registry,
                models,
                trusted,
                config.registry.keep_versions,
                health.clone(),
                &mut fleet,
            )
            .await?,
        ),
    };
    let discovery =
        discovery::Service::start(client.clone(), worker_id.as_str(), fleet.endpoints.clone())
            .await
            .map_err(WorkerError::Discovery)?;
    // Make sure the server has every subscription before calling ourselves ready.
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flushing subscriptions failed");
    }
    health.set_loaded(true);
    tracing::info!(queue_group = %config.queue_group, id = %worker_id, "worker ready");

    match follower {
        Some(follower) => follower.run(&mut fleet, &shutdown).await,
        None => shutdown.cancelled().await,
    }
    health.set_draining();
    tracing::info!("shutdown: no longer taking requests; answering those already accepted");
    let ServedModels {
        mut read_loops,
        mut batch_loops,
        ..
    } = fleet;
    let drain = async {
        while read_loops.join_next().await.is_some() {}
        while batch_loops.join_next().await.is_some() {}
        if let Err(e) = client.flush().await {
            tracing::warn!(error = %e, "shutdown: flushing replies failed");
        }
    };
    let limit = Duration::from_secs(config.shutdown_timeout_secs);
    tokio::time::timeout(limit, drain)
        .await
        .map_err(|_| WorkerError::ShutdownTimeout(limit))?;
    discovery.stop().await;
    tracing::info!("shutdown: every accepted request answered");
    Ok(())
}

fn endpoint(
    slot: &Arc<Slot>,
    subject: &str,
    queue_group: &str,
    queue: &batch::Queue<Job>,
) -> Endpoint {
    let (data_slot, meta_slot, depth) = (slot.clone(), slot.clone(), queue.depth());
    Endpoint {
        name: slot.name.clone(),
        subject: subject.to_owned(),
        queue_group: queue_group.to_owned(),
        stats: slot.stats.clone(),
        data: Arc::new(move || {
            let live = data_slot.live.load();
            let current = &live.current.served;
            serde_json::json!({
                "version": current.version,
                "versions": live.held.keys().collect::<Vec<_>>(),
                "canary": live.canary.as_ref().map(|(v, w)| serde_json::json!({"version": v.number(), "weight": w})),
                "inputs": current.model.inputs(),
                "outputs": current.model.outputs(),
                "queue_rows": depth.queued_rows(),
                "max_queue_rows": depth.max_queue_rows(),
                "queue_tokens": depth.queued_tokens(),
            })
        }),
        metadata: Arc::new(move || {
            let live = meta_slot.live.load();
            let current = &live.current.served;
            metadata(&meta_slot.name, current.version, &current.model)
        }),
    }
}

/// What a gateway or a tool needs to describe a model without calling it (PROTOCOL v1.1,
/// discovery metadata). Values are strings, since ADR-32 clients read metadata as a string
/// map: shapes are JSON arrays with `-1` for the batch dimension, `inputs` and `outputs`
/// JSON lists of `{name, shape, dtype}`; `input_shape`, `output_shape` and `dtype` describe
/// the first input and `outputs` for tools that expect one of each.
pub(crate) fn metadata(
    name: &str,
    version: u64,
    model: &flotilla_model::Model,
) -> serde_json::Value {
    let signature = model.signature();
    let spec = |s: &flotilla_model::TensorSpec| serde_json::json!({"name": s.name, "shape": s.batch_shape(), "dtype": s.dtype});
    let inputs: Vec<_> = signature.inputs.iter().map(spec).collect();
    let outputs: Vec<_> = std::iter::once(&signature.output)
        .chain(&signature.labels)
        .map(spec)
        .collect();
    let first = &signature.inputs[0];
    fn text(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).expect("shapes and specs encode")
    }
    serde_json::json!({
        "model": name,
        "kind": model.kind().as_str(),
        "version": version.to_string(),
        "input_shape": text(&first.batch_shape()),
        "output_shape": text(&signature.output.batch_shape()),
        "dtype": first.dtype.as_str(),
        "output_dtype": signature.output.dtype.as_str(),
        "classifier": model.is_classifier().to_string(),
        "inputs": text(&inputs),
        "outputs": text(&outputs),
    })
}
