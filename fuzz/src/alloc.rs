//! A global allocator that counts: live heap bytes, the peak since the last reset, and a hard
//! ceiling above which an allocation fails (so the process aborts, as a worker would when
//! a declared length reserves terabytes). The fuzz binary and the quick test install it;
//! the harness reads [`peak`] after every input to catch allocations out of proportion to the
//! input long before they would take a machine down.

// The one unsafe block of the workspace outside dependencies: a `GlobalAlloc` has to be
// `unsafe impl`, and this one only adds counters around the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Install with `#[global_allocator] static A: Counting = Counting;`.
pub struct Counting;

impl Counting {
    fn grow(size: usize) -> bool {
        let live = LIVE.fetch_add(size, Relaxed) + size;
        if live > CEILING.load(Relaxed) {
            LIVE.fetch_sub(size, Relaxed);
            return false;
        }
        PEAK.fetch_max(live, Relaxed);
        true
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Counting::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Counting::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Counting::grow(new_size - old) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Relaxed);
        }
        p
    }
}

/// Heap bytes live now (zero when [`Counting`] is not the global allocator).
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// The most heap bytes live at once since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}

/// Starts a new peak measurement from what is live now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// Makes any allocation that would take live bytes over `bytes` fail (the process aborts
/// with "memory allocation of N bytes failed").
pub fn set_ceiling(bytes: usize) {
    CEILING.store(bytes, Relaxed);
}

/// Whether [`Counting`] is installed: it is once anything has been allocated through it.
pub fn installed() -> bool {
    drop(std::hint::black_box(vec![0u8; 1]));
    PEAK.load(Relaxed) > 0 || LIVE.load(Relaxed) > 0
}
