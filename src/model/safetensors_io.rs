//! safetensors files: reading every tensor (with the header metadata), loading model parameters by
//! Megatron name (strict, or non-strict to retro-fit a GPT checkpoint), and saving atomically.

use super::params::{init_tensor, ParamSpec, Params};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::{bail, Context, Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// All tensors of a safetensors file, by name, and its `__metadata__`.
#[derive(Debug, Clone)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&bytes).map_err(|e| e.context(format!("{}", path.display())))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| Error::msg(format!("not a valid safetensors file: {e}")))?;
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| Error::msg(format!("not a valid safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F64 => DType::F64,
                Dtype::BF16 => DType::BF16,
                Dtype::I32 => DType::I32,
                Dtype::I64 => DType::I64,
                other => bail!("tensor {name:?} has dtype {other:?}, which retro does not read"),
            };
            let t = Tensor::from_le_bytes(view.data(), dtype, view.shape())
                .map_err(|e| e.context(format!("tensor {name:?}")))?;
            tensors.insert(name, t);
        }
        Ok(Self { tensors, metadata: header.metadata().clone().unwrap_or_default() })
    }

    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        match self.tensors.get(name) {
            Some(t) => Ok(t),
            None => bail!("tensor {name:?} is missing"),
        }
    }
}

/// What a load found besides the expected parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Parameters the file lacked (initialised fresh in non-strict mode).
    pub missing: Vec<String>,
    /// Names in the file that are not parameters of the model (ignored in non-strict mode).
    pub unexpected: Vec<String>,
}

/// Build `specs`' parameters from `file`. Names starting with one of `data_prefixes` (e.g. `batch.`)
/// are not parameters and are skipped. A shape mismatch is always an error naming the tensor. Strict:
/// missing or unexpected names are an error listing them. Non-strict: missing parameters get their
/// Megatron initialisation from `seed`, and both lists are reported.
pub fn load_params(
    file: &TensorFile,
    specs: &[ParamSpec],
    dtype: DType,
    strict: bool,
    seed: u64,
    data_prefixes: &[&str],
) -> Result<(Params, LoadReport)> {
    let mut report = LoadReport::default();
    let mut rng = Rng::new(seed);
    let mut tensors = Vec::with_capacity(specs.len());
    let mut mismatched = Vec::new();
    for spec in specs {
        match file.tensors.get(&spec.name) {
            Some(t) => {
                if t.shape() != spec.shape.as_slice() {
                    mismatched.push(format!(
                        "tensor {:?} has shape {:?}, but the model config needs {:?}",
                        spec.name,
                        t.shape(),
                        spec.shape
                    ));
                    continue;
                }
                if !t.dtype().is_float() {
                    bail!("tensor {:?} has dtype {}, expected a float dtype", spec.name, t.dtype());
                }
                tensors.push(t.to_dtype(dtype)?);
            }
            None => {
                report.missing.push(spec.name.clone());
                tensors.push(init_tensor(spec, &mut rng, dtype)?);
            }
        }
    }
    if !mismatched.is_empty() {
        bail!("{} shape mismatch(es): {}", mismatched.len(), mismatched.join("; "));
    }
    report.unexpected = file
        .tensors
        .keys()
        .filter(|n| !data_prefixes.iter().any(|p| n.starts_with(p)) && !specs.iter().any(|s| &s.name == *n))
        .cloned()
        .collect();
    if strict && (!report.missing.is_empty() || !report.unexpected.is_empty()) {
        bail!(
            "strict load: {} missing parameter(s) [{}]; {} unexpected tensor(s) [{}]",
            report.missing.len(),
            report.missing.join(", "),
            report.unexpected.len(),
            report.unexpected.join(", ")
        );
    }
    Ok((Params { specs: specs.to_vec(), tensors }, report))
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::BF16 => Dtype::BF16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
    }
}

/// Serialize named tensors with `metadata` (bitwise: the stored bytes are the tensors' bytes). The header
/// is rewritten with its keys sorted (the safetensors crate keeps metadata in a HashMap, whose order
/// changes from process to process), so equal inputs always give equal files.
pub fn serialize(tensors: &[(&str, &Tensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let view =
                safetensors::tensor::TensorView::new(st_dtype(t.dtype()), t.shape().to_vec(), t.storage().as_bytes())
                    .map_err(|e| Error::msg(format!("tensor {name:?}: {e}")))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::msg(format!("safetensors: {e}")))?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte length")) as usize;
    // BTreeMaps sort explicitly (serde_json's own map may keep insertion order if a dependency asks).
    let mut header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n])?;
    if let Some(meta) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, serde_json::Value> = serde_json::from_value(meta.take())?;
        *meta = serde_json::to_value(sorted)?;
    }
    let mut sorted = serde_json::to_vec(&header)?;
    sorted.resize(sorted.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + sorted.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Save parameters (Megatron names) and metadata to `path`, atomically.
pub fn save_params(path: &Path, params: &Params, metadata: HashMap<String, String>) -> Result<()> {
    let named: Vec<(&str, &Tensor)> = params.specs.iter().map(|s| s.name.as_str()).zip(&params.tensors).collect();
    crate::atomic_file::write(path, &serialize(&named, metadata)?)
}
