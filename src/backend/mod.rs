//! Compute backends. `cpu` is the reference every kernel is checked against. `cuda` finds the driver
//! and devices, loads the embedded kernel modules and launches them; it grows into the full GPU
//! backend (storage, allocator, every op) in [cuda-core].

pub mod cpu;
pub mod cuda;

use crate::tensor::Device;

/// `--device auto|cpu|cuda`. Training on CUDA arrives with the CUDA backend ([cuda-core]); until then
/// `cuda` is an error and `auto` says why it picked the CPU.
pub fn select_device(choice: &str) -> crate::Result<Device> {
    match choice {
        "cpu" => Ok(Device::Cpu),
        "cuda" => crate::bail!(
            "--device cuda: this build has no CUDA training backend yet (it comes with [cuda-core]); use --device cpu"
        ),
        "auto" => {
            let why = if cuda::driver_present() {
                "a GPU driver is present, but the CUDA training backend is not built yet"
            } else {
                "no CUDA driver"
            };
            eprintln!("retro: --device auto -> cpu ({why})");
            Ok(Device::Cpu)
        }
        other => crate::bail!("--device {other:?}: expected auto, cpu or cuda"),
    }
}
