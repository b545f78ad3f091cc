//! The worker: subscribe, admit, batch, compute on rayon, reply; drain on shutdown.
//!
//! Per model there are two tasks. The *read loop* owns the queue-group subscription and does
//! only cheap, bounded work per message: decode (small bodies; large ones go to the compute
//! pool), check, and either admit the request to the model's [`batch::Queue`] or answer an
//! error at once. It never waits for compute, so the subscription buffer cannot fill up behind
//! a slow batch. The *batch loop* takes the next batch whenever the previous one is done,
//! hands it to the model's compute thread (which fans large batches out over the rayon pool),
//! and publishes the replies that thread encoded.
//!
//! Every request that reaches a read loop gets exactly one reply. Shutdown is a
//! [`CancellationToken`]: read loops drain their subscriptions and exit, which closes the
//! queues; batch loops finish what was admitted and exit; then the connection is flushed.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::StreamExt;
use ndarray::Array2;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Batch, Entry, Limits};
use crate::config::WorkerConfig;
use crate::discovery::{self, Endpoint, EndpointStats};
use crate::metrics::{Health, Metrics};
use crate::model::Model;
use crate::protocol::{
    self, error_reply, predict_subject, reply_headers, Encoding, ErrorKind, Label, MatrixRef,
    PredictReply, PredictRequest, RequestOptions, ServiceError, YPred,
};

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
        "no models to serve; pass --model NAME=PATH or list them under [models] in the config"
    )]
    NoModels,
    #[error("model name: {0}")]
    ModelName(String),
    #[error("shutdown did not finish within {0:?}; some accepted requests may be unanswered")]
    ShutdownTimeout(Duration),
}

/// A model version ready to serve.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub model: Arc<Model>,
}

/// The codes a reply can carry, in a fixed order so counters can be resolved once.
const CODES: [u16; 7] = [200, 400, 409, 413, 500, 503, 504];

/// One version's metric handles, resolved once so the request path takes no registry lock.
struct VersionMetrics {
    replies: [IntCounter; CODES.len()],
}

impl VersionMetrics {
    fn new(metrics: &Metrics, model: &str, version: u64) -> Self {
        let version = version.to_string();
        VersionMetrics {
            replies: CODES.map(|code| {
                metrics
                    .requests
                    .with_label_values(&[model, &version, &code.to_string()])
            }),
        }
    }

    fn count(&self, code: u16) {
        let i = CODES.iter().position(|&c| c == code).unwrap_or(4);
        self.replies[i].inc();
    }
}

/// What is being served for a model right now. Swapped whole, atomically.
struct Live {
    served: ServedModel,
    metrics: VersionMetrics,
}

/// Everything the tasks of one model share.
struct Slot {
    name: String,
    live: ArcSwap<Live>,
    stats: Arc<EndpointStats>,
    request_duration: Histogram,
    queue_duration: Histogram,
    compute_duration: Histogram,
    batch_rows: Histogram,
    queue_rows: IntGauge,
}

impl Slot {
    fn new(served: ServedModel, metrics: &Metrics) -> Slot {
        let name = served.name.clone();
        let h = |v: &prometheus::HistogramVec| v.with_label_values(&[&name]);
        metrics
            .model_version
            .with_label_values(&[&name])
            .set(served.version as i64);
        Slot {
            request_duration: h(&metrics.request_duration),
            queue_duration: h(&metrics.queue_duration),
            compute_duration: h(&metrics.compute_duration),
            batch_rows: h(&metrics.batch_rows),
            queue_rows: metrics.queue_rows.with_label_values(&[&name]),
            stats: Arc::default(),
            live: ArcSwap::from_pointee(Live {
                metrics: VersionMetrics::new(metrics, &name, served.version),
                served,
            }),
            name,
        }
    }
}

/// An admitted request waiting for its batch.
struct Job {
    reply: Subject,
    encoding: Encoding,
    request: PredictRequest,
    pinned: Option<u64>,
}

/// A reply ready to publish.
struct Outgoing {
    reply: Subject,
    headers: HeaderMap,
    payload: Bytes,
    code: u16,
    error: Option<String>,
    received: Instant,
}

impl Outgoing {
    fn error(reply: Subject, encoding: Encoding, err: &ServiceError, received: Instant) -> Self {
        let (headers, payload) = error_reply(encoding, err);
        Outgoing {
            reply,
            headers,
            payload,
            code: err.kind.code(),
            error: Some(err.message.clone()),
            received,
        }
    }
}

/// Settings the read and batch loops consult per request.
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_request_rows: usize,
    inline_decode_bytes: usize,
}

/// Context shared by all tasks of the worker.
#[derive(Clone)]
struct Shared {
    client: async_nats::Client,
    pool: Arc<rayon::ThreadPool>,
    settings: Settings,
    /// Bounds the large bodies being decoded on the pool at once.
    decode_permits: Arc<Semaphore>,
}

/// Serves `models` until `shutdown` fires, then answers everything accepted and returns.
pub async fn run(
    client: async_nats::Client,
    config: &WorkerConfig,
    models: Vec<ServedModel>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    if models.is_empty() {
        return Err(WorkerError::NoModels);
    }
    let threads = match config.compute_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("flotilla-compute-{i}"))
        .build()?;
    let shared = Shared {
        client: client.clone(),
        pool: Arc::new(pool),
        settings: Settings {
            max_request_rows: config.max_request_rows,
            inline_decode_bytes: config.inline_decode_bytes,
        },
        decode_permits: Arc::new(Semaphore::new(2 * threads)),
    };
    let limits = Limits {
        max_batch_rows: config.max_batch_rows,
        max_queue_rows: config.max_queue_rows,
        max_batch_delay: config.max_batch_delay(),
    };
    health.set_client(client.clone());

    let mut read_loops = JoinSet::new();
    let mut batch_loops = JoinSet::new();
    let mut endpoints = Vec::new();
    let mut seen = HashMap::new();
    for served in models {
        protocol::validate_model_name(&served.name).map_err(WorkerError::ModelName)?;
        if seen.insert(served.name.clone(), ()).is_some() {
            return Err(WorkerError::ModelName(format!(
                "model {:?} is listed twice",
                served.name
            )));
        }
        let subject = predict_subject(&config.subject_prefix, &served.name);
        tracing::info!(
            model = %served.name,
            version = served.version,
            inputs = served.model.inputs(),
            outputs = served.model.outputs(),
            %subject,
            "serving model"
        );
        let slot = Arc::new(Slot::new(served, &metrics));
        let subscription = client
            .queue_subscribe(subject.clone(), config.queue_group.clone())
            .await
            .map_err(|source| WorkerError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
        let (queue, batcher) = batch::channel(limits);
        endpoints.push(endpoint(&slot, &subject, &config.queue_group, &queue));
        read_loops.spawn(read_loop(
            shared.clone(),
            slot.clone(),
            subscription,
            queue,
            shutdown.clone(),
        ));
        let compute_thread = ComputeThread::spawn(&slot.name).map_err(WorkerError::Thread)?;
        batch_loops.spawn(batch_loop(shared.clone(), slot, batcher, compute_thread));
    }
    let discovery = tokio::spawn(discovery::serve(
        client.clone(),
        endpoints,
        shutdown.clone(),
    ));
    // Make sure the server has every subscription before calling ourselves ready.
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flushing subscriptions failed");
    }
    health.set_loaded(true);
    tracing::info!(queue_group = %config.queue_group, "worker ready");

    shutdown.cancelled().await;
    health.set_draining();
    tracing::info!("shutdown: no longer taking requests; answering those already accepted");
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
    match discovery.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "services API registration failed"),
        Err(e) => tracing::warn!(error = %e, "services API task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("shutdown: every accepted request answered");
    Ok(())
}

fn endpoint(
    slot: &Arc<Slot>,
    subject: &str,
    queue_group: &str,
    queue: &batch::Queue<Job>,
) -> Endpoint {
    let (data_slot, data_queue) = (slot.clone(), queue.clone());
    Endpoint {
        name: slot.name.clone(),
        subject: subject.to_owned(),
        queue_group: queue_group.to_owned(),
        stats: slot.stats.clone(),
        data: Arc::new(move || {
            let live = data_slot.live.load();
            serde_json::json!({
                "version": live.served.version,
                "inputs": live.served.model.inputs(),
                "outputs": live.served.model.outputs(),
                "queue_rows": data_queue.queued_rows(),
                "max_queue_rows": data_queue.max_queue_rows(),
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
            if let Some(out) = admit(&shared.settings, &slot, &queue, message, reply, received) {
                publish(&shared.client, &slot, out).await;
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
                publish(
                    &shared.client,
                    &slot,
                    Outgoing::error(reply, encoding, &err, received),
                )
                .await;
                continue;
            }
        };
        let (tx, rx) = oneshot::channel();
        let (settings, job_slot, job_queue) = (shared.settings, slot.clone(), queue.clone());
        shared.pool.spawn(move || {
            let _permit = permit;
            let _ = tx.send(admit(
                &settings, &job_slot, &job_queue, message, reply, received,
            ));
        });
        let (client, slot) = (shared.client.clone(), slot.clone());
        tokio::spawn(async move {
            if let Ok(Some(out)) = rx.await {
                publish(&client, &slot, out).await;
            }
        });
    }
}

/// Decodes and checks a request, then queues it. Returns the reply to send at once when the
/// request is refused.
fn admit(
    settings: &Settings,
    slot: &Slot,
    queue: &batch::Queue<Job>,
    message: async_nats::Message,
    reply: Subject,
    received: Instant,
) -> Option<Outgoing> {
    let refused = enqueue(settings, slot, queue, &message, &reply, received).err()?;
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
) -> Result<(), (Encoding, ServiceError)> {
    let headers = message.headers.as_ref();
    let encoding =
        Encoding::detect(headers, &message.payload).map_err(|err| (Encoding::Json, err))?;
    let (request, options) = check(settings, slot, headers, encoding, &message.payload)
        .map_err(|err| (protocol::error_encoding(encoding, &message.payload), err))?;
    let entry = Entry {
        rows: request.inputs.rows,
        arrived: received,
        deadline: options
            .timeout_ms
            .map(|ms| received + Duration::from_millis(ms)),
        item: Job {
            reply: reply.clone(),
            encoding,
            request,
            pinned: options.version,
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
) -> Result<(PredictRequest, RequestOptions), ServiceError> {
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
    let served = &live.served;
    if let Some(v) = options.version {
        if v != served.version {
            return Err(ServiceError::new(
                ErrorKind::VersionUnavailable,
                format!(
                    "model {:?} version {v} is not held by this worker; it serves version {}",
                    slot.name, served.version
                ),
            ));
        }
    }
    check_features(&request, &served.model, &slot.name)?;
    if options.timeout_ms == Some(0) {
        return Err(ServiceError::new(
            ErrorKind::DeadlineExceeded,
            "Flotilla-Timeout-Ms is 0: no budget left to compute in",
        ));
    }
    Ok((request, options))
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

/// A dedicated OS thread that runs one model's batches, one at a time. It blocks when idle,
/// where idle rayon workers spin-yield for a while (on a two-core machine that measurably
/// steals the CPU that NATS needs); large batches still fan out over the rayon pool.
struct ComputeThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl ComputeThread {
    fn spawn(model: &str) -> std::io::Result<ComputeThread> {
        let (jobs, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name(format!("flotilla-batch-{model}"))
            .spawn(move || {
                // Ends when the batch loop drops its sender.
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(ComputeThread { jobs })
    }

    fn run(&self, job: Box<dyn FnOnce() + Send>) {
        self.jobs
            .send(job)
            .expect("the compute thread lives as long as this handle");
    }
}

/// Forms batches whenever the compute is free, computes them off the runtime, replies.
async fn batch_loop(
    shared: Shared,
    slot: Arc<Slot>,
    mut batcher: batch::Batcher<Job>,
    compute_thread: ComputeThread,
) {
    while let Some(batch) = batcher.next_batch().await {
        let formed = Instant::now();
        slot.queue_rows.set(batcher.queued_rows() as i64);
        let Batch {
            entries, expired, ..
        } = batch;
        for entry in expired {
            let waited = formed.duration_since(entry.arrived);
            let err = ServiceError::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "the Flotilla-Timeout-Ms budget ran out after {} ms waiting in the queue; not computed",
                    waited.as_millis()
                ),
            );
            let job = entry.item;
            publish(
                &shared.client,
                &slot,
                Outgoing::error(job.reply, job.encoding, &err, entry.arrived),
            )
            .await;
        }
        if entries.is_empty() {
            continue;
        }
        for entry in &entries {
            slot.queue_duration
                .observe(formed.duration_since(entry.arrived).as_secs_f64());
        }
        // Kept aside so that a panicking batch can still answer every caller.
        let callers: Vec<_> = entries
            .iter()
            .map(|e| (e.item.reply.clone(), e.item.encoding, e.arrived))
            .collect();
        let live = slot.live.load_full();
        let (tx, rx) = oneshot::channel();
        let (compute_slot, pool) = (slot.clone(), shared.pool.clone());
        compute_thread.run(Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                compute(&live.served, entries, &compute_slot, &pool)
            }));
            let _ = tx.send(outcome);
        }));
        let replies = match rx.await {
            Ok(Ok(replies)) => replies,
            Ok(Err(panic)) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(model = %slot.name, %why, "batch computation panicked");
                let err = ServiceError::internal(format!("computing the batch failed: {why}"));
                callers
                    .into_iter()
                    .map(|(reply, enc, at)| Outgoing::error(reply, enc, &err, at))
                    .collect()
            }
            Err(_) => unreachable!("the compute thread runs every job, which always sends"),
        };
        for out in replies {
            publish(&shared.client, &slot, out).await;
        }
    }
}

/// Runs one batch on the calling (compute) thread, fanning large ones out over `pool`, and
/// encodes every caller's reply.
fn compute(
    served: &ServedModel,
    entries: Vec<Entry<Job>>,
    slot: &Slot,
    pool: &rayon::ThreadPool,
) -> Vec<Outgoing> {
    let start = Instant::now();
    let model = &served.model;
    let mut replies = Vec::with_capacity(entries.len());
    // A version swap between admission and now can change what a request must look like:
    // such requests are refused alone and never reach the batch.
    let mut batch = Vec::with_capacity(entries.len());
    for entry in entries {
        let job = &entry.item;
        let refused = match job.pinned {
            Some(v) if v != served.version => Some(ServiceError::new(
                ErrorKind::VersionUnavailable,
                format!(
                    "model {:?} version {v} is no longer held by this worker; it serves version {}",
                    served.name, served.version
                ),
            )),
            _ => check_features(&job.request, model, &served.name).err(),
        };
        match refused {
            Some(err) => replies.push(Outgoing::error(
                job.reply.clone(),
                job.encoding,
                &err,
                entry.arrived,
            )),
            None => batch.push(entry),
        }
    }
    let rows: usize = batch.iter().map(|e| e.rows).sum();
    if rows == 0 {
        return replies;
    }
    let mut values = Vec::with_capacity(rows * model.inputs());
    for entry in &batch {
        values.extend_from_slice(&entry.item.request.inputs.values);
    }
    let x = Array2::from_shape_vec((rows, model.inputs()), values)
        .expect("every request was checked against the model's inputs");
    let y = model.forward_on(pool, x.view());
    let y = y.as_standard_layout();
    let outputs = model.outputs();
    let all = y.as_slice().expect("standard layout");
    let mut offset = 0;
    for entry in batch {
        let job = entry.item;
        let block = &all[offset * outputs..(offset + entry.rows) * outputs];
        offset += entry.rows;
        replies.push(encode_reply(served, job, block, entry.arrived));
    }
    slot.batch_rows.observe(rows as f64);
    slot.compute_duration.observe(start.elapsed().as_secs_f64());
    replies
}

fn encode_reply(served: &ServedModel, job: Job, block: &[f64], received: Instant) -> Outgoing {
    let model = &served.model;
    let outputs = model.outputs();
    if let Some(i) = block.iter().position(|v| !v.is_finite()) {
        let err = ServiceError::internal(format!(
            "model {:?} version {} produced a non-finite output at row {} (inputs out of the range it was trained on?)",
            served.name,
            served.version,
            i / outputs
        ));
        return Outgoing::error(job.reply, job.encoding, &err, received);
    }
    let labels: Option<Vec<Label>> = model.is_classifier().then(|| {
        block
            .chunks(outputs)
            .filter_map(|row| model.label(row))
            .collect()
    });
    let y_pred = job.request.single.then(|| {
        if outputs == 1 {
            YPred::Scalar(block[0])
        } else {
            YPred::Row(&block[..outputs])
        }
    });
    let body = PredictReply {
        outputs: MatrixRef {
            values: block,
            cols: outputs,
        },
        labels: labels.as_deref(),
        model: &served.name,
        version: served.version,
        id: job.request.id.as_deref(),
        y_pred,
    };
    match job.encoding.encode(&body) {
        Ok(payload) => Outgoing {
            reply: job.reply,
            headers: reply_headers(job.encoding, served.version),
            payload,
            code: 200,
            error: None,
            received,
        },
        Err(err) => Outgoing::error(job.reply, job.encoding, &err, received),
    }
}

/// Publishes one reply and accounts for it.
async fn publish(client: &async_nats::Client, slot: &Slot, out: Outgoing) {
    let live = slot.live.load();
    live.metrics.count(out.code);
    let elapsed = out.received.elapsed();
    slot.request_duration.observe(elapsed.as_secs_f64());
    slot.stats
        .record(elapsed, out.error.as_deref().map(|m| (out.code, m)));
    if let Err(e) = client
        .publish_with_headers(out.reply, out.headers, out.payload)
        .await
    {
        tracing::warn!(model = %slot.name, error = %e, "publishing a reply failed");
    }
}
