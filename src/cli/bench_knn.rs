//! `retro bench knn`: exact KNN throughput on random unit vectors.

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

pub fn run(a: Args) -> retro::Result<()> {
    println!("{}", retro::bench::knn::run(a.vectors, a.queries, a.dim, a.k, a.reps)?);
    Ok(())
}
