//! A counting global allocator for allocation tests.
//!
//! Include it in a test binary of its own (a global allocator is per binary):
//!
//! ```ignore
//! #[path = "../support/counting_alloc.rs"]
//! mod counting_alloc;
//! use counting_alloc::{CountingAlloc, allocations_on_this_thread};
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc;
//! ```
//!
//! Counts are per thread, so work on other threads (a multi-thread runtime's
//! workers, the test harness) does not disturb a measurement. Drive the code
//! under test on the current thread (a current-thread runtime, or `poll` by
//! hand) between two reads of [`allocations_on_this_thread`].
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
    // Bytes allocated less bytes freed on this thread.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn live(delta: i64) {
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

fn bump(size: usize) {
    // `try_with`: the thread-local may already be gone during thread teardown.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    let _ = BYTES.try_with(|c| c.set(c.get() + size as u64));
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(layout.size());
        live(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(layout.size());
        live(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(new_size);
        live(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations (including reallocations) made on this thread so far.
pub fn allocations_on_this_thread() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Bytes requested on this thread so far.
pub fn bytes_on_this_thread() -> u64 {
    BYTES.with(|c| c.get())
}

/// Heap bytes held by what this thread allocated (and freed) so far.
pub fn live_bytes_on_this_thread() -> i64 {
    LIVE.with(|c| c.get())
}

/// Runs `f` and returns how many allocations it made on this thread.
pub fn count_allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = allocations_on_this_thread();
    let r = f();
    (allocations_on_this_thread() - before, r)
}
