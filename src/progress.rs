//! Progress on stderr for long work (preprocess stages, index builds): a bar over a known count, or a
//! spinner with the elapsed time for a step of unknown length. Hidden when `show` is false (stderr is not
//! a terminal), so logs and tests see only the results.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// A bar over `len` items, labelled `what`, with its rate and time left.
pub fn bar(len: usize, what: &str, show: bool) -> ProgressBar {
    let b = if show { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    b.set_style(
        ProgressStyle::with_template(&format!("{what:>8} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    b
}

/// A spinner saying `what` is under way and for how long.
pub fn spinner(what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let s = ProgressBar::new_spinner();
    s.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
    s.set_message(what.to_string());
    s.enable_steady_tick(Duration::from_millis(200));
    s
}
