//! `retro tokenize`: corpus to Megatron's indexed dataset.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .jsonl / .json file (one JSON object per line), a .txt file, or a directory of .txt files;
    /// each may be gzip-compressed (.gz).
    #[arg(long)]
    pub input: PathBuf,
    /// Output prefix P: writes P_<key>_document.bin and P_<key>_document.idx.
    #[arg(long)]
    pub output_prefix: PathBuf,
    /// The JSON key holding each document's text (one key).
    #[arg(long, default_value = "text")]
    pub json_keys: String,
    /// Append the end-of-document token (50256) to every non-empty document.
    #[arg(long)]
    pub append_eod: bool,
    /// Text files: one document per blank-line-separated paragraph instead of per file.
    #[arg(long, conflicts_with = "split_lines")]
    pub split_paragraphs: bool,
    /// Text files: one document per non-empty line.
    #[arg(long)]
    pub split_lines: bool,
    /// Tokenizer threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

pub fn run(a: Args) -> retro::Result<()> {
    use retro::data::{corpus, tokenize};
    if a.json_keys.contains(',') || a.json_keys.contains(' ') {
        retro::bail!("one --json-keys value is supported, got {:?}", a.json_keys);
    }
    let split = super::corpus_split(a.split_paragraphs, a.split_lines);
    let opts = tokenize::Options {
        corpus: corpus::Options { json_key: a.json_keys, split },
        append_eod: a.append_eod,
        workers: a.workers,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let summary = tokenize::run(&a.input, &a.output_prefix, &opts)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
