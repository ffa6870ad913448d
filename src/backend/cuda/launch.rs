//! Shared launch plumbing: grid sizes and a one-call launch for kernels whose arguments are plain
//! values (device addresses are `u64`, sizes `i32` / `u64`, scalars `f32`).

use super::device::cuda_error;
use super::gpu::Gpu;
use crate::Result;
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

/// Blocks for a grid-stride loop over `items` with `block` threads: enough to fill the GPU, no more.
pub fn grid_for(items: u64, block: u32) -> u32 {
    items.div_ceil(block as u64).clamp(1, 65_535 * 8) as u32
}

pub fn config(grid: (u32, u32, u32), block: u32, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes }
}

/// A kernel argument: anything `DeviceRepr`, boxed so a slice of mixed types can be passed.
pub trait Arg {
    fn push<'a>(&'a self, launch: &mut cudarc::driver::LaunchArgs<'a>);
}

impl<T: DeviceRepr> Arg for T {
    fn push<'a>(&'a self, launch: &mut cudarc::driver::LaunchArgs<'a>) {
        launch.arg(self);
    }
}

/// Launch `kernels/<module>.cu::<name>` on the compute stream.
///
/// # Safety
/// `args` must match the kernel's parameter list in order and type, and every device address must
/// point to memory of the extent the kernel will touch for these sizes.
pub unsafe fn launch(gpu: &Gpu, module: &'static str, name: &str, cfg: LaunchConfig, args: &[&dyn Arg]) -> Result<()> {
    let f = gpu.function(module, name)?;
    let mut l = gpu.compute.launch_builder(&f);
    for a in args {
        a.push(&mut l);
    }
    l.launch(cfg).map(|_| ()).map_err(|e| cuda_error(&format!("launching {name}"), e))
}
