//! Every GPU kernel family against the f64 CPU reference, through one test body per op that runs on
//! both backends (`test_device!`): the `cpu` copy checks the f32 CPU backend, the `cuda` copy the
//! kernels (bf16 activations, f32 statistics and parameter gradients), each with its stated tolerance.
//! Without a GPU the `cuda` copies print why they skip; `scripts/gpu-check` runs them with
//! RETRO_REQUIRE_GPU=1 so that a skip there is a failure.

mod common;

use common::device::{assert_close, rand_bf16, Dev};
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
        assert_close(&format!("layernorm y d={d}"), dev, &y, &f32v(&ry), 1e-5, 1e-2);
        assert_close("layernorm mean", dev, &mean, &f32v(&rs.mean), 1e-5, 1e-5);
        assert_close("layernorm rstd", dev, &rstd, &f32v(&rs.rstd), 1e-5, 1e-4);
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
    assert_close("residual h", dev, &h, &f32v(&rh), 1e-6, 4e-3);
    assert_close("residual layernorm y", dev, &y, &f32v(&ry), 1e-5, 1.5e-2);
});

test_device!(layernorm_backward, |dev| {
    let mut rng = Rng::new(3);
    for d in LN_WIDTHS {
        let rows = 300;
        let x = rand_bf16(&mut rng, rows * d, 1.0);
        let dy = rand_bf16(&mut rng, rows * d, 1.0);
        let g: Vec<f32> = rand_bf16(&mut rng, d, 0.1).iter().map(|v| 1.0 + v).collect();
        let b = rand_bf16(&mut rng, d, 0.1);
        let (dx, dg, db) = dev.layernorm_backward(&dy, &x, &g, &b, d, 1e-5);
        let (_, s) = cpu::layernorm::forward(&f64v(&x), &f64v(&g), &f64v(&b), d, 1e-5);
        let (rdx, rdg, rdb) = cpu::layernorm::backward(&f64v(&dy), &f64v(&x), &f64v(&g), &s, d);
        assert_close(&format!("layernorm dx d={d}"), dev, &dx, &f32v(&rdx), 1e-5, 1e-2);
        assert_close("layernorm dgamma", dev, &dg, &f32v(&rdg), 1e-5, 1e-4);
        assert_close("layernorm dbeta", dev, &db, &f32v(&rdb), 1e-5, 1e-5);
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
    assert_close("bias-gelu y", dev, &y, &f32v(&cpu::elementwise::gelu_forward(&u)), 1e-6, 8e-3);
    let (du, dbias) = dev.bias_gelu_backward(&dy, &x, &bias, d);
    let rdu = cpu::elementwise::gelu_backward(&u, &f64v(&dy));
    assert_close("bias-gelu du", dev, &du, &f32v(&rdu), 1e-6, 8e-3);
    // The GPU sums the bf16-rounded du; the reference sums exact du: compare at bf16 precision.
    assert_close("bias-gelu dbias", dev, &dbias, &f32v(&cpu::linear::backward_bias(&rdu, rows, d)), 1e-5, 1e-2);
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
    assert_close("embedding out", dev, &out, &f32v(&reference), 1e-7, 4e-3);
    let dout = rand_bf16(&mut rng, count * d, 1.0);
    let (dword, dpos) = dev.embedding_backward(&tokens, &dout, vocab, period, d, period);
    assert_close(
        "embedding dword",
        dev,
        &dword,
        &f32v(&cpu::embedding::backward(&ids, &f64v(&dout), vocab, d)),
        1e-6,
        1e-6,
    );
    assert_close(
        "embedding dposition",
        dev,
        &dpos,
        &f32v(&cpu::embedding::backward(&pos, &f64v(&dout), period, d)),
        1e-6,
        1e-6,
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
        assert_close(&format!("cross-entropy losses ({classes} classes)"), dev, &losses, &f32v(&rl), 1e-5, 1e-4);
        assert_close("cross-entropy dlogits", dev, &grads, &f32v(&rg), 1e-5, 1e-2);
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
        assert_close(&format!("linear y (gelu {gelu})"), dev, &y, &f32v(&r), 1e-5, 1e-2);
    }
    let dy = rand_bf16(&mut rng, rows * dout, 1.0);
    let (dx, dw, db) = dev.linear_backward(&dy, &x, &w, rows, din, dout);
    let (dy64, x64, w64) = (f64v(&dy), f64v(&x), f64v(&w));
    assert_close("linear dx", dev, &dx, &f32v(&cpu::linear::backward_input(&dy64, &w64, rows, din, dout)), 1e-5, 1e-2);
    assert_close("linear dw", dev, &dw, &f32v(&cpu::linear::backward_weight(&dy64, &x64, rows, din, dout)), 1e-5, 1e-5);
    assert_close("linear db", dev, &db, &f32v(&cpu::linear::backward_bias(&dy64, rows, dout)), 1e-5, 1e-5);
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
        let (q, k, v, _) = attention_inputs(&mut rng, &a);
        let o = dev.attention(&q, &k, &v, a);
        let layout = cpu::attention::Layout::separate(a.heads * a.head_dim);
        let (r, _) = cpu::attention::forward(&f64v(&q), &f64v(&k), &f64v(&v), layout, None, None, a);
        assert_close(&format!("attention o {a:?}"), dev, &o, &f32v(&r), 1e-5, 2e-2);
    }
});

test_device!(attention_backward, |dev| {
    let mut rng = Rng::new(9);
    for a in ATTENTION_CASES {
        let (q, k, v, dout) = attention_inputs(&mut rng, &a);
        let (dq, dk, dv) = dev.attention_backward(&q, &k, &v, &dout, a);
        let (q64, k64, v64) = (f64v(&q), f64v(&k), f64v(&v));
        let layout = cpu::attention::Layout::separate(a.heads * a.head_dim);
        let (_, probs) = cpu::attention::forward(&q64, &k64, &v64, layout, None, None, a);
        let (mut rq, mut rk, mut rv) = (vec![0f64; q.len()], vec![0f64; k.len()], vec![0f64; v.len()]);
        let targets = cpu::attention::GradTargets {
            dq: cpu::SendPtr(rq.as_mut_ptr()),
            dk: cpu::SendPtr(rk.as_mut_ptr()),
            dv: cpu::SendPtr(rv.as_mut_ptr()),
        };
        // SAFETY: three separate buffers of the operands' sizes.
        unsafe { cpu::attention::backward(&f64v(&dout), &q64, &k64, &v64, &probs, layout, None, a, targets) };
        assert_close(&format!("attention dq {a:?}"), dev, &dq, &f32v(&rq), 1e-5, 3e-2);
        assert_close("attention dk", dev, &dk, &f32v(&rk), 1e-5, 3e-2);
        assert_close("attention dv", dev, &dv, &f32v(&rv), 1e-5, 3e-2);
    }
});

test_device!(attention_refuses_unsupported_shapes_cleanly, |dev| {
    #[cfg(not(no_cuda_kernels))]
    if let Dev::Cuda(gpu) = dev {
        use retro::backend::cuda::attention::{forward, View};
        let buf = gpu.zeros::<half::bf16>(2 * 16 * 80).unwrap();
        let s = Dims { batch: 2, heads: 1, sq: 16, sk: 16, head_dim: 80, causal: false };
        let err = forward(gpu, &s, View::contiguous(&buf, 80), View::contiguous(&buf, 80), View::contiguous(&buf, 80))
            .err()
            .unwrap();
        assert!(err.to_string().contains("head dims 64 and 128"), "{err}");
        let s = Dims { head_dim: 64, ..s };
        let short = gpu.zeros::<half::bf16>(10).unwrap();
        let err =
            forward(gpu, &s, View::contiguous(&short, 64), View::contiguous(&buf, 64), View::contiguous(&buf, 64))
                .err()
                .unwrap();
        assert!(err.to_string().contains("operand q"), "{err}");
        return;
    }
    let _ = dev;
});

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
        assert_eq!(after.driver_allocations, before, "a repeated step must not call cuMemAlloc: {after:?}");
        assert!(after.peak_allocated >= (3 << 22) + (5 << 22), "{after:?}");
        return;
    }
    let _ = dev;
});
