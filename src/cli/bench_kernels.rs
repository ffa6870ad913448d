//! `retro bench kernels`: GPU kernel timings as JSON lines (see `retro::bench::kernels`).

#[derive(clap::Args)]
pub struct Args {
    /// Comma-separated groups: gemm, cca, self_attn, encoder_attn, layernorm, embedding, cross_entropy
    /// (bench.py's names). Default: all.
    #[arg(long)]
    pub only: Option<String>,
    /// Timed reps per measurement (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
}

#[cfg(not(no_cuda_kernels))]
pub fn run(a: Args) -> retro::Result<()> {
    use std::io::Write;
    let only = a.only.map(|s| s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect());
    let suite = retro::bench::kernels::Suite::new(a.gpu, only, a.reps)?;
    let mut failed = 0;
    suite.run(&mut |line| {
        if line["status"] != "ok" {
            failed += 1;
        }
        println!("{line}");
        let _ = std::io::stdout().flush();
    })?;
    retro::ensure!(failed == 0, "{failed} kernel measurements failed (their lines say why)");
    Ok(())
}

#[cfg(no_cuda_kernels)]
pub fn run(_: Args) -> retro::Result<()> {
    retro::bail!(
        "this build has no CUDA kernels ({}); rebuild with nvcc available",
        retro::kernels::build::MISSING_REASON
    )
}
