//! Launchers for kernels/attention.cu (bf16: flash attention on tensor cores, head dims 64 and 128) and
//! kernels/attention_exact.cu (f32: exact, any head dim up to 128), forward and backward, causal,
//! bidirectional or cross, reading Q, K, V in place from (possibly fused) projection outputs, with an
//! optional key mask and attention dropout (`Masks`, kernels/attention_masks.cuh).

use super::device::cuda_error;
use super::element::GpuFloat;
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, launch};
use crate::kernels::abi::{
    AttentionParams, RETRO_ATTN_BLOCK_M, RETRO_ATTN_BLOCK_N, RETRO_ATTN_PAD, RETRO_ATTN_THREADS,
};
use crate::Result;
use cudarc::driver::{sys::CUfunction_attribute, DeviceRepr};

// SAFETY: AttentionParams is a plain C struct generated from bindings/attention.h, passed by value.
unsafe impl DeviceRepr for AttentionParams {}

/// The problem's sizes: the CPU reference's type (batch, sq, sk, heads, head_dim, causal).
pub use crate::backend::cpu::attention::Dims;

/// One operand read in place: row `r` of batch `b`, head `h` starts at `offset + (b * rows + r) * stride
/// + h * head_dim` (a fused QKV output is three views of one buffer, with stride 3 * width).
#[derive(Clone, Copy)]
pub struct View<'a, E> {
    pub buf: &'a DeviceBuffer<E>,
    pub offset: usize,
    pub stride: usize,
}

impl<'a, E> View<'a, E> {
    pub fn contiguous(buf: &'a DeviceBuffer<E>, width: usize) -> Self {
        Self { buf, offset: 0, stride: width }
    }

    fn check(&self, name: &str, rows: usize, width: usize) -> Result<u64> {
        crate::ensure!(
            self.offset % 8 == 0 && self.stride % 8 == 0 && self.stride >= width,
            "attention operand {name}: offset {} and stride {} must be multiples of 8 with stride >= {width}",
            self.offset,
            self.stride
        );
        let end = if rows == 0 { 0 } else { self.offset + (rows - 1) * self.stride + width };
        crate::ensure!(
            end <= self.buf.len(),
            "attention operand {name} needs {end} elements, its buffer has {}",
            self.buf.len()
        );
        Ok(self.buf.ptr_at(self.offset))
    }
}

/// What the attention hides or drops: visible keys per batch row (u8 [batch, sk], nonzero = visible), and
/// attention dropout (the CPU's `Dropout`: Philox stream b * heads + h of its seed, element i * sk + j).
#[derive(Clone, Copy, Default)]
pub struct Masks<'a> {
    pub keys: Option<&'a DeviceBuffer<u8>>,
    pub dropout: Option<crate::backend::cpu::attention::Dropout>,
}

impl Masks<'_> {
    pub const NONE: Masks<'static> = Masks { keys: None, dropout: None };

    fn apply(&self, s: &Dims, p: AttentionParams) -> Result<AttentionParams> {
        let mut p = p;
        if let Some(keys) = self.keys {
            crate::ensure!(
                keys.len() == s.batch * s.sk,
                "attention key mask of {} entries for {} x {} keys",
                keys.len(),
                s.batch,
                s.sk
            );
            p.key_mask = keys.ptr();
        }
        if let Some(d) = self.dropout {
            crate::ensure!((0.0..1.0).contains(&d.p), "attention dropout probability {} is not in [0, 1)", d.p);
            if d.p > 0.0 {
                p.dropout_seed = d.seed;
                p.dropout_threshold = crate::philox::drop_threshold(d.p);
                p.dropout_scale = (1.0 / (1.0 - d.p)) as f32;
                if let Some((first, all)) = d.split_heads {
                    crate::ensure!(
                        first + s.heads <= all,
                        "attention dropout: heads {first}..{} of a layer of {all}",
                        first + s.heads
                    );
                    (p.dropout_first_head, p.dropout_all_heads) = (first as i32, all as i32);
                }
            }
        }
        Ok(p)
    }
}

fn suffix<E: GpuFloat>(s: &Dims) -> Result<&'static str> {
    if E::NAME == "f32" {
        crate::ensure!(
            s.head_dim > 0 && s.head_dim <= 128,
            "exact (f32) GPU attention supports head dims up to 128, not {}",
            s.head_dim
        );
        return Ok("exact");
    }
    match s.head_dim {
        64 => Ok("hd64"),
        128 => Ok("hd128"),
        d => crate::bail!("GPU attention (bf16) supports head dims 64 and 128, not {d}"),
    }
}

fn check_shape(s: &Dims) -> Result<()> {
    crate::ensure!(s.batch > 0 && s.heads > 0 && s.sq > 0 && s.sk > 0, "empty attention problem {s:?}");
    crate::ensure!(!s.causal || s.sq == s.sk, "causal attention needs sq == sk, got {} and {}", s.sq, s.sk);
    crate::ensure!(s.batch * s.heads <= 65_535, "attention: batch x heads = {} exceeds the grid", s.batch * s.heads);
    Ok(())
}

fn params(s: &Dims, q: u64, k: u64, v: u64, strides: [usize; 3]) -> AttentionParams {
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    AttentionParams {
        q,
        k,
        v,
        batch: s.batch as i32,
        heads: s.heads as i32,
        sq: s.sq as i32,
        sk: s.sk as i32,
        head_dim: s.head_dim as i32,
        q_stride: strides[0] as i32,
        k_stride: strides[1] as i32,
        v_stride: strides[2] as i32,
        causal: s.causal as i32,
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
        ..Default::default()
    }
}

/// Shared memory of each kernel: bf16 tiles with rows padded by RETRO_ATTN_PAD, plus f32 row vectors.
fn shared_bytes(kernel: &str, hd: usize) -> u32 {
    let (m, n, pad) = (RETRO_ATTN_BLOCK_M as usize, RETRO_ATTN_BLOCK_N as usize, RETRO_ATTN_PAD as usize);
    let bytes = match kernel {
        "forward" => ((m + n) * (hd + pad) + hd * (n + pad)) * 2,
        "dkv" => ((2 * n + 2 * m) * (hd + pad) + 2 * hd * (m + pad)) * 2 + 2 * m * 4,
        _ => ((2 * m + 2 * n) * (hd + pad) + hd * (n + pad)) * 2,
    };
    bytes as u32
}

/// One warp per row of `rows` rows per (batch, head): the exact kernels' grid.
fn warp_per_row(s: &Dims, rows: usize) -> (u32, u32, u32) {
    (((s.batch * s.heads * rows) as u64 * 32).div_ceil(RETRO_ATTN_THREADS as u64) as u32, 1, 1)
}

unsafe fn run(gpu: &Gpu, name: &'static str, grid: (u32, u32, u32), smem: u32, p: &AttentionParams) -> Result<()> {
    if name.starts_with("attention_exact") {
        return launch(gpu, "attention_exact", name, config(grid, RETRO_ATTN_THREADS, 0), &[p]);
    }
    let f = gpu.function("attention", name)?;
    // cuFuncSetAttribute acts on the calling thread's current context (cudarc does not bind it here).
    gpu.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
    f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
        .map_err(|e| cuda_error(&format!("allowing {smem} bytes of shared memory for {name}"), e))?;
    launch(gpu, "attention", name, config(grid, RETRO_ATTN_THREADS, smem), &[p])
}

fn kernel_name(prefix: &str, sfx: &str) -> &'static str {
    match (prefix, sfx) {
        ("forward", "exact") => "attention_exact_forward",
        ("dkv", "exact") => "attention_exact_backward_dkv",
        ("dq", "exact") => "attention_exact_backward_dq",
        ("forward", "hd64") => "attention_forward_hd64",
        ("forward", _) => "attention_forward_hd128",
        ("dkv", "hd64") => "attention_backward_dkv_hd64",
        ("dkv", _) => "attention_backward_dkv_hd128",
        ("dq", "hd64") => "attention_backward_dq_hd64",
        _ => "attention_backward_dq_hd128",
    }
}

/// Returns (o [batch, sq, width] contiguous, lse [batch * heads, sq] in the log2 domain).
pub fn forward<E: GpuFloat>(
    gpu: &Gpu,
    s: &Dims,
    q: View<E>,
    k: View<E>,
    v: View<E>,
    masks: &Masks,
) -> Result<(DeviceBuffer<E>, DeviceBuffer<f32>)> {
    check_shape(s)?;
    let sfx = suffix::<E>(s)?;
    let w = s.width();
    let p = params(
        s,
        q.check("q", s.batch * s.sq, w)?,
        k.check("k", s.batch * s.sk, w)?,
        v.check("v", s.batch * s.sk, w)?,
        [q.stride, k.stride, v.stride],
    );
    let o = gpu.alloc::<E>(s.batch * s.sq * w)?;
    let lse = gpu.alloc::<f32>(s.batch * s.heads * s.sq)?;
    let p = masks.apply(s, AttentionParams { o: o.ptr(), lse: lse.ptr(), ..p })?;
    let grid = if sfx == "exact" {
        warp_per_row(s, s.sq)
    } else {
        (s.sq.div_ceil(RETRO_ATTN_BLOCK_M as usize) as u32, (s.batch * s.heads) as u32, 1)
    };
    // SAFETY: every operand was bounds-checked for this shape; o and lse were just sized for it.
    unsafe { run(gpu, kernel_name("forward", sfx), grid, shared_bytes("forward", s.head_dim), &p)? };
    Ok((o, lse))
}

/// Gradients of the attention inputs, written into `dq`, `dk`, `dv` (views with the same strides as
/// q, k, v: a fused dQKV buffer is filled in place).
#[allow(clippy::too_many_arguments)]
pub fn backward<E: GpuFloat>(
    gpu: &Gpu,
    s: &Dims,
    (q, k, v): (View<E>, View<E>, View<E>),
    o: &DeviceBuffer<E>,
    lse: &DeviceBuffer<f32>,
    dout: &DeviceBuffer<E>,
    (dq, dk, dv): (View<E>, View<E>, View<E>),
    masks: &Masks,
) -> Result<()> {
    check_shape(s)?;
    let sfx = suffix::<E>(s)?;
    let w = s.width();
    crate::ensure!(
        dq.stride == q.stride && dk.stride == k.stride && dv.stride == v.stride,
        "attention gradients must have the strides of their inputs"
    );
    // dK and dV are written before the dQ kernel reads K and V: they must not overwrite them.
    for (g, name) in [(&dk, "dk"), (&dv, "dv")] {
        for (x, xname) in [(&k, "k"), (&v, "v")] {
            crate::ensure!(
                !std::ptr::eq(g.buf, x.buf),
                "attention backward: {name} must not share a buffer with {xname} (it is written before {xname} is read)"
            );
        }
    }
    let (nq, nk) = (s.batch * s.sq, s.batch * s.sk);
    crate::ensure!(o.len() == nq * w && dout.len() == nq * w, "attention backward: o / dout are not [{nq}, {w}]");
    crate::ensure!(lse.len() == s.batch * s.heads * s.sq, "attention backward: lse has {} rows", lse.len());
    let delta = gpu.alloc::<f32>(s.batch * s.heads * s.sq)?;
    let p = AttentionParams {
        o: o.ptr(),
        lse: lse.ptr(),
        dout: dout.ptr(),
        delta: delta.ptr(),
        dq: dq.check("dq", nq, w)?,
        dk: dk.check("dk", nk, w)?,
        dv: dv.check("dv", nk, w)?,
        ..params(s, q.check("q", nq, w)?, k.check("k", nk, w)?, v.check("v", nk, w)?, [q.stride, k.stride, v.stride])
    };
    let p = masks.apply(s, p)?;
    let rows = (s.batch * s.sq * s.heads) as u64;
    let delta_blocks = (rows * 32).div_ceil(256) as u32;
    let bh = (s.batch * s.heads) as u32;
    // SAFETY: every operand was bounds-checked for this shape; delta was just sized for it.
    unsafe {
        if sfx == "exact" {
            run(gpu, "attention_exact_delta", warp_per_row(s, s.sq), 0, &p)?;
            run(gpu, kernel_name("dkv", sfx), warp_per_row(s, s.sk), 0, &p)?;
            run(gpu, kernel_name("dq", sfx), warp_per_row(s, s.sq), 0, &p)?;
            return Ok(());
        }
        launch(gpu, "attention", "attention_backward_delta", config((delta_blocks, 1, 1), 256, 0), &[&p])?;
        let key_tiles = s.sk.div_ceil(RETRO_ATTN_BLOCK_N as usize) as u32;
        run(gpu, kernel_name("dkv", sfx), (key_tiles, bh, 1), shared_bytes("dkv", s.head_dim), &p)?;
        let query_tiles = s.sq.div_ceil(RETRO_ATTN_BLOCK_M as usize) as u32;
        run(gpu, kernel_name("dq", sfx), (query_tiles, bh, 1), shared_bytes("dq", s.head_dim), &p)?;
    }
    Ok(())
}
