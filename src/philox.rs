//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter-based
//! generator. Value `i` of a stream is a pure function of (seed, stream, i), so any thread on any device
//! can draw any value without shared state: the GPU fills a buffer in parallel (kernels/random.cu) and
//! the CPU computes the same bits here, element for element.
//!
//! Layout (the same in kernels/random.cu): 4-element block `j` of stream `s` under `seed` is
//! `philox(counter = [lo(j), hi(j), lo(s), hi(s)], key = [lo(seed), hi(seed)])`. Normals use Box-Muller
//! on pairs of words: elements (4j, 4j+1) from words 0 and 1, (4j+2, 4j+3) from words 2 and 3; dropout
//! keeps element i when word i % 4 of block i / 4 is at or above p · 2^32.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The ten-round Philox4x32 bijection of `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = M0 as u64 * c[0] as u64;
        let p1 = M1 as u64 * c[2] as u64;
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

/// The four words of block `j` of `stream` under `seed`.
pub fn block(seed: u64, stream: u64, j: u64) -> [u32; 4] {
    philox4x32_10(
        [j as u32, (j >> 32) as u32, stream as u32, (stream >> 32) as u32],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// A word as a uniform in (0, 1): its top 23 bits plus half a step, exact in f32 (2^-24 .. 1 - 2^-24:
/// never 0 or 1; with 24 bits the top value would round to 1).
pub fn unit_open(word: u32) -> f32 {
    ((word >> 9) as f32 + 0.5) * (1.0 / (1u32 << 23) as f32)
}

/// Box-Muller on two words, in f64 (the reference the GPU's f32 evaluation is checked against).
pub fn normal_pair(w0: u32, w1: u32) -> (f64, f64) {
    let (u0, u1) = (unit_open(w0) as f64, unit_open(w1) as f64);
    let r = (-2.0 * u0.ln()).sqrt();
    let theta = 2.0 * std::f64::consts::PI * u1;
    (r * theta.cos(), r * theta.sin())
}

/// Values `0..n` of `stream`: N(0, std²), as the GPU's `fill_normal` draws them (there in f32).
pub fn normals(seed: u64, stream: u64, n: usize, std: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(n.next_multiple_of(4));
    for j in 0..n.div_ceil(4) as u64 {
        let w = block(seed, stream, j);
        let (a, b) = normal_pair(w[0], w[1]);
        let (c, d) = normal_pair(w[2], w[3]);
        out.extend([a * std, b * std, c * std, d * std]);
    }
    out.truncate(n);
    out
}

/// Dropout's threshold for probability `p`: an element is dropped when its word is below `p · 2^32`.
pub fn drop_threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).round().clamp(0.0, u32::MAX as f64) as u32
}

/// Which of elements `0..n` of `stream` under `seed` dropout keeps: element `i` reads word `i % 4` of
/// block `i / 4` and is kept when it is at or above `threshold` (`drop_threshold`). An integer compare, so
/// kernels/dropout.cu keeps exactly the same elements.
pub fn keep_mask(seed: u64, stream: u64, n: usize, threshold: u32) -> Vec<bool> {
    let mut out = Vec::with_capacity(n.next_multiple_of(4));
    for j in 0..n.div_ceil(4) as u64 {
        out.extend(block(seed, stream, j).map(|w| w >= threshold));
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random123_known_answers() {
        // Random123's tests/kat_vectors for philox4x32_10.
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn normals_have_unit_moments_and_streams_differ() {
        let n = 200_003;
        let x = normals(7, 3, n, 1.0);
        assert_eq!(x.len(), n);
        let mean = x.iter().sum::<f64>() / n as f64;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
        assert!(x.iter().all(|v| v.is_finite() && v.abs() < 6.0));
        assert_ne!(normals(7, 4, 8, 1.0), normals(7, 3, 8, 1.0));
        assert_ne!(normals(8, 3, 8, 1.0), normals(7, 3, 8, 1.0));
        // A prefix of a stream is the stream's prefix: values depend on their index only.
        assert_eq!(normals(7, 3, 5, 1.0)[..], x[..5]);
    }

    #[test]
    fn keep_mask_keeps_one_minus_p() {
        let n = 100_000;
        for p in [0.0, 0.1, 0.5] {
            let kept = keep_mask(3, 9, n, drop_threshold(p)).iter().filter(|&&k| k).count() as f64 / n as f64;
            assert!((kept - (1.0 - p)).abs() < 0.01, "p {p}: kept {kept}");
        }
        assert_ne!(keep_mask(3, 9, 64, drop_threshold(0.5)), keep_mask(3, 10, 64, drop_threshold(0.5)));
        assert_eq!(drop_threshold(1.0), u32::MAX);
    }

    #[test]
    fn uniform_is_open_at_both_ends() {
        assert!(unit_open(0) > 0.0 && unit_open(u32::MAX) < 1.0);
        assert!(normal_pair(0, 0).0.is_finite());
    }
}
