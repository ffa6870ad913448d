//! `retro bench attention`: the attention-variant lab's check and timings, one JSON line each.
//!
//! For each CCA variant: first the **check**. The variant's CCA layer (`linear_kv` on the encoded
//! neighbours, then its `attend`: queries, scores, values, output projection, and whatever the variant
//! adds) runs on the chosen device in that device's training precision (f32 on the CPU, bf16 operands on a
//! GPU) and is compared with the same layer on the CPU in f64 (its reference; tests/variants.rs checks
//! that reference against finite differences): the output and the gradient of every input and parameter,
//! each as max |a − b| / max |b|, against a tolerance for the precision. A variant with a fused kernel
//! would run it here; none has one yet, so the check is of the device's ops under the variant's
//! composition. The check's shapes are the config's (hidden size, heads, m, k, r) on two chunks, with
//! one neighbour of the first chunk missing (masked), and the variant's own parameters away from their
//! initial values (a gate at 0 would hide the layer). The same line checks the f64 reference itself: its
//! gradients along a random direction of every input and parameter against fourth-order central
//! differences of ⟨output, cotangent⟩.
//!
//! Then the **timings** at the config's shapes for a micro-batch: the variant's CCA layer (bench.py's
//! `cca_layer`, FLOPs counted as there: the q, kv and output projections and the attention products;
//! fwd+bwd = 3 × fwd), and once per run the decoder's causal self-attention core (`mha`, or `gqa` for a
//! config with `num_query_groups`: bench.py's `causal_self_attn`, fwd+bwd = 3.5 × fwd).

use crate::autograd::{Tape, Var};
use crate::dist::TensorParallel;
use crate::model::params::{ParamBuilder, Params};
use crate::model::RetroConfig;
use crate::nn::{CrossAttention, InitStd};
use crate::ops::{self, AttnMask};
use crate::rng::Rng;
use crate::tensor::{DType, Device, Tensor};
use crate::variants::{Attending, CcaVariant, CcaVariantEntry};
use crate::Result;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

pub struct AttentionBench {
    pub variants: Vec<&'static CcaVariantEntry>,
    pub config: RetroConfig,
    pub device: Device,
    pub micro_batch: usize,
    pub reps: usize,
}

/// One CCA layer of a variant: its attention, the variant, and their parameters (f64, on the CPU).
struct Layer {
    attn: CrossAttention,
    variant: Arc<dyn CcaVariant>,
    params: Params,
}

impl Layer {
    fn new(entry: &CcaVariantEntry, config: &RetroConfig, seed: u64) -> Result<Self> {
        let mut pb = ParamBuilder::new(TensorParallel::single());
        let prefix = "cross_attention";
        let init = InitStd::megatron(config.init_std, config.num_layers);
        let attn = CrossAttention::new(&mut pb, prefix, config.hidden_size, config.num_heads, init);
        let own_from = pb.registered();
        let variant = (entry.build)(&mut pb, prefix, config);
        let mut params = Params::init(pb.finish(), seed, DType::F64)?;
        // The variant's own parameters away from their initial values (a zero gate or bias is a no-op).
        let mut rng = Rng::new(seed ^ 0x5eed);
        for i in own_from..params.len() {
            let shape = params.specs[i].shape.clone();
            let n = shape.iter().product();
            params.set(i, Tensor::from_vec((0..n).map(|_| 0.3 + 0.5 * rng.normal()).collect::<Vec<f64>>(), &shape)?)?;
        }
        Ok(Self { attn, variant, params })
    }

    /// The layer's output for `queries` [N, m, d] against `context` [N, k·r, d] (the encoded neighbours).
    fn forward(&self, tape: &mut Tape, p: &[Var], queries: &Var, context: &Var, mask: &AttnMask) -> Result<Var> {
        let kv = self.attn.project_kv(tape, p, context)?;
        self.variant.attend(tape, p, &self.attn, &Attending { queries, first_row: 0, kv: &kv, mask })
    }

    /// The parameters as the device's training precision reads them (`RetroModel::leaves_on`'s rule).
    fn leaves_on(&self, device: Device, dtype: DType) -> Result<Vec<Tensor>> {
        self.params
            .specs
            .iter()
            .zip(&self.params.tensors)
            .map(|(spec, t)| t.to_dtype(if spec.reads_master { DType::F32 } else { dtype })?.to(device))
            .collect()
    }
}

/// The f64 reference's directional derivative against fourth-order central differences (h = 1e-3).
const FD_TOLERANCE: f64 = 1e-8;

/// The training precision of activations and GEMM operands on `device`, and the check's tolerance there.
fn precision(device: Device) -> (DType, f64) {
    match device {
        Device::Cpu => (DType::F32, 1e-4),
        _ => (DType::BF16, 5e-2),
    }
}

fn random(rng: &mut Rng, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec((0..shape.iter().product()).map(|_| rng.normal()).collect::<Vec<f64>>(), shape)
}

/// Output and gradients (queries, context, then each parameter) of one forward + backward, in f64.
fn run_layer(
    layer: &Layer,
    leaves: Vec<Tensor>,
    inputs: [&Tensor; 3],
    mask: &AttnMask,
    device: Device,
    dtype: DType,
) -> Result<Vec<Vec<f64>>> {
    let on = |t: &Tensor| t.to_dtype(dtype)?.to(device);
    let mut tape = Tape::new();
    let p: Vec<Var> = leaves.into_iter().map(|t| tape.leaf(t)).collect();
    let (queries, context) = (tape.leaf(on(inputs[0])?), tape.leaf(on(inputs[1])?));
    let out = layer.forward(&mut tape, &p, &queries, &context, mask)?;
    let out_value = out.value().clone();
    let grads = tape.backward_with(&out, on(inputs[2])?)?;
    let host = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to(Device::Cpu)?.to_f64_vec()) };
    let mut all = vec![host(&out_value)?];
    for v in [&queries, &context].into_iter().chain(&p) {
        match grads.get(v) {
            Some(g) => all.push(host(g)?),
            None => all.push(vec![0.0; v.value().numel()]),
        }
    }
    Ok(all)
}

/// ⟨output, cotangent⟩ of the f64 layer at `leaves` and `inputs` each moved by `t` along `direction`.
fn loss_along(layer: &Layer, inputs: [&Tensor; 3], direction: &[Tensor], t: f64, mask: &AttnMask) -> Result<f64> {
    let moved = |x: &Tensor, u: &Tensor| -> Result<Tensor> {
        let v: Vec<f64> = x.to_f64_vec().iter().zip(u.to_f64_vec()).map(|(a, b)| a + t * b).collect();
        Tensor::from_vec(v, x.shape())
    };
    let mut tape = Tape::inference();
    let all: Vec<&Tensor> = [inputs[0], inputs[1]].into_iter().chain(&layer.params.tensors).collect();
    let vars = all.iter().zip(direction).map(|(x, u)| moved(x, u).map(|m| tape.leaf(m))).collect::<Result<Vec<_>>>()?;
    let out = layer.forward(&mut tape, &vars[2..], &vars[0], &vars[1], mask)?;
    Ok(out.value().to_f64_vec().iter().zip(inputs[2].to_f64_vec()).map(|(o, g)| o * g).sum())
}

/// max |a − b| / max |b| (0 when both are zero).
fn scaled_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

impl AttentionBench {
    fn shape_fields(&self) -> Value {
        let c = &self.config;
        json!({
            "config": c.name, "batch": self.micro_batch, "seq": c.seq_length, "hidden": c.hidden_size,
            "heads": c.num_heads, "m": c.chunk_length, "k": c.num_neighbors, "r": c.retrieved_length(),
        })
    }

    /// The check of one variant: a JSON line, and whether every error is within the tolerance.
    pub fn check(&self, entry: &CcaVariantEntry) -> Result<(Value, bool)> {
        let c = &self.config;
        let (chunks, m, keys, d) = (2, c.chunk_length, c.num_neighbors * c.retrieved_length(), c.hidden_size);
        let layer = Layer::new(entry, c, 1234)?;
        let mut rng = Rng::new(7);
        let queries = random(&mut rng, &[chunks, m, d])?;
        let context = random(&mut rng, &[chunks, keys, d])?;
        let cotangent = random(&mut rng, &[chunks, m, d])?;
        // The last neighbour of the first chunk is missing.
        let r = c.retrieved_length();
        let visible: Vec<bool> =
            (0..chunks * keys).map(|j| !(c.num_neighbors > 1 && j < keys && j >= keys - r)).collect();
        let mask = AttnMask::Keys(visible.into());
        let inputs = [&queries, &context, &cotangent];
        let reference = run_layer(&layer, layer.params.tensors.clone(), inputs, &mask, Device::Cpu, DType::F64)?;
        // The reference's gradients along a random direction against finite differences.
        // Each tensor's part of the direction is on its own scale (its RMS, at least 0.01), so that a step
        // of h moves every one by about h of itself.
        let points: Vec<&Tensor> = [&queries, &context].into_iter().chain(&layer.params.tensors).collect();
        let direction = points
            .iter()
            .map(|x| {
                let v = x.to_f64_vec();
                let rms = (v.iter().map(|a| a * a).sum::<f64>() / v.len().max(1) as f64).sqrt().max(0.01);
                let u: Vec<f64> = v.iter().map(|_| rms * rng.normal()).collect();
                Tensor::from_vec(u, x.shape())
            })
            .collect::<Result<Vec<_>>>()?;
        let analytic: f64 = reference[1..]
            .iter()
            .zip(&direction)
            .map(|(g, u)| g.iter().zip(u.to_f64_vec()).map(|(g, u)| g * u).sum::<f64>())
            .sum();
        let h = 1e-3;
        let at = |t: f64| loss_along(&layer, inputs, &direction, t, &mask);
        let numeric = (at(-2.0 * h)? - 8.0 * at(-h)? + 8.0 * at(h)? - at(2.0 * h)?) / (12.0 * h);
        let fd_err = (numeric - analytic).abs() / analytic.abs().max(1e-12);
        let (dtype, tolerance) = precision(self.device);
        let got = run_layer(&layer, layer.leaves_on(self.device, dtype)?, inputs, &mask, self.device, dtype)?;
        let names = ["out", "d_queries", "d_context"].into_iter().map(str::to_string);
        let names = names.chain(layer.params.specs.iter().map(|s| format!("d_{}", s.name)));
        let mut errors = serde_json::Map::new();
        let mut worst = 0.0f64;
        for (name, (g, r)) in names.zip(got.iter().zip(&reference)) {
            let e = scaled_err(g, r);
            worst = worst.max(e);
            errors.insert(name, json!(e));
        }
        let ok = worst <= tolerance && fd_err <= FD_TOLERANCE;
        let mut line = json!({
            "bench": "attention", "check": if ok { "ok" } else { "failed" }, "variant": entry.name,
            "device": self.device.to_string(), "dtype": dtype.to_string(), "reference": "f64 on the CPU",
            "chunks": chunks, "max_scaled_err": worst, "tolerance": tolerance, "errors": errors,
            "reference_fd_rel_err": fd_err, "reference_fd_tolerance": FD_TOLERANCE,
        });
        merge(&mut line, self.shape_fields());
        Ok((line, ok))
    }

    /// Median seconds of `reps` runs of `f` after one warm-up run.
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?;
        let mut times = Vec::with_capacity(self.reps);
        for _ in 0..self.reps.max(1) {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    fn record(&self, kernel: &str, variant: &str, mode: &str, secs: f64, flops: f64, convention: &str) -> Value {
        let mut line = json!({
            "bench": "attention", "kernel": kernel, "variant": variant, "mode": mode,
            "device": self.device.to_string(), "dtype": precision(self.device).0.to_string(),
            "time_ms": secs * 1e3, "flops": flops, "tflops": flops / secs / 1e12, "flop_convention": convention,
        });
        merge(&mut line, self.shape_fields());
        line
    }

    /// fwd and fwd+bwd timings of one variant's CCA layer at the config's shapes.
    pub fn time_cca(&self, entry: &CcaVariantEntry) -> Result<Vec<Value>> {
        let c = &self.config;
        let (m, keys, d) = (c.chunk_length, c.num_neighbors * c.retrieved_length(), c.hidden_size);
        let tokens = self.micro_batch * c.seq_length;
        let chunks = tokens / m;
        let layer = Layer::new(entry, c, 1234)?;
        let (dtype, _) = precision(self.device);
        let leaves = layer.leaves_on(self.device, dtype)?;
        let mut rng = Rng::new(8);
        let on = |t: Tensor| t.to_dtype(dtype)?.to(self.device);
        let queries = on(random(&mut rng, &[chunks, m, d])?)?;
        let context = on(random(&mut rng, &[chunks, keys, d])?)?;
        let cotangent = on(random(&mut rng, &[chunks, m, d])?)?;
        let pass = |backward: bool| -> Result<()> {
            let mut tape = if backward { Tape::new() } else { Tape::inference() };
            let p: Vec<Var> = leaves.iter().map(|t| tape.leaf(t.clone())).collect();
            let (q, ctx) = (tape.leaf(queries.clone()), tape.leaf(context.clone()));
            let out = layer.forward(&mut tape, &p, &q, &ctx, &AttnMask::None)?;
            if backward {
                let grads = tape.backward_with(&out, cotangent.clone())?;
                // Waits for the device: the gradient of the first projection is the backward's last.
                grads.get(&ctx).map(|g| g.to(Device::Cpu)).transpose()?;
            } else {
                out.value().to(Device::Cpu)?;
            }
            Ok(())
        };
        // bench.py's cca_layer: q and output projections over every token, kv over every neighbour
        // token, QKᵀ and PV over m × k·r per chunk.
        let (t, tn, d) = (tokens as f64, (chunks * keys) as f64, d as f64);
        let flops = 2.0 * t * d * d * 2.0 + 2.0 * tn * 2.0 * d * d + 4.0 * t * keys as f64 * d;
        Ok(vec![
            self.record("cca_layer", entry.name, "fwd", self.time(|| pass(false))?, flops, "bench.py cca_layer"),
            self.record("cca_layer", entry.name, "fwd+bwd", self.time(|| pass(true))?, 3.0 * flops, "fwd_bwd=3*fwd"),
        ])
    }

    /// fwd and fwd+bwd timings of the decoder's causal self-attention core (`mha`) on a fused QKV.
    pub fn time_self_attention(&self) -> Result<Vec<Value>> {
        let c = &self.config;
        let (b, s, d, h, kv_heads) = (self.micro_batch, c.seq_length, c.hidden_size, c.num_heads, c.kv_heads());
        let variant = if kv_heads == h { "mha" } else { "gqa" };
        let (dtype, _) = precision(self.device);
        let mut rng = Rng::new(9);
        let qkv = random(&mut rng, &[b, s, d + 2 * d / h * kv_heads])?.to_dtype(dtype)?.to(self.device)?;
        let cotangent = random(&mut rng, &[b, s, d])?.to_dtype(dtype)?.to(self.device)?;
        let pass = |backward: bool| -> Result<()> {
            let mut tape = if backward { Tape::new() } else { Tape::inference() };
            let x = tape.leaf(qkv.clone());
            let out = ops::attention_grouped_qkv(&mut tape, &x, h, kv_heads, &AttnMask::Causal, None)?;
            if backward {
                tape.backward_with(&out, cotangent.clone())?.get(&x).map(|g| g.to(Device::Cpu)).transpose()?;
            } else {
                out.value().to(Device::Cpu)?;
            }
            Ok(())
        };
        let flops = 4.0 * (b * h * s * s * (d / h)) as f64 * 0.5;
        Ok(vec![
            self.record(
                "causal_self_attn",
                variant,
                "fwd",
                self.time(|| pass(false))?,
                flops,
                "bench.py causal_self_attn",
            ),
            self.record(
                "causal_self_attn",
                variant,
                "fwd+bwd",
                self.time(|| pass(true))?,
                3.5 * flops,
                "fwd_bwd=3.5*fwd",
            ),
        ])
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}
