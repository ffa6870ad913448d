//! Rotary position embeddings (Megatron's `--use-rotary-position-embeddings`, non-interleaved), applied
//! to the queries and keys of a fused QKV projection `[b, s, ·]` (column blocks Q | K | V, heads of
//! `head_dim` contiguous in each): the first `heads` heads of a row, Q's and K's. In each head the first
//! `dim` features turn: with half = dim / 2, the pair
//! (x[i], x[i + half]) at position t turns by the angle t · base^(−2i/dim), i.e.
//! `y = x·cos + rotate_half(x)·sin` with `rotate_half(x) = [−x₂, x₁]`; the rest of the head and V pass
//! through. The backward turns the gradient back (the transpose: the angle's negative). CPU only so far.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{ensure, with_float, Result};
use std::sync::Arc;

/// Megatron's `rotary_base`.
const BASE: f64 = 10000.0;

/// qkv: [b, s, width] whose row j of each sequence is position `first_position + j` -> the same with the
/// first `heads` heads of `dh` columns (the queries' and the keys') turned.
pub fn rotary_qkv(
    tape: &mut Tape,
    qkv: &Var,
    dh: usize,
    heads: usize,
    dim: usize,
    first_position: usize,
) -> Result<Var> {
    let dtype = same_float_dtype("rotary_qkv", &[qkv])?;
    super::cuda::cpu_only("rotary_qkv", qkv, "runs on the CPU only so far; rotary embeddings have no GPU path yet")?;
    let shape = qkv.shape().to_vec();
    ensure!(
        shape.len() == 3 && heads * dh <= shape[2],
        "rotary_qkv: qkv {shape:?} must be [b, s, width] holding {heads} heads of {dh} to turn"
    );
    let (s, width) = (shape[1], shape[2]);
    ensure!(
        dim >= 2 && dim % 2 == 0 && dim <= dh,
        "rotary_qkv: {dim} rotated dimensions of heads of {dh}: need an even number in 2..={dh}"
    );
    let half = dim / 2;
    // cos and sin of every (position, pair), in f64.
    let angles: Arc<[(f64, f64)]> = (0..s)
        .flat_map(|j| {
            let t = (first_position + j) as f64;
            (0..half).map(move |i| (t * BASE.powf(-2.0 * i as f64 / dim as f64)).sin_cos())
        })
        .map(|(sin, cos)| (cos, sin))
        .collect();
    let turn = move |data: &mut [f64], direction: f64| {
        for (row, chunk) in data.chunks_mut(width).enumerate() {
            let at = &angles[(row % s) * half..(row % s + 1) * half];
            for head in chunk[..heads * dh].chunks_mut(dh) {
                for (i, &(cos, sin)) in at.iter().enumerate() {
                    let (x1, x2) = (head[i], head[i + half]);
                    let sin = direction * sin;
                    head[i] = x1 * cos - x2 * sin;
                    head[i + half] = x2 * cos + x1 * sin;
                }
            }
        }
    };
    with_float!(dtype, "rotary_qkv", T => {
        let mut y: Vec<f64> = qkv.value().data::<T>()?.iter().map(|v| v.to_f64()).collect();
        turn(&mut y, 1.0);
        let out = Tensor::from_vec(y.into_iter().map(T::from_f64).collect::<Vec<T>>(), &shape)?;
        Ok(tape.record("rotary_qkv", &[qkv], out, move |g, _| {
            let mut dx: Vec<f64> = g.data::<T>()?.iter().map(|v| v.to_f64()).collect();
            turn(&mut dx, -1.0);
            Ok(vec![Some(Tensor::from_vec(dx.into_iter().map(T::from_f64).collect::<Vec<T>>(), &shape)?)])
        }))
    })
}
