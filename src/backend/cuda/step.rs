//! The CUDA backend of the explicit training step (`model::step`): activations and weight copies of
//! element type `E` (bf16 for training; f32 to check the whole step against the CPU to f32 accuracy), f32
//! parameters, gradients and statistics, every call a kernel of this directory.

use super::attention::{self, View};
use super::element::GpuFloat;
use super::gpu::{DeviceBuffer, Gpu};
use super::{cross_entropy, embedding, gelu, layernorm, linear::Linear, residual};
use crate::model::step::{AttnInputs, Dims, StepBackend};
use crate::Result;
use std::marker::PhantomData;
use std::sync::Arc;

pub struct CudaStep<E> {
    pub gpu: Arc<Gpu>,
    element: PhantomData<E>,
}

impl<E> CudaStep<E> {
    pub fn new(gpu: Arc<Gpu>) -> Self {
        Self { gpu, element: PhantomData }
    }
}

type V32 = DeviceBuffer<f32>;

fn views<'a, E>(x: &AttnInputs<'a, DeviceBuffer<E>>, w: usize) -> (View<'a, E>, View<'a, E>, View<'a, E>) {
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

impl<E: GpuFloat> StepBackend for CudaStep<E> {
    type Act = DeviceBuffer<E>;
    type Vec32 = V32;
    type Stats = layernorm::Stats;
    type AttnSaved = V32;
    type Tokens = embedding::TokenBatch;
    type Targets = DeviceBuffer<i32>;

    fn vec32(&self, x: &[f32]) -> Result<V32> {
        self.gpu.upload(x)
    }

    fn act(&self, x: &[f32]) -> Result<DeviceBuffer<E>> {
        self.gpu.upload(&x.iter().map(|&v| E::from_f32(v)).collect::<Vec<_>>())
    }

    fn zeros32(&self, n: usize) -> Result<V32> {
        self.gpu.zeros(n)
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

    fn embedding(
        &self,
        ids: &Self::Tokens,
        word: &DeviceBuffer<E>,
        position: &DeviceBuffer<E>,
        d: usize,
        period: usize,
    ) -> Result<DeviceBuffer<E>> {
        embedding::forward(&self.gpu, ids, word, position, d, period)
    }

    fn embedding_backward(
        &self,
        ids: &Self::Tokens,
        dout: &DeviceBuffer<E>,
        dword: &mut V32,
        dposition: &mut V32,
        d: usize,
        period: usize,
    ) -> Result<()> {
        embedding::backward(&self.gpu, ids, dout, dword, dposition, d, period)
    }

    fn layernorm(
        &self,
        x: &DeviceBuffer<E>,
        g: &V32,
        b: &V32,
        d: usize,
        eps: f64,
    ) -> Result<(DeviceBuffer<E>, Self::Stats)> {
        layernorm::forward(&self.gpu, x, g, b, d, eps as f32)
    }

    fn layernorm_backward(
        &self,
        dy: &DeviceBuffer<E>,
        x: &DeviceBuffer<E>,
        stats: &Self::Stats,
        g: &V32,
        dg: &mut V32,
        db: &mut V32,
        d: usize,
    ) -> Result<DeviceBuffer<E>> {
        layernorm::backward(&self.gpu, dy, x, stats, g, dg, db, d)
    }

    fn linear(
        &self,
        x: &DeviceBuffer<E>,
        w: &DeviceBuffer<E>,
        b: Option<&DeviceBuffer<E>>,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<DeviceBuffer<E>> {
        Linear { rows, in_features: din, out_features: dout }.forward(&self.gpu, x, w, b, false)
    }

    fn linear_backward(
        &self,
        dy: &DeviceBuffer<E>,
        x: &DeviceBuffer<E>,
        w: &DeviceBuffer<E>,
        dw: &mut V32,
        db: Option<&mut V32>,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<DeviceBuffer<E>> {
        Linear { rows, in_features: din, out_features: dout }.backward(&self.gpu, dy, x, w, dw, db.map(|b| &*b))
    }

    fn bias_gelu(&self, x: &DeviceBuffer<E>, b: &V32, d: usize) -> Result<DeviceBuffer<E>> {
        gelu::forward(&self.gpu, x, b, d)
    }

    fn bias_gelu_backward(
        &self,
        dy: &DeviceBuffer<E>,
        x: &DeviceBuffer<E>,
        b: &V32,
        db: &mut V32,
        d: usize,
    ) -> Result<DeviceBuffer<E>> {
        gelu::backward(&self.gpu, dy, x, b, db, d)
    }

    fn attention(&self, s: &Dims, x: AttnInputs<DeviceBuffer<E>>) -> Result<(DeviceBuffer<E>, V32)> {
        let (q, k, v) = views(&x, s.heads * s.head_dim);
        attention::forward(&self.gpu, s, q, k, v)
    }

    fn attention_backward(
        &self,
        s: &Dims,
        x: AttnInputs<DeviceBuffer<E>>,
        o: &DeviceBuffer<E>,
        lse: &V32,
        dout: &DeviceBuffer<E>,
    ) -> Result<Vec<DeviceBuffer<E>>> {
        let w = s.heads * s.head_dim;
        let (q, k, v) = views(&x, w);
        match x {
            AttnInputs::Qkv(qkv) => {
                let dqkv = self.gpu.alloc::<E>(qkv.len())?;
                let g = views(&AttnInputs::Qkv(&dqkv), w);
                attention::backward(&self.gpu, s, (q, k, v), o, lse, dout, g)?;
                Ok(vec![dqkv])
            }
            AttnInputs::QKv(qb, kvb) => {
                let (dq, dkv) = (self.gpu.alloc::<E>(qb.len())?, self.gpu.alloc::<E>(kvb.len())?);
                let g = views(&AttnInputs::QKv(&dq, &dkv), w);
                attention::backward(&self.gpu, s, (q, k, v), o, lse, dout, g)?;
                Ok(vec![dq, dkv])
            }
        }
    }

    fn add(&self, a: &DeviceBuffer<E>, b: &DeviceBuffer<E>) -> Result<DeviceBuffer<E>> {
        residual::add(&self.gpu, a, b)
    }

    fn add_into(&self, a: &mut DeviceBuffer<E>, b: &DeviceBuffer<E>) -> Result<()> {
        residual::add_into(&self.gpu, a, b)
    }

    fn shift_rows(
        &self,
        x: &DeviceBuffer<E>,
        batch: usize,
        rows_in: usize,
        rows_out: usize,
        d: usize,
        shift: isize,
    ) -> Result<DeviceBuffer<E>> {
        residual::shift_rows(&self.gpu, x, batch, rows_in, rows_out, d, shift)
    }

    fn cross_entropy(
        &self,
        logits: DeviceBuffer<E>,
        targets: &Self::Targets,
        classes: usize,
        scale: f32,
    ) -> Result<(f64, DeviceBuffer<E>)> {
        let mut logits = logits;
        let losses = cross_entropy::forward_backward(&self.gpu, &mut logits, targets, classes, scale)?;
        let sum = self.gpu.download(&losses)?.iter().map(|&l| l as f64).sum();
        Ok((sum, logits))
    }
}
