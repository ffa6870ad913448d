//! Model FLOPs of one training step and parameter counts, exactly as `torch_retro/model.py`
//! (`model_flops_per_step`, `count_params`): matmuls only, 2 FLOPs per multiply-add, training = 3×
//! forward, causal attention counted in full. With `--swiglu` the MLP's three matrices of the config's
//! width replace the two of 4d, and with grouped-query attention the K and V projections are
//! kv_heads / heads of Q's (torch_retro has neither; the other architecture options change no matmul).

use crate::model::RetroConfig;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flops {
    pub decoder_dense: f64,
    pub decoder_attn: f64,
    pub logits: f64,
    pub cca: f64,
    pub encoder: f64,
    pub total: f64,
    pub decoder_tokens: f64,
    pub neighbor_tokens: f64,
}

pub fn model_flops_per_step(c: &RetroConfig, batch: usize) -> Flops {
    let (d, l, v, s) = (c.hidden_size as f64, c.num_layers as f64, c.vocab_size as f64, c.seq_length as f64);
    let (m, k, r) = (c.chunk_length as f64, c.num_neighbors as f64, c.retrieved_length() as f64);
    let (cca_layers, e) = (c.retro_layers().len() as f64, c.encoder_num_layers as f64);
    let t = batch as f64 * s;
    let chunks = (batch * c.seq_length / c.chunk_length) as f64;
    let tn = if cca_layers > 0.0 { chunks * k * r } else { 0.0 };
    // Multiply-adds per token of one layer's attention projections and MLP (12 d² for Megatron's 4d MLP).
    let ffn = c.ffn_hidden_size() as f64;
    let kv = (c.hidden_size / c.num_heads * c.kv_heads()) as f64;
    let dense = 2.0 * d * d + 2.0 * d * kv + if c.swiglu { 3.0 } else { 2.0 } * d * ffn;
    let decoder_dense = 6.0 * dense * l * t;
    let decoder_attn = 12.0 * l * d * s * t;
    let logits = 6.0 * d * v * t;
    let cca = cca_layers * 3.0 * (t * 4.0 * d * d + tn * 4.0 * d * d + t * 4.0 * k * r * d);
    let encoder = if cca_layers > 0.0 {
        3.0 * (e * (2.0 * dense * tn + 4.0 * r * d * tn) + 4.0 * d * d * tn + 4.0 * d * d * t + 4.0 * m * d * tn)
    } else {
        0.0
    };
    Flops {
        decoder_dense,
        decoder_attn,
        logits,
        cca,
        encoder,
        total: decoder_dense + decoder_attn + logits + cca + encoder,
        decoder_tokens: t,
        neighbor_tokens: tn,
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: usize,
    pub embedding: usize,
    pub encoder: usize,
    pub decoder_cca: usize,
    pub decoder_non_embedding_non_cca: usize,
}

/// Counts by Megatron name, as `count_params` (tied embedding counted once).
pub fn count_params(specs: &[crate::model::params::ParamSpec]) -> ParamCounts {
    let (mut total, mut embedding, mut encoder, mut cca) = (0, 0, 0, 0);
    for s in specs {
        let n: usize = s.shape.iter().product();
        total += n;
        if s.name.starts_with("embedding.") {
            embedding += n;
        } else if s.name.contains(".encoder.") {
            encoder += n;
        } else if s.name.contains(".cross_attention.") || s.name.contains(".pre_cross_attn_layernorm.") {
            cca += n;
        }
    }
    ParamCounts {
        total,
        embedding,
        encoder,
        decoder_cca: cca,
        decoder_non_embedding_non_cca: total - embedding - encoder - cca,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RetroModel;

    #[test]
    fn parameter_counts_match_the_reference_table() {
        for (name, total) in [("tiny", 399_488), ("857m", 410_515_456), ("2b", 1_970_507_776), ("4b", 4_461_296_640)] {
            let c = RetroConfig::preset(name).unwrap();
            assert_eq!(count_params(&RetroModel::specs(&c).unwrap()).total, total, "{name}");
        }
        let tiny = count_params(&RetroModel::specs(&RetroConfig::preset("tiny").unwrap()).unwrap());
        assert_eq!((tiny.embedding, tiny.encoder, tiny.decoder_cca), (49_152, 116_736, 33_536));
    }

    #[test]
    fn flops_match_the_reference_table() {
        for (name, tflop) in [("857m", 31.16), ("2b", 136.44), ("4b", 297.08)] {
            let f = model_flops_per_step(&RetroConfig::preset(name).unwrap(), 4);
            assert!((f.total / 1e12 - tflop).abs() < 0.005, "{name}: {}", f.total / 1e12);
        }
        let f = model_flops_per_step(&RetroConfig::preset("857m").unwrap(), 4);
        for (got, want) in
            [(f.decoder_dense, 14.84), (f.decoder_attn, 4.95), (f.logits, 2.53), (f.cca, 3.25), (f.encoder, 5.59)]
        {
            assert!((got / 1e12 - want).abs() < 0.005, "{got} vs {want}");
        }
    }
}
