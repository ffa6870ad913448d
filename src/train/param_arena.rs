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
    /// The elements of the tensor-parallel split parameters (`with_split`), as at most two ranges.
    split: Vec<Range<usize>>,
}

impl ParamArena {
    /// The layout for parameters of these shapes (in model order).
    pub fn new<'a>(shapes: impl IntoIterator<Item = &'a [usize]> + Clone) -> Self {
        let shapes: Vec<&[usize]> = shapes.into_iter().collect();
        let split = vec![false; shapes.len()];
        Self::with_split(shapes, &split)
    }

    /// The layout with, inside each of the two decay groups, the parameters `split` says a
    /// tensor-parallel model splits first: their elements are then two ranges (`split_ranges`), so the
    /// gradient norm's two sums (Megatron's: split parameters over the group, whole ones once) are one
    /// reduction each. Without split parameters it is `new`'s layout.
    pub fn with_split<'a>(shapes: impl IntoIterator<Item = &'a [usize]>, split: &[bool]) -> Self {
        let numels: Vec<(usize, bool)> = shapes.into_iter().map(|s| (s.iter().product::<usize>(), decays(s))).collect();
        assert_eq!(numels.len(), split.len(), "one split flag per parameter");
        let mut ranges = vec![0..0; numels.len()];
        let (mut next, mut decay_end, mut split_ranges) = (0, 0, Vec::new());
        for group in [true, false] {
            for part in [true, false] {
                let start = next;
                for (i, &(n, d)) in numels.iter().enumerate() {
                    if d == group && split[i] == part {
                        ranges[i] = next..next + n;
                        next = (next + n).next_multiple_of(ALIGN);
                    }
                }
                if part && next > start {
                    split_ranges.push(start..next);
                }
            }
            if group {
                decay_end = next;
            }
        }
        Self { ranges, decay_end, len: next, split: split_ranges }
    }

    /// The arena's elements of the split parameters (padding included: zero), or of the others
    /// (`split` false): contiguous ranges in arena order.
    pub fn split_ranges(&self, split: bool) -> Vec<Range<usize>> {
        if split {
            return self.split.clone();
        }
        let mut rest = Vec::new();
        let mut at = 0;
        for r in self.split.iter().chain(std::iter::once(&(self.len..self.len))) {
            if r.start > at {
                rest.push(at..r.start);
            }
            at = r.end;
        }
        rest
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

impl ParamArena {
    /// Each parameter overlapping the arena's elements `window`: (parameter index, the overlap in
    /// arena coordinates).
    pub fn overlaps(&self, window: Range<usize>) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
        self.ranges.iter().enumerate().filter_map(move |(i, r)| {
            let (start, end) = (r.start.max(window.start), r.end.min(window.end));
            (start < end).then_some((i, start..end))
        })
    }

    /// The arena's elements `window` from the parameters' `parts` (zero for padding and past the end).
    pub fn gather_window<T: Copy + Default>(&self, parts: &[&[T]], window: Range<usize>) -> Vec<T> {
        let mut out = vec![T::default(); window.len()];
        for (i, overlap) in self.overlaps(window.clone()) {
            let from = overlap.start - self.ranges[i].start..overlap.end - self.ranges[i].start;
            out[overlap.start - window.start..overlap.end - window.start].copy_from_slice(&parts[i][from]);
        }
        out
    }

    /// Write `values`, the arena's elements `start..start + values.len()`, into the parameters' `parts`
    /// (padding dropped).
    pub fn scatter_window<T: Copy>(&self, parts: &mut [&mut [T]], start: usize, values: &[T]) {
        for (i, overlap) in self.overlaps(start..start + values.len()) {
            let to = overlap.start - self.ranges[i].start..overlap.end - self.ranges[i].start;
            parts[i][to].copy_from_slice(&values[overlap.start - start..overlap.end - start]);
        }
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

    #[test]
    fn split_parameters_are_two_ranges_and_the_rest_covers_the_others() {
        let shapes: Vec<Vec<usize>> = vec![vec![10], vec![3, 5], vec![7], vec![64, 2], vec![1], vec![100, 3]];
        let split = [true, false, false, true, true, false];
        let arena = ParamArena::with_split(shapes.iter().map(Vec::as_slice), &split);
        let (inside, outside) = (arena.split_ranges(true), arena.split_ranges(false));
        assert_eq!(inside.len(), 2, "{inside:?}");
        let covered =
            |ranges: &[Range<usize>], r: Range<usize>| ranges.iter().any(|c| c.start <= r.start && r.end <= c.end);
        for (i, &s) in split.iter().enumerate() {
            assert!(covered(if s { &inside } else { &outside }, arena.range(i)), "parameter {i}");
            assert!(!covered(if s { &outside } else { &inside }, arena.range(i)), "parameter {i} twice");
        }
        let total: usize = inside.iter().chain(&outside).map(|r| r.len()).sum();
        assert_eq!(total, arena.len(), "the two cover the arena");
        // Decaying parameters still come first, and without split flags the layout is `new`'s.
        assert!(arena.range(3).end <= arena.decay_end() && arena.range(0).start >= arena.decay_end());
        let plain = ParamArena::new(shapes.iter().map(Vec::as_slice));
        assert_eq!(ParamArena::with_split(shapes.iter().map(Vec::as_slice), &[false; 6]), plain);
        assert_eq!(plain.split_ranges(false), vec![0..plain.len()]);
    }

    #[test]
    fn windows_gather_and_scatter_what_the_whole_arena_holds() {
        let shapes: Vec<Vec<usize>> = vec![vec![10], vec![3, 5], vec![7]];
        let arena = ParamArena::new(shapes.iter().map(Vec::as_slice));
        let parts: Vec<Vec<u32>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (0..s.iter().product::<usize>() as u32).map(|x| x + 100 * i as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = parts.iter().map(Vec::as_slice).collect();
        let whole = arena.gather(&refs);
        for window in [0..7, 10..80, 60..200, 120..140] {
            let end = window.end.min(whole.len());
            let mut want = whole[window.start.min(end)..end].to_vec();
            want.resize(window.len(), 0);
            assert_eq!(arena.gather_window(&refs, window.clone()), want, "{window:?}");
        }
        let mut copy: Vec<Vec<u32>> = parts.iter().map(|p| vec![0; p.len()]).collect();
        let mut muts: Vec<&mut [u32]> = copy.iter_mut().map(Vec::as_mut_slice).collect();
        arena.scatter_window(&mut muts, 0, &whole[..70]);
        arena.scatter_window(&mut muts, 70, &whole[70..]);
        assert_eq!(copy, parts);
    }
}
