//! The `retro` command line: the commands and their arguments live in `cli/`, one module each.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "retro", version, about = "RETRO (Retrieval-Enhanced Transformer) training engine", long_about = None, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole product on this machine's CPU in minutes: preprocess the vendored corpus (the King
    /// James New Testament; validation = Luke 12-24, whose parallels are in the retrieval database),
    /// train a small RETRO and the GPT baseline with identical budgets, compare validation perplexity
    /// with and without retrieval, and generate a continuation with its retrieved neighbours.
    Demo(cli::demo::Args),
    /// Show the build (kernels, architectures, MPI), the CPU threads, and every GPU with a check that
    /// the embedded kernels load from both the fatbin and the PTX and compute what the CPU computes.
    Info,
    /// Tokenize a corpus into Megatron's indexed dataset: writes `<PREFIX>_<KEY>_document.bin/.idx`,
    /// byte-identical to Megatron-LM's tools/preprocess_data.py with --tokenizer-type GPT2BPETokenizer
    /// (GPT-2 BPE, `<|endoftext|>` inside text is ordinary text, u16 tokens). Prints a JSON summary.
    Tokenize(cli::tokenize::Args),
    /// Build a RETRO project directory: tokenize -> chunk database -> BERT embeddings -> index (Flat or IVF) ->
    /// neighbours of every training and validation chunk; writes DIR/config.json (Megatron's retro_*
    /// keys). Stages resume after a kill; a directory made with other settings is refused.
    Preprocess(cli::preprocess::Args),
    /// Print a sample's text chunk by chunk with each chunk's retrieved neighbours.
    Inspect(cli::inspect::Args),
    /// Train RETRO (or, with --no-retrieval, the GPT baseline) on a preprocessed project. Settings the
    /// project fixes (sequence and chunk length, vocabulary, global batch, seed, eval interval / iters)
    /// are read from DIR/config.json; a flag that contradicts them is an error naming both values.
    /// Checkpoints go to --save (Megatron layout); --load resumes exactly where a run stopped.
    Train(Box<cli::train::Args>),
    /// Validation perplexity of a checkpoint with retrieval and with every neighbour masked.
    Eval(cli::eval::Args),
    /// Generate a continuation of a prompt with a KV cache; for RETRO, every completed 64-token chunk is
    /// embedded, searched in the project's index, and its neighbours feed the following chunk.
    Generate(cli::generate::Args),
    /// Nearest-neighbour indexes on NumPy files (Flat, IVF<n>,Flat, IVF<n>,PQ<m>): build, search, evaluate.
    #[command(subcommand)]
    Knn(cli::knn::Knn),
    /// Embed texts with the BERT chunk embedder: one JSON line per text, {"text", "ids", "embedding"}.
    /// Without --embedder-dir the default all-MiniLM-L6-v2 is fetched once into $RETRO_CACHE.
    Embed(cli::embed::Args),
    /// Benchmarks, one JSON line per measurement (conventions of ../shared/torch_retro/bench.py).
    #[command(subcommand)]
    Bench(Bench),
    /// Run the golden check: load weights, config (`__metadata__.config`) and a batch (`batch.*`) from a
    /// safetensors file, compute loss and gradients, then 3 AdamW steps (lr 1e-3, betas 0.9/0.95,
    /// eps 1e-8, weight decay 0.1, clip 1.0). Prints one JSON line: loss, global_grad_norm,
    /// grad_norms {name: norm}, adamw_losses [before step 1, 2, 3, after step 3]. Exit code 2 on bad input.
    CheckGolden(cli::check_golden::Args),
}

#[derive(Subcommand)]
enum Bench {
    /// Time training steps (forward, backward, clip, AdamW) on random data, like
    /// `bench.py train`: tokens/s, median step time, model FLOPs. CPU, f32.
    Train(cli::bench_train::Args),
    /// Exact inner-product KNN on random unit vectors (compare: scripts/bench-knn-faiss.py).
    Knn(cli::bench_knn::Args),
    /// `bench.py kernels` on the GPU: GEMM, attention, LayerNorm, embedding, cross-entropy kernels.
    Kernels(cli::bench_kernels::Args),
    /// The training data loader alone (batches of tokens and neighbour tokens) on a project.
    Loader(cli::bench_loader::Args),
    /// BERT chunk-embedding throughput on 64-token chunks of a corpus.
    Embed(cli::bench_embed::Args),
    /// Under `mpirun -np N`: the data-parallel gradient all-reduce (bucketed, as training runs it) on a
    /// model's gradient shapes against one plain MPI_Allreduce of the same bytes; bus bandwidth.
    Allreduce(cli::bench_allreduce::Args),
    /// The attention-variant lab: per CCA variant, its layer on the device in the training precision
    /// checked against its f64 CPU reference (output and every gradient), then fwd and fwd+bwd timings
    /// at a config's CCA and causal self-attention shapes (bench.py's cca_layer / causal_self_attn FLOPs).
    Attention(cli::bench_attention::Args),
}

/// Exit code 0, or the error on stderr and `code` (2: bad input or settings, 1: failures of benchmarks
/// and the demo).
fn finish(command: &str, result: retro::Result<()>, code: u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("retro {command}: {e}");
            ExitCode::from(code)
        }
    }
}

/// Large freed buffers are kept for the next step instead of being unmapped (src/alloc_tuning.rs).
#[global_allocator]
static ALLOCATOR: retro::alloc_tuning::RetainingAllocator = retro::alloc_tuning::RetainingAllocator::new();

fn main() -> ExitCode {
    retro::train::exit::mark_process_start();
    let cli = Cli::parse();
    retro::alloc_tuning::keep_freed_memory();
    match cli.command {
        Command::Demo(a) => finish("demo", cli::demo::run(a), 1),
        Command::Info => cli::info::run(),
        Command::Tokenize(a) => finish("tokenize", cli::tokenize::run(a), 2),
        Command::Preprocess(a) => finish("preprocess", cli::preprocess::run(a), 2),
        Command::Inspect(a) => finish("inspect", cli::inspect::run(a), 2),
        Command::Train(a) => finish("train", cli::train::run(*a), 2),
        Command::Eval(a) => finish("eval", cli::eval::run(a), 2),
        Command::Generate(a) => finish("generate", cli::generate::run(a), 2),
        Command::Embed(a) => finish("embed", cli::embed::run(a), 2),
        Command::Knn(k) => finish("knn", cli::knn::run(k), 2),
        Command::CheckGolden(a) => finish("check-golden", cli::check_golden::run(a), 2),
        Command::Bench(Bench::Train(a)) => finish("bench train", cli::bench_train::run(a), 1),
        Command::Bench(Bench::Knn(a)) => finish("bench knn", cli::bench_knn::run(a), 1),
        Command::Bench(Bench::Kernels(a)) => finish("bench kernels", cli::bench_kernels::run(a), 1),
        Command::Bench(Bench::Loader(a)) => finish("bench loader", cli::bench_loader::run(a), 1),
        Command::Bench(Bench::Embed(a)) => finish("bench embed", cli::bench_embed::run(a), 1),
        Command::Bench(Bench::Allreduce(a)) => finish("bench allreduce", cli::bench_allreduce::run(a), 1),
        Command::Bench(Bench::Attention(a)) => finish("bench attention", cli::bench_attention::run(a), 1),
    }
}
