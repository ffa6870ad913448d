//! `retro preprocess`: corpus to a RETRO project directory.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The corpus: .jsonl / .json / .txt (optionally .gz) or a directory of .txt files.
    #[arg(long)]
    pub input: PathBuf,
    /// The project directory (Megatron's --retro-project-dir).
    #[arg(long)]
    pub project: PathBuf,
    #[arg(long, default_value_t = 2048)]
    pub seq_length: usize,
    #[arg(long, default_value_t = 64)]
    pub chunk_length: usize,
    /// Document split weights train,valid,test.
    #[arg(long, default_value = "98,2,0")]
    pub split: String,
    /// Training samples (0: one epoch of the training documents).
    #[arg(long, default_value_t = 0)]
    pub train_samples: usize,
    #[arg(long, default_value_t = 256)]
    pub global_batch_size: usize,
    #[arg(long, default_value_t = 1000)]
    pub eval_interval: usize,
    #[arg(long, default_value_t = 10)]
    pub eval_iters: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Neighbours searched per chunk before removing those from the sample's own documents.
    #[arg(long, default_value_t = 200)]
    pub num_neighbors_query: usize,
    /// Neighbours kept per chunk (-1 padded).
    #[arg(long, default_value_t = 20)]
    pub num_neighbors_save: usize,
    /// BERT embedder directory (default: all-MiniLM-L6-v2, fetched once).
    #[arg(long)]
    pub embedder_dir: Option<PathBuf>,
    /// WordPiece tokens per chunk given to BERT.
    #[arg(long, default_value_t = 256)]
    pub max_chunk_tokens: usize,
    #[arg(long, default_value = "text")]
    pub json_keys: String,
    #[arg(long, conflicts_with = "split_lines")]
    pub split_paragraphs: bool,
    #[arg(long)]
    pub split_lines: bool,
    /// The index, in faiss's vocabulary: Flat, IVF<n>,Flat, IVFauto (about 4·sqrt(chunks) lists), or
    /// auto: Flat up to 1M chunks, IVFauto,Flat above. The index stage's summary says what it built.
    #[arg(long, default_value = "auto")]
    pub retro_index_str: String,
    /// k-means training sample of an IVF index (0: 256 chunks per list, at most all of them).
    #[arg(long, default_value_t = 0)]
    pub retro_index_ntrain: usize,
    /// IVF lists searched per query chunk (more: better recall, slower).
    #[arg(long, default_value_t = 16)]
    pub retro_query_nprobe: usize,
    /// Run one stage: tokenize, db, embed, index or query.
    #[arg(long)]
    pub stage: Option<String>,
    /// Verify every stored checksum, then recompute this fraction of the embedding and neighbour blocks
    /// and check them bitwise.
    #[arg(long, default_value_t = 0.0)]
    pub validate: f64,
    /// Memory the index stage may hold besides its memory-mapped files (e.g. 8G, 512M): an IVF index's
    /// k-means sample is cut to fit (and says so); a limit too small for the rest is refused up front.
    #[arg(long)]
    pub memory_limit: Option<String>,
}

/// Under `mpirun -np N` the ranks divide the embedding and neighbour-query blocks (the project directory
/// must be on a filesystem every rank sees); an error on any rank ends the job with its message.
pub fn run(args: Args) -> retro::Result<()> {
    let world = std::rc::Rc::new(retro::dist::World::init()?);
    super::on_every_rank("retro preprocess", world, |world| run_on(args, &world))
}

fn run_on(args: Args, world: &retro::dist::World) -> retro::Result<()> {
    super::share_cores(world);
    let Args {
        input,
        project,
        seq_length,
        chunk_length,
        split,
        train_samples,
        global_batch_size,
        eval_interval,
        eval_iters,
        seed,
        num_neighbors_query,
        num_neighbors_save,
        embedder_dir,
        max_chunk_tokens,
        json_keys,
        split_paragraphs,
        split_lines,
        retro_index_str,
        retro_index_ntrain,
        retro_query_nprobe,
        stage,
        validate,
        memory_limit,
    } = args;
    let memory_limit = memory_limit.as_deref().map(retro::retrieval::memory_budget::parse_bytes).transpose()?;
    use retro::data::corpus;
    use retro::preprocess::{self, project::ProjectConfig};
    if retro_index_str != "auto" {
        retro::retrieval::index_spec::IndexSpec::parse(&retro_index_str).map_err(|e| e.context("--retro-index-str"))?;
    }
    if seq_length == 0 || chunk_length == 0 || seq_length % chunk_length != 0 {
        retro::bail!("--seq-length {seq_length} must be a positive multiple of --chunk-length {chunk_length}");
    }
    let config = ProjectConfig {
        retro_gpt_seq_length: seq_length,
        retro_gpt_chunk_length: chunk_length,
        retro_gpt_global_batch_size: global_batch_size,
        retro_gpt_train_samples: train_samples,
        retro_gpt_eval_interval: eval_interval,
        retro_gpt_eval_iters: eval_iters,
        retro_gpt_seed: seed,
        retro_gpt_split: split,
        retro_bert_embedder: embedder_dir.as_ref().map_or("all-MiniLM-L6-v2".into(), |d| d.display().to_string()),
        retro_bert_max_chunk_length: max_chunk_tokens,
        retro_query_num_neighbors_query: num_neighbors_query,
        retro_query_num_neighbors_save: num_neighbors_save,
        retro_index_str,
        retro_index_ntrain,
        retro_query_nprobe,
        ..ProjectConfig::new(&input, &json_keys)
    };
    let split = super::corpus_split(split_paragraphs, split_lines);
    let opts = preprocess::Options {
        input,
        project,
        config,
        corpus: corpus::Options { json_key: json_keys, split },
        embedder_dir,
        stage,
        validate,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        memory_limit,
    };
    let summary = preprocess::run(&opts, world)?;
    if world.rank() == 0 {
        println!("{summary}");
    }
    Ok(())
}
