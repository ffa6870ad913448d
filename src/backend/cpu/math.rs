//! Branch-free exp (and erfc on it) for the CPU kernels. `e^x = 2^n · e^r` with n = round(x / ln 2) and |r| <= ln2 / 2,
//! e^r from its Taylor polynomial (degree 7 for f32: error < 1e-8 relative; degree 13 for f64: < 1e-16),
//! 2^n built in the exponent bits. n is rounded by adding and subtracting 1.5·2^23 (1.5·2^52), whose
//! low mantissa bits then hold n: plain adds and integer ops, no libm call, so loops over it vectorise
//! even for baseline x86-64.
//! Inputs are clamped to the finite range: exp(-inf) is 2^-126 (f32) or 2^-1022 (f64), not 0; callers
//! that need exact zeros (masked attention) zero those entries themselves.

const LN2_HI_F32: f32 = 0.693_145_75;
const LN2_LO_F32: f32 = 1.428_606_8e-6;
const LN2_HI_F64: f64 = 0.693_147_180_369_123_8;
const LN2_LO_F64: f64 = 1.908_214_929_270_587_7e-10;

#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let n_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits());
    let n = t - SHIFTER;
    let r = (x - n * LN2_HI_F32) - n * LN2_LO_F32;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    const SHIFTER: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
    let x = x.clamp(-708.0, 709.0);
    let t = x * std::f64::consts::LOG2_E + SHIFTER;
    let n_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits());
    let n = t - SHIFTER;
    let r = (x - n * LN2_HI_F64) - n * LN2_LO_F64;
    // Horner over 1/k!, k = 13 down to 0.
    const INV_FACT: [f64; 14] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362880.0,
        1.0 / 3628800.0,
        1.0 / 39916800.0,
        1.0 / 479001600.0,
        1.0 / 6227020800.0,
    ];
    let mut p = INV_FACT[13];
    for c in INV_FACT[..13].iter().rev() {
        p = p * r + c;
    }
    p * f64::from_bits(n_bits.wrapping_add(1023) << 52)
}

/// erfc in f32 without branches or libm, so loops over it vectorise (the BERT embedder's exact GELU was a
/// fifth of its time in libm's scalar erf): Numerical Recipes' Chebyshev fit erfc(z) = t·exp(−z² + P(t)),
/// t = 1 / (1 + z/2) for z = |x| (fractional error < 1.2e-7), erfc(x) = 2 − erfc(−x) for x < 0. In f32
/// the exponent's rounding adds ~x² · 6e-8 relative (tested: < 2e-6 on [−4, 3]).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, rounded to f32 here
pub fn erfc_f32(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77_f32;
    for c in [
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
    ] {
        p = p * t + c;
    }
    let r = t * exp_f32(-z * z - 1.265_512_23 + t * p);
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_to_the_last_bits() {
        let mut worst32 = 0f64;
        let mut worst64 = 0f64;
        for i in 0..200_001 {
            let x = -80.0 + 160.0 * i as f64 / 200_000.0;
            let want = x.exp();
            worst64 = worst64.max((exp_f64(x) - want).abs() / want);
            if x.abs() < 85.0 {
                let want32 = (x as f32).exp() as f64;
                worst32 = worst32.max((exp_f32(x as f32) as f64 - want32).abs() / want32);
            }
        }
        assert!(worst32 < 3e-7, "f32 {worst32}");
        assert!(worst64 < 5e-16, "f64 {worst64}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f64(0.0), 1.0);
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37 && exp_f32(1000.0) > 1e38);
    }

    #[test]
    fn erfc_f32_is_within_2e6_relative_of_libm() {
        let mut worst = 0f64;
        // x up to 3 (erfc 2e-5); beyond, the f32 rounding of the exponent −x² (~x² · 6e-8) dominates,
        // where GELU's value is below 1e-5 · |x| anyway.
        for i in -40_000..=30_000 {
            let x = i as f64 * 1e-4;
            let want = libm::erfc(x);
            let got = erfc_f32(x as f32) as f64;
            // Compare at the f32 input the approximation saw.
            let want = if (x as f32) as f64 == x { want } else { libm::erfc((x as f32) as f64) };
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2e-6, "worst relative error {worst:.2e}");
        eprintln!("erfc_f32: worst relative error {worst:.2e} on [-4, 3]");
    }
}
