//! Compute backends. `cpu` is the reference every kernel is checked against. `cuda` owns the GPU:
//! context, streams, caching allocator, kernel modules, cuBLASLt, and one launcher per kernel family.

pub mod cpu;
pub mod cuda;

use crate::tensor::Device;

/// Why CUDA cannot be used here, or None when it can (kernels compiled, driver and a device present).
pub fn cuda_unavailable() -> Option<String> {
    #[cfg(no_cuda_kernels)]
    return Some(format!("this build has no CUDA kernels ({})", crate::kernels::build::MISSING_REASON));
    #[cfg(not(no_cuda_kernels))]
    {
        if !cuda::driver_present() {
            return Some("no CUDA driver (libcuda.so)".into());
        }
        match cuda::devices() {
            Ok(d) if d.is_empty() => Some("the CUDA driver sees no device".into()),
            Ok(_) => None,
            Err(e) => Some(format!("cannot list CUDA devices: {e}")),
        }
    }
}

/// `--device auto|cpu|cuda`: `auto` takes GPU 0 when CUDA is usable and says what it picked and why.
pub fn select_device(choice: &str) -> crate::Result<Device> {
    select_device_for(choice, 0, true)
}

/// `select_device` for one rank of a job: `gpu` is the GPU it takes (its node-local rank), and only the
/// rank that `announce`s prints what `auto` chose.
pub fn select_device_for(choice: &str, gpu: usize, announce: bool) -> crate::Result<Device> {
    match choice {
        "cpu" => Ok(Device::Cpu),
        "cuda" => match cuda_unavailable() {
            Some(why) => crate::bail!("--device cuda: {why}; use --device cpu"),
            None => Ok(Device::Cuda(gpu)),
        },
        "auto" => match cuda_unavailable() {
            None => {
                if announce {
                    eprintln!("retro: --device auto -> cuda:{gpu}");
                }
                Ok(Device::Cuda(gpu))
            }
            Some(why) => {
                if announce {
                    eprintln!("retro: --device auto -> cpu ({why})");
                }
                Ok(Device::Cpu)
            }
        },
        other => crate::bail!("--device {other:?}: expected auto, cpu or cuda"),
    }
}
