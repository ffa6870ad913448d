//! `retro info`: what this build can do and what this machine has, with proof that the embedded
//! kernels load (fatbin and PTX) and compute what the CPU reference computes.

use crate::backend::cuda;
#[cfg(not(no_cuda_kernels))]
use crate::Result;
use std::fmt::Write;

/// This process's place in the job: under `mpirun`, its rank, the world size and its node-local rank
/// (the GPU a training rank uses); else a single process.
fn world_line() -> String {
    match crate::dist::World::init() {
        Ok(w) if w.size() > 1 => format!(
            "{}; `retro train` runs it as {} data-parallel ranks, this one on GPU {} when it trains on GPUs",
            w.describe(),
            w.size(),
            w.local_rank()
        ),
        Ok(w) => w.describe(),
        Err(e) => format!("{e}"),
    }
}

/// The report, and whether every check passed.
pub fn report() -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let _ = writeln!(out, "retro {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "kernels: {}", kernels_line());
    let _ = writeln!(
        out,
        "cpu: {} rayon threads (large GEMMs split over them, matrixmultiply kernels); loops {}",
        rayon::current_num_threads(),
        if crate::backend::cpu::simd::avx2_fma() { "with AVX2 + FMA" } else { "baseline SIMD (no AVX2 + FMA)" }
    );
    let _ = writeln!(
        out,
        "mpi: {}",
        if cfg!(feature = "mpi") {
            "compiled in (run under mpirun)"
        } else {
            "not compiled (build with --features mpi)"
        }
    );
    let _ = writeln!(out, "world: {}", world_line());
    if !cuda::driver_present() {
        let _ = writeln!(out, "cuda: no driver (libcuda.so not found); the CPU backend is used");
        return (out, ok);
    }
    match cuda::devices() {
        Ok(devs) if devs.is_empty() => {
            let _ = writeln!(out, "cuda: driver present, no device visible");
        }
        Ok(devs) => {
            let _ = writeln!(out, "cuda: driver present, {} device(s)", devs.len());
            for d in devs {
                let _ = writeln!(
                    out,
                    "device {}: {}, sm_{}{}, {} SMs, {:.1} GiB",
                    d.ordinal,
                    d.name,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.multiprocessors,
                    d.total_memory_bytes as f64 / (1u64 << 30) as f64
                );
                for line in kernel_checks(d.ordinal) {
                    ok &= line.starts_with("  ok");
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        Err(e) => {
            ok = false;
            let _ = writeln!(out, "cuda: driver present but devices cannot be listed: {e}");
        }
    }
    (out, ok)
}

#[cfg(not(no_cuda_kernels))]
fn kernels_line() -> String {
    use crate::kernels::{FATBIN_ARCHS, MODULES, NVCC_VERSION, PTX_ARCH};
    format!(
        "compiled by nvcc ({NVCC_VERSION}); fatbin {:?}, PTX {PTX_ARCH}; families: {}",
        FATBIN_ARCHS,
        MODULES.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
    )
}

#[cfg(no_cuda_kernels)]
fn kernels_line() -> String {
    format!("not compiled ({})", crate::kernels::build::MISSING_REASON)
}

#[cfg(no_cuda_kernels)]
fn kernel_checks(_ordinal: usize) -> Vec<String> {
    vec!["  kernels: this build has none, so nothing can run on the GPU (rebuild with nvcc available)".into()]
}

/// For the fatbin and for the PTX (the driver's JIT): every module loads and every entry point resolves,
/// and the AdamW kernel and the sum of squares compute what the CPU computes.
#[cfg(not(no_cuda_kernels))]
fn kernel_checks(ordinal: usize) -> Vec<String> {
    use cuda::module::Image;
    let mut lines = Vec::new();
    for image in [Image::Fatbin, Image::Ptx] {
        lines.push(match load_every_entry_point(ordinal, image) {
            Ok(detail) => format!("  ok: every kernel from the {image}: {detail}"),
            Err(e) => format!("  FAILED: kernels from the {image}: {e}"),
        });
        lines.push(match adamw_check(ordinal, image) {
            Ok(detail) => format!("  ok: kernels/adamw.cu from the {image}: {detail}"),
            Err(e) => format!("  FAILED: kernels/adamw.cu from the {image}: {e}"),
        });
    }
    lines
}

/// Loads every module of `image` in a fresh context and resolves each of its entry points.
#[cfg(not(no_cuda_kernels))]
fn load_every_entry_point(ordinal: usize, image: cuda::module::Image) -> Result<String> {
    let gpu = cuda::Gpu::with_image(ordinal, image)?;
    let entries = cuda::module::all_entry_points();
    let failed: Vec<String> = entries
        .iter()
        .filter_map(|(module, entry)| gpu.function(module, entry).err().map(|e| format!("{module}.cu {entry}: {e}")))
        .collect();
    crate::ensure!(failed.is_empty(), "{} of {} entry points fail: {}", failed.len(), entries.len(), failed.join("; "));
    Ok(format!("{} modules, {} entry points resolve", crate::kernels::MODULES.len(), entries.len()))
}

/// Runs the fused AdamW kernel (a decaying and a non-decaying part, clipped) and the sum of squares on
/// the GPU and compares with the CPU reference.
#[cfg(not(no_cuda_kernels))]
fn adamw_check(ordinal: usize, image: cuda::module::Image) -> Result<String> {
    use crate::backend::cpu::adamw::update_slice;
    use crate::kernels::abi::AdamwParams;
    use crate::train::AdamWConfig;
    let gpu = cuda::Gpu::with_image(ordinal, image)?;
    let (n, decay_end, grad_scale, max_norm) = (4099, 2048, 0.5, 0.25);
    let mut rng = crate::rng::Rng::new(1);
    let mut draw = |s: f64| (0..n).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
    let (mut p, g, mut m) = (draw(1.0), draw(0.1), draw(0.01));
    let mut v: Vec<f32> = draw(0.01).iter().map(|x| x * x).collect();
    let config = AdamWConfig::default();
    let (decay, keep) = (config.coefficients(1e-3, 3, true), config.coefficients(1e-3, 3, false));
    let (dp, dg, dm, dv) = (gpu.upload(&p)?, gpu.upload(&g)?, gpu.upload(&m)?, gpu.upload(&v)?);
    let sumsq = gpu.alloc::<f64>(1)?;
    cuda::adamw::sum_squares_into(&gpu, &dg, &sumsq)?;
    let arenas = cuda::adamw::Arenas { param: &dp, grad: &dg, exp_avg: &dm, exp_avg_sq: &dv, weights_bf16: None };
    cuda::adamw::update(&gpu, &arenas, &sumsq, AdamwParams::new(&decay, grad_scale, Some(max_norm), n, decay_end))?;
    let (gpu_p, gpu_sumsq) = (gpu.download(&dp)?, gpu.download(&sumsq)?[0]);
    let cpu_sumsq: f64 = g.iter().map(|&x| (x as f64) * (x as f64)).sum();
    let clip = (max_norm / (cpu_sumsq.sqrt() * grad_scale + 1e-6)).min(1.0);
    let scaled: Vec<f32> = g.iter().map(|&x| x * (grad_scale * clip) as f32).collect();
    let (d, k) = (decay_end, n);
    update_slice(&mut p[..d], &scaled[..d], &mut m[..d], &mut v[..d], &decay);
    update_slice(&mut p[d..k], &scaled[d..k], &mut m[d..k], &mut v[d..k], &keep);
    let max_rel = p.iter().zip(&gpu_p).map(|(a, b)| ((a - b).abs() / a.abs().max(1e-3)) as f64).fold(0.0, f64::max);
    let sumsq_rel = ((gpu_sumsq - cpu_sumsq) / cpu_sumsq).abs();
    crate::ensure!(max_rel < 1e-5, "AdamW update differs from the CPU by {max_rel:.2e} (relative)");
    crate::ensure!(sumsq_rel < 1e-12, "sum of squares {gpu_sumsq} differs from the CPU's {cpu_sumsq}");
    Ok(format!("AdamW on {n} elements within {max_rel:.1e} of the CPU, sum of squares within {sumsq_rel:.1e}"))
}
