//! SwiGLU's activation (Megatron's `--swiglu`): x = [a | b] along the last dimension (fc1's two halves)
//! -> silu(a) ∘ b, silu(a) = a · σ(a). Backward: da = g · b · σ(a)(1 + a(1 − σ(a))), db = g · silu(a).
//! Under tensor parallelism each rank's fc1 output holds its part of both halves, so the op is local.
//! CPU only so far.

use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{ensure, with_float, Result};

/// x: [.., 2f] -> [.., f].
pub fn swiglu(tape: &mut Tape, x: &Var) -> Result<Var> {
    let dtype = same_float_dtype("swiglu", &[x])?;
    super::cuda::cpu_only("swiglu", x, "runs on the CPU only so far; --swiglu has no GPU path yet")?;
    let shape = x.shape().to_vec();
    let width = shape.last().copied().unwrap_or(0);
    ensure!(width > 0 && width % 2 == 0, "swiglu: x {shape:?} must have an even, non-zero last dimension");
    let f = width / 2;
    let mut out_shape = shape.clone();
    *out_shape.last_mut().unwrap() = f;
    let sigmoid = |a: f64| 1.0 / (1.0 + (-a).exp());
    with_float!(dtype, "swiglu", T => {
        let xs = x.value().clone();
        let y: Vec<T> = xs
            .data::<T>()?
            .chunks(width)
            .flat_map(|row| (0..f).map(move |i| (row[i].to_f64(), row[f + i].to_f64())))
            .map(|(a, b)| T::from_f64(a * sigmoid(a) * b))
            .collect();
        let out = Tensor::from_vec(y, &out_shape)?;
        Ok(tape.record("swiglu", &[x], out, move |g, _| {
            let mut dx = Vec::with_capacity(xs.numel());
            for (row, grow) in xs.data::<T>()?.chunks(width).zip(g.data::<T>()?.chunks(f)) {
                let (a, b) = row.split_at(f);
                let da = a.iter().zip(b).zip(grow).map(|((&a, &b), &g)| {
                    let (a, s) = (a.to_f64(), sigmoid(a.to_f64()));
                    T::from_f64(g.to_f64() * b.to_f64() * s * (1.0 + a * (1.0 - s)))
                });
                let db = a.iter().zip(grow).map(|(&a, &g)| T::from_f64(g.to_f64() * a.to_f64() * sigmoid(a.to_f64())));
                dx.extend(da.collect::<Vec<T>>());
                dx.extend(db);
            }
            Ok(vec![Some(Tensor::from_vec(dx, xs.shape())?)])
        }))
    })
}
