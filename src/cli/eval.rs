//! `retro eval`: validation perplexity of a checkpoint, with and without retrieval.

use super::CheckpointArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    #[arg(long)]
    pub eval_iters: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub micro_batch_size: usize,
}

pub fn run(a: Args) -> retro::Result<()> {
    use retro::train::{loader::ProjectData, trainer};
    let (dir, model, device) = a.checkpoint.load()?;
    let leaves = model.leaves_on(device)?;
    let project = &a.checkpoint.project;
    let config = &model.config;
    let data = ProjectData::open(project, config.num_neighbors, config.num_retrieved_chunks, !config.gpt_baseline)?;
    let Some(valid) = &data.valid else {
        retro::bail!("{}: the project has no validation samples", project.display());
    };
    let iters = a.eval_iters.unwrap_or(valid.len() / a.micro_batch_size).max(1);
    let with = trainer::evaluate(&model, &leaves, valid, a.micro_batch_size, iters, true)?;
    let mut out = serde_json::json!({
        "checkpoint": dir, "model": if config.gpt_baseline { "gpt" } else { "retro" }, "valid_samples": iters * a.micro_batch_size,
        "valid_loss": with, "valid_ppl": with.exp(),
    });
    if !config.gpt_baseline {
        let without = trainer::evaluate(&model, &leaves, valid, a.micro_batch_size, iters, false)?;
        out["valid_loss_without_retrieval"] = serde_json::json!(without);
        out["valid_ppl_without_retrieval"] = serde_json::json!(without.exp());
    }
    println!("{out}");
    Ok(())
}
