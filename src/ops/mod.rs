//! Differentiable ops: each checks its inputs (errors name the op and the shapes), runs the backend
//! kernel, and records its hand-written backward on the tape.

mod attention;
mod cross_entropy;
mod dropout;
mod embedding;
mod gelu;
mod layernorm;
mod layout;
mod linear;
mod residual;
mod scale;

pub use attention::{attention, attention_dropout, attention_kv, attention_qkv, AttnMask, Dropout};
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use embedding::embedding;
pub use gelu::{gelu, gelu_erf};
pub use layernorm::layer_norm;
pub use layout::{concat, narrow, pad, reshape, shift_rows};
pub use linear::linear;
pub use residual::add;
pub use scale::scale;

use crate::autograd::Var;
use crate::{ensure, Result};

/// All vars must share one float dtype; returns it.
fn same_float_dtype(op: &str, vars: &[&Var]) -> Result<crate::tensor::DType> {
    let dtype = vars[0].dtype();
    ensure!(dtype.is_float(), "{op}: expected a float tensor, got {dtype} of shape {:?}", vars[0].shape());
    for v in vars {
        ensure!(
            v.dtype() == dtype,
            "{op}: dtypes differ: {} {:?} and {} {:?}",
            dtype,
            vars[0].shape(),
            v.dtype(),
            v.shape()
        );
    }
    Ok(dtype)
}
