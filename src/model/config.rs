//! `RetroConfig`: the model's shape (serde JSON, the golden file's `__metadata__.config` format) and
//! the presets `tiny`, `857m`, `2b`, `4b`.

use crate::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetroConfig {
    #[serde(default)]
    pub name: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    /// Exact row count of the (tied) word embedding; see [`padded_vocab_size`] for Megatron's padding.
    pub vocab_size: usize,
    /// Sequence length n, also the number of learned positions.
    pub seq_length: usize,
    /// Chunk length m.
    #[serde(default = "default_chunk_length")]
    pub chunk_length: usize,
    /// Neighbours per chunk, k.
    #[serde(default = "default_two")]
    pub num_neighbors: usize,
    /// Chunks per neighbour (the neighbour and its continuation): r = this × m.
    #[serde(default = "default_two")]
    pub num_retrieved_chunks: usize,
    #[serde(default = "default_two")]
    pub encoder_num_layers: usize,
    #[serde(default = "default_ffn_mult")]
    pub ffn_mult: usize,
    #[serde(default = "default_eps")]
    pub layernorm_eps: f64,
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Hidden and attention dropout (Megatron: 0.1); 0 in golden checks.
    #[serde(default)]
    pub dropout: f64,
    /// 1-based decoder layers with chunked cross-attention; `None` = Megatron's rule.
    #[serde(default)]
    pub retro_layer_numbers: Option<Vec<usize>>,
    /// GPT baseline: no CCA layers and no encoder; everything else shared.
    #[serde(default)]
    pub gpt_baseline: bool,
    /// Beyond Megatron: a neighbour whose tokens are all -1 is masked out of the decoder's
    /// cross-attention instead of being an error.
    #[serde(default)]
    pub mask_missing_neighbors: bool,
    /// Megatron's legacy `--retro-attention-gate`: the CCA output is multiplied by this constant before
    /// the residual add. 1 (the default) is Megatron core's behaviour.
    #[serde(default = "default_gate")]
    pub retro_attention_gate: f64,
    /// The CCA layers' variant (src/variants, `--cca-variant`): Megatron's `cca` by default (then not
    /// written, so configs from before variants existed read the same).
    #[serde(default = "default_cca_variant", skip_serializing_if = "is_default_cca_variant")]
    pub cca_variant: String,
    // Megatron's architecture options (InstructRetro's fine-tuning uses them all). Each is off by default
    // and then not written, so configs from before they existed read (and compare) the same.
    /// `--use-rotary-position-embeddings`: rotary embeddings on the decoder self-attention's queries and
    /// keys (not the encoder's or the CCA's, as Megatron).
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_rotary_position_embeddings: bool,
    /// `--rotary-percent`: the fraction of each head's dimensions rotated.
    #[serde(default = "default_one", skip_serializing_if = "is_one")]
    pub rotary_percent: f64,
    /// `--no-position-embedding` sets this false: no learned absolute position embedding.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub add_position_embedding: bool,
    /// `--swiglu`: the MLP is `fc2(silu(a) ∘ b)` with fc1 giving [a | b]; its width (Megatron's rule) is
    /// 2/3 of ffn_mult × hidden, rounded down to a multiple of 64.
    #[serde(default, skip_serializing_if = "is_false")]
    pub swiglu: bool,
    /// `--disable-bias-linear` sets this false: no bias in any linear layer.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub add_bias_linear: bool,
    /// `--untie-embeddings-and-output-weights`: the output layer has its own `output_layer.weight`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub untie_embeddings_and_output_weights: bool,
    /// `--apply-layernorm-1p`: LayerNorm weights are stored as w − 1 (initialised to 0, applied as 1 + w).
    #[serde(default, skip_serializing_if = "is_false")]
    pub apply_layernorm_1p: bool,
    /// `--group-query-attention --num-query-groups G`: the self-attentions (decoder and encoder) have G
    /// key / value heads, each shared by num_heads / G query heads. The CCA keeps one per head (Megatron
    /// refuses grouped-query cross-attention, so it cannot run RETRO with GQA at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_query_groups: Option<usize>,
    // Derived values some writers include (the golden file does); checked, never trusted.
    #[serde(default, skip_serializing)]
    retrieved_length: Option<usize>,
    #[serde(default, skip_serializing)]
    head_dim: Option<usize>,
    #[serde(default, skip_serializing)]
    ffn_hidden_size: Option<usize>,
}

fn default_chunk_length() -> usize {
    64
}
fn default_two() -> usize {
    2
}
fn default_ffn_mult() -> usize {
    4
}
fn default_eps() -> f64 {
    1e-5
}
fn default_gate() -> f64 {
    1.0
}
fn default_cca_variant() -> String {
    "cca".into()
}
fn is_default_cca_variant(v: &str) -> bool {
    v == "cca"
}
fn default_init_std() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn default_one() -> f64 {
    1.0
}
fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// Megatron's `--make-vocab-size-divisible-by 128`: 50257 GPT-2 tokens -> 50304 rows.
pub fn padded_vocab_size(tokenizer_vocab: usize) -> usize {
    tokenizer_vocab.div_ceil(128) * 128
}

pub const PRESETS: [&str; 4] = ["tiny", "857m", "2b", "4b"];

impl RetroConfig {
    fn base(name: &str, num_layers: usize, hidden_size: usize, num_heads: usize) -> Self {
        Self {
            name: name.into(),
            num_layers,
            hidden_size,
            num_heads,
            vocab_size: padded_vocab_size(50257),
            seq_length: 2048,
            chunk_length: 64,
            num_neighbors: 2,
            num_retrieved_chunks: 2,
            encoder_num_layers: 2,
            ffn_mult: 4,
            layernorm_eps: 1e-5,
            init_std: 0.02,
            dropout: 0.1,
            retro_layer_numbers: None,
            gpt_baseline: false,
            mask_missing_neighbors: false,
            retro_attention_gate: 1.0,
            cca_variant: default_cca_variant(),
            use_rotary_position_embeddings: false,
            rotary_percent: 1.0,
            add_position_embedding: true,
            swiglu: false,
            add_bias_linear: true,
            untie_embeddings_and_output_weights: false,
            apply_layernorm_1p: false,
            num_query_groups: None,
            retrieved_length: None,
            head_dim: None,
            ffn_hidden_size: None,
        }
    }

    /// `tiny` is the golden config (4/64/4, vocab 512, seq 256, CCA layers [2, 4], dropout 0);
    /// `857m`, `2b`, `4b` are Megatron's (seq 2048, vocab 50304, dropout 0.1).
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "tiny" => Self {
                vocab_size: 512,
                seq_length: 256,
                dropout: 0.0,
                retro_layer_numbers: Some(vec![2, 4]),
                ..Self::base("tiny", 4, 64, 4)
            },
            "857m" => Self::base("857m", 24, 1024, 16),
            "2b" => Self::base("2b", 32, 2048, 32),
            "4b" => Self::base("4b", 48, 2560, 32),
            other => bail!("unknown model preset {other:?} (presets: {})", PRESETS.join(", ")),
        })
    }

    /// Parse and validate a JSON config.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| crate::Error::msg(format!("model config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serializes")
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The MLP's hidden features: ffn_mult × hidden, or with SwiGLU 2/3 of that rounded down to a
    /// multiple of 64 (Megatron's default for --swiglu, keeping the parameter count about the same).
    pub fn ffn_hidden_size(&self) -> usize {
        let plain = self.ffn_mult * self.hidden_size;
        if self.swiglu {
            plain * 2 / 3 / 64 * 64
        } else {
            plain
        }
    }

    /// The options of this config that have no GPU path yet (empty: the model runs on both devices).
    pub fn cpu_only_options(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.cca_variant != "cca" && self.cca_variant != "cca-gate" && !self.gpt_baseline {
            out.push(format!("--cca-variant {}", self.cca_variant));
        }
        for (on, flag) in [
            (self.num_query_groups.is_some_and(|g| g != self.num_heads), "--attention-variant gqa"),
            (self.use_rotary_position_embeddings, "--use-rotary-position-embeddings"),
            (self.swiglu, "--swiglu"),
            (!self.add_position_embedding, "--no-position-embedding"),
        ] {
            if on {
                out.push(flag.into());
            }
        }
        out
    }

    /// Whether the model can run on `device`: on a GPU, none of `cpu_only_options`; else an error
    /// naming them, before any work.
    pub fn check_device(&self, device: crate::tensor::Device) -> Result<()> {
        let cpu_only = self.cpu_only_options();
        ensure!(
            device == crate::tensor::Device::Cpu || cpu_only.is_empty(),
            "{} run on the CPU only so far (their ops have no GPU path yet); use --device cpu",
            cpu_only.join(", ")
        );
        Ok(())
    }

    /// Key / value heads of the self-attentions: the query groups, or one per head.
    pub fn kv_heads(&self) -> usize {
        self.num_query_groups.unwrap_or(self.num_heads)
    }

    /// Dimensions of each head the rotary embedding turns (even), when it is on.
    pub fn rotary_dim(&self) -> Option<usize> {
        self.use_rotary_position_embeddings.then(|| (self.head_dim() as f64 * self.rotary_percent) as usize / 2 * 2)
    }

    /// r: tokens per retrieved neighbour (neighbour chunk + continuation).
    pub fn retrieved_length(&self) -> usize {
        self.num_retrieved_chunks * self.chunk_length
    }

    /// 1-based decoder layers with CCA: the explicit list, else Megatron's
    /// `range(6 if L <= 15 else 9, L + 1, 3)`; none for the GPT baseline.
    pub fn retro_layers(&self) -> Vec<usize> {
        if self.gpt_baseline {
            return Vec::new();
        }
        match &self.retro_layer_numbers {
            Some(list) => list.clone(),
            None => {
                let start = if self.num_layers <= 15 { 6 } else { 9 };
                (start..=self.num_layers).step_by(3).collect()
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        let c = self;
        ensure!(
            c.num_layers > 0 && c.hidden_size > 0 && c.num_heads > 0,
            "model config: layers, hidden size and heads must be positive"
        );
        ensure!(
            c.hidden_size % c.num_heads == 0,
            "model config: hidden_size {} is not divisible by num_heads {}",
            c.hidden_size,
            c.num_heads
        );
        ensure!(c.vocab_size > 0 && c.chunk_length > 0, "model config: vocab_size and chunk_length must be positive");
        ensure!(
            c.seq_length % c.chunk_length == 0,
            "model config: seq_length {} is not a multiple of chunk_length {}",
            c.seq_length,
            c.chunk_length
        );
        ensure!(
            c.retro_attention_gate.is_finite(),
            "model config: retro_attention_gate {} is not finite",
            c.retro_attention_gate
        );
        ensure!((0.0..1.0).contains(&c.dropout), "model config: dropout {} is not in [0, 1)", c.dropout);
        crate::variants::cca_variant(&c.cca_variant).map_err(|e| e.context("model config: cca_variant"))?;
        if let Some(groups) = c.num_query_groups {
            ensure!(
                groups > 0 && c.num_heads % groups == 0,
                "model config: num_query_groups {groups} does not divide num_heads {}",
                c.num_heads
            );
        }
        ensure!(
            c.rotary_percent > 0.0 && c.rotary_percent <= 1.0,
            "model config: rotary_percent {} is not in (0, 1]",
            c.rotary_percent
        );
        if let Some(dim) = c.rotary_dim() {
            ensure!(
                dim >= 2,
                "model config: rotary_percent {} of a head of {} dimensions rotates none",
                c.rotary_percent,
                c.head_dim()
            );
        }
        ensure!(
            c.ffn_hidden_size() > 0,
            "model config: swiglu's MLP width (2/3 of {} x {}, a multiple of 64) is 0; the hidden size is too small",
            c.ffn_mult,
            c.hidden_size
        );
        ensure!(
            c.retro_attention_gate == 1.0 || c.cca_variant == "cca-gate",
            "model config: retro_attention_gate {} is the cca-gate variant's constant, but cca_variant is {:?}; \
             set cca_variant to \"cca-gate\"",
            c.retro_attention_gate,
            c.cca_variant
        );
        if !c.gpt_baseline {
            let layers = c.retro_layers();
            ensure!(
                !layers.is_empty(),
                "model config: {} layers give no CCA layer by Megatron's rule (it starts at 6); list retro_layer_numbers",
                c.num_layers
            );
            ensure!(
                layers.iter().all(|&n| (1..=c.num_layers).contains(&n)) && layers.windows(2).all(|w| w[0] < w[1]),
                "model config: retro_layer_numbers {:?} must be increasing, within 1..={}",
                layers,
                c.num_layers
            );
            ensure!(
                c.num_neighbors > 0 && c.num_retrieved_chunks > 0 && c.encoder_num_layers > 0,
                "model config: k, retrieved chunks and encoder layers must be positive"
            );
            ensure!(
                c.retrieved_length() <= c.seq_length,
                "model config: neighbours of {} tokens need that many positions, but seq_length is {}",
                c.retrieved_length(),
                c.seq_length
            );
        }
        for (what, given, derived) in [
            ("retrieved_length", c.retrieved_length, c.retrieved_length()),
            ("head_dim", c.head_dim, c.head_dim()),
            ("ffn_hidden_size", c.ffn_hidden_size, c.ffn_hidden_size()),
        ] {
            if let Some(given) = given {
                ensure!(given == derived, "model config: {what} is {given} but the other fields give {derived}");
            }
        }
        Ok(())
    }

    /// Whether a tensor-parallel group of `n` ranks can split this model (Megatron's checks): the heads
    /// (so the hidden size), the MLP's hidden features and the (padded) vocabulary divide evenly.
    pub fn check_tensor_parallel(&self, n: usize) -> Result<()> {
        for (what, count) in [
            ("num_heads (--num-attention-heads)", self.num_heads),
            ("num_query_groups (--num-query-groups)", self.kv_heads()),
            ("ffn_hidden_size", self.ffn_hidden_size()),
            ("the padded vocabulary", self.vocab_size),
        ] {
            ensure!(
                count % n == 0,
                "--tensor-model-parallel-size {n}: {what} is {count}, not divisible by {n}; each tensor-parallel \
                 rank needs an equal part"
            );
        }
        Ok(())
    }

    /// On GPUs, the kernels' rule for a rank's part (16-byte vector loads: widths in multiples of 8
    /// elements): its slice of the padded vocabulary (the vocab-parallel loss) and of the MLP's hidden
    /// features (the bias + GELU on fc1's output). Checked before any work, with `check_tensor_parallel`.
    pub fn check_tensor_parallel_on_gpu(&self, n: usize) -> Result<()> {
        self.check_tensor_parallel(n)?;
        for (what, count) in [("the padded vocabulary", self.vocab_size), ("ffn_hidden_size", self.ffn_hidden_size())] {
            ensure!(
                (count / n) % 8 == 0,
                "--tensor-model-parallel-size {n} on a GPU: {what} is {count}, so each rank holds {}, not a multiple \
                 of 8 (the GPU kernels' vector width); use a size whose parts are, or --device cpu",
                count / n
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megatron_retro_layer_rule_and_presets() {
        assert_eq!(RetroConfig::preset("857m").unwrap().retro_layers(), vec![9, 12, 15, 18, 21, 24]);
        assert_eq!(RetroConfig::preset("2b").unwrap().retro_layers(), (9..=30).step_by(3).collect::<Vec<_>>());
        let mut c = RetroConfig::preset("857m").unwrap();
        c.num_layers = 12;
        assert_eq!(c.retro_layers(), vec![6, 9, 12]);
        assert_eq!(RetroConfig::preset("tiny").unwrap().retro_layers(), vec![2, 4]);
        assert_eq!(padded_vocab_size(50257), 50304);
        assert_eq!(padded_vocab_size(512), 512);
        assert!(RetroConfig::preset("7b").unwrap_err().to_string().contains("tiny, 857m, 2b, 4b"));
    }

    #[test]
    fn json_round_trip_and_checks() {
        let c = RetroConfig::preset("tiny").unwrap();
        assert_eq!(RetroConfig::from_json(&c.to_json()).unwrap(), c);
        let bad = c.to_json().replace("\"num_heads\":4", "\"num_heads\":5");
        assert!(RetroConfig::from_json(&bad).unwrap_err().to_string().contains("not divisible"));
        let derived = c.to_json().replace('}', ",\"head_dim\":8}");
        assert!(RetroConfig::from_json(&derived).unwrap_err().to_string().contains("head_dim is 8"));
        let mut few = c.clone();
        few.retro_layer_numbers = None;
        assert!(few.validate().unwrap_err().to_string().contains("no CCA layer"));
        c.check_tensor_parallel(4).unwrap();
        c.check_tensor_parallel_on_gpu(4).unwrap();
        let mut narrow = c.clone();
        narrow.vocab_size = 24; // parts of 12: fine on the CPU, not for the GPU kernels
        narrow.check_tensor_parallel(2).unwrap();
        let e = narrow.check_tensor_parallel_on_gpu(2).unwrap_err().to_string();
        assert!(e.contains("on a GPU") && e.contains("each rank holds 12"), "{e}");
        let e = c.check_tensor_parallel(3).unwrap_err().to_string();
        assert!(e.contains("--tensor-model-parallel-size 3") && e.contains("num_heads"), "{e}");
    }
}
