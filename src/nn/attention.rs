use super::{InitStd, Linear};
use crate::autograd::{Tape, Var};
use crate::model::params::ParamBuilder;
use crate::ops::{self, AttnMask};
use crate::Result;

/// Multi-head self-attention with a fused QKV projection: `linear_qkv.weight` is `[3d, d]` with row
/// blocks Q | K | V (heads contiguous inside each block), then `linear_proj`.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
    pub causal: bool,
}

impl SelfAttention {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d: usize, heads: usize, causal: bool, init: InitStd) -> Self {
        Self {
            qkv: Linear::new(pb, &format!("{prefix}.linear_qkv"), d, 3 * d, init.std),
            proj: Linear::new(pb, &format!("{prefix}.linear_proj"), d, d, init.output_std),
            heads,
            causal,
        }
    }

    /// x: [b, s, d] -> [b, s, d]. With `cache` (generation), x is the one new position [1, 1, d]: its key
    /// and value join the cache and its query attends to every cached position, all at or before it.
    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var, cache: Option<&mut KvCache>) -> Result<Var> {
        let qkv = self.qkv.forward(tape, p, x)?;
        let o = match cache {
            None => {
                let mask = if self.causal { AttnMask::Causal } else { AttnMask::None };
                let drop = ops::Dropout::from_tape(tape);
                ops::attention_qkv(tape, &qkv, self.heads, &mask, drop)?
            }
            Some(cache) => {
                let d = x.shape()[2];
                let q = ops::narrow(tape, &qkv, 2, 0, d)?;
                cache.keys.push(ops::narrow(tape, &qkv, 2, d, d)?);
                cache.values.push(ops::narrow(tape, &qkv, 2, 2 * d, d)?);
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

/// Cross-attention: `linear_q` on the queries, `linear_kv` (`[2d, d]`, rows K | V) on the context,
/// then `linear_proj`. Unmasked unless a key mask is given.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    pub q: Linear,
    pub kv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl CrossAttention {
    pub fn new(pb: &mut ParamBuilder, prefix: &str, d: usize, heads: usize, init: InitStd) -> Self {
        Self {
            q: Linear::new(pb, &format!("{prefix}.linear_q"), d, d, init.std),
            kv: Linear::new(pb, &format!("{prefix}.linear_kv"), d, 2 * d, init.std),
            proj: Linear::new(pb, &format!("{prefix}.linear_proj"), d, d, init.output_std),
            heads,
        }
    }

    /// x: [b, sq, d] queries, context: [b, sk, d] -> [b, sq, d].
    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var, context: &Var, mask: &AttnMask) -> Result<Var> {
        let kv = self.project_kv(tape, p, context)?;
        self.forward_kv(tape, p, x, &kv, mask)
    }

    /// The fused K|V projection [b, sk, 2d] of a context (what generation caches per chunk).
    pub fn project_kv(&self, tape: &mut Tape, p: &[Var], context: &Var) -> Result<Var> {
        self.kv.forward(tape, p, context)
    }

    /// `forward` with the context's K|V already projected.
    pub fn forward_kv(&self, tape: &mut Tape, p: &[Var], x: &Var, kv: &Var, mask: &AttnMask) -> Result<Var> {
        let q = self.q.forward(tape, p, x)?;
        let drop = ops::Dropout::from_tape(tape);
        let o = ops::attention_kv(tape, &q, kv, self.heads, mask, drop)?;
        self.proj.forward(tape, p, &o)
    }
}
