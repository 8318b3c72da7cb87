//! `target::parse` allocates nothing on the common path: a project API route by numeric id, the
//! job routes, and the routes it leaves unattributed. A counting global allocator (this test
//! binary only) checks it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use scopegate::target::{self, Target};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn common_routes_do_not_allocate() {
    let cases = [
        (Method::GET, "/api/v4/projects/123/merge_requests", None),
        (
            Method::POST,
            "/api/v4/projects/42/trigger/pipeline",
            Some("token=x&ref=main"),
        ),
        (
            Method::GET,
            "/api/v4/projects/7/packages/maven/com/acme/app/1.0/app-1.0.jar",
            None,
        ),
        (Method::PUT, "/api/v4/jobs/1001/artifacts", None),
        (Method::GET, "/api/v4/job", None),
        (Method::GET, "/api/v4/groups/5/-/packages/npm/x", None),
        (Method::GET, "/api/v4/packages/npm/x", None),
        (Method::POST, "/api/graphql", None),
        (
            Method::GET,
            "/jwt/auth",
            Some("service=container_registry&account=bot"),
        ),
    ];
    for (method, path, query) in &cases {
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        let parsed = target::parse(method, path, *query);
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        assert!(
            !matches!(parsed, Err(_) | Ok(Target::Unattributed))
                || path.starts_with("/api/graphql"),
            "{path}: {parsed:?}"
        );
        assert_eq!(after, before, "{method} {path} allocated");
        drop(parsed);
    }
}
