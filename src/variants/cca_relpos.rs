//! `cca-relpos`: Megatron's CCA plus a learned relative-position bias on its attention scores, as in the
//! RETRO paper's chunked cross-attention. Query row i of an attending chunk (0..m) and token t of a
//! neighbour (0..r, the neighbour chunk then its continuation) are t − i apart; each head learns one
//! score per distance (`<layer>.cross_attention.relative_position_bias`, [heads, m + r − 1], zeros, so the
//! variant starts as `cca`), shared by the k neighbours. With the m − 1 shift, row i predicts the token the
//! neighbour's continuation holds at t = m + i: one bias entry (distance m) lets every row read it, the
//! copy a near-duplicate neighbour offers. Split by heads under tensor parallelism. CPU only so far.

use super::{Attending, CcaVariant, CcaVariantEntry};
use crate::autograd::{Tape, Var};
use crate::model::params::{Init, ParamBuilder, Split};
use crate::model::RetroConfig;
use crate::nn::CrossAttention;
use crate::ops;
use crate::{ensure, Result};
use std::sync::Arc;

pub const ENTRY: CcaVariantEntry = CcaVariantEntry {
    name: "cca-relpos",
    about: "the CCA with a learned per-head bias for each distance between a chunk row and a neighbour token",
    build,
};

fn build(pb: &mut ParamBuilder, prefix: &str, config: &RetroConfig) -> Arc<dyn CcaVariant> {
    let (m, r) = (config.chunk_length, config.retrieved_length());
    let split = Split::along(0);
    let table =
        pb.add_split(format!("{prefix}.relative_position_bias"), &[config.num_heads, m + r - 1], Init::Zeros, split);
    Arc::new(CcaRelpos { table, chunk_length: m, retrieved_length: r })
}

#[derive(Debug)]
pub struct CcaRelpos {
    /// The parameter index of the bias table [heads, m + r − 1]: column t − i + m − 1 for distance t − i.
    table: usize,
    chunk_length: usize,
    retrieved_length: usize,
}

impl CcaRelpos {
    /// For each (query row, key) pair of `rows` queries starting at `first_row` and `keys` keys (whole
    /// neighbours of r tokens), its distance's column in the table.
    fn columns(&self, first_row: usize, rows: usize, keys: usize) -> Result<Arc<[u32]>> {
        let (m, r) = (self.chunk_length, self.retrieved_length);
        ensure!(
            first_row + rows <= m && keys % r == 0,
            "cca-relpos: rows {first_row}..{} of a {m}-row chunk against {keys} keys (neighbours of {r} tokens)",
            first_row + rows
        );
        Ok((first_row..first_row + rows).flat_map(|i| (0..keys).map(move |j| (j % r + m - 1 - i) as u32)).collect())
    }
}

impl CcaVariant for CcaRelpos {
    fn attend(&self, tape: &mut Tape, p: &[Var], attn: &CrossAttention, rows: &Attending) -> Result<Var> {
        let (queries, keys) = (rows.queries.shape()[1], rows.kv.shape()[1]);
        let bias = ops::take(tape, &p[self.table], self.columns(rows.first_row, queries, keys)?)?;
        let bias = ops::reshape(tape, &bias, &[attn.heads, queries, keys])?;
        rows.cca(tape, p, attn, Some(&bias))
    }
}
