//! The guest's serial console, kept in the run directory: bounded, so a
//! guest that floods its console (a kernel printing in a loop) costs the
//! host at most [`MAX_BYTES`] of disk and a bounded write rate, whatever
//! it does. What is dropped is said once, in the log itself.

use std::io::Write;
use std::time::Instant;

/// The most a VM's console log may hold.
pub const MAX_BYTES: u64 = 4 << 20;
/// Sustained bytes per second, after a burst of [`BURST`].
const RATE: f64 = (64 << 10) as f64;
const BURST: f64 = (512 << 10) as f64;

pub struct ConsoleLog<W: Write> {
    out: W,
    written: u64,
    /// Bytes that may go out now (a token bucket).
    budget: f64,
    refilled: Instant,
    dropped: u64,
    full: bool,
}

impl<W: Write> ConsoleLog<W> {
    pub fn new(out: W) -> Self {
        ConsoleLog {
            out,
            written: 0,
            budget: BURST,
            refilled: Instant::now(),
            dropped: 0,
            full: false,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let secs = now.duration_since(self.refilled).as_secs_f64();
        self.budget = (self.budget + secs * RATE).min(BURST);
        self.refilled = now;
    }

    fn note(&mut self, text: &str) {
        if self.out.write_all(text.as_bytes()).is_ok() {
            self.written += text.len() as u64;
        }
    }
}

impl<W: Write> Write for ConsoleLog<W> {
    /// Always takes all of `buf`: the guest's console never blocks on us.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.full {
            return Ok(buf.len());
        }
        self.refill();
        let room = MAX_BYTES.saturating_sub(self.written + 128);
        let allowed = (self.budget.max(0.0) as u64).min(room) as usize;
        let take = buf.len().min(allowed);
        if take < buf.len() {
            self.dropped += (buf.len() - take) as u64;
        } else if self.dropped > 0 {
            let n = std::mem::take(&mut self.dropped);
            self.note(&format!(
                "\n[bulkhead: {n} bytes of console output dropped: too fast]\n"
            ));
        }
        if take > 0 {
            self.out.write_all(&buf[..take])?;
            self.written += take as u64;
            self.budget -= take as f64;
        }
        if room == 0 || (take < buf.len() && take == room as usize) {
            self.full = true;
            self.note(&format!(
                "\n[bulkhead: console log full ({MAX_BYTES} bytes); the rest is dropped]\n"
            ));
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
    fn a_flood_is_cut_at_the_bound_and_says_so() {
        let mut log = ConsoleLog::new(Vec::new());
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..(2 * MAX_BYTES / chunk.len() as u64) {
            assert_eq!(log.write(&chunk).unwrap(), chunk.len());
        }
        let out = &log.out;
        assert!(out.len() as u64 <= MAX_BYTES, "{} bytes kept", out.len());
        let text = String::from_utf8_lossy(out);
        assert!(text.contains("dropped"), "the drop is not noted");
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
}
