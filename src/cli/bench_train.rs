//! `retro bench train`: training-step throughput on random data.

#[derive(clap::Args)]
pub struct Args {
    /// Model preset (tiny, 857m, 2b, 4b) or a JSON config file.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Micro-batch size, or `auto` on the GPU: 1, 2, 4, 8 until one does not fit (bench.py's rule).
    #[arg(long, default_value = "2")]
    pub micro_batch: String,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// auto (CUDA when a GPU and the kernels are there), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(a: Args) -> retro::Result<()> {
    let mut config = super::model_config(&a.config)?;
    // As bench.py: dropout off for timing.
    config.dropout = 0.0;
    let sizes: Vec<usize> = match a.micro_batch.as_str() {
        "auto" => vec![1, 2, 4, 8],
        s => vec![s.parse().map_err(|_| retro::Error::msg(format!("--micro-batch {s:?}: a number or auto")))?],
    };
    let bench = |micro_batch| retro::bench::train::TrainBench {
        config: config.clone(),
        micro_batch,
        steps: a.steps,
        warmup: a.warmup,
        seed: a.seed,
    };
    match retro::backend::select_device(&a.device)? {
        retro::tensor::Device::Cpu => {
            retro::ensure!(sizes.len() == 1, "--micro-batch auto is for the GPU; give a number on the CPU");
            println!("{}", retro::bench::train::run(&bench(sizes[0]))?);
            eprint!("{}", retro::profile::report());
            Ok(())
        }
        #[cfg(no_cuda_kernels)]
        retro::tensor::Device::Cuda(_) => retro::bail!("this build has no CUDA kernels"),
        #[cfg(not(no_cuda_kernels))]
        retro::tensor::Device::Cuda(ordinal) => {
            let auto = sizes.len() > 1;
            // One context for every size: each run draws its weights on the GPU and frees them into the
            // allocator's cache for the next.
            let gpu = retro::backend::cuda::Gpu::shared(ordinal)?;
            for mb in sizes {
                match retro::bench::train::run_gpu(&bench(mb), gpu.clone()) {
                    Ok(line) => println!("{line}"),
                    Err(e) if auto && e.to_string().contains("allocating") => {
                        println!(
                            "{}",
                            serde_json::json!({"bench": "train", "impl": "retro", "micro_batch": mb, "status": "oom", "error": e.to_string()})
                        );
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}
