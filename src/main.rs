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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
