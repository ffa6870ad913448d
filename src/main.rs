//! The `retro` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "retro", version, about = "RETRO (Retrieval-Enhanced Transformer) training engine", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the build (kernels, architectures, MPI), the CPU threads, and every GPU with a check that
    /// the embedded kernels load from both the fatbin and the PTX and compute what the CPU computes.
    Info,
    /// Benchmarks, one JSON line per measurement (conventions of ../shared/torch_retro/bench.py).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the golden check: load weights, config (`__metadata__.config`) and a batch (`batch.*`) from a
    /// safetensors file, compute loss and gradients, then 3 AdamW steps (lr 1e-3, betas 0.9/0.95,
    /// eps 1e-8, weight decay 0.1, clip 1.0). Prints one JSON line: loss, global_grad_norm,
    /// grad_norms {name: norm}, adamw_losses [before step 1, 2, 3, after step 3]. Exit code 2 on bad input.
    CheckGolden {
        /// The golden file, e.g. ../shared/torch_retro/golden/retro_tiny.safetensors
        #[arg(long)]
        weights: PathBuf,
        /// Compute in f64 (matches PyTorch's float64 golden values to ~1e-12) or f32.
        #[arg(long, default_value = "f64", value_parser = ["f64", "f32"])]
        dtype: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time training steps (forward, backward, clip, AdamW) on random data, like
    /// `bench.py train`: tokens/s, median step time, model FLOPs. CPU, f32.
    Train {
        /// Model preset (tiny, 857m, 2b, 4b) or a JSON config file.
        #[arg(long, default_value = "tiny")]
        config: String,
        #[arg(long, default_value_t = 2)]
        micro_batch: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
    },
}

fn model_config(name_or_file: &str) -> retro::Result<retro::model::RetroConfig> {
    if retro::model::config::PRESETS.contains(&name_or_file) {
        return retro::model::RetroConfig::preset(name_or_file);
    }
    let text = std::fs::read_to_string(name_or_file).map_err(|e| {
        retro::Error::msg(format!(
            "--config {name_or_file}: not a preset ({}) and not a readable file: {e}",
            retro::model::config::PRESETS.join(", ")
        ))
    })?;
    retro::model::RetroConfig::from_json(&text).map_err(|e| e.context(name_or_file))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    retro::alloc_tuning::keep_freed_memory();
    match cli.command {
        Command::Info => {
            let (report, ok) = retro::info::report();
            print!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("retro info: a kernel check failed (see above)");
                ExitCode::FAILURE
            }
        }
        Command::Bench(BenchCommand::Train { config, micro_batch, steps, warmup, seed }) => {
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
        Command::CheckGolden { weights, dtype } => {
            let dtype = dtype.parse().expect("clap restricts the values");
            match retro::golden::run(&weights, dtype) {
                Ok(report) => {
                    println!("{}", serde_json::to_string(&report).expect("report serializes"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("retro check-golden: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
