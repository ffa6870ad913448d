//! `retro embed`: texts through the BERT chunk embedder.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A directory with model.safetensors, config.json and tokenizer.json (or vocab.txt).
    #[arg(long)]
    pub embedder_dir: Option<PathBuf>,
    /// WordPiece tokens kept per text ([CLS] and [SEP] included).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(required = true)]
    pub texts: Vec<String>,
}

pub fn run(a: Args) -> retro::Result<()> {
    let dir = retro::retrieval::embedder_dir::resolve(a.embedder_dir.as_deref())?;
    let embedder = retro::retrieval::bert::BertEmbedder::load(&dir, a.max_tokens)?;
    let refs: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    for (text, e) in a.texts.iter().zip(embedder.embed(&refs, 8192)?) {
        println!("{}", serde_json::json!({"text": text, "ids": e.ids, "embedding": e.embedding}));
    }
    Ok(())
}
