//! NCCL for GPU tensors: one communicator per process on its GPU, over the ranks of a [`World`]. Rank 0
//! makes the unique id and MPI broadcasts it (NCCL's own bootstrap then connects the ranks). Collectives
//! are queued on a stream the caller names: the GPU's compute stream (in stream order with the kernels
//! around them) or the communicator's own (`comm_stream`, for reductions that overlap the backward; the
//! caller orders it against the compute stream with events). With the process's watchdog installed
//! (`watchdog.rs`), the communicator's asynchronous errors end the job, and so does a collective that
//! has run for the timeout (`nccl_in_flight.rs`), after `ncclCommAbort` has freed the streams stuck in
//! its collectives.

use super::nccl_in_flight::InFlight;
use super::watchdog::{self, Polled};
use super::World;
use crate::backend::cuda::device::cuda_error;
use crate::backend::cuda::{DeviceBuffer, Gpu};
use crate::Result;
use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};
use half::bf16;
use std::sync::Arc;

pub struct NcclComm {
    // Dropped (no longer polled) before the communicator is destroyed.
    watched: Option<watchdog::Registered>,
    /// Set by the watchdog's `ncclCommAbort` (which frees the communicator): then not destroyed again.
    aborted: Arc<std::sync::atomic::AtomicBool>,
    /// The collectives queued and not finished, for the watchdog (with one installed).
    in_flight: Option<Arc<InFlight>>,
    comm: sys::ncclComm_t,
    gpu: Arc<Gpu>,
    comm_stream: Arc<CudaStream>,
    rank: usize,
    size: usize,
}

/// What NCCL moves: its datatype for each element type.
pub trait NcclElement {
    const DATATYPE: sys::ncclDataType_t;
}
impl NcclElement for f32 {
    const DATATYPE: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;
}
impl NcclElement for f64 {
    const DATATYPE: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat64;
}
impl NcclElement for bf16 {
    const DATATYPE: sys::ncclDataType_t = sys::ncclDataType_t::ncclBfloat16;
}

/// The communicator as the watchdog thread holds it (NCCL's error query and abort are thread-safe).
struct Handle(sys::ncclComm_t);
// SAFETY: only ncclCommGetAsyncError and ncclCommAbort are called through it, which NCCL allows from
// any thread; the registration is dropped before the communicator is destroyed.
unsafe impl Send for Handle {}

impl Handle {
    // A method, so a closure captures the whole `Handle` (Send), not its raw pointer field.
    fn comm(&self) -> sys::ncclComm_t {
        self.0
    }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> crate::Error {
    crate::Error::msg(format!("NCCL {what}: {e:?}"))
}

/// The NCCL error an asynchronous check found, if any.
fn async_error(comm: sys::ncclComm_t) -> Option<String> {
    let mut state = sys::ncclResult_t::ncclSuccess;
    // SAFETY: `comm` is live (see `Handle`) and `state` receives one value.
    let queried = unsafe { sys::ncclCommGetAsyncError(comm, &mut state) };
    match (queried, state) {
        (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress) => None,
        (sys::ncclResult_t::ncclSuccess, error) => Some(format!("NCCL reported {error:?} on the communicator")),
        (failed, _) => Some(format!("NCCL could not be asked for its errors: {failed:?}")),
    }
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
        // Before the communicator: a failure here leaks nothing.
        let comm_stream = gpu.ctx.new_stream().map_err(|e| cuda_error("creating the communication stream", e))?;
        let mut comm = std::ptr::null_mut();
        {
            let _wait = watchdog::waiting("NCCL communicator set-up");
            // SAFETY: `comm` receives the new communicator; every rank passes the same id and world size.
            unsafe { result::comm_init_rank(&mut comm, size as i32, unique, rank as i32) }
                .map_err(|e| nccl_error(&format!("initialising rank {rank} of {size}"), e))?;
        }
        let aborted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let in_flight = watchdog::installed().map(|_| Arc::new(InFlight::new(gpu.ctx.clone())));
        let watched = watchdog::installed().zip(in_flight.clone()).map(|(w, running)| {
            let (polled, to_abort, flag) = (Handle(comm), Handle(comm), aborted.clone());
            w.register(watchdog::Check {
                poll: Box::new(move || match async_error(polled.comm()) {
                    Some(error) => Polled::Failed(error),
                    None => running.poll(),
                }),
                abort: Box::new(move || {
                    // SAFETY: as in `Handle`; the process ends right after, and `Drop` skips the destroy.
                    drop(unsafe { result::comm_abort(to_abort.comm()) });
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }),
            })
        });
        Ok(Self { watched, aborted, in_flight, comm, gpu, comm_stream, rank, size })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The communicator's own stream (overlapped reductions).
    pub fn comm_stream(&self) -> &Arc<CudaStream> {
        &self.comm_stream
    }

    fn bound(&self) -> Result<()> {
        self.gpu.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))
    }

    fn stream_of(stream: &CudaStream) -> sys::cudaStream_t {
        stream.cu_stream() as sys::cudaStream_t
    }

    /// Queue a collective (`queue`, named `what`) on `stream`, where the watchdog sees it run.
    fn queued(&self, what: &'static str, stream: &CudaStream, queue: impl FnOnce() -> Result<()>) -> Result<()> {
        self.bound()?;
        match &self.in_flight {
            Some(in_flight) => in_flight.bracket(what, stream, queue),
            None => queue(),
        }
    }

    /// In-place element-wise sum of `buf` over all ranks, queued on the compute stream.
    pub fn all_reduce_sum<E: NcclElement>(&self, buf: &DeviceBuffer<E>) -> Result<()> {
        self.all_reduce_sum_on(buf, &self.gpu.compute)
    }

    /// In-place element-wise sum of `buf` over all ranks, queued on `stream`.
    pub fn all_reduce_sum_on<E: NcclElement>(&self, buf: &DeviceBuffer<E>, stream: &CudaStream) -> Result<()> {
        self.all_reduce_on(buf, sys::ncclRedOp_t::ncclSum, stream)
    }

    /// In-place element-wise maximum of `buf` over all ranks, on the compute stream (the vocab-parallel
    /// cross-entropy's row maxima).
    pub fn all_reduce_max<E: NcclElement>(&self, buf: &DeviceBuffer<E>) -> Result<()> {
        self.all_reduce_on(buf, sys::ncclRedOp_t::ncclMax, &self.gpu.compute)
    }

    fn all_reduce_on<E: NcclElement>(
        &self,
        buf: &DeviceBuffer<E>,
        op: sys::ncclRedOp_t,
        stream: &CudaStream,
    ) -> Result<()> {
        let what = if op == sys::ncclRedOp_t::ncclMax { "all-reduce (max)" } else { "all-reduce" };
        let ptr = buf.ptr() as *mut std::ffi::c_void;
        self.queued(what, stream, || {
            // SAFETY: in place over the buffer's `len` elements, on the stream that orders its users.
            unsafe { result::all_reduce(ptr, ptr, buf.len(), E::DATATYPE, op, self.comm, Self::stream_of(stream)) }
                .map(|_| ())
                .map_err(|e| nccl_error(what, e))
        })
    }

    /// `send` (`size` blocks of `recv.len()` elements) summed over all ranks; this rank's block of the
    /// sum into `recv` (which may be that block of `send`: in place), on the compute stream.
    pub fn reduce_scatter_sum<E: NcclElement>(&self, send: &DeviceBuffer<E>, recv: &DeviceBuffer<E>) -> Result<()> {
        crate::ensure!(
            send.len() == recv.len() * self.size,
            "NCCL reduce-scatter of {} elements into blocks of {} over {} ranks",
            send.len(),
            recv.len(),
            self.size
        );
        let stream = Self::stream_of(&self.gpu.compute);
        self.queued("reduce-scatter", &self.gpu.compute, || {
            // SAFETY: `send` holds size x recv.len() elements and `recv` recv.len(), ordered on the compute stream.
            unsafe {
                result::reduce_scatter(
                    send.ptr() as *const std::ffi::c_void,
                    recv.ptr() as *mut std::ffi::c_void,
                    recv.len(),
                    E::DATATYPE,
                    sys::ncclRedOp_t::ncclSum,
                    self.comm,
                    stream,
                )
            }
            .map(|_| ())
            .map_err(|e| nccl_error("reduce-scatter", e))
        })
    }

    /// Every rank's `send`, in rank order, into `recv` (`size` x `send.len()` elements; `send` may be
    /// this rank's block of `recv`: in place), on the compute stream.
    pub fn all_gather<E: NcclElement>(&self, send: &DeviceBuffer<E>, recv: &DeviceBuffer<E>) -> Result<()> {
        crate::ensure!(
            recv.len() == send.len() * self.size,
            "NCCL all-gather of {} elements into {} over {} ranks",
            send.len(),
            recv.len(),
            self.size
        );
        let stream = Self::stream_of(&self.gpu.compute);
        self.queued("all-gather", &self.gpu.compute, || {
            // SAFETY: as in `reduce_scatter_sum`, with the sizes the other way round.
            unsafe {
                result::all_gather(
                    send.ptr() as *const std::ffi::c_void,
                    recv.ptr() as *mut std::ffi::c_void,
                    send.len(),
                    E::DATATYPE,
                    self.comm,
                    stream,
                )
            }
            .map(|_| ())
            .map_err(|e| nccl_error("all-gather", e))
        })
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Waits for an abort in progress (the watchdog holds the registrations while it aborts).
        self.watched.take();
        if self.aborted.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // SAFETY: the communicator was created by `new`, not aborted, and is not used after this.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
