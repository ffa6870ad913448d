//! CUDA through cudarc with dynamic loading: nothing links libcuda at build time, and every entry
//! point first checks that the driver library is present.
//!
//! `Gpu` (gpu.rs) owns the context, the streams, the caching allocator (allocator.rs), the loaded
//! kernel modules (module.rs) and cuBLASLt (blas.rs). One launcher file per kernel family, named like
//! its `kernels/<family>.cu`.

pub mod device;
pub use device::{devices, driver_present, DeviceInfo};

#[cfg(not(no_cuda_kernels))]
pub mod adamw;
#[cfg(not(no_cuda_kernels))]
pub mod allocator;
#[cfg(not(no_cuda_kernels))]
pub mod attention;
#[cfg(not(no_cuda_kernels))]
pub mod blas;
#[cfg(not(no_cuda_kernels))]
pub mod cross_entropy;
#[cfg(not(no_cuda_kernels))]
pub mod dropout;
#[cfg(not(no_cuda_kernels))]
pub mod element;
#[cfg(not(no_cuda_kernels))]
pub mod embedding;
#[cfg(not(no_cuda_kernels))]
pub mod gelu;
#[cfg(not(no_cuda_kernels))]
pub mod gpu;
#[cfg(not(no_cuda_kernels))]
pub mod launch;
#[cfg(not(no_cuda_kernels))]
pub mod layernorm;
#[cfg(not(no_cuda_kernels))]
pub mod linear;
#[cfg(not(no_cuda_kernels))]
pub mod module;
#[cfg(not(no_cuda_kernels))]
pub mod random;
#[cfg(not(no_cuda_kernels))]
pub mod reduce;
#[cfg(not(no_cuda_kernels))]
pub mod residual;
#[cfg(not(no_cuda_kernels))]
pub mod vocab_parallel;

#[cfg(not(no_cuda_kernels))]
pub use gpu::{DeviceBuffer, Gpu};
