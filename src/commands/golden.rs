//! `retro check-golden`: forward, backward and 3 AdamW steps on a golden safetensors file (weights, the
//! config in `__metadata__.config`, and a batch in `batch.*`), for comparison with PyTorch's values.

use crate::model::safetensors_io::{load_params, TensorFile};
use crate::model::{Batch, RetroConfig, RetroModel};
use crate::tensor::DType;
use crate::train::{adamw::global_norm, AdamW, AdamWConfig};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct GoldenReport {
    pub loss: f64,
    pub global_grad_norm: f64,
    pub grad_norms: BTreeMap<String, f64>,
    /// Loss before each of the 3 AdamW steps, then after the last one.
    pub adamw_losses: Vec<f64>,
}

/// The AdamW settings of the golden trajectory (golden_tiny.json `adamw`).
pub fn golden_adamw() -> AdamWConfig {
    AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, clip: Some(1.0) }
}

/// Read the model and batch of a golden file.
pub fn load(path: &Path, dtype: DType) -> Result<(RetroModel, Batch)> {
    let file = TensorFile::read(path)?;
    let at = |e: Error| e.context(path.display());
    let config_json =
        file.metadata.get("config").ok_or_else(|| at(Error::msg("no `config` in the safetensors __metadata__")))?;
    let config = RetroConfig::from_json(config_json).map_err(at)?;
    let specs = RetroModel::specs(&config).map_err(at)?;
    let (params, _) = load_params(&file, &specs, dtype, true, 0, &["batch."]).map_err(at)?;
    let model = RetroModel::from_params(&config, params).map_err(at)?;
    let batch = Batch {
        tokens: file.tensor("batch.tokens").map_err(at)?.clone(),
        labels: file.tensor("batch.labels").map_err(at)?.clone(),
        neighbors: if model.is_retro() {
            Some(file.tensor("batch.neighbor_tokens").map_err(at)?.clone())
        } else {
            None
        },
    };
    Ok((model, batch))
}

pub fn run(path: &Path, dtype: DType) -> Result<GoldenReport> {
    let (mut model, batch) = load(path, dtype)?;
    let first = model.loss_and_grads(&batch)?;
    let grad_norms =
        model.params.specs.iter().zip(&first.grads).map(|(s, g)| (s.name.clone(), g.sum_squares().sqrt())).collect();
    let global_grad_norm = global_norm(&first.grads);
    let config = golden_adamw();
    let mut opt = AdamW::new(config, &model.params.tensors);
    let mut adamw_losses = Vec::new();
    let mut step = first;
    for i in 0..3 {
        adamw_losses.push(step.loss);
        opt.step(&mut model.params.tensors, &mut step.grads, config.lr)?;
        if i < 2 {
            step = model.loss_and_grads(&batch)?;
        }
    }
    adamw_losses.push(model.eval_loss(&batch)?);
    Ok(GoldenReport { loss: adamw_losses[0], global_grad_norm, grad_norms, adamw_losses })
}
