//! `World`: the processes of one job. Built with `--features mpi` and started by `mpirun`, it is the MPI
//! world; otherwise (or without a launcher in the environment) it is a single process whose
//! collectives are the identity. CPU tensors move over MPI; GPU tensors over NCCL (`nccl.rs`), whose
//! unique id MPI broadcasts.

use crate::Result;

pub struct World {
    backend: Backend,
    /// This process's index among the ranks on its node, and their number (MPI's shared-memory split):
    /// the GPU a rank uses is its local rank.
    local_rank: usize,
    local_size: usize,
}

enum Backend {
    Single,
    #[cfg(feature = "mpi")]
    Mpi {
        comm: mpi::topology::SimpleCommunicator,
        // Finalizes MPI when the last world holding it is dropped (the job's world and the groups split
        // from it); declared after `comm` so the communicator is freed first.
        _universe: std::rc::Rc<mpi::environment::Universe>,
    },
}

/// What the collectives move: plain numbers MPI has a datatype for.
#[cfg(feature = "mpi")]
pub trait Element: mpi::datatype::Equivalence + Copy {}
#[cfg(not(feature = "mpi"))]
pub trait Element: Copy {}
impl Element for f32 {}
impl Element for f64 {}
impl Element for u8 {}
impl Element for u64 {}

#[cfg(feature = "mpi")]
struct Request(mpi::ffi::MPI_Request);
#[cfg(not(feature = "mpi"))]
enum Request {}

/// A sum over the ranks in flight (`World::start_all_reduce_sum`): it owns both buffers until MPI is done
/// with them; dropping it waits for the reduction.
pub struct PendingSum<T: Element> {
    send: Vec<T>,
    recv: Vec<T>,
    request: Option<Request>,
}

impl<T: Element> PendingSum<T> {
    /// Let MPI progress the reduction; true once it is complete.
    pub fn test(&mut self) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(Request(request)) = &mut self.request {
            let mut done = 0;
            // SAFETY: the request is live (set to null by MPI when it completes).
            unsafe { mpi::ffi::MPI_Test(request, &mut done, mpi::ffi::RSMPI_STATUS_IGNORE) };
            if done == 0 {
                return false;
            }
            self.request = None;
        }
        true
    }

    /// The sum over the ranks, once complete.
    pub fn wait(mut self) -> Vec<T> {
        self.finish();
        std::mem::take(&mut self.recv)
    }

    fn finish(&mut self) {
        #[cfg(feature = "mpi")]
        if let Some(Request(mut request)) = self.request.take() {
            let _wait = super::watchdog::waiting("the wait for a non-blocking MPI all-reduce");
            // SAFETY: as in `test`.
            unsafe { mpi::ffi::MPI_Wait(&mut request, mpi::ffi::RSMPI_STATUS_IGNORE) };
        }
        #[cfg(not(feature = "mpi"))]
        let _ = self.request.take();
        self.send.clear();
    }
}

impl<T: Element> Drop for PendingSum<T> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// True when a launcher (mpirun / srun / hydra) started this process.
pub fn launched_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"].iter().any(|v| std::env::var_os(v).is_some())
}

impl World {
    /// A one-process world.
    pub fn single() -> Self {
        Self { backend: Backend::Single, local_rank: 0, local_size: 1 }
    }

    /// The MPI world when launched by mpirun and built with MPI; a single process otherwise.
    /// Launched by mpirun without MPI support compiled in is an error (N copies would train alone).
    pub fn init() -> Result<Self> {
        if !launched_by_mpirun() {
            return Ok(Self::single());
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::topology::Communicator;
            let Some(universe) = mpi::initialize() else {
                crate::bail!("MPI was already initialized in this process");
            };
            let comm = universe.world();
            let node = comm.split_shared(comm.rank());
            let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
            let universe = std::rc::Rc::new(universe);
            Ok(Self { backend: Backend::Mpi { comm, _universe: universe }, local_rank, local_size })
        }
        #[cfg(not(feature = "mpi"))]
        crate::bail!("started by an MPI launcher, but this retro was built without MPI: rebuild with `--features mpi`")
    }

    pub fn rank(&self) -> usize {
        match &self.backend {
            Backend::Single => 0,
            #[cfg(feature = "mpi")]
            Backend::Mpi { comm, .. } => {
                use mpi::topology::Communicator;
                comm.rank() as usize
            }
        }
    }

    pub fn size(&self) -> usize {
        match &self.backend {
            Backend::Single => 1,
            #[cfg(feature = "mpi")]
            Backend::Mpi { comm, .. } => {
                use mpi::topology::Communicator;
                comm.size() as usize
            }
        }
    }

    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// In-place element-wise sum over all ranks; every rank receives the same values.
    pub fn all_reduce_sum<T: Element>(&self, buf: &mut [T]) {
        if self.size() > 1 {
            let send = buf.to_vec();
            self.all_reduce_sum_into(&send, buf);
        }
    }

    /// The element-wise sum over all ranks of `send` into `recv` (same length) on every rank.
    pub fn all_reduce_sum_into<T: Element>(&self, send: &[T], recv: &mut [T]) {
        assert_eq!(send.len(), recv.len(), "all-reduce of {} elements into {}", send.len(), recv.len());
        match &self.backend {
            Backend::Single => recv.copy_from_slice(send),
            #[cfg(feature = "mpi")]
            Backend::Mpi { comm, .. } => {
                use mpi::collective::{CommunicatorCollectives, SystemOperation};
                let _wait = super::watchdog::waiting("MPI all-reduce");
                comm.all_reduce_into(send, recv, SystemOperation::sum());
            }
        }
    }

    /// Start summing `send` over all ranks (MPI_Iallreduce) and return at once; the sum is in flight
    /// until `PendingSum::wait`, progressing whenever `PendingSum::test` (or any MPI call) runs. Every
    /// rank must start the same reductions in the same order.
    pub fn start_all_reduce_sum<T: Element>(&self, send: Vec<T>) -> PendingSum<T> {
        match &self.backend {
            Backend::Single => PendingSum { recv: send, send: Vec::new(), request: None },
            #[cfg(feature = "mpi")]
            Backend::Mpi { comm, .. } => {
                use mpi::raw::AsRaw;
                let mut recv = send.clone();
                let mut request = unsafe { mpi::ffi::RSMPI_REQUEST_NULL };
                // SAFETY: both buffers are heap memory owned by the returned PendingSum, which neither
                // touches nor frees them until MPI reports the request complete (test, wait or drop).
                unsafe {
                    mpi::ffi::MPI_Iallreduce(
                        send.as_ptr().cast(),
                        recv.as_mut_ptr().cast(),
                        send.len() as i32,
                        T::equivalent_datatype().as_raw(),
                        mpi::collective::SystemOperation::sum().as_raw(),
                        comm.as_raw(),
                        &mut request,
                    );
                }
                PendingSum { send, recv, request: Some(Request(request)) }
            }
        }
    }

    /// In-place element-wise maximum over all ranks (vocab-parallel cross-entropy's row maxima).
    pub fn all_reduce_max<T: Element>(&self, buf: &mut [T]) {
        #[cfg(feature = "mpi")]
        if let Backend::Mpi { comm, .. } = &self.backend {
            use mpi::collective::{CommunicatorCollectives, SystemOperation};
            let send = buf.to_vec();
            let _wait = super::watchdog::waiting("MPI all-reduce (max)");
            comm.all_reduce_into(&send[..], buf, SystemOperation::max());
        }
        #[cfg(not(feature = "mpi"))]
        let _ = buf;
    }

    /// The ranks that give the same `color` as a world of their own (MPI_Comm_split), ordered by `key`:
    /// a tensor- or data-parallel group. A collective: every rank calls it.
    pub fn split(&self, color: usize, key: usize) -> Result<World> {
        match &self.backend {
            Backend::Single => {
                let _ = (color, key);
                Ok(Self::single())
            }
            #[cfg(feature = "mpi")]
            Backend::Mpi { comm, _universe } => {
                use mpi::topology::{Color, Communicator};
                let _wait = super::watchdog::waiting("MPI communicator split");
                let Some(group) = comm.split_by_color_with_key(Color::with_value(color as i32), key as i32) else {
                    crate::bail!("MPI_Comm_split of rank {} with color {color} gave no communicator", self.rank());
                };
                let backend = Backend::Mpi { comm: group, _universe: _universe.clone() };
                Ok(Self { backend, local_rank: self.local_rank, local_size: self.local_size })
            }
        }
    }

    /// `send` (`size` blocks of `recv.len()` elements) summed over all ranks; this rank receives block
    /// `rank` of the sum (MPI_Reduce_scatter_block).
    pub fn reduce_scatter_sum<T: Element>(&self, send: &[T], recv: &mut [T]) {
        assert_eq!(
            send.len(),
            recv.len() * self.size(),
            "reduce-scatter of {} into blocks of {}",
            send.len(),
            recv.len()
        );
        match &self.backend {
            Backend::Single => recv.copy_from_slice(send),
            #[cfg(feature = "mpi")]
            Backend::Mpi { comm, .. } => {
                use mpi::collective::{CommunicatorCollectives, SystemOperation};
                let _wait = super::watchdog::waiting("MPI reduce-scatter");
                comm.reduce_scatter_block_into(send, recv, SystemOperation::sum());
            }
        }
    }

    /// Every rank's `send`, in rank order, into `recv` (`size` x `send.len()` elements) on every rank.
    pub fn all_gather<T: Element>(&self, send: &[T], recv: &mut [T]) {
        assert_eq!(recv.len(), send.len() * self.size(), "all-gather of {} into {}", send.len(), recv.len());
        match &self.backend {
            Backend::Single => recv.copy_from_slice(send),
            #[cfg(feature = "mpi")]
            Backend::Mpi { comm, .. } => {
                use mpi::collective::CommunicatorCollectives;
                let _wait = super::watchdog::waiting("MPI all-gather");
                comm.all_gather_into(send, recv);
            }
        }
    }

    /// Every rank's `send` (all of one length), in rank order, on rank `root` only (MPI_Gather): `Some` there,
    /// `None` on the others.
    pub fn gather_to<T: Element>(&self, send: &[T], root: usize) -> Option<Vec<T>> {
        match &self.backend {
            Backend::Single => {
                let _ = root;
                Some(send.to_vec())
            }
            #[cfg(feature = "mpi")]
            Backend::Mpi { comm, .. } => {
                use mpi::topology::Communicator;
                use mpi::traits::Root;
                let _wait = super::watchdog::waiting("MPI gather");
                let at = comm.process_at_rank(root as i32);
                if self.rank() == root {
                    let mut recv = send.repeat(self.size());
                    at.gather_into_root(send, &mut recv[..]);
                    Some(recv)
                } else {
                    at.gather_into(send);
                    None
                }
            }
        }
    }

    /// Overwrite `buf` on every rank with rank `root`'s values.
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: usize) {
        #[cfg(feature = "mpi")]
        if let Backend::Mpi { comm, .. } = &self.backend {
            use mpi::topology::Communicator;
            use mpi::traits::Root;
            let _wait = super::watchdog::waiting("MPI broadcast");
            comm.process_at_rank(root as i32).broadcast_into(buf);
        }
        #[cfg(not(feature = "mpi"))]
        let _ = (buf, root);
    }

    /// Overwrite `buf` on every rank with rank `root`'s bytes (the NCCL unique id's way to every rank).
    pub fn broadcast_bytes(&self, buf: &mut [u8], root: usize) {
        self.broadcast(buf, root)
    }

    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Backend::Mpi { comm, .. } = &self.backend {
            use mpi::collective::CommunicatorCollectives;
            let _wait = super::watchdog::waiting("MPI barrier");
            comm.barrier();
        }
    }

    /// End every process of the job with `code` (MPI_Abort): what a rank that failed does, so that no
    /// other rank waits forever in a collective. A single process just exits.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Backend::Mpi { comm, .. } = &self.backend {
            use mpi::topology::Communicator;
            comm.abort(code)
        }
        std::process::exit(code)
    }

    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Single => "single process".into(),
            #[cfg(feature = "mpi")]
            Backend::Mpi { .. } => format!(
                "MPI, rank {} of {} (local rank {} of {} on this node)",
                self.rank(),
                self.size(),
                self.local_rank,
                self.local_size
            ),
        }
    }
}
