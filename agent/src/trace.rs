//! Per-container step times: how long each guest-side step took by the
//! agent's clock and how many page faults it cost, for the host's
//! `--timings` table. In the guest a syscall costs ~0.5 ms and a first
//! page touch ~6 ms, so both numbers matter.

use bulkhead_protocol::StepTime;

use crate::clock::boottime_ns;

/// Minor + major page faults of the calling process so far (one getrusage
/// syscall; 0 if it fails, which only makes a step look cheaper).
pub fn faults() -> u64 {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    (usage.ru_minflt as u64).saturating_add(usage.ru_majflt as u64)
}

/// A point in time and the fault count then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub ns: u64,
    pub faults: u64,
}

impl Mark {
    pub fn now() -> Mark {
        Mark {
            ns: boottime_ns(),
            faults: faults(),
        }
    }
}

/// The step from `from` to `to`, named `name`.
pub fn step(name: &str, from: Mark, to: Mark) -> StepTime {
    StepTime {
        name: name.to_string(),
        ns: to.ns.saturating_sub(from.ns),
        faults: to.faults.saturating_sub(from.faults),
    }
}

/// Steps measured one after another: each runs from the previous mark.
#[derive(Debug, Clone)]
pub struct Trace {
    last: Mark,
    steps: Vec<StepTime>,
}

impl Trace {
    pub fn start() -> Trace {
        Trace {
            last: Mark::now(),
            steps: Vec::new(),
        }
    }

    /// Ends the current step, named `name`, and starts the next.
    pub fn mark(&mut self, name: &str) {
        self.mark_at(name, Mark::now());
    }

    fn mark_at(&mut self, name: &str, at: Mark) {
        self.steps.push(step(name, self.last, at));
        self.last = at;
    }

    /// Adds a step measured elsewhere without moving the current mark.
    pub fn push(&mut self, step: StepTime) {
        self.steps.push(step);
    }

    /// Restarts the current step here (time since the last mark is not
    /// any step's, e.g. waiting for the host's next request).
    pub fn restart(&mut self) {
        self.restart_at(Mark::now());
    }

    /// Restarts the current step at `at`, a mark of the agent's.
    pub fn restart_at(&mut self, at: Mark) {
        self.last = at;
    }

    #[cfg(test)]
    pub fn last(&self) -> Mark {
        self.last
    }

    pub fn take(&mut self) -> Vec<StepTime> {
        std::mem::take(&mut self.steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_each_other() {
        let mut t = Trace::start();
        let first = t.last();
        // Touch fresh pages: the fault counter must see them.
        let v = vec![1u8; 4 << 20];
        std::hint::black_box(&v);
        t.mark("touch");
        t.mark("nothing");
        let steps = t.take();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].name, "touch");
        assert!(steps[0].faults > 0, "{steps:?}");
        assert!(t.last().ns >= first.ns + steps[0].ns);
        assert!(t.take().is_empty());
    }

    #[test]
    fn marks_never_go_backwards() {
        let later = Mark::now();
        let earlier = Mark::default();
        assert_eq!(step("x", later, earlier).ns, 0);
    }
}
