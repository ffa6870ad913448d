//! Named parameters in a fixed order (Megatron names), how each is initialised, and the registration
//! of all of them as tape leaves for one forward pass.

use crate::autograd::{Tape, Var};
use crate::dist::TensorParallel;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::{bail, ensure, Result};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std²)
    Normal(f64),
    Zeros,
    Ones,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// On the GPU the op reads the f32 master itself (LayerNorm's weight and bias), not a copy in the
    /// activations' type (what GEMMs and embeddings read).
    pub reads_master: bool,
    /// How tensor-parallel ranks divide it (`shape` is then one rank's part); `None`: every rank holds
    /// all of it (LayerNorms, position embeddings, row-parallel biases).
    pub split: Option<Split>,
}

/// Megatron's division of a parameter among the N ranks of a tensor-parallel group: along `dim`, the
/// parameter is a run of blocks of relative sizes `blocks`; each block is cut into N equal parts and rank
/// r holds part r of every block. A fused QKV weight (row blocks Q | K | V, of relative sizes heads,
/// groups, groups: [1, 1, 1] without grouped-query attention) is split so each rank holds the Q, K and V
/// rows of its own heads; a plain column-parallel weight has one block along dim 0, a row-parallel
/// weight one along dim 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub dim: usize,
    pub blocks: Blocks,
}

/// Relative sizes of at most three blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    sizes: [usize; 3],
    count: usize,
}

impl Blocks {
    /// Blocks of these relative sizes (one to three, each positive).
    pub fn new(sizes: &[usize]) -> Self {
        assert!((1..=3).contains(&sizes.len()) && sizes.iter().all(|&s| s > 0), "blocks {sizes:?}");
        let mut all = [0; 3];
        all[..sizes.len()].copy_from_slice(sizes);
        Self { sizes: all, count: sizes.len() }
    }

    /// `n` blocks of equal size.
    pub fn equal(n: usize) -> Self {
        Self::new(&vec![1; n])
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes[..self.count]
    }

    /// The lengths of the blocks of a dimension of `len`.
    fn lengths(&self, len: usize) -> impl Iterator<Item = usize> + '_ {
        let total: usize = self.sizes().iter().sum();
        self.sizes().iter().map(move |s| len / total * s)
    }
}

impl Split {
    /// Along `dim`, in one block.
    pub fn along(dim: usize) -> Self {
        Self { dim, blocks: Blocks::equal(1) }
    }

    /// One rank's shape of a parameter of `full` shape split `n` ways (the caller has checked that every
    /// block divides by `n`).
    pub fn local_shape(&self, full: &[usize], n: usize) -> Vec<usize> {
        debug_assert!(self.blocks.lengths(full[self.dim]).all(|b| b % n == 0), "{self:?} of {full:?} over {n} ranks");
        let mut shape = full.to_vec();
        shape[self.dim] /= n;
        shape
    }

    /// (elements before `dim`, length of `dim`, elements after it) of `shape`.
    fn strides(&self, shape: &[usize]) -> (usize, usize, usize) {
        (shape[..self.dim].iter().product(), shape[self.dim], shape[self.dim + 1..].iter().product())
    }

    /// Rank `r`'s part (of `n`) of `full` (row-major, shape `full_shape`).
    pub fn shard<T: Copy>(&self, full: &[T], full_shape: &[usize], n: usize, r: usize) -> Vec<T> {
        let (outer, len, inner) = self.strides(full_shape);
        let mut out = Vec::with_capacity(full.len() / n);
        for o in 0..outer {
            let mut start = 0;
            for block in self.blocks.lengths(len) {
                let part = block / n;
                let first = (o * len + start + r * part) * inner;
                out.extend_from_slice(&full[first..first + part * inner]);
                start += block;
            }
        }
        out
    }

    /// The whole parameter from the `n` ranks' parts, concatenated in rank order (`all_gather`), each of
    /// `local_shape`: the inverse of `shard`.
    pub fn assemble<T: Copy>(&self, parts: &[T], local_shape: &[usize], n: usize) -> Vec<T> {
        let (outer, local_len, inner) = self.strides(local_shape);
        let local_numel = outer * local_len * inner;
        let mut out = Vec::with_capacity(parts.len());
        for o in 0..outer {
            let mut start = 0;
            for part in self.blocks.lengths(local_len) {
                for r in 0..n {
                    let first = r * local_numel + (o * local_len + start) * inner;
                    out.extend_from_slice(&parts[first..first + part * inner]);
                }
                start += part;
            }
        }
        out
    }
}

/// Collects parameter specs while the modules are built; each gets the index modules use to find it.
/// For a tensor-parallel model (`tensor_parallel` of more than one rank) split parameters are registered
/// with this rank's shape.
///
/// It also carries the model-wide layer options the layers read while they register their parameters
/// (Megatron's `--disable-bias-linear`, `--apply-layernorm-1p`).
#[derive(Debug, Default)]
pub struct ParamBuilder {
    specs: Vec<ParamSpec>,
    tensor_parallel: TensorParallel,
    /// Linear layers have no bias.
    pub no_linear_bias: bool,
    /// LayerNorm weights are stored as w − 1.
    pub layernorm_1p: bool,
}

impl ParamBuilder {
    pub fn new(tensor_parallel: TensorParallel) -> Self {
        Self { specs: Vec::new(), tensor_parallel, no_linear_bias: false, layernorm_1p: false }
    }

    /// The group the model's split parameters are divided among.
    pub fn tensor_parallel(&self) -> &TensorParallel {
        &self.tensor_parallel
    }

    pub fn add(&mut self, name: String, shape: &[usize], init: Init) -> usize {
        self.push(ParamSpec { name, shape: shape.to_vec(), init, reads_master: false, split: None })
    }

    /// A parameter of `full_shape` divided among the tensor-parallel ranks as `split` says.
    pub fn add_split(&mut self, name: String, full_shape: &[usize], init: Init, split: Split) -> usize {
        let shape = split.local_shape(full_shape, self.tensor_parallel.size());
        self.push(ParamSpec { name, shape, init, reads_master: false, split: Some(split) })
    }

    /// A parameter the GPU op reads in f32 (LayerNorm's).
    pub fn add_master(&mut self, name: String, shape: &[usize], init: Init) -> usize {
        self.push(ParamSpec { name, shape: shape.to_vec(), init, reads_master: true, split: None })
    }

    fn push(&mut self, spec: ParamSpec) -> usize {
        debug_assert!(!self.specs.iter().any(|s| s.name == spec.name), "duplicate parameter {}", spec.name);
        self.specs.push(spec);
        self.specs.len() - 1
    }

    /// How many parameters are registered so far (the index the next one gets).
    pub fn registered(&self) -> usize {
        self.specs.len()
    }

    pub fn finish(self) -> Vec<ParamSpec> {
        self.specs
    }
}

/// The values of a model's parameters, in spec order.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub specs: Vec<ParamSpec>,
    pub tensors: Vec<Tensor>,
}

impl Params {
    /// Initialise every parameter from `seed`, in spec order (deterministic).
    pub fn init(specs: Vec<ParamSpec>, seed: u64, dtype: DType) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let tensors = specs.iter().map(|s| init_tensor(s, &mut rng, dtype)).collect::<Result<Vec<_>>>()?;
        Ok(Self { specs, tensors })
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn dtype(&self) -> DType {
        self.tensors.first().map_or(DType::F32, Tensor::dtype)
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        match self.index(name) {
            Some(i) => Ok(&self.tensors[i]),
            None => bail!("no parameter named {name:?}"),
        }
    }

    pub fn by_name(&self) -> HashMap<&str, &Tensor> {
        self.specs.iter().map(|s| s.name.as_str()).zip(&self.tensors).collect()
    }

    pub fn numel(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }

    /// Every parameter as a differentiable leaf of `tape` (constants in inference mode).
    pub fn leaves(&self, tape: &mut Tape) -> Vec<Var> {
        self.tensors.iter().map(|t| tape.leaf(t.clone())).collect()
    }

    /// The same parameters in another float dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            specs: self.specs.clone(),
            tensors: self.tensors.iter().map(|t| t.to_dtype(dtype)).collect::<Result<_>>()?,
        })
    }

    /// Replace parameter `i`'s value, keeping its shape and dtype.
    pub fn set(&mut self, i: usize, value: Tensor) -> Result<()> {
        let spec = &self.specs[i];
        ensure!(
            value.shape() == spec.shape.as_slice(),
            "parameter {}: shape {:?}, expected {:?}",
            spec.name,
            value.shape(),
            spec.shape
        );
        self.tensors[i] = value.to_dtype(self.dtype())?;
        Ok(())
    }
}

pub fn init_tensor(spec: &ParamSpec, rng: &mut Rng, dtype: DType) -> Result<Tensor> {
    let n = spec.shape.iter().product();
    let values: Vec<f64> = match spec.init {
        Init::Normal(std) => (0..n).map(|_| rng.normal() * std).collect(),
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
    };
    Tensor::from_vec(values, &spec.shape)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::{Blocks, Split};

    #[test]
    fn a_split_gives_each_rank_its_part_of_every_block_and_assembles_back() {
        // [6, 2] with 3 row blocks (Q | K | V of 2 rows each) over 2 ranks: rank 1 holds row 1 of each.
        let full: Vec<u32> = (0..12).collect();
        let qkv = Split { dim: 0, blocks: Blocks::equal(3) };
        assert_eq!(qkv.local_shape(&[6, 2], 2), vec![3, 2]);
        assert_eq!(qkv.shard(&full, &[6, 2], 2, 1), vec![2, 3, 6, 7, 10, 11]);
        let parts = [qkv.shard(&full, &[6, 2], 2, 0), qkv.shard(&full, &[6, 2], 2, 1)].concat();
        assert_eq!(qkv.assemble(&parts, &[3, 2], 2), full);
        // A row-parallel [2, 6] weight: columns 3..6 on rank 1.
        let row = Split::along(1);
        assert_eq!(row.shard(&full, &[2, 6], 2, 1), vec![3, 4, 5, 9, 10, 11]);
        let parts = [row.shard(&full, &[2, 6], 2, 0), row.shard(&full, &[2, 6], 2, 1)].concat();
        assert_eq!(row.assemble(&parts, &[2, 3], 2), full);
        // A bias of 4 in 2 blocks (K | V) over 2 ranks.
        let kv = Split { dim: 0, blocks: Blocks::equal(2) };
        assert_eq!(kv.shard(&[0, 1, 2, 3], &[4], 2, 0), vec![0, 2]);
        // Grouped-query QKV rows of relative sizes 2 | 1 | 1 ([8, 1]: Q rows 0..4, K 4..6, V 6..8) over
        // 2 ranks: rank 1 holds Q rows 2, 3, K row 5 and V row 7.
        let grouped = Split { dim: 0, blocks: Blocks::new(&[2, 1, 1]) };
        let rows: Vec<u32> = (0..8).collect();
        assert_eq!(grouped.shard(&rows, &[8, 1], 2, 1), vec![2, 3, 5, 7]);
        let parts = [grouped.shard(&rows, &[8, 1], 2, 0), grouped.shard(&rows, &[8, 1], 2, 1)].concat();
        assert_eq!(grouped.assemble(&parts, &[4, 1], 2), rows);
    }
}
