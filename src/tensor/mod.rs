//! `Tensor`: a shape, a dtype and contiguous row-major storage shared by reference counting, in host
//! memory or on a GPU (`Device`). Cloning a tensor is cheap; writing through [`Tensor::data_mut`] copies
//! host storage first if it is shared. Copies between devices are explicit: [`Tensor::to`].

#[cfg(not(no_cuda_kernels))]
pub mod cuda;
mod device;
mod dtype;
mod storage;

pub use device::Device;
pub use dtype::{DType, Element, Float};
pub use storage::Storage;

use crate::{bail, ensure, Result};
use half::bf16;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        ensure!(
            data.len() == numel(shape),
            "Tensor::from_vec: {} elements cannot have shape {:?} ({} elements)",
            data.len(),
            shape,
            numel(shape)
        );
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(T::into_storage(data)) })
    }

    pub fn scalar<T: Element>(value: T) -> Self {
        Self { shape: vec![], storage: Arc::new(T::into_storage(vec![value])) }
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        Self::full(shape, 0.0, dtype)
    }

    /// A tensor filled with `value` (converted to `dtype`; integer dtypes truncate).
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Self {
        let n = numel(shape);
        let storage = match dtype {
            DType::F32 => Storage::F32(vec![value as f32; n]),
            DType::F64 => Storage::F64(vec![value; n]),
            DType::BF16 => Storage::BF16(vec![bf16::from_f64(value); n]),
            DType::I32 => Storage::I32(vec![value as i32; n]),
            DType::I64 => Storage::I64(vec![value as i64; n]),
        };
        Self { shape: shape.to_vec(), storage: Arc::new(storage) }
    }

    /// Build from little-endian bytes (safetensors / checkpoint layout).
    pub fn from_le_bytes(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Self> {
        let n = numel(shape);
        ensure!(
            bytes.len() == n * dtype.size_in_bytes(),
            "Tensor::from_le_bytes: {} bytes cannot hold {:?} of {}",
            bytes.len(),
            shape,
            dtype
        );
        fn read<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
            bytes.chunks_exact(std::mem::size_of::<T>()).map(bytemuck::pod_read_unaligned).collect()
        }
        let storage = match dtype {
            DType::F32 => Storage::F32(read(bytes)),
            DType::F64 => Storage::F64(read(bytes)),
            DType::BF16 => Storage::BF16(read(bytes)),
            DType::I32 => Storage::I32(read(bytes)),
            DType::I64 => Storage::I64(read(bytes)),
        };
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(storage) })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.storage.len()
    }

    /// Size of the last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::BF16(_) => DType::BF16,
            Storage::I32(_) => DType::I32,
            Storage::I64(_) => DType::I64,
            #[cfg(not(no_cuda_kernels))]
            Storage::Cuda(c) => c.dtype(),
        }
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            #[cfg(not(no_cuda_kernels))]
            Storage::Cuda(c) => Device::Cuda(c.gpu().ordinal()),
            _ => Device::Cpu,
        }
    }

    /// This tensor on `device`: itself (shared) where it already is, else a copy. On the GPU, f64 and
    /// i64 are refused (convert first); a download waits for the device's compute stream.
    pub fn to(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        #[cfg(not(no_cuda_kernels))]
        {
            let storage = match (&*self.storage, device) {
                (Storage::Cuda(c), Device::Cpu) => c.download()?,
                (Storage::Cuda(_), Device::Cuda(_)) => bail!("copies between GPUs are not supported"),
                (host, Device::Cuda(n)) => {
                    Storage::Cuda(cuda::CudaStorage::upload(&crate::backend::cuda::Gpu::shared(n)?, host)?)
                }
                (_, Device::Cpu) => unreachable!("a host tensor is already on the CPU"),
            };
            Ok(Tensor { shape: self.shape.clone(), storage: Arc::new(storage) })
        }
        #[cfg(no_cuda_kernels)]
        bail!("cannot move a tensor to {device}: this build has no CUDA kernels (nvcc was not found at build time)")
    }

    /// A device tensor around a buffer an op computed.
    #[cfg(not(no_cuda_kernels))]
    pub fn from_cuda<E: cuda::CudaFloat>(
        gpu: &Arc<crate::backend::cuda::Gpu>,
        buffer: crate::backend::cuda::DeviceBuffer<E>,
        shape: &[usize],
    ) -> Result<Tensor> {
        ensure!(
            buffer.len() == numel(shape),
            "Tensor::from_cuda: {} elements cannot have shape {:?}",
            buffer.len(),
            shape
        );
        let storage = Storage::Cuda(cuda::CudaStorage::new(gpu.clone(), E::wrap(buffer)));
        Ok(Tensor { shape: shape.to_vec(), storage: Arc::new(storage) })
    }

    /// The GPU buffer of a device tensor of element type `E`, and its `Gpu`.
    #[cfg(not(no_cuda_kernels))]
    pub fn cuda<E: cuda::CudaFloat>(
        &self,
    ) -> Result<(&Arc<crate::backend::cuda::Gpu>, &crate::backend::cuda::DeviceBuffer<E>)> {
        let found = match &*self.storage {
            Storage::Cuda(c) => E::buffer(c.buffer()).map(|b| (c.gpu(), b)),
            _ => None,
        };
        match found {
            Some(found) => Ok(found),
            None => bail!(
                "expected a GPU tensor of {}, got {} of shape {:?} on {}",
                E::NAME,
                self.dtype(),
                self.shape,
                self.device()
            ),
        }
    }

    /// Panics with the explicit copy to write when host-only code is handed a device tensor.
    fn host(&self, what: &str) -> &Storage {
        let device = self.device();
        assert!(
            device == Device::Cpu,
            "{what}: the tensor of shape {:?} is on {device}; copy it with .to(Device::Cpu) first",
            self.shape
        );
        &self.storage
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// How many tensors share this storage (lets tests observe that saved activations were freed).
    pub fn storage_refs(&self) -> usize {
        Arc::strong_count(&self.storage)
    }

    pub fn data<T: Element>(&self) -> Result<&[T]> {
        ensure!(
            self.device() == Device::Cpu,
            "host data of a tensor of shape {:?} on {}: copy it with .to(Device::Cpu) first",
            self.shape,
            self.device()
        );
        match T::slice(&self.storage) {
            Some(s) => Ok(s),
            None => bail!("tensor of shape {:?} holds {}, not {}", self.shape, self.dtype(), T::DTYPE),
        }
    }

    /// Mutable access; copies the storage first if another tensor shares it.
    pub fn data_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        let (shape, dtype) = (self.shape.clone(), self.dtype());
        ensure!(self.device() == Device::Cpu, "host data of a tensor of shape {shape:?} on {}", self.device());
        match T::slice_mut(Arc::make_mut(&mut self.storage)) {
            Some(s) => Ok(s),
            None => bail!("tensor of shape {:?} holds {}, not {}", shape, dtype, T::DTYPE),
        }
    }

    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.data::<T>()?.to_vec())
    }

    /// The values as f64, whatever the float dtype (integers are converted too). Host tensors only.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self.host("to_f64_vec") {
            Storage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Storage::F64(v) => v.clone(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Storage::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Storage::I64(v) => v.iter().map(|&x| x as f64).collect(),
            #[cfg(not(no_cuda_kernels))]
            Storage::Cuda(_) => unreachable!("host() checked the device"),
        }
    }

    /// The same data viewed with another shape (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        ensure!(
            numel(shape) == self.numel(),
            "reshape: cannot view {:?} ({} elements) as {:?}",
            self.shape,
            self.numel(),
            shape
        );
        Ok(Tensor { shape: shape.to_vec(), storage: self.storage.clone() })
    }

    /// Convert to another dtype (float <-> float, int <-> int, int -> float). Same dtype: no copy.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        ensure!(
            self.device() == Device::Cpu,
            "to_dtype: converting {} to {} on {} is not supported; convert on the CPU before the copy",
            self.dtype(),
            dtype,
            self.device()
        );
        let storage = match (&*self.storage, dtype) {
            (Storage::I32(v), DType::I64) => Storage::I64(v.iter().map(|&x| x as i64).collect()),
            (Storage::I64(v), DType::I32) => {
                let mut out = Vec::with_capacity(v.len());
                for &x in v.iter() {
                    match i32::try_from(x) {
                        Ok(y) => out.push(y),
                        Err(_) => bail!("to_dtype: value {x} of an i64 tensor does not fit in i32"),
                    }
                }
                Storage::I32(out)
            }
            (_, DType::F32) => Storage::F32(self.to_f64_vec().into_iter().map(|x| x as f32).collect()),
            (_, DType::F64) => Storage::F64(self.to_f64_vec()),
            (_, DType::BF16) => Storage::BF16(self.to_f64_vec().into_iter().map(bf16::from_f64).collect()),
            (_, to) => bail!("to_dtype: cannot convert {} to {}", self.dtype(), to),
        };
        Ok(Tensor { shape: self.shape.clone(), storage: Arc::new(storage) })
    }

    /// Index values (i32 or i64) as i64.
    pub fn indices(&self) -> Result<Vec<i64>> {
        ensure!(self.device() == Device::Cpu, "index tensors are read on the CPU, this one is on {}", self.device());
        match &*self.storage {
            Storage::I64(v) => Ok(v.clone()),
            Storage::I32(v) => Ok(v.iter().map(|&x| x as i64).collect()),
            _ => bail!("expected an i32 or i64 index tensor, got {} of shape {:?}", self.dtype(), self.shape),
        }
    }

    /// Sum of squares in f64 (gradient norms).
    pub fn sum_squares(&self) -> f64 {
        match self.host("sum_squares") {
            Storage::F32(v) => v.iter().map(|&x| (x as f64) * (x as f64)).sum(),
            Storage::F64(v) => v.iter().map(|&x| x * x).sum(),
            _ => self.to_f64_vec().iter().map(|x| x * x).sum(),
        }
    }

    /// Element-wise `self += other` (same shape, dtype and device); used to accumulate gradients. On a GPU
    /// in place (kernels/residual.cu's add_into) when this tensor is the only handle on its buffer, else
    /// into a new buffer (a device tensor is never written through a shared handle).
    pub fn add_assign(&mut self, other: &Tensor) -> Result<()> {
        ensure!(
            self.shape == other.shape && self.dtype() == other.dtype() && self.device() == other.device(),
            "add_assign: {:?} {} on {} += {:?} {} on {}",
            self.shape,
            self.dtype(),
            self.device(),
            other.shape,
            other.dtype(),
            other.device()
        );
        #[cfg(not(no_cuda_kernels))]
        if self.device() != Device::Cpu {
            if let Some(Storage::Cuda(mine)) = Arc::get_mut(&mut self.storage) {
                if let Some(buffer) = mine.unique_buffer() {
                    return crate::ops::add_into(buffer, other);
                }
            }
            *self = crate::ops::add_tensors(self, other)?;
            return Ok(());
        }
        crate::with_float!(self.dtype(), "add_assign", T => {
            let src = other.data::<T>()?;
            for (a, &b) in self.data_mut::<T>()?.iter_mut().zip(src) {
                *a += b;
            }
        });
        Ok(())
    }

    /// Multiply every element by `factor` (in place on the host; a new buffer on a GPU).
    pub fn scale(&mut self, factor: f64) -> Result<()> {
        #[cfg(not(no_cuda_kernels))]
        if self.device() != Device::Cpu {
            *self = crate::ops::scale_tensor(self, factor)?;
            return Ok(());
        }
        crate::with_float!(self.dtype(), "scale", T => {
            let f = T::from_f64(factor);
            for a in self.data_mut::<T>()?.iter_mut() {
                *a *= f;
            }
        });
        Ok(())
    }
}

/// Tensors are equal when shape, dtype and every element's bits are equal.
impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        if self.device() != Device::Cpu || other.device() != Device::Cpu {
            return self.shape == other.shape && self.storage == other.storage;
        }
        self.shape == other.shape
            && self.storage.as_bytes() == other.storage.as_bytes()
            && self.dtype() == other.dtype()
    }
}
