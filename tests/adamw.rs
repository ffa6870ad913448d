//! AdamW with global-norm clipping, checked by hand on two parameters: a [1, 2] matrix (weight decay
//! applies) and a [1] bias (no decay). Gradients [[0.3, -0.4]] and [1.2] have global norm 1.3.

use retro::tensor::Tensor;
use retro::train::{AdamW, AdamWConfig};

fn setup(clip: f64) -> (AdamW, Vec<Tensor>, Vec<Tensor>) {
    let params =
        vec![Tensor::from_vec(vec![1.0f64, -2.0], &[1, 2]).unwrap(), Tensor::from_vec(vec![0.5f64], &[1]).unwrap()];
    let grads =
        vec![Tensor::from_vec(vec![0.3f64, -0.4], &[1, 2]).unwrap(), Tensor::from_vec(vec![1.2f64], &[1]).unwrap()];
    let config = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, clip: Some(clip) };
    (AdamW::new(config, &params), params, grads)
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-14 * b.abs().max(1.0), "{a} != {b}");
}

#[test]
fn first_step_without_clipping() {
    let (mut opt, mut params, mut grads) = setup(2.0);
    let stats = opt.step(&mut params, &mut grads, 0.1).unwrap();
    close(stats.grad_norm, 1.3);
    assert_eq!(stats.clip_coef, 1.0);
    // Step 1: m = 0.1 g, v = 0.05 g², step size lr / 0.1 = 1, sqrt(v) / sqrt(0.05) = |g|,
    // so p ← p·(1 − lr·wd) − 0.1·g / (|g| + 1e-8) (decay only on the matrix).
    let p = params[0].to_vec::<f64>().unwrap();
    close(p[0], 1.0 * 0.99 - 0.1 * 0.3 / (0.3 + 1e-8));
    close(p[1], -2.0 * 0.99 + 0.1 * 0.4 / (0.4 + 1e-8));
    close(params[1].to_vec::<f64>().unwrap()[0], 0.5 - 0.1 * 1.2 / (1.2 + 1e-8));
    close(opt.exp_avg[0].to_vec::<f64>().unwrap()[0], 0.03);
    close(opt.exp_avg_sq[1].to_vec::<f64>().unwrap()[0], 0.05 * 1.44);
}

#[test]
fn clipping_scales_the_gradients_then_a_second_step_uses_the_moments() {
    let (mut opt, mut params, mut grads) = setup(0.65);
    let stats = opt.step(&mut params, &mut grads, 0.1).unwrap();
    let coef = 0.65 / (1.3 + 1e-6);
    close(stats.clip_coef, coef);
    close(grads[1].to_vec::<f64>().unwrap()[0], 1.2 * coef);
    // Second step on the bias with gradient 0.2 and clipping inactive (norm < 0.65).
    let mut grads2 =
        vec![Tensor::from_vec(vec![0.0f64, 0.0], &[1, 2]).unwrap(), Tensor::from_vec(vec![0.2f64], &[1]).unwrap()];
    let stats2 = opt.step(&mut params, &mut grads2, 0.1).unwrap();
    assert_eq!(stats2.clip_coef, 1.0);
    let g1 = 1.2 * coef;
    let p1 = 0.5 - 0.1 * g1 / (g1 + 1e-8);
    let m = 0.9 * (0.1 * g1) + 0.1 * 0.2;
    let v = 0.95 * (0.05 * g1 * g1) + 0.05 * 0.04;
    let expected = p1 - (0.1 / (1.0 - 0.81)) * m / (v.sqrt() / (1.0 - 0.9025f64).sqrt() + 1e-8);
    close(params[1].to_vec::<f64>().unwrap()[0], expected);
}

#[test]
fn a_non_finite_gradient_is_refused_and_nothing_changes() {
    let (mut opt, mut params, mut grads) = setup(1.0);
    grads[1] = Tensor::from_vec(vec![f64::NAN], &[1]).unwrap();
    let before = params.clone();
    let err = opt.step(&mut params, &mut grads, 0.1).unwrap_err().to_string();
    assert!(err.contains("NaN"), "{err}");
    assert_eq!(params, before);
    assert_eq!(opt.step, 0);
}
