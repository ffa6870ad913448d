//! `retro inspect`: a sample and its retrieved neighbours.
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub project: PathBuf,
    #[arg(long)]
    pub sample: usize,
    #[arg(long, default_value = "train", value_parser = ["train", "valid"])]
    pub split: String,
    /// Neighbours shown per chunk.
    #[arg(long, default_value_t = 2)]
    pub neighbors: usize,
}

pub fn run(args: Args) -> ExitCode {
    let Args { project, sample, split, neighbors } = args;
    {
        match retro::preprocess::inspect(&project, &split, sample, neighbors) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("retro inspect: {e}");
                ExitCode::from(2)
            }
        }
    }
}
