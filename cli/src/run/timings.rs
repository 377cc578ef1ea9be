//! Phase timestamps of one run, for `--timings` and `bench`.

use std::time::Instant;

use super::record;

/// Phase timestamps of one run.
pub struct Timings {
    pub start: Instant,
    marks: Vec<(&'static str, Instant)>,
}

impl Timings {
    pub fn new() -> Self {
        Timings {
            start: Instant::now(),
            marks: Vec::new(),
        }
    }

    pub fn mark(&mut self, phase: &'static str) {
        self.marks.push((phase, Instant::now()));
    }

    pub fn record(
        &self,
        run_started: Option<Instant>,
        guest: Option<(bulkhead_protocol::GuestTimes, Instant)>,
        memory: Option<record::MemorySample>,
    ) -> record::RunRecord {
        record::RunRecord {
            start_ns: record::instant_ns(self.start),
            marks: self
                .marks
                .iter()
                .map(|(name, at)| (name.to_string(), record::instant_ns(*at)))
                .collect(),
            first_kvm_run_ns: run_started.map(record::instant_ns),
            guest: guest.map(|(g, _)| g),
            started_reply_ns: guest.map(|(_, at)| record::instant_ns(at)),
            memory,
            boot: None,
            template_built: false,
        }
    }

    pub fn report(&self) {
        let mut prev = self.start;
        for (phase, at) in &self.marks {
            eprintln!(
                "bulkhead: timing: {phase:<16} {:>9.1} ms",
                at.duration_since(prev).as_secs_f64() * 1e3
            );
            prev = *at;
        }
        eprintln!(
            "bulkhead: timing: {:<16} {:>9.1} ms",
            "total",
            prev.duration_since(self.start).as_secs_f64() * 1e3
        );
    }
}
