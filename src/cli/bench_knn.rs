//! `retro bench knn`: exact KNN throughput on random unit vectors.
use std::process::ExitCode;

use super::*;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 100_000)]
    pub vectors: usize,
    #[arg(long, default_value_t = 1024)]
    pub queries: usize,
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    #[arg(long, default_value_t = 200)]
    pub k: usize,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

pub fn run(args: Args) -> ExitCode {
    let Args { vectors, queries, dim, k, reps } = args;
    {
        print_record("bench knn", retro::bench::knn::run(vectors, queries, dim, k, reps))
    }
}
