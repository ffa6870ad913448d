//! `World`: the processes of one job. Built with `--features mpi` and started by `mpirun`, it is the MPI
//! world; otherwise (or without a launcher in the environment) it is a single process whose
//! collectives are the identity.

use crate::Result;

pub struct World {
    backend: Backend,
}

enum Backend {
    Single,
    #[cfg(feature = "mpi")]
    Mpi {
        comm: mpi::topology::SimpleCommunicator,
        // Finalizes MPI when dropped; declared after `comm` so the communicator goes first.
        _universe: mpi::environment::Universe,
    },
}

/// True when a launcher (mpirun / srun / hydra) started this process.
pub fn launched_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"].iter().any(|v| std::env::var_os(v).is_some())
}

impl World {
    /// A one-process world.
    pub fn single() -> Self {
        Self { backend: Backend::Single }
    }

    /// The MPI world when launched by mpirun and built with MPI; a single process otherwise.
    /// Launched by mpirun without MPI support compiled in is an error (N copies would train alone).
    pub fn init() -> Result<Self> {
        if !launched_by_mpirun() {
            return Ok(Self::single());
        }
        #[cfg(feature = "mpi")]
        {
            let Some(universe) = mpi::initialize() else {
                crate::bail!("MPI was already initialized in this process");
            };
            let comm = universe.world();
            Ok(Self { backend: Backend::Mpi { comm, _universe: universe } })
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

    /// In-place element-wise sum over all ranks.
    pub fn all_reduce_sum_f32(&self, buf: &mut [f32]) {
        self.all_reduce_sum(buf)
    }

    /// In-place element-wise sum over all ranks.
    pub fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        self.all_reduce_sum(buf)
    }

    #[cfg(feature = "mpi")]
    fn all_reduce_sum<T: mpi::datatype::Equivalence + Copy>(&self, buf: &mut [T]) {
        if let Backend::Mpi { comm, .. } = &self.backend {
            use mpi::collective::{CommunicatorCollectives, SystemOperation};
            let send = buf.to_vec();
            comm.all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
    }

    #[cfg(not(feature = "mpi"))]
    fn all_reduce_sum<T>(&self, _buf: &mut [T]) {}

    /// Overwrite `buf` on every rank with rank `root`'s bytes (the NCCL unique id's way to every rank).
    pub fn broadcast_bytes(&self, buf: &mut [u8], root: usize) {
        #[cfg(feature = "mpi")]
        if let Backend::Mpi { comm, .. } = &self.backend {
            use mpi::topology::Communicator;
            use mpi::traits::Root;
            comm.process_at_rank(root as i32).broadcast_into(buf);
        }
        #[cfg(not(feature = "mpi"))]
        let _ = (buf, root);
    }

    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Backend::Mpi { comm, .. } = &self.backend {
            use mpi::collective::CommunicatorCollectives;
            comm.barrier();
        }
    }

    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Single => "single process".into(),
            #[cfg(feature = "mpi")]
            Backend::Mpi { .. } => format!("MPI, rank {} of {}", self.rank(), self.size()),
        }
    }
}
