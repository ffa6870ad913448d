//! Megatron's ways for a cluster job to end on time: `--exit-interval N` (stop after every N-th
//! iteration), `--exit-duration-in-mins M` (stop once the run has trained M minutes) and
//! `--exit-signal-handler` (stop on SIGTERM, which Slurm sends ahead of the time limit). The duration
//! counts from the start of the process, as Megatron's does (`mark_process_start`, called by `main`). The step in
//! progress finishes, a checkpoint is saved and the process exits 0, so `--load` continues the run as if
//! it had never stopped. The ranks of a job agree (any rank's reason stops all of them, at the same
//! iteration): each step ends with a small all-reduce of every rank's reasons.

use super::data_parallel::DataParallel;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExitConditions {
    /// `--exit-interval`
    pub interval: Option<u64>,
    /// `--exit-duration-in-mins`
    pub duration_mins: Option<f64>,
    /// `--exit-signal-handler`
    pub on_sigterm: bool,
}

static SIGTERM_RECEIVED: AtomicBool = AtomicBool::new(false);
static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Remember now as the start of the process (the first call wins; `main` makes it first).
pub fn mark_process_start() {
    PROCESS_START.get_or_init(std::time::Instant::now);
}

/// Time since `mark_process_start` (or since the first call here, if it was never called).
fn since_process_start() -> Duration {
    PROCESS_START.get_or_init(std::time::Instant::now).elapsed()
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    SIGTERM_RECEIVED.store(true, Ordering::SeqCst);
}

const REASONS: [&str; 3] = ["--exit-interval", "--exit-duration-in-mins", "--exit-signal-handler (SIGTERM)"];

impl ExitConditions {
    pub fn any(&self) -> bool {
        self.interval.is_some() || self.duration_mins.is_some() || self.on_sigterm
    }

    /// Catch SIGTERM (when `--exit-signal-handler` is on) instead of dying of it.
    pub fn install(&self) {
        if self.on_sigterm {
            SIGTERM_RECEIVED.store(false, Ordering::SeqCst);
            let handler = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SAFETY: the handler only stores to an atomic.
            unsafe { libc::signal(libc::SIGTERM, handler) };
        }
    }

    /// After `iteration`: the reasons every rank agrees to stop for (those any rank has), or None. A
    /// collective when any condition is set: every rank calls it every step.
    pub fn agreed(&self, iteration: u64, dp: &DataParallel) -> Option<String> {
        if !self.any() {
            return None;
        }
        let elapsed = since_process_start();
        let mut flags = [
            f64::from(self.interval.is_some_and(|n| n > 0 && iteration % n == 0)),
            f64::from(self.duration_mins.is_some_and(|m| elapsed.as_secs_f64() / 60.0 >= m)),
            f64::from(self.on_sigterm && SIGTERM_RECEIVED.load(Ordering::SeqCst)),
        ];
        dp.sum_over_job(&mut flags);
        let reasons: Vec<&str> = REASONS.iter().zip(flags).filter(|(_, f)| *f > 0.0).map(|(r, _)| *r).collect();
        (!reasons.is_empty()).then(|| reasons.join(", "))
    }
}
