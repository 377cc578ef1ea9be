//! Warnings about what the guest or the host network did, at most one a
//! second: a guest that posts broken buffers in a loop, or a TAP that
//! refuses every frame, must not fill the VMM's log (or cost a write per
//! frame).

use std::fmt;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);

/// One rate-limited log stream.
#[derive(Debug, Default)]
pub(super) struct LogLimit {
    last: Option<Instant>,
    /// Messages dropped since the last one logged.
    suppressed: u64,
}

impl LogLimit {
    /// Logs `msg` at warning level unless one went out less than a
    /// second ago; the next one that does go out says how many did not.
    pub(super) fn warn(&mut self, msg: fmt::Arguments<'_>) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            self.suppressed += 1;
            return;
        }
        self.last = Some(now);
        match std::mem::take(&mut self.suppressed) {
            0 => log::warn!("virtio-net: {msg}"),
            n => log::warn!("virtio-net: {msg} ({n} similar messages suppressed)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_counted_not_logged() {
        let mut l = LogLimit::default();
        l.warn(format_args!("first"));
        for _ in 0..5 {
            l.warn(format_args!("again"));
        }
        assert_eq!(l.suppressed, 5);
        // Once the interval has passed, the count goes out and restarts.
        l.last = Some(Instant::now() - INTERVAL);
        l.warn(format_args!("later"));
        assert_eq!(l.suppressed, 0);
    }
}
