//! NCCL for GPU tensors: one communicator per process on its GPU, over the ranks of a [`World`]. Rank 0
//! makes the unique id and MPI broadcasts it (NCCL's own bootstrap then connects the ranks); collectives
//! are queued on the GPU's compute stream, in stream order with the kernels around them.

use super::World;
use crate::backend::cuda::device::cuda_error;
use crate::backend::cuda::{DeviceBuffer, Gpu};
use crate::Result;
use cudarc::nccl::{result, sys};
use std::sync::Arc;

pub struct NcclComm {
    comm: sys::ncclComm_t,
    gpu: Arc<Gpu>,
    rank: usize,
    size: usize,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> crate::Error {
    crate::Error::msg(format!("NCCL {what}: {e:?}"))
}

impl NcclComm {
    /// A communicator over every rank of `world`, each on its own `gpu` (collective: every rank calls it).
    pub fn new(world: &World, gpu: Arc<Gpu>) -> Result<Self> {
        // SAFETY: only probes whether libnccl.so can be opened (a call without it would panic).
        if !unsafe { sys::is_culib_present() } {
            crate::bail!("libnccl.so is not found (install NCCL or add its directory to LD_LIBRARY_PATH)");
        }
        let (rank, size) = (world.rank(), world.size());
        let mut id = [0u8; 128];
        if rank == 0 {
            let unique = result::get_uniqueid().map_err(|e| nccl_error("making the unique id", e))?;
            for (dst, src) in id.iter_mut().zip(unique.internal) {
                *dst = src as u8;
            }
        }
        world.broadcast_bytes(&mut id, 0);
        let unique = sys::ncclUniqueId { internal: id.map(|b| b as std::ffi::c_char) };
        gpu.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the new communicator; every rank passes the same id and world size.
        unsafe { result::comm_init_rank(&mut comm, size as i32, unique, rank as i32) }
            .map_err(|e| nccl_error(&format!("initialising rank {rank} of {size}"), e))?;
        Ok(Self { comm, gpu, rank, size })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// In-place element-wise sum of `buf` over all ranks, queued on the compute stream.
    pub fn all_reduce_sum_f32(&self, buf: &DeviceBuffer<f32>) -> Result<()> {
        self.gpu.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
        let ptr = buf.ptr() as *mut std::ffi::c_void;
        let stream = self.gpu.compute.cu_stream() as sys::cudaStream_t;
        // SAFETY: in place over the buffer's `len` f32 elements, on the stream that orders its users.
        unsafe {
            result::all_reduce(
                ptr,
                ptr,
                buf.len(),
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                stream,
            )
        }
        .map(|_| ())
        .map_err(|e| nccl_error("all-reduce", e))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: the communicator was created by `new` and is not used after this.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
