//! Where each parameter lives in the optimizer's flat arenas (master weights, their bf16 copies,
//! gradients and both AdamW moments share this layout): one buffer per arena, so one kernel launch
//! updates the whole model and one reduction gives the global gradient norm. The parameters that decay
//! (`adamw::decays`) come first, in model order, then the rest: the update kernel tells them apart by
//! one index. Every parameter starts at a multiple of `ALIGN` elements (the vector loads and cuBLASLt
//! want 16-byte aligned operands); the padding is zero in every arena and stays zero.

use super::adamw::decays;
use std::ops::Range;

/// Elements between parameter starts are rounded up to this (256 bytes of f32, 128 of bf16).
pub const ALIGN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamArena {
    ranges: Vec<Range<usize>>,
    decay_end: usize,
    len: usize,
}

impl ParamArena {
    /// The layout for parameters of these shapes (in model order).
    pub fn new<'a>(shapes: impl IntoIterator<Item = &'a [usize]> + Clone) -> Self {
        let numels: Vec<(usize, bool)> = shapes.into_iter().map(|s| (s.iter().product::<usize>(), decays(s))).collect();
        let mut ranges = vec![0..0; numels.len()];
        let mut next = 0;
        let mut decay_end = 0;
        for group in [true, false] {
            for (i, &(n, d)) in numels.iter().enumerate() {
                if d == group {
                    ranges[i] = next..next + n;
                    next = (next + n).next_multiple_of(ALIGN);
                }
            }
            if group {
                decay_end = next;
            }
        }
        Self { ranges, decay_end, len: next }
    }

    /// Parameter `i`'s elements.
    pub fn range(&self, i: usize) -> Range<usize> {
        self.ranges[i].clone()
    }

    pub fn num_params(&self) -> usize {
        self.ranges.len()
    }

    /// Elements of each arena, padding included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements `[0, decay_end)` belong to parameters that decay.
    pub fn decay_end(&self) -> usize {
        self.decay_end
    }

    /// One arena on the host from per-parameter values (in model order), zero in the padding.
    pub fn gather<T: Copy + Default>(&self, parts: &[&[T]]) -> Vec<T> {
        assert_eq!(parts.len(), self.ranges.len(), "one slice per parameter");
        let mut flat = vec![T::default(); self.len];
        for (r, part) in self.ranges.iter().zip(parts) {
            flat[r.clone()].copy_from_slice(part);
        }
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decaying_parameters_first_each_aligned_and_disjoint() {
        let shapes: Vec<Vec<usize>> = vec![vec![10], vec![3, 5], vec![7], vec![64, 2], vec![1]];
        let arena = ParamArena::new(shapes.iter().map(Vec::as_slice));
        assert_eq!(arena.range(1), 0..15);
        assert_eq!(arena.range(3), 64..192);
        assert_eq!(arena.decay_end(), 192);
        assert_eq!(arena.range(0), 192..202);
        assert_eq!(arena.range(2), 256..263);
        assert_eq!(arena.range(4), 320..321);
        assert_eq!(arena.len(), 384);
        let parts: Vec<Vec<u32>> =
            shapes.iter().enumerate().map(|(i, s)| vec![i as u32 + 1; s.iter().product()]).collect();
        let flat = arena.gather(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        for i in 0..shapes.len() {
            assert!(flat[arena.range(i)].iter().all(|&x| x == i as u32 + 1));
        }
        let filled: usize = (0..shapes.len()).map(|i| arena.range(i).len()).sum();
        assert_eq!(flat.iter().filter(|&&x| x == 0).count(), arena.len() - filled, "padding is zero");
    }
}
