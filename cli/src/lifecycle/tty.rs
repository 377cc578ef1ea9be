//! The host terminal for `-t`: its size, and raw mode while the container
//! owns it.

use nix::sys::termios::{self, SetArg, Termios};

pub use super::signals::terminal_size as size;

/// Raw mode on stdin, restored on drop.
pub struct RawMode(Termios);

impl RawMode {
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}
