//! `retro generate`: KV-cached sampling with live retrieval.
use super::CheckpointArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
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
}

pub fn run(a: Args) -> retro::Result<()> {
    let (_, model, device) = a.checkpoint.load()?;
    let retriever = if model.is_retro() {
        Some(retro::retrieval::live::LiveRetriever::open(
            &a.checkpoint.project,
            model.config.num_neighbors,
            model.config.num_retrieved_chunks,
        )?)
    } else {
        None
    };
    let sampling = retro::commands::generate::Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p };
    let out = retro::commands::generate::generate(
        &model,
        device,
        retriever.as_ref(),
        &a.prompt,
        a.max_tokens,
        &sampling,
        a.seed,
    )?;
    println!("{}{}", a.prompt, out.text);
    if a.show_neighbours {
        for r in &out.retrieved {
            println!("\n--- chunk {} {:?}", r.chunk, r.chunk_text);
            for (rank, (id, text)) in r.neighbors.iter().enumerate() {
                println!("    neighbour {rank} (chunk {id}): {text:?}");
            }
        }
    }
    Ok(())
}
