//! The CUDA backend of the explicit training step (`model::step`): bf16 activations and weight copies,
//! f32 parameters, gradients and statistics, every call a kernel of this directory.

use super::attention::{self, Shape, View};
use super::gpu::{DeviceBuffer, Gpu};
use super::{cross_entropy, embedding, gelu, layernorm, linear::Linear, residual};
use crate::model::step::{AttnInputs, AttnShape, StepBackend};
use crate::Result;
use half::bf16;
use std::sync::Arc;

pub struct CudaStep {
    pub gpu: Arc<Gpu>,
}

type Act = DeviceBuffer<bf16>;
type V32 = DeviceBuffer<f32>;

fn shape(s: &AttnShape) -> Shape {
    Shape { batch: s.batch, heads: s.heads, sq: s.sq, sk: s.sk, head_dim: s.head_dim, causal: s.causal }
}

fn views<'a>(x: &AttnInputs<'a, Act>, w: usize) -> (View<'a>, View<'a>, View<'a>) {
    match *x {
        AttnInputs::Qkv(qkv) => (
            View { buf: qkv, offset: 0, stride: 3 * w },
            View { buf: qkv, offset: w, stride: 3 * w },
            View { buf: qkv, offset: 2 * w, stride: 3 * w },
        ),
        AttnInputs::QKv(q, kv) => (
            View::contiguous(q, w),
            View { buf: kv, offset: 0, stride: 2 * w },
            View { buf: kv, offset: w, stride: 2 * w },
        ),
    }
}

impl StepBackend for CudaStep {
    type Act = Act;
    type Vec32 = V32;
    type Stats = layernorm::Stats;
    type AttnSaved = V32;
    type Tokens = embedding::TokenBatch;
    type Targets = DeviceBuffer<i32>;

    fn vec32(&self, x: &[f32]) -> Result<V32> {
        self.gpu.upload(x)
    }

    fn act(&self, x: &[f32]) -> Result<Act> {
        self.gpu.upload(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
    }

    fn read_vec32(&self, x: &V32) -> Result<Vec<f32>> {
        self.gpu.download(x)
    }

    fn tokens(&self, ids: &[i32], vocab: usize) -> Result<Self::Tokens> {
        embedding::TokenBatch::new(&self.gpu, ids, vocab)
    }

    fn targets(&self, labels: &[i32], classes: usize) -> Result<Self::Targets> {
        cross_entropy::targets(&self.gpu, labels, classes)
    }

    fn embedding(&self, ids: &Self::Tokens, word: &Act, position: &Act, d: usize, period: usize) -> Result<Act> {
        embedding::forward(&self.gpu, ids, word, position, d, period)
    }

    fn embedding_backward(
        &self,
        ids: &Self::Tokens,
        dout: &Act,
        dword: &mut V32,
        dposition: &mut V32,
        d: usize,
        period: usize,
    ) -> Result<()> {
        embedding::backward(&self.gpu, ids, dout, dword, dposition, d, period)
    }

    fn layernorm(&self, x: &Act, g: &V32, b: &V32, d: usize, eps: f64) -> Result<(Act, Self::Stats)> {
        layernorm::forward(&self.gpu, x, g, b, d, eps as f32)
    }

    fn layernorm_backward(
        &self,
        dy: &Act,
        x: &Act,
        stats: &Self::Stats,
        g: &V32,
        dg: &mut V32,
        db: &mut V32,
        d: usize,
    ) -> Result<Act> {
        layernorm::backward(&self.gpu, dy, x, stats, g, dg, db, d)
    }

    fn linear(&self, x: &Act, w: &Act, b: Option<&V32>, rows: usize, din: usize, dout: usize) -> Result<Act> {
        Linear { rows, in_features: din, out_features: dout }.forward(&self.gpu, x, w, b, false)
    }

    fn linear_backward(
        &self,
        dy: &Act,
        x: &Act,
        w: &Act,
        dw: &mut V32,
        db: Option<&mut V32>,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<Act> {
        Linear { rows, in_features: din, out_features: dout }.backward(&self.gpu, dy, x, w, dw, db.map(|b| &*b))
    }

    fn bias_gelu(&self, x: &Act, b: &V32, d: usize) -> Result<Act> {
        gelu::forward(&self.gpu, x, b, d)
    }

    fn bias_gelu_backward(&self, dy: &Act, x: &Act, b: &V32, db: &mut V32, d: usize) -> Result<Act> {
        gelu::backward(&self.gpu, dy, x, b, db, d)
    }

    fn attention(&self, s: &AttnShape, x: AttnInputs<Act>) -> Result<(Act, V32)> {
        let (q, k, v) = views(&x, s.heads * s.head_dim);
        attention::forward(&self.gpu, &shape(s), q, k, v)
    }

    fn attention_backward(
        &self,
        s: &AttnShape,
        x: AttnInputs<Act>,
        o: &Act,
        lse: &V32,
        dout: &Act,
    ) -> Result<Vec<Act>> {
        let w = s.heads * s.head_dim;
        let (q, k, v) = views(&x, w);
        match x {
            AttnInputs::Qkv(qkv) => {
                let dqkv = self.gpu.alloc::<bf16>(qkv.len())?;
                let g = views(&AttnInputs::Qkv(&dqkv), w);
                attention::backward(&self.gpu, &shape(s), (q, k, v), o, lse, dout, g)?;
                Ok(vec![dqkv])
            }
            AttnInputs::QKv(qb, kvb) => {
                let (dq, dkv) = (self.gpu.alloc::<bf16>(qb.len())?, self.gpu.alloc::<bf16>(kvb.len())?);
                let g = views(&AttnInputs::QKv(&dq, &dkv), w);
                attention::backward(&self.gpu, &shape(s), (q, k, v), o, lse, dout, g)?;
                Ok(vec![dq, dkv])
            }
        }
    }

    fn add(&self, a: &Act, b: &Act) -> Result<Act> {
        residual::add(&self.gpu, a, b)
    }

    fn add_into(&self, a: &mut Act, b: &Act) -> Result<()> {
        residual::add_into(&self.gpu, a, b)
    }

    fn shift_rows(
        &self,
        x: &Act,
        batch: usize,
        rows_in: usize,
        rows_out: usize,
        d: usize,
        shift: isize,
    ) -> Result<Act> {
        residual::shift_rows(&self.gpu, x, batch, rows_in, rows_out, d, shift)
    }

    fn cross_entropy(&self, logits: Act, targets: &Self::Targets, classes: usize, scale: f32) -> Result<(f64, Act)> {
        let mut logits = logits;
        let losses = cross_entropy::forward_backward(&self.gpu, &mut logits, targets, classes, scale)?;
        let sum = self.gpu.download(&losses)?.iter().map(|&l| l as f64).sum();
        Ok((sum, logits))
    }
}
