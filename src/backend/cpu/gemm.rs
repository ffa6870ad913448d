//! Row-major GEMM through matrixmultiply (packed, SIMD, threaded for large shapes); transposes are strides.

use crate::tensor::Float;

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
    unsafe {
        strided(m, k, n, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1);
    }
}

/// `C = A·B + beta·C` on raw strided matrices (attention heads are column blocks of wider rows).
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
