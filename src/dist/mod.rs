//! The parallel runtime: a [`World`] of processes (MPI under `mpirun`, or a single process), where each
//! rank sits in it ([`ParallelLayout`]: tensor- x data-parallel, Megatron's order), the tensor-parallel
//! group a model's shards live in ([`TensorParallel`]) and, on GPUs, NCCL
//! communicators over it ([`nccl::NcclComm`]).

mod layout;
#[cfg(not(no_cuda_kernels))]
pub mod nccl;
mod tensor_parallel;
mod world;

pub use layout::ParallelLayout;
pub use tensor_parallel::TensorParallel;
pub use world::{launched_by_mpirun, Element, PendingSum, World};
