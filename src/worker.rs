//! Which server worker thread the code runs on. Per-worker state (upstream connections, the
//! origin cache's front) is indexed by it, so the threads never share a lock or a cache line
//! on the request path.

use std::cell::Cell;

thread_local! {
    /// 0 outside the server's workers; worker `i` is `i + 1`.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Called once by server worker `index` on its own thread.
pub fn enter(index: usize) {
    SLOT.set(index + 1);
}

/// This thread's slot in per-worker state sized [`slots`]`(workers)`: 0 for any thread that is
/// not a server worker.
pub fn slot() -> usize {
    SLOT.get()
}

/// How many slots per-worker state needs for `workers` workers.
pub fn slots(workers: usize) -> usize {
    workers + 1
}
