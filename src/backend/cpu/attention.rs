//! Scaled dot-product attention, one (batch, head) pair per task.
//!
//! Queries are `b·sq` rows and keys / values `b·sk` rows of their buffers; each operand is read in
//! place through a row stride and a column offset ([`Layout`]), so a fused QKV projection
//! `[b, s, 3w]` or a fused KV projection `[b, sk, 2w]` is attended without splitting copies. Head `h`
//! is the column block `h·dh .. (h+1)·dh` of an operand; with grouped-query attention (`kv_group` query
//! heads per key / value head) query head h reads key / value head h / kv_group. The output is `[b, sq, w]`, and the
//! probabilities P = softmax(scale · q·kᵀ + mask) are kept for the backward (`[b, h, sq, sk]`).
//! Masks: `causal` hides keys after the query (sq == sk); `key_mask[b·sk + j] == false` hides key j of
//! batch b. A query that sees no key gets a zero output (and zero gradients). An optional score bias
//! `[heads, sq, sk]`, shared by the batch, is added to the scaled scores before the softmax (a learned
//! relative-position bias); the backward then also gives its gradient per batch row (`[b, h, sq, sk]`).

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
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale<T: Float>(&self) -> T {
        T::ONE / T::from_f64(self.head_dim as f64).sqrt()
    }
}

/// Where one operand's rows live in its buffer: element (row, col) is at `row·stride + offset + col`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    pub stride: usize,
    pub offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub q: Operand,
    pub k: Operand,
    pub v: Operand,
    /// Query heads per key / value head (1: multi-head attention; more: grouped-query attention).
    pub kv_group: usize,
}

impl Layout {
    /// Three separate `[rows, w]` buffers.
    pub fn separate(w: usize) -> Self {
        Self::separate_grouped(w, w)
    }
    /// Q `[rows, w]`, K and V `[rows, kv_w]` (kv_w = w / kv_group), separate.
    pub fn separate_grouped(w: usize, kv_w: usize) -> Self {
        let (q, kv) = (Operand { stride: w, offset: 0 }, Operand { stride: kv_w, offset: 0 });
        Self { q, k: kv, v: kv, kv_group: w / kv_w }
    }
    /// One `[rows, 3w]` buffer with column blocks Q | K | V.
    pub fn packed_qkv(w: usize) -> Self {
        Self::packed_grouped_qkv(w, w)
    }
    /// One `[rows, w + 2·kv_w]` buffer with column blocks Q (w) | K (kv_w) | V (kv_w).
    pub fn packed_grouped_qkv(w: usize, kv_w: usize) -> Self {
        let op = |offset| Operand { stride: w + 2 * kv_w, offset };
        Self { q: op(0), k: op(w), v: op(w + kv_w), kv_group: w / kv_w }
    }
    /// Q in a `[rows, w]` buffer, K | V in one `[rows, 2w]` buffer.
    pub fn packed_kv(w: usize) -> Self {
        Self {
            q: Operand { stride: w, offset: 0 },
            k: Operand { stride: 2 * w, offset: 0 },
            v: Operand { stride: 2 * w, offset: w },
            kv_group: 1,
        }
    }
}

/// Attention dropout: each probability is kept with chance 1 − p and scaled by 1/(1 − p). The mask of
/// (batch, head) pair `bh` is Philox stream `bh` of the op's seed (`crate::philox::keep_mask`, the mask
/// kernels/dropout.cu draws), so it is the same whatever the thread count or device, and the backward
/// regenerates it instead of storing it. A tensor-parallel rank attends with a slice of the layer's
/// heads (`split_heads`): its head h of batch b draws the stream the whole layer's head first + h does,
/// so the masks do not depend on how the heads are split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
    /// (the layer's index of this op's first head, the layer's heads); `None`: the op has all of them.
    pub split_heads: Option<(usize, usize)>,
}

impl Dropout {
    /// Per-element factors (0 or 1/(1 − p)) for `n` probabilities of pair `bh` of an op with `heads`.
    fn factors<T: Float>(&self, bh: usize, heads: usize, n: usize) -> Vec<T> {
        let stream = match self.split_heads {
            None => bh,
            Some((first, all)) => (bh / heads) * all + first + bh % heads,
        };
        super::dropout::factors(self.p, self.seed, stream as u64, n)
    }
}

/// Start of head `h` of batch `b` in an operand with `rows` rows per batch.
fn at(op: Operand, b: usize, rows: usize, h: usize, dh: usize) -> usize {
    b * rows * op.stride + op.offset + h * dh
}

/// Returns (output [b, sq, w], probabilities [b, h, sq, sk]).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    layout: Layout,
    key_mask: Option<&[bool]>,
    bias: Option<&[T]>,
    dropout: Option<Dropout>,
    dims: Dims,
) -> (Vec<T>, Vec<T>) {
    let Dims { batch, sq, sk, heads, head_dim: dh, causal } = dims;
    let w = dims.width();
    let scale = dims.scale::<T>();
    let mut out = vec![T::ZERO; batch * sq * w];
    let mut probs = vec![T::ZERO; batch * heads * sq * sk];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let (qs, ks, vs) = (layout.q.stride as isize, layout.k.stride as isize, layout.v.stride as isize);
    // `move`: the scalars become locals of each task, so the row loops vectorise.
    probs.par_chunks_mut(sq * sk).enumerate().for_each(move |(bh, p)| {
        let (b, h) = (bh / heads, bh % heads);
        let qb = &q[at(layout.q, b, sq, h, dh)..];
        let kb = &k[at(layout.k, b, sk, h / layout.kv_group, dh)..];
        let vb = &v[at(layout.v, b, sk, h / layout.kv_group, dh)..];
        // SAFETY: head blocks of batch b lie within the buffers; p is [sq, sk].
        unsafe { strided(sq, dh, sk, qb.as_ptr(), qs, 1, kb.as_ptr(), 1, ks, T::ZERO, p.as_mut_ptr(), sk as isize, 1) };
        let mask = key_mask.map(|m| &m[b * sk..(b + 1) * sk]);
        let bias = bias.map(|bias| &bias[h * sq * sk..(h + 1) * sq * sk]);
        super::simd::with_avx2(
            #[inline(always)]
            || {
                for (i, row) in p.chunks_mut(sk).enumerate() {
                    // Causal rows only see keys 0..=i; the rest of the row stays zero.
                    let (row, hidden) = row.split_at_mut(if causal { i + 1 } else { sk });
                    hidden.iter_mut().for_each(|s| *s = T::ZERO);
                    // With a bias the row becomes the scaled, biased scores, which the softmax takes as is.
                    let scale = match bias {
                        None => scale,
                        Some(bias) => {
                            row.iter_mut().zip(&bias[i * sk..]).for_each(|(s, &b)| *s = *s * scale + b);
                            T::ONE
                        }
                    };
                    let max = match mask {
                        None => row.iter().copied().fold(T::NEG_INFINITY, T::max),
                        Some(m) => row.iter().zip(m).filter(|(_, &v)| v).map(|(&s, _)| s).fold(T::NEG_INFINITY, T::max),
                    };
                    if max == T::NEG_INFINITY {
                        row.iter_mut().for_each(|s| *s = T::ZERO);
                        continue;
                    }
                    let shift = max * scale;
                    row.iter_mut().for_each(|s| *s = (*s * scale - shift).exp());
                    if let Some(m) = mask {
                        row.iter_mut().zip(m).filter(|(_, &v)| !v).for_each(|(s, _)| *s = T::ZERO);
                    }
                    let inv = T::ONE / row.iter().copied().sum::<T>();
                    row.iter_mut().for_each(|s| *s *= inv);
                }
            },
        );
        // The kept probabilities (P itself is stored for the backward).
        let dropped: Option<Vec<T>> =
            dropout.map(|d| p.iter().zip(d.factors::<T>(bh, heads, sq * sk)).map(|(&x, f)| x * f).collect());
        let pv = dropped.as_deref().unwrap_or(p);
        // SAFETY: task (b, h) writes only the head-h column block of batch b's output rows.
        unsafe {
            let o = out_ptr.add(b * sq * w + h * dh);
            strided(sq, sk, dh, pv.as_ptr(), sk as isize, 1, vb.as_ptr(), vs, 1, T::ZERO, o, w as isize, 1);
        }
    });
    (out, probs)
}

/// Where the backward writes dq, dk, dv: buffers with the layouts of q, k, v (they may be one buffer);
/// and, for a biased forward, the bias gradient of every batch row (`[b, h, sq, sk]`, summed by the caller).
#[derive(Clone, Copy)]
pub struct GradTargets<T> {
    pub dq: SendPtr<T>,
    pub dk: SendPtr<T>,
    pub dv: SendPtr<T>,
    pub dbias: Option<SendPtr<T>>,
}

/// Writes dq, dk, dv (every element of their head blocks) into `targets`.
///
/// # Safety
/// The targets must be valid for the layouts and dims, and not read or written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn backward<T: Float>(
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    layout: Layout,
    dropout: Option<Dropout>,
    dims: Dims,
    targets: GradTargets<T>,
) {
    let Dims { batch, sq, sk, heads, head_dim: dh, .. } = dims;
    let w = dims.width() as isize;
    let scale = dims.scale::<T>();
    let (qs, ks, vs) = (layout.q.stride as isize, layout.k.stride as isize, layout.v.stride as isize);
    // One task per key / value head: its query heads in turn, the first writing dK and dV, the others
    // adding to them (with one query head per key / value head, each head writes its own).
    let group = layout.kv_group;
    (0..batch * heads / group).into_par_iter().for_each(move |bg| {
        let (b, g) = (bg / (heads / group), bg % (heads / group));
        let (ko, vo) = (at(layout.k, b, sk, g, dh), at(layout.v, b, sk, g, dh));
        for h in g * group..(g + 1) * group {
            let bh = b * heads + h;
            let qo = at(layout.q, b, sq, h, dh);
            let beta = if h == g * group { T::ZERO } else { T::ONE };
            let od = &dout[b * sq * dh * heads + h * dh..];
            let p = &probs[bh * sq * sk..(bh + 1) * sq * sk];
            let factors: Option<Vec<T>> = dropout.map(|d| d.factors(bh, heads, sq * sk));
            let kept: Option<Vec<T>> = factors.as_ref().map(|f| p.iter().zip(f).map(|(&x, &f)| x * f).collect());
            let mut ds = vec![T::ZERO; sq * sk];
            // SAFETY: as in forward; each task writes only its own head blocks of dq, dk, dv.
            unsafe {
                // dP = dO·Vᵀ (through the dropout mask when there is one)
                strided(
                    sq,
                    dh,
                    sk,
                    od.as_ptr(),
                    w,
                    1,
                    v[vo..].as_ptr(),
                    1,
                    vs,
                    T::ZERO,
                    ds.as_mut_ptr(),
                    sk as isize,
                    1,
                );
                if let Some(f) = &factors {
                    ds.iter_mut().zip(f).for_each(|(x, &f)| *x *= f);
                }
                // dS = P ∘ (dP − rowsum(dP ∘ P)) · scale; the bias gradient is dS before the scale.
                let mut dbias = targets.dbias.map(|d| std::slice::from_raw_parts_mut(d.add(bh * sq * sk), sq * sk));
                super::simd::with_avx2(
                    #[inline(always)]
                    || {
                        for (i, (dsr, pr)) in ds.chunks_mut(sk).zip(p.chunks(sk)).enumerate() {
                            let dot: T = dsr.iter().zip(pr).map(|(&a, &b)| a * b).sum();
                            match dbias.as_deref_mut() {
                                None => dsr.iter_mut().zip(pr).for_each(|(x, &pp)| *x = pp * (*x - dot) * scale),
                                Some(dbias) => {
                                    for ((x, &pp), db) in dsr.iter_mut().zip(pr).zip(&mut dbias[i * sk..(i + 1) * sk]) {
                                        *db = pp * (*x - dot);
                                        *x = *db * scale;
                                    }
                                }
                            }
                        }
                    },
                );
                // dV = P'ᵀ·dO (P' = the kept probabilities), dQ = dS·K, dK = dSᵀ·Q
                let pv = kept.as_deref().unwrap_or(p);
                strided(sk, sq, dh, pv.as_ptr(), 1, sk as isize, od.as_ptr(), w, 1, beta, targets.dv.add(vo), vs, 1);
                let (dsp, sks) = (ds.as_ptr(), sk as isize);
                strided(sq, sk, dh, dsp, sks, 1, k[ko..].as_ptr(), ks, 1, T::ZERO, targets.dq.add(qo), qs, 1);
                strided(sk, sq, dh, dsp, 1, sks, q[qo..].as_ptr(), qs, 1, beta, targets.dk.add(ko), ks, 1);
            }
        }
    });
}
