//! Megatron's `--distributed-timeout-minutes`: a thread that ends the job when this rank has waited
//! too long for the others. A rank that dies is seen by `mpirun`, which ends the job; a rank that hangs
//! or is stopped (a stuck driver, a paused process, a lost node whose connections stay open) is not,
//! and every other rank would wait in its next collective forever. So each place the host blocks on its
//! peers (every blocking MPI collective in `world.rs`) marks the wait (`waiting`), and the watchdog,
//! polling a few times a second, aborts once one wait has lasted the timeout. It also polls registered
//! checks, which report an error (NCCL's asynchronous errors: the watchdog aborts on the first) or a
//! wait the host does not block in (a GPU's NCCL collective that has started and not finished,
//! `nccl_in_flight.rs`), timed as a marked wait is. So on a GPU only the time a collective waits for its
//! peers counts, not the kernels queued before it. Aborting prints the rank and what it was waiting for
//! first, then runs the registered aborts (`ncclCommAbort`, which frees a stream stuck in a collective) on a thread of their
//! own for at most `ABORT_DEADLINE` (an abort can itself hang while a peer on the node is stopped), and
//! ends the process with exit status 1, so `mpirun` ends the other ranks.
//!
//! `paused` exempts a phase where ranks legitimately wait long for one of them (rank 0 writing a
//! checkpoint). The process has at most one watchdog (`install`); without one, `waiting` costs nothing
//! but a load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the registered aborts may take before the process exits without them.
pub const ABORT_DEADLINE: Duration = Duration::from_secs(5);

/// What a check found when polled.
pub enum Polled {
    Fine,
    /// Ends the job with this message.
    Failed(String),
    /// A wait for the other ranks in progress since `since` (the earliest, if several), which times out
    /// as a marked one does.
    Waiting {
        what: String,
        since: Instant,
    },
}

/// A check polled with the waits. `abort` runs before the process exits (under the registrations'
/// lock: a `Registered` being dropped meanwhile waits for it).
pub struct Check {
    pub poll: Box<dyn FnMut() -> Polled + Send>,
    pub abort: Box<dyn FnMut() + Send>,
}

pub struct Watchdog {
    timeout: Duration,
    /// Names the process in the message ("rank 3 of 8").
    label: String,
    /// The wait in progress, if any: what and since when (the outermost of nested waits).
    wait: Mutex<Option<(String, Instant)>>,
    checks: Mutex<Vec<(u64, Check)>>,
    next_check: AtomicU64,
    /// What ending the job does (tests observe it instead of exiting).
    expire: Box<dyn Fn(String) + Send + Sync>,
    expired: AtomicBool,
    /// `paused` guards alive: waits do not count while any is.
    pauses: AtomicU64,
    /// When the last pause ended: a wait counts from then at the earliest.
    resumed: Mutex<Option<Instant>>,
}

/// Exempts waits from the timeout until dropped (`Watchdog::paused`).
pub struct Paused<'a>(Option<&'a Watchdog>);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.0 {
            // Set before the count drops, so no poll sees the pause over and the wait's old start.
            *w.resumed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            w.pauses.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Marks a wait until dropped (`Watchdog::waiting`).
pub struct Waiting<'a> {
    watchdog: Option<&'a Watchdog>,
    outermost: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let (Some(w), true) = (self.watchdog, self.outermost) {
            *w.wait.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// Removes its check when dropped (before what the check reads is freed).
pub struct Registered {
    watchdog: Arc<Watchdog>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.watchdog.checks.lock().unwrap_or_else(|p| p.into_inner()).retain(|(id, _)| *id != self.id);
    }
}

impl Watchdog {
    /// A watchdog whose thread calls `expire` with the message once a wait lasts `timeout` or a check
    /// reports an error (once; the thread then stops).
    pub fn start(timeout: Duration, label: String, expire: impl Fn(String) + Send + Sync + 'static) -> Arc<Self> {
        let watchdog = Arc::new(Self {
            timeout,
            label,
            wait: Mutex::new(None),
            checks: Mutex::new(Vec::new()),
            next_check: AtomicU64::new(0),
            expire: Box::new(expire),
            expired: AtomicBool::new(false),
            pauses: AtomicU64::new(0),
            resumed: Mutex::new(None),
        });
        let polled = watchdog.clone();
        let period = (timeout / 20).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("retro-watchdog".into())
            .spawn(move || {
                while !polled.expired.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    if let Some(message) = polled.poll() {
                        polled.end(message);
                    }
                }
            })
            .expect("starting the watchdog thread");
        watchdog
    }

    /// Mark a wait for the other ranks (`what`: "MPI all-reduce", ...) until the guard drops.
    pub fn waiting(&self, what: &str) -> Waiting<'_> {
        let mut wait = self.wait.lock().unwrap_or_else(|p| p.into_inner());
        let outermost = wait.is_none();
        if outermost {
            *wait = Some((what.to_string(), Instant::now()));
        }
        Waiting { watchdog: Some(self), outermost }
    }

    /// No wait counts until the guard drops (a phase where the ranks wait for one of them on purpose).
    pub fn paused(&self) -> Paused<'_> {
        self.pauses.fetch_add(1, Ordering::Relaxed);
        Paused(Some(self))
    }

    /// Poll `check` with the waits until the returned handle drops.
    pub fn register(self: &Arc<Self>, check: Check) -> Registered {
        let id = self.next_check.fetch_add(1, Ordering::Relaxed);
        self.checks.lock().unwrap_or_else(|p| p.into_inner()).push((id, check));
        Registered { watchdog: self.clone(), id }
    }

    /// The message that ends the job now, if any.
    fn poll(&self) -> Option<String> {
        // The wait that started first: the marked one, or one a check reports.
        let mut earliest = self.wait.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (_, check) in self.checks.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            match (check.poll)() {
                Polled::Fine => {}
                Polled::Failed(error) => return Some(format!("{}: {error}", self.label)),
                Polled::Waiting { what, since } => {
                    if earliest.as_ref().is_none_or(|(_, first)| since < *first) {
                        earliest = Some((what, since));
                    }
                }
            }
        }
        if self.pauses.load(Ordering::Acquire) > 0 {
            return None;
        }
        let (what, since) = earliest?;
        let resumed = *self.resumed.lock().unwrap_or_else(|p| p.into_inner());
        let waited = resumed.map_or(since, |resumed| since.max(resumed)).elapsed();
        (waited >= self.timeout).then(|| {
            format!(
                "{}: waited {:.1} s in {what} for the other ranks (--distributed-timeout-minutes is {:.1} s): \
                 another rank is stopped, hung or unreachable; ending the job",
                self.label,
                waited.as_secs_f64(),
                self.timeout.as_secs_f64()
            )
        })
    }

    fn end(self: &Arc<Self>, message: String) {
        if self.expired.swap(true, Ordering::Relaxed) {
            return;
        }
        eprintln!("retro: {message}");
        let (done, aborted) = std::sync::mpsc::channel();
        let me = self.clone();
        let aborting = std::thread::Builder::new().name("retro-watchdog-abort".into()).spawn(move || {
            for (_, check) in me.checks.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
                (check.abort)();
            }
            let _ = done.send(());
        });
        if aborting.is_ok() && aborted.recv_timeout(ABORT_DEADLINE).is_err() {
            eprintln!("retro: the communicators' aborts did not finish in {ABORT_DEADLINE:?}; exiting without them");
        }
        (self.expire)(message);
    }
}

static INSTALLED: OnceLock<Arc<Watchdog>> = OnceLock::new();

/// Make `watchdog` the process's: the one `waiting` marks and NCCL communicators register with. Only the
/// first call installs one; later ones are refused.
pub fn install(watchdog: Arc<Watchdog>) -> crate::Result<()> {
    INSTALLED.set(watchdog).map_err(|_| crate::Error::msg("a watchdog is already installed in this process"))
}

/// The process's watchdog that exits 1 once it has printed the message (so `mpirun` ends the other ranks).
pub fn install_exiting(timeout: Duration, label: String) -> crate::Result<()> {
    install(Watchdog::start(timeout, label, |_message| {
        // SAFETY: ends the process at once; the main thread is blocked in the wait that timed out, so
        // no exit handler may run (one could block on the same communicator).
        unsafe { libc::_exit(1) }
    }))
}

/// The installed watchdog, if any.
pub fn installed() -> Option<&'static Arc<Watchdog>> {
    INSTALLED.get()
}

/// Exempt the waits from the process's watchdog until the guard drops (nothing without one).
pub fn paused() -> Paused<'static> {
    match INSTALLED.get() {
        Some(w) => w.paused(),
        None => Paused(None),
    }
}

/// Mark a wait for the other ranks on the process's watchdog (nothing without one).
pub fn waiting(what: &str) -> Waiting<'static> {
    match INSTALLED.get() {
        Some(w) => w.waiting(what),
        None => Waiting { watchdog: None, outermost: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn watched(timeout_ms: u64) -> (Arc<Watchdog>, mpsc::Receiver<String>) {
        let (send, recv) = mpsc::channel();
        let send = Mutex::new(send);
        let w = Watchdog::start(Duration::from_millis(timeout_ms), "rank 1 of 2".into(), move |m| {
            send.lock().unwrap().send(m).unwrap();
        });
        (w, recv)
    }

    #[test]
    fn a_wait_past_the_timeout_ends_the_job_naming_the_rank_and_the_wait() {
        let (w, ended) = watched(100);
        let _wait = w.waiting("MPI all-reduce");
        let message = ended.recv_timeout(Duration::from_secs(10)).expect("the watchdog fired");
        assert!(message.starts_with("rank 1 of 2: waited"), "{message}");
        assert!(message.contains("in MPI all-reduce"), "{message}");
        assert!(message.contains("--distributed-timeout-minutes"), "{message}");
        assert!(ended.recv_timeout(Duration::from_millis(300)).is_err(), "it fires once");
    }

    #[test]
    fn waits_shorter_than_the_timeout_and_time_between_waits_do_not_count() {
        let (w, ended) = watched(300);
        for _ in 0..10 {
            let _wait = w.waiting("MPI broadcast");
            std::thread::sleep(Duration::from_millis(50));
            let _inner = w.waiting("nested"); // the outer wait's start stands
            drop(_inner);
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(600)); // no wait in progress
        assert!(ended.try_recv().is_err(), "fired without a long wait");
    }

    #[test]
    fn a_check_reporting_an_error_runs_the_aborts_and_ends_the_job() {
        let (w, ended) = watched(60_000);
        let aborted = Arc::new(AtomicBool::new(false));
        let flag = aborted.clone();
        let polls = Arc::new(Mutex::new(0));
        let count = polls.clone();
        let _check = w.register(Check {
            poll: Box::new(move || {
                let mut n = count.lock().unwrap();
                *n += 1;
                match *n {
                    3 => Polled::Failed("NCCL: remote process exited".to_string()),
                    _ => Polled::Fine,
                }
            }),
            abort: Box::new(move || flag.store(true, Ordering::Relaxed)),
        });
        let message = ended.recv_timeout(Duration::from_secs(30)).expect("the check's error ended the job");
        assert_eq!(message, "rank 1 of 2: NCCL: remote process exited");
        assert!(aborted.load(Ordering::Relaxed), "the registered abort ran first");
    }

    #[test]
    fn an_abort_that_hangs_does_not_keep_the_job_from_ending() {
        let (w, ended) = watched(60_000);
        let _check = w.register(Check {
            poll: Box::new(|| Polled::Failed("NCCL: remote process exited".into())),
            abort: Box::new(|| std::thread::sleep(Duration::from_secs(3600))),
        });
        let message = ended.recv_timeout(ABORT_DEADLINE + Duration::from_secs(10)).expect("ended despite the abort");
        assert!(message.ends_with("remote process exited"), "{message}");
        // Dropping it would wait for the hung abort (it holds the registrations); a real process has exited.
        std::mem::forget(_check);
    }

    #[test]
    fn waits_while_paused_do_not_count() {
        let (w, ended) = watched(100);
        let pause = w.paused();
        let _wait = w.waiting("MPI barrier");
        std::thread::sleep(Duration::from_millis(400));
        assert!(ended.try_recv().is_err(), "fired while paused");
        drop(pause); // the wait counts from here
        let message = ended.recv_timeout(Duration::from_secs(10)).expect("fired after the pause");
        assert!(message.contains("in MPI barrier"), "{message}");
    }

    #[test]
    fn a_dropped_registration_is_no_longer_polled() {
        let (w, ended) = watched(60_000);
        let check = w.register(Check { poll: Box::new(|| Polled::Failed("stale".into())), abort: Box::new(|| {}) });
        drop(check); // before the first poll (a second after the start, at this timeout)
        std::thread::sleep(Duration::from_millis(200));
        assert!(ended.try_recv().is_err(), "a removed check fired");
    }

    /// A check's `Polled::Waiting` (a GPU collective in progress): `since` from the check's own wait.
    fn a_wait_a_check_reports(since: Arc<Mutex<Option<Instant>>>) -> Check {
        Check {
            poll: Box::new(move || match *since.lock().unwrap() {
                Some(since) => Polled::Waiting { what: "NCCL all-reduce".into(), since },
                None => Polled::Fine,
            }),
            abort: Box::new(|| {}),
        }
    }

    #[test]
    fn a_wait_a_check_reports_times_out_as_a_marked_one() {
        let (w, ended) = watched(200);
        let since = Arc::new(Mutex::new(None));
        let _check = w.register(a_wait_a_check_reports(since.clone()));
        std::thread::sleep(Duration::from_millis(500)); // no wait reported
        assert!(ended.try_recv().is_err(), "fired without a wait");
        *since.lock().unwrap() = Some(Instant::now());
        let message = ended.recv_timeout(Duration::from_secs(10)).expect("the reported wait timed out");
        assert!(message.starts_with("rank 1 of 2: waited"), "{message}");
        assert!(message.contains("in NCCL all-reduce"), "{message}");
    }

    #[test]
    fn a_reported_wait_counts_from_the_end_of_a_pause() {
        let (w, ended) = watched(300);
        let since = Arc::new(Mutex::new(Some(Instant::now())));
        let pause = w.paused();
        let _check = w.register(a_wait_a_check_reports(since));
        std::thread::sleep(Duration::from_millis(600)); // past the timeout, while paused
        drop(pause);
        let resumed = Instant::now();
        ended.recv_timeout(Duration::from_secs(10)).expect("fired after the pause");
        assert!(resumed.elapsed() >= Duration::from_millis(250), "counted the paused time: {:?}", resumed.elapsed());
    }
}
