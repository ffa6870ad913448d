//! `retro bench attention`: the attention-variant lab's check and timings (see `retro::bench::attention`).

use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    /// A CCA variant from the lab's registry (cca, cca-gate, cca-tanh-gate, cca-relpos), or `all`.
    #[arg(long, default_value = "all", value_parser = variant_name)]
    pub variant: String,
    /// Model preset (tiny, 857m, 2b, 4b) or a JSON config file: the hidden size, heads, chunk length m,
    /// neighbours k, retrieved length r and sequence length of the check and the timings.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// auto (CUDA when a GPU and the kernels are there), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Sequences per timed pass.
    #[arg(long, default_value_t = 1)]
    pub micro_batch_size: usize,
    /// Timed reps per measurement (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

fn variant_name(name: &str) -> Result<String, String> {
    match name {
        "all" => Ok(name.into()),
        _ => retro::variants::cca_variant(name).map(|_| name.into()).map_err(|e| e.to_string()),
    }
}

pub fn run(a: Args) -> retro::Result<()> {
    let variants = match a.variant.as_str() {
        "all" => retro::variants::CCA_VARIANTS.iter().collect(),
        name => vec![retro::variants::cca_variant(name)?],
    };
    let mut config = super::model_config(&a.config)?;
    config.dropout = 0.0;
    retro::ensure!(a.micro_batch_size > 0, "--micro-batch-size must be at least 1");
    let bench = retro::bench::attention::AttentionBench {
        variants,
        config,
        device: retro::backend::select_device(&a.device)?,
        micro_batch: a.micro_batch_size,
        reps: a.reps,
    };
    let emit = |line: serde_json::Value| {
        println!("{line}");
        let _ = std::io::stdout().flush();
    };
    let mut failed = Vec::new();
    for entry in &bench.variants {
        // A variant that fails its check (or cannot run on the device) is reported and not timed.
        match bench.check(entry) {
            Ok((line, ok)) => {
                emit(line);
                if !ok {
                    failed.push(entry.name);
                    continue;
                }
            }
            Err(e) => {
                emit(serde_json::json!({"bench": "attention", "check": "error", "variant": entry.name,
                    "device": bench.device.to_string(), "error": format!("{e:#}")}));
                failed.push(entry.name);
                continue;
            }
        }
        bench.time_cca(entry)?.into_iter().for_each(emit);
    }
    bench.time_self_attention()?.into_iter().for_each(emit);
    retro::ensure!(failed.is_empty(), "variants that failed their check or could not run: {}", failed.join(", "));
    Ok(())
}
