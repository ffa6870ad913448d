//! The model on every device through the real dispatch: `RetroModel::loss_and_grads_on` with the
//! parameters as tensors on the CPU or a GPU (the same decoder.rs / encoder.rs / retro.rs code), against
//! the CPU in f64; the training engine (`train::Engine`, what `retro train` runs on either device) against
//! the tape model and AdamW composed by hand; PyTorch's golden loss; the 857m config on a GPU.

mod common;
use common::device::Dev;
use retro::autograd::Tape;
use retro::model::{Batch, RetroConfig, RetroModel};
use retro::rng::Rng;
use retro::tensor::{DType, Device, Tensor};
use retro::train::{AdamW, AdamWConfig, Engine};
use std::path::Path;

/// A RETRO small enough for the CPU but with the GPU kernels' head dim (64): 4 layers, CCA at 2 and 4.
fn gpu_sized_config() -> RetroConfig {
    let mut c = RetroConfig::preset("tiny").unwrap();
    c.hidden_size = 128;
    c.num_heads = 2;
    c.num_layers = 4;
    c.retro_layer_numbers = Some(vec![2, 4]);
    c.seq_length = 128;
    c.vocab_size = 512;
    c
}

fn random_batch(c: &RetroConfig, b: usize, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let (n, l, k, r) = (c.seq_length, c.seq_length / c.chunk_length, c.num_neighbors, c.retrieved_length());
    let mut draw = |len: usize| -> Vec<i64> { (0..len).map(|_| rng.below(c.vocab_size as u64) as i64).collect() };
    Batch {
        tokens: Tensor::from_vec(draw(b * n), &[b, n]).unwrap(),
        labels: Tensor::from_vec(draw(b * n), &[b, n]).unwrap(),
        neighbors: (!c.gpt_baseline).then(|| Tensor::from_vec(draw(b * l * k * r), &[b, l, k, r]).unwrap()),
    }
}

/// The parameters as this copy's tape reads them: f32 on the CPU and for `cuda_f32`; for `cuda` (the
/// training precision) bf16 copies of what GEMMs and embeddings read and f32 LayerNorm parameters.
fn leaves(dev: &Dev, model: &RetroModel) -> Vec<Tensor> {
    match dev.placement() {
        (device, DType::BF16) => model.leaves_on(device).unwrap(),
        (device, _) => {
            model.params.tensors.iter().map(|t| t.to_dtype(DType::F32).unwrap().to(device).unwrap()).collect()
        }
    }
}

/// (loss tolerance, gradient tolerance) on `dev` (`common::device::bf16_roundings` for bf16).
fn tolerances(dev: &Dev, c: &RetroConfig) -> (f64, f64) {
    match dev.placement().1 {
        DType::BF16 => {
            let (roundings, u) = (common::device::bf16_roundings(c) as f64, common::device::BF16_U as f64);
            (common::device::bf16_loss_tolerance(c), roundings.sqrt() * u)
        }
        _ => (1e-5, 1e-4),
    }
}

/// Per parameter, ||got - want||_2 / max(||want||_2, floor), floor = a tenth of the average parameter's
/// gradient norm: a tensor whose gradient is tiny through cancellation is judged by its absolute error on
/// the scale of the whole gradient (what the optimizer sees), not by its own near-zero norm.
fn gradient_error(model: &RetroModel, want: &[Tensor], got: &[Tensor]) -> (f64, String) {
    let want: Vec<Vec<f64>> = want.iter().map(|t| t.to_f64_vec()).collect();
    let got: Vec<Vec<f32>> = got.iter().map(common::device::read).collect();
    let norm = |x: &mut dyn Iterator<Item = f64>| x.map(|v| v * v).sum::<f64>().sqrt();
    let global = norm(&mut want.iter().flatten().copied());
    let floor = 0.1 * global / (want.len() as f64).sqrt();
    let mut worst = (0.0f64, String::new());
    for ((spec, w), g) in model.params.specs.iter().zip(&want).zip(&got) {
        let diff = norm(&mut w.iter().zip(g).map(|(a, &b)| a - b as f64));
        let err = diff / norm(&mut w.iter().copied()).max(floor).max(1e-30);
        // A NaN compares false: count it as the worst error there is.
        let err = if err.is_nan() { f64::INFINITY } else { err };
        if err > worst.0 {
            worst = (err, spec.name.clone());
        }
    }
    worst
}

// The model's loss and every gradient on each device against the CPU in f64: the CPU and the GPU in f32
// to f32 rounding, the GPU's bf16 training precision to bf16 accuracy (tolerances above). RETRO, the GPT
// baseline, and RETRO in training mode: hidden and attention dropout 0.1 (the masks are the same bits on
// both devices), a missing neighbour masked, the CCA gate at 0.5.
test_device!(model_loss_and_gradients_match_the_cpu_in_f64, |dev| {
    for case in ["RETRO", "GPT", "RETRO with dropout, a missing neighbour and the gate"] {
        let mut c = gpu_sized_config();
        c.gpt_baseline = case == "GPT";
        let training = case.contains("dropout");
        if training {
            c.dropout = 0.1;
            c.mask_missing_neighbors = true;
            c.retro_attention_gate = 0.5;
            c.cca_variant = "cca-gate".into();
        }
        let model = RetroModel::init(&c, 11, DType::F64).unwrap();
        let mut batch = random_batch(&c, 2, 12);
        if training {
            let nb = batch.neighbors.as_mut().unwrap();
            let r = c.retrieved_length();
            nb.data_mut::<i64>().unwrap()[r..2 * r].iter_mut().for_each(|t| *t = -1);
        }
        let tape = || if training { Tape::training(c.dropout, 5) } else { Tape::new() };
        let reference = model.loss_and_grads_on(&model.params.tensors, &batch, tape()).unwrap();
        let got = model.loss_and_grads_on(&leaves(dev, &model), &batch, tape()).unwrap();
        let (loss_tol, grad_tol) = tolerances(dev, &c);
        let what = case;
        let rel = (got.loss - reference.loss).abs() / reference.loss;
        common::device::report_check(&format!("{what} model loss"), dev, rel, loss_tol);
        assert!(rel <= loss_tol, "{} {what}: loss {} vs f64 {} ({rel:.1e})", dev.name(), got.loss, reference.loss);
        let (err, name) = gradient_error(&model, &reference.grads, &got.grads);
        common::device::report_check(&format!("{what} model gradients (worst: {name})"), dev, err, grad_tol);
        assert!(err <= grad_tol, "{} {what}: gradient of {name} differs by {err:.2e} > {grad_tol:.1e}", dev.name());
        eprintln!(
            "{} {what}: loss {} vs {} ({rel:.1e}); worst gradient {name} {err:.1e}",
            dev.name(),
            got.loss,
            reference.loss
        );
    }
});

// The tensor-parallel model's code on one rank (`TensorParallel::split_over_one`, on a GPU over a one-rank
// NCCL communicator): copy / reduce ops, the vocab-parallel embedding and cross-entropy, the row-parallel
// bias added after the sum, the heads' dropout streams. With dropout and a missing neighbour it equals
// the unsplit model: in f64 on the CPU to 1e-12, on each device within the model test's tolerances.
// (Two ranks on the CPU: tests/tensor_parallel.rs; two on GPUs need two GPUs.)
test_device!(the_tensor_parallel_model_on_one_rank_equals_the_model, |dev| {
    let mut c = gpu_sized_config();
    (c.dropout, c.mask_missing_neighbors) = (0.1, true);
    let model = RetroModel::init(&c, 13, DType::F64).unwrap();
    let tp = retro::dist::TensorParallel::split_over_one();
    let tp = match dev.placement().0 {
        #[cfg(not(no_cuda_kernels))]
        Device::Cuda(ordinal) => tp.on_gpu(retro::backend::cuda::Gpu::shared(ordinal).unwrap()).unwrap(),
        _ => tp,
    };
    let split = model.shard(&tp).unwrap();
    let mut batch = random_batch(&c, 2, 14);
    let r = c.retrieved_length();
    batch.neighbors.as_mut().unwrap().data_mut::<i64>().unwrap()[r..2 * r].iter_mut().for_each(|t| *t = -1);
    let tape = || Tape::training(c.dropout, 9);
    let reference = model.loss_and_grads_on(&model.params.tensors, &batch, tape()).unwrap();
    if dev.placement().0 == Device::Cpu {
        let whole = split.loss_and_grads_on(&split.params.tensors, &batch, tape()).unwrap();
        assert!((whole.loss / reference.loss - 1.0).abs() < 1e-12, "f64: {} vs {}", whole.loss, reference.loss);
        for ((spec, w), g) in model.params.specs.iter().zip(&reference.grads).zip(&whole.grads) {
            let (w, g) = (w.to_f64_vec(), g.to_f64_vec());
            let scale = w.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
            let err = w.iter().zip(&g).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
            assert!(err < 1e-12, "f64: the gradient of {} differs by {err:.1e}", spec.name);
        }
    }
    let got = split.loss_and_grads_on(&leaves(dev, &split), &batch, tape()).unwrap();
    let (loss_tol, grad_tol) = tolerances(dev, &c);
    let rel = (got.loss - reference.loss).abs() / reference.loss;
    common::device::report_check("tensor-parallel model (1 rank) loss", dev, rel, loss_tol);
    assert!(rel <= loss_tol, "{}: loss {} vs f64 {} ({rel:.1e})", dev.name(), got.loss, reference.loss);
    let (err, name) = gradient_error(&model, &reference.grads, &got.grads);
    common::device::report_check(
        &format!("tensor-parallel model (1 rank) gradients (worst: {name})"),
        dev,
        err,
        grad_tol,
    );
    assert!(err <= grad_tol, "{}: gradient of {name} differs by {err:.2e} > {grad_tol:.1e}", dev.name());
});

/// The golden directory: $RETRO_GOLDEN_DIR (the GPU machine's copy), else ../shared beside the checkout.
fn golden_file() -> std::path::PathBuf {
    match std::env::var_os("RETRO_GOLDEN_DIR") {
        Some(d) => std::path::PathBuf::from(d).join("retro_tiny.safetensors"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/torch_retro/golden/retro_tiny.safetensors"),
    }
}

// PyTorch's golden tiny model on each device in f32: within 1e-5 of the float64 golden loss. The bf16
// kernels cannot run it: its head dim is 16.
test_device!(golden_tiny_loss_on_each_device, |dev| {
    let (model, batch) = retro::commands::golden::load(&golden_file(), DType::F32).unwrap();
    if dev.placement().1 == DType::BF16 {
        eprintln!("{}: skipped (the tiny config's head dim 16 is below the tensor-core kernels' 64)", dev.name());
        return;
    }
    let loss = model.loss_and_grads_on(&leaves(dev, &model), &batch, Tape::new()).unwrap().loss;
    let golden = 6.261789235114643;
    let rel = (loss - golden).abs() / golden;
    common::device::report_check("golden tiny loss", dev, rel, 1e-5);
    assert!(rel < 1e-5, "{}: loss {loss} vs golden {golden}", dev.name());
});

// `retro train`'s engine on the CPU is the tape model plus AdamW, bit for bit: 10 steps of 2 micro-batches
// with dropout, against `RetroModel::train_step` and `AdamW::step` composed here.
#[test]
fn the_engine_trains_ten_steps_as_the_tape_model_and_adamw() {
    let mut c = gpu_sized_config();
    c.dropout = 0.1;
    let config = AdamWConfig { lr: 1e-3, clip: Some(1.0), ..AdamWConfig::default() };
    let batches: Vec<Batch> = (0..4).map(|i| random_batch(&c, 1, 20 + i)).collect();
    let start = RetroModel::init(&c, 3, DType::F32).unwrap();

    let (mut model, mut opt) = (start.clone(), AdamW::new(config, &start.params.tensors));
    let mut engine = Engine::new(Device::Cpu, &model, &opt).unwrap();
    let mut engine_losses = Vec::new();
    for step in 0..10u64 {
        for j in 0..2 {
            engine.accumulate(&model, &batches[(2 * step as usize + j) % 4], step * 2 + j as u64).unwrap();
        }
        engine.apply(&mut model, &mut opt, 1e-3).unwrap();
        engine_losses.push(engine.micro_losses().unwrap().iter().sum::<f64>() / 2.0);
    }

    let (mut by_hand, mut opt2) = (start.clone(), AdamW::new(config, &start.params.tensors));
    let mut hand_losses = Vec::new();
    for step in 0..10u64 {
        let mut sum: Option<Vec<Tensor>> = None;
        let mut loss = 0.0;
        for j in 0..2 {
            let r = by_hand.train_step(&batches[(2 * step as usize + j) % 4], step * 2 + j as u64).unwrap();
            loss += r.loss;
            match &mut sum {
                None => sum = Some(r.grads),
                Some(acc) => acc.iter_mut().zip(&r.grads).for_each(|(a, g)| a.add_assign(g).unwrap()),
            }
        }
        let mut grads = sum.unwrap();
        grads.iter_mut().for_each(|g| g.scale(0.5).unwrap());
        opt2.step(&mut by_hand.params.tensors, &mut grads, 1e-3).unwrap();
        hand_losses.push(loss / 2.0);
    }
    assert_eq!(engine_losses, hand_losses);
    assert!(model.params == by_hand.params, "the weights differ after 10 steps");
    assert!(engine_losses[9] < engine_losses[0], "{engine_losses:?}");
}

/// One optimizer step on `dev` (the CPU's `AdamW` in f32, or a GPU's `DeviceOptimizer` over its flat
/// arenas) on the average of `micro` micro-batches' gradients (host f32 tensors): the weights and moments
/// after it (on the host) and its stats.
fn optimizer_steps(
    dev: &Dev,
    model: &RetroModel,
    config: AdamWConfig,
    steps: &[Vec<Vec<Tensor>>],
) -> (RetroModel, AdamW, Vec<retro::train::StepStats>) {
    let (mut model, mut opt) = (model.clone(), AdamW::new(config, &model.params.tensors));
    let mut stats = Vec::new();
    match dev.placement().0 {
        Device::Cpu => {
            for micro in steps {
                let mut sum = micro[0].clone();
                micro[1..].iter().for_each(|m| sum.iter_mut().zip(m).for_each(|(a, g)| a.add_assign(g).unwrap()));
                sum.iter_mut().for_each(|g| g.scale(1.0 / micro.len() as f64).unwrap());
                stats.push(opt.step(&mut model.params.tensors, &mut sum, config.lr).unwrap());
            }
        }
        #[cfg(not(no_cuda_kernels))]
        device => {
            use retro::train::device_optimizer::DeviceOptimizer;
            let mut gpu = DeviceOptimizer::upload(device, &model, &opt).unwrap();
            for micro in steps {
                for grads in micro {
                    let on_device: Vec<Tensor> = grads.iter().map(|g| g.to(device).unwrap()).collect();
                    gpu.accumulate(&on_device).unwrap();
                }
                stats.push(gpu.step(config.lr, micro.len()).unwrap());
            }
            // What the tape reads: the bf16 copies are the masters rounded; LayerNorm reads the master.
            let masters: Vec<Vec<f32>> = (gpu.leaves().iter().zip(&model.params.specs))
                .map(|(leaf, spec)| {
                    let values = common::device::read(leaf);
                    if !spec.reads_master {
                        assert_eq!(leaf.dtype(), DType::BF16, "{}", spec.name);
                    }
                    values
                })
                .collect();
            gpu.to_host(&mut model, &mut opt).unwrap();
            for ((leaf, t), spec) in masters.iter().zip(&model.params.tensors).zip(&model.params.specs) {
                let host = t.to_vec::<f32>().unwrap();
                let want = if spec.reads_master { host } else { common::device::round_bf16(&host) };
                assert_eq!(leaf, &want, "the leaf of {} is not its master (rounded to bf16)", spec.name);
            }
        }
        #[cfg(no_cuda_kernels)]
        _ => unreachable!(),
    }
    (model, opt, stats)
}

// The optimizer step of each device (the CPU's per-tensor AdamW in f32; on a GPU one sum-of-squares and
// one AdamW launch over the flat arenas, clipping on the device) against AdamW in f64: two steps of two
// micro-batches each, the first clipped (norm ~7 > 1), the second not.
test_device!(the_optimizer_step_is_adamw_in_f64, |dev| {
    if dev.placement() == (Device::Cpu, DType::F32) || dev.placement().1 == DType::BF16 {
        let c = gpu_sized_config();
        let config = AdamWConfig { lr: 1e-2, clip: Some(1.0), ..AdamWConfig::default() };
        let model = RetroModel::init(&c, 3, DType::F32).unwrap();
        let mut rng = Rng::new(5);
        let mut grads = |scale: f64| -> Vec<Tensor> {
            (model.params.specs.iter())
                .map(|s| {
                    let n = s.shape.iter().product();
                    Tensor::from_vec((0..n).map(|_| (rng.normal() * scale) as f32).collect::<Vec<f32>>(), &s.shape)
                        .unwrap()
                })
                .collect()
        };
        let steps = vec![vec![grads(1e-2), grads(1e-2)], vec![grads(1e-5), grads(1e-5)]];
        let (got, got_opt, got_stats) = optimizer_steps(dev, &model, config, &steps);
        let f64s = |ts: &[Tensor]| -> Vec<Tensor> { ts.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect() };
        let mut reference = model.clone();
        reference.params.tensors = f64s(&model.params.tensors);
        let steps64: Vec<Vec<Vec<Tensor>>> = steps.iter().map(|m| m.iter().map(|g| f64s(g)).collect()).collect();
        let (want, want_opt, want_stats) = optimizer_steps(&Dev::Cpu, &reference, config, &steps64);
        assert!(want_stats[0].clip_coef < 0.5 && want_stats[1].clip_coef == 1.0, "{want_stats:?}");
        for (g, w) in got_stats.iter().zip(&want_stats) {
            let (norm, clip) = ((g.grad_norm / w.grad_norm - 1.0).abs(), (g.clip_coef / w.clip_coef - 1.0).abs());
            assert!(norm < 1e-6 && clip < 1e-6, "{} stats {g:?} vs f64 {w:?}", dev.name());
        }
        // The update (new - old weight, ~lr) on its own scale: f32 rounding of |w| ~ 1 is 1e-5 of it.
        for (i, start) in model.params.tensors.iter().enumerate() {
            let name = &model.params.specs[i].name;
            let before = start.to_f64_vec();
            let delta =
                |t: &Tensor| -> Vec<f32> { t.to_f64_vec().iter().zip(&before).map(|(a, b)| (a - b) as f32).collect() };
            let err = common::device::rel_err(&delta(&got.params.tensors[i]), &delta(&want.params.tensors[i]), 1e-12);
            assert!(err < 1e-4, "{name} update on {}: relative error {err:.2e}", dev.name());
            for (what, g, w) in [
                ("exp_avg", &got_opt.exp_avg[i], &want_opt.exp_avg[i]),
                ("exp_avg_sq", &got_opt.exp_avg_sq[i], &want_opt.exp_avg_sq[i]),
            ] {
                let err = common::device::rel_err(&common::device::read(g), &common::device::read(w), 1e-30);
                assert!(err < 1e-5, "{name} {what} on {}: relative error {err:.2e}", dev.name());
            }
        }
        assert_eq!(got_opt.step, 2);
        common::device::report_check("optimizer step vs f64", dev, 0.0, 1e-4);
    } else {
        eprintln!("{}: skipped (one optimizer per device: the cuda copy checks it)", dev.name());
    }
});

// 20 AdamW steps of the 857m preset (dropout 0.1, as Megatron's) on two alternating random batches
// through the engine: finite, and the loss falls. The GPU only: on the CPU this model takes minutes per
// step. Weights are drawn on the GPU.
test_device!(gpu_857m_twenty_steps_lower_the_loss, |dev| {
    if dev.placement().1 != DType::BF16 {
        eprintln!("{}: skipped (the 857m model is for the GPU's training precision)", dev.name());
        return;
    }
    let c = RetroConfig::preset("857m").unwrap();
    let model = RetroModel::structure(&c).unwrap();
    let config = AdamWConfig { lr: 6e-4, ..AdamWConfig::default() };
    let mut engine = Engine::with_random_weights(dev.placement().0, &model, config, 1).unwrap();
    let (mut host, mut opt) = (model.clone(), AdamW::new(config, &[]));
    let batches = [random_batch(&c, 1, 1), random_batch(&c, 1, 2)];
    let losses: Vec<f64> = (0..20)
        .map(|i| {
            engine.accumulate(&model, &batches[i % 2], i as u64).unwrap();
            engine.apply(&mut host, &mut opt, 6e-4).unwrap();
            engine.micro_losses().unwrap()[0]
        })
        .collect();
    eprintln!("857m losses: {losses:?}");
    let as_json: Vec<serde_json::Value> = losses
        .iter()
        .map(|l| if l.is_finite() { serde_json::json!(l) } else { serde_json::json!(l.to_string()) })
        .collect();
    common::device::report(serde_json::json!({"check": "857m losses", "losses": as_json}));
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    assert!(mean(&losses[16..]) < mean(&losses[..4]) && losses[19] < losses[0], "the loss did not fall: {losses:?}");
});

type EngineRun = (Vec<(Vec<f64>, f64)>, RetroModel, AdamW);

/// Three steps of two micro-batches each through the training engine on `dev` with data-parallel
/// settings `dp` (one process): each step's micro-batch losses and gradient norm, then the weights and
/// optimizer state brought to the host.
fn engine_steps(dev: &Dev, model: &RetroModel, dp: retro::train::data_parallel::DataParallel) -> EngineRun {
    let c = &model.config;
    let config = AdamWConfig { lr: 1e-3, clip: None, ..AdamWConfig::default() };
    let opt = AdamW::new(config, &model.params.tensors);
    let mut engine = Engine::new(dev.placement().0, model, &opt).unwrap().with_data_parallel(dp, model, &opt).unwrap();
    let (mut host, mut opt) = (model.clone(), opt);
    let mut out = Vec::new();
    for step in 0..3u64 {
        engine.accumulate(model, &random_batch(c, 1, 10 * step), step).unwrap();
        engine.accumulate_last(model, &random_batch(c, 1, 10 * step + 1), step).unwrap();
        let stats = engine.apply(&mut host, &mut opt, 1e-3).unwrap();
        out.push((engine.micro_losses().unwrap(), stats.grad_norm));
    }
    engine.to_host(&mut host, &mut opt).unwrap();
    (out, host, opt)
}

/// Two engine runs agree: the same losses, norms within 1e-12, and the same weights and moments, bit for bit.
fn assert_same_training(got: &EngineRun, want: &EngineRun) {
    for (step, ((gl, gn), (wl, wn))) in got.0.iter().zip(&want.0).enumerate() {
        assert_eq!(gl, wl, "step {step}: micro-batch losses");
        assert!((gn / wn - 1.0).abs() < 1e-12, "step {step}: grad norm {gn} vs {wn}");
    }
    assert_eq!(got.2.step, want.2.step);
    for (i, spec) in want.1.params.specs.iter().enumerate() {
        for (what, g, w) in [
            ("weight", &got.1.params.tensors[i], &want.1.params.tensors[i]),
            ("exp_avg", &got.2.exp_avg[i], &want.2.exp_avg[i]),
            ("exp_avg_sq", &got.2.exp_avg_sq[i], &want.2.exp_avg_sq[i]),
        ] {
            assert_eq!(g.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap(), "{} {what}", spec.name);
        }
    }
}

fn one_process(bucket_size: usize) -> retro::train::data_parallel::DataParallel {
    retro::train::data_parallel::DataParallel { bucket_size, ..retro::train::data_parallel::DataParallel::single() }
}

/// Three engine steps on `dev` with one process's data-parallel settings `variant` equal the plain
/// engine's bit for bit (the GPU copy only: the engine's precision there is bf16).
fn one_gpu_variant_equals_the_plain_step(dev: &Dev, variant: retro::train::data_parallel::DataParallel, what: &str) {
    if dev.placement().1 != DType::BF16 {
        eprintln!("{}: skipped (the GPU engine's precision is the cuda copy's)", dev.name());
        return;
    }
    let model = RetroModel::init(&gpu_sized_config(), 3, DType::F32).unwrap();
    let want = engine_steps(dev, &model, one_process(40_000));
    let got = engine_steps(dev, &model, variant);
    assert_same_training(&got, &want);
    common::device::report_check(what, dev, 0.0, 0.0);
}

// `--use-distributed-optimizer` on a GPU (`DeviceOptimizer::shard`): with one rank, NCCL's reduce-scatter
// copies each chunk into the summed pieces and the all-gather runs in place, so three steps in chunks
// of 40,000 elements (many chunks, the last one padded) give the device optimizer's weights and moments
// bit for bit, and its norms. (Several ranks need several GPUs; the CPU's is tests/dist_train.rs.)
test_device!(the_distributed_optimizer_on_one_gpu_equals_the_device_optimizer, |dev| {
    let variant = retro::train::data_parallel::DataParallel { distributed_optimizer: true, ..one_process(40_000) };
    one_gpu_variant_equals_the_plain_step(dev, variant, "distributed optimizer (1 rank) vs device optimizer");
});

// The training engine on the tensor-parallel model of one rank (`split_over_one`): on a GPU its optimizer
// takes the split norm (the split parameters' squares all-reduced over the group's NCCL communicator,
// the others' added once, over the arena grouped by `ParamArena::with_split`). The first step's losses
// and norm equal the unsplit engine's within the model test's tolerances (other kernels: the
// vocab-parallel loss, the bias after the sum); the later steps stay finite; and the distributed
// optimizer on it equals it bit for bit.
test_device!(the_engine_trains_the_tensor_parallel_model_of_one_rank, |dev| {
    if dev.placement().1 != DType::BF16 {
        eprintln!("{}: skipped (the GPU engine's precision is the cuda copy's)", dev.name());
        return;
    }
    let c = gpu_sized_config();
    let model = RetroModel::init(&c, 3, DType::F32).unwrap();
    #[cfg(not(no_cuda_kernels))]
    let tp = match dev.placement().0 {
        Device::Cuda(ordinal) => retro::dist::TensorParallel::split_over_one()
            .on_gpu(retro::backend::cuda::Gpu::shared(ordinal).unwrap())
            .unwrap(),
        Device::Cpu => unreachable!(),
    };
    #[cfg(no_cuda_kernels)]
    let tp = retro::dist::TensorParallel::split_over_one();
    let split = model.shard(&tp).unwrap();
    let want = engine_steps(dev, &model, one_process(40_000));
    let got = engine_steps(dev, &split, one_process(40_000));
    let (loss_tol, grad_tol) = tolerances(dev, &c);
    let ((gl, gn), (wl, wn)) = (&got.0[0], &want.0[0]);
    for (g, w) in gl.iter().zip(wl) {
        assert!((g / w - 1.0).abs() <= 2.0 * loss_tol, "first step: loss {g} vs the unsplit engine's {w}");
    }
    assert!((gn / wn - 1.0).abs() <= 2.0 * grad_tol, "first step: grad norm {gn} vs the unsplit engine's {wn}");
    assert!(got.0.iter().all(|(l, n)| n.is_finite() && l.iter().all(|x| x.is_finite())), "{:?}", got.0);
    // The distributed optimizer on the same split model: its norm over the pieces (split and whole parts
    // summed separately) is the plain split engine's, and with one rank the weights are the same bits.
    let sharded = engine_steps(
        dev,
        &split,
        retro::train::data_parallel::DataParallel { distributed_optimizer: true, ..one_process(40_000) },
    );
    assert_same_training(&sharded, &got);
    common::device::report_check(
        "tensor-parallel engine (1 rank), first grad norm",
        dev,
        (gn / wn - 1.0).abs(),
        2.0 * grad_tol,
    );
});

// `--overlap-grad-reduce` on a GPU: each bucket of 40,000 elements is all-reduced (one rank: in place)
// on the communicator's stream as the last backward completes it, ordered by events; the steps equal
// the plain engine's bit for bit. With one rank the sum is the identity: this checks the buckets'
// bookkeeping and that the stream and event calls run, not the ordering against other ranks' data.
test_device!(overlapped_gradient_reduction_on_one_gpu_equals_the_plain_step, |dev| {
    let variant = retro::train::data_parallel::DataParallel { overlap_grad_reduce: true, ..one_process(40_000) };
    one_gpu_variant_equals_the_plain_step(dev, variant, "overlapped gradient all-reduce (1 rank) vs plain step");
});

// KV-cached generation (`KvDecoder`, what `retro generate` runs) on each device: a 60-token prompt, then
// greedy decoding to the model's 128 positions, with live retrieval at each completed chunk. At every
// position the cached logits equal the full forward of the prefix on the CPU in f64: the CPU (f32) and
// the GPU in f32 to f32 rounding, the GPU's bf16 to the forward's bf16 accuracy. RETRO and the GPT
// baseline. (The decoded tokens are each device's own argmax, so near-ties cannot derail the check.)
test_device!(kv_cached_generation_matches_the_full_forward_in_f64, |dev| {
    for gpt in [false, true] {
        let mut c = gpu_sized_config();
        c.gpt_baseline = gpt;
        let model = RetroModel::init(&c, 21, DType::F64).unwrap();
        let leaves = leaves(dev, &model);
        let mut decoder = retro::model::kv_decode::KvDecoder::new(&model, &leaves);
        let mut retrieved = Vec::new();
        let mut retrieve = |chunk: usize, tokens: &[u32]| {
            retrieved.push(chunk);
            Ok(common::generation::neighbours_of(tokens, &c))
        };
        let mut rng = Rng::new(22);
        let mut tokens: Vec<u32> = (0..60).map(|_| rng.below(c.vocab_size as u64) as u32).collect();
        let mut logits = Vec::new();
        for &t in &tokens {
            logits = decoder.push(t, &mut retrieve).unwrap();
        }
        let (tolerance, mut worst) = (tolerances(dev, &c).0, (0.0f64, 0));
        loop {
            let want = common::generation::full_forward_last(&model, &tokens);
            let norm = |x: &mut dyn Iterator<Item = f64>| x.map(|v| v * v).sum::<f64>().sqrt();
            let err = norm(&mut logits.iter().zip(&want).map(|(a, b)| a - b)) / norm(&mut want.iter().copied());
            let err = if err.is_nan() { f64::INFINITY } else { err };
            if err > worst.0 {
                worst = (err, tokens.len() - 1);
            }
            if tokens.len() == c.seq_length {
                break;
            }
            let next = common::generation::argmax(&logits);
            tokens.push(next);
            logits = decoder.push(next, &mut retrieve).unwrap();
        }
        let what = if gpt { "GPT" } else { "RETRO" };
        let (err, position) = worst;
        common::device::report_check(&format!("{what} KV-cached logits vs the full forward"), dev, err, tolerance);
        eprintln!("{} {what}: KV-cached logits, worst relative error {err:.1e} at position {position}", dev.name());
        assert!(err <= tolerance, "{} {what}: position {position}: the cached logits differ by {err:.1e}", dev.name());
        assert_eq!(retrieved, if gpt { vec![] } else { vec![0, 1] }, "retrieval once per completed chunk");
    }
});
