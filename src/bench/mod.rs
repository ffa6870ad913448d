//! `retro bench`: measurements printed as JSON lines with the shapes, FLOP and byte conventions of
//! `torch_retro/bench.py` (the PyTorch reference's benchmark), so the two compare one to one.

pub mod allreduce;
pub mod attention;
pub mod embed;
pub mod flops;
#[cfg(not(no_cuda_kernels))]
pub mod kernels;
pub mod knn;
pub mod loader;
pub mod train;
