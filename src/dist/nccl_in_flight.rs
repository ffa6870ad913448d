//! The NCCL collectives a GPU has queued and not yet finished, as the watchdog sees them. Each is
//! bracketed by two events on its stream: one recorded just before it, complete once the stream has
//! reached the collective, and one just after, complete once it has finished. A collective whose first
//! event is complete and whose second is not is running: waiting for its peers, or moving data. The
//! watchdog's check (`poll`) reports the earliest running one as a wait since the poll that first saw
//! it running, so `--distributed-timeout-minutes` measures the collective alone, not the kernels queued
//! before it, which a host wait for the step would include. Events are reused.

use super::watchdog::Polled;
use crate::backend::cuda::device::cuda_error;
use crate::Result;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct InFlight {
    ctx: Arc<CudaContext>,
    queued: Mutex<Queued>,
}

#[derive(Default)]
struct Queued {
    collectives: Vec<Collective>,
    spare: Vec<CudaEvent>,
}

struct Collective {
    what: &'static str,
    reached: CudaEvent,
    finished: CudaEvent,
    /// When a poll first found `reached` complete.
    running_since: Option<Instant>,
}

/// Whether an event's work is done. An error (a failed kernel before it) counts as done: the host
/// sees it at its next synchronisation and reports it with its context.
fn done(event: &CudaEvent) -> bool {
    event.try_is_complete().unwrap_or(true)
}

impl InFlight {
    pub fn new(ctx: Arc<CudaContext>) -> Self {
        Self { ctx, queued: Mutex::new(Queued::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self) -> Result<CudaEvent> {
        match self.lock().spare.pop() {
            Some(event) => Ok(event),
            None => self.ctx.new_event(None).map_err(|e| cuda_error("creating an event", e)),
        }
    }

    /// Queue a collective (`queue`, named `what`: "all-reduce", ...) on `stream` between the two events.
    pub fn bracket(&self, what: &'static str, stream: &CudaStream, queue: impl FnOnce() -> Result<()>) -> Result<()> {
        let (reached, finished) = (self.event()?, self.event()?);
        reached.record(stream).map_err(|e| cuda_error("recording an event", e))?;
        queue()?;
        finished.record(stream).map_err(|e| cuda_error("recording an event", e))?;
        self.lock().collectives.push(Collective { what, reached, finished, running_since: None });
        Ok(())
    }

    /// The earliest running collective as a wait, dropping (and keeping the events of) finished ones.
    pub fn poll(&self) -> Polled {
        let now = Instant::now();
        let mut queued = self.lock();
        let mut earliest: Option<(&'static str, Instant)> = None;
        let mut unfinished = Vec::with_capacity(queued.collectives.len());
        for mut c in std::mem::take(&mut queued.collectives) {
            if done(&c.finished) {
                queued.spare.extend([c.reached, c.finished]);
                continue;
            }
            if c.running_since.is_none() && done(&c.reached) {
                c.running_since = Some(now);
            }
            if let Some(since) = c.running_since {
                if earliest.is_none_or(|(_, first)| since < first) {
                    earliest = Some((c.what, since));
                }
            }
            unfinished.push(c);
        }
        queued.collectives = unfinished;
        match earliest {
            Some((what, since)) => Polled::Waiting { what: format!("NCCL {what}"), since },
            None => Polled::Fine,
        }
    }
}
