use super::same_float_dtype;
use crate::autograd::{Tape, Var};
use crate::backend::cpu::attention::{self as cpu, Dims, GradTargets, Layout};
use crate::backend::cpu::SendPtr;
use crate::tensor::{Device, Float, Tensor};
use crate::{ensure, with_float, Result};
use std::sync::Arc;

pub use crate::backend::cpu::attention::Dropout;

impl Dropout {
    /// The tape's next attention-dropout mask, if it is in training mode with dropout.
    pub fn from_tape(tape: &mut Tape) -> Option<Self> {
        tape.next_dropout().map(|(p, seed)| Dropout { p, seed, split_heads: None })
    }

    /// The masks of heads first..first + n of a layer of `all` heads (a tensor-parallel rank's): those the
    /// whole layer draws for them.
    pub fn for_heads(self, first: usize, all: usize) -> Self {
        Self { split_heads: Some((first, all)), ..self }
    }
}

/// Which keys a query may attend to.
#[derive(Debug, Clone)]
pub enum AttnMask {
    /// Every query sees every key (bidirectional self-attention, unmasked cross-attention).
    None,
    /// Query i sees keys 0..=i (decoder self-attention); needs as many queries as keys.
    Causal,
    /// `keys[b·sk + j]` says whether key j of batch row b is visible (padding, missing neighbours).
    Keys(Arc<[bool]>),
}

/// Multi-head scaled dot-product attention with softmax scale 1/sqrt(head_dim).
/// q: [b, sq, w], k and v: [b, sk, w] (heads are contiguous column blocks of w) -> [b, sq, w]. Keys and
/// values narrower than the queries ([b, sk, w / g]) have one head per g query heads (grouped-query
/// attention).
pub fn attention(tape: &mut Tape, q: &Var, k: &Var, v: &Var, heads: usize, mask: &AttnMask) -> Result<Var> {
    attention_dropout(tape, q, k, v, heads, mask, None)
}

/// [`attention`] with attention dropout on the probabilities.
pub fn attention_dropout(
    tape: &mut Tape,
    q: &Var,
    k: &Var,
    v: &Var,
    heads: usize,
    mask: &AttnMask,
    dropout: Option<Dropout>,
) -> Result<Var> {
    let (qs, ks) = (q.shape(), k.shape());
    ensure!(
        qs.len() == 3
            && ks.len() == 3
            && k.shape() == v.shape()
            && qs[0] == ks[0]
            && ks[2] > 0
            && qs[2] >= ks[2]
            && qs[2] % ks[2] == 0
            && heads % (qs[2] / ks[2]) == 0,
        "attention: q {:?}, k {:?}, v {:?} must be [b, sq, w], [b, sk, w / g], [b, sk, w / g] with g dividing {heads} heads",
        qs,
        ks,
        v.shape()
    );
    let w = qs[2];
    run(
        tape,
        &[q, k, v],
        [0, 1, 2],
        Layout::separate_grouped(w, ks[2]),
        Shape { batch: qs[0], sq: qs[1], sk: ks[1], w, heads },
        mask,
        None,
        dropout,
    )
}

/// Self-attention on a fused projection qkv: [b, s, 3w] with column blocks Q | K | V -> [b, s, w].
pub fn attention_qkv(
    tape: &mut Tape,
    qkv: &Var,
    heads: usize,
    mask: &AttnMask,
    dropout: Option<Dropout>,
) -> Result<Var> {
    attention_grouped_qkv(tape, qkv, heads, heads, mask, dropout)
}

/// Grouped-query self-attention on a fused projection qkv: [b, s, (heads + 2·kv_heads)·dh] with column
/// blocks Q (heads) | K (kv_heads) | V (kv_heads), query head h reading key / value head
/// h / (heads / kv_heads) -> [b, s, heads·dh].
pub fn attention_grouped_qkv(
    tape: &mut Tape,
    qkv: &Var,
    heads: usize,
    kv_heads: usize,
    mask: &AttnMask,
    dropout: Option<Dropout>,
) -> Result<Var> {
    let s = qkv.shape();
    ensure!(
        s.len() == 3 && kv_heads > 0 && heads % kv_heads == 0 && s[2] % (heads + 2 * kv_heads) == 0,
        "attention_qkv: qkv {s:?} must be [b, s, (heads + 2 kv_heads) x head_dim] for {heads} heads and {kv_heads} \
         key / value heads (which divide them)"
    );
    let dh = s[2] / (heads + 2 * kv_heads);
    let w = heads * dh;
    run(
        tape,
        &[qkv],
        [0, 0, 0],
        Layout::packed_grouped_qkv(w, kv_heads * dh),
        Shape { batch: s[0], sq: s[1], sk: s[1], w, heads },
        mask,
        None,
        dropout,
    )
}

/// Cross-attention with a fused key / value projection: q [b, sq, w], kv [b, sk, 2w] (K | V) -> [b, sq, w].
/// `bias` [heads, sq, sk], shared by the batch, is added to the scaled scores before the softmax (CPU only:
/// the CUDA kernels have no bias).
pub fn attention_kv(
    tape: &mut Tape,
    q: &Var,
    kv: &Var,
    heads: usize,
    mask: &AttnMask,
    bias: Option<&Var>,
    dropout: Option<Dropout>,
) -> Result<Var> {
    let (qs, ks) = (q.shape(), kv.shape());
    ensure!(
        qs.len() == 3 && ks.len() == 3 && qs[0] == ks[0] && ks[2] == 2 * qs[2],
        "attention_kv: q {:?} and kv {:?} must be [b, sq, w] and [b, sk, 2w]",
        qs,
        ks
    );
    let shape = Shape { batch: qs[0], sq: qs[1], sk: ks[1], w: qs[2], heads };
    run(tape, &[q, kv], [0, 1, 1], Layout::packed_kv(qs[2]), shape, mask, bias, dropout)
}

struct Shape {
    batch: usize,
    sq: usize,
    sk: usize,
    w: usize,
    heads: usize,
}

/// `operands` are the distinct buffers; `source[i]` says which one holds q, k, v (i = 0, 1, 2).
#[allow(clippy::too_many_arguments)]
fn run(
    tape: &mut Tape,
    operands: &[&Var],
    source: [usize; 3],
    layout: Layout,
    shape: Shape,
    mask: &AttnMask,
    bias: Option<&Var>,
    dropout: Option<Dropout>,
) -> Result<Var> {
    let Shape { batch, sq, sk, w, heads } = shape;
    let inputs: Vec<&Var> = operands.iter().copied().chain(bias).collect();
    let shapes = || inputs.iter().map(|v| format!("{:?}", v.shape())).collect::<Vec<_>>().join(", ");
    let dtype = same_float_dtype("attention", &inputs)?;
    ensure!(heads > 0 && w % heads == 0, "attention on {}: width {w} is not divisible by {heads} heads", shapes());
    let dims = Dims { batch, sq, sk, heads, head_dim: w / heads, causal: matches!(mask, AttnMask::Causal) };
    ensure!(
        !dims.causal || sq == sk,
        "attention on {}: a causal mask needs as many queries as keys, got {sq} queries and {sk} keys",
        shapes()
    );
    let key_mask = match mask {
        AttnMask::Keys(m) => {
            ensure!(
                m.len() == batch * sk,
                "attention on {}: key mask of {} entries for {batch} x {sk} keys",
                shapes(),
                m.len()
            );
            Some(m.clone())
        }
        _ => None,
    };
    if let Some(bias) = bias {
        ensure!(
            bias.shape() == [dims.heads, sq, sk],
            "attention on {}: the score bias must be [heads, sq, sk] = [{}, {sq}, {sk}]",
            shapes(),
            dims.heads
        );
    }
    if inputs[0].value().device() != Device::Cpu {
        ensure!(bias.is_none(), "attention: a score bias runs on the CPU only (the CUDA kernels have none)");
        ensure!(
            layout.kv_group == 1,
            "attention: grouped-query attention runs on the CPU only (the CUDA kernels have one key / value head per \
             query head)"
        );
        return on_cuda(tape, operands, source, layout, key_mask, dropout, dims);
    }
    let biased = bias.is_some();
    crate::profile::timed(
        "attention",
        "forward",
        || with_float!(dtype, "attention", T => run_typed::<T>(tape, &inputs, biased, source, layout, key_mask, dropout, dims)),
    )
}

/// `inputs`: the operand buffers, then the bias if `biased`.
#[allow(clippy::too_many_arguments)]
fn run_typed<T: Float>(
    tape: &mut Tape,
    inputs: &[&Var],
    biased: bool,
    source: [usize; 3],
    layout: Layout,
    key_mask: Option<Arc<[bool]>>,
    dropout: Option<Dropout>,
    dims: Dims,
) -> Result<Var> {
    let mut values: Vec<Tensor> = inputs.iter().map(|v| v.value().clone()).collect();
    let bias = if biased { values.pop() } else { None };
    let data = |i: usize| values[source[i]].data::<T>();
    let bias_data = bias.as_ref().map(|b| b.data::<T>()).transpose()?;
    let (o, probs) = cpu::forward(data(0)?, data(1)?, data(2)?, layout, key_mask.as_deref(), bias_data, dropout, dims);
    let out = Tensor::from_vec(o, &[dims.batch, dims.sq, dims.width()])?;
    Ok(tape.record("attention", inputs, out, move |g, _| {
        let mut grads: Vec<Vec<T>> = values.iter().map(|v| vec![T::ZERO; v.numel()]).collect();
        let ptrs: Vec<SendPtr<T>> = grads.iter_mut().map(|g| SendPtr(g.as_mut_ptr())).collect();
        // The bias gradient per batch row, summed over the batch below.
        let mut dbias = bias.as_ref().map(|_| vec![T::ZERO; dims.batch * dims.heads * dims.sq * dims.sk]);
        let targets = GradTargets {
            dq: ptrs[source[0]],
            dk: ptrs[source[1]],
            dv: ptrs[source[2]],
            dbias: dbias.as_mut().map(|d| SendPtr(d.as_mut_ptr())),
        };
        let data = |i: usize| values[source[i]].data::<T>();
        // SAFETY: each target buffer has its input's size and layout; the kernel writes each element once.
        unsafe { cpu::backward(g.data::<T>()?, data(0)?, data(1)?, data(2)?, &probs, layout, dropout, dims, targets) };
        let mut out: Vec<Option<Tensor>> = grads
            .into_iter()
            .zip(&values)
            .map(|(g, v)| Tensor::from_vec(g, v.shape()).map(Some))
            .collect::<Result<_>>()?;
        if let (Some(per_row), Some(bias)) = (dbias, &bias) {
            let mut sum = vec![T::ZERO; bias.numel()];
            for row in per_row.chunks(sum.len()) {
                sum.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
            }
            out.push(Some(Tensor::from_vec(sum, bias.shape())?));
        }
        Ok(out)
    }))
}

/// kernels/attention.cu (bf16, flash) or attention_exact.cu (f32), reading Q, K and V in place from the
/// (possibly fused) projection outputs; the backward writes the gradients in the same packing. The key
/// mask is uploaded once (u8 per key) and kept for the backward; the dropout mask is regenerated.
#[cfg(not(no_cuda_kernels))]
fn on_cuda(
    tape: &mut Tape,
    inputs: &[&Var],
    source: [usize; 3],
    layout: Layout,
    key_mask: Option<Arc<[bool]>>,
    dropout: Option<Dropout>,
    dims: Dims,
) -> Result<Var> {
    use crate::backend::cuda::attention::{self as kernel, Masks, View};
    use crate::backend::cuda::DeviceBuffer;
    /// Q, K and V read in place: operand i in buffer `source[i]` at the layout's stride and offset.
    fn views<'a, E>(
        bufs: &[&'a DeviceBuffer<E>],
        source: [usize; 3],
        layout: Layout,
    ) -> (View<'a, E>, View<'a, E>, View<'a, E>) {
        let view = |i: usize, at: crate::backend::cpu::attention::Operand| View {
            buf: bufs[source[i]],
            offset: at.offset,
            stride: at.stride,
        };
        (view(0, layout.q), view(1, layout.k), view(2, layout.v))
    }
    let values: Vec<Tensor> = inputs.iter().map(|v| v.value().clone()).collect();
    crate::with_gpu_float!(values[0].dtype(), "attention", E => {
        let gpu = values[0].cuda::<E>()?.0.clone();
        let keys = key_mask.map(|m| gpu.upload(&m.iter().map(|&v| v as u8).collect::<Vec<u8>>())).transpose()?;
        let bufs = values.iter().map(|v| v.cuda::<E>().map(|(_, b)| b)).collect::<Result<Vec<_>>>()?;
        let (q, k, v) = views(&bufs, source, layout);
        let (o, lse) = kernel::forward(&gpu, &dims, q, k, v, &Masks { keys: keys.as_ref(), dropout })?;
        let out = Tensor::from_cuda(&gpu, o, &[dims.batch, dims.sq, dims.width()])?;
        let saved = out.clone();
        Ok(tape.record("attention", inputs, out, move |g, _| {
            let bufs = values.iter().map(|v| v.cuda::<E>().map(|(_, b)| b)).collect::<Result<Vec<_>>>()?;
            let grads = values.iter().map(|v| gpu.zeros::<E>(v.numel())).collect::<Result<Vec<_>>>()?;
            let (_, o) = saved.cuda::<E>()?;
            let (_, dout) = g.cuda::<E>()?;
            let grad_bufs: Vec<&DeviceBuffer<E>> = grads.iter().collect();
            let (x, dx) = (views(&bufs, source, layout), views(&grad_bufs, source, layout));
            kernel::backward(&gpu, &dims, x, o, &lse, dout, dx, &Masks { keys: keys.as_ref(), dropout })?;
            grads.into_iter().zip(&values).map(|(g, v)| Tensor::from_cuda(&gpu, g, v.shape()).map(Some)).collect()
        }))
    })
}

#[cfg(no_cuda_kernels)]
fn on_cuda(
    _: &mut Tape,
    inputs: &[&Var],
    _: [usize; 3],
    _: Layout,
    _: Option<Arc<[bool]>>,
    _: Option<Dropout>,
    _: Dims,
) -> Result<Var> {
    crate::bail!("attention: a tensor on {} in a build without CUDA kernels", inputs[0].value().device())
}
