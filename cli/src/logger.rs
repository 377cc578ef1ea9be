//! The VMM's and bulkhead's own diagnostics on stderr, off unless
//! `$BULKHEAD_LOG` names a level (error, warn, info, debug, trace): a
//! device rejecting a guest's request or resetting a stream says why
//! there, without cluttering ordinary runs.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            eprintln!("bulkhead: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger at the level `$BULKHEAD_LOG` names, if any.
pub fn init() {
    let Some(level) = std::env::var("BULKHEAD_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
    else {
        return;
    };
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}
