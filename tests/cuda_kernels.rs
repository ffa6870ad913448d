//! Every GPU kernel family against the f64 CPU reference, through one test body per op that runs on
//! both backends (`test_device!`): the `cpu` copy checks the f32 CPU backend, the `cuda` copy the
//! kernels (bf16 activations, f32 statistics and parameter gradients), each with its stated tolerance.
//! Without a GPU the `cuda` copies print why they skip; `scripts/gpu-check` runs them with
//! RETRO_REQUIRE_GPU=1 so that a skip there is a failure.
//!
//! Tolerances (norm-wise: max |got - ref| / max |ref|), derived from the arithmetic. Inputs are bf16
//! values on both sides, so the GPU's error is its own roundings. With u = BF16_U = 2^-8:
//! - a bf16 result computed in f32 and rounded once is off by at most u; 2u leaves room for the f32
//!   arithmetic before the rounding (fast exp / rsqrt, other summation order);
//! - a result computed from a bf16-rounded intermediate (attention's P before P·V, the bf16 du summed into
//!   dbias, LayerNorm of the rounded residual) carries that rounding through once more: 4u;
//! - attention's backward goes through two such intermediates (P and dS, both bf16 for the tensor
//!   cores) whose errors add over the key / query length with random signs: 8u;
//! - f32 sums over rows (parameter gradients, LayerNorm statistics) follow `f32_sum_tol(rows)`;
//! - index moves (embedding rows, row shifts, residual adds of exact bf16 sums) are exact or one rounding.
//!
//! Each check prints a `RETRO_CHECK` JSON line; `scripts/gpu-run` turns them into the per-kernel table.

mod common;
#[path = "cuda_kernels/launchers.rs"]
mod launchers;

use common::device::{assert_close, f32_sum_tol, is_gpu_f32, rand_bf16, report_check, Dev, BF16_U};
use launchers::shift_rows_reference;
use retro::backend::cpu;
use retro::backend::cpu::attention::Dims;
use retro::rng::Rng;

fn f64v(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn f32v(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

const LN_WIDTHS: [usize; 3] = [64, 200, 2560];

test_device!(layernorm_forward, |dev| {
    let mut rng = Rng::new(1);
    for d in LN_WIDTHS {
        let rows = 37;
        let x = rand_bf16(&mut rng, rows * d, 2.0);
        let g: Vec<f32> = rand_bf16(&mut rng, d, 0.1).iter().map(|v| 1.0 + v).collect();
        let b = rand_bf16(&mut rng, d, 0.1);
        let (y, mean, rstd) = dev.layernorm(&x, &g, &b, d, 1e-5);
        let (ry, rs) = cpu::layernorm::forward(&f64v(&x), &f64v(&g), &f64v(&b), d, 1e-5);
        assert_close(&format!("layernorm y d={d}"), dev, &y, &f32v(&ry), 1e-5, 2.0 * BF16_U);
        // f32 statistics over rows of d (rstd through rsqrtf: 2 ulp more).
        assert_close("layernorm mean", dev, &mean, &f32v(&rs.mean), 1e-5, f32_sum_tol(d));
        assert_close("layernorm rstd", dev, &rstd, &f32v(&rs.rstd), 1e-5, f32_sum_tol(d).max(1e-4));
    }
});

test_device!(residual_layernorm_forward, |dev| {
    let mut rng = Rng::new(2);
    let (rows, d) = (29, 1024);
    let x = rand_bf16(&mut rng, rows * d, 1.0);
    let r = rand_bf16(&mut rng, rows * d, 1.0);
    let g = rand_bf16(&mut rng, d, 1.0);
    let b = rand_bf16(&mut rng, d, 0.1);
    let (h, y) = dev.residual_layernorm(&x, &r, &g, &b, d, 1e-5);
    let rh = cpu::elementwise::add(&f64v(&x), &f64v(&r));
    let (ry, _) = cpu::layernorm::forward(&rh, &f64v(&g), &f64v(&b), d, 1e-5);
    // h = x + r rounded once; y is the LayerNorm of that rounded h (the reference's h is exact).
    assert_close("residual h", dev, &h, &f32v(&rh), 1e-6, BF16_U);
    assert_close("residual layernorm y", dev, &y, &f32v(&ry), 1e-5, 4.0 * BF16_U);
});

test_device!(layernorm_backward, |dev| {
    let mut rng = Rng::new(3);
    // 300 rows: one row per block on a GPU with >= 75 SMs. 1601 rows > 4 blocks per SM x 132 SMs x 3: every
    // block loops over several rows, accumulating its gamma / beta partials in registers.
    for (d, rows) in LN_WIDTHS.iter().map(|&d| (d, 300)).chain([(64, 1601), (1024, 1601)]) {
        let x = rand_bf16(&mut rng, rows * d, 1.0);
        let dy = rand_bf16(&mut rng, rows * d, 1.0);
        let g: Vec<f32> = rand_bf16(&mut rng, d, 0.1).iter().map(|v| 1.0 + v).collect();
        let b = rand_bf16(&mut rng, d, 0.1);
        let (dx, dg, db) = dev.layernorm_backward(&dy, &x, &g, &b, d, 1e-5);
        let (_, s) = cpu::layernorm::forward(&f64v(&x), &f64v(&g), &f64v(&b), d, 1e-5);
        let (rdx, rdg, rdb) = cpu::layernorm::backward(&f64v(&dy), &f64v(&x), &f64v(&g), &s, d);
        assert_close(&format!("layernorm dx d={d} rows={rows}"), dev, &dx, &f32v(&rdx), 1e-5, 2.0 * BF16_U);
        assert_close("layernorm dgamma", dev, &dg, &f32v(&rdg), f32_sum_tol(rows), f32_sum_tol(rows));
        assert_close("layernorm dbeta", dev, &db, &f32v(&rdb), f32_sum_tol(rows), f32_sum_tol(rows));
    }
});

test_device!(bias_gelu_forward_and_backward, |dev| {
    let mut rng = Rng::new(4);
    let (rows, d) = (301, 136);
    let x = rand_bf16(&mut rng, rows * d, 2.0);
    let bias = rand_bf16(&mut rng, d, 0.5);
    let dy = rand_bf16(&mut rng, rows * d, 1.0);
    let u: Vec<f64> = x.iter().enumerate().map(|(i, &v)| v as f64 + bias[i % d] as f64).collect();
    let y = dev.bias_gelu(&x, &bias, d);
    assert_close("bias-gelu y", dev, &y, &f32v(&cpu::elementwise::gelu_forward(&u)), 1e-6, 2.0 * BF16_U);
    let (du, dbias) = dev.bias_gelu_backward(&dy, &x, &bias, d);
    let rdu = cpu::elementwise::gelu_backward(&u, &f64v(&dy));
    assert_close("bias-gelu du", dev, &du, &f32v(&rdu), 1e-6, 2.0 * BF16_U);
    // The GPU sums the bf16-rounded du (a rounded intermediate); the reference sums the exact du.
    let rdb = f32v(&cpu::linear::backward_bias(&rdu, rows, d));
    assert_close("bias-gelu dbias", dev, &dbias, &rdb, f32_sum_tol(rows), 4.0 * BF16_U);
});

test_device!(embedding_forward_and_backward, |dev| {
    let mut rng = Rng::new(5);
    let (vocab, d, period, count) = (97, 128, 48, 4 * 48);
    // Few distinct ids so rows repeat (the grouped backward's whole point).
    let tokens: Vec<i32> = (0..count).map(|_| (rng.below(20) * 3) as i32).collect();
    let word = rand_bf16(&mut rng, vocab * d, 1.0);
    let position = rand_bf16(&mut rng, period * d, 1.0);
    let out = dev.embedding(&tokens, &word, &position, d, period);
    let ids: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
    let pos: Vec<usize> = (0..count).map(|t| t % period).collect();
    let reference = cpu::elementwise::add(
        &cpu::embedding::forward(&ids, &f64v(&word), d),
        &cpu::embedding::forward(&pos, &f64v(&position), d),
    );
    // word + position rounded once.
    assert_close("embedding out", dev, &out, &f32v(&reference), 1e-7, BF16_U);
    let dout = rand_bf16(&mut rng, count * d, 1.0);
    let (dword, dpos) = dev.embedding_backward(&tokens, &dout, vocab, period, d, period);
    assert_close(
        "embedding dword",
        dev,
        &dword,
        &f32v(&cpu::embedding::backward(&ids, &f64v(&dout), vocab, d)),
        f32_sum_tol(count),
        f32_sum_tol(count),
    );
    assert_close(
        "embedding dposition",
        dev,
        &dpos,
        &f32v(&cpu::embedding::backward(&pos, &f64v(&dout), period, d)),
        f32_sum_tol(count / period),
        f32_sum_tol(count / period),
    );
});

test_device!(embedding_rejects_an_id_outside_the_vocabulary, |dev| {
    #[cfg(not(no_cuda_kernels))]
    if let Dev::Cuda(gpu) = dev {
        let err =
            retro::backend::cuda::embedding::TokenBatch::new(gpu, &[1, 7, 50304], 50304).err().expect("must fail");
        assert!(err.to_string().contains("50304") && err.to_string().contains("position 2"), "{err}");
        return;
    }
    // The CPU op checks ids in ops::embedding (tests/ops.rs); nothing more to check here.
    let _ = dev;
});

test_device!(softmax_cross_entropy_fused, |dev| {
    let mut rng = Rng::new(6);
    for (rows, classes) in [(19, 1000), (3, 50304)] {
        let logits = rand_bf16(&mut rng, rows * classes, 3.0);
        let mut targets: Vec<i32> = (0..rows).map(|_| rng.below(classes as u64) as i32).collect();
        targets[1] = -1;
        let scale = 1.0 / (rows - 1) as f32;
        let (losses, grads) = dev.cross_entropy(&logits, &targets, classes, scale);
        let (mut rl, mut rg) = (Vec::new(), Vec::new());
        for (row, &t) in logits.chunks(classes).zip(&targets) {
            if t < 0 {
                rl.push(0.0);
                rg.extend(std::iter::repeat_n(0.0, classes));
                continue;
            }
            let row = f64v(row);
            let (loss, lse) = cpu::cross_entropy::forward(&row, &[t as usize], classes);
            rl.push(loss);
            rg.extend(cpu::cross_entropy::backward(&row, &[t as usize], &lse, classes, scale as f64));
        }
        // Losses: f32 log-sum-exps of exact bf16 logits (relative to losses of ~10: 1e-4 is ~1000 f32
        // roundings); dlogits = softmax - one-hot, rounded once.
        assert_close(&format!("cross-entropy losses ({classes} classes)"), dev, &losses, &f32v(&rl), 1e-5, 1e-4);
        assert_close("cross-entropy dlogits", dev, &grads, &f32v(&rg), 1e-5, 2.0 * BF16_U);
        // Softmax minus one-hot sums to zero per row: catches errors spread over the many small entries.
        for (i, row) in grads.chunks(classes).enumerate() {
            let sum: f64 = row.iter().map(|&g| g as f64).sum();
            assert!(sum.abs() <= 0.02 * scale as f64, "row {i} of dlogits sums to {sum:.3e}, not 0");
        }
    }
});

test_device!(linear_forward_and_backward, |dev| {
    let mut rng = Rng::new(7);
    let (rows, din, dout) = (67, 64, 96);
    let x = rand_bf16(&mut rng, rows * din, 1.0);
    let w = rand_bf16(&mut rng, dout * din, 0.1);
    let b = rand_bf16(&mut rng, dout, 0.1);
    for gelu in [false, true] {
        let y = dev.linear(&x, &w, &b, rows, din, dout, gelu);
        let mut r = cpu::linear::forward(&f64v(&x), &f64v(&w), Some(&f64v(&b)), rows, din, dout);
        if gelu {
            r = cpu::elementwise::gelu_forward(&r);
        }
        // bf16: one rounding of an f32 dot product of din terms. In f32 cuBLASLt's GELU epilogue may use
        // tanh.approx.f32 (relative error 2^-11 by the PTX ISA): 1e-3; the plain GEMM is exact f32 (1e-5).
        let cpu_tol = if gelu && is_gpu_f32(dev) { 1e-3 } else { 1e-5 };
        assert_close(&format!("linear y (gelu {gelu})"), dev, &y, &f32v(&r), cpu_tol, 2.0 * BF16_U);
    }
    let dy = rand_bf16(&mut rng, rows * dout, 1.0);
    let (dx, dw, db) = dev.linear_backward(&dy, &x, &w, rows, din, dout);
    let (dy64, x64, w64) = (f64v(&dy), f64v(&x), f64v(&w));
    let rdx = f32v(&cpu::linear::backward_input(&dy64, &w64, rows, din, dout));
    assert_close("linear dx", dev, &dx, &rdx, 1e-5, 2.0 * BF16_U);
    // dw, db: f32 sums over the rows of bf16 products (exact in f32).
    let (tol, rdw) = (f32_sum_tol(rows), f32v(&cpu::linear::backward_weight(&dy64, &x64, rows, din, dout)));
    assert_close("linear dw", dev, &dw, &rdw, tol, tol);
    assert_close("linear db", dev, &db, &f32v(&cpu::linear::backward_bias(&dy64, rows, dout)), tol, tol);
});

/// The attention problems RETRO has: causal decoder self-attention, the encoder's bidirectional
/// self-attention over r = 128 neighbour tokens, its cross-attention (k·r... queries of a neighbour to the
/// 64 chunk tokens), the CCA (64 queries to k·r = 256 keys), and tails that are not tile multiples.
const ATTENTION_CASES: [Dims; 6] = [
    Dims { batch: 2, heads: 2, sq: 130, sk: 130, head_dim: 64, causal: true },
    Dims { batch: 1, heads: 3, sq: 256, sk: 256, head_dim: 128, causal: true },
    Dims { batch: 3, heads: 2, sq: 128, sk: 128, head_dim: 64, causal: false },
    Dims { batch: 3, heads: 2, sq: 128, sk: 64, head_dim: 128, causal: false },
    Dims { batch: 2, heads: 2, sq: 64, sk: 256, head_dim: 64, causal: false },
    Dims { batch: 2, heads: 1, sq: 70, sk: 100, head_dim: 128, causal: false },
];

fn attention_inputs(rng: &mut Rng, a: &Dims) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = a.heads * a.head_dim;
    (
        rand_bf16(rng, a.batch * a.sq * w, 1.0),
        rand_bf16(rng, a.batch * a.sk * w, 1.0),
        rand_bf16(rng, a.batch * a.sk * w, 1.0),
        rand_bf16(rng, a.batch * a.sq * w, 1.0),
    )
}

test_device!(attention_forward, |dev| {
    let mut rng = Rng::new(8);
    for a in ATTENTION_CASES {
        let (q, k, v, dout) = attention_inputs(&mut rng, &a);
        let (o, ..) = dev.attention(&q, &k, &v, &dout, a, None, None);
        let layout = cpu::attention::Layout::separate(a.heads * a.head_dim);
        let (r, _) = cpu::attention::forward(&f64v(&q), &f64v(&k), &f64v(&v), layout, None, None, None, a);
        // P rounded to bf16 before P·V (random-sign errors over the keys, ~u of o's scale), then o rounded
        // (u), with the exp2 approximation and a 2x margin: 5u.
        assert_close(&format!("attention o {a:?}"), dev, &o, &f32v(&r), 1e-5, 5.0 * BF16_U);
    }
});

test_device!(attention_backward, |dev| {
    let mut rng = Rng::new(9);
    for a in ATTENTION_CASES {
        let (q, k, v, dout) = attention_inputs(&mut rng, &a);
        let (_, dq, dk, dv) = dev.attention(&q, &k, &v, &dout, a, None, None);
        let (q64, k64, v64) = (f64v(&q), f64v(&k), f64v(&v));
        let layout = cpu::attention::Layout::separate(a.heads * a.head_dim);
        let (_, probs) = cpu::attention::forward(&q64, &k64, &v64, layout, None, None, None, a);
        let (mut rq, mut rk, mut rv) = (vec![0f64; q.len()], vec![0f64; k.len()], vec![0f64; v.len()]);
        let targets = cpu::attention::GradTargets {
            dq: cpu::SendPtr(rq.as_mut_ptr()),
            dk: cpu::SendPtr(rk.as_mut_ptr()),
            dv: cpu::SendPtr(rv.as_mut_ptr()),
            dbias: None,
        };
        // SAFETY: three separate buffers of the operands' sizes.
        unsafe { cpu::attention::backward(&f64v(&dout), &q64, &k64, &v64, &probs, layout, None, a, targets) };
        // P and dS both rounded to bf16 for the tensor cores: 8u.
        assert_close(&format!("attention dq {a:?}"), dev, &dq, &f32v(&rq), 1e-5, 8.0 * BF16_U);
        assert_close("attention dk", dev, &dk, &f32v(&rk), 1e-5, 8.0 * BF16_U);
        assert_close("attention dv", dev, &dv, &f32v(&rv), 1e-5, 8.0 * BF16_U);
    }
});

// Masked keys (missing neighbours: the whole of a neighbour's keys, and every key of one batch row, whose
// output is zero) and attention dropout (Philox per (pair, query, key), regenerated in the backward),
// through the real op on each device against the CPU in f64. Dropout factors are exact in f32, so the
// tolerances are the unmasked ones.
test_device!(attention_with_masked_keys_and_dropout, |dev| {
    let mut rng = Rng::new(10);
    // The last case is a tensor-parallel rank's heads 2..4 of a layer of 6: its masks are those heads'.
    let cases = [
        (Dims { batch: 3, heads: 2, sq: 64, sk: 256, head_dim: 64, causal: false }, true, 0.1, None),
        (Dims { batch: 2, heads: 2, sq: 130, sk: 130, head_dim: 128, causal: true }, false, 0.2, None),
        (Dims { batch: 2, heads: 2, sq: 70, sk: 100, head_dim: 64, causal: false }, true, 0.0, None),
        (Dims { batch: 2, heads: 2, sq: 96, sk: 96, head_dim: 64, causal: true }, false, 0.15, Some((2, 6))),
    ];
    for (a, masked, p, split_heads) in cases {
        let (q, k, v, dout) = attention_inputs(&mut rng, &a);
        // Batch row 0 hides keys 128..256 (its second neighbour); row 1 hides every key.
        let mask: Option<std::sync::Arc<[bool]>> = masked.then(|| {
            (0..a.batch * a.sk).map(|i| (i / a.sk != 1) && !(i / a.sk == 0 && i % a.sk >= a.sk / 2)).collect()
        });
        let dropout = (p > 0.0).then_some(retro::ops::Dropout { p, seed: 77, split_heads });
        let (o, dq, dk, dv) = dev.attention(&q, &k, &v, &dout, a, mask.clone(), dropout);
        let (q64, k64, v64) = (f64v(&q), f64v(&k), f64v(&v));
        let layout = cpu::attention::Layout::separate(a.width());
        let (ro, probs) = cpu::attention::forward(&q64, &k64, &v64, layout, mask.as_deref(), None, dropout, a);
        let (mut rq, mut rk, mut rv) = (vec![0f64; q.len()], vec![0f64; k.len()], vec![0f64; v.len()]);
        let targets = cpu::attention::GradTargets {
            dq: cpu::SendPtr(rq.as_mut_ptr()),
            dk: cpu::SendPtr(rk.as_mut_ptr()),
            dv: cpu::SendPtr(rv.as_mut_ptr()),
            dbias: None,
        };
        // SAFETY: three separate buffers of the operands' sizes.
        unsafe { cpu::attention::backward(&f64v(&dout), &q64, &k64, &v64, &probs, layout, dropout, a, targets) };
        let what = format!("attention masked {masked} dropout {p} heads of {split_heads:?} {a:?}");
        assert_close(&format!("{what}: o"), dev, &o, &f32v(&ro), 1e-5, 5.0 * BF16_U);
        assert_close(&format!("{what}: dq"), dev, &dq, &f32v(&rq), 1e-5, 8.0 * BF16_U);
        assert_close(&format!("{what}: dk"), dev, &dk, &f32v(&rk), 1e-5, 8.0 * BF16_U);
        assert_close(&format!("{what}: dv"), dev, &dv, &f32v(&rv), 1e-5, 8.0 * BF16_U);
        if masked {
            let row = a.sq * a.width();
            assert!(o[row..2 * row].iter().all(|&x| x == 0.0), "{what}: a row with every key hidden is not zero");
        }
    }
});

test_device!(attention_refuses_unsupported_shapes_cleanly, |dev| {
    #[cfg(not(no_cuda_kernels))]
    if let Dev::Cuda(gpu) = dev {
        use retro::backend::cuda::attention::{forward, Masks, View};
        let buf = gpu.zeros::<half::bf16>(2 * 16 * 80).unwrap();
        let s = Dims { batch: 2, heads: 1, sq: 16, sk: 16, head_dim: 80, causal: false };
        let c = |b, w| View::contiguous(b, w);
        let err = forward(gpu, &s, c(&buf, 80), c(&buf, 80), c(&buf, 80), &Masks::NONE).err().unwrap();
        assert!(err.to_string().contains("head dims 64 and 128"), "{err}");
        let s = Dims { head_dim: 64, ..s };
        let short = gpu.zeros::<half::bf16>(10).unwrap();
        let err = forward(gpu, &s, c(&short, 64), c(&buf, 64), c(&buf, 64), &Masks::NONE).err().unwrap();
        assert!(err.to_string().contains("operand q"), "{err}");
        return;
    }
    let _ = dev;
});

// The caching allocator serves a repeated step without the driver; with RETRO_NO_CUDA_MEMORY_CACHING=1
// (scripts/device-emulation address) it caches nothing and allocates exact sizes.
test_device!(allocator_serves_a_repeated_step_from_its_cache, |dev| {
    #[cfg(not(no_cuda_kernels))]
    if let Dev::Cuda(_) = dev {
        // A private Gpu (own allocator): the shared one is used by other tests' threads meanwhile.
        let gpu = retro::backend::cuda::Gpu::new(0).unwrap();
        let step = || {
            let a = gpu.alloc::<f32>(3 << 20).unwrap();
            let b = gpu.alloc::<half::bf16>(1000).unwrap();
            let c = gpu.alloc::<f32>(5 << 20).unwrap();
            drop(b);
            let d = gpu.alloc::<half::bf16>(999).unwrap();
            (a, c, d)
        };
        drop(step());
        let before = gpu.memory().driver_allocations;
        for _ in 0..3 {
            drop(step());
        }
        let after = gpu.memory();
        assert!(after.peak_allocated >= (3 << 22) + (5 << 22), "{after:?}");
        if std::env::var("RETRO_NO_CUDA_MEMORY_CACHING").is_ok_and(|v| v == "1") {
            // No cache (for memory checkers): every buffer from the driver, exactly, and back to it.
            assert_eq!(after.driver_allocations, before + 3 * 4, "{after:?}");
            assert_eq!((after.allocated, after.reserved), (0, 0), "{after:?}");
            assert_eq!(after.peak_reserved, (3 << 22) + (5 << 22) + 2000, "{after:?}");
            return;
        }
        assert_eq!(after.driver_allocations, before, "a repeated step must not call cuMemAlloc: {after:?}");
        return;
    }
    let _ = dev;
});

test_device!(residual_add_add_into_and_shift_rows, |dev| {
    let mut rng = Rng::new(20);
    let (batch, rows, d) = (3, 130, 64);
    let a = rand_bf16(&mut rng, batch * rows * d, 1.0);
    let b = rand_bf16(&mut rng, batch * rows * d, 1.0);
    let (sum, into) = dev.add_and_add_into(&a, &b);
    let reference = f32v(&cpu::elementwise::add(&f64v(&a), &f64v(&b)));
    // One rounding of an exact sum.
    assert_close("add", dev, &sum, &reference, 1e-7, BF16_U);
    assert_close("add_into", dev, &into, &reference, 1e-7, BF16_U);
    // The CCA's shift by m - 1 = 63 into chunk order (rows_out = l * m) and its inverse, plus a shift that
    // leaves rows on both sides: pure moves, exact on every device.
    for (rows_out, shift) in [(128, 63), (rows, -63), (rows + 5, -3)] {
        let got = dev.shift_rows(&a, batch, rows, rows_out, d, shift);
        let want = shift_rows_reference(&a, batch, rows, rows_out, d, shift);
        assert_close(&format!("shift_rows out {rows_out} shift {shift}"), dev, &got, &want, 0.0, 0.0);
    }
});

// The vocab-parallel cross-entropy's three passes on one rank's slice (the all-reduces between them are
// the identity with one rank), with targets held elsewhere (-1: the target logit counts as 0), against
// the same formulas in f64. With several ranks the passes see the group's maxima and sums instead.
test_device!(vocab_parallel_cross_entropy_passes, |dev| {
    let mut rng = Rng::new(30);
    for (rows, classes) in [(19, 1000), (3, 25152)] {
        let logits = rand_bf16(&mut rng, rows * classes, 3.0);
        let mut targets: Vec<i32> = (0..rows).map(|_| rng.below(classes as u64) as i32).collect();
        targets[1] = -1;
        let scale = 1.0 / rows as f32;
        let (losses, grads) = dev.vocab_cross_entropy(&logits, &targets, classes, scale);
        let (mut rl, mut rg) = (Vec::new(), Vec::new());
        for (row, &t) in logits.chunks(classes).zip(&targets) {
            let row = f64v(row);
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|&z| (z - max).exp()).sum::<f64>().ln();
            rl.push(lse - if t >= 0 { row[t as usize] } else { 0.0 });
            rg.extend(
                row.iter()
                    .enumerate()
                    .map(|(j, &z)| ((z - lse).exp() - if j as i32 == t { 1.0 } else { 0.0 }) * scale as f64),
            );
        }
        // As the fused kernel's: f32 log-sum-exps of exact bf16 logits; the gradient rounded once.
        assert_close(&format!("vocab-parallel losses ({classes} classes)"), dev, &losses, &f32v(&rl), 1e-5, 1e-4);
        assert_close("vocab-parallel dlogits", dev, &grads, &f32v(&rg), 1e-5, 2.0 * BF16_U);
    }
});

// A vocab-parallel rank's rows: ids of other ranks (-1) get zero rows and add nothing to the gradient;
// repeated ids add in a fixed order.
test_device!(embedding_rows_with_missing_ids, |dev| {
    let mut rng = Rng::new(31);
    let (rows, d, count) = (40, 64, 96);
    let tokens: Vec<i32> = (0..count).map(|i| if i % 5 == 0 { -1 } else { (rng.below(12) * 3) as i32 }).collect();
    let (table, dout) = (rand_bf16(&mut rng, rows * d, 1.0), rand_bf16(&mut rng, count * d, 1.0));
    let (out, dtable) = dev.embedding_rows(&tokens, &table, &dout, d);
    let (want, want_dtable) = Dev::Cpu.embedding_rows(&tokens, &table, &dout, d);
    assert_close("embedding rows", dev, &out, &want, 0.0, 0.0);
    assert!(out.chunks(d).step_by(5).all(|r| r.iter().all(|&x| x == 0.0)), "an id of -1 gives a zero row");
    assert_close("embedding rows dtable", dev, &dtable, &want_dtable, f32_sum_tol(count), f32_sum_tol(count));
});

// A row-parallel linear's bias, added once after the sum: one rounding of an exact sum.
test_device!(add_bias_rows, |dev| {
    let mut rng = Rng::new(32);
    let (x, bias) = (rand_bf16(&mut rng, 7 * 96, 1.0), rand_bf16(&mut rng, 96, 1.0));
    let got = dev.add_bias(&x, &bias);
    let want: Vec<f32> =
        x.chunks(96).flat_map(|r| r.iter().zip(&bias).map(|(a, b)| (*a as f64 + *b as f64) as f32)).collect();
    assert_close("add_bias", dev, &got, &want, 1e-7, BF16_U);
});

// The optimizer's kernels on one arena (what `DeviceOptimizer::step` launches; tests/device_model.rs checks
// the whole optimizer against AdamW in f64): a decaying part and a non-decaying one, an odd length (the
// grid-stride tail), the micro-batch average and the clip coefficient applied on the device, the bf16 copy;
// and a non-finite norm leaves every buffer as it was. The reference: the CPU's update in f64.
test_device!(adamw_arena_update_and_sum_of_squares, |dev| {
    #[cfg(not(no_cuda_kernels))]
    if let Dev::Cuda(gpu) = dev {
        use retro::backend::cpu::adamw::update_slice;
        use retro::backend::cuda::adamw;
        use retro::kernels::abi::AdamwParams;
        let mut rng = Rng::new(21);
        let (n, decay_end) = (4099, 2048);
        let mut draw = |s: f64| (0..n).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
        let (p, g, m) = (draw(1.0), draw(0.1), draw(0.01));
        let v: Vec<f32> = draw(0.01).iter().map(|x| x * x).collect();
        let config = retro::train::AdamWConfig::default();
        let (decay, keep) = (config.coefficients(1e-2, 3, true), config.coefficients(1e-2, 3, false));
        for (max_norm, poison) in [(Some(0.5), false), (None, false), (Some(0.5), true)] {
            let mut g = g.clone();
            if poison {
                g[4000] = f32::NAN;
            }
            let (dp, dg, dm, dv) =
                (gpu.upload(&p).unwrap(), gpu.upload(&g).unwrap(), gpu.upload(&m).unwrap(), gpu.upload(&v).unwrap());
            let (copy, sumsq) = (gpu.zeros::<half::bf16>(n).unwrap(), gpu.alloc::<f64>(1).unwrap());
            adamw::sum_squares_into(gpu, &dg, &sumsq).unwrap();
            let arenas =
                adamw::Arenas { param: &dp, grad: &dg, exp_avg: &dm, exp_avg_sq: &dv, weights_bf16: Some(&copy) };
            adamw::update(gpu, &arenas, &sumsq, AdamwParams::new(&decay, 0.5, max_norm, n, decay_end)).unwrap();
            let down = |b| gpu.download(b).unwrap();
            let (p1, m1, v1, sum) = (down(&dp), down(&dm), down(&dv), gpu.download(&sumsq).unwrap()[0]);
            let copy: Vec<f32> = gpu.download(&copy).unwrap().iter().map(|x| x.to_f32()).collect();
            if poison {
                assert!(sum.is_nan(), "the sum of squares of a NaN gradient is {sum}");
                assert!(p1 == p && m1 == m && v1 == v, "a non-finite norm must leave the arenas untouched");
                continue;
            }
            let rsum: f64 = g.iter().map(|&x| x as f64 * x as f64).sum();
            let rel = ((sum - rsum) / rsum).abs();
            report_check("sum_squares", dev, rel, 1e-12);
            assert!(rel <= 1e-12, "sum of squares {sum} vs {rsum}");
            let clip = max_norm.map_or(1.0, |c| (c / (rsum.sqrt() * 0.5 + 1e-6)).min(1.0));
            assert!(max_norm.is_none() || clip < 1.0, "the first case must clip");
            let scaled: Vec<f64> = g.iter().map(|&x| x as f64 * 0.5 * clip).collect();
            let (mut rp, mut rm, mut rv) = (f64v(&p), f64v(&m), f64v(&v));
            let d = decay_end;
            update_slice(&mut rp[..d], &scaled[..d], &mut rm[..d], &mut rv[..d], &decay);
            update_slice(&mut rp[d..], &scaled[d..], &mut rm[d..], &mut rv[d..], &keep);
            // The update (new - old parameter, ~lr) on its own scale: f32 rounding of |p| ~ 4 is 1e-5 of it.
            let delta = |new: &[f64]| new.iter().zip(&p).map(|(a, b)| (a - *b as f64) as f32).collect::<Vec<_>>();
            assert_close("adamw update", dev, &delta(&f64v(&p1)), &delta(&rp), 1e-4, 1e-4);
            assert_close("adamw exp_avg", dev, &m1, &f32v(&rm), 1e-6, 1e-6);
            assert_close("adamw exp_avg_sq", dev, &v1, &f32v(&rv), 1e-6, 1e-6);
            // The bf16 copy is the new f32 parameter rounded once.
            assert_close("adamw bf16 copy", dev, &copy, &common::device::round_bf16(&p1), 0.0, 0.0);
        }
        return;
    }
    // The CPU's AdamW is tests/adamw.rs; the f32 copy has no kernel of its own.
    let _ = dev;
});

test_device!(random_fill_normal_matches_philox, |dev| {
    // 10 001 values (a tail block of 1) of two streams: the GPU's f32 Box-Muller against the CPU's f64 on
    // the same Philox words (logf / sincospif within 2 ulp: 1e-6 of the largest value; bf16: one rounding).
    for (stream, std) in [(0u64, 1.0f32), (7, 0.02)] {
        let got = dev.fill_normal(10_001, 1234, stream, std);
        let want: Vec<f32> =
            retro::philox::normals(1234, stream, 10_001, std as f64).iter().map(|&x| x as f32).collect();
        assert_close(&format!("fill_normal stream {stream}"), dev, &got, &want, 0.0, BF16_U);
        let mean = got.iter().map(|&x| x as f64).sum::<f64>() / got.len() as f64;
        assert!(mean.abs() < 0.05 * std as f64, "mean {mean} of N(0, {std}^2) on {}", dev.name());
    }
});

test_device!(dropout_masks_are_bitwise_the_cpus, |dev| {
    // The same elements dropped on every device (an integer compare on the same Philox words), and the kept
    // ones scaled by the same f32 factor then rounded once: equal after rounding the CPU's to the element type.
    let mut rng = Rng::new(23);
    let x = rand_bf16(&mut rng, 10_001, 1.0);
    for (stream, p) in [(0u64, 0.1), (5, 0.5)] {
        let got = dev.dropout(&x, 77, stream, p);
        let want = Dev::Cpu.dropout(&x, 77, stream, p);
        let want = if matches!(dev, Dev::Cpu) || is_gpu_f32(dev) { want } else { common::device::round_bf16(&want) };
        let same_zeros = got.iter().zip(&want).all(|(a, b)| (*a == 0.0) == (*b == 0.0));
        report_check(&format!("dropout mask p={p}"), dev, if same_zeros { 0.0 } else { 1.0 }, 0.0);
        assert!(same_zeros, "{}: dropout masks differ (p {p}, stream {stream})", dev.name());
        assert_close(&format!("dropout values p={p}"), dev, &got, &want, 0.0, 0.0);
        let kept = got.iter().filter(|v| **v != 0.0).count() as f64 / x.len() as f64;
        assert!((kept - (1.0 - p)).abs() < 0.02, "kept {kept} at p {p}");
    }
});

// Attention on the fused projection buffers at head dims 64 and 128: self-attention reading Q, K, V
// out of one `[rows, 3w]` QKV buffer and writing dQKV the same way; cross-attention (the CCA's shape) with
// Q `[rows, w]` and a fused `[rows, 2w]` KV buffer. The reference is the f64 CPU attention on the same
// packed layouts.
test_device!(attention_on_fused_qkv_and_kv_buffers, |dev| {
    let mut rng = Rng::new(22);
    for head_dim in [64, 128] {
        for cross in [false, true] {
            let s = if cross {
                Dims { batch: 2, heads: 2, sq: 64, sk: 160, head_dim, causal: false }
            } else {
                Dims { batch: 2, heads: 2, sq: 96, sk: 96, head_dim, causal: true }
            };
            let w = s.width();
            let (x, kv) = if cross {
                (rand_bf16(&mut rng, s.batch * s.sq * w, 1.0), Some(rand_bf16(&mut rng, s.batch * s.sk * 2 * w, 1.0)))
            } else {
                (rand_bf16(&mut rng, s.batch * s.sq * 3 * w, 1.0), None)
            };
            let dout = rand_bf16(&mut rng, s.batch * s.sq * w, 1.0);
            let (o, grads) = dev.attention_packed(s, &x, kv.as_deref(), &dout);
            let (x64, kv64, dout64) = (f64v(&x), kv.as_deref().map(f64v), f64v(&dout));
            let (layout, k64) = match &kv64 {
                None => (cpu::attention::Layout::packed_qkv(w), &x64),
                Some(kv) => (cpu::attention::Layout::packed_kv(w), kv),
            };
            let (ro, probs) = cpu::attention::forward(&x64, k64, k64, layout, None, None, None, s);
            let mut dx = vec![0f64; x.len()];
            let mut dkv = vec![0f64; kv.as_ref().map_or(0, Vec::len)];
            let dxp = cpu::SendPtr(dx.as_mut_ptr());
            let dkvp = if dkv.is_empty() { dxp } else { cpu::SendPtr(dkv.as_mut_ptr()) };
            let targets = cpu::attention::GradTargets { dq: dxp, dk: dkvp, dv: dkvp, dbias: None };
            // SAFETY: dx (and dkv) have the packed buffers' sizes; the layout keeps the column blocks apart.
            unsafe { cpu::attention::backward(&dout64, &x64, k64, k64, &probs, layout, None, s, targets) };
            let what = format!("{} hd {head_dim}", if cross { "q + fused kv" } else { "fused qkv" });
            assert_close(&format!("attention o, {what}"), dev, &o, &f32v(&ro), 1e-5, 5.0 * BF16_U);
            assert_close(&format!("attention dq(kv), {what}"), dev, &grads[0], &f32v(&dx), 1e-5, 8.0 * BF16_U);
            if cross {
                assert_close(&format!("attention dkv, {what}"), dev, &grads[1], &f32v(&dkv), 1e-5, 8.0 * BF16_U);
            }
        }
    }
});

// cuFuncSetAttribute (attention's dynamic shared memory) acts on the calling thread's current context: a
// launch from a thread that never touched the GPU must work (the loader and the trainer use threads).
test_device!(attention_launches_from_a_fresh_thread, |dev| {
    #[cfg(not(no_cuda_kernels))]
    if let Dev::Cuda(gpu) = dev {
        use retro::backend::cuda::attention::{forward, Masks, View};
        let gpu = gpu.clone();
        let s = Dims { batch: 1, heads: 2, sq: 64, sk: 64, head_dim: 128, causal: true };
        let o = std::thread::spawn(move || {
            let x = gpu.zeros::<half::bf16>(s.batch * s.sq * s.width()).unwrap();
            let c = || View::contiguous(&x, s.width());
            let (o, _) = forward(&gpu, &s, c(), c(), c(), &Masks::NONE).unwrap();
            gpu.download(&o).unwrap()
        })
        .join()
        .expect("attention from a new thread");
        // Zero inputs: uniform probabilities over zero values.
        assert!(o.iter().all(|v| v.to_f32() == 0.0));
        return;
    }
    let _ = dev;
});

// kernels/residual.cu's scale through the real ops: by a constant (`ops::scale_tensor`, the CCA gate),
// over a length that is not a multiple of 8 (it works element by element), and by a device scalar (the
// cross-entropy backward scales its gradient by the incoming one, 2 here, without reading it on the host).
test_device!(residual_scale, |dev| {
    use retro::autograd::Tape;
    let mut rng = Rng::new(5);
    let x = rand_bf16(&mut rng, 1003, 1.0);
    let got = common::device::read(&retro::ops::scale_tensor(&dev.tensor(&x, &[1003]), 0.37).unwrap());
    let want: Vec<f32> = x.iter().map(|&v| (v as f64 * 0.37) as f32).collect();
    assert_close("scale by a constant", dev, &got, &want, 1e-6, BF16_U);

    let (rows, classes) = (6, 40);
    let logits = rand_bf16(&mut rng, rows * classes, 2.0);
    let labels = retro::tensor::Tensor::from_vec((0..rows as i64).map(|i| i * 5).collect::<Vec<_>>(), &[rows]).unwrap();
    let mut tape = Tape::new();
    let z = tape.leaf(dev.tensor(&logits, &[rows, classes]));
    let loss = retro::ops::cross_entropy(&mut tape, &z, &labels).unwrap();
    let seed = retro::tensor::Tensor::full(&[], 2.0, loss.dtype()).to(loss.value().device()).unwrap();
    let got = common::device::read(tape.backward_with(&loss, seed).unwrap().get(&z).unwrap());
    let ids: Vec<usize> = (0..rows).map(|i| i * 5).collect();
    let (_, lse) = cpu::cross_entropy::forward(&f64v(&logits), &ids, classes);
    let want = cpu::cross_entropy::backward(&f64v(&logits), &ids, &lse, classes, 2.0);
    assert_close("scale by a device scalar (cross-entropy backward)", dev, &got, &f32v(&want), 1e-5, 2.0 * BF16_U);
});
