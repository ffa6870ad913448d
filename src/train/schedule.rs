//! Megatron's learning-rate schedule in samples (`--lr-warmup-samples`, `--lr-decay-samples`): linear
//! warmup from 0 to `lr`, then cosine decay to `min_lr` at `decay_samples`, constant after.

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_samples: u64,
    pub decay_samples: u64,
}

impl LrSchedule {
    /// The learning rate after `consumed` training samples.
    pub fn at(&self, consumed: u64) -> f64 {
        if self.warmup_samples > 0 && consumed <= self.warmup_samples {
            return self.lr * consumed as f64 / self.warmup_samples as f64;
        }
        if consumed >= self.decay_samples {
            return self.min_lr;
        }
        let span = (self.decay_samples - self.warmup_samples) as f64;
        let ratio = (consumed - self.warmup_samples) as f64 / span;
        let coeff = 0.5 * ((std::f64::consts::PI * ratio).cos() + 1.0);
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_then_floor() {
        let s = LrSchedule { lr: 1e-3, min_lr: 1e-4, warmup_samples: 100, decay_samples: 1100 };
        assert_eq!(s.at(0), 0.0);
        assert!((s.at(50) - 5e-4).abs() < 1e-15);
        assert!((s.at(100) - 1e-3).abs() < 1e-15);
        assert!((s.at(600) - 5.5e-4).abs() < 1e-12);
        assert_eq!(s.at(1100), 1e-4);
        assert_eq!(s.at(5000), 1e-4);
        let no_warmup = LrSchedule { warmup_samples: 0, ..s };
        assert!((no_warmup.at(0) - 1e-3).abs() < 1e-15);
    }
}
