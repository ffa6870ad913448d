//! `retro check-golden`: the model against PyTorch's golden values.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The golden file, e.g. ../shared/torch_retro/golden/retro_tiny.safetensors
    #[arg(long)]
    pub weights: PathBuf,
    /// Compute in f64 (matches PyTorch's float64 golden values to ~1e-12) or f32.
    #[arg(long, default_value = "f64", value_parser = ["f64", "f32"])]
    pub dtype: String,
}

pub fn run(a: Args) -> retro::Result<()> {
    let dtype = a.dtype.parse()?;
    let report = retro::commands::golden::run(&a.weights, dtype)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
