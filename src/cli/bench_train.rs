//! `retro bench train`: training-step throughput on random data.
use std::process::ExitCode;

use super::*;

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

pub fn run(args: Args) -> ExitCode {
    let Args { config, micro_batch, steps, warmup, seed } = args;
    {
        let run = || -> retro::Result<serde_json::Value> {
            let mut config = model_config(&config)?;
            // As bench.py: dropout off for timing.
            config.dropout = 0.0;
            retro::bench::train::run(&retro::bench::train::TrainBench { config, micro_batch, steps, warmup, seed })
        };
        match run() {
            Ok(record) => {
                println!("{record}");
                eprint!("{}", retro::profile::report());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("retro bench train: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
