//! The process's memory allocator: mimalloc, set up to hand freed memory back to the system
//! as glibc's malloc does.
//!
//! Why mimalloc: under small-request load glibc's malloc and free were about 16% of a
//! worker's CPU, part of it lock contention between the thread that decodes a request and
//! the one that frees it; mimalloc's thread-local free lists cut the worker's CPU per 1-row
//! request by 9-13% (BENCHMARKS.md, issue 9).
//!
//! Why two settings, each measured on its own (`scripts/bench_memory.sh`: glibc 19.2 MB idle,
//! 26.6 MB after a minute of load):
//! - the crate's `no_thp` feature (Cargo.toml): mimalloc otherwise asks for transparent huge
//!   pages on the arena it reserves before `main` runs, and the worker sat at 26 MB idle and
//!   55 MB after load even with the purge below;
//! - a purge delay of zero: mimalloc v3 otherwise keeps freed pages for a second (ten for
//!   arena ranges) before returning them: 54 MB after load even without huge pages.
//!
//! With both, 17.6 MB idle and 26.2 MB after load. An operator who wants otherwise sets
//! `MIMALLOC_PURGE_DELAY` in the environment; that wins.

use std::ffi::{c_int, c_long};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_t`: the same number in mimalloc v2 and
/// v3, for which libmimalloc-sys has no constant.
const PURGE_DELAY: c_int = 15;

/// Applies flotilla's allocator settings; called first thing in `main`, before any thread
/// is started.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        set(PURGE_DELAY, 0);
    }
}

fn set(option: c_int, value: c_long) {
    // SAFETY: `mi_option_set` stores a value into mimalloc's option table; any option number
    // is range-checked by mimalloc itself, and the table is only read by the allocator.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(option, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(option: c_int) -> c_long {
        // SAFETY: reads mimalloc's option table.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_get(option)
        }
    }

    /// The number names the option meant: mimalloc's purge delay defaults to 1000 ms, which
    /// no option next to it does, and `configure` sets it to 0.
    #[test]
    fn configure_sets_mimallocs_purge_delay_to_zero() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            panic!("unset MIMALLOC_PURGE_DELAY to run this test: it checks mimalloc's default");
        }
        assert_eq!(get(PURGE_DELAY), 1000, "mimalloc's default purge delay");
        assert_ne!(get(PURGE_DELAY - 1), 1000);
        assert_ne!(get(PURGE_DELAY + 1), 1000);
        configure();
        assert_eq!(get(PURGE_DELAY), 0);
    }
}
