//! glibc malloc tuning for the training loop. Activations of a few MB are allocated and freed by every
//! op; by default glibc serves each from a fresh mmap and unmaps it on free, so every step pays page
//! faults and page zeroing for all of them (about 10% of a CPU step). Raising the mmap and trim
//! thresholds keeps that memory in the heap for reuse. Call once at start-up; a no-op off glibc.

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
