//! CUDA through cudarc with dynamic loading: nothing links libcuda at build time, and every entry
//! point first checks that the driver library is present.

#[cfg(not(no_cuda_kernels))]
pub mod adamw;
pub mod device;
#[cfg(not(no_cuda_kernels))]
pub mod module;

pub use device::{devices, driver_present, DeviceInfo};
