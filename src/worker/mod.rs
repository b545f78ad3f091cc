//! The worker: subscribe, admit, batch, compute, reply; follow the registry; drain on shutdown.
//!
//! Per model there are two tasks. The *read loop* owns the queue-group subscription and does
//! only cheap, bounded work per message: decode (small bodies; large ones go to the compute
//! pool), check, and either admit the request to the model's [`batch::Queue`] or answer an
//! error at once. It never waits for compute, so the subscription buffer cannot fill up behind
//! a slow batch. The *batch loop* ([`compute`]) takes the next batch whenever the previous one
//! is done and has the model's compute thread run it. What a model serves is a [`Live`] value
//! swapped atomically; in registry mode [`follow`] builds new ones as manifests change.
//!
//! Every request that reaches a read loop gets exactly one reply. Shutdown is a
//! [`CancellationToken`]: read loops drain their subscriptions and exit, which closes the
//! queues; batch loops finish what was admitted and exit; then the connection is flushed.

mod compute;
mod follow;
mod live;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_nats::{HeaderMap, Subject};
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Entry, Limits};
use crate::config::WorkerConfig;
use crate::discovery::{self, Endpoint};
use crate::metrics::{Health, Metrics};
use crate::model::Model;
use crate::protocol::{
    self, predict_subject, Encoding, ErrorKind, PredictRequest, RequestOptions, ServiceError,
};
use crate::registry::{Registry, RegistryError};
use compute::{Job, Outgoing};
pub use live::ServedModel;
use live::{Draws, Live, Slot, Version};

/// Why a worker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
    #[error("starting a compute thread: {0}")]
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
            protocol::validate_model_name(n)?;
        }
        Ok(Selection::Named(names))
    }

    fn wants(&self, model: &str) -> bool {
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
struct Settings {
    max_request_rows: usize,
    inline_decode_bytes: usize,
}

/// Context shared by all tasks of the worker.
#[derive(Clone)]
pub(crate) struct Shared {
    client: async_nats::Client,
    pool: Arc<rayon::ThreadPool>,
    settings: Settings,
    /// Bounds the large bodies being decoded on the pool at once.
    decode_permits: Arc<Semaphore>,
    /// This worker's id: the services API instance id and the `Flotilla-Worker` reply header.
    worker_id: Arc<String>,
    metrics: Metrics,
}

/// The models a worker serves, growing as the registry gains models (with `--models '*'`).
struct Fleet {
    shared: Shared,
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

impl Fleet {
    /// Subscribes and starts serving `live` as model `name`.
    async fn add(&mut self, name: &str, live: Live) -> Result<Arc<Slot>, WorkerError> {
        protocol::validate_model_name(name).map_err(WorkerError::ModelName)?;
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
        let thread = compute::ComputeThread::spawn(name).map_err(WorkerError::Thread)?;
        self.batch_loops.spawn(compute::batch_loop(
            self.shared.clone(),
            slot.clone(),
            batcher,
            thread,
        ));
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
        },
        decode_permits: Arc::new(Semaphore::new(2 * threads)),
        worker_id: worker_id.clone(),
        metrics: metrics.clone(),
    };
    health.set_client(client.clone());
    let mut fleet = Fleet {
        shared,
        prefix: config.subject_prefix.clone(),
        queue_group: config.queue_group.clone(),
        limits: Limits {
            max_batch_rows: config.max_batch_rows,
            max_queue_rows: config.max_queue_rows,
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
                let version = Arc::new(Version::new(served, &metrics));
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
    let Fleet {
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
    let (data_slot, depth) = (slot.clone(), queue.depth());
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
            })
        }),
    }
}

/// Reads one model's subscription: admit or refuse each request, never wait for compute.
async fn read_loop(
    shared: Shared,
    slot: Arc<Slot>,
    mut subscription: async_nats::Subscriber,
    queue: batch::Queue<Job>,
    shutdown: CancellationToken,
) {
    let mut draining = false;
    let mut draws = Draws::new();
    loop {
        let message = if draining {
            subscription.next().await
        } else {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Unsubscribe but keep reading what the server already sent us. The
                    // flush matters on an idle connection: async-nats only completes a drain
                    // when its connection task next wakes, and the PONG wakes it.
                    if let Err(e) = subscription.drain().await {
                        tracing::warn!(model = %slot.name, error = %e, "unsubscribing failed");
                    }
                    if let Err(e) = shared.client.flush().await {
                        tracing::warn!(model = %slot.name, error = %e, "flushing the unsubscribe failed");
                    }
                    draining = true;
                    tracing::info!(model = %slot.name, "shutdown: unsubscribed");
                    continue;
                }
                m = subscription.next() => m,
            }
        };
        let Some(message) = message else { break };
        let received = Instant::now();
        let Some(reply) = message.reply.clone() else {
            tracing::debug!(model = %slot.name, "ignoring a message without a reply subject");
            continue;
        };
        if message.payload.len() <= shared.settings.inline_decode_bytes {
            let draw = draws.next();
            if let Some(out) = admit(
                &shared.settings,
                &slot,
                &queue,
                message,
                reply,
                received,
                draw,
            ) {
                compute::publish(&shared, &slot, out).await;
            }
            continue;
        }
        // A large body would hold up the read loop: decode it on the compute pool, within
        // a bound, and refuse at once beyond it.
        let permit = match shared.decode_permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let encoding = Encoding::detect(message.headers.as_ref(), &message.payload)
                    .unwrap_or(Encoding::Json);
                let err = ServiceError::new(
                    ErrorKind::Overloaded,
                    "too many large requests being decoded; retry shortly",
                );
                let out = Outgoing::error(reply, encoding, &err, received);
                compute::publish(&shared, &slot, out).await;
                continue;
            }
        };
        let (tx, rx) = oneshot::channel();
        let (settings, job_slot, job_queue) = (shared.settings, slot.clone(), queue.clone());
        let draw = draws.next();
        shared.pool.spawn(move || {
            let _permit = permit;
            let refused = admit(
                &settings, &job_slot, &job_queue, message, reply, received, draw,
            );
            let _ = tx.send(refused);
        });
        let (shared, slot) = (shared.clone(), slot.clone());
        tokio::spawn(async move {
            if let Ok(Some(out)) = rx.await {
                compute::publish(&shared, &slot, out).await;
            }
        });
    }
}

/// Decodes and checks a request, then queues it. `draw` (uniform in [0, 1)) decides whether
/// an unpinned request goes to the canary. Returns the reply to send at once when the
/// request is refused.
fn admit(
    settings: &Settings,
    slot: &Slot,
    queue: &batch::Queue<Job>,
    message: async_nats::Message,
    reply: Subject,
    received: Instant,
    draw: f64,
) -> Option<Outgoing> {
    let refused = enqueue(settings, slot, queue, &message, &reply, received, draw).err()?;
    let (encoding, err) = refused;
    Some(Outgoing::error(reply, encoding, &err, received))
}

/// Queues the request or says why not, and in which encoding to say it.
fn enqueue(
    settings: &Settings,
    slot: &Slot,
    queue: &batch::Queue<Job>,
    message: &async_nats::Message,
    reply: &Subject,
    received: Instant,
    draw: f64,
) -> Result<(), (Encoding, ServiceError)> {
    let headers = message.headers.as_ref();
    let encoding =
        Encoding::detect(headers, &message.payload).map_err(|err| (Encoding::Json, err))?;
    let (request, options, target) =
        check(settings, slot, headers, encoding, &message.payload, draw)
            .map_err(|err| (protocol::error_encoding(encoding, &message.payload), err))?;
    let entry = Entry {
        rows: request.inputs.rows,
        arrived: received,
        deadline: options
            .timeout_ms
            // A budget past what Instant can represent is no deadline at all, not a panic.
            .and_then(|ms| received.checked_add(Duration::from_millis(ms))),
        item: Job {
            reply: reply.clone(),
            encoding,
            request,
            target,
        },
    };
    match queue.try_push(entry) {
        Ok(()) => {
            slot.queue_rows.set(queue.queued_rows() as i64);
            Ok(())
        }
        Err(full) => Err((
            encoding,
            ServiceError::new(
                ErrorKind::Overloaded,
                format!(
                    "model {:?} is overloaded: {} rows already queued (max_queue_rows {}); retry, another worker may take it",
                    slot.name,
                    full.queued_rows,
                    queue.max_queue_rows()
                ),
            ),
        )),
    }
}

fn check(
    settings: &Settings,
    slot: &Slot,
    headers: Option<&HeaderMap>,
    encoding: Encoding,
    payload: &[u8],
    draw: f64,
) -> Result<(PredictRequest, RequestOptions, live::Target), ServiceError> {
    let options = RequestOptions::from_headers(headers)?;
    let request = PredictRequest::decode(encoding, payload)?;
    let rows = request.inputs.rows;
    if rows > settings.max_request_rows {
        return Err(ServiceError::new(
            ErrorKind::TooLarge,
            format!(
                "request has {rows} rows; this worker accepts at most {} per request (split it)",
                settings.max_request_rows
            ),
        ));
    }
    let live = slot.live.load();
    let target = live.draw(options.version, draw);
    let version = live.resolve(target, &slot.name)?;
    check_features(&request, &version.served.model, &slot.name)?;
    if options.timeout_ms == Some(0) {
        return Err(ServiceError::new(
            ErrorKind::DeadlineExceeded,
            "Flotilla-Timeout-Ms is 0: no budget left to compute in",
        ));
    }
    Ok((request, options, target))
}

fn check_features(request: &PredictRequest, model: &Model, name: &str) -> Result<(), ServiceError> {
    let features = request.inputs.features;
    if features != model.inputs() {
        let field = if request.single { "x" } else { "inputs" };
        return Err(ServiceError::bad_request(format!(
            "{field} has {features} features per row; model {name:?} expects {}",
            model.inputs()
        )));
    }
    Ok(())
}
