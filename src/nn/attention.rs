use super::{InitStd, Linear};
use crate::autograd::{Tape, Var};
use crate::dist::TensorParallel;
use crate::model::params::ParamBuilder;
use crate::ops::{self, AttnMask};
use crate::{ensure, Result};

/// Multi-head self-attention with a fused QKV projection: `linear_qkv.weight` is `[3d, d]` with row
/// blocks Q | K | V (heads contiguous inside each block), then `linear_proj`. Tensor-parallel: QKV
/// column-parallel and the projection row-parallel, so each rank attends with its own heads. With
/// rotary embeddings the queries and keys are turned by their positions before attending. With
/// grouped-query attention (`kv_heads` < heads) the K and V blocks hold `kv_heads` heads, each shared
/// by heads / kv_heads query heads (a rank holds its query heads' groups).
#[derive(Debug, Clone)]
pub struct SelfAttention {
    pub qkv: Linear,
    pub proj: Linear,
    /// This rank's heads (all of them without tensor parallelism).
    pub heads: usize,
    /// This rank's key / value heads (`heads` without grouped-query attention).
    pub kv_heads: usize,
    pub causal: bool,
    /// Dimensions of each head the rotary embedding turns; `None`: no rotary embedding.
    pub rotary_dim: Option<usize>,
    tensor_parallel: TensorParallel,
}

impl SelfAttention {
    pub fn new(
        pb: &mut ParamBuilder,
        prefix: &str,
        d: usize,
        (heads, kv_heads): (usize, usize),
        causal: bool,
        init: InitStd,
    ) -> Self {
        let kv_width = d / heads * kv_heads;
        let blocks = [heads / kv_heads, 1, 1];
        let tp = pb.tensor_parallel().size();
        Self {
            qkv: Linear::column(pb, &format!("{prefix}.linear_qkv"), d, d + 2 * kv_width, &blocks, init.std),
            proj: Linear::row(pb, &format!("{prefix}.linear_proj"), d, d, init.output_std),
            heads: heads / tp,
            kv_heads: kv_heads / tp,
            causal,
            rotary_dim: None,
            tensor_parallel: pb.tensor_parallel().clone(),
        }
    }

    /// This attention with rotary embeddings on `dim` dimensions of each head (or none).
    pub fn with_rotary(self, dim: Option<usize>) -> Self {
        Self { rotary_dim: dim, ..self }
    }

    /// x: [b, s, d] -> [b, s, d]. With `cache` (generation), x is the one new position [1, 1, d]: its key
    /// and value join the cache and its query attends to every cached position, all at or before it.
    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var, cache: Option<&mut KvCache>) -> Result<Var> {
        let qkv = self.qkv.forward(tape, p, x)?;
        let qkv = match self.rotary_dim {
            // A generated position is the one after those cached.
            Some(dim) => {
                // A cache holds one key per generated position, so a cached step is one position.
                ensure!(
                    cache.is_none() || x.shape()[1] == 1,
                    "self-attention: a cached step takes one position, got {:?}",
                    x.shape()
                );
                let position = cache.as_ref().map_or(0, |c| c.keys.len());
                let dh = qkv.shape()[2] / (self.heads + 2 * self.kv_heads);
                ops::rotary_qkv(tape, &qkv, dh, self.heads + self.kv_heads, dim, position)?
            }
            None => qkv,
        };
        let o = match cache {
            None => {
                let mask = if self.causal { AttnMask::Causal } else { AttnMask::None };
                let drop = attention_dropout(tape, &self.tensor_parallel, self.heads);
                ops::attention_grouped_qkv(tape, &qkv, self.heads, self.kv_heads, &mask, drop)?
            }
            Some(cache) => {
                let dh = qkv.shape()[2] / (self.heads + 2 * self.kv_heads);
                let (d, kv) = (self.heads * dh, self.kv_heads * dh);
                let q = ops::narrow(tape, &qkv, 2, 0, d)?;
                cache.keys.push(ops::narrow(tape, &qkv, 2, d, kv)?);
                cache.values.push(ops::narrow(tape, &qkv, 2, d + kv, kv)?);
                let keys = ops::concat(tape, &cache.keys.iter().collect::<Vec<_>>(), 1)?;
                let values = ops::concat(tape, &cache.values.iter().collect::<Vec<_>>(), 1)?;
                ops::attention(tape, &q, &keys, &values, self.heads, &AttnMask::None)?
            }
        };
        self.proj.forward(tape, p, &o)
    }
}

/// The keys and values of the positions generated so far, each [1, 1, d] (one self-attention's cache).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    keys: Vec<Var>,
    values: Vec<Var>,
}

/// Attention dropout's next mask for a rank's `heads`: a tensor-parallel rank drops exactly what the
/// whole layer drops for those heads, so a split run's masks are the unsplit run's (Megatron instead
/// forks its RNG per rank, and its runs then depend on the split).
fn attention_dropout(tape: &mut Tape, tp: &TensorParallel, heads: usize) -> Option<ops::Dropout> {
    let drop = ops::Dropout::from_tape(tape)?;
    Some(if tp.is_split() { drop.for_heads(tp.rank() * heads, tp.size() * heads) } else { drop })
}

/// Cross-attention: `linear_q` on the queries, `linear_kv` (`[2d, d]`, rows K | V) on the context,
/// then `linear_proj`. Unmasked unless a key mask is given. Tensor-parallel as `SelfAttention`.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    pub q: Linear,
    pub kv: Linear,
    pub proj: Linear,
    /// This rank's heads.
    pub heads: usize,
    tensor_parallel: TensorParallel,
}

impl CrossAttention {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d: usize, heads: usize, init: InitStd) -> Self {
        Self {
            q: Linear::column(pb, &format!("{prefix}.linear_q"), d, d, &[1], init.std),
            kv: Linear::column(pb, &format!("{prefix}.linear_kv"), d, 2 * d, &[1, 1], init.std),
            proj: Linear::row(pb, &format!("{prefix}.linear_proj"), d, d, init.output_std),
            heads: heads / pb.tensor_parallel().size(),
            tensor_parallel: pb.tensor_parallel().clone(),
        }
    }

    /// x: [b, sq, d] queries, context: [b, sk, d] -> [b, sq, d].
    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var, context: &Var, mask: &AttnMask) -> Result<Var> {
        let kv = self.project_kv(tape, p, context)?;
        self.forward_kv(tape, p, x, &kv, mask, None)
    }

    /// The fused K|V projection [b, sk, 2d] of a context (what generation caches per chunk).
    pub fn project_kv(&self, tape: &mut Tape, p: &[Var], context: &Var) -> Result<Var> {
        self.kv.forward(tape, p, context)
    }

    /// `forward` with the context's K|V already projected, and an optional score bias [heads, sq, sk]
    /// (this rank's heads) added before the softmax.
    pub fn forward_kv(
        &self,
        tape: &mut Tape,
        p: &[Var],
        x: &Var,
        kv: &Var,
        mask: &AttnMask,
        bias: Option<&Var>,
    ) -> Result<Var> {
        let q = self.q.forward(tape, p, x)?;
        let drop = attention_dropout(tape, &self.tensor_parallel, self.heads);
        let o = ops::attention_kv(tape, &q, kv, self.heads, mask, bias, drop)?;
        self.proj.forward(tape, p, &o)
    }
}
