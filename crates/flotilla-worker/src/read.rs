//! The read side of a model: one task owns the queue-group subscription and does only cheap,
//! bounded work per message (decode, check, admit to the batch queue, or answer an error at
//! once). It never waits for compute, so the subscription buffer cannot fill up behind a slow
//! batch.

use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};
use flotilla_model::Model;
use flotilla_proto::headers::malformed_headers;
use flotilla_proto::{
    error_encoding, Encoding, ErrorKind, PredictRequest, RequestOptions, ServiceError, Values,
};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Entry, Tokens, Unit};
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
                    // Unsubscribe, but answer everything the server routed to us before it
                    // processed the UNSUB: the subscription ends once a PING written after the
                    // UNSUB has its PONG (flotilla's async-nats patch), so nothing in flight is
                    // lost and an idle connection ends it as promptly as a busy one.
                    if let Err(e) = subscription.drain().await {
                        tracing::warn!(model = %slot.name, error = %e, "unsubscribing failed");
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
        let inline = shared
            .settings
            .inline_decode_bytes
            .min(slot.live.load().current.served.model.inline_admit_bytes());
        if message.payload.len() <= inline {
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
        // A large body (or, for a text model, one with more than a few sentences to tokenize)
        // would hold up the read loop: admit it on the compute pool. What waits
        // to be decoded is bounded in bytes (like the queue is in rows), so a burst of large
        // requests queues up to that bound and only past it is refused.
        let permit = match shared.decoding.reserve(message.payload.len()) {
            Ok(permit) => permit,
            Err(waiting) => {
                let encoding = Encoding::detect(message.headers.as_ref(), &message.payload)
                    .unwrap_or(Encoding::Json);
                let err = ServiceError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "{waiting} bytes of requests are already waiting to be decoded (max_decode_bytes {}); retry, another worker may take it",
                        shared.decoding.limit()
                    ),
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
    if let Some(err) = malformed_headers(message) {
        return Err((Encoding::Json, err));
    }
    let headers = message.headers.as_ref();
    let encoding =
        Encoding::detect(headers, &message.payload).map_err(|err| (Encoding::Json, err))?;
    let (request, options, target, checked, tokens) =
        check(settings, slot, headers, encoding, &message.payload, draw)
            .map_err(|err| (error_encoding(encoding, &message.payload), err))?;
    if tokens.total > queue.max_queue_tokens() {
        return Err((
            encoding,
            ServiceError::new(
                ErrorKind::TooLarge,
                format!(
                    "the request's texts are {} tokens, more than model {:?} may ever queue (max_queue_tokens {}); send fewer texts per request",
                    tokens.total,
                    slot.name,
                    queue.max_queue_tokens()
                ),
            ),
        ));
    }
    let entry = Entry {
        rows: request.rows(),
        tokens,
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
            checked,
        },
    };
    match queue.try_push(entry) {
        Ok(()) => {
            slot.queue_rows.set(queue.queued_rows() as i64);
            Ok(())
        }
        Err(full) => {
            let unit = match full.unit {
                Unit::Rows => "rows",
                Unit::Tokens => "tokens",
            };
            Err((
                encoding,
                ServiceError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "model {:?} is overloaded: {} {unit} already queued (max_queue_{unit} {}); retry, another worker may take it",
                        slot.name, full.queued, full.max
                    ),
                ),
            ))
        }
    }
}

/// A request that may be queued, and the version number it was checked against.
type Checked = (PredictRequest, RequestOptions, live::Target, u64, Tokens);

fn check(
    settings: &Settings,
    slot: &Slot,
    headers: Option<&HeaderMap>,
    encoding: Encoding,
    payload: &[u8],
    draw: f64,
) -> Result<Checked, ServiceError> {
    let options = RequestOptions::from_headers(headers)?;
    let request = PredictRequest::decode_limited(encoding, payload, settings.max_request_rows)?;
    let live = slot.live.load();
    let target = live.draw(options.version, draw);
    let version = live.resolve(target, &slot.name)?;
    crate::inputs::check(&request, &version.served.model, &slot.name)?;
    let tokens = count_tokens(&version.served.model, &request, &slot.name)?;
    if options.timeout_ms == Some(0) {
        return Err(ServiceError::new(
            ErrorKind::DeadlineExceeded,
            "Flotilla-Timeout-Ms is 0: no budget left to compute in",
        ));
    }
    Ok((request, options, target, version.number(), tokens))
}

/// What a request to a text model costs in tokens (nothing for other models). Tokenizing is
/// work in proportion to the body's bytes, so it happens wherever the body was decoded: on
/// the read loop only for small bodies.
fn count_tokens(
    model: &Model,
    request: &PredictRequest,
    name: &str,
) -> Result<Tokens, ServiceError> {
    // Unnamed or by name (`{"inputs": {"input": [...]}}`): both forms are counted.
    let texts = request.inputs.tensors().find_map(|(_, t)| match &t.values {
        Values::Text(texts) => Some(texts),
        _ => None,
    });
    let Some(texts) = texts else {
        return Ok(Tokens::default());
    };
    let Some(counts) = model.token_counts(texts) else {
        return Ok(Tokens::default());
    };
    let counts = counts.map_err(|e| {
        ServiceError::new(
            ErrorKind::BadRequest,
            format!("model {name:?} cannot tokenize the request's text: {e}"),
        )
    })?;
    Ok(Tokens {
        total: counts.iter().sum(),
        longest: counts.iter().copied().max().unwrap_or(0),
    })
}

/// Bytes of request bodies waiting for (or in) decoding on the compute pool, bounded.
#[derive(Debug)]
pub(crate) struct DecodeBudget {
    waiting: std::sync::atomic::AtomicUsize,
    limit: usize,
}

/// Bytes reserved in a [`DecodeBudget`], given back when dropped.
pub(crate) struct DecodePermit {
    budget: Arc<DecodeBudget>,
    bytes: usize,
}

impl DecodeBudget {
    pub(crate) fn new(limit: usize) -> Arc<DecodeBudget> {
        Arc::new(DecodeBudget {
            waiting: Default::default(),
            limit,
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Reserves `bytes`, or says how many are already waiting. One request is always let
    /// through when nothing waits, whatever its size (NATS bounds a body anyway).
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> Result<DecodePermit, usize> {
        use std::sync::atomic::Ordering;
        let before = self.waiting.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > self.limit {
            self.waiting.fetch_sub(bytes, Ordering::AcqRel);
            return Err(before);
        }
        Ok(DecodePermit {
            budget: self.clone(),
            bytes,
        })
    }
}

impl Drop for DecodePermit {
    fn drop(&mut self) {
        self.budget
            .waiting
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decode_budget_counts_bytes() {
        let budget = DecodeBudget::new(100);
        let a = budget.reserve(60).unwrap();
        let b = budget.reserve(40).unwrap();
        assert_eq!(budget.reserve(1).err(), Some(100));
        drop(a);
        let c = budget.reserve(50).unwrap();
        drop((b, c));
        // Alone, even an oversized body goes through.
        assert!(budget.reserve(1_000).is_ok());
    }
}
