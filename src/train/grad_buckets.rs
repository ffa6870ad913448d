//! The buckets of `--overlap-grad-reduce` on a GPU: contiguous ranges of the gradient arena, each of
//! whole parameters and at most `--ddp-bucket-size` elements (a larger parameter is a bucket of its
//! own), so a bucket is one NCCL all-reduce of one range. During the step's last backward each
//! parameter's gradient is added into the arena as the backward completes it; the bucket whose last
//! parameter that was starts its all-reduce on the communication stream (`DeviceOptimizer`), while the
//! compute stream goes on with the backward. Buckets start in the order their parameters complete,
//! which is the same on every rank (every rank runs the same graph), as NCCL requires; `rest` starts the
//! ones the backward never completed, in bucket order. This file is the bookkeeping only (no GPU).

use super::param_arena::ParamArena;
use std::ops::Range;

pub struct GradBuckets {
    ranges: Vec<Range<usize>>,
    bucket_of: Vec<usize>,
    /// Parameters each bucket awaits in this backward, and whether its reduction has started.
    missing: Vec<usize>,
    size: Vec<usize>,
    started: Vec<bool>,
}

impl GradBuckets {
    /// Buckets over `arena` in arena order. A bucket's range runs from its first parameter's start to
    /// the next bucket's (the alignment padding between parameters is zero and reduces to zero).
    pub fn new(arena: &ParamArena, bucket_size: usize) -> Self {
        let mut order: Vec<usize> = (0..arena.num_params()).collect();
        order.sort_by_key(|&i| arena.range(i).start);
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut elements = 0;
        for i in order {
            let n = arena.range(i).len();
            match groups.last_mut() {
                Some(group) if elements + n <= bucket_size => {
                    group.push(i);
                    elements += n;
                }
                _ => {
                    groups.push(vec![i]);
                    elements = n;
                }
            }
        }
        let starts: Vec<usize> = groups.iter().map(|g| arena.range(g[0]).start).collect();
        let ranges: Vec<Range<usize>> =
            (0..groups.len()).map(|b| starts[b]..starts.get(b + 1).copied().unwrap_or(arena.len())).collect();
        let mut bucket_of = vec![0; arena.num_params()];
        for (b, group) in groups.iter().enumerate() {
            group.iter().for_each(|&i| bucket_of[i] = b);
        }
        let size: Vec<usize> = groups.iter().map(Vec::len).collect();
        Self { missing: size.clone(), started: vec![false; ranges.len()], size, ranges, bucket_of }
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bucket `b`'s elements of the arena.
    pub fn range(&self, b: usize) -> Range<usize> {
        self.ranges[b].clone()
    }

    /// A new backward: every bucket awaits all its parameters again.
    pub fn begin(&mut self) {
        self.missing.clone_from(&self.size);
        self.started.iter_mut().for_each(|s| *s = false);
    }

    /// Whether parameter `i`'s bucket has started reducing (its gradient must not change any more).
    pub fn is_started(&self, i: usize) -> bool {
        self.started[self.bucket_of[i]]
    }

    /// Parameter `i`'s gradient is complete: the bucket to start now, if `i` was its last.
    pub fn complete(&mut self, i: usize) -> Option<usize> {
        let b = self.bucket_of[i];
        self.missing[b] -= 1;
        (self.missing[b] == 0).then(|| {
            self.started[b] = true;
            b
        })
    }

    /// The buckets not started yet, in bucket order (now marked started).
    pub fn rest(&mut self) -> Vec<usize> {
        let rest: Vec<usize> = (0..self.len()).filter(|&b| !self.started[b]).collect();
        rest.iter().for_each(|&b| self.started[b] = true);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_arena_with_whole_parameters_in_arena_order() {
        // Arena order: the decaying [3, 5], [64, 2], [100, 3] first, then [10], [7], [1].
        let shapes: Vec<Vec<usize>> = vec![vec![10], vec![3, 5], vec![7], vec![64, 2], vec![1], vec![100, 3]];
        let arena = ParamArena::new(shapes.iter().map(Vec::as_slice));
        let buckets = GradBuckets::new(&arena, 200);
        let ranges: Vec<Range<usize>> = (0..buckets.len()).map(|b| buckets.range(b)).collect();
        // [3,5] + [64,2] = 143 <= 200; [100,3] = 300 alone; the rest (10 + 7 + 1) together.
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start), "contiguous: {ranges:?}");
        assert_eq!(ranges.last().unwrap().end, arena.len());
        for i in 0..shapes.len() {
            let (r, b) = (arena.range(i), buckets.bucket_of[i]);
            assert!(ranges[b].start <= r.start && r.end <= ranges[b].end, "parameter {i} inside its bucket");
        }
        assert_eq!(buckets.bucket_of, vec![2, 0, 2, 0, 2, 1]);
    }

    #[test]
    fn a_bucket_starts_when_its_last_parameter_completes_and_rest_starts_the_others_once() {
        let shapes: Vec<Vec<usize>> = vec![vec![10], vec![3, 5], vec![7], vec![64, 2], vec![1], vec![100, 3]];
        let arena = ParamArena::new(shapes.iter().map(Vec::as_slice));
        let mut buckets = GradBuckets::new(&arena, 200);
        for _ in 0..2 {
            buckets.begin();
            assert_eq!(buckets.complete(5), Some(1));
            assert!(buckets.is_started(5) && !buckets.is_started(3));
            assert_eq!(buckets.complete(3), None);
            assert_eq!(buckets.complete(1), Some(0));
            assert_eq!(buckets.complete(4), None); // bucket 2 never completes: parameters 0 and 2 unreached
            assert_eq!(buckets.rest(), vec![2]);
            assert_eq!(buckets.rest(), Vec::<usize>::new());
        }
    }
}
