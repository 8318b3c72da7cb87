//! The binary's global allocator: mimalloc (its thread-local free lists serve the small,
//! short-lived buffers hyper and the gateway allocate per request, on every worker).

/// mimalloc, entered through `mi_malloc` whenever its natural alignment suffices. The
/// `mimalloc` crate's allocator always calls `mi_malloc_aligned`, whose fast path covers only
/// blocks up to 1 KiB: every larger one (read buffers, boxed request futures) took mimalloc's
/// over-allocating generic path, about 200 instructions each, several times per request.
pub struct Allocator;

/// The alignment `mi_malloc` guarantees for blocks of at least this size (`MI_MAX_ALIGN_SIZE`).
const MI_MAX_ALIGN: usize = 16;

fn natural(layout: std::alloc::Layout) -> bool {
    layout.align() <= MI_MAX_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks from
// either entry point); `natural` holds only where `mi_malloc` already returns blocks aligned
// as the layout asks, and the aligned entry points serve every other layout.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if natural(layout) {
            unsafe { mi::mi_malloc(layout.size()).cast() }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if natural(layout) {
            unsafe { mi::mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        let grown = std::alloc::Layout::from_size_align(new_size, layout.align());
        if grown.is_ok_and(natural) && natural(layout) {
            unsafe { mi::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Allocator;
    use std::alloc::{GlobalAlloc, Layout};

    /// Every layout gets a block aligned as asked, writable over its whole size, and realloc
    /// keeps the contents whichever entry point served the old and the new block.
    #[test]
    fn blocks_are_aligned_and_realloc_keeps_contents() {
        let sizes = [
            1, 7, 8, 15, 16, 24, 100, 1024, 1025, 5000, 8192, 65_537, 300_000,
        ];
        let aligns = [1, 2, 8, 16, 32, 64, 4096];
        for &size in &sizes {
            for &align in &aligns {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with its own layout once.
                unsafe {
                    for zeroed in [false, true] {
                        let p = if zeroed {
                            Allocator.alloc_zeroed(layout)
                        } else {
                            Allocator.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                        }
                        std::ptr::write_bytes(p, 0xA5, size);
                        for &new_size in &[size / 2 + 1, size * 3] {
                            let q = Allocator.realloc(p_copy(p, size, layout), layout, new_size);
                            assert!(!q.is_null());
                            assert_eq!(q as usize % align, 0);
                            let kept = size.min(new_size);
                            assert!(std::slice::from_raw_parts(q, kept)
                                .iter()
                                .all(|&b| b == 0xA5));
                            Allocator.dealloc(q, Layout::from_size_align(new_size, align).unwrap());
                        }
                        Allocator.dealloc(p, layout);
                    }
                }
            }
        }
    }

    /// A fresh copy of `p`'s block, so that the original stays valid for the next realloc.
    unsafe fn p_copy(p: *mut u8, size: usize, layout: Layout) -> *mut u8 {
        unsafe {
            let copy = Allocator.alloc(layout);
            std::ptr::copy_nonoverlapping(p, copy, size);
            copy
        }
    }
}
