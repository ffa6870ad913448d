//! The kernel-level harness of tests/cuda_kernels.rs: each `Dev` method runs one kernel family's
//! launchers on host `f32` data. The CPU copy computes with the CPU backend in f32; the CUDA copies
//! upload bf16 (or f32) activations (f32 for parameters and gradients that are f32 on the GPU), run the
//! launcher and download. Test inputs are rounded to bf16 first, so both backends see exactly the same
//! numbers. (The op-level and model-level tests go through the real dispatch instead: tests/device_ops.rs,
//! tests/device_model.rs.)

use crate::common::device::{read, Dev};
use retro::backend::cpu;
#[cfg(not(no_cuda_kernels))]
use retro::backend::cuda::element::GpuFloat;

#[cfg(not(no_cuda_kernels))]
fn to_e<E: GpuFloat>(x: &[f32]) -> Vec<E> {
    x.iter().map(|&v| E::from_f32(v)).collect()
}

#[cfg(not(no_cuda_kernels))]
fn from_e<E: GpuFloat>(x: &[E]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

#[allow(unused_macros)]
/// The CUDA arms of a `Dev` method: `$body` runs with `$E` = bf16 (the training kernels) or f32 (exact).
macro_rules! on_cuda {
    ($self:expr, $gpu:ident, $E:ident, $body:block) => {
        match $self {
            Dev::Cuda($gpu) => {
                #[allow(dead_code)]
                type $E = half::bf16;
                $body
            }
            Dev::CudaF32($gpu) => {
                #[allow(dead_code)]
                type $E = f32;
                $body
            }
            Dev::Cpu => unreachable!(),
        }
    };
}

impl Dev {
    /// (y, mean, rstd)
    pub fn layernorm(&self, x: &[f32], g: &[f32], b: &[f32], d: usize, eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => {
                let (y, s) = cpu::layernorm::forward(x, g, b, d, eps as f64);
                (y, s.mean, s.rstd)
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::layernorm;
                let (dx, dg, db) = (gpu.upload(&to_e::<E>(x)).unwrap(), gpu.upload(g).unwrap(), gpu.upload(b).unwrap());
                let (y, s) = layernorm::forward(gpu, &dx, &dg, &db, d, eps).unwrap();
                (from_e(&gpu.download(&y).unwrap()), gpu.download(&s.mean).unwrap(), gpu.download(&s.rstd).unwrap())
            }),
        }
    }

    /// (h = x + r, y = LN(h))
    pub fn residual_layernorm(
        &self,
        x: &[f32],
        r: &[f32],
        g: &[f32],
        b: &[f32],
        d: usize,
        eps: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => {
                let h = cpu::elementwise::add(x, r);
                let (y, _) = cpu::layernorm::forward(&h, g, b, d, eps as f64);
                (h, y)
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::layernorm;
                let (dx, dr) = (gpu.upload(&to_e::<E>(x)).unwrap(), gpu.upload(&to_e::<E>(r)).unwrap());
                let (dg, db) = (gpu.upload(g).unwrap(), gpu.upload(b).unwrap());
                let (h, y, _) = layernorm::residual_forward(gpu, &dx, &dr, &dg, &db, d, eps).unwrap();
                (from_e(&gpu.download(&h).unwrap()), from_e(&gpu.download(&y).unwrap()))
            }),
        }
    }

    /// (dx, dgamma, dbeta)
    pub fn layernorm_backward(
        &self,
        dy: &[f32],
        x: &[f32],
        g: &[f32],
        b: &[f32],
        d: usize,
        eps: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => {
                let (_, s) = cpu::layernorm::forward(x, g, b, d, eps as f64);
                cpu::layernorm::backward(dy, x, g, &s, d)
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::layernorm;
                let (dx_in, dg, db) =
                    (gpu.upload(&to_e::<E>(x)).unwrap(), gpu.upload(g).unwrap(), gpu.upload(b).unwrap());
                let (_, s) = layernorm::forward(gpu, &dx_in, &dg, &db, d, eps).unwrap();
                let (gg, gb) = (gpu.zeros::<f32>(d).unwrap(), gpu.zeros::<f32>(d).unwrap());
                let ddy = gpu.upload(&to_e::<E>(dy)).unwrap();
                let dx = layernorm::backward(gpu, &ddy, &dx_in, &s, &dg, &gg, &gb, d).unwrap();
                (from_e(&gpu.download(&dx).unwrap()), gpu.download(&gg).unwrap(), gpu.download(&gb).unwrap())
            }),
        }
    }

    pub fn bias_gelu(&self, x: &[f32], bias: &[f32], d: usize) -> Vec<f32> {
        match self {
            Dev::Cpu => {
                let u: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % d]).collect();
                cpu::elementwise::gelu_forward(&u)
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                let (dx, db) = (gpu.upload(&to_e::<E>(x)).unwrap(), gpu.upload(bias).unwrap());
                let y = retro::backend::cuda::gelu::forward(gpu, &dx, Some(&db), d).unwrap();
                from_e(&gpu.download(&y).unwrap())
            }),
        }
    }

    /// (dx, dbias)
    pub fn bias_gelu_backward(&self, dy: &[f32], x: &[f32], bias: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => {
                let u: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % d]).collect();
                let du = cpu::elementwise::gelu_backward(&u, dy);
                let db = cpu::linear::backward_bias(&du, du.len() / d, d);
                (du, db)
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                let (dx, db, ddy) = (
                    gpu.upload(&to_e::<E>(x)).unwrap(),
                    gpu.upload(bias).unwrap(),
                    gpu.upload(&to_e::<E>(dy)).unwrap(),
                );
                let dbias = gpu.zeros::<f32>(d).unwrap();
                let du = retro::backend::cuda::gelu::backward(gpu, &ddy, &dx, Some((&db, &dbias)), d).unwrap();
                (from_e(&gpu.download(&du).unwrap()), gpu.download(&dbias).unwrap())
            }),
        }
    }

    /// word[tokens[t]] + position[t % period]
    pub fn embedding(&self, tokens: &[i32], word: &[f32], position: &[f32], d: usize, period: usize) -> Vec<f32> {
        match self {
            Dev::Cpu => {
                let ids: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
                let pos: Vec<usize> = (0..tokens.len()).map(|t| t % period).collect();
                cpu::elementwise::add(
                    &cpu::embedding::forward(&ids, word, d),
                    &cpu::embedding::forward(&pos, position, d),
                )
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::embedding;
                let batch = embedding::TokenBatch::new(gpu, tokens, word.len() / d).unwrap();
                let (w, p) = (gpu.upload(&to_e::<E>(word)).unwrap(), gpu.upload(&to_e::<E>(position)).unwrap());
                let out = embedding::forward(gpu, &batch, &w, &p, d, embedding::Positions::from_zero(period)).unwrap();
                from_e(&gpu.download(&out).unwrap())
            }),
        }
    }

    /// (dword, dposition)
    pub fn embedding_backward(
        &self,
        tokens: &[i32],
        dout: &[f32],
        vocab: usize,
        positions: usize,
        d: usize,
        period: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => {
                let ids: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
                let pos: Vec<usize> = (0..tokens.len()).map(|t| t % period).collect();
                (cpu::embedding::backward(&ids, dout, vocab, d), cpu::embedding::backward(&pos, dout, positions, d))
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::embedding;
                let batch = embedding::TokenBatch::new(gpu, tokens, vocab).unwrap();
                let (dw, dp) = (gpu.zeros::<f32>(vocab * d).unwrap(), gpu.zeros::<f32>(positions * d).unwrap());
                let g = gpu.upload(&to_e::<E>(dout)).unwrap();
                embedding::backward(gpu, &batch, &g, &dw, &dp, d, embedding::Positions::from_zero(period)).unwrap();
                (gpu.download(&dw).unwrap(), gpu.download(&dp).unwrap())
            }),
        }
    }

    /// (per-row losses, dlogits) for a total loss with d(total)/d(row loss) = scale; target -1 ignored.
    pub fn cross_entropy(&self, logits: &[f32], targets: &[i32], classes: usize, scale: f32) -> (Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => {
                let mut losses = Vec::new();
                let mut grads = Vec::new();
                for (row, &t) in logits.chunks(classes).zip(targets) {
                    if t < 0 {
                        losses.push(0.0);
                        grads.extend(std::iter::repeat_n(0.0, classes));
                        continue;
                    }
                    let (loss, lse) = cpu::cross_entropy::forward(row, &[t as usize], classes);
                    losses.push(loss as f32);
                    grads.extend(cpu::cross_entropy::backward(row, &[t as usize], &lse, classes, scale));
                }
                (losses, grads)
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::cross_entropy;
                let mut z = gpu.upload(&to_e::<E>(logits)).unwrap();
                let t = cross_entropy::targets(gpu, targets, classes).unwrap();
                let losses = cross_entropy::forward_backward(gpu, &mut z, &t, classes, scale).unwrap();
                (gpu.download(&losses).unwrap(), from_e(&gpu.download(&z).unwrap()))
            }),
        }
    }

    /// (per-row losses, dlogits) of the vocab-parallel cross-entropy on one rank's slice: `targets` are
    /// the slice's classes or -1 (held elsewhere: the target logit counts as 0). On a GPU
    /// kernels/vocab_parallel.cu's three passes (one rank: no all-reduce between them).
    pub fn vocab_cross_entropy(
        &self,
        logits: &[f32],
        targets: &[i32],
        classes: usize,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => {
                let (mut losses, mut grads) = (Vec::new(), Vec::new());
                for (row, &t) in logits.chunks(classes).zip(targets) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let lse = max + row.iter().map(|&z| (z - max).exp()).sum::<f32>().ln();
                    losses.push(lse - if t >= 0 { row[t as usize] } else { 0.0 });
                    grads.extend(
                        row.iter()
                            .enumerate()
                            .map(|(j, &z)| ((z - lse).exp() - if j as i32 == t { 1.0 } else { 0.0 }) * scale),
                    );
                }
                (losses, grads)
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::{cross_entropy, vocab_parallel};
                let z = gpu.upload(&to_e::<E>(logits)).unwrap();
                let t = cross_entropy::targets(gpu, targets, classes).unwrap();
                let max = vocab_parallel::row_max(gpu, &z, classes).unwrap();
                let sums = vocab_parallel::row_sums(gpu, &z, classes, &max, &t).unwrap();
                let (losses, dz) = vocab_parallel::loss_and_grad(gpu, &z, classes, &max, &sums, &t, scale).unwrap();
                (gpu.download(&losses).unwrap(), from_e(&gpu.download(&dz).unwrap()))
            }),
        }
    }

    /// (rows of `table` for `tokens`, -1 a zero row; the table's gradient from `dout`): embedding.cu's
    /// `embedding_rows` and the word backward over the ids that are not -1.
    pub fn embedding_rows(&self, tokens: &[i32], table: &[f32], dout: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => {
                let (mut out, mut dtable) = (vec![0f32; tokens.len() * d], vec![0f32; table.len()]);
                for (i, &t) in tokens.iter().enumerate().filter(|(_, &t)| t >= 0) {
                    let t = t as usize;
                    out[i * d..(i + 1) * d].copy_from_slice(&table[t * d..(t + 1) * d]);
                    dtable[t * d..(t + 1) * d].iter_mut().zip(&dout[i * d..(i + 1) * d]).for_each(|(a, &g)| *a += g);
                }
                (out, dtable)
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::embedding;
                let rows = table.len() / d;
                let batch = embedding::TokenBatch::with_missing(gpu, tokens, rows).unwrap();
                let tb = gpu.upload(&to_e::<E>(table)).unwrap();
                let out = embedding::rows_forward(gpu, &batch, &tb, d).unwrap();
                let (g, dtable) = (gpu.upload(&to_e::<E>(dout)).unwrap(), gpu.zeros::<f32>(rows * d).unwrap());
                embedding::rows_backward(gpu, &batch, &g, &dtable, d).unwrap();
                (from_e(&gpu.download(&out).unwrap()), gpu.download(&dtable).unwrap())
            }),
        }
    }

    /// `x + bias` on every row: residual.cu's `add_bias`.
    pub fn add_bias(&self, x: &[f32], bias: &[f32]) -> Vec<f32> {
        match self {
            Dev::Cpu => x.chunks(bias.len()).flat_map(|row| row.iter().zip(bias).map(|(a, b)| a + b)).collect(),
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                let (xb, bb) = (gpu.upload(&to_e::<E>(x)).unwrap(), gpu.upload(&to_e::<E>(bias)).unwrap());
                from_e(&gpu.download(&retro::backend::cuda::residual::add_bias(gpu, &xb, &bb).unwrap()).unwrap())
            }),
        }
    }

    /// `x w^T + b` (GELU'd with `gelu`), w [out, in].
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        rows: usize,
        din: usize,
        dout: usize,
        gelu: bool,
    ) -> Vec<f32> {
        match self {
            Dev::Cpu => {
                let y = cpu::linear::forward(x, w, Some(b), rows, din, dout);
                if gelu {
                    cpu::elementwise::gelu_forward(&y)
                } else {
                    y
                }
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::linear::Linear;
                let l = Linear { rows, in_features: din, out_features: dout };
                let (dx, dw, db) = (
                    gpu.upload(&to_e::<E>(x)).unwrap(),
                    gpu.upload(&to_e::<E>(w)).unwrap(),
                    gpu.upload(&to_e::<E>(b)).unwrap(),
                );
                let y = l.forward(gpu, &dx, &dw, Some(&db), gelu).unwrap();
                from_e(&gpu.download(&y).unwrap())
            }),
        }
    }

    /// (dx, dw, db)
    pub fn linear_backward(
        &self,
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        rows: usize,
        din: usize,
        dout: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => (
                cpu::linear::backward_input(dy, w, rows, din, dout),
                cpu::linear::backward_weight(dy, x, rows, din, dout),
                cpu::linear::backward_bias(dy, rows, dout),
            ),
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::linear::Linear;
                let l = Linear { rows, in_features: din, out_features: dout };
                let (gx, gw, gy) = (
                    gpu.upload(&to_e::<E>(x)).unwrap(),
                    gpu.upload(&to_e::<E>(w)).unwrap(),
                    gpu.upload(&to_e::<E>(dy)).unwrap(),
                );
                let (dw, db) = (gpu.zeros::<f32>(dout * din).unwrap(), gpu.zeros::<f32>(dout).unwrap());
                let dx = l.backward(gpu, &gy, &gx, &gw, &dw, Some(&db)).unwrap();
                (from_e(&gpu.download(&dx).unwrap()), gpu.download(&dw).unwrap(), gpu.download(&db).unwrap())
            }),
        }
    }

    /// Attention on separate q [b, sq, w], k, v [b, sk, w] through the real op (`ops::attention_dropout`
    /// on this copy's device, backward on the tape), with an optional key mask and attention dropout.
    /// Returns (o, dq, dk, dv) for the output gradient `dout`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
        a: cpu::attention::Dims,
        key_mask: Option<std::sync::Arc<[bool]>>,
        dropout: Option<retro::ops::Dropout>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        use retro::autograd::Tape;
        use retro::ops::{self, AttnMask};
        let w = a.width();
        let mut tape = Tape::new();
        let mask = match (key_mask, a.causal) {
            (Some(m), _) => AttnMask::Keys(m),
            (None, true) => AttnMask::Causal,
            (None, false) => AttnMask::None,
        };
        let [q, k, v] =
            [(q, a.sq), (k, a.sk), (v, a.sk)].map(|(x, rows)| tape.leaf(self.tensor(x, &[a.batch, rows, w])));
        let o = ops::attention_dropout(&mut tape, &q, &k, &v, a.heads, &mask, dropout).unwrap();
        let out = read(o.value());
        let g = tape.backward_with(&o, self.tensor(dout, o.shape())).unwrap();
        let [dq, dk, dv] = [&q, &k, &v].map(|x| read(g.get(x).unwrap()));
        (out, dq, dk, dv)
    }

    /// (a + b, a after `a += b`): residual.cu's add and add_into.
    pub fn add_and_add_into(&self, a: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>) {
        match self {
            Dev::Cpu => (cpu::elementwise::add(a, b), cpu::elementwise::add(a, b)),
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                use retro::backend::cuda::residual;
                let (ga, gb) = (gpu.upload(&to_e::<E>(a)).unwrap(), gpu.upload(&to_e::<E>(b)).unwrap());
                let sum = residual::add(gpu, &ga, &gb).unwrap();
                residual::add_into(gpu, &ga, &gb).unwrap();
                (from_e(&gpu.download(&sum).unwrap()), from_e(&gpu.download(&ga).unwrap()))
            }),
        }
    }

    pub fn shift_rows(
        &self,
        x: &[f32],
        batch: usize,
        rows_in: usize,
        rows_out: usize,
        d: usize,
        shift: isize,
    ) -> Vec<f32> {
        match self {
            Dev::Cpu => shift_rows_reference(x, batch, rows_in, rows_out, d, shift),
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                let gx = gpu.upload(&to_e::<E>(x)).unwrap();
                let out =
                    retro::backend::cuda::residual::shift_rows(gpu, &gx, batch, rows_in, rows_out, d, shift).unwrap();
                from_e(&gpu.download(&out).unwrap())
            }),
        }
    }

    /// Attention on the fused projections the model produces: one `[rows, 3w]` QKV buffer (`kv` None) or
    /// Q `[rows, w]` with one `[rows, 2w]` KV buffer, through the real ops (`ops::attention_qkv` /
    /// `attention_kv` on this copy's device, backward on the tape). Returns (o, gradients in the same
    /// packing).
    pub fn attention_packed(
        &self,
        s: cpu::attention::Dims,
        q_or_qkv: &[f32],
        kv: Option<&[f32]>,
        dout: &[f32],
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        use retro::autograd::Tape;
        use retro::ops::{self, AttnMask};
        let w = s.width();
        let mut tape = Tape::new();
        let mask = if s.causal { AttnMask::Causal } else { AttnMask::None };
        let x = tape.leaf(self.tensor(q_or_qkv, &[s.batch, s.sq, q_or_qkv.len() / (s.batch * s.sq)]));
        let kv = kv.map(|kv| tape.leaf(self.tensor(kv, &[s.batch, s.sk, 2 * w])));
        let o = match &kv {
            None => ops::attention_qkv(&mut tape, &x, s.heads, &mask, None),
            Some(kv) => ops::attention_kv(&mut tape, &x, kv, s.heads, &mask, None, None),
        }
        .unwrap();
        let out = read(o.value());
        let grads = tape.backward_with(&o, self.tensor(dout, o.shape())).unwrap();
        let mut g = vec![read(grads.get(&x).unwrap())];
        g.extend(kv.map(|kv| read(grads.get(&kv).unwrap())));
        (out, g)
    }

    /// Dropout of `x` (Philox stream `stream` under `seed`, probability `p`): the CPU's factors, or
    /// kernels/dropout.cu.
    pub fn dropout(&self, x: &[f32], seed: u64, stream: u64, p: f64) -> Vec<f32> {
        match self {
            Dev::Cpu => {
                let f: Vec<f32> = cpu::dropout::factors(p, seed, stream, x.len());
                x.iter().zip(f).map(|(a, b)| a * b).collect()
            }
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                let gx = gpu.upload(&to_e::<E>(x)).unwrap();
                let out = retro::backend::cuda::dropout::apply(gpu, &gx, seed, stream, p).unwrap();
                from_e(&gpu.download(&out).unwrap())
            }),
        }
    }

    /// `n` values of Philox stream `stream` under `seed`, times `std` (the CPU's are `philox::normals`).
    pub fn fill_normal(&self, n: usize, seed: u64, stream: u64, std: f32) -> Vec<f32> {
        match self {
            Dev::Cpu => retro::philox::normals(seed, stream, n, std as f64).iter().map(|&x| x as f32).collect(),
            #[cfg(not(no_cuda_kernels))]
            _ => on_cuda!(self, gpu, E, {
                let b = retro::backend::cuda::random::normal::<E>(gpu, n, seed, stream, std).unwrap();
                from_e(&gpu.download(&b).unwrap())
            }),
        }
    }
}

/// The CCA's row shift on the CPU (backend/cpu/layout.rs, the reference for residual.cu's `shift_rows`):
/// per batch, `out[i] = x[i + shift]` for `i < rows_out`, zero outside `0..rows_in`.
pub fn shift_rows_reference(
    x: &[f32],
    batch: usize,
    rows_in: usize,
    rows_out: usize,
    d: usize,
    shift: isize,
) -> Vec<f32> {
    cpu::layout::shift_rows(x, batch, rows_in, d, shift, rows_out)
}
