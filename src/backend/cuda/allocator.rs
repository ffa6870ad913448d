//! Caching device allocator. Sizes are rounded to classes (multiples of 512 B up to 1 MiB, of 2 MiB
//! above) and freed blocks go to a per-class free list instead of back to the driver, so a training step
//! that repeats the previous step's allocations calls `cuMemAlloc` only during the first step.
//!
//! Blocks are stream-ordered on the compute stream: a block freed on the host may be handed out again
//! at once, because every kernel that used it was queued on the same stream before any kernel that will
//! use it next. Work on another stream must wait for an event of the compute stream first (see
//! `Gpu::upload_pinned`).
//!
//! With `RETRO_NO_CUDA_MEMORY_CACHING=1` (PyTorch's `PYTORCH_NO_CUDA_MEMORY_CACHING`) every block is
//! exactly the bytes asked for, from the driver, and goes back to it when dropped (after the device has
//! finished with it): slow, but a kernel that reads or writes past its buffer leaves the allocation
//! instead of landing in a size class's slack or a cached neighbour, so compute-sanitizer's memcheck
//! (scripts/gpu-run) and the device emulation's AddressSanitizer build see it.

use super::device::cuda_error;
use crate::Result;
use cudarc::driver::{result, sys, CudaContext};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const SMALL_LIMIT: usize = 1 << 20;
const SMALL_ROUND: usize = 512;
const LARGE_ROUND: usize = 2 << 20;

/// The size class a request of `bytes` is served from.
pub fn size_class(bytes: usize) -> usize {
    let bytes = bytes.max(1);
    if bytes <= SMALL_LIMIT {
        bytes.div_ceil(SMALL_ROUND) * SMALL_ROUND
    } else {
        bytes.div_ceil(LARGE_ROUND) * LARGE_ROUND
    }
}

/// What the allocator holds, in bytes (`retro` reports these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    /// Handed out to live buffers now.
    pub allocated: usize,
    pub peak_allocated: usize,
    /// Obtained from the driver (allocated + cached free blocks).
    pub reserved: usize,
    pub peak_reserved: usize,
    /// `cuMemAlloc` calls so far (constant across steps once the cache is warm).
    pub driver_allocations: u64,
}

#[derive(Default)]
struct Pool {
    free: BTreeMap<usize, Vec<sys::CUdeviceptr>>,
    stats: MemoryStats,
}

pub struct Allocator {
    ctx: Arc<CudaContext>,
    pool: Mutex<Pool>,
    /// False under `RETRO_NO_CUDA_MEMORY_CACHING=1`: exact sizes, freed to the driver.
    caching: bool,
}

/// One device allocation of `size` bytes (its size class; without caching, the bytes asked for),
/// returned to the cache (or the driver) on drop.
pub struct Block {
    ptr: sys::CUdeviceptr,
    size: usize,
    owner: Arc<Allocator>,
}

impl Block {
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let mut pool = self.owner.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.stats.allocated -= self.size;
        if self.owner.caching {
            pool.free.entry(self.size).or_default().push(self.ptr);
            return;
        }
        pool.stats.reserved -= self.size;
        drop(pool);
        // Queued kernels may still use the block: the device finishes them first.
        let freed = self.owner.ctx.synchronize().and_then(|()| {
            // SAFETY: no Block refers to the pointer any more and the device is idle.
            unsafe { result::free_sync(self.ptr) }
        });
        if let Err(e) = freed {
            eprintln!("retro: freeing a device block of {} bytes: {e:?}", self.size);
        }
    }
}

impl Allocator {
    pub fn new(ctx: Arc<CudaContext>) -> Arc<Self> {
        let caching = std::env::var("RETRO_NO_CUDA_MEMORY_CACHING").map_or(true, |v| v != "1");
        Arc::new(Self { ctx, pool: Mutex::new(Pool::default()), caching })
    }

    /// A block of at least `bytes` bytes (exactly `bytes`, at least 1, without caching; uninitialised).
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Block> {
        let size = if self.caching { size_class(bytes) } else { bytes.max(1) };
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let cached = pool.free.get_mut(&size).and_then(Vec::pop);
        let ptr = match cached {
            Some(ptr) => ptr,
            None => {
                let ptr = match self.driver_alloc(size) {
                    Ok(ptr) => ptr,
                    Err(_) => {
                        // Out of memory with blocks cached in other classes: give those back, retry once.
                        self.release_cached(&mut pool)?;
                        self.driver_alloc(size).map_err(|e| {
                            cuda_error(
                                &format!(
                                    "allocating {size} bytes ({} allocated, {} reserved, peak {})",
                                    pool.stats.allocated, pool.stats.reserved, pool.stats.peak_allocated
                                ),
                                e,
                            )
                        })?
                    }
                };
                pool.stats.reserved += size;
                pool.stats.peak_reserved = pool.stats.peak_reserved.max(pool.stats.reserved);
                pool.stats.driver_allocations += 1;
                ptr
            }
        };
        pool.stats.allocated += size;
        pool.stats.peak_allocated = pool.stats.peak_allocated.max(pool.stats.allocated);
        Ok(Block { ptr, size, owner: self.clone() })
    }

    pub fn stats(&self) -> MemoryStats {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).stats
    }

    fn driver_alloc(&self, size: usize) -> std::result::Result<sys::CUdeviceptr, cudarc::driver::DriverError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: a plain device allocation; the pointer is owned by this allocator until freed.
        unsafe { result::malloc_sync(size) }
    }

    fn release_cached(&self, pool: &mut Pool) -> Result<()> {
        self.ctx.synchronize().map_err(|e| cuda_error("synchronising before freeing cached blocks", e))?;
        for (size, ptrs) in std::mem::take(&mut pool.free) {
            for ptr in ptrs {
                // SAFETY: the block is cached (no live Block refers to it) and the device is idle.
                unsafe { result::free_sync(ptr) }.map_err(|e| cuda_error("freeing a cached block", e))?;
                pool.stats.reserved -= size;
            }
        }
        Ok(())
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.release_cached(&mut pool);
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_and_separate_small_from_large() {
        assert_eq!(size_class(0), 512);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class((2 << 20) + 1), 4 << 20);
    }
}
