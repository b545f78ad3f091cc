//! The read side of a model: one task owns the queue-group subscription and does only cheap,
//! bounded work per message (decode, check, admit to the batch queue, or answer an error at
//! once). It never waits for compute, so the subscription buffer cannot fill up behind a slow
//! batch.

use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};
use flotilla_proto::{
    error_encoding, Encoding, ErrorKind, PredictRequest, RequestOptions, ServiceError,
};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Entry};
use crate::compute::{self, Job, Outgoing};
use crate::live::{self, Draws, Slot};
use crate::worker::{Settings, Shared};
use std::sync::Arc;

/// Reads one model's subscription: admit or refuse each request, never wait for compute.
pub(crate) async fn read_loop(
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
            .map_err(|err| (error_encoding(encoding, &message.payload), err))?;
    let entry = Entry {
        rows: request.rows(),
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
    let request = PredictRequest::decode_limited(encoding, payload, settings.max_request_rows)?;
    let live = slot.live.load();
    let target = live.draw(options.version, draw);
    let version = live.resolve(target, &slot.name)?;
    crate::inputs::check(&request, &version.served.model, &slot.name)?;
    if options.timeout_ms == Some(0) {
        return Err(ServiceError::new(
            ErrorKind::DeadlineExceeded,
            "Flotilla-Timeout-Ms is 0: no budget left to compute in",
        ));
    }
    Ok((request, options, target))
}
