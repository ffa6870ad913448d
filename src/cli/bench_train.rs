//! `retro bench train`: training-step throughput on random data.

#[derive(clap::Args)]
pub struct Args {
    /// Model preset (tiny, 857m, 2b, 4b) or a JSON config file.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    #[arg(long, default_value_t = 2)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
}

pub fn run(a: Args) -> retro::Result<()> {
    let mut config = super::model_config(&a.config)?;
    // As bench.py: dropout off for timing.
    config.dropout = 0.0;
    let bench = retro::bench::train::TrainBench {
        config,
        micro_batch: a.micro_batch,
        steps: a.steps,
        warmup: a.warmup,
        seed: a.seed,
    };
    println!("{}", retro::bench::train::run(&bench)?);
    eprint!("{}", retro::profile::report());
    Ok(())
}
