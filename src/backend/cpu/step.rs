//! The CPU backend of the explicit training step (`model::step`): the CPU reference kernels in f32.
//! It exists to check the step program itself against the tape-based model, on any machine.

use super::attention::{self as attn, GradTargets, Layout};
use super::{cross_entropy, elementwise, embedding, layernorm, linear, SendPtr};
use crate::model::step::{AttnInputs, Dims, StepBackend};
use crate::{ensure, Result};

pub struct CpuStep;

fn add_to(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

fn layout(x: &AttnInputs<Vec<f32>>, w: usize) -> Layout {
    match x {
        AttnInputs::Qkv(_) => Layout::packed_qkv(w),
        AttnInputs::QKv(..) => Layout::packed_kv(w),
    }
}

fn operands<'a>(x: &AttnInputs<'a, Vec<f32>>) -> (&'a [f32], &'a [f32]) {
    match *x {
        AttnInputs::Qkv(qkv) => (qkv, qkv),
        AttnInputs::QKv(q, kv) => (q, kv),
    }
}

fn bias_rows(x: &[f32], b: &[f32]) -> Vec<f32> {
    x.chunks(b.len()).flat_map(|row| row.iter().zip(b).map(|(v, c)| v + c)).collect()
}

impl StepBackend for CpuStep {
    type Act = Vec<f32>;
    type Vec32 = Vec<f32>;
    type Stats = layernorm::Stats<f32>;
    type AttnSaved = Vec<f32>;
    type Tokens = Vec<usize>;
    type Targets = Vec<usize>;

    fn vec32(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(x.to_vec())
    }

    fn zeros32(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn act(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(x.to_vec())
    }

    fn read_vec32(&self, x: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(x.clone())
    }

    fn tokens(&self, ids: &[i32], vocab: usize) -> Result<Vec<usize>> {
        ids.iter()
            .enumerate()
            .map(|(i, &t)| {
                ensure!(
                    t >= 0 && (t as usize) < vocab,
                    "token {t} at position {i} is outside the vocabulary of {vocab}"
                );
                Ok(t as usize)
            })
            .collect()
    }

    fn targets(&self, labels: &[i32], classes: usize) -> Result<Vec<usize>> {
        self.tokens(labels, classes)
    }

    fn embedding(
        &self,
        ids: &Vec<usize>,
        word: &Vec<f32>,
        position: &Vec<f32>,
        d: usize,
        period: usize,
    ) -> Result<Vec<f32>> {
        let pos: Vec<usize> = (0..ids.len()).map(|t| t % period).collect();
        Ok(elementwise::add(&embedding::forward(ids, word, d), &embedding::forward(&pos, position, d)))
    }

    fn embedding_backward(
        &self,
        ids: &Vec<usize>,
        dout: &Vec<f32>,
        dword: &mut Vec<f32>,
        dposition: &mut Vec<f32>,
        d: usize,
        period: usize,
    ) -> Result<()> {
        let pos: Vec<usize> = (0..ids.len()).map(|t| t % period).collect();
        let (vocab, positions) = (dword.len() / d, dposition.len() / d);
        add_to(dword, &embedding::backward(ids, dout, vocab, d));
        add_to(dposition, &embedding::backward(&pos, dout, positions, d));
        Ok(())
    }

    fn layernorm(
        &self,
        x: &Vec<f32>,
        g: &Vec<f32>,
        b: &Vec<f32>,
        d: usize,
        eps: f64,
    ) -> Result<(Vec<f32>, Self::Stats)> {
        Ok(layernorm::forward(x, g, b, d, eps))
    }

    fn layernorm_backward(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        stats: &Self::Stats,
        g: &Vec<f32>,
        dg: &mut Vec<f32>,
        db: &mut Vec<f32>,
        d: usize,
    ) -> Result<Vec<f32>> {
        let (dx, gg, gb) = layernorm::backward(dy, x, g, stats, d);
        add_to(dg, &gg);
        add_to(db, &gb);
        Ok(dx)
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: Option<&Vec<f32>>,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<Vec<f32>> {
        Ok(linear::forward(x, w, b.map(|b| b.as_slice()), rows, din, dout))
    }

    fn linear_backward(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        dw: &mut Vec<f32>,
        db: Option<&mut Vec<f32>>,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<Vec<f32>> {
        add_to(dw, &linear::backward_weight(dy, x, rows, din, dout));
        if let Some(db) = db {
            add_to(db, &linear::backward_bias(dy, rows, dout));
        }
        Ok(linear::backward_input(dy, w, rows, din, dout))
    }

    fn bias_gelu(&self, x: &Vec<f32>, b: &Vec<f32>, _d: usize) -> Result<Vec<f32>> {
        Ok(elementwise::gelu_forward(&bias_rows(x, b)))
    }

    fn bias_gelu_backward(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        b: &Vec<f32>,
        db: &mut Vec<f32>,
        d: usize,
    ) -> Result<Vec<f32>> {
        let du = elementwise::gelu_backward(&bias_rows(x, b), dy);
        add_to(db, &linear::backward_bias(&du, du.len() / d, d));
        Ok(du)
    }

    fn attention(&self, s: &Dims, x: AttnInputs<Vec<f32>>) -> Result<(Vec<f32>, Vec<f32>)> {
        let (q, kv) = operands(&x);
        Ok(attn::forward(q, kv, kv, layout(&x, s.heads * s.head_dim), None, None, *s))
    }

    fn attention_backward(
        &self,
        s: &Dims,
        x: AttnInputs<Vec<f32>>,
        _o: &Vec<f32>,
        probs: &Vec<f32>,
        dout: &Vec<f32>,
    ) -> Result<Vec<Vec<f32>>> {
        let (q, kv) = operands(&x);
        let lay = layout(&x, s.heads * s.head_dim);
        let mut dq = vec![0f32; q.len()];
        let mut dkv = match x {
            AttnInputs::Qkv(_) => Vec::new(),
            AttnInputs::QKv(..) => vec![0f32; kv.len()],
        };
        let qp = SendPtr(dq.as_mut_ptr());
        let kvp = if dkv.is_empty() { qp } else { SendPtr(dkv.as_mut_ptr()) };
        // SAFETY: dq (and dkv) have the sizes and layouts of q (and kv); for a fused QKV all three targets
        // are the one dqkv buffer, whose column blocks the layout keeps apart.
        unsafe { attn::backward(dout, q, kv, kv, probs, lay, None, *s, GradTargets { dq: qp, dk: kvp, dv: kvp }) };
        Ok(if dkv.is_empty() { vec![dq] } else { vec![dq, dkv] })
    }

    fn add(&self, a: &Vec<f32>, b: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(elementwise::add(a, b))
    }

    fn add_into(&self, a: &mut Vec<f32>, b: &Vec<f32>) -> Result<()> {
        add_to(a, b);
        Ok(())
    }

    fn shift_rows(
        &self,
        x: &Vec<f32>,
        batch: usize,
        rows_in: usize,
        rows_out: usize,
        d: usize,
        shift: isize,
    ) -> Result<Vec<f32>> {
        Ok(super::layout::shift_rows(x, batch, rows_in, d, shift, rows_out))
    }

    fn cross_entropy(
        &self,
        logits: Vec<f32>,
        targets: &Vec<usize>,
        classes: usize,
        scale: f32,
    ) -> Result<(f64, Vec<f32>)> {
        let rows = targets.len();
        let (mean, lse) = cross_entropy::forward(&logits, targets, classes);
        let grad = cross_entropy::backward(&logits, targets, &lse, classes, scale * rows as f32);
        Ok((mean * rows as f64, grad))
    }
}
