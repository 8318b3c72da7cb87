//! Which server worker thread the code runs on, and state kept once per worker. Per-worker
//! state (upstream connections, the origin cache's front) is reached through [`PerWorker`], so
//! the threads never share a lock or a cache line for it on the request path.

use std::cell::Cell;

thread_local! {
    /// 0 outside the server's workers; worker `i` is `i + 1`.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Called once by server worker `index` on its own thread.
pub fn enter(index: usize) {
    SLOT.set(index + 1);
}

/// One `T` per server worker, plus one shared by every thread that is not a worker.
pub struct PerWorker<T> {
    /// Never empty: index 0 is the non-worker threads' own.
    slots: Box<[T]>,
}

impl<T> PerWorker<T> {
    pub fn new(workers: usize, mut make: impl FnMut() -> T) -> Self {
        PerWorker {
            slots: (0..=workers).map(|_| make()).collect(),
        }
    }

    /// This thread's `T` (a thread of another server's workers, with more workers than this
    /// one was made for, gets the shared one).
    pub fn local(&self) -> &T {
        let slot = SLOT.get();
        self.slots.get(slot).unwrap_or(&self.slots[0])
    }

    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.slots.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_thread_has_its_own_and_others_share_one() {
        let per = PerWorker::new(2, std::sync::atomic::AtomicUsize::default);
        let bump = |p: &PerWorker<std::sync::atomic::AtomicUsize>| {
            p.local().fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        bump(&per);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(1);
                bump(&per);
                bump(&per);
            });
            s.spawn(|| {
                // A worker index beyond what `per` was made for falls back to the shared one.
                enter(7);
                bump(&per);
            });
        });
        let counts: Vec<usize> = per
            .all()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [2, 0, 2]);
    }
}
