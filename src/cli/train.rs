//! `retro train`: training on a preprocessed project.
use std::path::PathBuf;

use super::model_config;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub project: PathBuf,
    /// Model shape: a preset (tiny, 857m, 2b, 4b) or a JSON config file.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Run directory for checkpoints and metrics.jsonl.
    #[arg(long)]
    pub save: PathBuf,
    /// Resume from the latest checkpoint in this run directory (usually the same as --save).
    #[arg(long)]
    pub load: Option<PathBuf>,
    /// Retro-fit from a GPT baseline checkpoint: its parameters are loaded, the CCA and encoder
    /// parameters start fresh (and are listed).
    #[arg(long, conflicts_with = "load")]
    pub init_from: Option<PathBuf>,
    #[arg(long)]
    pub train_iters: Option<u64>,
    #[arg(long)]
    pub train_samples: Option<u64>,
    #[arg(long, default_value_t = 1)]
    pub micro_batch_size: usize,
    #[arg(long)]
    pub global_batch_size: Option<usize>,
    #[arg(long, default_value_t = 6e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    #[arg(long, default_value_t = 0)]
    pub lr_warmup_samples: u64,
    /// Samples over which the LR decays to --min-lr (default: all training samples).
    #[arg(long)]
    pub lr_decay_samples: Option<u64>,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad: f64,
    #[arg(long, default_value_t = 0.1)]
    pub hidden_dropout: f64,
    /// Must equal --hidden-dropout (one dropout rate drives both today).
    #[arg(long)]
    pub attention_dropout: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub save_interval: u64,
    #[arg(long)]
    pub eval_interval: Option<u64>,
    #[arg(long)]
    pub eval_iters: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep only the newest N checkpoints (0: all).
    #[arg(long, default_value_t = 0)]
    pub keep: usize,
    /// Train the GPT baseline (no CCA, no encoder) on exactly the same samples.
    #[arg(long)]
    pub no_retrieval: bool,
    /// Write TensorBoard scalars (loss, lr, grad norm, tokens/s, validation perplexity) here.
    #[arg(long)]
    pub tensorboard_dir: Option<PathBuf>,
    /// auto, cpu or cuda: where the steps run (the same model code on both; on a GPU bf16 activations,
    /// f32 master weights and AdamW).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Tensor-parallel size (Megatron's): each model is split over this many consecutive ranks
    /// (column-parallel QKV, CCA query/key-value and fc1; row-parallel projections and fc2; the
    /// vocabulary of the embedding and the output layer divided), the retrieval encoder included. It
    /// must divide the processes of the job (mpirun -np N), the heads, the MLP width and the padded
    /// vocabulary. On GPUs the group's activations move over NCCL (not yet with --overlap-grad-reduce).
    /// Checkpoints are whole, so a run resumes with any size.
    #[arg(long, default_value_t = 1)]
    pub tensor_model_parallel_size: usize,
    /// Data parallelism (every process of `mpirun -np N` is a data-parallel rank): gradients are summed
    /// over the ranks in buckets of at most this many elements (on a GPU without --overlap-grad-reduce,
    /// the whole gradient arena in one NCCL call); the distributed optimizer's chunks are this size.
    #[arg(long, default_value_t = retro::train::data_parallel::DEFAULT_BUCKET_SIZE)]
    pub ddp_bucket_size: usize,
    /// Megatron's distributed optimizer (ZeRO-1): the AdamW moments split across the data-parallel ranks,
    /// gradients reduce-scattered, updated weight shards all-gathered (over MPI on the CPU, NCCL on GPUs),
    /// in chunks of --ddp-bucket-size elements.
    #[arg(long)]
    pub use_distributed_optimizer: bool,
    /// The CCA layers' variant, from the lab's registry (src/variants, docs/variants.md): cca
    /// (Megatron's, the default), cca-gate (Megatron's legacy retro_attention_gate constant, from the
    /// config), cca-tanh-gate (the output times tanh of a learned per-layer scalar that starts at 0), cca-relpos (a learned per-head bias for each distance between a chunk row and a neighbour token, as in the RETRO paper).
    /// Stored with the model config, so a checkpoint resumes only with the same variant.
    #[arg(long)]
    pub cca_variant: Option<String>,
    /// Megatron's --retro-num-neighbors: neighbours k each chunk attends to (at most the project's
    /// retro_query_num_neighbors_save). Default: the model config's (2 in the presets).
    #[arg(long)]
    pub retro_num_neighbors: Option<usize>,
    /// Megatron's --retro-num-retrieved-chunks: chunks per neighbour, the neighbour chunk and its
    /// continuation (r = this x the chunk length). Default: the project's retro_num_retrieved_chunks.
    #[arg(long)]
    pub retro_num_retrieved_chunks: Option<usize>,
    /// Megatron's architecture options (with --swiglu, --disable-bias-linear,
    /// --untie-embeddings-and-output-weights, --apply-layernorm-1p and --no-position-embedding, the
    /// architecture of InstructRetro's fine-tuning script). Rotary position embeddings on the decoder
    /// self-attention's queries and keys (CPU only so far).
    #[arg(long)]
    pub use_rotary_position_embeddings: bool,
    /// The fraction of each head's dimensions the rotary embedding turns (InstructRetro: 0.5).
    #[arg(long)]
    pub rotary_percent: Option<f64>,
    /// No learned absolute position embedding (with rotary embeddings, or none at all).
    #[arg(long)]
    pub no_position_embedding: bool,
    /// SwiGLU MLP: fc2(silu(a) * b), fc1 giving a and b, each 2/3 of the MLP width (4h in every preset)
    /// rounded down to a multiple of 64 (Megatron's rule). CPU only so far.
    #[arg(long)]
    pub swiglu: bool,
    /// No bias in any linear layer.
    #[arg(long)]
    pub disable_bias_linear: bool,
    /// The output layer gets its own weight (output_layer.weight) instead of the word embedding's.
    #[arg(long)]
    pub untie_embeddings_and_output_weights: bool,
    /// LayerNorm weights stored as w - 1 (initialised to 0, applied as 1 + w).
    #[arg(long)]
    pub apply_layernorm_1p: bool,
    /// The self-attention variant: mha (multi-head, Megatron's default) or gqa (grouped-query attention
    /// with --num-query-groups key / value heads, in the decoder's and the encoder's self-attention; the
    /// CCA stays multi-head). CPU only so far. Stored with the model config.
    #[arg(long, value_parser = ["mha", "gqa"])]
    pub attention_variant: Option<String>,
    /// Megatron's spelling of --attention-variant gqa.
    #[arg(long)]
    pub group_query_attention: bool,
    /// Key / value heads of grouped-query attention (Megatron's --num-query-groups); must divide the heads.
    #[arg(long)]
    pub num_query_groups: Option<usize>,
    /// Megatron's --overlap-grad-reduce: during each step's last backward, sum every bucket of gradients
    /// over the data-parallel ranks as soon as its gradients are complete (on the CPU non-blocking MPI,
    /// progressed between the backward's ops; on GPUs NCCL on a communication stream), so the
    /// communication hides behind the rest of the backward; the same sums as without it. Not with
    /// --use-distributed-optimizer.
    #[arg(long)]
    pub overlap_grad_reduce: bool,
    /// Stop after every N-th iteration (saving a checkpoint; exit 0; --load continues the run).
    #[arg(long)]
    pub exit_interval: Option<u64>,
    /// Stop once the process has run this many minutes, counted from its start as Megatron counts them
    /// (saving a checkpoint after the step in progress; exit 0).
    #[arg(long)]
    pub exit_duration_in_mins: Option<f64>,
    /// On SIGTERM (Slurm's warning before the time limit) finish the step, save a checkpoint and exit 0.
    /// Every rank stops at the same iteration, whichever rank got the signal.
    #[arg(long)]
    pub exit_signal_handler: bool,
    /// Under mpirun: a rank that has waited this long for the others in one collective (an MPI
    /// collective, or an NCCL one on a GPU) ends the job with exit status 1, naming itself and the
    /// wait, instead of hanging while another rank is stopped or hung. An NCCL collective's time counts
    /// from when the GPU reaches it, not from when it was queued, so the step's own kernels do not
    /// count. An NCCL error ends the job at once. (A rank that dies is reported by mpirun itself.)
    #[arg(long, default_value_t = 10.0)]
    pub distributed_timeout_minutes: f64,
}

/// Under `mpirun -np N` every process is a data-parallel (or tensor-parallel) rank; an error on any rank
/// ends the whole job with that rank's message (`super::on_every_rank`).
pub fn run(args: Args) -> retro::Result<()> {
    let world = std::rc::Rc::new(retro::dist::World::init()?);
    super::on_every_rank("retro train", world, |world| run_on(args, world))
}

fn run_on(args: Args, world: std::rc::Rc<retro::dist::World>) -> retro::Result<()> {
    let Args {
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
        device,
        tensor_model_parallel_size,
        ddp_bucket_size,
        use_distributed_optimizer,
        overlap_grad_reduce,
        cca_variant,
        retro_num_neighbors,
        retro_num_retrieved_chunks,
        use_rotary_position_embeddings,
        rotary_percent,
        no_position_embedding,
        swiglu,
        disable_bias_linear,
        untie_embeddings_and_output_weights,
        apply_layernorm_1p,
        attention_variant,
        group_query_attention,
        num_query_groups,
        exit_interval,
        exit_duration_in_mins,
        exit_signal_handler,
        distributed_timeout_minutes,
    } = args;
    let layout = retro::dist::ParallelLayout::new(world.size(), world.rank(), tensor_model_parallel_size)?;
    if exit_interval == Some(0) || exit_duration_in_mins.is_some_and(|m| m.is_nan() || m <= 0.0) {
        return Err(retro::Error::msg("--exit-interval and --exit-duration-in-mins must be positive"));
    }
    if ddp_bucket_size == 0 {
        return Err(retro::Error::msg("--ddp-bucket-size must be at least 1 element"));
    }
    if !(distributed_timeout_minutes > 0.0 && distributed_timeout_minutes.is_finite()) {
        return Err(retro::Error::msg("--distributed-timeout-minutes must be a positive number of minutes"));
    }
    if world.size() > 1 {
        let timeout = std::time::Duration::try_from_secs_f64(distributed_timeout_minutes * 60.0).map_err(|e| {
            retro::Error::msg(format!("--distributed-timeout-minutes {distributed_timeout_minutes}: {e}"))
        })?;
        retro::dist::watchdog::install_exiting(timeout, format!("rank {} of {}", world.rank(), world.size()))?;
    }
    super::share_cores(&world);
    // Megatron's groups: the ranks of one model's parts are consecutive, data-parallel ranks strided.
    let (dp_group, tp) = if layout.tp == 1 {
        (world.clone(), retro::dist::TensorParallel::single())
    } else {
        let dp_group = std::rc::Rc::new(world.split(layout.tp_rank(), layout.dp_rank())?);
        (dp_group, retro::dist::TensorParallel::new(std::rc::Rc::new(world.split(layout.dp_rank(), layout.tp_rank())?)))
    };
    let dp = retro::train::data_parallel::DataParallel {
        world: world.clone(),
        group: dp_group,
        layout,
        bucket_size: ddp_bucket_size,
        distributed_optimizer: use_distributed_optimizer,
        overlap_grad_reduce,
    };
    // Each rank on its own GPU: the one its node-local rank names.
    let device = retro::backend::select_device_for(&device, world.local_rank(), world.rank() == 0)?;
    if overlap_grad_reduce && use_distributed_optimizer {
        return Err(retro::Error::msg(
            "--overlap-grad-reduce is built for data parallelism without --use-distributed-optimizer (whose \
             reduce-scatter runs after the backward): drop one of the two flags",
        ));
    }
    // On GPUs a split model's ops move activations over NCCL within the tensor-parallel group (made after
    // the flag checks, so a refused run says why rather than failing in NCCL's set-up).
    #[cfg(not(no_cuda_kernels))]
    let tp = match device {
        retro::tensor::Device::Cuda(ordinal) if tp.is_split() && !overlap_grad_reduce => {
            tp.on_gpu(retro::backend::cuda::Gpu::shared(ordinal)?)?
        }
        _ => tp,
    };
    use retro::preprocess::project::ProjectConfig;
    let pc = ProjectConfig::read(&project).map_err(|e| e.context("--project"))?;
    let global =
        agree("--global-batch-size", global_batch_size, "retro_gpt_global_batch_size", pc.retro_gpt_global_batch_size)?;
    let seed = agree("--seed", seed, "retro_gpt_seed", pc.retro_gpt_seed)?;
    let eval_interval =
        agree("--eval-interval", eval_interval, "retro_gpt_eval_interval", pc.retro_gpt_eval_interval as u64)?;
    let eval_iters = agree("--eval-iters", eval_iters, "retro_gpt_eval_iters", pc.retro_gpt_eval_iters)?;
    if let Some(a) = attention_dropout {
        if a != hidden_dropout {
            return Err(retro::Error::msg(format!(
                "--attention-dropout {a} differs from --hidden-dropout {hidden_dropout}; one rate drives both today"
            )));
        }
    }
    let mut model = model_config(&config)?;
    model.dropout = hidden_dropout;
    model.gpt_baseline = no_retrieval;
    if let Some(variant) = cca_variant {
        retro::variants::cca_variant(&variant).map_err(|e| e.context("--cca-variant"))?;
        model.cca_variant = variant;
    }
    if let Some(k) = retro_num_neighbors {
        model.num_neighbors = k;
    }
    model.num_retrieved_chunks = retro_num_retrieved_chunks.unwrap_or(pc.retro_num_retrieved_chunks);
    // Each architecture flag turns its option on; without it the config's (preset or JSON) stands.
    model.use_rotary_position_embeddings |= use_rotary_position_embeddings;
    if let Some(percent) = rotary_percent {
        if !model.use_rotary_position_embeddings {
            return Err(retro::Error::msg("--rotary-percent needs --use-rotary-position-embeddings"));
        }
        model.rotary_percent = percent;
    }
    model.add_position_embedding &= !no_position_embedding;
    model.swiglu |= swiglu;
    model.add_bias_linear &= !disable_bias_linear;
    model.untie_embeddings_and_output_weights |= untie_embeddings_and_output_weights;
    model.apply_layernorm_1p |= apply_layernorm_1p;
    let gqa = match (attention_variant.as_deref(), group_query_attention) {
        (Some("mha"), true) => {
            return Err(retro::Error::msg("--attention-variant mha contradicts --group-query-attention"));
        }
        (Some(variant), _) => Some(variant == "gqa"),
        (None, true) => Some(true),
        (None, false) => None,
    };
    match (gqa, num_query_groups) {
        (Some(true), Some(groups)) => model.num_query_groups = Some(groups),
        (Some(true), None) => {
            return Err(retro::Error::msg("grouped-query attention needs --num-query-groups (key / value heads)"));
        }
        (Some(false), None) => model.num_query_groups = None,
        (Some(false), Some(_)) | (None, Some(_)) => {
            return Err(retro::Error::msg(
                "--num-query-groups needs --attention-variant gqa (Megatron: --group-query-attention)",
            ));
        }
        (None, None) => {}
    }
    model.validate()?;
    let samples = retro::data::samples::Samples::read(
        &retro::preprocess::project::Layout { dir: project.clone() }.samples("train"),
    )?
    .len() as u64;
    let iters = match (train_iters, train_samples) {
        (Some(_), Some(_)) => return Err(retro::Error::msg("give --train-iters or --train-samples, not both")),
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
        device,
        exit: retro::train::exit::ExitConditions {
            interval: exit_interval,
            duration_mins: exit_duration_in_mins,
            on_sigterm: exit_signal_handler,
        },
    };
    let s = retro::train::trainer::train(&args, &dp, &tp)?;
    if dp.is_root() {
        println!(
            "{}",
            serde_json::json!({"iterations": s.iterations, "stopped_by": s.stopped_by, "final_loss": s.final_loss,
                "valid_loss": s.valid_loss, "save": save})
        );
    }
    Ok(())
}

/// The project's value, or an error if the flag was given with another one.
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
