//! Contiguous storage for one tensor: host vectors, or a GPU buffer (`cuda.rs`).

use half::bf16;

#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    #[cfg(not(no_cuda_kernels))]
    Cuda(super::cuda::CudaStorage),
}

impl Storage {
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::I32(v) => v.len(),
            Storage::I64(v) => v.len(),
            #[cfg(not(no_cuda_kernels))]
            Storage::Cuda(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes (the safetensors and checkpoint layout). Host storage only: a device
    /// tensor is copied with `Tensor::to(Device::Cpu)` first.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Storage::F32(v) => bytemuck::cast_slice(v),
            Storage::F64(v) => bytemuck::cast_slice(v),
            Storage::BF16(v) => bytemuck::cast_slice(v),
            Storage::I32(v) => bytemuck::cast_slice(v),
            Storage::I64(v) => bytemuck::cast_slice(v),
            #[cfg(not(no_cuda_kernels))]
            Storage::Cuda(c) => panic!("as_bytes of {c:?}: copy the tensor to the CPU first"),
        }
    }
}
