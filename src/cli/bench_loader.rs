//! `retro bench loader`: the training data loader alone.
use std::path::PathBuf;

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

pub fn run(a: Args) -> retro::Result<()> {
    println!("{}", retro::bench::loader::run(&a.project, a.k, a.micro_batch_size, a.batches)?);
    Ok(())
}
