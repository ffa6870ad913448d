//! The `retro` command line.

use clap::{Parser, Subcommand};
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
    }
}
