//! CPU op throughput at small shapes. Linear is reported next to matrixmultiply's raw sgemm on the
//! same GEMM, so its overhead shows as a ratio (criterion's "elements/s" here are FLOP/s).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use retro::autograd::{Tape, Var};
use retro::ops::{self, AttnMask};
use retro::rng::Rng;
use retro::tensor::Tensor;
use std::hint::black_box;
use std::time::Duration;

fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>(), shape).unwrap()
}

fn linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear_f32");
    let mut rng = Rng::new(0);
    for &(n, din, dout) in &[(512usize, 512usize, 512usize), (1024, 256, 1024)] {
        let flops = 2 * n * din * dout;
        g.throughput(Throughput::Elements(flops as u64));
        let (x, w) = (randn(&mut rng, &[n, din]), randn(&mut rng, &[dout, din]));
        let id = format!("{n}x{din}x{dout}");
        g.bench_with_input(BenchmarkId::new("matrixmultiply_sgemm", &id), &(), |b, _| {
            let (xs, ws) = (x.data::<f32>().unwrap(), w.data::<f32>().unwrap());
            let mut y = vec![0f32; n * dout];
            b.iter(|| unsafe {
                matrixmultiply::sgemm(
                    n,
                    din,
                    dout,
                    1.0,
                    xs.as_ptr(),
                    din as isize,
                    1,
                    ws.as_ptr(),
                    1,
                    din as isize,
                    0.0,
                    y.as_mut_ptr(),
                    dout as isize,
                    1,
                );
                black_box(&y);
            })
        });
        let (xv, wv) = (Var::constant(x.clone()), Var::constant(w.clone()));
        g.bench_with_input(BenchmarkId::new("ops_linear_no_bias", &id), &(), |b, _| {
            b.iter(|| black_box(ops::linear(&mut Tape::inference(), &xv, &wv, None).unwrap()))
        });
        let bv = Var::constant(randn(&mut rng, &[dout]));
        g.bench_with_input(BenchmarkId::new("ops_linear_bias", &id), &(), |b, _| {
            b.iter(|| black_box(ops::linear(&mut Tape::inference(), &xv, &wv, Some(&bv)).unwrap()))
        });
    }
    g.finish();
}

fn layernorm(c: &mut Criterion) {
    let mut g = c.benchmark_group("layernorm_f32");
    let mut rng = Rng::new(1);
    let (n, d) = (2048, 256);
    g.throughput(Throughput::Bytes((2 * n * d * 4) as u64));
    let x = randn(&mut rng, &[n, d]);
    let (w, b) = (Tensor::full(&[d], 1.0, retro::tensor::DType::F32), Tensor::zeros(&[d], retro::tensor::DType::F32));
    g.bench_function("forward_2048x256", |bench| {
        let (xv, wv, bv) = (Var::constant(x.clone()), Var::constant(w.clone()), Var::constant(b.clone()));
        bench.iter(|| black_box(ops::layer_norm(&mut Tape::inference(), &xv, &wv, &bv, 1e-5).unwrap()))
    });
    g.bench_function("forward_backward_2048x256", |bench| {
        bench.iter(|| {
            let mut tape = Tape::new();
            let (xv, wv, bv) = (tape.leaf(x.clone()), tape.leaf(w.clone()), tape.leaf(b.clone()));
            let y = ops::layer_norm(&mut tape, &xv, &wv, &bv, 1e-5).unwrap();
            let seed = y.value().clone();
            black_box(tape.backward_with(&y, seed).unwrap())
        })
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_f32");
    let mut rng = Rng::new(2);
    let (b, s, h, dh) = (2usize, 256usize, 4usize, 64usize);
    // Full (not halved) causal FLOPs: 4·b·h·s²·dh forward.
    g.throughput(Throughput::Elements((4 * b * h * s * s * dh) as u64));
    let (q, k, v) =
        (randn(&mut rng, &[b, s, h * dh]), randn(&mut rng, &[b, s, h * dh]), randn(&mut rng, &[b, s, h * dh]));
    g.bench_function("causal_forward_b2_s256_h4_d64", |bench| {
        let (qv, kv, vv) = (Var::constant(q.clone()), Var::constant(k.clone()), Var::constant(v.clone()));
        bench.iter(|| black_box(ops::attention(&mut Tape::inference(), &qv, &kv, &vv, h, &AttnMask::Causal).unwrap()))
    });
    g.bench_function("causal_forward_backward_b2_s256_h4_d64", |bench| {
        bench.iter(|| {
            let mut tape = Tape::new();
            let (qv, kv, vv) = (tape.leaf(q.clone()), tape.leaf(k.clone()), tape.leaf(v.clone()));
            let y = ops::attention(&mut tape, &qv, &kv, &vv, h, &AttnMask::Causal).unwrap();
            let seed = y.value().clone();
            black_box(tape.backward_with(&y, seed).unwrap())
        })
    });
    g.finish();
}

fn gelu(c: &mut Criterion) {
    let mut g = c.benchmark_group("gelu_f32");
    let mut rng = Rng::new(3);
    let n = 512 * 1024;
    g.throughput(Throughput::Elements(n as u64));
    let x = Var::constant(randn(&mut rng, &[n]));
    g.bench_function("forward_512k", |bench| bench.iter(|| black_box(ops::gelu(&mut Tape::inference(), &x).unwrap())));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = linear, layernorm, attention, gelu
}
criterion_main!(benches);
