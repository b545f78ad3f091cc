//! The batching state: plain synchronous code over a FIFO of requests, so every rule of how
//! batches are formed is unit-tested without a runtime.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a request of a text model costs in tokens; zero for models counted in rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Tokens of all its texts together.
    pub total: usize,
    /// Tokens of its longest text: a batch's padded size is its rows times the longest.
    pub longest: usize,
}

/// One queued request.
#[derive(Debug)]
pub struct Entry<T> {
    /// Rows this request contributes to a batch.
    pub rows: usize,
    /// Tokens it contributes, for text models (batches and the queue are bounded by both).
    pub tokens: Tokens,
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
    /// Sum of `entries[..].tokens.total`.
    pub tokens: usize,
    /// The longest text of `entries`, in tokens.
    pub longest: usize,
}

impl<T> Batch<T> {
    /// Rows of every request the batch took out of the queue, computed or not.
    pub fn taken_rows(&self) -> usize {
        self.rows + self.expired.iter().map(|e| e.rows).sum::<usize>()
    }

    /// Tokens of every request the batch took out of the queue, computed or not.
    pub fn taken_tokens(&self) -> usize {
        self.tokens + self.expired.iter().map(|e| e.tokens.total).sum::<usize>()
    }

    /// Rows times the longest text: what a padded batch would hold, the unit of
    /// `max_batch_tokens`.
    pub fn padded_tokens(&self) -> usize {
        self.rows * self.longest
    }
}

/// How large a batch may grow.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub max_rows: usize,
    /// In padded tokens (rows times the longest text); numeric models have no tokens.
    pub max_tokens: usize,
}

/// Requests waiting for a batch, oldest first.
#[derive(Debug)]
pub struct State<T> {
    queue: VecDeque<Entry<T>>,
    rows: usize,
    tokens: usize,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            queue: VecDeque::new(),
            rows: 0,
            tokens: 0,
        }
    }
}

impl<T> State<T> {
    pub fn append(&mut self, entry: Entry<T>) {
        self.rows += entry.rows;
        self.tokens += entry.tokens.total;
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
    /// is waiting (by rows, or by tokens even unpadded), else `max_delay` after the head
    /// request arrived. `None` when empty.
    pub fn ready_at(&self, bound: Bound, max_delay: Duration) -> Option<Instant> {
        let head = self.queue.front()?;
        let full = self.rows >= bound.max_rows || self.tokens >= bound.max_tokens;
        if max_delay.is_zero() || full {
            Some(head.arrived)
        } else {
            Some(head.arrived + max_delay)
        }
    }

    /// Takes requests in arrival order while they fit in the bound: `max_rows` rows (not
    /// requests) and, for text, `max_tokens` padded tokens (rows times the longest text). A
    /// single request larger than the bound forms a batch of its own rather than waiting
    /// forever. Requests whose deadline is at or before `now` are taken out as expired.
    pub fn next_batch(&mut self, bound: Bound, now: Instant) -> Batch<T> {
        let mut batch = Batch {
            entries: Vec::new(),
            expired: Vec::new(),
            rows: 0,
            tokens: 0,
            longest: 0,
        };
        while let Some(head) = self.queue.front() {
            let expired = head.deadline.is_some_and(|d| d <= now);
            let rows = batch.rows + head.rows;
            let padded = rows * batch.longest.max(head.tokens.longest);
            let fits = rows <= bound.max_rows && padded <= bound.max_tokens;
            if !expired && !batch.entries.is_empty() && !fits {
                break;
            }
            let entry = self.queue.pop_front().expect("front exists");
            self.rows -= entry.rows;
            self.tokens -= entry.tokens.total;
            if expired {
                batch.expired.push(entry);
            } else {
                batch.rows += entry.rows;
                batch.tokens += entry.tokens.total;
                batch.longest = batch.longest.max(entry.tokens.longest);
                batch.entries.push(entry);
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: fn(usize) -> Bound = |max_rows| Bound {
        max_rows,
        max_tokens: usize::MAX,
    };

    fn entry(id: u32, rows: usize, at: Instant) -> Entry<u32> {
        Entry {
            rows,
            tokens: Tokens::default(),
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
        let b = s.next_batch(ROWS(8), t);
        // 3 + 4 fit, 2 would make 9: FIFO stops there rather than skipping ahead.
        assert_eq!(ids(&b.entries), vec![1, 2]);
        assert_eq!(b.rows, 7);
        let b = s.next_batch(ROWS(8), t);
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
        assert_eq!(ids(&s.next_batch(ROWS(8), t).entries), vec![1]);
        assert_eq!(ids(&s.next_batch(ROWS(8), t).entries), vec![2]);
    }

    #[test]
    fn expired_requests_are_taken_out_not_batched() {
        let t = Instant::now();
        let mut s = State::default();
        let mut late = entry(1, 2, t);
        late.deadline = Some(t + Duration::from_millis(5));
        s.append(late);
        s.append(entry(2, 2, t));
        let b = s.next_batch(ROWS(8), t + Duration::from_millis(5));
        assert_eq!(ids(&b.expired), vec![1]);
        assert_eq!(ids(&b.entries), vec![2]);
        assert_eq!(b.taken_rows(), 4);
    }

    #[test]
    fn delay_is_timed_from_the_head() {
        let t = Instant::now();
        let delay = Duration::from_millis(2);
        let mut s = State::default();
        assert_eq!(s.ready_at(ROWS(4), delay), None);
        s.append(entry(1, 1, t));
        s.append(entry(2, 1, t + Duration::from_millis(1)));
        assert_eq!(s.ready_at(ROWS(4), delay), Some(t + delay));
        assert_eq!(s.ready_at(ROWS(4), Duration::ZERO), Some(t));
        s.append(entry(3, 2, t + Duration::from_millis(1)));
        assert_eq!(
            s.ready_at(ROWS(4), delay),
            Some(t),
            "a full batch goes at once"
        );
    }

    fn text(id: u32, lengths: &[usize], at: Instant) -> Entry<u32> {
        Entry {
            rows: lengths.len(),
            tokens: Tokens {
                total: lengths.iter().sum(),
                longest: lengths.iter().copied().max().unwrap_or(0),
            },
            arrived: at,
            deadline: None,
            item: id,
        }
    }

    #[test]
    fn text_batches_are_bounded_by_padded_tokens() {
        let t = Instant::now();
        let bound = Bound {
            max_rows: 100,
            max_tokens: 64,
        };
        let mut s = State::default();
        s.append(text(1, &[10, 12], t));
        s.append(text(2, &[8], t));
        // 3 rows x 20 tokens = 60 fits; a fourth row of 20 would pad to 80.
        s.append(text(3, &[20], t));
        s.append(text(4, &[5], t));
        let b = s.next_batch(bound, t);
        assert_eq!(ids(&b.entries), vec![1, 2]);
        assert_eq!((b.rows, b.tokens, b.longest), (3, 30, 12));
        let b = s.next_batch(bound, t);
        assert_eq!(ids(&b.entries), vec![3, 4]);
        assert_eq!(b.padded_tokens(), 40);
        // One text longer than the bound still goes, alone.
        s.append(text(5, &[100], t));
        s.append(text(6, &[1], t));
        assert_eq!(ids(&s.next_batch(bound, t).entries), vec![5]);
    }

    #[test]
    fn a_queue_full_of_tokens_goes_at_once() {
        let t = Instant::now();
        let bound = Bound {
            max_rows: 100,
            max_tokens: 64,
        };
        let delay = Duration::from_millis(5);
        let mut s = State::default();
        s.append(text(1, &[30], t));
        assert_eq!(s.ready_at(bound, delay), Some(t + delay));
        s.append(text(2, &[40], t));
        assert_eq!(s.ready_at(bound, delay), Some(t));
    }
}
