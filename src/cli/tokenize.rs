//! `retro tokenize`: corpus to Megatron's indexed dataset.
use std::path::PathBuf;
use std::process::ExitCode;

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

pub fn run(args: Args) -> ExitCode {
    let Args { input, output_prefix, json_keys, append_eod, split_paragraphs, split_lines, workers } = args;
    {
        use retro::data::{corpus, tokenize};
        if json_keys.contains(',') || json_keys.contains(' ') {
            eprintln!("retro tokenize: one --json-keys value is supported, got {json_keys:?}");
            return ExitCode::from(2);
        }
        let split = match (split_paragraphs, split_lines) {
            (true, _) => corpus::Split::Paragraphs,
            (_, true) => corpus::Split::Lines,
            _ => corpus::Split::None,
        };
        let opts = tokenize::Options {
            corpus: corpus::Options { json_key: json_keys, split },
            append_eod,
            workers,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        match tokenize::run(&input, &output_prefix, &opts) {
            Ok(summary) => {
                println!("{}", serde_json::to_string(&summary).expect("summary serializes"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("retro tokenize: {e}");
                ExitCode::from(2)
            }
        }
    }
}
