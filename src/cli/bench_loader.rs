//! `retro bench loader`: the training data loader alone.
use std::path::PathBuf;
use std::process::ExitCode;

use super::*;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub project: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    #[arg(long, default_value_t = 4)]
    pub micro_batch_size: usize,
    #[arg(long, default_value_t = 200)]
    pub batches: usize,
}

pub fn run(args: Args) -> ExitCode {
    let Args { project, k, micro_batch_size, batches } = args;
    {
        print_record("bench loader", retro::bench::loader::run(&project, k, micro_batch_size, batches))
    }
}
