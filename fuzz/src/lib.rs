//! Fuzzing flotilla's parsers of untrusted bytes on stable Rust, with no toolchain beyond
//! cargo: a deterministic mutation loop over a corpus committed in `fuzz/corpus/<target>/`,
//! each call inside `catch_unwind`, a counting allocator that flags an input using heap out
//! of proportion to its size and aborts past a hard ceiling, and child processes so that
//! aborts, stack overflows and hangs are found and pinned to one input too.
//!
//! `scripts/fuzz.sh [N]` runs every target for N inputs (release build); `tests/fuzz.rs` at
//! the top level runs each for 20,000 in-process so `cargo test` exercises the harness.
//!
//! # Layout
//! - [`targets`]: the four targets and the contract each input is checked against.
//! - [`mutate`]: corpus entry to hostile input, reproducibly from (seed, index).
//! - [`engine`]: one input in-process: panics caught, heap measured; loops over a range.
//! - [`supervise`]: many inputs across child processes, replaying to find a killer input.
//! - [`corpus`]: loading the corpus and building its seeds.
//! - [`alloc`]: the counting allocator.
//! - [`rng`]: the SplitMix64 generator.

pub mod alloc;
pub mod corpus;
pub mod engine;
pub mod mutate;
pub mod rng;
pub mod supervise;
pub mod targets;

pub use engine::{Budget, Finding, Kind};
pub use targets::Target;
