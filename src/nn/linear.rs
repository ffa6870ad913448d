use crate::autograd::{Tape, Var};
use crate::dist::TensorParallel;
use crate::model::params::{Blocks, Init, ParamBuilder, Split};
use crate::ops;
use crate::Result;

/// How a tensor-parallel group divides a linear layer (Megatron's `ColumnParallelLinear` and
/// `RowParallelLinear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    /// Output features divided (block by block: `Split::blocks`): each rank computes its features from
    /// the whole input, whose gradient is summed over the ranks.
    Column,
    /// Input features divided: each rank's partial product is summed over the ranks, then the (whole)
    /// bias added.
    Row,
}

/// `y = x·Wᵀ + b`, W `[out, in]` named `<prefix>.weight`, b `<prefix>.bias` (zero-initialised; none
/// with `--disable-bias-linear`). In a tensor-parallel model W and b are this rank's parts
/// (`Parallel`); alone, the whole layer.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: usize,
    pub bias: Option<usize>,
    pub parallel: Parallel,
    tensor_parallel: TensorParallel,
}

impl Linear {
    /// A column-parallel linear (its output features divided among tensor-parallel ranks), its output
    /// a run of blocks of relative sizes `blocks` (each divided among the ranks).
    pub fn column(pb: &mut ParamBuilder, prefix: &str, d_in: usize, d_out: usize, blocks: &[usize], std: f64) -> Self {
        let split = Split { dim: 0, blocks: Blocks::new(blocks) };
        Self {
            weight: pb.add_split(format!("{prefix}.weight"), &[d_out, d_in], Init::Normal(std), split),
            bias: (!pb.no_linear_bias).then(|| pb.add_split(format!("{prefix}.bias"), &[d_out], Init::Zeros, split)),
            parallel: Parallel::Column,
            tensor_parallel: pb.tensor_parallel().clone(),
        }
    }

    /// A row-parallel linear (its input features divided; the bias whole on every rank).
    pub fn row(pb: &mut ParamBuilder, prefix: &str, d_in: usize, d_out: usize, std: f64) -> Self {
        let split = Split::along(1);
        Self {
            weight: pb.add_split(format!("{prefix}.weight"), &[d_out, d_in], Init::Normal(std), split),
            bias: (!pb.no_linear_bias).then(|| pb.add(format!("{prefix}.bias"), &[d_out], Init::Zeros)),
            parallel: Parallel::Row,
            tensor_parallel: pb.tensor_parallel().clone(),
        }
    }

    pub fn forward(&self, tape: &mut Tape, p: &[Var], x: &Var) -> Result<Var> {
        let (w, b, tp) = (&p[self.weight], self.bias.map(|b| &p[b]), &self.tensor_parallel);
        if !tp.is_split() {
            return ops::linear(tape, x, w, b);
        }
        match self.parallel {
            Parallel::Column => {
                let x = ops::copy_to_tensor_parallel(tape, x, tp)?;
                ops::linear(tape, &x, w, b)
            }
            Parallel::Row => {
                let partial = ops::linear(tape, x, w, None)?;
                let y = ops::reduce_from_tensor_parallel(tape, &partial, tp)?;
                match b {
                    Some(b) => ops::add_bias(tape, &y, b),
                    None => Ok(y),
                }
            }
        }
    }
}
