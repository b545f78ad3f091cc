//! The batching state: plain synchronous code over a FIFO of requests, so every rule of how
//! batches are formed is unit-tested without a runtime.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One queued request.
#[derive(Debug)]
pub struct Entry<T> {
    /// Rows this request contributes to a batch; the unit of every limit.
    pub rows: usize,
    /// When the worker received it; `max_batch_delay` is timed from the head's arrival.
    pub arrived: Instant,
    /// When the caller's `Flotilla-Timeout-Ms` budget runs out, if it sent one.
    pub deadline: Option<Instant>,
    pub item: T,
}

/// What [`State::next_batch`] hands out.
#[derive(Debug)]
pub struct Batch<T> {
    /// Requests to compute together, in arrival order.
    pub entries: Vec<Entry<T>>,
    /// Requests whose budget was spent before their batch formed: answered 504, not computed.
    pub expired: Vec<Entry<T>>,
    /// Sum of `entries[..].rows`.
    pub rows: usize,
}

impl<T> Batch<T> {
    /// Every request the batch took out of the queue, computed or not.
    pub fn taken_rows(&self) -> usize {
        self.rows + self.expired.iter().map(|e| e.rows).sum::<usize>()
    }
}

/// Requests waiting for a batch, oldest first.
#[derive(Debug)]
pub struct State<T> {
    queue: VecDeque<Entry<T>>,
    rows: usize,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            queue: VecDeque::new(),
            rows: 0,
        }
    }
}

impl<T> State<T> {
    pub fn append(&mut self, entry: Entry<T>) {
        self.rows += entry.rows;
        self.queue.push_back(entry);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Rows waiting.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// When the next batch may be dispatched: at once when there is no delay or a full batch
    /// is waiting, else `max_delay` after the head request arrived. `None` when empty.
    pub fn ready_at(&self, max_rows: usize, max_delay: Duration) -> Option<Instant> {
        let head = self.queue.front()?;
        if max_delay.is_zero() || self.rows >= max_rows {
            Some(head.arrived)
        } else {
            Some(head.arrived + max_delay)
        }
    }

    /// Takes requests in arrival order while they fit in `max_rows` (rows, not requests). A
    /// single request larger than `max_rows` forms a batch of its own rather than waiting
    /// forever. Requests whose deadline is at or before `now` are taken out as expired.
    pub fn next_batch(&mut self, max_rows: usize, now: Instant) -> Batch<T> {
        let mut batch = Batch {
            entries: Vec::new(),
            expired: Vec::new(),
            rows: 0,
        };
        while let Some(head) = self.queue.front() {
            let expired = head.deadline.is_some_and(|d| d <= now);
            if !expired && !batch.entries.is_empty() && batch.rows + head.rows > max_rows {
                break;
            }
            let entry = self.queue.pop_front().expect("front exists");
            self.rows -= entry.rows;
            if expired {
                batch.expired.push(entry);
            } else {
                batch.rows += entry.rows;
                batch.entries.push(entry);
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, rows: usize, at: Instant) -> Entry<u32> {
        Entry {
            rows,
            arrived: at,
            deadline: None,
            item: id,
        }
    }

    fn ids(v: &[Entry<u32>]) -> Vec<u32> {
        v.iter().map(|e| e.item).collect()
    }

    #[test]
    fn batches_by_rows_in_arrival_order() {
        let t = Instant::now();
        let mut s = State::default();
        for (id, rows) in [(1, 3), (2, 4), (3, 2), (4, 1)] {
            s.append(entry(id, rows, t));
        }
        assert_eq!(s.rows(), 10);
        let b = s.next_batch(8, t);
        // 3 + 4 fit, 2 would make 9: FIFO stops there rather than skipping ahead.
        assert_eq!(ids(&b.entries), vec![1, 2]);
        assert_eq!(b.rows, 7);
        let b = s.next_batch(8, t);
        assert_eq!(ids(&b.entries), vec![3, 4]);
        assert!(s.is_empty());
        assert_eq!(s.rows(), 0);
    }

    #[test]
    fn an_oversized_request_gets_its_own_batch() {
        let t = Instant::now();
        let mut s = State::default();
        s.append(entry(1, 50, t));
        s.append(entry(2, 1, t));
        assert_eq!(ids(&s.next_batch(8, t).entries), vec![1]);
        assert_eq!(ids(&s.next_batch(8, t).entries), vec![2]);
    }

    #[test]
    fn expired_requests_are_taken_out_not_batched() {
        let t = Instant::now();
        let mut s = State::default();
        let mut late = entry(1, 2, t);
        late.deadline = Some(t + Duration::from_millis(5));
        s.append(late);
        s.append(entry(2, 2, t));
        let b = s.next_batch(8, t + Duration::from_millis(5));
        assert_eq!(ids(&b.expired), vec![1]);
        assert_eq!(ids(&b.entries), vec![2]);
        assert_eq!(b.taken_rows(), 4);
    }

    #[test]
    fn delay_is_timed_from_the_head() {
        let t = Instant::now();
        let delay = Duration::from_millis(2);
        let mut s = State::default();
        assert_eq!(s.ready_at(4, delay), None);
        s.append(entry(1, 1, t));
        s.append(entry(2, 1, t + Duration::from_millis(1)));
        assert_eq!(s.ready_at(4, delay), Some(t + delay));
        assert_eq!(s.ready_at(4, Duration::ZERO), Some(t));
        s.append(entry(3, 2, t + Duration::from_millis(1)));
        assert_eq!(s.ready_at(4, delay), Some(t), "a full batch goes at once");
    }
}
