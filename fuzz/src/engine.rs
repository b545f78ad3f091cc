//! Running inputs through a target in this process: each call inside `catch_unwind`, its
//! heap peak measured (when [`crate::alloc::Counting`] is the global allocator) against a
//! budget proportional to the input, and its panic message kept for the report.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

use crate::alloc;
use crate::mutate;
use crate::targets::Target;

/// The heap one input may use at its peak: a floor for fixed costs (serde's capped
/// preallocation from a declared length is up to 1 MiB per container) plus a multiple of the
/// input's size (serde's buffering for `flatten` keeps every value in a 32-byte enum).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub floor: usize,
    pub per_byte: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            floor: 64 << 20,
            per_byte: 256,
        }
    }
}

impl Budget {
    pub fn for_input(&self, len: usize) -> usize {
        self.floor.saturating_add(self.per_byte.saturating_mul(len))
    }
}

/// What went wrong with one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub index: u64,
    pub kind: Kind,
    /// The panic message and location, or what the supervisor saw.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A panic: an `unwrap`, an index out of bounds, an overflow, a failed contract check.
    Panic,
    /// More heap at once than the budget allows for the input's size.
    Memory,
    /// The process died: an allocation failure, a stack overflow, any signal.
    Abort,
    /// No answer within the hang limit.
    Hang,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Panic => "panic",
            Kind::Memory => "memory",
            Kind::Abort => "abort",
            Kind::Hang => "hang",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        [Kind::Panic, Kind::Memory, Kind::Abort, Kind::Hang]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

impl Finding {
    /// What makes two findings the same bug: the kind and the panic's location (or the
    /// first words of the message).
    pub fn signature(&self) -> String {
        if self.kind == Kind::Memory {
            // Its message is all sizes: one signature, triaged by minimising.
            return "memory".into();
        }
        let located = self
            .message
            .split_once(" at ")
            .map(|(_, at)| at.split_whitespace().next().unwrap_or(""))
            .filter(|at| at.contains(".rs:"));
        match located {
            Some(at) => format!("{} {at}", self.kind.as_str()),
            None => {
                let words: Vec<&str> = self.message.split_whitespace().take(6).collect();
                format!("{} {}", self.kind.as_str(), words.join(" "))
            }
        }
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the panic hook with one that keeps the message and location for [`check`]
/// instead of printing: a million caught panics would otherwise flood stderr.
pub fn quiet_panics() {
    panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-text payload".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let text: String = payload.chars().take(400).collect();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{text}{at}")));
    }));
}

/// One input through `target`: whether it was accepted, or what went wrong.
pub fn check(target: Target, input: &[u8], budget: Budget) -> Result<bool, (Kind, String)> {
    let base = alloc::live();
    alloc::reset_peak();
    let result = panic::catch_unwind(AssertUnwindSafe(|| target.run(input)));
    let used = alloc::peak().saturating_sub(base);
    match result {
        Err(_) => {
            let message = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "a panic (message not captured)".into());
            Err((Kind::Panic, message))
        }
        Ok(_) if used > budget.for_input(input.len()) => Err((
            Kind::Memory,
            format!(
                "{} MiB of heap at once for a {}-byte input (budget {} MiB)",
                used >> 20,
                input.len(),
                budget.for_input(input.len()) >> 20
            ),
        )),
        Ok(accepted) => Ok(accepted),
    }
}

/// Counts of one run over a range of inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub inputs: u64,
    pub accepted: u64,
    pub findings: Vec<Finding>,
    /// The largest heap peak of one input, in bytes (0 without the counting allocator).
    pub max_heap: usize,
}

/// What the loop tells its caller as it goes.
pub enum Event<'a> {
    /// Input `index` is about to run (only when tracing).
    Start(u64),
    /// Every input before `next` has run; `accepted` of them so far were accepted.
    Progress {
        next: u64,
        accepted: u64,
    },
    Finding(&'a Finding),
}

/// Runs inputs `from..to` of `seed` through `target`, telling `events` as it goes.
pub fn run_range(
    target: Target,
    corpus: &[Vec<u8>],
    seed: u64,
    range: std::ops::Range<u64>,
    budget: Budget,
    trace: bool,
    mut events: impl FnMut(Event),
) -> Tally {
    let mut tally = Tally::default();
    for index in range.clone() {
        let input = mutate::input(corpus, seed, index);
        if trace {
            events(Event::Start(index));
        }
        let base = alloc::live();
        match check(target, &input, budget) {
            Ok(accepted) => tally.accepted += u64::from(accepted),
            Err((kind, message)) => {
                let finding = Finding {
                    index,
                    kind,
                    message,
                };
                events(Event::Finding(&finding));
                tally.findings.push(finding);
            }
        }
        tally.max_heap = tally.max_heap.max(alloc::peak().saturating_sub(base));
        tally.inputs += 1;
        if (index + 1) % 4096 == 0 || index + 1 == range.end {
            events(Event::Progress {
                next: index + 1,
                accepted: tally.accepted,
            });
        }
    }
    tally
}
