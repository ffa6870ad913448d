//! The residual stream's ops: element-wise add (residual connections); the CCA's row shift is
//! `ops::shift_rows` (layout.rs). On the GPU: backend/cuda/residual.rs and kernels/residual.cu.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::elementwise as cpu;
use crate::tensor::{Device, Tensor};
use crate::{ensure, with_float, Result};

/// Element-wise sum of two tensors of one shape (residual connections).
pub fn add(tape: &mut Tape, a: &Var, b: &Var) -> Result<Var> {
    same_float_dtype("add", &[a, b])?;
    ensure!(a.shape() == b.shape(), "add: shapes {:?} and {:?} differ", a.shape(), b.shape());
    let out = crate::profile::timed("add", "forward", || add_tensors(a.value(), b.value()))?;
    Ok(tape.record("add", &[a, b], out, |g, _| Ok(vec![Some(g.clone()), Some(g.clone())])))
}

/// `a + b` for tensors of one shape, dtype and device (also how gradients are accumulated on a GPU).
pub fn add_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure!(
        a.shape() == b.shape() && a.dtype() == b.dtype() && a.device() == b.device(),
        "add: {:?} {} on {} and {:?} {} on {}",
        a.shape(),
        a.dtype(),
        a.device(),
        b.shape(),
        b.dtype(),
        b.device()
    );
    if a.device() != Device::Cpu {
        return on_cuda(a, b);
    }
    with_float!(a.dtype(), "add", T => Tensor::from_vec(cpu::add(a.data::<T>()?, b.data::<T>()?), a.shape()))
}

/// `a += b` in place on a GPU buffer nobody else holds (gradient accumulation, `Tensor::add_assign`).
#[cfg(not(no_cuda_kernels))]
pub fn add_into(a: &mut crate::tensor::cuda::Buffer, b: &Tensor) -> Result<()> {
    use crate::backend::cuda::residual;
    use crate::tensor::cuda::Buffer;
    match a {
        Buffer::F32(x) => {
            let (gpu, y) = b.cuda::<f32>()?;
            residual::add_into(gpu, x, y)
        }
        Buffer::BF16(x) => {
            let (gpu, y) = b.cuda::<half::bf16>()?;
            residual::add_into(gpu, x, y)
        }
        Buffer::I32(_) => crate::bail!("add: i32 tensors are not added on a GPU"),
    }
}

#[cfg(not(no_cuda_kernels))]
fn on_cuda(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    use crate::backend::cuda::residual;
    crate::with_gpu_float!(a.dtype(), "add", E => {
        let ((gpu, x), (_, y)) = (a.cuda::<E>()?, b.cuda::<E>()?);
        Tensor::from_cuda(gpu, residual::add(gpu, x, y)?, a.shape())
    })
}

#[cfg(no_cuda_kernels)]
fn on_cuda(a: &Tensor, _: &Tensor) -> Result<Tensor> {
    crate::bail!("add: a tensor on {} in a build without CUDA kernels", a.device())
}
