//! Every op of src/ops through the real dispatch: one test body per op runs on each device (the CPU in f32,
//! the GPU in bf16 and in f32) with its inputs as tensors there, forward and backward on the tape, and is
//! compared with the same op on the CPU in f64 (inputs rounded to bf16 first, so every copy sees the same
//! numbers). A failure names the op, which tests/device_model.rs (the whole model) cannot.
//!
//! bf16 tolerances, with u = 2^-8 (tests/cuda_kernels.rs derives them): a result computed in f32 and
//! rounded once, 2u; one rounded intermediate on the way (GELU's input gradient, LayerNorm's, a GEMM's
//! bf16 operand in the backward), 4u. f32 copies: 1e-5.

mod common;
use common::device::{rand_bf16, read, report_check, Dev, BF16_U};
use retro::autograd::{Tape, Var};
use retro::ops;
use retro::rng::Rng;
use retro::tensor::{DType, Tensor};

/// How an input lives on the device: an activation (bf16 on the `cuda` copy) or an f32 master
/// (LayerNorm's weight and bias).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Act,
    Master,
}

struct Input {
    values: Vec<f32>,
    shape: Vec<usize>,
    kind: Kind,
}

fn input(rng: &mut Rng, shape: &[usize], scale: f64, kind: Kind) -> Input {
    Input { values: rand_bf16(rng, shape.iter().product(), scale), shape: shape.to_vec(), kind }
}

type Op<'a> = dyn Fn(&mut Tape, &[Var]) -> retro::Result<Var> + 'a;

/// `op` on `dev` and on the CPU in f64, with the same inputs and output gradient: forward and every input
/// gradient within `bf16_tol` on the `cuda` copy (1e-5 elsewhere). `tape` makes the tape (training mode
/// for dropout: the same seed on both sides).
fn check(dev: &Dev, name: &str, inputs: &[Input], tape: fn() -> Tape, op: &Op<'_>, bf16_tol: f32) {
    let (device, act) = dev.placement();
    let tol = if act == DType::BF16 { bf16_tol } else { 1e-5 };
    let run = |device, act: DType| {
        let mut t = tape();
        let leaves: Vec<Var> = inputs
            .iter()
            .map(|x| {
                let dtype = if act == DType::F64 || x.kind == Kind::Act { act } else { DType::F32 };
                let v = Tensor::from_vec(x.values.clone(), &x.shape).unwrap().to_dtype(dtype).unwrap();
                t.leaf(v.to(device).unwrap())
            })
            .collect();
        let out = op(&mut t, &leaves).unwrap();
        let mut rng = Rng::new(99);
        let dout = rand_bf16(&mut rng, out.value().numel().max(1), 1.0);
        let seed_dtype = out.dtype();
        let seed = Tensor::from_vec(dout, out.shape()).unwrap().to_dtype(seed_dtype).unwrap().to(device).unwrap();
        let value = read(out.value());
        let grads = t.backward_with(&out, seed).unwrap();
        let grads: Vec<Vec<f32>> = leaves.iter().map(|l| read(grads.get(l).unwrap())).collect();
        (value, grads)
    };
    let (want, want_grads) = run(retro::tensor::Device::Cpu, DType::F64);
    let (got, got_grads) = run(device, act);
    let mut results = vec![(format!("{name} forward"), &got, &want)];
    for (i, (g, w)) in got_grads.iter().zip(&want_grads).enumerate() {
        results.push((format!("{name} gradient of input {i}"), g, w));
    }
    for (what, got, want) in results {
        let err = common::device::rel_err(got, want, 1e-6);
        report_check(&what, dev, err as f64, tol as f64);
        assert!(err <= tol, "{what} on {}: relative error {err:.3e} > {tol:.1e}", dev.name());
    }
}

fn recording() -> Tape {
    Tape::new()
}

test_device!(linear, |dev| {
    let mut rng = Rng::new(1);
    let inputs = [
        input(&mut rng, &[2, 5, 64], 1.0, Kind::Act),
        input(&mut rng, &[96, 64], 0.1, Kind::Act),
        input(&mut rng, &[96], 0.1, Kind::Act),
    ];
    check(dev, "linear", &inputs, recording, &|t, v| ops::linear(t, &v[0], &v[1], Some(&v[2])), 4.0 * BF16_U);
});

test_device!(layer_norm, |dev| {
    let mut rng = Rng::new(2);
    let inputs = [
        input(&mut rng, &[3, 7, 64], 2.0, Kind::Act),
        input(&mut rng, &[64], 1.0, Kind::Master),
        input(&mut rng, &[64], 1.0, Kind::Master),
    ];
    check(dev, "layer_norm", &inputs, recording, &|t, v| ops::layer_norm(t, &v[0], &v[1], &v[2], 1e-5), 4.0 * BF16_U);
});

test_device!(add_layer_norm, |dev| {
    let mut rng = Rng::new(12);
    let inputs = [
        input(&mut rng, &[3, 5, 64], 1.0, Kind::Act),
        input(&mut rng, &[3, 5, 64], 1.0, Kind::Act),
        input(&mut rng, &[64], 1.0, Kind::Master),
        input(&mut rng, &[64], 1.0, Kind::Master),
    ];
    // Both outputs reach the loss: h (the residual stream) and LN(h), as in a layer.
    let op: &Op = &|t, v| {
        let (h, y) = ops::add_layer_norm(t, &v[0], &v[1], &v[2], &v[3], 1e-5)?;
        let h = ops::scale(t, &h, 0.5)?;
        ops::add(t, &h, &y)
    };
    // LayerNorm of the bf16-rounded residual (tests/cuda_kernels.rs): 4u.
    check(dev, "add_layer_norm", &inputs, recording, op, 4.0 * BF16_U);
});

test_device!(gelu, |dev| {
    let mut rng = Rng::new(3);
    let inputs = [input(&mut rng, &[4, 64], 2.0, Kind::Act)];
    check(dev, "gelu", &inputs, recording, &|t, v| ops::gelu(t, &v[0]), 4.0 * BF16_U);
});

test_device!(add_and_scale, |dev| {
    let mut rng = Rng::new(4);
    let inputs = [input(&mut rng, &[3, 40], 1.0, Kind::Act), input(&mut rng, &[3, 40], 1.0, Kind::Act)];
    let op: &Op = &|t, v| {
        let s = ops::add(t, &v[0], &v[1])?;
        ops::scale(t, &s, 0.37)
    };
    check(dev, "add + scale", &inputs, recording, op, 4.0 * BF16_U);
});

test_device!(dropout, |dev| {
    let mut rng = Rng::new(5);
    let inputs = [input(&mut rng, &[5, 48], 1.0, Kind::Act)];
    check(dev, "dropout", &inputs, || Tape::training(0.3, 17), &|t, v| ops::dropout(t, &v[0]), 2.0 * BF16_U);
});

test_device!(word_position_embedding, |dev| {
    let mut rng = Rng::new(6);
    let inputs = [input(&mut rng, &[50, 64], 1.0, Kind::Act), input(&mut rng, &[32, 64], 1.0, Kind::Act)];
    let ids = Tensor::from_vec((0..32).map(|i| (i * 7 % 50) as i64).collect::<Vec<_>>(), &[2, 16]).unwrap();
    let op: &Op = &|t, v| ops::word_position_embedding(t, &ids, &v[0], &v[1], 3);
    check(dev, "word_position_embedding", &inputs, recording, op, 2.0 * BF16_U);
});

test_device!(cross_entropy, |dev| {
    let mut rng = Rng::new(7);
    let inputs = [input(&mut rng, &[2, 3, 40], 2.0, Kind::Act)];
    let labels = Tensor::from_vec(vec![0i64, 5, 39, 12, 12, 7], &[2, 3]).unwrap();
    check(dev, "cross_entropy", &inputs, recording, &|t, v| ops::cross_entropy(t, &v[0], &labels), 4.0 * BF16_U);
});

test_device!(layout, |dev| {
    let mut rng = Rng::new(8);
    let inputs = [input(&mut rng, &[2, 10, 16], 1.0, Kind::Act), input(&mut rng, &[2, 4, 16], 1.0, Kind::Act)];
    let op: &Op = &|t, v| {
        // The CCA's shift (rows of 16: the one-pass kernel), a narrow of columns (a strided copy), a pad
        // and a concatenation.
        let shifted = ops::shift_rows(t, &v[0], 1, 3, 8)?;
        let cols = ops::narrow(t, &shifted, 2, 4, 8)?;
        let padded = ops::pad(t, &cols, 2, 3, 5)?;
        let joined = ops::concat(t, &[&padded, &v[1]], 1)?;
        ops::reshape(t, &joined, &[2, 12 * 16])
    };
    check(dev, "shift_rows / narrow / pad / concat / reshape", &inputs, recording, op, 0.0);
});

test_device!(attention_on_fused_projections, |dev| {
    let mut rng = Rng::new(9);
    let inputs = [input(&mut rng, &[2, 70, 3 * 128], 1.0, Kind::Act)];
    let op: &Op = &|t, v| ops::attention_qkv(t, &v[0], 2, &ops::AttnMask::Causal, None);
    // P and dS rounded to bf16 for the tensor cores: 8u (tests/cuda_kernels.rs).
    check(dev, "attention_qkv", &inputs, recording, op, 8.0 * BF16_U);
});

/// A tensor-parallel group of this one process: MPI's identity for CPU tensors and, on a GPU copy, a
/// one-rank NCCL communicator, so each op's GPU path (its kernels and NCCL calls) runs as under
/// `--tensor-model-parallel-size`. (Several ranks need several GPUs; tests/tensor_parallel.rs checks
/// the ops' semantics over two ranks on the CPU.)
fn one_rank_group(dev: &Dev) -> retro::dist::TensorParallel {
    let tp = retro::dist::TensorParallel::single();
    match dev.placement().0 {
        retro::tensor::Device::Cpu => tp,
        #[cfg(not(no_cuda_kernels))]
        retro::tensor::Device::Cuda(ordinal) => {
            tp.on_gpu(retro::backend::cuda::Gpu::shared(ordinal).unwrap()).expect("a one-rank NCCL communicator")
        }
        #[cfg(no_cuda_kernels)]
        retro::tensor::Device::Cuda(_) => unreachable!(),
    }
}

// A column-parallel linear's input copy and a row-parallel one's sum, with the bias added after it.
test_device!(tensor_parallel_copy_reduce_and_bias, |dev| {
    let mut rng = Rng::new(10);
    let tp = one_rank_group(dev);
    let inputs = [input(&mut rng, &[2, 3, 48], 1.0, Kind::Act), input(&mut rng, &[48], 1.0, Kind::Act)];
    let op: &Op = &|t, v| {
        let x = ops::copy_to_tensor_parallel(t, &v[0], &tp)?;
        let y = ops::reduce_from_tensor_parallel(t, &x, &tp)?;
        ops::add_bias(t, &y, &v[1])
    };
    // One rounding of an f32 sum (the bias add); the column sum of the bias gradient in f32.
    check(dev, "copy_to / reduce_from_tensor_parallel + add_bias", &inputs, recording, op, 2.0 * BF16_U);
});

// A rank's rows 5..45 of a 60-word vocabulary: the ids outside them get zero rows and no gradient; then
// the positions, a plain lookup (the vocab-parallel model's input).
test_device!(vocab_parallel_embedding_and_positions, |dev| {
    let mut rng = Rng::new(11);
    let tp = one_rank_group(dev);
    let inputs = [input(&mut rng, &[40, 64], 1.0, Kind::Act), input(&mut rng, &[16, 64], 1.0, Kind::Act)];
    let ids = Tensor::from_vec((0..32).map(|i| (i * 7 % 60) as i64).collect::<Vec<_>>(), &[2, 16]).unwrap();
    let positions = Tensor::from_vec((0..32).map(|i| (i % 16) as i64).collect::<Vec<_>>(), &[2, 16]).unwrap();
    let op: &Op = &|t, v| {
        let words = ops::vocab_parallel_embedding(t, &ids, &v[0], 5, 60)?;
        let words = ops::reduce_from_tensor_parallel(t, &words, &tp)?;
        let at = ops::embedding(t, &positions, &v[1])?;
        ops::add(t, &words, &at)
    };
    check(dev, "vocab_parallel_embedding + embedding", &inputs, recording, op, 2.0 * BF16_U);
});

// The vocab-parallel cross-entropy of a slice of 40 classes starting at class 8: labels 8..40 are its
// classes 0..32, the labels below 8 "another rank's" (with one rank, their logit counts as 0).
// Then the slice at 0, which holds every label: the plain cross-entropy.
test_device!(vocab_parallel_cross_entropy, |dev| {
    let mut rng = Rng::new(12);
    let tp = one_rank_group(dev);
    let inputs = [input(&mut rng, &[2, 3, 40], 2.0, Kind::Act)];
    let labels = Tensor::from_vec(vec![8i64, 3, 39, 20, 0, 9], &[2, 3]).unwrap();
    let op: &Op = &|t, v| ops::vocab_parallel_cross_entropy(t, &v[0], &labels, 8, &tp);
    check(dev, "vocab_parallel_cross_entropy (two labels elsewhere)", &inputs, recording, op, 4.0 * BF16_U);
    let labels = Tensor::from_vec(vec![0i64, 5, 39, 12, 12, 7], &[2, 3]).unwrap();
    let op: &Op = &|t, v| ops::vocab_parallel_cross_entropy(t, &v[0], &labels, 0, &tp);
    check(dev, "vocab_parallel_cross_entropy (every label here)", &inputs, recording, op, 4.0 * BF16_U);
});

#[test]
fn an_op_on_tensors_of_two_devices_or_dtypes_is_refused_naming_the_shapes() {
    let mut t = Tape::new();
    let a = t.leaf(Tensor::zeros(&[2, 8], DType::F32));
    let b = t.leaf(Tensor::zeros(&[2, 8], DType::F64));
    let err = ops::add(&mut t, &a, &b).unwrap_err().to_string();
    assert!(err.contains("add") && err.contains("[2, 8]"), "{err}");
    let host = Tensor::zeros(&[2, 8], DType::F32);
    assert_eq!(host.to(retro::tensor::Device::Cpu).unwrap(), host);
    let f64_on_gpu = Tensor::zeros(&[2], DType::F64).to(retro::tensor::Device::Cuda(0));
    assert!(f64_on_gpu.is_err());
}
