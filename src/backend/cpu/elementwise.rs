//! Element-wise kernels: tanh-GELU (Megatron's fused bias_gelu) and addition.

use crate::tensor::Float;
use rayon::prelude::*;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;
/// Elements per parallel task: large enough to amortise a task, small enough to balance.
const CHUNK: usize = 1 << 14;

/// out[i] = f(a[i], b[i]) over straight-line chunks. `f` is copied into each task, so the constants
/// it captured are locals there: behind a reference the compiler must assume the stores to `out` may
/// change them, and then it does not vectorise the loop (4x slower).
fn zip_map<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send + Copy) -> Vec<T> {
    let mut out = vec![T::ZERO; a.len()];
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(move |(o, (a, b))| {
        let f = f;
        super::simd::with_avx2(
            #[inline(always)]
            move || {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                    *o = f(x, y);
                }
            },
        );
    });
    out
}

/// gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as x · sigmoid(2u):
/// 0.5 (1 + tanh(u)) = 1 / (1 + e^(−2u)), one exp and no cancellation where tanh(u) is near −1.
pub fn gelu_forward<T: Float>(x: &[T]) -> Vec<T> {
    let (c0, c1, two) = (T::from_f64(SQRT_2_OVER_PI), T::from_f64(GELU_C), T::from_f64(2.0));
    zip_map(x, x, move |v, _| v / (T::ONE + (-two * c0 * (v + c1 * v * v * v)).exp()))
}

/// d gelu / dx = s + 2x · s(1 − s) · u', with s = sigmoid(2u) and 1 − s = s · e^(−2u).
pub fn gelu_backward<T: Float>(x: &[T], dy: &[T]) -> Vec<T> {
    let (c0, c1, two, three) = (T::from_f64(SQRT_2_OVER_PI), T::from_f64(GELU_C), T::from_f64(2.0), T::from_f64(3.0));
    zip_map(x, dy, move |v, g| {
        let e = (-two * c0 * (v + c1 * v * v * v)).exp();
        let s = T::ONE / (T::ONE + e);
        let du = c0 * (T::ONE + three * c1 * v * v);
        g * (s + two * v * s * (s * e) * du)
    })
}

pub fn add<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(a, b, |x, y| x + y)
}

/// Exact GELU (BERT's `gelu`): x · Φ(x), Φ(x) = 0.5 (1 + erf(x / sqrt 2)) = 0.5 erfc(−x / sqrt 2) (no
/// cancellation in the negative tail).
pub fn gelu_erf_forward<T: Float>(x: &[T]) -> Vec<T> {
    let (half, c) = (T::from_f64(0.5), T::from_f64(-std::f64::consts::FRAC_1_SQRT_2));
    zip_map(x, x, move |v, _| half * v * (c * v).erfc())
}

/// d/dx [x Φ(x)] = Φ(x) + x φ(x), φ(x) = exp(−x²/2) / sqrt(2π).
pub fn gelu_erf_backward<T: Float>(x: &[T], dy: &[T]) -> Vec<T> {
    let (half, c) = (T::from_f64(0.5), T::from_f64(-std::f64::consts::FRAC_1_SQRT_2));
    let inv_sqrt_2pi = T::from_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    zip_map(x, dy, move |v, g| {
        let cdf = half * (c * v).erfc();
        let pdf = (-(half * v * v)).exp() * inv_sqrt_2pi;
        g * (cdf + v * pdf)
    })
}
