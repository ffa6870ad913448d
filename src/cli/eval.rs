//! `retro eval`: validation perplexity of a checkpoint, with and without retrieval.
use std::path::PathBuf;
use std::process::ExitCode;

use super::*;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory (iter_NNNNNNN) or a run directory (its latest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub project: PathBuf,
    #[arg(long)]
    pub eval_iters: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub micro_batch_size: usize,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(args: Args) -> ExitCode {
    let Args { checkpoint, project, eval_iters, micro_batch_size, device } = args;
    print_record(
        "eval",
        (|| {
            retro::backend::select_device(&device)?;
            use retro::train::{checkpoint as ck, loader::ProjectData, trainer};
            let dir = ck::resolve(&checkpoint)?;
            let config = ck::model_config(&dir)?;
            let model = ck::load_model(&dir, &config, retro::tensor::DType::F32)?;
            let data = ProjectData::open(&project, config.num_neighbors, !config.gpt_baseline)?;
            let Some(valid) = &data.valid else {
                return Err(retro::Error::msg(format!("{}: the project has no validation samples", project.display())));
            };
            let iters = eval_iters.unwrap_or(valid.len() / micro_batch_size).max(1);
            let with = trainer::evaluate(&model, valid, micro_batch_size, iters, true)?;
            let mut out = serde_json::json!({
                "checkpoint": dir, "model": if config.gpt_baseline { "gpt" } else { "retro" }, "valid_samples": iters * micro_batch_size,
                "valid_loss": with, "valid_ppl": with.exp(),
            });
            if !config.gpt_baseline {
                let without = trainer::evaluate(&model, valid, micro_batch_size, iters, false)?;
                out["valid_loss_without_retrieval"] = serde_json::json!(without);
                out["valid_ppl_without_retrieval"] = serde_json::json!(without.exp());
            }
            Ok(out)
        })(),
    )
}
