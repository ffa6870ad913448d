//! Row-major GEMM through matrixmultiply's single-threaded packed SIMD kernels; transposes are strides.
//! Large products are split into row (or column) blocks of C, one rayon task each, so the whole engine
//! shares rayon's one thread pool (no nested pools competing for the cores). Every element of C is
//! still computed by one kernel call over the full k, so the split does not change any result bit.

use super::SendPtr;
use crate::tensor::Float;
use rayon::prelude::*;

/// Products smaller than this many multiply-adds run on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// `c[m,n] = a·b` (or `c += a·b` with `accumulate`), where `a` is `[m,k]` (stored `[k,m]` if `a_t`)
/// and `b` is `[k,n]` (stored `[n,k]` if `b_t`). All slices contiguous row-major.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Float>(
    a: &[T],
    a_t: bool,
    b: &[T],
    b_t: bool,
    c: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "matmul: slices too short");
    let (rsa, csa) = if a_t { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if b_t { (1, k as isize) } else { (n as isize, 1) };
    let beta = if accumulate { T::ONE } else { T::ZERO };
    // SAFETY: lengths checked above; strides describe the stated layouts.
    unsafe { parallel(m, k, n, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1) }
}

/// [`strided`], split over rayon into blocks of C's rows or columns (whichever dimension is longer).
///
/// # Safety
/// As [`strided`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn parallel<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    beta: T,
    c: *mut T,
    rsc: isize,
    csc: isize,
) {
    let threads = rayon::current_num_threads();
    if threads == 1 || m * n * k < PARALLEL_MIN_MACS {
        return strided(m, k, n, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
    }
    let (a, b, c) = (SendPtr(a as *mut T), SendPtr(b as *mut T), SendPtr(c));
    let rows = m >= n;
    let len = if rows { m } else { n };
    // One block per thread: every block packs the whole of the other operand again, so fewer is
    // cheaper; multiples of 16 keep the kernel's register tiles full.
    let block = len.div_ceil(threads).next_multiple_of(16);
    (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
        let start = i * block;
        let size = block.min(len - start);
        let s = start as isize;
        // SAFETY: block i covers C rows (or columns) start..start+size, disjoint from other blocks.
        unsafe {
            if rows {
                strided(
                    size,
                    k,
                    n,
                    a.get().offset(s * rsa),
                    rsa,
                    csa,
                    b.get(),
                    rsb,
                    csb,
                    beta,
                    c.get().offset(s * rsc),
                    rsc,
                    csc,
                );
            } else {
                strided(
                    m,
                    k,
                    size,
                    a.get(),
                    rsa,
                    csa,
                    b.get().offset(s * csb),
                    rsb,
                    csb,
                    beta,
                    c.get().offset(s * csc),
                    rsc,
                    csc,
                );
            }
        }
    });
}

/// `C = A·B + beta·C` on raw strided matrices, on the calling thread.
///
/// # Safety
/// Pointers and strides must describe valid matrices; `c` must not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn strided<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    beta: T,
    c: *mut T,
    rsc: isize,
    csc: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let p = c.offset(i as isize * rsc + j as isize * csc);
                *p = if beta == T::ZERO { T::ZERO } else { *p * beta };
            }
        }
        return;
    }
    T::gemm_raw(m, k, n, T::ONE, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn parallel_split_gives_the_same_bits_as_one_call() {
        let mut rng = Rng::new(5);
        for &(m, k, n, at, bt) in
            &[(300, 70, 90, false, false), (40, 200, 500, true, false), (257, 129, 255, false, true)]
        {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let mut split = vec![0f32; m * n];
            matmul(&a, at, &b, bt, &mut split, m, k, n, false);
            let mut whole = vec![0f32; m * n];
            let (rsa, csa) = if at { (1, m as isize) } else { (k as isize, 1) };
            let (rsb, csb) = if bt { (1, k as isize) } else { (n as isize, 1) };
            unsafe {
                strided(m, k, n, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, 0.0, whole.as_mut_ptr(), n as isize, 1)
            };
            assert!(split == whole, "{m}x{k}x{n}");
            let naive: f64 = (0..k)
                .map(|p| {
                    let ai = if at { a[p * m] } else { a[p] } as f64;
                    let bj = if bt { b[p] } else { b[p * n] } as f64;
                    ai * bj
                })
                .sum();
            assert!((naive - whole[0] as f64).abs() < 1e-3);
        }
    }
}
