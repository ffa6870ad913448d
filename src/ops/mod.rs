//! Differentiable ops: each checks its inputs (errors name the op and the shapes), runs the CPU kernel
//! or the CUDA launcher for the device its inputs are on, and records its hand-written backward on the
//! same tape on both devices. On the GPU the activations are bf16 (or f32), parameters that GEMMs and
//! embeddings read are in the activations' type, LayerNorm's are f32, and weight gradients come out in
//! f32 (Megatron's mixed precision); index tensors (token ids, labels) stay on the host, where they are
//! validated, and are uploaded by the op that reads them.

mod attention;
mod cross_entropy;
pub mod cuda;
mod dropout;
mod embedding;
mod gate;
mod gelu;
mod layernorm;
mod layout;
mod linear;
mod parallel;
mod residual;
mod rotary;
mod scale;
mod swiglu;
mod take;

pub use attention::{
    attention, attention_dropout, attention_grouped_qkv, attention_kv, attention_qkv, AttnMask, Dropout,
};
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use embedding::{embedding, word_position_embedding};
pub use gate::{mul_scalar, tanh};
pub use gelu::{gelu, gelu_erf};
pub use layernorm::{add_layer_norm, layer_norm};
pub use layout::{concat, narrow, pad, reshape, shift_rows};
pub use linear::linear;
pub use parallel::{
    add_bias, copy_to_tensor_parallel, reduce_from_tensor_parallel, vocab_parallel_cross_entropy,
    vocab_parallel_embedding,
};
#[cfg(not(no_cuda_kernels))]
pub use residual::add_into;
pub use residual::{add, add_tensors};
pub use rotary::rotary_qkv;
pub use scale::{scale, scale_tensor};
pub use swiglu::swiglu;
pub use take::take;

use crate::autograd::Var;
use crate::{ensure, Result};

/// All vars must share one float dtype and one device; returns the dtype.
fn same_float_dtype(op: &str, vars: &[&Var]) -> Result<crate::tensor::DType> {
    cuda::same_device(op, vars)?;
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
