//! `target::parse` allocates nothing on the common path: a project API route by numeric id, the
//! job routes, and the routes it leaves unattributed. A counting global allocator (this test
//! binary only) checks it, counting per thread: the test harness's other threads allocate too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::Method;
use scopegate::target::{self, Target};

struct Counting;

thread_local! {
    // Const-initialised, no destructor: usable from inside the allocator.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
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
        let before = allocations();
        let parsed = target::parse(method, path, *query);
        let after = allocations();
        assert!(
            !matches!(parsed, Err(_) | Ok(Target::Unattributed))
                || path.starts_with("/api/graphql"),
            "{path}: {parsed:?}"
        );
        assert_eq!(after, before, "{method} {path} allocated");
        drop(parsed);
    }
}
