//! The guest's serial console, kept in the run directory: bounded, so a
//! guest that floods its console (a kernel printing in a loop) costs the
//! host at most [`MAX_BYTES`] of disk and a bounded write rate, whatever
//! it does. What is dropped is said once, in the log itself.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// The most a VM's console log may hold.
pub const MAX_BYTES: u64 = 4 << 20;
/// Sustained bytes per second, after a burst of [`BURST`].
const RATE: f64 = (64 << 10) as f64;
const BURST: f64 = (512 << 10) as f64;

const PANIC_MARK: &str = "Kernel panic - not syncing: ";

/// Why the guest kernel panicked, if the console log at `path` says it
/// did: the reason of its last panic line.
pub fn kernel_panic(path: &Path) -> Option<String> {
    let log = std::fs::read(path).ok()?;
    panic_reason(&String::from_utf8_lossy(&log))
}

fn panic_reason(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains(PANIC_MARK))?;
    let reason = &line[line.find(PANIC_MARK)? + PANIC_MARK.len()..];
    Some(reason.trim().to_string())
}

pub struct ConsoleLog<W: Write> {
    out: W,
    limits: Limits,
    written: u64,
    /// Bytes that may go out now (a token bucket).
    budget: f64,
    refilled: Instant,
    /// Bytes dropped for going too fast since output last flowed whole.
    dropped: u64,
    full: bool,
}

#[derive(Clone, Copy)]
struct Limits {
    max_bytes: u64,
    rate: f64,
    burst: f64,
}

impl<W: Write> ConsoleLog<W> {
    pub fn new(out: W) -> Self {
        Self::with_limits(
            out,
            Limits {
                max_bytes: MAX_BYTES,
                rate: RATE,
                burst: BURST,
            },
        )
    }

    fn with_limits(out: W, limits: Limits) -> Self {
        ConsoleLog {
            out,
            limits,
            written: 0,
            budget: limits.burst,
            refilled: Instant::now(),
            dropped: 0,
            full: false,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let secs = now.duration_since(self.refilled).as_secs_f64();
        self.budget = (self.budget + secs * self.limits.rate).min(self.limits.burst);
        self.refilled = now;
    }

    /// A note of ours in the log, outside the guest's budget (the room
    /// kept below the cap holds them).
    fn note(&mut self, text: &str) {
        if self.out.write_all(text.as_bytes()).is_ok() {
            self.written += text.len() as u64;
        }
    }
}

/// Room kept below the cap for our notes.
const NOTE_ROOM: u64 = 256;

impl<W: Write> Write for ConsoleLog<W> {
    /// Always takes all of `buf`: the guest's console never blocks on us.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.full {
            return Ok(buf.len());
        }
        self.refill();
        let room = self
            .limits
            .max_bytes
            .saturating_sub(self.written + NOTE_ROOM);
        let by_rate = self.budget.max(0.0) as u64;
        let take = (buf.len() as u64).min(by_rate).min(room) as usize;
        if take > 0 {
            self.out.write_all(&buf[..take])?;
            self.written += take as u64;
            self.budget -= take as f64;
        }
        if take == buf.len() {
            if self.dropped > 0 {
                let n = std::mem::take(&mut self.dropped);
                self.note(&format!(
                    "\n[bulkhead: {n} bytes of console output dropped: too fast]\n"
                ));
            }
        } else if room <= by_rate {
            self.full = true;
            self.note(&format!(
                "\n[bulkhead: console log full ({} bytes); the rest is dropped]\n",
                self.limits.max_bytes
            ));
        } else {
            if self.dropped == 0 {
                self.note("\n[bulkhead: console output too fast; dropping some]\n");
            }
            self.dropped += (buf.len() - take) as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_flood_is_rate_limited_and_says_so() {
        let mut log = ConsoleLog::new(Vec::new());
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..64 {
            assert_eq!(log.write(&chunk).unwrap(), chunk.len());
        }
        let kept = log.out.len() as f64;
        assert!(kept < BURST + RATE * 5.0, "{kept} bytes kept");
        let text = String::from_utf8_lossy(&log.out);
        assert!(text.contains("too fast"), "the drop is not noted");
    }

    #[test]
    fn the_log_stops_at_its_cap_and_says_so() {
        let limits = Limits {
            max_bytes: 1 << 20,
            rate: 1e12,
            burst: 1e12,
        };
        let mut log = ConsoleLog::with_limits(Vec::new(), limits);
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..64 {
            assert_eq!(log.write(&chunk).unwrap(), chunk.len());
        }
        assert!(
            log.out.len() as u64 <= limits.max_bytes,
            "{}",
            log.out.len()
        );
        let text = String::from_utf8_lossy(&log.out);
        assert!(text.contains("console log full"), "the cap is not noted");
    }

    #[test]
    fn quiet_output_passes_whole() {
        let mut log = ConsoleLog::new(Vec::new());
        for line in 0..1000 {
            log.write_all(format!("line {line}\n").as_bytes()).unwrap();
        }
        let text = String::from_utf8(log.out).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(!text.contains("bulkhead:"));
    }

    #[test]
    fn a_panic_line_gives_its_reason() {
        let log = "[    1.0] ok\n[   26.98] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\n[   27.01] Call Trace:\n";
        assert_eq!(
            panic_reason(log).as_deref(),
            Some("Attempted to kill init! exitcode=0x00000000")
        );
        assert_eq!(panic_reason("[ 1.0] all well\n"), None);
    }
}
