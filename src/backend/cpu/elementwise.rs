//! Element-wise kernels: tanh-GELU (Megatron's fused bias_gelu) and addition.

use crate::tensor::Float;
use rayon::prelude::*;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;
const PAR_MIN: usize = 1 << 14;

fn map<T: Float>(x: &[T], f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if x.len() < PAR_MIN {
        (0..x.len()).map(f).collect()
    } else {
        (0..x.len()).into_par_iter().map(f).collect()
    }
}

/// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
pub fn gelu_forward<T: Float>(x: &[T]) -> Vec<T> {
    let (c0, c1, half) = (T::from_f64(SQRT_2_OVER_PI), T::from_f64(GELU_C), T::from_f64(0.5));
    map(x, |i| {
        let v = x[i];
        half * v * (T::ONE + (c0 * (v + c1 * v * v * v)).tanh())
    })
}

pub fn gelu_backward<T: Float>(x: &[T], dy: &[T]) -> Vec<T> {
    let (c0, c1, half, three) = (T::from_f64(SQRT_2_OVER_PI), T::from_f64(GELU_C), T::from_f64(0.5), T::from_f64(3.0));
    map(x, |i| {
        let v = x[i];
        let t = (c0 * (v + c1 * v * v * v)).tanh();
        let dinner = c0 * (T::ONE + three * c1 * v * v);
        dy[i] * (half * (T::ONE + t) + half * v * (T::ONE - t * t) * dinner)
    })
}

pub fn add<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    map(a, |i| a[i] + b[i])
}
