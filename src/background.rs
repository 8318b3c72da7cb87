//! Background work yields the CPU to the request workers.
//!
//! Reloading a 100,000-project scope file parses for seconds, and the authorization log's
//! writer runs a transaction every flush interval. Both run on the control runtime's blocking
//! pool. On a machine whose cores are all busy serving requests, at normal priority they would
//! take a full share of a core from the workers and stretch the requests' tail; at a lower
//! priority they use what the workers leave and still finish (a lower nice value is a smaller
//! share, never a stop).

/// Nice value of threads doing background work (0 is the default, 19 the lowest priority).
pub const BACKGROUND_NICE: i32 = 10;

/// Lower the calling thread's CPU priority to [`BACKGROUND_NICE`] (on Linux the nice value is
/// per thread). Best effort, and never raises a priority: a thread already nicer is left as it
/// is, a failure leaves it unchanged. Without privileges a thread cannot get its priority back,
/// so only threads that do background work from then on call this: the blocking pool's.
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid, getpriority and setpriority take plain integers and only read or
        // change the calling thread's scheduling attributes.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            // getpriority may legitimately return -1: errno tells an error apart.
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            if (now == -1 && *libc::__errno_location() != 0) || now >= BACKGROUND_NICE {
                return;
            }
            libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE);
        }
    }
}

/// The calling thread's nice value (Linux), for tests and diagnostics.
#[cfg(target_os = "linux")]
pub fn current_thread_nice() -> i32 {
    // SAFETY: as above; reads the calling thread's nice value only.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = current_thread_nice();
        let lowered = std::thread::spawn(|| {
            lower_current_thread();
            let once = current_thread_nice();
            lower_current_thread();
            (once, current_thread_nice())
        })
        .join()
        .unwrap_or_default();
        assert_eq!(
            lowered,
            (BACKGROUND_NICE.max(before), BACKGROUND_NICE.max(before))
        );
        assert_eq!(
            current_thread_nice(),
            before,
            "the caller's thread is untouched"
        );
    }

    #[tokio::test]
    async fn the_blocking_pool_runs_background_work_nicer_than_the_runtime() {
        let runtime_nice = current_thread_nice();
        let pool_nice = tokio::task::spawn_blocking(|| {
            lower_current_thread();
            current_thread_nice()
        })
        .await
        .unwrap_or_default();
        assert!(pool_nice >= BACKGROUND_NICE, "{pool_nice}");
        assert_eq!(current_thread_nice(), runtime_nice);
    }
}
