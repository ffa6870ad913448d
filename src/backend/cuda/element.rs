//! The element types of GPU activations: bf16 for training, f32 for exact checks against the CPU. Every
//! element-wise kernel exists as `<name>_bf16` and `<name>_f32` (kernels/common.cuh's RETRO_BF16_AND_F32).

use super::blas::ElementType;
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::bf16;

pub trait GpuFloat: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// The kernel-name suffix.
    const NAME: &'static str;
    const BLAS: ElementType;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl GpuFloat for bf16 {
    const NAME: &'static str = "bf16";
    const BLAS: ElementType = ElementType::BF16;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl GpuFloat for f32 {
    const NAME: &'static str = "f32";
    const BLAS: ElementType = ElementType::F32;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

/// `<base>_<element>`: the entry point of kernel template `base` for `E`.
pub fn kernel<E: GpuFloat>(base: &str) -> String {
    format!("{base}_{}", E::NAME)
}
