//! `retro generate`: KV-cached sampling with live retrieval.
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory (iter_NNNNNNN) or a run directory (its latest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub project: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Print each chunk's retrieved neighbours.
    #[arg(long)]
    pub show_neighbours: bool,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(args: Args) -> ExitCode {
    let Args { checkpoint, project, prompt, max_tokens, temperature, top_k, top_p, seed, show_neighbours, device } =
        args;
    {
        let run = || -> retro::Result<()> {
            retro::backend::select_device(&device)?;
            use retro::train::checkpoint as ck;
            let dir = ck::resolve(&checkpoint)?;
            let config = ck::model_config(&dir)?;
            let model = ck::load_model(&dir, &config, retro::tensor::DType::F32)?;
            let retriever = if model.is_retro() {
                Some(retro::retrieval::live::LiveRetriever::open(&project, config.num_neighbors)?)
            } else {
                None
            };
            let sampling = retro::generate::Sampling { temperature, top_k, top_p };
            let out = retro::generate::generate(&model, retriever.as_ref(), &prompt, max_tokens, &sampling, seed)?;
            println!("{prompt}{}", out.text);
            if show_neighbours {
                for r in &out.retrieved {
                    println!("\n--- chunk {} {:?}", r.chunk, r.chunk_text);
                    for (rank, (id, text)) in r.neighbors.iter().enumerate() {
                        println!("    neighbour {rank} (chunk {id}): {text:?}");
                    }
                }
            }
            Ok(())
        };
        match run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("retro generate: {e}");
                ExitCode::from(2)
            }
        }
    }
}
