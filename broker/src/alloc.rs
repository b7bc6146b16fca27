//! The process allocator: the system's, except that very large requests are served by
//! reserving address space only (`mmap` with `MAP_NORESERVE`), committed page by page as used.
//!
//! Why: `kafka-protocol` 0.18 sizes a decoded array with `Vec::with_capacity(n)` for the `n`
//! read off the wire, before decoding a single element (upstream pull requests #152, #161 and
//! #200 bound it; none is released). A 50-byte request declaring two billion elements asks for
//! a few hundred GB up front; the system allocator refuses, and Rust aborts the process on a
//! refused allocation. Reserved address space is granted, the decode then fails on the missing
//! bytes and the reservation is returned, so a hostile frame costs an error, not the broker.
//! Real data never reaches this size; nothing else changes.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Requests of at least this many bytes are reservations.
const RESERVE_BYTES_MIN: usize = 1 << 32;
const PAGE: usize = 4096;

/// See the module documentation.
#[derive(Debug)]
pub struct Allocator;

fn reserved(layout: &Layout) -> bool {
    layout.size() >= RESERVE_BYTES_MIN && layout.align() <= PAGE
}

// SAFETY: every block comes from the system allocator or from `mmap`, and is returned to the
// one it came from: which one is decided by the layout alone, the same at alloc and dealloc.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !reserved(&layout) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if reserved(&layout) {
            // SAFETY: as `alloc`; anonymous mappings are zeroed.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if reserved(&layout) {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `alloc`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with this alignment is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !reserved(&layout) && !reserved(&new_layout) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing between the two: a new block, the bytes copied, the old block returned.
        // SAFETY: as `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are at least `min(old, new)` bytes and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
