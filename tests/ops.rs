//! Every op: backward against central finite differences in f64, forward against a naive loop, f32
//! against f64, and the errors it gives for bad shapes.

mod common;

use common::{gradcheck, max_rel_err, randn, to_f32};
use retro::autograd::{Tape, Var};
use retro::backend::cpu::attention::Dims;
use retro::ops::{self, AttnMask};
use retro::rng::Rng;
use retro::tensor::Tensor;
use std::sync::Arc;

const GRAD_TOL: f64 = 1e-6;
const F32_TOL: f64 = 1e-4;

fn v64(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec()
}

/// Runs `f` in f64 and in f32 on the same inputs (float inputs converted) and compares.
fn f32_matches_f64(inputs: &[Tensor], f: impl Fn(&mut Tape, &[Var]) -> retro::Result<Var>) -> f64 {
    let run = |xs: Vec<Tensor>| {
        let vars: Vec<Var> = xs.into_iter().map(Var::constant).collect();
        f(&mut Tape::inference(), &vars).unwrap().value().to_f64_vec()
    };
    let a = run(inputs.to_vec());
    let b = run(inputs.iter().map(|t| if t.dtype().is_float() { to_f32(t) } else { t.clone() }).collect());
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    max_rel_err(&a, &b, 1e-2 * scale.max(1e-6))
}

fn forward(inputs: &[Tensor], f: impl Fn(&mut Tape, &[Var]) -> retro::Result<Var>) -> Vec<f64> {
    let vars: Vec<Var> = inputs.iter().cloned().map(Var::constant).collect();
    f(&mut Tape::inference(), &vars).unwrap().value().to_f64_vec()
}

/// The error `f` fails with on `inputs`.
fn forward_err(inputs: &[Tensor], f: impl Fn(&mut Tape, &[Var]) -> retro::Result<Var>) -> String {
    let vars: Vec<Var> = inputs.iter().cloned().map(Var::constant).collect();
    f(&mut Tape::inference(), &vars).unwrap_err().to_string()
}

// ---------------------------------------------------------------- linear

fn linear_op(t: &mut Tape, v: &[Var]) -> retro::Result<Var> {
    ops::linear(t, &v[0], &v[1], Some(&v[2]))
}

#[test]
fn linear_matches_naive_loop_finite_differences_and_f32() {
    let mut rng = Rng::new(1);
    let (x, w, b) = (randn(&mut rng, &[3, 5, 7], 1.0), randn(&mut rng, &[11, 7], 0.5), randn(&mut rng, &[11], 0.5));
    let got = forward(&[x.clone(), w.clone(), b.clone()], linear_op);
    let (xv, wv, bv) = (v64(&x), v64(&w), v64(&b));
    let mut want = vec![0.0; 15 * 11];
    for n in 0..15 {
        for o in 0..11 {
            want[n * 11 + o] = bv[o] + (0..7).map(|i| xv[n * 7 + i] * wv[o * 7 + i]).sum::<f64>();
        }
    }
    assert!(max_rel_err(&got, &want, 1e-12) < 1e-12);
    let inputs = [x, w, b];
    assert!(gradcheck(&inputs, &[true, true, true], 200, linear_op) <= GRAD_TOL);
    assert!(f32_matches_f64(&inputs, linear_op) < F32_TOL);
    // Without bias.
    let no_bias = |t: &mut Tape, v: &[Var]| ops::linear(t, &v[0], &v[1], None);
    assert!(gradcheck(&inputs[..2], &[true, true], 200, no_bias) <= GRAD_TOL);
}

#[test]
fn linear_rejects_mismatched_shapes_naming_them() {
    let mut t = Tape::new();
    let x = Var::constant(Tensor::zeros(&[2, 3], retro::tensor::DType::F32));
    let w = Var::constant(Tensor::zeros(&[4, 5], retro::tensor::DType::F32));
    let err = ops::linear(&mut t, &x, &w, None).unwrap_err().to_string();
    assert!(err.contains("linear") && err.contains("[2, 3]") && err.contains("[4, 5]"), "{err}");
    let w64 = Var::constant(Tensor::zeros(&[4, 3], retro::tensor::DType::F64));
    let err = ops::linear(&mut t, &x, &w64, None).unwrap_err().to_string();
    assert!(err.contains("dtypes differ") && err.contains("f64"), "{err}");
}

// ---------------------------------------------------------------- layernorm

fn layernorm_op(t: &mut Tape, v: &[Var]) -> retro::Result<Var> {
    ops::layer_norm(t, &v[0], &v[1], &v[2], 1e-5)
}

#[test]
fn layernorm_matches_naive_loop_finite_differences_and_f32() {
    let mut rng = Rng::new(2);
    let x = randn(&mut rng, &[5, 13], 2.0);
    let w =
        Tensor::from_vec(randn(&mut rng, &[13], 0.1).to_f64_vec().iter().map(|v| 1.0 + v).collect::<Vec<_>>(), &[13])
            .unwrap();
    let b = randn(&mut rng, &[13], 0.1);
    let got = forward(&[x.clone(), w.clone(), b.clone()], layernorm_op);
    let (xv, wv, bv) = (v64(&x), v64(&w), v64(&b));
    let mut want = vec![0.0; 65];
    for r in 0..5 {
        let row = &xv[r * 13..(r + 1) * 13];
        let mean = row.iter().sum::<f64>() / 13.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 13.0;
        for j in 0..13 {
            want[r * 13 + j] = (row[j] - mean) / (var + 1e-5).sqrt() * wv[j] + bv[j];
        }
    }
    assert!(max_rel_err(&got, &want, 1e-12) < 1e-12);
    let inputs = [x, w, b];
    assert!(gradcheck(&inputs, &[true, true, true], 100, layernorm_op) <= GRAD_TOL);
    assert!(f32_matches_f64(&inputs, layernorm_op) < F32_TOL);
}

#[test]
fn layernorm_rejects_wrong_weight_shape() {
    let z = |s: &[usize]| Var::constant(Tensor::zeros(s, retro::tensor::DType::F32));
    let err = ops::layer_norm(&mut Tape::new(), &z(&[2, 4]), &z(&[5]), &z(&[4]), 1e-5).unwrap_err().to_string();
    assert!(err.contains("layer_norm") && err.contains("[2, 4]") && err.contains("[5]"), "{err}");
}

// ---------------------------------------------------------------- gelu, add

#[test]
fn gelu_matches_formula_finite_differences_and_f32() {
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, &[7, 9], 2.0);
    let got = forward(std::slice::from_ref(&x), |t, v| ops::gelu(t, &v[0]));
    // 0.5 x (1 + tanh u) written as x / (1 + e^(-2u)), which has no cancellation for negative x.
    let want: Vec<f64> = v64(&x)
        .iter()
        .map(|&v| v / (1.0 + (-2.0 * (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).exp()))
        .collect();
    let e = max_rel_err(&got, &want, 1e-300);
    assert!(e < 1e-14, "{e}");
    // The tanh form agrees wherever it is not cancelling.
    let tanh_form: Vec<f64> = v64(&x)
        .iter()
        .map(|&v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh()))
        .collect();
    assert!(max_rel_err(&got, &tanh_form, 1e-3) < 1e-12);
    assert!(gradcheck(std::slice::from_ref(&x), &[true], 100, |t, v| ops::gelu(t, &v[0])) <= GRAD_TOL);
    assert!(f32_matches_f64(&[x], |t, v| ops::gelu(t, &v[0])) < F32_TOL);
}

#[test]
fn add_matches_loop_finite_differences_and_rejects_shapes() {
    let mut rng = Rng::new(4);
    let (a, b) = (randn(&mut rng, &[3, 7], 1.0), randn(&mut rng, &[3, 7], 1.0));
    let got = forward(&[a.clone(), b.clone()], |t, v| ops::add(t, &v[0], &v[1]));
    let want: Vec<f64> = v64(&a).iter().zip(v64(&b)).map(|(x, y)| x + y).collect();
    assert_eq!(got, want);
    assert!(gradcheck(&[a.clone(), b], &[true, true], 100, |t, v| ops::add(t, &v[0], &v[1])) <= GRAD_TOL);
    let c = Var::constant(Tensor::zeros(&[7, 3], retro::tensor::DType::F64));
    let err = ops::add(&mut Tape::new(), &Var::constant(a), &c).unwrap_err().to_string();
    assert!(err.contains("add") && err.contains("[3, 7]") && err.contains("[7, 3]"), "{err}");
}

// ---------------------------------------------------------------- embedding

#[test]
fn embedding_gathers_scatters_and_checks_ids() {
    let mut rng = Rng::new(5);
    let table = randn(&mut rng, &[11, 7], 1.0);
    let ids = Tensor::from_vec(vec![3i64, 0, 10, 3, 3, 7, 0, 1, 10, 2, 5, 3, 9, 4, 6], &[3, 5]).unwrap();
    let op = |ids: Tensor| move |t: &mut Tape, v: &[Var]| ops::embedding(t, &ids, &v[0]);
    let got = forward(std::slice::from_ref(&table), op(ids.clone()));
    let tv = v64(&table);
    let want: Vec<f64> =
        ids.indices().unwrap().iter().flat_map(|&i| tv[i as usize * 7..(i as usize + 1) * 7].to_vec()).collect();
    assert_eq!(got, want);
    assert!(gradcheck(std::slice::from_ref(&table), &[true], 100, op(ids.clone())) <= GRAD_TOL);
    assert!(
        f32_matches_f64(std::slice::from_ref(&table), op(ids.to_dtype(retro::tensor::DType::I32).unwrap())) < F32_TOL
    );
    let bad = Tensor::from_vec(vec![1i64, 11], &[2]).unwrap();
    let err = ops::embedding(&mut Tape::new(), &bad, &Var::constant(table)).unwrap_err().to_string();
    assert!(err.contains("embedding") && err.contains("id 11") && err.contains("11 rows"), "{err}");
}

// ---------------------------------------------------------------- attention

/// Naive attention: explicit loops, softmax per query, optional causal and key masks.
fn naive_attention(q: &[f64], k: &[f64], v: &[f64], dims: Dims, keys: Option<&[bool]>) -> Vec<f64> {
    let Dims { batch: b, sq, sk, heads: h, head_dim: dh, causal } = dims;
    let w = h * dh;
    let mut out = vec![0.0; b * sq * w];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..sq {
                let visible: Vec<usize> =
                    (0..sk).filter(|&j| (!causal || j <= i) && keys.is_none_or(|m| m[bi * sk + j])).collect();
                if visible.is_empty() {
                    continue;
                }
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        (0..dh)
                            .map(|d| q[(bi * sq + i) * w + hi * dh + d] * k[(bi * sk + j) * w + hi * dh + d])
                            .sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dh {
                    out[(bi * sq + i) * w + hi * dh + d] =
                        visible.iter().zip(&e).map(|(&j, p)| p / z * v[(bi * sk + j) * w + hi * dh + d]).sum();
                }
            }
        }
    }
    out
}

fn check_attention(b: usize, sq: usize, sk: usize, h: usize, dh: usize, mask: AttnMask) {
    let mut rng = Rng::new(6 + sq as u64);
    let q = randn(&mut rng, &[b, sq, h * dh], 1.0);
    let k = randn(&mut rng, &[b, sk, h * dh], 1.0);
    let v = randn(&mut rng, &[b, sk, h * dh], 1.0);
    let m = mask.clone();
    let op = move |t: &mut Tape, x: &[Var]| ops::attention(t, &x[0], &x[1], &x[2], h, &m);
    let got = forward(&[q.clone(), k.clone(), v.clone()], op.clone());
    let keys = match &mask {
        AttnMask::Keys(m) => Some(m.as_ref()),
        _ => None,
    };
    let dims = Dims { batch: b, sq, sk, heads: h, head_dim: dh, causal: matches!(mask, AttnMask::Causal) };
    let want = naive_attention(&v64(&q), &v64(&k), &v64(&v), dims, keys);
    assert!(max_rel_err(&got, &want, 1e-9) < 1e-10, "forward differs from the naive loop");
    let inputs = [q, k, v];
    let err = gradcheck(&inputs, &[true, true, true], 150, op.clone());
    assert!(err <= GRAD_TOL, "gradient error {err}");
    assert!(f32_matches_f64(&inputs, op) < F32_TOL);
}

#[test]
fn causal_self_attention() {
    check_attention(2, 6, 6, 3, 4, AttnMask::Causal);
}

#[test]
fn bidirectional_self_attention() {
    check_attention(2, 5, 5, 3, 4, AttnMask::None);
}

#[test]
fn cross_attention_with_different_query_and_key_lengths() {
    check_attention(3, 5, 9, 2, 5, AttnMask::None);
    check_attention(2, 9, 3, 1, 3, AttnMask::None);
}

#[test]
fn attention_with_head_dim_64_as_the_large_presets_use() {
    check_attention(2, 5, 7, 1, 64, AttnMask::None);
    check_attention(1, 6, 6, 2, 64, AttnMask::Causal);
}

#[test]
fn cross_attention_with_key_mask_including_a_fully_masked_row() {
    // Batch row 1 sees no key at all: its output and gradients must be exactly zero.
    let mut keys = vec![true; 2 * 7];
    keys[2] = false;
    keys[5] = false;
    keys[7..].iter_mut().for_each(|k| *k = false);
    check_attention(2, 4, 7, 2, 3, AttnMask::Keys(Arc::from(keys)));
}

#[test]
fn fused_qkv_and_kv_attention_equal_the_separate_form_and_pass_finite_differences() {
    let mut rng = Rng::new(30);
    let (b, s, sk, h, dh) = (2, 5, 7, 3, 4);
    let w = h * dh;
    let qkv = randn(&mut rng, &[b, s, 3 * w], 1.0);
    let split = |t: &Tensor, parts: usize, i: usize| -> Tensor {
        let rows = t.numel() / (parts * w);
        let v = v64(t);
        let out: Vec<f64> =
            (0..rows).flat_map(|r| v[r * parts * w + i * w..r * parts * w + (i + 1) * w].to_vec()).collect();
        Tensor::from_vec(out, &[t.shape()[0], t.shape()[1], w]).unwrap()
    };
    for mask in [AttnMask::Causal, AttnMask::None] {
        let m = mask.clone();
        let fused = forward(std::slice::from_ref(&qkv), move |t, v| ops::attention_qkv(t, &v[0], h, &m, None));
        let m = mask.clone();
        let separate = forward(&[split(&qkv, 3, 0), split(&qkv, 3, 1), split(&qkv, 3, 2)], move |t, v| {
            ops::attention(t, &v[0], &v[1], &v[2], h, &m)
        });
        assert_eq!(fused, separate);
        let m = mask.clone();
        assert!(
            gradcheck(std::slice::from_ref(&qkv), &[true], 200, move |t, v| ops::attention_qkv(t, &v[0], h, &m, None))
                <= GRAD_TOL
        );
    }
    let q = randn(&mut rng, &[b, s, w], 1.0);
    let kv = randn(&mut rng, &[b, sk, 2 * w], 1.0);
    let mut keys = vec![true; b * sk];
    keys[3] = false;
    let mask = AttnMask::Keys(Arc::from(keys));
    let m = mask.clone();
    let fused = forward(&[q.clone(), kv.clone()], move |t, v| ops::attention_kv(t, &v[0], &v[1], h, &m, None, None));
    let m = mask.clone();
    let separate = forward(&[q.clone(), split(&kv, 2, 0), split(&kv, 2, 1)], move |t, v| {
        ops::attention(t, &v[0], &v[1], &v[2], h, &m)
    });
    assert_eq!(fused, separate);
    assert!(
        gradcheck(&[q, kv], &[true, true], 200, move |t, v| ops::attention_kv(t, &v[0], &v[1], h, &mask, None, None))
            <= GRAD_TOL
    );
}

// A score bias [heads, sq, sk] (cca-relpos's): against a naive softmax(q·kᵀ/sqrt(dh) + bias)·v, finite
// differences in all three inputs, and a zero bias gives exactly the unbiased op.
#[test]
fn biased_cross_attention_matches_a_naive_reference_and_finite_differences() {
    let mut rng = Rng::new(31);
    let (b, s, sk, h, dh) = (2, 5, 7, 3, 4);
    let w = h * dh;
    let (q, kv, bias) =
        (randn(&mut rng, &[b, s, w], 1.0), randn(&mut rng, &[b, sk, 2 * w], 1.0), randn(&mut rng, &[h, s, sk], 1.0));
    let mut keys = vec![true; b * sk];
    keys[3] = false;
    keys[7..].iter_mut().for_each(|k| *k = false); // batch row 1 sees no key: zero output and gradients
    let mask = AttnMask::Keys(Arc::from(keys.clone()));
    let op = move |t: &mut Tape, v: &[Var]| ops::attention_kv(t, &v[0], &v[1], h, &mask, v.get(2), None);
    let got = forward(&[q.clone(), kv.clone(), bias.clone()], op.clone());
    let (qv, kvv, bv) = (v64(&q), v64(&kv), v64(&bias));
    let mut want = vec![0.0; b * s * w];
    for (bi, hi, i) in (0..b).flat_map(|bi| (0..h).flat_map(move |hi| (0..s).map(move |i| (bi, hi, i)))) {
        let visible: Vec<usize> = (0..sk).filter(|&j| keys[bi * sk + j]).collect();
        let score = |j: usize| {
            let dot: f64 =
                (0..dh).map(|d| qv[(bi * s + i) * w + hi * dh + d] * kvv[(bi * sk + j) * 2 * w + hi * dh + d]).sum();
            dot / (dh as f64).sqrt() + bv[(hi * s + i) * sk + j]
        };
        let max = visible.iter().map(|&j| score(j)).fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = visible.iter().map(|&j| (score(j) - max).exp()).sum();
        for &j in &visible {
            let p = (score(j) - max).exp() / total;
            for d in 0..dh {
                want[(bi * s + i) * w + hi * dh + d] += p * kvv[(bi * sk + j) * 2 * w + w + hi * dh + d];
            }
        }
    }
    assert!(max_rel_err(&got, &want, 1e-12) < 1e-12);
    let unbiased = forward(&[q.clone(), kv.clone()], op.clone());
    assert_eq!(
        forward(&[q.clone(), kv.clone(), Tensor::zeros(&[h, s, sk], retro::tensor::DType::F64)], op.clone()),
        unbiased
    );
    assert!(gradcheck(&[q.clone(), kv.clone(), bias], &[true, true, true], 200, op.clone()) <= GRAD_TOL);
    let err = forward_err(&[q, kv, Tensor::zeros(&[h, sk, s], retro::tensor::DType::F64)], op);
    assert!(err.contains("score bias must be [heads, sq, sk] = [3, 5, 7]") && err.contains("[3, 7, 5]"), "{err}");
}

#[test]
fn take_gathers_columns_and_adds_repeated_ones_back() {
    let mut rng = Rng::new(32);
    let table = randn(&mut rng, &[3, 5], 1.0);
    let index: Arc<[u32]> = Arc::from(vec![4u32, 0, 4, 2, 2, 2]);
    let i = index.clone();
    let op = move |t: &mut Tape, v: &[Var]| ops::take(t, &v[0], i.clone());
    let got = forward(std::slice::from_ref(&table), op.clone());
    let tv = v64(&table);
    let want: Vec<f64> =
        (0..3).flat_map(|r| index.iter().map(move |&c| (r, c))).map(|(r, c)| tv[r * 5 + c as usize]).collect();
    assert_eq!(got, want);
    assert!(gradcheck(std::slice::from_ref(&table), &[true], 200, op) <= GRAD_TOL);
    let err = forward_err(&[table], |t, v| ops::take(t, &v[0], Arc::from(vec![5u32])));
    assert!(err.contains("take: index 5 out of range") && err.contains("[3, 5]"), "{err}");
}

// Rotary embeddings on a fused QKV: against a naive rotation of each (x[i], x[i + dim/2]) pair by
// position · 10000^(−2i/dim), V and the unrotated dimensions untouched, finite differences.
#[test]
fn rotary_qkv_turns_queries_and_keys_by_position_and_passes_finite_differences() {
    let mut rng = Rng::new(33);
    let (b, s, h, dh, dim, first) = (2, 5, 2, 6, 4, 3);
    let w = h * dh;
    let qkv = randn(&mut rng, &[b, s, 3 * w], 1.0);
    let op = move |t: &mut Tape, v: &[Var]| ops::rotary_qkv(t, &v[0], dh, 2 * h, dim, first);
    let got = forward(std::slice::from_ref(&qkv), op);
    let x = v64(&qkv);
    let mut want = x.clone();
    for (bi, j, block, head, i) in (0..b).flat_map(|bi| {
        (0..s).flat_map(move |j| {
            (0..2).flat_map(move |bl| (0..h).flat_map(move |hd| (0..dim / 2).map(move |i| (bi, j, bl, hd, i))))
        })
    }) {
        let base = (bi * s + j) * 3 * w + block * w + head * dh;
        let angle = (first + j) as f64 * 10000f64.powf(-2.0 * i as f64 / dim as f64);
        let (x1, x2) = (x[base + i], x[base + i + dim / 2]);
        want[base + i] = x1 * angle.cos() - x2 * angle.sin();
        want[base + i + dim / 2] = x2 * angle.cos() + x1 * angle.sin();
    }
    assert!(max_rel_err(&got, &want, 1e-12) < 1e-12);
    assert!(gradcheck(std::slice::from_ref(&qkv), &[true], 200, op) <= GRAD_TOL);
    let err = forward_err(&[qkv], move |t, v| ops::rotary_qkv(t, &v[0], dh, 2 * h, 7, 0));
    assert!(err.contains("rotary_qkv: 7 rotated dimensions of heads of 6"), "{err}");
}

// Grouped-query attention: two query heads sharing one key / value head equal multi-head attention with
// that head's keys and values repeated; finite differences of the fused grouped form (dK and dV add
// both query heads' contributions).
#[test]
fn grouped_query_attention_equals_repeated_key_value_heads_and_passes_finite_differences() {
    let mut rng = Rng::new(35);
    let (b, s, heads, kv_heads, dh) = (2, 5, 4, 2, 3);
    let (w, kv) = (heads * dh, kv_heads * dh);
    let qkv = randn(&mut rng, &[b, s, w + 2 * kv], 1.0);
    let x = v64(&qkv);
    // The same keys and values with each key / value head repeated for its two query heads.
    let mut repeated = Vec::new();
    for row in x.chunks(w + 2 * kv) {
        repeated.extend_from_slice(&row[..w]);
        for block in [&row[w..w + kv], &row[w + kv..]] {
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                repeated.extend_from_slice(&block[g * dh..(g + 1) * dh]);
            }
        }
    }
    let repeated = Tensor::from_vec(repeated, &[b, s, 3 * w]).unwrap();
    for mask in [AttnMask::Causal, AttnMask::None] {
        let m = mask.clone();
        let grouped = move |t: &mut Tape, v: &[Var]| ops::attention_grouped_qkv(t, &v[0], heads, kv_heads, &m, None);
        let m = mask.clone();
        let want = forward(std::slice::from_ref(&repeated), move |t, v| ops::attention_qkv(t, &v[0], heads, &m, None));
        assert!(max_rel_err(&forward(std::slice::from_ref(&qkv), grouped.clone()), &want, 1e-12) < 1e-12);
        assert!(gradcheck(std::slice::from_ref(&qkv), &[true], 200, grouped) <= GRAD_TOL);
    }
    // The cached (separate, narrower keys and values) form.
    let (q, k, v) = (
        Tensor::from_vec(x.chunks(w + 2 * kv).flat_map(|r| r[..w].to_vec()).collect::<Vec<_>>(), &[b, s, w]).unwrap(),
        Tensor::from_vec(x.chunks(w + 2 * kv).flat_map(|r| r[w..w + kv].to_vec()).collect::<Vec<_>>(), &[b, s, kv])
            .unwrap(),
        Tensor::from_vec(x.chunks(w + 2 * kv).flat_map(|r| r[w + kv..].to_vec()).collect::<Vec<_>>(), &[b, s, kv])
            .unwrap(),
    );
    let separate = forward(&[q, k, v], move |t, v| ops::attention(t, &v[0], &v[1], &v[2], heads, &AttnMask::Causal));
    let fused = forward(std::slice::from_ref(&qkv), move |t, v| {
        ops::attention_grouped_qkv(t, &v[0], heads, kv_heads, &AttnMask::Causal, None)
    });
    assert_eq!(separate, fused);
    let err = forward_err(&[qkv], move |t, v| ops::attention_grouped_qkv(t, &v[0], heads, 3, &AttnMask::None, None));
    assert!(err.contains("4 heads and 3 key / value heads"), "{err}");
}

#[test]
fn swiglu_is_silu_of_the_first_half_times_the_second_and_passes_finite_differences() {
    let mut rng = Rng::new(34);
    let x = randn(&mut rng, &[3, 4, 10], 1.5);
    let got = forward(std::slice::from_ref(&x), |t, v| ops::swiglu(t, &v[0]));
    let xv = v64(&x);
    let want: Vec<f64> =
        xv.chunks(10).flat_map(|r| (0..5).map(move |i| r[i] / (1.0 + (-r[i]).exp()) * r[5 + i])).collect();
    assert!(max_rel_err(&got, &want, 1e-12) < 1e-12);
    assert!(gradcheck(std::slice::from_ref(&x), &[true], 200, |t, v| ops::swiglu(t, &v[0])) <= GRAD_TOL);
    let err = forward_err(&[randn(&mut rng, &[2, 3], 1.0)], |t, v| ops::swiglu(t, &v[0]));
    assert!(err.contains("swiglu") && err.contains("[2, 3]"), "{err}");
}

#[test]
fn attention_rejects_bad_shapes() {
    let z = |s: &[usize]| Var::constant(Tensor::zeros(s, retro::tensor::DType::F32));
    let mut t = Tape::new();
    let err = ops::attention(&mut t, &z(&[2, 4, 6]), &z(&[2, 5, 6]), &z(&[2, 5, 6]), 4, &AttnMask::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not divisible by 4 heads"), "{err}");
    let err = ops::attention(&mut t, &z(&[2, 4, 6]), &z(&[2, 5, 6]), &z(&[2, 5, 6]), 2, &AttnMask::Causal)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("causal") && err.contains("[2, 4, 6], [2, 5, 6]") && err.contains("4 queries and 5 keys"),
        "{err}"
    );
    let err = ops::attention(&mut t, &z(&[2, 4, 6]), &z(&[2, 5, 6]), &z(&[2, 4, 6]), 2, &AttnMask::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention") && err.contains("[2, 4, 6]"), "{err}");
}

// ---------------------------------------------------------------- cross-entropy

#[test]
fn cross_entropy_matches_naive_finite_differences_and_labels_are_checked() {
    let mut rng = Rng::new(7);
    let logits = randn(&mut rng, &[7, 13], 2.0);
    let labels = Tensor::from_vec(vec![0i64, 12, 5, 5, 3, 9, 1], &[7]).unwrap();
    let l = labels.clone();
    let op = move |t: &mut Tape, v: &[Var]| ops::cross_entropy(t, &v[0], &l);
    let got = forward(std::slice::from_ref(&logits), op.clone())[0];
    let z = v64(&logits);
    let want: f64 = (0..7)
        .map(|i| {
            let row = &z[i * 13..(i + 1) * 13];
            row.iter().map(|x| x.exp()).sum::<f64>().ln() - row[labels.indices().unwrap()[i] as usize]
        })
        .sum::<f64>()
        / 7.0;
    assert!((got - want).abs() < 1e-12 * want.abs());
    let e = gradcheck(std::slice::from_ref(&logits), &[true], 100, op.clone());
    assert!(e <= GRAD_TOL, "{e}");
    assert!(f32_matches_f64(std::slice::from_ref(&logits), op) < F32_TOL);
    let bad = Tensor::from_vec(vec![0i64, 13, 0, 0, 0, 0, 0], &[7]).unwrap();
    let err = ops::cross_entropy(&mut Tape::new(), &Var::constant(logits.clone()), &bad).unwrap_err().to_string();
    assert!(err.contains("label 13") && err.contains("vocabulary of 13"), "{err}");
    let short = Tensor::from_vec(vec![0i64; 6], &[6]).unwrap();
    let err = ops::cross_entropy(&mut Tape::new(), &Var::constant(logits), &short).unwrap_err().to_string();
    assert!(err.contains("[6]") && err.contains("[7, 13]"), "{err}");
}

// ---------------------------------------------------------------- layout

#[test]
fn reshape_shift_rows_pad_narrow_concat_move_data_and_gradients() {
    let mut rng = Rng::new(8);
    let x = randn(&mut rng, &[3, 5, 4], 1.0);
    let xv = v64(&x);
    // narrow dim 1, 1..4
    let got = forward(std::slice::from_ref(&x), |t, v| ops::narrow(t, &v[0], 1, 1, 3));
    let want: Vec<f64> = (0..3)
        .flat_map(|a| (1..4).flat_map(move |b| (0..4).map(move |c| (a, b, c))))
        .map(|(a, b, c)| xv[(a * 5 + b) * 4 + c])
        .collect();
    assert_eq!(got, want);
    // pad dim 1: 2 before, 1 after
    let got = forward(std::slice::from_ref(&x), |t, v| ops::pad(t, &v[0], 1, 2, 1));
    for a in 0..3 {
        for b in 0..8 {
            for c in 0..4 {
                let want = if (2..7).contains(&b) { xv[(a * 5 + b - 2) * 4 + c] } else { 0.0 };
                assert_eq!(got[(a * 8 + b) * 4 + c], want);
            }
        }
    }
    let shift = |t: &mut Tape, v: &[Var]| ops::shift_rows(t, &v[0], 1, 3, 5);
    assert!(gradcheck(std::slice::from_ref(&x), &[true], 100, shift) <= GRAD_TOL);
    assert!(gradcheck(std::slice::from_ref(&x), &[true], 100, |t, v| ops::pad(t, &v[0], 2, 1, 3)) <= GRAD_TOL);
    let rs = |t: &mut Tape, v: &[Var]| ops::reshape(t, &v[0], &[15, 4]);
    assert_eq!(forward(std::slice::from_ref(&x), rs), xv);
    assert!(gradcheck(std::slice::from_ref(&x), &[true], 100, rs) <= GRAD_TOL);
    // concat along dim 1 of [3,5,4] and [3,2,4]
    let y = randn(&mut rng, &[3, 2, 4], 1.0);
    let cat = |t: &mut Tape, v: &[Var]| ops::concat(t, &[&v[0], &v[1]], 1);
    let got = forward(&[x.clone(), y.clone()], cat);
    let yv = v64(&y);
    for a in 0..3 {
        for b in 0..7 {
            for c in 0..4 {
                let want = if b < 5 { xv[(a * 5 + b) * 4 + c] } else { yv[(a * 2 + b - 5) * 4 + c] };
                assert_eq!(got[(a * 7 + b) * 4 + c], want);
            }
        }
    }
    assert!(gradcheck(&[x.clone(), y], &[true, true], 100, cat) <= GRAD_TOL);
    let err = ops::narrow(&mut Tape::new(), &Var::constant(x.clone()), 1, 3, 3).unwrap_err().to_string();
    assert!(err.contains("narrow") && err.contains("3..6") && err.contains("[3, 5, 4]"), "{err}");
    let err = ops::reshape(&mut Tape::new(), &Var::constant(x), &[7, 7]).unwrap_err().to_string();
    assert!(err.contains("[3, 5, 4]") && err.contains("[7, 7]"), "{err}");
}

#[test]
fn gradcheck_detects_a_slightly_wrong_backward() {
    // An op whose backward is off by 1e-5 relative must fail the 1e-6 tolerance used above.
    let mut rng = Rng::new(9);
    let x = randn(&mut rng, &[4, 3], 1.0);
    // Identity forward, backward scaled by (1 + 1e-5).
    let off = |t: &mut Tape, v: &[Var]| -> retro::Result<Var> {
        Ok(t.record("scaled_identity", &[&v[0]], v[0].value().clone(), |g, _| {
            let mut g2 = g.clone();
            g2.scale(1.0 + 1e-5)?;
            Ok(vec![Some(g2)])
        }))
    };
    let err = gradcheck(&[x], &[true], 100, off);
    assert!(err > GRAD_TOL && err < 1e-4, "{err}");
}

#[test]
fn scale_multiplies_values_and_gradients() {
    let mut rng = Rng::new(10);
    let x = randn(&mut rng, &[3, 5], 1.0);
    let got = forward(std::slice::from_ref(&x), |t, v| ops::scale(t, &v[0], -0.75));
    assert_eq!(got, v64(&x).iter().map(|v| v * -0.75).collect::<Vec<_>>());
    assert!(gradcheck(&[x], &[true], 100, |t, v| ops::scale(t, &v[0], 0.3)) <= GRAD_TOL);
}

#[test]
fn dropout_masks_are_seeded_scaled_and_differentiable() {
    let mut rng = Rng::new(40);
    let x = randn(&mut rng, &[64, 50], 1.0);
    let run = |seed: u64| {
        let mut t = Tape::training(0.25, seed);
        ops::dropout(&mut t, &Var::constant(x.clone())).unwrap().into_value().to_f64_vec()
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert_ne!(a, run(4));
    let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
    assert!((zeros - 0.25).abs() < 0.03, "dropped fraction {zeros}");
    for (o, i) in a.iter().zip(v64(&x)) {
        assert!(*o == 0.0 || (o - i / 0.75).abs() < 1e-12);
    }
    // Identity without a training tape.
    assert_eq!(forward(std::slice::from_ref(&x), |t, v| ops::dropout(t, &v[0])), v64(&x));
    // Gradients, with the masks fixed by the seed (hidden and attention dropout).
    let analytic_vs_numeric = |f: &dyn Fn(&mut Tape, &Var) -> Var, input: &Tensor| {
        let mut t = Tape::training(0.3, 9);
        let leaf = t.leaf(input.clone());
        let out = f(&mut t, &leaf);
        let r = randn(&mut Rng::new(1), out.shape(), 1.0);
        let g = t.backward_with(&out, r.clone()).unwrap().get(&leaf).unwrap().to_f64_vec();
        let obj = |xs: &Tensor| -> f64 {
            let mut t = Tape::training(0.3, 9);
            let o = f(&mut t, &Var::constant(xs.clone()));
            o.value().to_f64_vec().iter().zip(r.to_f64_vec()).map(|(a, b)| a * b).sum()
        };
        let mut worst = 0f64;
        for j in (0..input.numel()).step_by(7) {
            let at = |d: f64| {
                let mut y = input.clone();
                y.data_mut::<f64>().unwrap()[j] += d;
                obj(&y)
            };
            let h = 1e-4;
            let num = (8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h);
            worst = worst.max((num - g[j]).abs() / num.abs().max(g[j].abs()).max(1e-3));
        }
        worst
    };
    let e = analytic_vs_numeric(&|t, v| ops::dropout(t, v).unwrap(), &x);
    assert!(e <= GRAD_TOL, "{e}");
    let qkv = randn(&mut rng, &[2, 6, 3 * 8], 1.0);
    let attn = |t: &mut Tape, v: &Var| {
        let d = ops::Dropout::from_tape(t);
        ops::attention_qkv(t, v, 2, &AttnMask::Causal, d).unwrap()
    };
    assert!(analytic_vs_numeric(&attn, &qkv) < GRAD_TOL);
}

// ---------------------------------------------------------------- tensor parallelism (a group of one)
// The split forms across ranks are checked against the whole model under mpirun (tests/tensor_parallel.rs);
// here each op's own forward and backward, on one rank.

#[test]
fn add_bias_adds_to_every_row_and_passes_finite_differences() {
    let mut rng = Rng::new(21);
    let (x, b) = (randn(&mut rng, &[2, 3, 5], 1.0), randn(&mut rng, &[5], 1.0));
    let op = |t: &mut Tape, v: &[Var]| ops::add_bias(t, &v[0], &v[1]);
    let got = forward(&[x.clone(), b.clone()], op);
    let want: Vec<f64> = v64(&x).iter().enumerate().map(|(i, &xi)| xi + v64(&b)[i % 5]).collect();
    assert_eq!(got, want);
    assert!(gradcheck(&[x.clone(), b], &[true, true], 100, op) <= GRAD_TOL);
    let err = ops::add_bias(&mut Tape::new(), &Var::constant(x), &Var::constant(randn(&mut rng, &[4], 1.0)));
    assert!(err.unwrap_err().to_string().contains("bias [4] does not match input [2, 3, 5]"));
}

#[test]
fn vocab_parallel_embedding_gives_its_rows_and_zeros_for_other_ids() {
    let mut rng = Rng::new(22);
    // Rows 4..8 of a vocabulary of 12.
    let shard = randn(&mut rng, &[4, 3], 1.0);
    let ids = Tensor::from_vec(vec![4i64, 0, 7, 11, 5, 5], &[2, 3]).unwrap();
    let op = |ids: Tensor| move |t: &mut Tape, v: &[Var]| ops::vocab_parallel_embedding(t, &ids, &v[0], 4, 12);
    let got = forward(std::slice::from_ref(&shard), op(ids.clone()));
    let s = v64(&shard);
    let want: Vec<f64> = [4i64, 0, 7, 11, 5, 5]
        .iter()
        .flat_map(|&i| {
            if (4..8).contains(&i) {
                s[(i as usize - 4) * 3..(i as usize - 3) * 3].to_vec()
            } else {
                vec![0.0; 3]
            }
        })
        .collect();
    assert_eq!(got, want);
    assert!(gradcheck(std::slice::from_ref(&shard), &[true], 100, op(ids)) <= GRAD_TOL);
    let bad = Tensor::from_vec(vec![12i64], &[1]).unwrap();
    let err = ops::vocab_parallel_embedding(&mut Tape::new(), &bad, &Var::constant(shard), 4, 12).unwrap_err();
    assert!(err.to_string().contains("id 12") && err.to_string().contains("vocabulary of 12"), "{err}");
}

#[test]
fn vocab_parallel_cross_entropy_of_one_rank_is_cross_entropy_and_passes_finite_differences() {
    let mut rng = Rng::new(23);
    let logits = randn(&mut rng, &[7, 13], 2.0);
    let labels = Tensor::from_vec(vec![0i64, 12, 5, 5, 3, 9, 1], &[7]).unwrap();
    let tp = retro::dist::TensorParallel::single();
    let (l, group) = (labels.clone(), tp.clone());
    let op = move |t: &mut Tape, v: &[Var]| ops::vocab_parallel_cross_entropy(t, &v[0], &l, 0, &group);
    let got = forward(std::slice::from_ref(&logits), op.clone())[0];
    let want = forward(std::slice::from_ref(&logits), |t, v| ops::cross_entropy(t, &v[0], &labels))[0];
    assert!((got - want).abs() < 1e-13 * want.abs(), "{got} vs {want}");
    assert!(gradcheck(std::slice::from_ref(&logits), &[true], 100, op.clone()) <= GRAD_TOL);
    assert!(f32_matches_f64(std::slice::from_ref(&logits), op) < F32_TOL);
    let bad = Tensor::from_vec(vec![13i64; 7], &[7]).unwrap();
    let err = ops::vocab_parallel_cross_entropy(&mut Tape::new(), &Var::constant(logits), &bad, 0, &tp).unwrap_err();
    assert!(err.to_string().contains("label 13") && err.to_string().contains("vocabulary of 13"), "{err}");
}

#[test]
fn the_tensor_parallel_mappings_of_one_rank_are_the_identity_both_ways() {
    let mut rng = Rng::new(24);
    let x = randn(&mut rng, &[3, 4], 1.0);
    let tp = retro::dist::TensorParallel::single();
    for op in [ops::copy_to_tensor_parallel, ops::reduce_from_tensor_parallel] {
        let group = tp.clone();
        let f = move |t: &mut Tape, v: &[Var]| op(t, &v[0], &group);
        assert_eq!(forward(std::slice::from_ref(&x), f.clone()), v64(&x));
        assert!(gradcheck(std::slice::from_ref(&x), &[true], 100, f) <= GRAD_TOL);
    }
}

// ---------------------------------------------------------------- the scalar gate (cca-tanh-gate)

#[test]
fn tanh_and_mul_scalar_match_formulas_and_finite_differences() {
    let mut rng = Rng::new(25);
    let x = randn(&mut rng, &[3, 4], 1.5);
    let got = forward(std::slice::from_ref(&x), |t, v| ops::tanh(t, &v[0]));
    assert_eq!(got, v64(&x).iter().map(|v| v.tanh()).collect::<Vec<_>>());
    assert!(gradcheck(std::slice::from_ref(&x), &[true], 100, |t, v| ops::tanh(t, &v[0])) <= GRAD_TOL);
    assert!(f32_matches_f64(std::slice::from_ref(&x), |t, v| ops::tanh(t, &v[0])) < F32_TOL);
    let s = Tensor::from_vec(vec![-0.7f64], &[1]).unwrap();
    let op = |t: &mut Tape, v: &[Var]| ops::mul_scalar(t, &v[0], &v[1]);
    let got = forward(&[x.clone(), s.clone()], op);
    assert_eq!(got, v64(&x).iter().map(|v| v * -0.7).collect::<Vec<_>>());
    assert!(gradcheck(&[x.clone(), s], &[true, true], 100, op) <= GRAD_TOL);
    let two = Var::constant(Tensor::from_vec(vec![1.0f64, 2.0], &[2]).unwrap());
    let err = ops::mul_scalar(&mut Tape::new(), &Var::constant(x), &two).unwrap_err().to_string();
    assert!(err.contains("mul_scalar") && err.contains("one element") && err.contains("[2]"), "{err}");
}
