//! Memory reuse for the CPU training loop. Every step allocates and frees the same activation buffers.
//! By default glibc serves each block above its mmap threshold from a fresh mmap and unmaps it on
//! free, so every step pays a page fault and a page zeroing for each 4 KiB of them. Two measures:
//!
//! - [`keep_freed_memory`] raises glibc's mmap and trim thresholds to 32 MiB (its maximum), so blocks
//!   up to that size stay in the heap for reuse.
//! - [`RetainingAllocator`], the `retro` binary's global allocator, keeps freed blocks of 32 MiB and
//!   more (the logits and their gradient: [tokens, vocabulary] f32, 206 MB for a micro-batch of
//!   4 x 256 tokens) in a few slots and hands them to the next request of the same size.
//!
//! Measured on the demo's tiny RETRO (12 steps, 2-core EPYC): 2.46 M page faults -> 0.15 M, system time
//! 5.6 s -> 0.7 s, wall 15.2 s -> 12.4 s (docs/architecture.md, "CPU memory").

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator parameters; 32 MiB is glibc's largest mmap threshold.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}

/// Blocks at least this large are retained on free.
pub const RETAINED_MIN_BYTES: usize = 32 << 20;
/// At most this many bytes are held; the oldest retained blocks are released first.
pub const RETAINED_MAX_BYTES: usize = 2 << 30;
const SLOTS: usize = 16;

#[derive(Clone, Copy)]
struct Slot {
    ptr: *mut u8,
    size: usize,
    align: usize,
    /// Insertion order, for releasing the oldest block first.
    age: u64,
}

const EMPTY: Slot = Slot { ptr: std::ptr::null_mut(), size: 0, align: 0, age: 0 };

struct Slots {
    slots: [Slot; SLOTS],
    held: usize,
    clock: u64,
}

/// The system allocator, except that freed blocks of [`RETAINED_MIN_BYTES`] or more are kept (up to
/// [`RETAINED_MAX_BYTES`] in all) and reused for the next allocation of exactly the same size and
/// alignment, instead of being unmapped and faulted in again. Zeroed requests served from a retained
/// block are zeroed with `memset`, which costs a fraction of the page faults it replaces. A spin lock
/// guards the 16 slots (no allocation happens under it); it is held for a scan of the slots only.
pub struct RetainingAllocator {
    lock: AtomicBool,
    state: std::cell::UnsafeCell<Slots>,
}

// SAFETY: `state` is only touched while `lock` is held.
unsafe impl Sync for RetainingAllocator {}

impl Default for RetainingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl RetainingAllocator {
    pub const fn new() -> Self {
        Self {
            lock: AtomicBool::new(false),
            state: std::cell::UnsafeCell::new(Slots { slots: [EMPTY; SLOTS], held: 0, clock: 0 }),
        }
    }

    fn with_slots<R>(&self, f: impl FnOnce(&mut Slots) -> R) -> R {
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference to the slots.
        let r = f(unsafe { &mut *self.state.get() });
        self.lock.store(false, Ordering::Release);
        r
    }

    /// A retained block of exactly this layout, if one is held.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        self.with_slots(|s| {
            let i = s
                .slots
                .iter()
                .position(|b| !b.ptr.is_null() && b.size == layout.size() && b.align == layout.align())?;
            let ptr = s.slots[i].ptr;
            s.held -= s.slots[i].size;
            s.slots[i] = EMPTY;
            Some(ptr)
        })
    }

    /// Keep `ptr` for reuse; returns the blocks that must be released now to stay within the limit
    /// (the block itself when it does not fit at all).
    fn keep(&self, ptr: *mut u8, layout: Layout) -> [Option<(*mut u8, Layout)>; SLOTS + 1] {
        let mut release = [None; SLOTS + 1];
        if layout.size() > RETAINED_MAX_BYTES {
            release[0] = Some((ptr, layout));
            return release;
        }
        self.with_slots(|s| {
            let mut n = 0;
            while s.held + layout.size() > RETAINED_MAX_BYTES || s.slots.iter().all(|b| !b.ptr.is_null()) {
                let (i, oldest) = s
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| !b.ptr.is_null())
                    .min_by_key(|(_, b)| b.age)
                    .map(|(i, b)| (i, *b))
                    .expect("a full or over-limit cache holds a block");
                release[n] =
                    Some((oldest.ptr, Layout::from_size_align(oldest.size, oldest.align).expect("valid layout")));
                n += 1;
                s.held -= oldest.size;
                s.slots[i] = EMPTY;
            }
            let i = s.slots.iter().position(|b| b.ptr.is_null()).expect("a free slot after releasing");
            s.clock += 1;
            s.slots[i] = Slot { ptr, size: layout.size(), align: layout.align(), age: s.clock };
            s.held += layout.size();
        });
        release
    }

    /// Bytes held in retained blocks now.
    pub fn retained_bytes(&self) -> usize {
        self.with_slots(|s| s.held)
    }
}

impl Drop for RetainingAllocator {
    fn drop(&mut self) {
        for b in self.state.get_mut().slots.iter().filter(|b| !b.ptr.is_null()) {
            // SAFETY: a retained block came from `System` with this layout and is owned by the slot.
            unsafe { System.dealloc(b.ptr, Layout::from_size_align_unchecked(b.size, b.align)) }
        }
    }
}

// SAFETY: every block handed out comes from `System` with the same layout it is later freed with;
// retained blocks are owned by the slots until handed out again.
unsafe impl GlobalAlloc for RetainingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= RETAINED_MIN_BYTES {
            if let Some(ptr) = self.take(layout) {
                return ptr;
            }
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= RETAINED_MIN_BYTES {
            if let Some(ptr) = self.take(layout) {
                std::ptr::write_bytes(ptr, 0, layout.size());
                return ptr;
            }
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < RETAINED_MIN_BYTES {
            return System.dealloc(ptr, layout);
        }
        for (p, l) in self.keep(ptr, layout).into_iter().flatten() {
            System.dealloc(p, l);
        }
    }

    /// Resizing stays with the system allocator (glibc moves large blocks with mremap, without a copy);
    /// the resized block is retained when it is freed.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        System.realloc(ptr, layout, new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(n: usize) -> Layout {
        Layout::from_size_align(n, 64).unwrap()
    }

    #[test]
    fn a_freed_large_block_is_reused_zeroed_and_small_blocks_are_not_kept() {
        let a = RetainingAllocator::new();
        let layout = big(RETAINED_MIN_BYTES);
        unsafe {
            let p = a.alloc(layout);
            std::ptr::write_bytes(p, 7, layout.size());
            a.dealloc(p, layout);
            assert_eq!(a.retained_bytes(), layout.size());
            // Another size is not served from it.
            let other = big(RETAINED_MIN_BYTES + 4096);
            let q = a.alloc(other);
            assert_ne!(q, p);
            a.dealloc(q, other);
            // The same size gets the same block back, zeroed when asked.
            let r = a.alloc_zeroed(layout);
            assert_eq!(r, p);
            assert!(std::slice::from_raw_parts(r, layout.size()).iter().all(|&b| b == 0));
            a.dealloc(r, layout);
            let small = Layout::from_size_align(4096, 8).unwrap();
            let s = a.alloc(small);
            a.dealloc(s, small);
            assert_eq!(a.retained_bytes(), layout.size() + other.size());
        }
    }

    #[test]
    fn the_oldest_blocks_are_released_to_stay_within_the_slots() {
        let a = RetainingAllocator::new();
        let layouts: Vec<Layout> = (0..SLOTS + 3).map(|i| big(RETAINED_MIN_BYTES + i * 4096)).collect();
        unsafe {
            let blocks: Vec<*mut u8> = layouts.iter().map(|&l| a.alloc(l)).collect();
            for (&p, &l) in blocks.iter().zip(&layouts) {
                a.dealloc(p, l);
            }
            // The three oldest were released; the newest SLOTS are held.
            let held: usize = layouts[3..].iter().map(|l| l.size()).sum();
            assert_eq!(a.retained_bytes(), held);
            for &l in &layouts[3..] {
                let p = a.alloc(l);
                a.dealloc(p, l);
            }
            assert_eq!(a.retained_bytes(), held);
        }
    }

    #[test]
    fn growing_a_large_vector_keeps_its_contents() {
        let a = RetainingAllocator::new();
        unsafe {
            let l = big(RETAINED_MIN_BYTES);
            let p = a.alloc(l);
            *p = 42;
            *p.add(l.size() - 1) = 43;
            let q = a.realloc(p, l, l.size() * 2);
            assert_eq!((*q, *q.add(l.size() - 1)), (42, 43));
            a.dealloc(q, big(l.size() * 2));
        }
    }
}
