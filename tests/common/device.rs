//! One test body, two backends. `test_device!(name, |dev| ...)` makes `name::cpu` and `name::cuda`; the
//! CUDA copy prints why it skipped when there is no usable GPU (and fails instead when
//! RETRO_REQUIRE_GPU=1, which `scripts/gpu-check` sets, so a GPU run never passes by skipping).
//!
//! Besides it: where a copy puts its tensors (`Dev::placement`, `Dev::tensor`), reading them back, bf16
//! rounding, the tolerance helpers and the `RETRO_CHECK` reports `scripts/gpu-run` collects. Kernel-level
//! launchers on host data (the harness of tests/cuda_kernels.rs) live with those tests.
#![allow(dead_code)]

pub enum Dev {
    Cpu,
    /// The training kernels: bf16 activations.
    #[cfg(not(no_cuda_kernels))]
    Cuda(std::sync::Arc<retro::backend::cuda::Gpu>),
    /// The same launchers on f32 data (exact attention kernels): checked to f32 accuracy.
    #[cfg(not(no_cuda_kernels))]
    CudaF32(std::sync::Arc<retro::backend::cuda::Gpu>),
}

#[macro_export]
macro_rules! test_device {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn cpu() {
                let body: fn(&Dev) = $body;
                body(&Dev::Cpu);
            }
            #[test]
            fn cuda() {
                let body: fn(&Dev) = $body;
                if let Some(dev) = $crate::common::device::cuda(false) {
                    body(&dev);
                }
            }
            #[test]
            fn cuda_f32() {
                let body: fn(&Dev) = $body;
                if let Some(dev) = $crate::common::device::cuda(true) {
                    body(&dev);
                }
            }
        }
    };
}

/// The CUDA device for the `cuda` (bf16) or `cuda_f32` copy of a test, or None after printing why not.
pub fn cuda(f32: bool) -> Option<Dev> {
    let required = std::env::var("RETRO_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "RETRO_REQUIRE_GPU=1 but {why}");
        eprintln!("SKIPPED on CUDA: {why}");
        None
    };
    #[cfg(no_cuda_kernels)]
    let _ = f32;
    #[cfg(no_cuda_kernels)]
    return skip("this build has no CUDA kernels (nvcc was not found at build time)".into());
    #[cfg(not(no_cuda_kernels))]
    {
        if !retro::backend::cuda::driver_present() {
            return skip("no CUDA driver (libcuda.so) on this machine".into());
        }
        match retro::backend::cuda::devices() {
            Ok(d) if d.is_empty() => return skip("the CUDA driver sees no device".into()),
            Err(e) => return skip(format!("cannot list CUDA devices: {e}")),
            Ok(_) => {}
        }
        // One Gpu per test thread would create many contexts' worth of streams; share one.
        static GPU: std::sync::OnceLock<std::sync::Arc<retro::backend::cuda::Gpu>> = std::sync::OnceLock::new();
        // The process's shared Gpu: the one device tensors (`Tensor::to`) live on.
        let gpu = GPU.get_or_init(|| retro::backend::cuda::Gpu::shared(0).expect("opening GPU 0"));
        Some(if f32 { Dev::CudaF32(gpu.clone()) } else { Dev::Cuda(gpu.clone()) })
    }
}

/// A tensor's values on the host as f32, from any device and float dtype.
pub fn read(t: &retro::tensor::Tensor) -> Vec<f32> {
    let host = t.to(retro::tensor::Device::Cpu).unwrap();
    host.to_dtype(retro::tensor::DType::F32).unwrap().to_vec::<f32>().unwrap()
}

/// Round to the nearest bf16 (what the GPU stores).
pub fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
}

pub fn rand_bf16(rng: &mut retro::rng::Rng, n: usize, scale: f64) -> Vec<f32> {
    round_bf16(&(0..n).map(|_| (rng.normal() * scale) as f32).collect::<Vec<_>>())
}

/// bf16's unit roundoff (8 significant bits, round to nearest): one rounding to bf16 changes a value by
/// at most this fraction of itself. Every bf16 tolerance below is a multiple of it, derived per check.
pub const BF16_U: f32 = 1.0 / 256.0;
/// f32's unit roundoff.
pub const F32_U: f32 = 1.0 / 16_777_216.0;

/// The number of bf16 roundings on the longest path through a training step (forward and backward): per
/// decoder layer LN, QKV, P, o, projection, residual, LN, fc1, GELU, fc2, residual (11); per CCA layer 8
/// more (LN, Q, KV, P, o, projection, shifts, residual); the encoder's layers as decoder layers.
pub fn bf16_roundings(c: &retro::model::RetroConfig) -> usize {
    let cca = c.retro_layers().len();
    2 * (11 * (c.num_layers + 2 * usize::from(cca > 0)) + 8 * cca)
}

/// The relative tolerance of a loss computed in bf16: sqrt(forward roundings) * u, as independent
/// roundings of relative size u = 2^-8 add up like a random walk (the gradient's is sqrt(all) * u).
pub fn bf16_loss_tolerance(c: &retro::model::RetroConfig) -> f64 {
    (bf16_roundings(c) as f64 / 2.0).sqrt() * BF16_U as f64
}

/// Tolerance of a sum of `len` terms accumulated in f32 (a parameter gradient over rows): each addition
/// rounds by F32_U, the errors of `len` additions grow like `len` at worst relative to the sum of the
/// terms' magnitudes, and for random-signed terms that sum is ~sqrt(len) times the result; so
/// `len * F32_U` relative to the result, times 8 for the f32 arithmetic feeding the terms.
pub fn f32_sum_tol(len: usize) -> f32 {
    (8.0 * len as f32 * F32_U).max(1e-5)
}

/// max |a - b| / max(max |reference|, floor): a norm-wise relative error; infinite when `got` holds a
/// NaN or an infinity (f32::max would skip a NaN).
pub fn rel_err(got: &[f32], reference: &[f32], floor: f32) -> f32 {
    assert_eq!(got.len(), reference.len(), "length mismatch");
    if got.iter().any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let scale = reference.iter().fold(floor, |m, v| m.max(v.abs()));
    got.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

#[track_caller]
pub fn assert_close(what: &str, dev: &Dev, got: &[f32], reference: &[f32], cpu_tol: f32, cuda_tol: f32) {
    #[cfg(no_cuda_kernels)]
    let _ = cuda_tol;
    let tol = match dev {
        Dev::Cpu => cpu_tol,
        #[cfg(not(no_cuda_kernels))]
        Dev::Cuda(_) => cuda_tol,
        // Exact kernels in f32: as accurate as the CPU, up to summation order and fast-math exp / rsqrt.
        #[cfg(not(no_cuda_kernels))]
        Dev::CudaF32(_) => cpu_tol.max(1e-5),
    };
    let e = rel_err(got, reference, 1e-6);
    report_check(what, dev, e as f64, tol as f64);
    assert!(e <= tol, "{what} on {}: relative error {e:.3e} > {tol:.1e}", dev.name());
    eprintln!("{what} on {}: relative error {e:.2e} (tolerance {tol:.1e})", dev.name());
}

/// One machine-readable line per check, before its verdict (so a failing check is recorded too).
pub fn report_check(what: &str, dev: &Dev, err: f64, tol: f64) {
    // JSON has no NaN / infinity: a non-finite error is written as a string ("NaN", "inf").
    let e = if err.is_finite() { serde_json::json!(err) } else { serde_json::json!(err.to_string()) };
    report(serde_json::json!({"check": what, "device": dev.name(), "err": e, "tol": tol, "ok": err <= tol}));
}

/// `RETRO_CHECK {"test": "<test path>", ...fields}`: appended to the file $RETRO_CHECK_LOG when set (what
/// `scripts/gpu-run` collects into the per-kernel table, whatever libtest captures), else to stderr.
pub fn report(mut fields: serde_json::Value) {
    use std::io::Write;
    fields["test"] = serde_json::json!(std::thread::current().name().unwrap_or("?"));
    let line = format!("RETRO_CHECK {fields}\n");
    match std::env::var_os("RETRO_CHECK_LOG") {
        // One write of one short line per call: lines from concurrent tests do not interleave.
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("RETRO_CHECK_LOG {}: {e}", path.to_string_lossy())),
        None => eprint!("{line}"),
    }
}

/// Whether `dev` runs the exact f32 kernels on the GPU (some library routines there, cuBLASLt's GELU
/// epilogue, are not as exact as the CPU's f32).
pub fn is_gpu_f32(dev: &Dev) -> bool {
    #[cfg(not(no_cuda_kernels))]
    if let Dev::CudaF32(_) = dev {
        return true;
    }
    let _ = dev;
    false
}

impl Dev {
    pub fn name(&self) -> String {
        match self {
            Dev::Cpu => "cpu".into(),
            #[cfg(not(no_cuda_kernels))]
            Dev::Cuda(g) => format!("{} (bf16)", g.name()),
            #[cfg(not(no_cuda_kernels))]
            Dev::CudaF32(g) => format!("{} (f32)", g.name()),
        }
    }

    /// Where this copy of a test puts its tensors: the device, and the dtype of activations there (f32 on
    /// the CPU and for `cuda_f32`, bf16 for `cuda`).
    pub fn placement(&self) -> (retro::tensor::Device, retro::tensor::DType) {
        use retro::tensor::{DType, Device};
        match self {
            Dev::Cpu => (Device::Cpu, DType::F32),
            #[cfg(not(no_cuda_kernels))]
            Dev::Cuda(gpu) => (Device::Cuda(gpu.ordinal()), DType::BF16),
            #[cfg(not(no_cuda_kernels))]
            Dev::CudaF32(gpu) => (Device::Cuda(gpu.ordinal()), DType::F32),
        }
    }

    /// Host f32 values as an activation tensor of this copy (converted, then copied to the device).
    pub fn tensor(&self, x: &[f32], shape: &[usize]) -> retro::tensor::Tensor {
        let (device, dtype) = self.placement();
        retro::tensor::Tensor::from_vec(x.to_vec(), shape).unwrap().to_dtype(dtype).unwrap().to(device).unwrap()
    }
}
