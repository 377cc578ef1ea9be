//! A console writer that notices the agent's ready line.

use std::io::Write;

/// Passes the guest console through to `inner` and calls `on_ready` once,
/// the first time `marker` has gone by (wherever the writes split it).
pub struct ReadyWatcher<W: Write, F: FnOnce()> {
    inner: W,
    marker: Vec<u8>,
    /// The last `marker.len() - 1` bytes seen, to match across writes.
    tail: Vec<u8>,
    on_ready: Option<F>,
}

impl<W: Write, F: FnOnce()> ReadyWatcher<W, F> {
    pub fn new(inner: W, marker: impl Into<Vec<u8>>, on_ready: F) -> Self {
        ReadyWatcher {
            inner,
            marker: marker.into(),
            tail: Vec::new(),
            on_ready: Some(on_ready),
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        if self.on_ready.is_none() {
            return;
        }
        self.tail.extend_from_slice(buf);
        if self
            .tail
            .windows(self.marker.len())
            .any(|w| w == self.marker.as_slice())
        {
            if let Some(f) = self.on_ready.take() {
                f();
            }
            self.tail.clear();
            return;
        }
        let keep = self.marker.len().saturating_sub(1);
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
    }
}

impl<W: Write, F: FnOnce()> Write for ReadyWatcher<W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn fires_once_across_split_writes() {
        let fired = Cell::new(0);
        let mut out = Vec::new();
        {
            let mut w = ReadyWatcher::new(&mut out, "agent: ready", || fired.set(fired.get() + 1));
            for chunk in ["boot…\nage", "nt: re", "ady\nagent: ready\n"] {
                w.write_all(chunk.as_bytes()).unwrap();
            }
        }
        assert_eq!(fired.get(), 1);
        assert_eq!(out, "boot…\nagent: ready\nagent: ready\n".as_bytes());
    }

    #[test]
    fn silent_without_the_marker() {
        let fired = Cell::new(false);
        let mut w = ReadyWatcher::new(Vec::new(), "agent: ready", || fired.set(true));
        w.write_all(b"agent: rea").unwrap();
        w.write_all(b"d-y? no\nagent:ready\n").unwrap();
        assert!(!fired.get());
    }
}
