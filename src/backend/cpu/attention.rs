//! Scaled dot-product attention, one (batch, head) pair per task.
//!
//! q: [b, sq, h·dh], k and v: [b, sk, h·dh]; head `h` is the column block `h·dh .. (h+1)·dh` of each row,
//! so heads are read and written in place through strides (no transposes). The probabilities
//! P = softmax(scale · q·kᵀ + mask) are kept for the backward ([b, h, sq, sk]).
//! Masks: `causal` hides keys after the query (sq == sk); `key_mask[b·sk + j] == false` hides key j of
//! batch b. A query that sees no key gets a zero output (and zero gradients).

use super::gemm::strided;
use super::SendPtr;
use crate::tensor::Float;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub sq: usize,
    pub sk: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

impl Dims {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale<T: Float>(&self) -> T {
        T::ONE / T::from_f64(self.head_dim as f64).sqrt()
    }
}

/// Returns (output [b, sq, h·dh], probabilities [b, h, sq, sk]).
pub fn forward<T: Float>(q: &[T], k: &[T], v: &[T], key_mask: Option<&[bool]>, dims: Dims) -> (Vec<T>, Vec<T>) {
    let Dims { batch, sq, sk, heads, head_dim: dh, causal } = dims;
    let w = dims.width() as isize;
    let scale = dims.scale::<T>();
    let mut out = vec![T::ZERO; batch * sq * dims.width()];
    let mut probs = vec![T::ZERO; batch * heads * sq * sk];
    let out_ptr = SendPtr(out.as_mut_ptr());
    probs.par_chunks_mut(sq * sk).enumerate().for_each(|(bh, p)| {
        let (b, h) = (bh / heads, bh % heads);
        let col = h * dh;
        let qb = &q[b * sq * dh * heads + col..];
        let kb = &k[b * sk * dh * heads + col..];
        let vb = &v[b * sk * dh * heads + col..];
        // SAFETY: head column blocks of batch b are within the slices; p is [sq, sk].
        unsafe { strided(sq, dh, sk, qb.as_ptr(), w, 1, kb.as_ptr(), 1, w, T::ZERO, p.as_mut_ptr(), sk as isize, 1) };
        let mask = key_mask.map(|m| &m[b * sk..(b + 1) * sk]);
        for (i, row) in p.chunks_mut(sk).enumerate() {
            let visible = |j: usize| (!causal || j <= i) && mask.is_none_or(|m| m[j]);
            let mut max = T::NEG_INFINITY;
            for (j, s) in row.iter_mut().enumerate() {
                if visible(j) {
                    *s *= scale;
                    max = max.max(*s);
                }
            }
            if max == T::NEG_INFINITY {
                row.iter_mut().for_each(|s| *s = T::ZERO);
                continue;
            }
            let mut sum = T::ZERO;
            for (j, s) in row.iter_mut().enumerate() {
                *s = if visible(j) { (*s - max).exp() } else { T::ZERO };
                sum += *s;
            }
            let inv = T::ONE / sum;
            row.iter_mut().for_each(|s| *s *= inv);
        }
        // SAFETY: task (b, h) writes only the head-h column block of batch b's rows.
        unsafe {
            let o = out_ptr.add(b * sq * dh * heads + col);
            strided(sq, sk, dh, p.as_ptr(), sk as isize, 1, vb.as_ptr(), w, 1, T::ZERO, o, w, 1);
        }
    });
    (out, probs)
}

/// Returns (dq, dk, dv) in the layouts of q, k, v.
pub fn backward<T: Float>(dout: &[T], q: &[T], k: &[T], v: &[T], probs: &[T], dims: Dims) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { batch, sq, sk, heads, head_dim: dh, .. } = dims;
    let w = dims.width() as isize;
    let scale = dims.scale::<T>();
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    let (dq_ptr, dk_ptr, dv_ptr) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    (0..batch * heads).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / heads, bh % heads);
        let col = h * dh;
        let (qo, ko) = (b * sq * dh * heads + col, b * sk * dh * heads + col);
        let p = &probs[bh * sq * sk..(bh + 1) * sq * sk];
        let mut ds = vec![T::ZERO; sq * sk];
        // SAFETY: as in forward; each task writes only its own head block of dq, dk, dv.
        unsafe {
            // dP = dO·Vᵀ
            strided(
                sq,
                dh,
                sk,
                dout[qo..].as_ptr(),
                w,
                1,
                v[ko..].as_ptr(),
                1,
                w,
                T::ZERO,
                ds.as_mut_ptr(),
                sk as isize,
                1,
            );
            // dS = P ∘ (dP − rowsum(dP ∘ P)) · scale
            for (dsr, pr) in ds.chunks_mut(sk).zip(p.chunks(sk)) {
                let dot: T = dsr.iter().zip(pr).map(|(&a, &b)| a * b).sum();
                for (x, &pp) in dsr.iter_mut().zip(pr) {
                    *x = pp * (*x - dot) * scale;
                }
            }
            // dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q
            strided(sk, sq, dh, p.as_ptr(), 1, sk as isize, dout[qo..].as_ptr(), w, 1, T::ZERO, dv_ptr.add(ko), w, 1);
            strided(sq, sk, dh, ds.as_ptr(), sk as isize, 1, k[ko..].as_ptr(), w, 1, T::ZERO, dq_ptr.add(qo), w, 1);
            strided(sk, sq, dh, ds.as_ptr(), 1, sk as isize, q[qo..].as_ptr(), w, 1, T::ZERO, dk_ptr.add(ko), w, 1);
        }
    });
    (dq, dk, dv)
}
