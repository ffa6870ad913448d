//! `retro embed`: texts through the BERT chunk embedder.
use std::path::PathBuf;
use std::process::ExitCode;

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

pub fn run(args: Args) -> ExitCode {
    let Args { embedder_dir, max_tokens, texts } = args;
    {
        let run = || -> retro::Result<()> {
            let dir = retro::retrieval::embedder_dir::resolve(embedder_dir.as_deref())?;
            let embedder = retro::retrieval::bert::BertEmbedder::load(&dir, max_tokens)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (text, e) in texts.iter().zip(embedder.embed(&refs, 8192)?) {
                println!("{}", serde_json::json!({"text": text, "ids": e.ids, "embedding": e.embedding}));
            }
            Ok(())
        };
        match run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("retro embed: {e}");
                ExitCode::from(2)
            }
        }
    }
}
