//! `retro bench kernels`: the GPU kernels on `bench.py kernels`' shapes, one JSON line each with its
//! FLOP or byte convention (../shared/torch_retro/README.md), so `scripts/gpu-summary.py` can put ours
//! and torch's side by side. Timing: after warm-up, each of `reps` reps times (CUDA events) enough
//! back-to-back calls to last >= 1 ms, with L2 flushed before every rep; the median per call is reported.
//!
//! Differences from bench.py, stated in each line: the embedding adds the position embedding too (one
//! more read per token) and its backward zeroes and fills an f32 gradient (torch: bf16); the
//! cross-entropy exists only fused (forward + backward); KNN and the CCA layer are not GPU kernels yet.

use crate::backend::cuda::{self, attention, DeviceBuffer, Gpu};
use crate::Result;
use cudarc::driver::sys::CUevent_flags;
use half::bf16;
use serde_json::{json, Value};

pub const ALL: [&str; 7] = ["gemm", "cca", "self_attn", "encoder_attn", "layernorm", "embedding", "cross_entropy"];

/// One group of measurements, reporting each line through the callback.
type Group = fn(&Suite, &mut dyn FnMut(Value)) -> Result<()>;

pub struct Suite {
    gpu: std::sync::Arc<Gpu>,
    only: Option<Vec<String>>,
    reps: usize,
    flush: DeviceBuffer<u8>,
}

/// N(0, scale²) inputs drawn on the GPU (kernels/random.cu): the host would spend most of the run here.
fn random_bf16(gpu: &Gpu, n: usize, scale: f64, seed: u64) -> Result<DeviceBuffer<bf16>> {
    cuda::random::normal(gpu, n, seed, 0, scale as f32)
}

impl Suite {
    pub fn new(ordinal: usize, only: Option<Vec<String>>, reps: usize) -> Result<Self> {
        if let Some(o) = &only {
            for name in o {
                crate::ensure!(ALL.contains(&name.as_str()), "--only {name:?}: the kernel groups are {ALL:?}");
            }
        }
        let gpu = Gpu::new(ordinal)?;
        let flush = gpu.alloc::<u8>(256 << 20)?;
        Ok(Self { gpu, only, reps: reps.max(1), flush })
    }

    fn want(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|x| x == name))
    }

    /// Median seconds per call of `f`.
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let gpu = &self.gpu;
        for _ in 0..3 {
            f()?;
        }
        gpu.synchronize()?;
        let start = std::time::Instant::now();
        f()?;
        gpu.synchronize()?;
        let one = start.elapsed().as_secs_f64().max(1e-7);
        let inner = ((1e-3 / one) as usize).clamp(1, 100);
        let event = || {
            gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| cuda::device::cuda_error("event", e))
        };
        let mut times = Vec::new();
        for _ in 0..self.reps {
            gpu.fill_zero(&self.flush)?;
            let (a, b) = (event()?, event()?);
            a.record(&gpu.compute).map_err(|e| cuda::device::cuda_error("event record", e))?;
            for _ in 0..inner {
                f()?;
            }
            b.record(&gpu.compute).map_err(|e| cuda::device::cuda_error("event record", e))?;
            let ms = a.elapsed_ms(&b).map_err(|e| cuda::device::cuda_error("event timing", e))?;
            times.push(ms as f64 / 1e3 / inner as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    fn record(&self, kernel: &str, secs: f64, mut fields: Value) -> Value {
        let o = fields.as_object_mut().expect("fields are an object");
        o.insert("bench".into(), json!("kernel"));
        o.insert("kernel".into(), json!(kernel));
        o.insert("impl".into(), json!("retro"));
        o.insert("status".into(), json!("ok"));
        o.insert("time_ms".into(), json!(secs * 1e3));
        o.insert("device".into(), json!(self.gpu.name()));
        if let Some(f) = o.get("flops").and_then(Value::as_f64) {
            o.insert("tflops".into(), json!(f / secs / 1e12));
        }
        if let Some(b) = o.get("bytes").and_then(Value::as_f64) {
            o.insert("gb_per_s".into(), json!(b / secs / 1e9));
        }
        fields
    }

    /// Run every wanted group; each measurement (or its error) is handed to `emit` as it completes.
    pub fn run(&self, emit: &mut dyn FnMut(Value)) -> Result<()> {
        let groups: [(&str, Group); 5] = [
            ("gemm", Self::gemm),
            ("attention", Self::attention),
            ("layernorm", Self::layernorm),
            ("embedding", Self::embedding),
            ("cross_entropy", Self::cross_entropy),
        ];
        for (name, group) in groups {
            if let Err(e) = group(self, emit) {
                emit(
                    json!({"bench": "kernel", "kernel": name, "impl": "retro", "status": "error", "error": e.to_string()}),
                );
            }
            self.gpu.synchronize()?;
        }
        Ok(())
    }

    fn gemm(&self, emit: &mut dyn FnMut(Value)) -> Result<()> {
        if !self.want("gemm") {
            return Ok(());
        }
        let n = 8192;
        let gpu = &self.gpu;
        let (a, b) = (random_bf16(gpu, n * n, 1.0, 1)?, random_bf16(gpu, n * n, 1.0, 2)?);
        let c = gpu.alloc::<bf16>(n * n)?;
        let l = cuda::linear::Linear { rows: n, in_features: n, out_features: n };
        let shape = l.forward_shape::<bf16>(cuda::blas::Epilogue::None);
        let blas = gpu.blas()?;
        // SAFETY: three n x n bf16 buffers.
        let t = self.time(|| unsafe { blas.gemm(&shape, a.ptr(), b.ptr(), c.ptr(), None, 1.0, 0.0) })?;
        emit(self.record(
            "gemm",
            t,
            json!({"m": n, "n": n, "k": n, "dtype": "bf16", "flops": 2.0 * (n as f64).powi(3)}),
        ));
        Ok(())
    }

    fn attention_case(
        &self,
        emit: &mut dyn FnMut(Value),
        kernel: &str,
        s: attention::Dims,
        extra: Value,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let w = s.width();
        let q = random_bf16(gpu, s.batch * s.sq * w, 1.0, 3)?;
        let k = random_bf16(gpu, s.batch * s.sk * w, 1.0, 4)?;
        let v = random_bf16(gpu, s.batch * s.sk * w, 1.0, 5)?;
        let dout = random_bf16(gpu, s.batch * s.sq * w, 1.0, 6)?;
        let (dq, dk, dv) = (gpu.alloc::<bf16>(q.len())?, gpu.alloc::<bf16>(k.len())?, gpu.alloc::<bf16>(v.len())?);
        let c = |b| attention::View::contiguous(b, w);
        let fwd_flops = 4.0 * (s.batch * s.heads * s.sq * s.sk * s.head_dim) as f64 * if s.causal { 0.5 } else { 1.0 };
        let mut fields = json!({
            "q": [s.batch, s.heads, s.sq, s.head_dim], "kv": [s.batch, s.heads, s.sk, s.head_dim],
            "causal": s.causal, "dtype": "bfloat16", "backend": "retro",
        });
        fields.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        let t = self.time(|| attention::forward(gpu, &s, c(&q), c(&k), c(&v), &attention::Masks::NONE).map(|_| ()))?;
        let mut f = fields.clone();
        f.as_object_mut().unwrap().extend([("mode".into(), json!("fwd")), ("flops".into(), json!(fwd_flops))]);
        emit(self.record(kernel, t, f));
        let t = self.time(|| {
            let (o, lse) = attention::forward(gpu, &s, c(&q), c(&k), c(&v), &attention::Masks::NONE)?;
            let (x, dx) = ((c(&q), c(&k), c(&v)), (c(&dq), c(&dk), c(&dv)));
            attention::backward(gpu, &s, x, &o, &lse, &dout, dx, &attention::Masks::NONE)
        })?;
        fields.as_object_mut().unwrap().extend([
            ("mode".into(), json!("fwd+bwd")),
            ("flops".into(), json!(3.5 * fwd_flops)),
            ("flop_convention".into(), json!("fwd_bwd=3.5*fwd")),
        ]);
        emit(self.record(kernel, t, fields));
        Ok(())
    }

    fn attention(&self, emit: &mut dyn FnMut(Value)) -> Result<()> {
        let (b, s, m, kn, r) = (4usize, 2048usize, 64usize, 2usize, 128usize);
        for (d, h) in [(1024usize, 16usize), (2048, 32)] {
            let dh = d / h;
            let chunks = b * s / m;
            let extra = json!({"batch": b, "seq": s, "hidden": d, "heads": h});
            let with = |more: Value| {
                let mut e = extra.clone();
                e.as_object_mut().unwrap().extend(more.as_object().cloned().unwrap_or_default());
                e
            };
            let shape = |batch, sq, sk, causal| attention::Dims { batch, heads: h, sq, sk, head_dim: dh, causal };
            let cases: Vec<(&str, &str, attention::Dims, Value)> = vec![
                ("cca", "cca_sdpa", shape(chunks, m, kn * r, false), with(json!({"m": m, "k": kn, "r": r}))),
                ("self_attn", "causal_self_attn", shape(b, s, s, true), extra.clone()),
                ("encoder_attn", "encoder_self_attn", shape(chunks * kn, r, r, false), with(json!({"r": r}))),
                (
                    "encoder_attn",
                    "encoder_cross_attn",
                    shape(chunks, kn * r, m, false),
                    with(json!({"m": m, "k": kn, "r": r})),
                ),
            ];
            for (group, kernel, s, extra) in cases {
                if self.want(group) {
                    if let Err(e) = self.attention_case(emit, kernel, s, extra) {
                        emit(
                            json!({"bench": "kernel", "kernel": kernel, "impl": "retro", "hidden": d, "status": "error", "error": e.to_string()}),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn layernorm(&self, emit: &mut dyn FnMut(Value)) -> Result<()> {
        if !self.want("layernorm") {
            return Ok(());
        }
        let gpu = &self.gpu;
        let n = 8192;
        for d in [1024usize, 2048, 2560] {
            let x = random_bf16(gpu, n * d, 1.0, 7)?;
            let r = random_bf16(gpu, n * d, 1.0, 8)?;
            let dy = random_bf16(gpu, n * d, 1.0, 9)?;
            let gamma = gpu.upload(&vec![1f32; d])?;
            let beta = gpu.zeros::<f32>(d)?;
            let (dg, db) = (gpu.zeros::<f32>(d)?, gpu.zeros::<f32>(d)?);
            let ex = |mode: &str, bytes: usize, convention: &str| json!({"shape": [n, d], "dtype": "bfloat16", "mode": mode, "bytes": bytes, "byte_convention": convention});
            let t = self.time(|| cuda::layernorm::forward(gpu, &x, &gamma, &beta, d, 1e-5).map(|_| ()))?;
            emit(self.record("layernorm", t, ex("fwd", 2 * n * d * 2, "read x + write y")));
            let (_, stats) = cuda::layernorm::forward(gpu, &x, &gamma, &beta, d, 1e-5)?;
            let t = self.time(|| cuda::layernorm::backward(gpu, &dy, &x, &stats, &gamma, &dg, &db, d).map(|_| ()))?;
            emit(self.record("layernorm", t, ex("bwd", 3 * n * d * 2, "read x, dy + write dx")));
            let t = self.time(|| cuda::layernorm::residual_forward(gpu, &x, &r, &gamma, &beta, d, 1e-5).map(|_| ()))?;
            emit(self.record("residual_layernorm", t, ex("fwd", 4 * n * d * 2, "read x, residual + write h, y")));
        }
        Ok(())
    }

    fn embedding(&self, emit: &mut dyn FnMut(Value)) -> Result<()> {
        if !self.want("embedding") {
            return Ok(());
        }
        let gpu = &self.gpu;
        let (v, t, d, period) = (50304usize, 8192usize, 2048usize, 2048usize);
        let mut rng = crate::rng::Rng::new(10);
        let tokens: Vec<i32> = (0..t).map(|_| rng.below(v as u64) as i32).collect();
        let batch = cuda::embedding::TokenBatch::new(gpu, &tokens, v)?;
        let word = random_bf16(gpu, v * d, 0.02, 11)?;
        let position = random_bf16(gpu, period * d, 0.02, 12)?;
        let dout = random_bf16(gpu, t * d, 1.0, 13)?;
        let (dword, dposition) = (gpu.alloc::<f32>(v * d)?, gpu.alloc::<f32>(period * d)?);
        let ex = |mode: &str, bytes: usize, convention: &str| {
            json!({"vocab": v, "tokens": t, "hidden": d, "dtype": "bfloat16", "mode": mode, "bytes": bytes,
                   "byte_convention": convention, "note": "retro adds the position embedding; its dW is f32 (zeroed inside the timing)"})
        };
        let secs = self.time(|| {
            cuda::embedding::forward(gpu, &batch, &word, &position, d, cuda::embedding::Positions::from_zero(period))
                .map(|_| ())
        })?;
        emit(self.record("embedding", secs, ex("fwd", 2 * t * d * 2, "read T rows + write T rows")));
        let secs = self.time(|| {
            gpu.fill_zero(&dword)?;
            gpu.fill_zero(&dposition)?;
            cuda::embedding::backward(
                gpu,
                &batch,
                &dout,
                &dword,
                &dposition,
                d,
                cuda::embedding::Positions::from_zero(period),
            )
        })?;
        emit(self.record("embedding", secs, ex("bwd", t * d * 2 + v * d * 2, "read dy + write dense dW [V,d]")));
        Ok(())
    }

    fn cross_entropy(&self, emit: &mut dyn FnMut(Value)) -> Result<()> {
        if !self.want("cross_entropy") {
            return Ok(());
        }
        let gpu = &self.gpu;
        let (n, v) = (8192usize, 50304usize);
        let mut logits = random_bf16(gpu, n * v, 1.0, 14)?;
        let mut rng = crate::rng::Rng::new(15);
        let targets: Vec<i32> = (0..n).map(|_| rng.below(v as u64) as i32).collect();
        let targets = cuda::cross_entropy::targets(gpu, &targets, v)?;
        // The kernel overwrites the logits with their gradient; repeated calls see gradient-sized values,
        // which costs the same.
        let secs = self.time(|| {
            cuda::cross_entropy::forward_backward(gpu, &mut logits, &targets, v, 1.0 / n as f32).map(|_| ())
        })?;
        emit(self.record(
            "cross_entropy",
            secs,
            json!({"shape": [n, v], "dtype": "bfloat16", "variant": "retro_fused", "mode": "fwd+bwd", "bytes": 2 * n * v * 2,
                   "byte_convention": "read logits + write dlogits (fused minimum)"}),
        ));
        Ok(())
    }
}
