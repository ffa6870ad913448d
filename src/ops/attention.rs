use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::attention::{self as cpu, Dims};
use crate::tensor::{Float, Tensor};
use crate::{ensure, with_float, Result};
use std::sync::Arc;

/// Which keys a query may attend to.
#[derive(Debug, Clone)]
pub enum AttnMask {
    /// Every query sees every key (bidirectional self-attention, unmasked cross-attention).
    None,
    /// Query i sees keys 0..=i (decoder self-attention); needs as many queries as keys.
    Causal,
    /// `keys[b·sk + j]` says whether key j of batch row b is visible (padding, missing neighbours).
    Keys(Arc<[bool]>),
}

/// Multi-head scaled dot-product attention with softmax scale 1/sqrt(head_dim).
/// q: [b, sq, h·dh], k and v: [b, sk, h·dh] (heads are contiguous column blocks) -> [b, sq, h·dh].
pub fn attention(tape: &mut Tape, q: &Var, k: &Var, v: &Var, heads: usize, mask: &AttnMask) -> Result<Var> {
    let dtype = same_float_dtype("attention", &[q, k, v])?;
    let (qs, ks) = (q.shape(), k.shape());
    ensure!(
        qs.len() == 3 && ks.len() == 3 && k.shape() == v.shape() && qs[0] == ks[0] && qs[2] == ks[2],
        "attention: q {:?}, k {:?}, v {:?} must be [b, sq, w], [b, sk, w], [b, sk, w]",
        qs,
        ks,
        v.shape()
    );
    ensure!(
        heads > 0 && qs[2] % heads == 0,
        "attention: width {} of q {:?} is not divisible by {heads} heads",
        qs[2],
        qs
    );
    let dims = Dims {
        batch: qs[0],
        sq: qs[1],
        sk: ks[1],
        heads,
        head_dim: qs[2] / heads,
        causal: matches!(mask, AttnMask::Causal),
    };
    ensure!(
        !dims.causal || dims.sq == dims.sk,
        "attention: a causal mask needs sq == sk, got q {:?} and k {:?}",
        qs,
        ks
    );
    let key_mask = match mask {
        AttnMask::Keys(m) => {
            ensure!(
                m.len() == dims.batch * dims.sk,
                "attention: key mask of {} entries for k {:?} (expected {})",
                m.len(),
                ks,
                dims.batch * dims.sk
            );
            Some(m.clone())
        }
        _ => None,
    };
    with_float!(dtype, "attention", T => run::<T>(tape, q, k, v, key_mask, dims))
}

fn run<T: Float>(tape: &mut Tape, q: &Var, k: &Var, v: &Var, key_mask: Option<Arc<[bool]>>, dims: Dims) -> Result<Var> {
    let (qv, kv, vv) = (q.value().clone(), k.value().clone(), v.value().clone());
    let (o, probs) = cpu::forward(qv.data::<T>()?, kv.data::<T>()?, vv.data::<T>()?, key_mask.as_deref(), dims);
    let out = Tensor::from_vec(o, q.shape())?;
    Ok(tape.record("attention", &[q, k, v], out, move |g, _| {
        let (dq, dk, dv) =
            cpu::backward(g.data::<T>()?, qv.data::<T>()?, kv.data::<T>()?, vv.data::<T>()?, &probs, dims);
        Ok(vec![
            Some(Tensor::from_vec(dq, qv.shape())?),
            Some(Tensor::from_vec(dk, kv.shape())?),
            Some(Tensor::from_vec(dv, vv.shape())?),
        ])
    }))
}
