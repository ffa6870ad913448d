//! The k best (score, id) candidates of a stream, larger score first and the smaller id on equal scores:
//! the selection every index's search feeds. Candidates at or above the current floor (the k-th best
//! score so far) go into a buffer of 2k; when it fills, a linear-time selection keeps the k best and
//! raises the floor. Each candidate costs one compare, or an append: O(1) amortised where a binary heap
//! pays log k per accepted candidate (at k = 200, most of a flat search's selection time). The result is
//! the same whatever order the candidates come in: only candidates strictly worse than k others are
//! dropped.

use std::cmp::Ordering;

/// (score, id), ordered best first: higher score, then lower id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry(pub f32, pub i64);

impl Eq for Entry {}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0).then(self.1.cmp(&o.1))
    }
}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

pub struct TopK {
    k: usize,
    /// Candidates below this score cannot be among the k best.
    floor: f32,
    items: Vec<Entry>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self { k, floor: f32::NEG_INFINITY, items: Vec::with_capacity(2 * k.max(1)) }
    }

    /// Offer one candidate.
    #[inline]
    pub fn push(&mut self, score: f32, id: i64) {
        if score < self.floor || self.k == 0 {
            return;
        }
        self.items.push(Entry(score, id));
        if self.items.len() == 2 * self.k {
            self.shrink();
        }
    }

    /// Offer `scores` of database ids x0, x0 + 1, ...: runs of 16 wholly below the floor (most of them,
    /// once the floor has risen) are skipped after one vectorised compare.
    pub fn push_scores(&mut self, scores: &[f32], x0: usize) {
        crate::backend::cpu::simd::with_avx2(|| self.scan(scores, |j| (x0 + j) as i64))
    }

    /// Offer `scores` of database ids `ids` (as many), skipping as `push_scores` does.
    pub fn push_scores_of(&mut self, scores: &[f32], ids: &[i64]) {
        debug_assert_eq!(scores.len(), ids.len());
        crate::backend::cpu::simd::with_avx2(|| self.scan(scores, |j| ids[j]))
    }

    #[inline]
    fn scan(&mut self, scores: &[f32], id: impl Fn(usize) -> i64) {
        for (r, run) in scores.chunks(16).enumerate() {
            let floor = self.floor;
            if !run.iter().fold(false, |any, &s| any | (s >= floor)) {
                continue;
            }
            for (j, &s) in run.iter().enumerate() {
                if s >= self.floor {
                    self.push(s, id(16 * r + j));
                }
            }
        }
    }

    /// Keep the k best; the k-th best's score becomes the floor.
    fn shrink(&mut self) {
        let k = self.k;
        self.items.select_nth_unstable(k - 1);
        self.items.truncate(k);
        self.floor = self.items.iter().map(|e| e.0).fold(f32::INFINITY, f32::min);
    }

    /// The (at most) k best, best first.
    pub fn into_sorted(mut self) -> Vec<Entry> {
        if self.items.len() > self.k {
            self.shrink();
        }
        self.items.sort_unstable();
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn keeps_the_k_best_whatever_the_order_ties_by_id() {
        let mut rng = Rng::new(4);
        // Few distinct scores, so ties are everywhere.
        let scores: Vec<f32> = (0..5000).map(|_| rng.below(40) as f32).collect();
        for k in [1, 7, 200, 6000] {
            let mut want: Vec<Entry> = scores.iter().enumerate().map(|(i, &s)| Entry(s, i as i64)).collect();
            want.sort_unstable();
            want.truncate(k);
            let mut forward = TopK::new(k);
            forward.push_scores(&scores, 0);
            let mut backward = TopK::new(k);
            for (i, &s) in scores.iter().enumerate().rev() {
                backward.push(s, i as i64);
            }
            assert_eq!(forward.into_sorted(), want, "k {k}");
            assert_eq!(backward.into_sorted(), want, "k {k} (reversed)");
        }
        assert!(TopK::new(0).into_sorted().is_empty());
    }
}
