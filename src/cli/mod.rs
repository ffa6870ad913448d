//! One module per `retro` command: its clap arguments and what it runs.

pub mod bench_embed;
pub mod bench_knn;
pub mod bench_loader;
pub mod bench_train;
pub mod check_golden;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod info;
pub mod inspect;
pub mod preprocess;
pub mod tokenize;
pub mod train;

use std::process::ExitCode;

/// A model preset name or a JSON config file.
pub fn model_config(name_or_file: &str) -> retro::Result<retro::model::RetroConfig> {
    if retro::model::config::PRESETS.contains(&name_or_file) {
        return retro::model::RetroConfig::preset(name_or_file);
    }
    let text = std::fs::read_to_string(name_or_file).map_err(|e| {
        retro::Error::msg(format!(
            "--config {name_or_file}: not a preset ({}) and not a readable file: {e}",
            retro::model::config::PRESETS.join(", ")
        ))
    })?;
    retro::model::RetroConfig::from_json(&text).map_err(|e| e.context(name_or_file))
}

/// Print a benchmark's JSON record, or its error (exit code 1).
pub fn print_record(what: &str, record: retro::Result<serde_json::Value>) -> ExitCode {
    match record {
        Ok(r) => {
            println!("{r}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("retro {what}: {e}");
            ExitCode::FAILURE
        }
    }
}
