//! What a pull shows while it works: bars on a terminal, one plain line per event otherwise
//! (logs, CI, tests), nothing when quiet. All of it on stderr: stdout carries the image ID.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use bulkhead_rootfs::Digest;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, lines when it is not.
    Auto,
    Quiet,
}

pub(crate) struct Progress {
    bars: Option<MultiProgress>,
    lines: bool,
}

impl Progress {
    pub(crate) fn new(mode: ProgressMode) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        match mode {
            ProgressMode::Quiet => Progress {
                bars: None,
                lines: false,
            },
            ProgressMode::Auto if terminal => Progress {
                bars: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
                lines: false,
            },
            ProgressMode::Auto => Progress {
                bars: None,
                lines: true,
            },
        }
    }

    /// A line worth saying in either form (`Pulling …`, `Unpacking …`).
    pub(crate) fn say(&self, msg: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(msg);
            }
            None if self.lines => {
                let _ = writeln!(std::io::stderr().lock(), "{msg}");
            }
            None => {}
        }
    }

    pub(crate) fn present(&self, digest: &Digest) {
        self.say(&format!("Blob {} already present", short(digest)));
    }

    pub(crate) fn resuming(&self, digest: &Digest, at: u64) {
        self.say(&format!("Resuming blob {} at {at} bytes", short(digest)));
    }

    /// Starts showing the download of `digest` (`size` bytes).
    pub(crate) fn blob(&self, digest: &Digest, size: u64) -> BlobProgress {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar.set_prefix(short(digest));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            self.say(&format!("Copying blob {} ({size} bytes)", short(digest)));
        }
        BlobProgress {
            bar,
            lines: self.lines,
            name: short(digest),
        }
    }
}

pub(crate) struct BlobProgress {
    bar: Option<ProgressBar>,
    lines: bool,
    name: String,
}

impl BlobProgress {
    pub(crate) fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    pub(crate) fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None if self.lines => {
                let _ = writeln!(std::io::stderr().lock(), "Copied blob {}", self.name);
            }
            None => {}
        }
    }
}

impl Drop for BlobProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

fn short(digest: &Digest) -> String {
    format!("sha256:{}", digest.short())
}
