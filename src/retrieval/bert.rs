//! A BERT sentence embedder on the engine's ops (inference mode): post-LN encoder, exact-erf GELU,
//! LayerNorm eps from config.json (1e-12), token type 0, key-padding mask; mean pooling over the tokens
//! with mask 1 (CLS and SEP included), then L2 normalisation, as sentence-transformers does for
//! all-MiniLM-L6-v2. Any BERT-family `model.safetensors` + `config.json` + `tokenizer.json` (or
//! `vocab.txt`) works. WordPiece comes from the `tokenizers` crate with the padding and truncation baked
//! into tokenizer.json turned off, truncating at `max_tokens` (256) instead.

use crate::autograd::{Tape, Var};
use crate::model::safetensors_io::TensorFile;
use crate::ops::{self, AttnMask};
use crate::tensor::{DType, Tensor};
use crate::{bail, ensure, Context, Error, Result};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use tokenizers::Tokenizer;

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "one")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

struct Layer {
    qkv_w: Var,
    qkv_b: Var,
    out_w: Var,
    out_b: Var,
    ln1: (Var, Var),
    fc1_w: Var,
    fc1_b: Var,
    fc2_w: Var,
    fc2_b: Var,
    ln2: (Var, Var),
}

pub struct BertEmbedder {
    pub config: BertConfig,
    tokenizer: Tokenizer,
    pub max_tokens: usize,
    word: Var,
    position: Var,
    token_type: Var,
    emb_ln: (Var, Var),
    layers: Vec<Layer>,
}

/// A text's WordPiece ids (with [CLS] and [SEP]) and its embedding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Embedded {
    pub ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

impl BertEmbedder {
    /// Load from a directory checked by [`super::embedder_dir::check`].
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Self> {
        super::embedder_dir::check(dir)?;
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?,
        )
        .map_err(|e| Error::msg(format!("{}/config.json: {e}", dir.display())))?;
        ensure!(
            config.hidden_act == "gelu",
            "{}/config.json: hidden_act {:?} is not supported (only BERT's exact \"gelu\")",
            dir.display(),
            config.hidden_act
        );
        ensure!(
            config.hidden_size % config.num_attention_heads == 0,
            "{}/config.json: hidden_size is not divisible by num_attention_heads",
            dir.display()
        );
        let file = TensorFile::read(&dir.join("model.safetensors"))?;
        let prefix = if file.tensors.contains_key("embeddings.word_embeddings.weight") { "" } else { "bert." };
        let (d, ffn) = (config.hidden_size, config.intermediate_size);
        let get = |name: &str, shape: &[usize]| -> Result<Var> {
            let full = format!("{prefix}{name}");
            let t = file.tensor(&full).map_err(|e| e.context(format!("{}/model.safetensors", dir.display())))?;
            ensure!(
                t.shape() == shape,
                "{}/model.safetensors: {full} has shape {:?}, config.json implies {:?}",
                dir.display(),
                t.shape(),
                shape
            );
            Ok(Var::constant(t.to_dtype(DType::F32)?))
        };
        let ln = |name: &str| -> Result<(Var, Var)> {
            Ok((get(&format!("{name}.weight"), &[d])?, get(&format!("{name}.bias"), &[d])?))
        };
        let word = get("embeddings.word_embeddings.weight", &[config.vocab_size, d])?;
        let position = get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, d])?;
        let token_type = get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, d])?;
        let emb_ln = ln("embeddings.LayerNorm")?;
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            // Q, K and V stacked into one [3d, d] projection (row blocks Q | K | V) for attention_qkv.
            let mut w = Vec::new();
            let mut b = Vec::new();
            for part in ["query", "key", "value"] {
                w.extend_from_slice(get(&format!("{p}.attention.self.{part}.weight"), &[d, d])?.value().data::<f32>()?);
                b.extend_from_slice(get(&format!("{p}.attention.self.{part}.bias"), &[d])?.value().data::<f32>()?);
            }
            layers.push(Layer {
                qkv_w: Var::constant(Tensor::from_vec(w, &[3 * d, d])?),
                qkv_b: Var::constant(Tensor::from_vec(b, &[3 * d])?),
                out_w: get(&format!("{p}.attention.output.dense.weight"), &[d, d])?,
                out_b: get(&format!("{p}.attention.output.dense.bias"), &[d])?,
                ln1: ln(&format!("{p}.attention.output.LayerNorm"))?,
                fc1_w: get(&format!("{p}.intermediate.dense.weight"), &[ffn, d])?,
                fc1_b: get(&format!("{p}.intermediate.dense.bias"), &[ffn])?,
                fc2_w: get(&format!("{p}.output.dense.weight"), &[d, ffn])?,
                fc2_b: get(&format!("{p}.output.dense.bias"), &[d])?,
                ln2: ln(&format!("{p}.output.LayerNorm"))?,
            });
        }
        ensure!(
            max_tokens <= config.max_position_embeddings,
            "max_tokens {max_tokens} exceeds the model's {} positions",
            config.max_position_embeddings
        );
        let tokenizer = load_tokenizer(dir, max_tokens)?;
        Ok(Self { config, tokenizer, max_tokens, word, position, token_type, emb_ln, layers })
    }

    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// WordPiece ids with [CLS] ... [SEP], truncated to `max_tokens`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| Error::msg(format!("BERT tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeddings of `texts` (unit vectors), computed in length-sorted batches of at most
    /// `batch_tokens` padded tokens.
    pub fn embed(&self, texts: &[&str], batch_tokens: usize) -> Result<Vec<Embedded>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenize(t)).collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out: Vec<Option<Vec<f32>>> = vec![None; ids.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && (end + 1 - start) * ids[order[end]].len() <= batch_tokens {
                end += 1;
            }
            let batch: Vec<&[u32]> = order[start..end].iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, e) in order[start..end].iter().zip(self.embed_ids(&batch)?) {
                out[i] = Some(e);
            }
            start = end;
        }
        Ok(ids
            .into_iter()
            .zip(out)
            .map(|(ids, e)| Embedded { ids, embedding: e.expect("every text embedded") })
            .collect())
    }

    /// One padded batch through the encoder, then masked mean pooling and L2 normalisation.
    pub fn embed_ids(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let b = batch.len();
        let s = batch.iter().map(|x| x.len()).max().unwrap_or(0);
        ensure!(s > 0, "BERT: an empty token sequence cannot be embedded");
        ensure!(
            s <= self.config.max_position_embeddings,
            "BERT: {s} tokens exceed {} positions",
            self.config.max_position_embeddings
        );
        let d = self.dim();
        let mut ids = vec![0i64; b * s];
        let mut mask = vec![false; b * s];
        for (r, seq) in batch.iter().enumerate() {
            for (j, &t) in seq.iter().enumerate() {
                ensure!((t as usize) < self.config.vocab_size, "BERT: token id {t} outside the vocabulary");
                ids[r * s + j] = t as i64;
                mask[r * s + j] = true;
            }
        }
        let ids = Tensor::from_vec(ids, &[b, s])?;
        let positions = Tensor::from_vec((0..b).flat_map(|_| 0..s as i64).collect::<Vec<_>>(), &[b, s])?;
        let types = Tensor::from_vec(vec![0i64; b * s], &[b, s])?;
        let keys = AttnMask::Keys(Arc::from(mask.clone()));
        let eps = self.config.layer_norm_eps;
        let t = &mut Tape::inference();
        let mut x = ops::embedding(t, &ids, &self.word)?;
        let pos = ops::embedding(t, &positions, &self.position)?;
        x = ops::add(t, &x, &pos)?;
        let typ = ops::embedding(t, &types, &self.token_type)?;
        x = ops::add(t, &x, &typ)?;
        x = ops::layer_norm(t, &x, &self.emb_ln.0, &self.emb_ln.1, eps)?;
        for l in &self.layers {
            let qkv = ops::linear(t, &x, &l.qkv_w, Some(&l.qkv_b))?;
            let a = ops::attention_qkv(t, &qkv, self.config.num_attention_heads, &keys, None)?;
            let a = ops::linear(t, &a, &l.out_w, Some(&l.out_b))?;
            let r = ops::add(t, &x, &a)?;
            x = ops::layer_norm(t, &r, &l.ln1.0, &l.ln1.1, eps)?;
            let h = ops::linear(t, &x, &l.fc1_w, Some(&l.fc1_b))?;
            let h = ops::gelu_erf(t, &h)?;
            let h = ops::linear(t, &h, &l.fc2_w, Some(&l.fc2_b))?;
            let r = ops::add(t, &x, &h)?;
            x = ops::layer_norm(t, &r, &l.ln2.0, &l.ln2.1, eps)?;
        }
        let hidden = x.value().data::<f32>()?;
        Ok((0..b)
            .map(|r| {
                let mut v = vec![0f64; d];
                let n = batch[r].len();
                for j in 0..n {
                    for (acc, &h) in v.iter_mut().zip(&hidden[(r * s + j) * d..(r * s + j + 1) * d]) {
                        *acc += h as f64;
                    }
                }
                let norm = v.iter().map(|x| (x / n as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
                v.iter().map(|x| (x / n as f64 / norm) as f32).collect()
            })
            .collect())
    }
}

fn load_tokenizer(dir: &Path, max_tokens: usize) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    let mut tokenizer = if json.is_file() {
        Tokenizer::from_file(&json).map_err(|e| Error::msg(format!("{}: {e}", json.display())))?
    } else {
        bert_wordpiece(&dir.join("vocab.txt"))?
    };
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
        .map_err(|e| Error::msg(format!("BERT tokenizer truncation: {e}")))?;
    Ok(tokenizer)
}

/// The standard uncased BERT pipeline around a WordPiece `vocab.txt`.
fn bert_wordpiece(vocab: &Path) -> Result<Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| Error::msg(format!("{}: {e}", vocab.display())))?;
    let id = |tok: &str| -> Result<u32> {
        match tokenizers::Model::token_to_id(&model, tok) {
            Some(i) => Ok(i),
            None => bail!("{}: no {tok} token", vocab.display()),
        }
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::default()))
        .map_err(|e| Error::msg(format!("BERT normalizer: {e}")))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
    Ok(tokenizer)
}
