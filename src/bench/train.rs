//! `retro bench train`: the training step of `torch_retro/bench.py train` (random tokens and
//! neighbours from a fixed seed, two batches alternating; forward, backward, clip 1.0, AdamW lr 6e-4,
//! betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on dim >= 2), timed per step: on the CPU (the tape
//! model, f32) or on the GPU (the same model on the tape with device tensors, `train::Engine`: bf16
//! activations, f32 master weights; CUDA events around each step).

use super::flops::{count_params, model_flops_per_step};
use crate::model::{Batch, RetroConfig, RetroModel};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::train::{AdamW, AdamWConfig};
use crate::{ensure, Result};
use serde_json::{json, Value};
use std::time::Instant;

pub struct TrainBench {
    pub config: RetroConfig,
    pub micro_batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub seed: u64,
}

fn random_batch(c: &RetroConfig, mb: usize, rng: &mut Rng) -> Result<Batch> {
    let mut ids = |n: usize| -> Vec<i64> { (0..n).map(|_| rng.below(c.vocab_size as u64) as i64).collect() };
    let (s, l) = (c.seq_length, c.seq_length / c.chunk_length);
    let tokens = Tensor::from_vec(ids(mb * s), &[mb, s])?;
    let labels = Tensor::from_vec(ids(mb * s), &[mb, s])?;
    let neighbors = if c.gpt_baseline {
        None
    } else {
        let shape = [mb, l, c.num_neighbors, c.retrieved_length()];
        Some(Tensor::from_vec(ids(shape.iter().product()), &shape)?)
    };
    Ok(Batch { tokens, labels, neighbors })
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Runs the benchmark and returns its JSON record.
pub fn run(b: &TrainBench) -> Result<Value> {
    ensure!(b.steps > 0 && b.micro_batch > 0, "bench train: --steps and --micro-batch must be positive");
    let c = &b.config;
    let mut model = RetroModel::init(c, b.seed, DType::F32)?;
    let opt_config = AdamWConfig { lr: 6e-4, ..AdamWConfig::default() };
    let mut opt = AdamW::new(opt_config, &model.params.tensors);
    let mut rng = Rng::new(b.seed);
    let batches = [random_batch(c, b.micro_batch, &mut rng)?, random_batch(c, b.micro_batch, &mut rng)?];
    let mut losses = Vec::new();
    let mut step = |i: usize, model: &mut RetroModel| -> Result<()> {
        let mut lg = model.loss_and_grads(&batches[i % 2])?;
        opt.step(&mut model.params.tensors, &mut lg.grads, opt_config.lr)?;
        losses.push(lg.loss);
        Ok(())
    };
    let t0 = Instant::now();
    for i in 0..b.warmup {
        step(i, &mut model)?;
    }
    let warmup_s = t0.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(b.steps);
    let t1 = Instant::now();
    for i in 0..b.steps {
        let s = Instant::now();
        step(i, &mut model)?;
        times.push(s.elapsed().as_secs_f64());
    }
    let wall = t1.elapsed().as_secs_f64();
    let fields = json!({"precision": "fp32", "device": "cpu", "threads": rayon::current_num_threads()});
    Ok(record(b, &model, &losses, warmup_s, &mut times, wall, fields))
}

/// The JSON line of a run (bench.py's fields), from its losses and step times; `fields` adds what is
/// particular to the device.
fn record(
    b: &TrainBench,
    model: &RetroModel,
    losses: &[f64],
    warmup_s: f64,
    times: &mut [f64],
    wall: f64,
    fields: Value,
) -> Value {
    let c = &b.config;
    let step_s = median(times);
    let fl = model_flops_per_step(c, b.micro_batch);
    let mut line = json!({
        "bench": "train", "status": "ok", "impl": "retro", "config": c.name, "micro_batch": b.micro_batch,
        "seq_len": c.seq_length, "steps": b.steps, "warmup": b.warmup, "dropout": c.dropout,
        "tokens_per_s": fl.decoder_tokens / step_s,
        "neighbor_tokens_per_s": fl.neighbor_tokens / step_s,
        "step_ms_median": 1e3 * step_s,
        "step_ms_mean": 1e3 * wall / b.steps as f64,
        "warmup_s": warmup_s,
        "loss_first": losses[0], "loss_last": losses[losses.len() - 1],
        "loss_finite": losses.iter().all(|l| l.is_finite()),
        "params": count_params(&model.params.specs),
        "model_flops_per_step": fl.total,
        "flops_breakdown": fl,
        "achieved_tflops": fl.total / step_s / 1e12,
    });
    line.as_object_mut().expect("an object").extend(fields.as_object().cloned().unwrap_or_default());
    line
}

/// The same benchmark on the GPU: the model on the tape with device tensors (`train::Engine`), with the
/// weights drawn on the GPU (`Engine::with_random_weights`: another generator than the CPU run's, so
/// `loss_first` differs slightly). `gpu` (the process's `Gpu::shared`) is reused across runs
/// (`--micro-batch auto`): modules, cuBLASLt plans and the allocator's cache carry over.
#[cfg(not(no_cuda_kernels))]
pub fn run_gpu(b: &TrainBench, gpu: std::sync::Arc<crate::backend::cuda::Gpu>) -> Result<Value> {
    use crate::backend::cuda::device::cuda_error;
    use cudarc::driver::sys::CUevent_flags;
    ensure!(b.steps > 0 && b.micro_batch > 0, "bench train: --steps and --micro-batch must be positive");
    let c = &b.config;
    // Weights drawn on the GPU (milliseconds; the host's Box-Muller takes ~30 s for 857m).
    let model = RetroModel::structure(c)?;
    let opt_config = AdamWConfig { lr: 6e-4, ..AdamWConfig::default() };
    let device = crate::tensor::Device::Cuda(gpu.ordinal());
    let mut trainer = crate::train::Engine::with_random_weights(device, &model, opt_config, b.seed)?;
    let (mut host_model, mut opt) = (model.clone(), crate::train::AdamW::new(opt_config, &[]));
    let mut train_step = |batch: &Batch| -> Result<f64> {
        trainer.accumulate(&model, batch, b.seed)?;
        trainer.apply(&mut host_model, &mut opt, opt_config.lr)?;
        Ok(trainer.micro_losses()?[0])
    };
    let mut rng = Rng::new(b.seed);
    let batches = [random_batch(c, b.micro_batch, &mut rng)?, random_batch(c, b.micro_batch, &mut rng)?];
    let mut losses = Vec::new();
    let t0 = Instant::now();
    for i in 0..b.warmup {
        losses.push(train_step(&batches[i % 2])?);
    }
    gpu.synchronize()?;
    let warmup_s = t0.elapsed().as_secs_f64();
    let allocations_after_warmup = gpu.memory().driver_allocations;
    let event = || gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| cuda_error("event", e));
    let mut times = Vec::with_capacity(b.steps);
    let t1 = Instant::now();
    for i in 0..b.steps {
        let (start, end) = (event()?, event()?);
        start.record(&gpu.compute).map_err(|e| cuda_error("event record", e))?;
        losses.push(train_step(&batches[(b.warmup + i) % 2])?);
        end.record(&gpu.compute).map_err(|e| cuda_error("event record", e))?;
        times.push(start.elapsed_ms(&end).map_err(|e| cuda_error("event timing", e))? as f64 / 1e3);
    }
    let wall = t1.elapsed().as_secs_f64();
    let mem = gpu.memory();
    let fields = json!({
        "precision": "bf16 activations, f32 master weights", "device": gpu.name(), "losses": losses,
        "peak_mem_gb": mem.peak_allocated as f64 / 1e9, "peak_mem_reserved_gb": mem.peak_reserved as f64 / 1e9,
        "driver_allocations_in_timed_steps": mem.driver_allocations - allocations_after_warmup,
    });
    Ok(record(b, &model, &losses, warmup_s, &mut times, wall, fields))
}
