//! Console logging.
//!
//! `eprintln!` writes a line in several `write` calls; in the guest every
//! syscall is expensive and the serial console interleaves with the
//! kernel's, so each line is formatted first and written once.

use std::io::Write;

/// Writes one `bulkhead-agent: ...` line to stderr (the console under init).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut buf = Vec::with_capacity(128);
    let _ = buf.write_all(b"bulkhead-agent: ");
    let _ = buf.write_fmt(args);
    buf.push(b'\n');
    // A lost log line must never take the agent down.
    let _ = std::io::stderr().lock().write_all(&buf);
}

macro_rules! agent_log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
pub(crate) use agent_log;
