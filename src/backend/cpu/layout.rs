//! Data movement along one dimension of a tensor viewed as [outer, dim, inner]: `shift_rows` (the CPU
//! twin of kernels/residual.cu's shift_rows, along any dimension) and `concat`.

use crate::tensor::Element;

/// out[o, j, :] = x[o, j + offset, :] when 0 <= j + offset < dim, else zero; j in 0..len.
/// A non-negative offset with len <= dim − offset is a slice; a negative offset or a longer len pads.
pub fn shift_rows<T: Element + Default>(
    x: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    offset: isize,
    len: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); outer * len * inner];
    for o in 0..outer {
        for j in 0..len {
            let src = j as isize + offset;
            if src >= 0 && (src as usize) < dim {
                let s = (o * dim + src as usize) * inner;
                let d = (o * len + j) * inner;
                out[d..d + inner].copy_from_slice(&x[s..s + inner]);
            }
        }
    }
    out
}

/// Concatenate parts [outer, dim_i, inner] along the middle dimension.
pub fn concat<T: Element>(parts: &[&[T]], dims: &[usize], outer: usize, inner: usize) -> Vec<T> {
    let total: usize = dims.iter().sum();
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (p, &d) in parts.iter().zip(dims) {
            out.extend_from_slice(&p[o * d * inner..(o + 1) * d * inner]);
        }
    }
    out
}
