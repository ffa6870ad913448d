//! Tensor storage in GPU memory: one typed buffer from the device's caching allocator, with the `Gpu`
//! (context, compute stream) it belongs to. Cloning shares the buffer: device tensors are never written
//! through a shared handle (every op allocates its output), so sharing is what the host's copy-on-write
//! would give. f32, bf16 and i32 live on the GPU; f64 and i64 are CPU-only dtypes.

use super::{DType, Storage};
use crate::backend::cuda::element::GpuFloat;
use crate::backend::cuda::{DeviceBuffer, Gpu};
use crate::{bail, Result};
use half::bf16;
use std::sync::Arc;

pub enum Buffer {
    F32(DeviceBuffer<f32>),
    BF16(DeviceBuffer<bf16>),
    I32(DeviceBuffer<i32>),
}

#[derive(Clone)]
pub struct CudaStorage {
    gpu: Arc<Gpu>,
    buffer: Arc<Buffer>,
}

/// The float types a device tensor holds, and how to find their buffer.
pub trait CudaFloat: GpuFloat {
    fn buffer(b: &Buffer) -> Option<&DeviceBuffer<Self>>;
    fn wrap(b: DeviceBuffer<Self>) -> Buffer;
}

impl CudaFloat for f32 {
    fn buffer(b: &Buffer) -> Option<&DeviceBuffer<Self>> {
        match b {
            Buffer::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(b: DeviceBuffer<Self>) -> Buffer {
        Buffer::F32(b)
    }
}

impl CudaFloat for bf16 {
    fn buffer(b: &Buffer) -> Option<&DeviceBuffer<Self>> {
        match b {
            Buffer::BF16(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(b: DeviceBuffer<Self>) -> Buffer {
        Buffer::BF16(b)
    }
}

impl CudaStorage {
    pub fn new(gpu: Arc<Gpu>, buffer: Buffer) -> Self {
        Self { gpu, buffer: Arc::new(buffer) }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// The buffer, when no other storage shares it (so it may be written in place).
    pub fn unique_buffer(&mut self) -> Option<&mut Buffer> {
        Arc::get_mut(&mut self.buffer)
    }

    pub fn len(&self) -> usize {
        match &*self.buffer {
            Buffer::F32(b) => b.len(),
            Buffer::BF16(b) => b.len(),
            Buffer::I32(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match &*self.buffer {
            Buffer::F32(_) => DType::F32,
            Buffer::BF16(_) => DType::BF16,
            Buffer::I32(_) => DType::I32,
        }
    }

    /// Copy host storage to `gpu` (queued on its compute stream; returns once the host data was read).
    pub fn upload(gpu: &Arc<Gpu>, host: &Storage) -> Result<Self> {
        let buffer = match host {
            Storage::F32(v) => Buffer::F32(gpu.upload(v)?),
            Storage::BF16(v) => Buffer::BF16(gpu.upload(v)?),
            Storage::I32(v) => Buffer::I32(gpu.upload(v)?),
            Storage::F64(_) | Storage::I64(_) => bail!(
                "{} tensors stay on the CPU: the GPU computes in bf16 and f32 and indexes with i32 (convert with to_dtype first)",
                if matches!(host, Storage::F64(_)) { "f64" } else { "i64" }
            ),
            Storage::Cuda(_) => bail!("upload: the tensor is already on a GPU"),
        };
        Ok(Self::new(gpu.clone(), buffer))
    }

    /// The values in host memory (waits for the compute stream).
    pub fn download(&self) -> Result<Storage> {
        Ok(match &*self.buffer {
            Buffer::F32(b) => Storage::F32(self.gpu.download(b)?),
            Buffer::BF16(b) => Storage::BF16(self.gpu.download(b)?),
            Buffer::I32(b) => Storage::I32(self.gpu.download(b)?),
        })
    }
}

/// Two device storages are equal when they are the same buffer (values are compared on the host).
impl PartialEq for CudaStorage {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage(cuda:{}, {} x {})", self.gpu.ordinal(), self.len(), self.dtype())
    }
}
