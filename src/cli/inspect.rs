//! `retro inspect`: a sample and its retrieved neighbours.
use std::path::PathBuf;

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

pub fn run(a: Args) -> retro::Result<()> {
    print!("{}", retro::preprocess::inspect(&a.project, &a.split, a.sample, a.neighbors)?);
    Ok(())
}
