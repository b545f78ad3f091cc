//! Dynamic batching: a bounded queue handle for producers and the loop that forms batches.
//!
//! Producers (the NATS read loop) call [`Queue::try_push`], which either admits a request at
//! once or refuses it at once: the bound is counted in rows (and, for text models, tokens)
//! with atomics, so admission never waits and never takes a lock. The consumer, [`Batcher::next_batch`], is called by the one
//! task that owns a model's compute whenever that compute is free; while a batch computes,
//! newcomers accumulate and form the next one. What happens to a batch is not this module's
//! business.

mod state;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use state::{Batch, Bound, Entry, State, Tokens};

/// Batch sizing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows in one batch.
    pub max_batch_rows: usize,
    /// Padded tokens (rows times the longest text) in one batch of a text model.
    pub max_batch_tokens: usize,
    /// Rows waiting in the queue before new requests are refused.
    pub max_queue_rows: usize,
    /// Tokens waiting in the queue of a text model before new requests are refused.
    pub max_queue_tokens: usize,
    /// How long a small batch may wait for company, from its first request's arrival.
    pub max_batch_delay: Duration,
}

impl Limits {
    fn batch_bound(&self) -> Bound {
        Bound {
            max_rows: self.max_batch_rows,
            max_tokens: self.max_batch_tokens,
        }
    }
}

/// A count of queued units (rows or tokens) with its limit, shared by producers and the
/// batcher.
#[derive(Debug, Clone)]
struct Counter {
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl Counter {
    fn new(max: usize) -> Counter {
        Counter {
            queued: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Adds `n` if the total stays within the limit; else the total as it stands.
    fn reserve(&self, n: usize) -> Result<(), usize> {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + n <= self.max).then_some(queued + n)
            })
            .map(drop)
    }

    fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    fn get(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// The producer side; cheap to clone. The batcher ends once every clone is dropped and the
/// queue is empty, which is how shutdown drains.
#[derive(Debug)]
pub struct Queue<T> {
    tx: mpsc::UnboundedSender<Entry<T>>,
    rows: Counter,
    tokens: Counter,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            rows: self.rows.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

/// Which bound refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Rows,
    Tokens,
}

/// Why [`Queue::try_push`] refused a request; the request comes back to be answered.
#[derive(Debug)]
pub struct Full<T> {
    pub entry: Entry<T>,
    /// The bound it would have crossed.
    pub unit: Unit,
    /// That many units already waiting when it was refused.
    pub queued: usize,
    /// The bound.
    pub max: usize,
}

impl<T> Queue<T> {
    /// Admits the request if its rows fit under `max_queue_rows` and its tokens under
    /// `max_queue_tokens`, else hands it back.
    pub fn try_push(&self, entry: Entry<T>) -> Result<(), Full<T>> {
        let (rows, tokens) = (entry.rows, entry.tokens.total);
        if let Err(queued) = self.rows.reserve(rows) {
            let max = self.rows.max;
            return Err(Full {
                entry,
                unit: Unit::Rows,
                queued,
                max,
            });
        }
        if let Err(queued) = self.tokens.reserve(tokens) {
            self.rows.release(rows);
            let max = self.tokens.max;
            return Err(Full {
                entry,
                unit: Unit::Tokens,
                queued,
                max,
            });
        }
        self.tx.send(entry).map_err(|e| {
            self.rows.release(rows);
            self.tokens.release(tokens);
            Full {
                entry: e.0,
                unit: Unit::Rows,
                queued: 0,
                max: self.rows.max,
            }
        })
    }

    /// Rows admitted and not yet taken into a batch.
    pub fn queued_rows(&self) -> usize {
        self.rows.get()
    }

    /// Tokens (of a text model) admitted and not yet taken into a batch.
    pub fn queued_tokens(&self) -> usize {
        self.tokens.get()
    }

    pub fn max_queue_rows(&self) -> usize {
        self.rows.max
    }

    pub fn max_queue_tokens(&self) -> usize {
        self.tokens.max
    }

    /// A read-only view of the queue's depth that, unlike a `Queue` clone, does not keep the
    /// batcher alive.
    pub fn depth(&self) -> Depth {
        Depth {
            rows: self.rows.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

/// How full a queue is, for reporting.
#[derive(Debug, Clone)]
pub struct Depth {
    rows: Counter,
    tokens: Counter,
}

impl Depth {
    pub fn queued_rows(&self) -> usize {
        self.rows.get()
    }

    pub fn max_queue_rows(&self) -> usize {
        self.rows.max
    }

    pub fn queued_tokens(&self) -> usize {
        self.tokens.get()
    }
}

/// The consumer side, owned by the task that computes a model's batches.
#[derive(Debug)]
pub struct Batcher<T> {
    rx: mpsc::UnboundedReceiver<Entry<T>>,
    state: State<T>,
    rows: Counter,
    tokens: Counter,
    limits: Limits,
    closed: bool,
}

/// A connected queue and batcher.
pub fn channel<T>(limits: Limits) -> (Queue<T>, Batcher<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let rows = Counter::new(limits.max_queue_rows);
    let tokens = Counter::new(limits.max_queue_tokens);
    (
        Queue {
            tx,
            rows: rows.clone(),
            tokens: tokens.clone(),
        },
        Batcher {
            rx,
            state: State::default(),
            rows,
            tokens,
            limits,
            closed: false,
        },
    )
}

impl<T> Batcher<T> {
    /// Rows admitted and not yet taken into a batch.
    pub fn queued_rows(&self) -> usize {
        self.rows.get()
    }

    /// Tokens admitted and not yet taken into a batch.
    pub fn queued_tokens(&self) -> usize {
        self.tokens.get()
    }

    /// Waits for the next batch. Returns `None` once every [`Queue`] is dropped and all that
    /// was admitted has been handed out.
    pub async fn next_batch(&mut self) -> Option<Batch<T>> {
        loop {
            while let Ok(entry) = self.rx.try_recv() {
                self.state.append(entry);
            }
            let ready_at = self
                .state
                .ready_at(self.limits.batch_bound(), self.limits.max_batch_delay);
            match ready_at {
                None if self.closed => return None,
                None => match self.rx.recv().await {
                    Some(entry) => self.state.append(entry),
                    None => self.closed = true,
                },
                Some(at) => {
                    // Tokio's clock, so that tests with paused time drive the delay.
                    let now = tokio::time::Instant::now().into_std();
                    if at <= now || self.closed {
                        let batch = self.state.next_batch(self.limits.batch_bound(), now);
                        self.rows.release(batch.taken_rows());
                        self.tokens.release(batch.taken_tokens());
                        return Some(batch);
                    }
                    tokio::select! {
                        entry = self.rx.recv() => match entry {
                            Some(entry) => self.state.append(entry),
                            None => self.closed = true,
                        },
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_batch_rows: usize, max_queue_rows: usize, delay_ms: u64) -> Limits {
        Limits {
            max_batch_rows,
            max_batch_tokens: 1000,
            max_queue_rows,
            max_queue_tokens: 100,
            max_batch_delay: Duration::from_millis(delay_ms),
        }
    }

    fn entry(rows: usize, item: u32) -> Entry<u32> {
        Entry {
            rows,
            tokens: Tokens::default(),
            arrived: std::time::Instant::now(),
            deadline: None,
            item,
        }
    }

    #[tokio::test]
    async fn refuses_past_the_row_bound_and_frees_rows_when_batched() {
        let (queue, mut batcher) = channel(limits(4, 6, 0));
        queue.try_push(entry(4, 1)).unwrap();
        queue.try_push(entry(2, 2)).unwrap();
        let full = queue.try_push(entry(1, 3)).unwrap_err();
        assert_eq!(
            (full.entry.item, full.unit, full.queued),
            (3, Unit::Rows, 6)
        );
        let b = batcher.next_batch().await.unwrap();
        assert_eq!(b.entries.len(), 1);
        assert_eq!(queue.queued_rows(), 2);
        queue.try_push(entry(1, 3)).unwrap();
        drop(queue);
        let b = batcher.next_batch().await.unwrap();
        assert_eq!(b.rows, 3);
        assert!(batcher.next_batch().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_batch_waits_for_company_up_to_the_delay() {
        let (queue, mut batcher) = channel(limits(8, 100, 10));
        queue.try_push(entry(1, 1)).unwrap();
        let q2 = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            q2.try_push(entry(1, 2)).unwrap();
        });
        let b = batcher.next_batch().await.unwrap();
        assert_eq!(b.entries.len(), 2, "the second request joined the first");
    }

    #[tokio::test]
    async fn refuses_past_the_token_bound_without_keeping_its_rows() {
        let (queue, mut batcher) = channel(limits(100, 100, 0));
        let text = |tokens: usize, item: u32| Entry {
            tokens: Tokens {
                total: tokens,
                longest: tokens,
            },
            ..entry(1, item)
        };
        queue.try_push(text(60, 1)).unwrap();
        let full = queue.try_push(text(50, 2)).unwrap_err();
        assert_eq!((full.unit, full.queued, full.max), (Unit::Tokens, 60, 100));
        assert_eq!(
            queue.queued_rows(),
            1,
            "the refused request's row was given back"
        );
        queue.try_push(text(40, 3)).unwrap();
        let b = batcher.next_batch().await.unwrap();
        assert_eq!((b.rows, b.tokens), (2, 100));
        assert_eq!((queue.queued_rows(), queue.queued_tokens()), (0, 0));
    }
}
