//! Per-op wall-clock profile, on when `RETRO_PROFILE_OPS=1`: every op's forward and every backward
//! closure is timed and summed by op name. `report()` renders the table (printed by `retro bench`).

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

static ENABLED: LazyLock<bool> = LazyLock::new(|| std::env::var("RETRO_PROFILE_OPS").is_ok_and(|v| v == "1"));
/// (op, phase) -> (calls, seconds)
type Stats = BTreeMap<(&'static str, &'static str), (u64, f64)>;
static STATS: Mutex<Stats> = Mutex::new(BTreeMap::new());

pub fn enabled() -> bool {
    *ENABLED
}

/// Run `f`, adding its duration to (`op`, `phase`) when profiling is on.
#[inline]
pub fn timed<R>(op: &'static str, phase: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let secs = start.elapsed().as_secs_f64();
    let mut stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = stats.entry((op, phase)).or_insert((0, 0.0));
    entry.0 += 1;
    entry.1 += secs;
    out
}

/// The table of (op, phase, calls, total ms, share), largest first; empty when profiling is off.
pub fn report() -> String {
    let stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
    let total: f64 = stats.values().map(|v| v.1).sum();
    let mut rows: Vec<_> = stats.iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let mut out = String::new();
    for ((op, phase), (calls, secs)) in rows {
        out +=
            &format!("{op:>16} {phase:<8} {calls:>8} calls {:>10.1} ms {:>5.1}%\n", secs * 1e3, 100.0 * secs / total);
    }
    out
}
