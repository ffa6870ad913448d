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

/// `--device auto|cpu|cuda` for a command; `gpu_ready` says whether that command runs on the GPU yet
/// (`retro train` and `retro bench train` do; eval and generate do not). `auto` says what it picked and why.
pub fn select_device(choice: &str, command: &str, gpu_ready: bool) -> crate::Result<Device> {
    let not_ready = || {
        format!("{command} runs on the CPU only so far (training runs on the GPU: `retro train`, `retro bench train`)")
    };
    match choice {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if let Some(why) = cuda_unavailable() {
                crate::bail!("--device cuda: {why}; use --device cpu");
            }
            if !gpu_ready {
                crate::bail!("--device cuda: {}; use --device cpu", not_ready());
            }
            Ok(Device::Cuda(0))
        }
        "auto" => match (cuda_unavailable(), gpu_ready) {
            (None, true) => {
                eprintln!("retro: --device auto -> cuda:0");
                Ok(Device::Cuda(0))
            }
            (None, false) => {
                eprintln!("retro: --device auto -> cpu ({})", not_ready());
                Ok(Device::Cpu)
            }
            (Some(why), _) => {
                eprintln!("retro: --device auto -> cpu ({why})");
                Ok(Device::Cpu)
            }
        },
        other => crate::bail!("--device {other:?}: expected auto, cpu or cuda"),
    }
}
