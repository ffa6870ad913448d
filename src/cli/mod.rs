//! One module per `retro` command: its clap arguments and what it runs.

pub mod bench_allreduce;
pub mod bench_attention;
pub mod bench_embed;
pub mod bench_kernels;
pub mod bench_knn;
pub mod bench_loader;
pub mod bench_train;
pub mod check_golden;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod info;
pub mod inspect;
pub mod knn;
pub mod preprocess;
pub mod tokenize;
pub mod train;

use std::path::PathBuf;

/// The checkpoint, project and device that eval and generate share.
#[derive(clap::Args)]
pub struct CheckpointArgs {
    /// A checkpoint directory (iter_NNNNNNN) or a run directory (its latest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The preprocessed project (its validation samples, index and chunk database).
    #[arg(long)]
    pub project: PathBuf,
    /// auto, cpu or cuda: where the model runs (the same code on both; on a GPU in bf16 with f32
    /// LayerNorm parameters, the training precision).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl CheckpointArgs {
    /// Select the device, then load the checkpoint's model (its directory, the model, the device).
    pub fn load(&self) -> retro::Result<(PathBuf, retro::model::RetroModel, retro::tensor::Device)> {
        let device = retro::backend::select_device(&self.device)?;
        let (dir, model) = retro::train::checkpoint::load(&self.checkpoint)?;
        Ok((dir, model, device))
    }
}

/// A model preset name or a JSON config file.
pub fn model_config(name_or_file: &str) -> retro::Result<retro::model::RetroConfig> {
    if retro::model::config::PRESETS.contains(&name_or_file) {
        return retro::model::RetroConfig::preset(name_or_file);
    }
    let text = std::fs::read_to_string(name_or_file).map_err(|e| {
        retro::Error::msg(format!(
            "--config {name_or_file}: not a preset ({}) and not a readable file: {e}",
            retro::model::config::PRESETS.join(", ")
        ))
    })?;
    retro::model::RetroConfig::from_json(&text).map_err(|e| e.context(name_or_file))
}

/// `--split-paragraphs` / `--split-lines` as a corpus split (clap keeps them exclusive).
pub fn corpus_split(paragraphs: bool, lines: bool) -> retro::data::corpus::Split {
    use retro::data::corpus::Split;
    match (paragraphs, lines) {
        (true, _) => Split::Paragraphs,
        (_, true) => Split::Lines,
        _ => Split::None,
    }
}

/// Runs `job` on this rank of `world`. Under mpirun an error on any rank ends the whole job (MPI_Abort)
/// after printing that rank's message, so no rank waits forever in a collective; alone, the error is
/// returned as usual.
pub fn on_every_rank<T>(
    command: &str,
    world: std::rc::Rc<retro::dist::World>,
    job: impl FnOnce(std::rc::Rc<retro::dist::World>) -> retro::Result<T>,
) -> retro::Result<T> {
    if world.size() == 1 {
        return job(world);
    }
    let (rank, size) = (world.rank(), world.size());
    let result = job(world.clone());
    if let Err(e) = &result {
        eprintln!("{command}: rank {rank} of {size}: {e}");
        world.abort(2);
    }
    result
}

/// The ranks on one node share its cores: each rank's thread pool gets cores / ranks-on-the-node threads
/// (unless RAYON_NUM_THREADS says otherwise), so N ranks do not run N x cores threads.
pub fn share_cores(world: &retro::dist::World) {
    if world.local_size() <= 1 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / world.local_size()).max(1);
    // Fails only if the pool was already built; then it keeps its size.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
}
