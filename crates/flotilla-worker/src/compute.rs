//! The batch side of a model: take the next batch whenever the previous one is done, compute
//! it where it costs least (right there if it is microseconds of work, else on the model's
//! compute thread, which fans large batches out over the rayon pool), publish one reply per
//! request.
//!
//! A batch is computed against the [`Live`] it found when it formed: requests are grouped by
//! the version that serves them (current, canary or pinned) and each group runs through that
//! version, so a swap in the middle of a batch changes nothing for it.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use async_nats::{HeaderBlock, HeaderMap, Subject};
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::batch::{self, Batch, Entry};
use crate::live::{Live, Slot, Target, Version};
use crate::worker::Shared;
use flotilla_model::{ComputeError, Computed, DataRef, Label};
use flotilla_proto::headers::name;
use flotilla_proto::{
    error_reply, Encoding, ErrorKind, OutputsRef, PredictReply, PredictRequest, ServiceError,
    ValuesRef, YPred,
};

/// An admitted request waiting for its batch.
pub struct Job {
    pub reply: Subject,
    pub encoding: Encoding,
    pub request: PredictRequest,
    pub target: Target,
    /// The version the request was checked against at admission.
    pub checked: u64,
}

/// A reply's headers: a successful reply's come serialized from its [`Version`]; an error's
/// are built where it is found and name the worker when published.
pub enum Headers {
    Ready(HeaderBlock),
    Error(HeaderMap),
}

/// A reply ready to publish.
pub struct Outgoing {
    pub reply: Subject,
    pub headers: Headers,
    pub payload: Bytes,
    pub code: u16,
    pub error: Option<String>,
    pub received: Instant,
    /// The version that computed it, whose counters it goes to; errors count against the
    /// current version.
    pub version: Option<Arc<Version>>,
}

impl Outgoing {
    pub fn error(
        reply: Subject,
        encoding: Encoding,
        err: &ServiceError,
        received: Instant,
    ) -> Self {
        let (headers, payload) = error_reply(encoding, err);
        Outgoing {
            reply,
            headers: Headers::Error(headers),
            payload,
            code: err.kind.code(),
            error: Some(err.message.clone()),
            received,
            version: None,
        }
    }
}

/// Starts one model's batch loop as a task on `handle`'s runtime, with the model's compute
/// thread beside it, returning a receiver that fires when the loop has answered everything
/// and ended (its queue closed at shutdown).
///
/// Where a batch is computed depends on what it costs. A batch that the model computes in
/// microseconds (at most `inline_compute_rows` rows, and within the model's
/// [`flotilla_model::Model::inline_rows`]: small dense models) is computed right in the loop,
/// on the thread that reads from NATS, like a small request body is decoded there: handing
/// it to another thread costs two thread wake-ups, which for a 10-feature linear model was a
/// third of the worker's CPU per request (BENCHMARKS.md, issue 9). Every other batch goes to
/// the compute thread and the loop waits for it without holding up the runtime. The compute
/// thread blocks when idle, where idle rayon workers spin-yield for a while (on a two-core
/// machine that steals the CPU NATS needs); large batches fan out from it over the rayon pool.
pub fn spawn_batch_loop(
    handle: tokio::runtime::Handle,
    shared: Shared,
    slot: Arc<Slot>,
    batcher: batch::Batcher<Job>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let compute_thread = ComputeThread::spawn(&slot.name)?;
    let (done, ended) = oneshot::channel();
    handle.spawn(async move {
        batch_loop(shared, slot, batcher, compute_thread).await;
        let _ = done.send(());
    });
    Ok(ended)
}

/// A model's compute thread: runs the batches sent to it, one at a time, and ends when its
/// handle is dropped.
struct ComputeThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl ComputeThread {
    fn spawn(model: &str) -> std::io::Result<ComputeThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name(format!("flotilla-batch-{model}"))
            .spawn(move || {
                for job in queue {
                    job();
                }
            })?;
        Ok(ComputeThread { jobs })
    }

    /// Runs `f` on the compute thread and waits for its result; `None` if the thread is gone.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

/// Forms batches whenever the previous one is done, computes each where it is cheapest
/// ([`spawn_batch_loop`]), replies.
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
            entries,
            expired,
            rows,
            ..
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
            let out = Outgoing::error(job.reply, job.encoding, &err, entry.arrived);
            publish(&shared, &slot, out).await;
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
        let inline = rows <= shared.settings.inline_compute_rows.min(live.inline_rows());
        let outcome = if inline {
            guarded(&live, entries, &slot, &shared.pool)
        } else {
            let (pool, model) = (shared.pool.clone(), slot.clone());
            compute_thread
                .run(move || guarded(&live, entries, &model, &pool))
                .await
                .unwrap_or_else(|| Err("the model's compute thread has stopped".to_owned()))
        };
        let replies = match outcome {
            Ok(replies) => replies,
            Err(why) => {
                tracing::error!(model = %slot.name, %why, "batch computation failed");
                let err = ServiceError::internal(format!("computing the batch failed: {why}"));
                callers
                    .into_iter()
                    .map(|(reply, enc, at)| Outgoing::error(reply, enc, &err, at))
                    .collect()
            }
        };
        for out in replies {
            publish(&shared, &slot, out).await;
        }
    }
}

/// [`compute`], with a panic caught and turned into its text.
fn guarded(
    live: &Live,
    entries: Vec<Entry<Job>>,
    slot: &Slot,
    pool: &rayon::ThreadPool,
) -> Result<Vec<Outgoing>, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| compute(live, entries, slot, pool)))
        .map_err(|panic| crate::panic_text(&*panic))
}

/// Runs one batch on the calling thread: each version's share of it in one pass,
/// fanned out over `pool` when large. Encodes every caller's reply.
fn compute(
    live: &Live,
    entries: Vec<Entry<Job>>,
    slot: &Slot,
    pool: &rayon::ThreadPool,
) -> Vec<Outgoing> {
    let start = Instant::now();
    let mut replies = Vec::with_capacity(entries.len());
    let mut groups: BTreeMap<u64, (Arc<Version>, Vec<Entry<Job>>)> = BTreeMap::new();
    for entry in entries {
        // A swap between admission and now can retire a pinned version or change what a
        // request must look like: such requests are refused alone. A request served by the
        // version it was checked against needs no second check.
        let job = &entry.item;
        let resolved = live.resolve(job.target, &slot.name).and_then(|v| {
            if v.number() != job.checked {
                crate::inputs::check(&job.request, &v.served.model, &slot.name)?;
            }
            Ok(v.clone())
        });
        match resolved {
            Ok(version) => groups
                .entry(version.number())
                .or_insert_with(|| (version, Vec::new()))
                .1
                .push(entry),
            Err(err) => replies.push(Outgoing::error(
                entry.item.reply,
                entry.item.encoding,
                &err,
                entry.arrived,
            )),
        }
    }
    let mut rows_total = 0;
    for (version, group) in groups.into_values() {
        rows_total += group.iter().map(|e| e.rows).sum::<usize>();
        match run(&version, &group, pool) {
            Ok(computed) => {
                let mut offset = 0;
                for entry in group {
                    let rows = entry.rows;
                    replies.push(encode_reply(&version, entry, &computed, offset));
                    offset += rows;
                }
            }
            // One request the model cannot compute must not fail the others: each is
            // computed alone, and only those that fail again get the error.
            Err(_) if group.len() > 1 => {
                for entry in group {
                    let alone = run(&version, std::slice::from_ref(&entry), pool);
                    replies.push(match alone {
                        Ok(computed) => encode_reply(&version, entry, &computed, 0),
                        Err(err) => failed(&version, entry, &err),
                    });
                }
            }
            Err(err) => {
                for entry in group {
                    replies.push(failed(&version, entry, &err));
                }
            }
        }
    }
    if rows_total > 0 {
        slot.batch_rows.observe(rows_total as f64);
        slot.compute_duration.observe(start.elapsed().as_secs_f64());
    }
    replies
}

/// The requests' inputs concatenated row-wise and run through `version`'s model.
fn run(
    version: &Version,
    group: &[Entry<Job>],
    pool: &rayon::ThreadPool,
) -> Result<Computed, ComputeError> {
    let model = &version.served.model;
    let rows = group.iter().map(|e| e.rows).sum();
    let requests: Vec<&PredictRequest> = group.iter().map(|e| &e.item.request).collect();
    model.compute_on(pool, crate::inputs::assemble(model, &requests, rows))
}

fn failed(version: &Arc<Version>, entry: Entry<Job>, err: &ComputeError) -> Outgoing {
    let served = &version.served;
    let err = ServiceError::internal(format!(
        "model {:?} version {} could not compute this request: {err}",
        served.name, served.version
    ));
    let mut out = Outgoing::error(entry.item.reply, entry.item.encoding, &err, entry.arrived);
    out.version = Some(version.clone());
    out
}

fn values(data: DataRef<'_>) -> ValuesRef<'_> {
    match data {
        DataRef::F32(v) => ValuesRef::F32(v),
        DataRef::F64(v) => ValuesRef::F64(v),
        DataRef::I64(v) => ValuesRef::I64(v),
        DataRef::String(v) => ValuesRef::Text(v),
    }
}

/// The reply to one request: its rows `offset..offset + entry.rows` of the batch's results.
fn encode_reply(
    version: &Arc<Version>,
    entry: Entry<Job>,
    computed: &Computed,
    offset: usize,
) -> Outgoing {
    let (job, received, rows) = (entry.item, entry.arrived, entry.rows);
    let served = &version.served;
    let outputs = &computed.outputs;
    let block = outputs.rows_slice(offset, offset + rows);
    if let Some(i) = block.first_non_finite() {
        let err = ServiceError::internal(format!(
            "model {:?} version {} produced a non-finite output at row {} (inputs out of the range it was trained on?)",
            served.name,
            served.version,
            i / outputs.row_len().max(1)
        ));
        let mut out = Outgoing::error(job.reply, job.encoding, &err, received);
        out.version = Some(version.clone());
        return out;
    }
    let binary = job.request.reply_form();
    let labels = computed.labels.as_ref().map(|l| &l[offset..offset + rows]);
    let y_pred = job.request.single.then(|| YPred {
        values: values(block),
        row_shape: &outputs.row_shape,
    });
    let extras = computed
        .extras
        .iter()
        .map(|(name, t)| {
            let part = OutputsRef {
                values: values(t.rows_slice(offset, offset + rows)),
                rows,
                row_shape: &t.row_shape,
                binary,
            };
            (name.as_str(), part)
        })
        .collect();
    let body = PredictReply::<Label> {
        outputs: OutputsRef {
            values: values(block),
            rows,
            row_shape: &outputs.row_shape,
            binary,
        },
        labels,
        model: &served.name,
        version: served.version,
        id: job.request.id.as_deref(),
        y_pred,
        extras,
    };
    match job.encoding.encode(&body) {
        Ok(payload) => Outgoing {
            reply: job.reply,
            headers: Headers::Ready(version.reply_headers(job.encoding)),
            payload,
            code: 200,
            error: None,
            received,
            version: Some(version.clone()),
        },
        Err(err) => Outgoing::error(job.reply, job.encoding, &err, received),
    }
}

/// Publishes one reply and accounts for it.
pub async fn publish(shared: &Shared, slot: &Slot, out: Outgoing) {
    match &out.version {
        Some(v) => v.count(out.code),
        None => slot.live.load().current.count(out.code),
    }
    let elapsed = out.received.elapsed();
    slot.request_duration.observe(elapsed.as_secs_f64());
    slot.stats
        .record(elapsed, out.error.as_deref().map(|m| (out.code, m)));
    let headers = match out.headers {
        Headers::Ready(block) => block,
        Headers::Error(mut map) => {
            map.insert(name::WORKER, shared.worker_id.as_str());
            HeaderBlock::new(&map)
        }
    };
    if let Err(e) = shared
        .client
        .publish_with_header_block(out.reply, headers, out.payload)
        .await
    {
        tracing::warn!(model = %slot.name, error = %e, "publishing a reply failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Tokens;
    use crate::live::test_version;
    use crate::metrics::Metrics;

    fn entry(x: &[f64], checked: u64) -> Entry<Job> {
        let body = serde_json::json!({ "x": x }).to_string();
        Entry {
            rows: 1,
            tokens: Tokens::default(),
            arrived: Instant::now(),
            deadline: None,
            item: Job {
                reply: "reply".into(),
                encoding: Encoding::Json,
                request: PredictRequest::decode(Encoding::Json, body.as_bytes()).unwrap(),
                target: Target::Current,
                checked,
            },
        }
    }

    /// A request checked at admission against version 1 and computed after a swap to
    /// version 2, which takes other inputs, is checked again and refused alone; the request
    /// beside it, checked against version 2, is computed.
    #[test]
    fn a_swap_after_admission_rechecks_requests_checked_against_another_version() {
        let metrics = Metrics::new();
        let current = test_version(2, 3);
        let slot = Slot::new("m", Live::single(current), &metrics);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let entries = vec![entry(&[1.0, 2.0], 1), entry(&[1.0, 2.0, 3.0], 2)];
        let replies = compute(&slot.live.load(), entries, &slot, &pool);
        let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
        assert_eq!(codes, [400, 200]);
        let refused = replies[0].error.as_deref().unwrap();
        assert_eq!(refused, "x has 2 features per row; model \"m\" expects 3");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&replies[1].payload).unwrap()["y_pred"],
            serde_json::json!(6.0)
        );
    }
}
