//! Dynamic batching: a bounded queue handle for producers and the loop that forms batches.
//!
//! Producers (the NATS read loop) call [`Queue::try_push`], which either admits a request at
//! once or refuses it at once: the bound is counted in rows with an atomic, so admission never
//! waits and never takes a lock. The consumer, [`Batcher::next_batch`], is called by the one
//! task that owns a model's compute whenever that compute is free; while a batch computes,
//! newcomers accumulate and form the next one. What happens to a batch is not this module's
//! business.

mod state;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use state::{Batch, Entry, State};

/// Batch sizing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows in one batch.
    pub max_batch_rows: usize,
    /// Rows waiting in the queue before new requests are refused.
    pub max_queue_rows: usize,
    /// How long a small batch may wait for company, from its first request's arrival.
    pub max_batch_delay: Duration,
}

/// The producer side; cheap to clone. The batcher ends once every clone is dropped and the
/// queue is empty, which is how shutdown drains.
#[derive(Debug)]
pub struct Queue<T> {
    tx: mpsc::UnboundedSender<Entry<T>>,
    queued_rows: Arc<AtomicUsize>,
    max_queue_rows: usize,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            queued_rows: self.queued_rows.clone(),
            max_queue_rows: self.max_queue_rows,
        }
    }
}

/// Why [`Queue::try_push`] refused a request; the request comes back to be answered.
#[derive(Debug)]
pub struct Full<T> {
    pub entry: Entry<T>,
    /// Rows already waiting when it was refused.
    pub queued_rows: usize,
}

impl<T> Queue<T> {
    /// Admits the request if its rows fit under `max_queue_rows`, else hands it back.
    pub fn try_push(&self, entry: Entry<T>) -> Result<(), Full<T>> {
        let rows = entry.rows;
        let reserved =
            self.queued_rows
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    (queued + rows <= self.max_queue_rows).then_some(queued + rows)
                });
        if let Err(queued_rows) = reserved {
            return Err(Full { entry, queued_rows });
        }
        self.tx.send(entry).map_err(|e| {
            self.queued_rows.fetch_sub(rows, Ordering::AcqRel);
            Full {
                entry: e.0,
                queued_rows: 0,
            }
        })
    }

    /// Rows admitted and not yet taken into a batch.
    pub fn queued_rows(&self) -> usize {
        self.queued_rows.load(Ordering::Acquire)
    }

    pub fn max_queue_rows(&self) -> usize {
        self.max_queue_rows
    }

    /// A read-only view of the queue's depth that, unlike a `Queue` clone, does not keep the
    /// batcher alive.
    pub fn depth(&self) -> Depth {
        Depth {
            queued_rows: self.queued_rows.clone(),
            max_queue_rows: self.max_queue_rows,
        }
    }
}

/// How full a queue is, for reporting.
#[derive(Debug, Clone)]
pub struct Depth {
    queued_rows: Arc<AtomicUsize>,
    max_queue_rows: usize,
}

impl Depth {
    pub fn queued_rows(&self) -> usize {
        self.queued_rows.load(Ordering::Acquire)
    }

    pub fn max_queue_rows(&self) -> usize {
        self.max_queue_rows
    }
}

/// The consumer side, owned by the task that computes a model's batches.
#[derive(Debug)]
pub struct Batcher<T> {
    rx: mpsc::UnboundedReceiver<Entry<T>>,
    state: State<T>,
    queued_rows: Arc<AtomicUsize>,
    limits: Limits,
    closed: bool,
}

/// A connected queue and batcher.
pub fn channel<T>(limits: Limits) -> (Queue<T>, Batcher<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued_rows = Arc::new(AtomicUsize::new(0));
    (
        Queue {
            tx,
            queued_rows: queued_rows.clone(),
            max_queue_rows: limits.max_queue_rows,
        },
        Batcher {
            rx,
            state: State::default(),
            queued_rows,
            limits,
            closed: false,
        },
    )
}

impl<T> Batcher<T> {
    /// Rows admitted and not yet taken into a batch.
    pub fn queued_rows(&self) -> usize {
        self.queued_rows.load(Ordering::Acquire)
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
                .ready_at(self.limits.max_batch_rows, self.limits.max_batch_delay);
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
                        let batch = self.state.next_batch(self.limits.max_batch_rows, now);
                        self.queued_rows
                            .fetch_sub(batch.taken_rows(), Ordering::AcqRel);
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

    fn entry(rows: usize, item: u32) -> Entry<u32> {
        Entry {
            rows,
            arrived: std::time::Instant::now(),
            deadline: None,
            item,
        }
    }

    #[tokio::test]
    async fn refuses_past_the_row_bound_and_frees_rows_when_batched() {
        let (queue, mut batcher) = channel(Limits {
            max_batch_rows: 4,
            max_queue_rows: 6,
            max_batch_delay: Duration::ZERO,
        });
        queue.try_push(entry(4, 1)).unwrap();
        queue.try_push(entry(2, 2)).unwrap();
        let full = queue.try_push(entry(1, 3)).unwrap_err();
        assert_eq!((full.entry.item, full.queued_rows), (3, 6));
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
        let (queue, mut batcher) = channel(Limits {
            max_batch_rows: 8,
            max_queue_rows: 100,
            max_batch_delay: Duration::from_millis(10),
        });
        queue.try_push(entry(1, 1)).unwrap();
        let q2 = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            q2.try_push(entry(1, 2)).unwrap();
        });
        let b = batcher.next_batch().await.unwrap();
        assert_eq!(b.entries.len(), 2, "the second request joined the first");
    }
}
