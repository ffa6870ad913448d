//! Named parameters in a fixed order (Megatron names), how each is initialised, and the registration
//! of all of them as tape leaves for one forward pass.

use crate::autograd::{Tape, Var};
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
}

/// Collects parameter specs while the modules are built; each gets the index modules use to find it.
#[derive(Debug, Default)]
pub struct ParamBuilder {
    specs: Vec<ParamSpec>,
}

impl ParamBuilder {
    pub fn add(&mut self, name: String, shape: &[usize], init: Init) -> usize {
        self.push(ParamSpec { name, shape: shape.to_vec(), init, reads_master: false })
    }

    /// A parameter the GPU op reads in f32 (LayerNorm's).
    pub fn add_master(&mut self, name: String, shape: &[usize], init: Init) -> usize {
        self.push(ParamSpec { name, shape: shape.to_vec(), init, reads_master: true })
    }

    fn push(&mut self, spec: ParamSpec) -> usize {
        debug_assert!(!self.specs.iter().any(|s| s.name == spec.name), "duplicate parameter {}", spec.name);
        self.specs.push(spec);
        self.specs.len() - 1
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
