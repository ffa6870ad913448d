//! `retro train`: micro-batches accumulated to the global batch, AdamW with Megatron's schedule and
//! clipping, evaluation every `eval_interval` iterations, checkpoints every `save_interval` and at the
//! end, exact resume from `--load`, one JSON line per step in `RUN/metrics.jsonl`.
//!
//! Determinism: iteration i uses samples i·B .. (i+1)·B of the sample index, the dropout masks of
//! micro-batch j come from (seed, i, j), and every kernel is bitwise reproducible, so a run resumed from a
//! checkpoint continues exactly as if it had never stopped.

use super::checkpoint::{self, State};
use super::data_parallel::DataParallel;
use super::loader::{prefetch, ProjectData, SplitData};
use super::schedule::LrSchedule;
use super::{AdamW, AdamWConfig, Engine};
use crate::dist::TensorParallel;
use crate::model::{padded_vocab_size, Batch, RetroConfig, RetroModel};
use crate::tensor::DType;
use crate::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TrainArgs {
    pub project: PathBuf,
    pub save: PathBuf,
    pub load: Option<PathBuf>,
    /// Retro-fit: start from this (GPT baseline) checkpoint, loading the parameters it has and
    /// initialising the rest (CCA and encoder), which are listed.
    pub init_from: Option<PathBuf>,
    /// Model shape (layers, hidden, heads, k, CCA layers); vocabulary and lengths come from the project.
    pub model: RetroConfig,
    pub micro_batch: usize,
    pub global_batch: usize,
    pub train_iters: u64,
    pub schedule: LrSchedule,
    pub weight_decay: f64,
    pub clip: f64,
    pub seed: u64,
    pub save_interval: u64,
    pub eval_interval: u64,
    pub eval_iters: usize,
    pub keep: usize,
    pub progress: bool,
    /// TensorBoard event files (Megatron's `--tensorboard-dir`).
    pub tensorboard_dir: Option<PathBuf>,
    /// Where the steps run (`train::Engine`): the CPU (f32) or a GPU (the same model with bf16 activations
    /// and f32 master weights; evaluation and checkpoints go through the CPU copy of the model).
    pub device: crate::tensor::Device,
    /// When the run stops before `train_iters` (saving a checkpoint first).
    pub exit: super::exit::ExitConditions,
}

/// The model config for a project: the preset's shape with the project's vocabulary and lengths.
pub fn project_model(preset: &RetroConfig, project: &crate::preprocess::project::ProjectConfig) -> Result<RetroConfig> {
    let mut c = preset.clone();
    c.vocab_size = padded_vocab_size(project.retro_gpt_vocab_size);
    c.seq_length = project.retro_gpt_seq_length;
    c.chunk_length = project.retro_gpt_chunk_length;
    // Neighbours the query could not fill (-1) are masked, not attended.
    c.mask_missing_neighbors = true;
    c.validate()?;
    Ok(c)
}

/// Mean loss over the first `iters` batches of a split (no dropout), with `leaves` as the parameters
/// (`RetroModel::leaves_on`: on their device). `retrieval = false` masks every neighbour (the model then
/// sees no retrieved text).
pub fn evaluate(
    model: &RetroModel,
    leaves: &[crate::tensor::Tensor],
    split: &SplitData,
    batch: usize,
    iters: usize,
    retrieval: bool,
) -> Result<f64> {
    evaluate_shared(model, leaves, split, batch, iters, retrieval, &DataParallel::single())
}

/// The loss of validation batch `i` (samples i·batch..).
fn evaluate_batch(
    model: &RetroModel,
    leaves: &[crate::tensor::Tensor],
    split: &SplitData,
    batch: usize,
    i: usize,
    retrieval: bool,
) -> Result<f64> {
    let ids: Vec<usize> = (i * batch..(i + 1) * batch).collect();
    let mut b = split.batch(&ids)?;
    if !retrieval {
        if let Some(nb) = &mut b.neighbors {
            nb.data_mut::<i64>()?.iter_mut().for_each(|t| *t = -1);
        }
    }
    model.eval_loss_on(leaves, &b)
}

fn run_identity(args: &TrainArgs, model: &RetroConfig, data: &ProjectData) -> Value {
    json!({
        "model": serde_json::to_value(model).expect("config serializes"),
        "project": serde_json::to_value(&data.config).expect("config serializes"),
        "global_batch_size": args.global_batch,
        "seed": args.seed,
    })
}

fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--save {}: cannot create the directory", dir.display()))?;
    let probe = dir.join(format!(".write-test.{}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("--save {}: the directory is not writable", dir.display()))?;
    std::fs::remove_file(&probe)?;
    Ok(())
}

pub struct Summary {
    pub iterations: u64,
    /// Why the run stopped before `train_iters` (an exit condition), if it did.
    pub stopped_by: Option<String>,
    pub final_loss: f64,
    pub valid_loss: Option<f64>,
}

/// Train on this process's share of the work: `dp` says which data-parallel rank it is and `tp` which
/// tensor-parallel group holds its model's parts (one process: `DataParallel::single()` and
/// `TensorParallel::single()`). Every data-parallel rank computes the same steps on the same weights;
/// rank 0 alone writes the run's files, checkpoints whole (gathered from the tensor-parallel ranks).
pub fn train(args: &TrainArgs, dp: &DataParallel, tp: &TensorParallel) -> Result<Summary> {
    // Refused before any work: the same checks on every rank.
    let per_rank = dp.layout.micro_batches_per_rank(args.global_batch, args.micro_batch)?;
    if tp.is_split() && args.device != crate::tensor::Device::Cpu {
        args.model.check_tensor_parallel_on_gpu(tp.size())?;
    }
    ensure!(
        !(tp.is_split() && args.device != crate::tensor::Device::Cpu && dp.overlap_grad_reduce),
        "--tensor-model-parallel-size {} on {}: --overlap-grad-reduce is built for GPU data parallelism without \
         tensor parallelism so far (its reductions on their own stream beside the tensor-parallel ones, two \
         communicators, could deadlock unordered); drop it, or use --device cpu",
        tp.size(),
        args.device
    );
    let retrieval = !args.model.gpt_baseline;
    let data = ProjectData::open(&args.project, args.model.num_neighbors, args.model.num_retrieved_chunks, retrieval)?;
    let config = project_model(&args.model, &data.config)?;
    config.check_tensor_parallel(tp.size())?;
    if dp.is_root() {
        check_writable(&args.save)?;
    }
    let identity = run_identity(args, &config, &data);
    let mut model = initial_model(args, &config, dp.is_root())?;
    let mut opt = AdamW::new(optimizer_config(args), &model.params.tensors);
    let (mut iteration, mut consumed) = resume(args, &config, &identity, &mut model, &mut opt)?;
    if tp.is_split() {
        // Every rank holds the same whole model here (same seed, or the same checkpoint): keep this
        // rank's part of it and of the moments.
        model = model.shard(tp)?;
        opt.exp_avg = model.shard_tensors(&opt.exp_avg)?;
        opt.exp_avg_sq = model.shard_tensors(&opt.exp_avg_sq)?;
    }
    dp.broadcast_from_root(&mut model.params.tensors)?;
    let mut engine = Engine::new(args.device, &model, &opt)?.with_data_parallel(dp.clone(), &model, &opt)?;
    if engine.shards_moments() {
        opt.release_moments(); // this rank's shard lives in the engine
    }
    let mut outputs = dp.is_root().then(|| RunFiles::open(args)).transpose()?;
    let batches = prefetch(Arc::new(data.train), micro_batch_plan(args, iteration, dp.layout.dp_rank(), per_rank), 4);
    let bar = progress_bar(args, iteration, dp.is_root());
    let start = Instant::now();
    let tokens_per_step = (args.global_batch * config.seq_length) as f64;
    let (mut last_loss, mut valid_loss, mut stopped_by) = (f64::NAN, None, None);
    args.exit.install();
    while iteration < args.train_iters {
        let t0 = Instant::now();
        let mut micro_batches = (0..per_rank)
            .map(|_| batches.recv().map_err(|_| crate::Error::msg("the data loader stopped")).and_then(|b| b));
        let loss = accumulate(args, dp, &mut engine, &model, &mut micro_batches, iteration, per_rank)?;
        let lr = args.schedule.at(consumed);
        let stats =
            engine.apply(&mut model, &mut opt, lr).map_err(|e| e.context(format!("iteration {}", iteration + 1)))?;
        iteration += 1;
        consumed += args.global_batch as u64;
        last_loss = loss;
        let evaluating = args.eval_interval > 0 && iteration % args.eval_interval == 0 && data.valid.is_some();
        stopped_by = args.exit.agreed(iteration, dp);
        let saving = (args.save_interval > 0 && iteration % args.save_interval == 0)
            || iteration == args.train_iters
            || stopped_by.is_some();
        if saving {
            engine.to_host(&mut model, &mut opt)?; // on every rank: the distributed optimizer gathers
        }
        // Checkpoints are whole: the first data-parallel group gathers its tensor-parallel parts.
        let gathered =
            (saving && tp.is_split() && dp.layout.dp_rank() == 0).then(|| whole(&model, &opt)).transpose()?;
        let step_s = t0.elapsed().as_secs_f64();
        let mut line = json!({
            "step": iteration, "loss": loss, "lr": lr, "grad_norm": stats.grad_norm, "tokens_per_s": tokens_per_step / step_s,
            "elapsed_s": start.elapsed().as_secs_f64(), "consumed_samples": consumed,
        });
        if evaluating {
            let valid = data.valid.as_ref().expect("evaluating needs a validation split");
            // On the engine's device, with the parameters the steps read.
            let leaves = engine.leaves(&model);
            valid_loss = Some(evaluate_into(&mut line, &model, leaves, valid, args, retrieval, dp)?);
        }
        if let Some(files) = &mut outputs {
            files.record(&line, iteration)?;
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {:.0} tok/s", tokens_per_step / step_s));
            bar.set_position(iteration);
            if saving {
                // (`to_host` above has brought the weights and moments into `model` and `opt`.)
                let (model, opt) = gathered.as_ref().map_or((&model, &opt), |(m, o)| (m, o));
                let state = State::at(iteration, consumed, opt.step, identity.clone());
                checkpoint::save(&args.save, model, opt, &state, args.keep)?;
            }
        }
        if saving && engine.shards_moments() {
            opt.release_moments(); // gathered for the checkpoint only
        }
        if saving && dp.world.size() > 1 {
            // Every rank waits here for rank 0's checkpoint, which may take long: not a hang.
            let _exempt = crate::dist::watchdog::paused();
            dp.world.barrier();
        }
        if let Some(reason) = &stopped_by {
            if dp.is_root() {
                bar.suspend(|| {
                    eprintln!("retro train: {reason}: stopped after iteration {iteration}, checkpoint saved")
                });
            }
            break;
        }
    }
    bar.finish_and_clear();
    if dp.is_root() {
        let series =
            super::plot::metrics_series(&args.save.join("metrics.jsonl"), if retrieval { "retro" } else { "gpt" })?;
        super::plot::losses(&args.save.join("loss.png"), "loss", &series)?;
    }
    Ok(Summary { iterations: iteration, stopped_by, final_loss: last_loss, valid_loss })
}

/// The whole model and optimizer state of a tensor-parallel model: a collective of its group.
fn whole(model: &RetroModel, opt: &AdamW) -> Result<(RetroModel, AdamW)> {
    let exp_avg = model.gather_tensors(&opt.exp_avg)?;
    let exp_avg_sq = model.gather_tensors(&opt.exp_avg_sq)?;
    Ok((model.unsharded()?, AdamW { exp_avg, exp_avg_sq, ..opt.clone() }))
}

/// What rank 0 writes every step: a line of metrics.jsonl (synced), and TensorBoard scalars.
struct RunFiles {
    metrics: std::fs::File,
    tensorboard: Option<super::tensorboard::EventWriter>,
}

impl RunFiles {
    fn open(args: &TrainArgs) -> Result<Self> {
        let tensorboard = args.tensorboard_dir.as_deref().map(super::tensorboard::EventWriter::create).transpose()?;
        let path = args.save.join("metrics.jsonl");
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { metrics, tensorboard })
    }

    fn record(&mut self, line: &Value, iteration: u64) -> Result<()> {
        if let Some(tb) = &mut self.tensorboard {
            log_tensorboard(tb, line, iteration)?;
        }
        writeln!(self.metrics, "{line}")?;
        Ok(self.metrics.sync_data()?)
    }
}

/// Megatron's initialisation from `--seed`, or `--init-from` a checkpoint (retro-fit: parameters the
/// checkpoint lacks start fresh and are listed).
fn initial_model(args: &TrainArgs, config: &RetroConfig, report_missing: bool) -> Result<RetroModel> {
    let model = RetroModel::init(config, args.seed, DType::F32)?;
    let Some(from) = &args.init_from else { return Ok(model) };
    let dir = checkpoint::resolve(from)?;
    let file = crate::model::safetensors_io::TensorFile::read(&dir.join("model.safetensors"))?;
    let (params, report) =
        crate::model::safetensors_io::load_params(&file, &model.params.specs, DType::F32, false, args.seed, &[])
            .map_err(|e| e.context(format!("--init-from {}", dir.display())))?;
    ensure!(
        report.unexpected.is_empty(),
        "--init-from {}: tensors this model does not have: {}",
        dir.display(),
        report.unexpected.join(", ")
    );
    if report_missing {
        eprintln!(
            "retro train: initialised from {}; {} parameter(s) were not in it and start fresh: {}",
            dir.display(),
            report.missing.len(),
            report.missing.join(", ")
        );
    }
    RetroModel::from_params(config, params)
}

fn optimizer_config(args: &TrainArgs) -> AdamWConfig {
    AdamWConfig {
        lr: args.schedule.lr,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: args.weight_decay,
        clip: (args.clip > 0.0).then_some(args.clip),
    }
}

/// `--load`: the verified checkpoint's weights and moments, and its (iteration, consumed samples); (0, 0)
/// when there is nothing to resume.
fn resume(
    args: &TrainArgs,
    config: &RetroConfig,
    identity: &Value,
    model: &mut RetroModel,
    opt: &mut AdamW,
) -> Result<(u64, u64)> {
    let Some(load) = &args.load else { return Ok((0, 0)) };
    let Some((dir, state)) = checkpoint::find(load)? else {
        eprintln!("retro train: --load {}: no checkpoint there yet; starting from iteration 0", load.display());
        return Ok((0, 0));
    };
    let diffs = checkpoint::differences(&state.run, identity);
    if !diffs.is_empty() {
        bail!(
            "--load {}: the checkpoint was trained with other settings; refusing to resume ({})",
            dir.display(),
            diffs.join("; ")
        );
    }
    *model = checkpoint::load_model(&dir, config, DType::F32)?;
    checkpoint::load_optimizer(&dir, &model.params, opt)?;
    let (iteration, consumed) = (state.iteration, state.consumed_samples);
    eprintln!("retro train: resuming from {} (iteration {iteration}, {consumed} samples consumed)", dir.display());
    Ok((iteration, consumed))
}

/// The sample ids of every micro-batch this data-parallel rank runs from `iteration` on: iteration i
/// reads samples i·B..(i+1)·B, cut into micro-batches of m; DP rank r runs the `per_rank` micro-batches
/// r·per_rank.. of each iteration (the single-process order, whatever the number of ranks).
fn micro_batch_plan(args: &TrainArgs, iteration: u64, dp_rank: usize, per_rank: usize) -> Vec<Vec<usize>> {
    (iteration..args.train_iters)
        .flat_map(|it| (0..per_rank).map(move |j| (it, dp_rank * per_rank + j)))
        .map(|(it, j)| {
            let start = (it as usize) * args.global_batch + j * args.micro_batch;
            (start..start + args.micro_batch).collect()
        })
        .collect()
}

fn progress_bar(args: &TrainArgs, iteration: u64, root: bool) -> ProgressBar {
    let bar = if args.progress && root { ProgressBar::new(args.train_iters) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(iteration);
    bar
}

/// Forward and backward of this rank's micro-batches of one step, their gradients summed in the engine;
/// the losses are read once, after all of them are queued. Returns the step's mean loss over every
/// data-parallel rank; a non-finite loss stops training.
fn accumulate(
    args: &TrainArgs,
    dp: &DataParallel,
    engine: &mut Engine,
    model: &RetroModel,
    micro_batches: &mut dyn Iterator<Item = Result<Batch>>,
    iteration: u64,
    per_rank: usize,
) -> Result<f64> {
    for (j, batch) in micro_batches.enumerate() {
        // The micro-batch's index in the whole step: its dropout masks do not depend on the ranks.
        let j = dp.layout.dp_rank() * per_rank + j;
        let seed = args.seed
            ^ (iteration.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ ((j as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
        if j + 1 == (dp.layout.dp_rank() + 1) * per_rank {
            engine.accumulate_last(model, &batch?, seed)?;
        } else {
            engine.accumulate(model, &batch?, seed)?;
        }
    }
    let losses = engine.micro_losses()?;
    if let Some((j, bad)) = losses.iter().enumerate().find(|(_, l)| !l.is_finite()) {
        bail!(
            "iteration {}: the loss is {bad} (micro-batch {}); stopping. The last checkpoint in {} is intact",
            iteration + 1,
            dp.layout.dp_rank() * per_rank + j,
            args.save.display()
        );
    }
    let micro_per_step = (per_rank * dp.size()) as f64;
    let mut sum = [losses.iter().map(|l| l / micro_per_step).sum()];
    dp.sum(&mut sum);
    Ok(sum[0])
}

/// Validation loss (and, for RETRO, perplexity with every neighbour masked) into the step's metrics line;
/// the validation batches are divided among the data-parallel ranks.
fn evaluate_into(
    line: &mut Value,
    model: &RetroModel,
    leaves: &[crate::tensor::Tensor],
    valid: &SplitData,
    args: &TrainArgs,
    retrieval: bool,
    dp: &DataParallel,
) -> Result<f64> {
    let v = evaluate_shared(model, leaves, valid, args.micro_batch, args.eval_iters, true, dp)?;
    line["valid_loss"] = json!(v);
    line["valid_ppl"] = json!(v.exp());
    if retrieval {
        let masked = evaluate_shared(model, leaves, valid, args.micro_batch, args.eval_iters, false, dp)?;
        line["valid_ppl_without_retrieval"] = json!(masked.exp());
    }
    Ok(v)
}

/// `evaluate` over the first `iters` batches, data-parallel rank r taking batches r, r + DP, ...
fn evaluate_shared(
    model: &RetroModel,
    leaves: &[crate::tensor::Tensor],
    split: &SplitData,
    batch: usize,
    iters: usize,
    retrieval: bool,
    dp: &DataParallel,
) -> Result<f64> {
    let mut sum = [0.0];
    for i in (dp.layout.dp_rank()..iters).step_by(dp.size()) {
        sum[0] += evaluate_batch(model, leaves, split, batch, i, retrieval)?;
    }
    dp.sum(&mut sum);
    Ok(sum[0] / iters as f64)
}

/// Megatron's TensorBoard tags for the metrics line's values.
fn log_tensorboard(tb: &mut super::tensorboard::EventWriter, line: &Value, iteration: u64) -> Result<()> {
    for (tag, key) in [
        ("lm loss", "loss"),
        ("learning-rate", "lr"),
        ("grad-norm", "grad_norm"),
        ("throughput tokens/s", "tokens_per_s"),
        ("lm loss validation ppl", "valid_ppl"),
        ("lm loss validation ppl without retrieval", "valid_ppl_without_retrieval"),
    ] {
        if let Some(v) = line[key].as_f64() {
            tb.scalar(tag, v, iteration)?;
        }
    }
    tb.flush()
}
