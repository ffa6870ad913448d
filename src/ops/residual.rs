//! The residual stream's ops: element-wise add (residual connections); the CCA's row shift is
//! `ops::shift_rows` (layout.rs). On the GPU: backend/cuda/residual.rs and kernels/residual.cu.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::elementwise as cpu;
use crate::tensor::Tensor;
use crate::{ensure, with_float, Result};

/// Element-wise sum of two tensors of one shape (residual connections).
pub fn add(tape: &mut Tape, a: &Var, b: &Var) -> Result<Var> {
    let dtype = same_float_dtype("add", &[a, b])?;
    ensure!(a.shape() == b.shape(), "add: shapes {:?} and {:?} differ", a.shape(), b.shape());
    crate::profile::timed("add", "forward", || {
        with_float!(dtype, "add", T => {
            let out = Tensor::from_vec(cpu::add(a.value().data::<T>()?, b.value().data::<T>()?), a.shape())?;
            Ok(tape.record("add", &[a, b], out, |g, _| Ok(vec![Some(g.clone()), Some(g.clone())])))
        })
    })
}
