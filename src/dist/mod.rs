//! The parallel runtime: a [`World`] of processes (MPI under `mpirun`, or a single process), where each
//! rank sits in it ([`ParallelLayout`]: tensor- x data-parallel, Megatron's order), the tensor-parallel
//! group a model's shards live in ([`TensorParallel`]) and, on GPUs, NCCL
//! communicators over it ([`nccl::NcclComm`]); the watchdog that ends a job whose ranks wait too long
//! for each other ([`watchdog`], `--distributed-timeout-minutes`).

mod layout;
#[cfg(not(no_cuda_kernels))]
pub mod nccl;
#[cfg(not(no_cuda_kernels))]
mod nccl_in_flight;
mod tensor_parallel;
pub mod watchdog;
mod world;

pub use layout::ParallelLayout;
pub use tensor_parallel::TensorParallel;
pub use world::{launched_by_mpirun, Element, PendingSum, World};
