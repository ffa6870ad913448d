//! The parallel runtime: a [`World`] of processes (MPI under `mpirun`, or a single process) and, on
//! GPUs, NCCL communicators over it ([`nccl::NcclComm`]).

#[cfg(not(no_cuda_kernels))]
pub mod nccl;
mod world;

pub use world::World;
