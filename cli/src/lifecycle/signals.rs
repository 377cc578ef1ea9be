//! SIGINT/SIGTERM/SIGHUP/SIGQUIT to `bulkhead run` go to the container (as
//! `docker run` does), or stop the VM while there is no container yet.
//! SIGWINCH resizes the container's terminal to the size of ours.
//! The signals are blocked in every thread and taken by one sigwait thread.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use bulkhead_protocol::AgentWriter;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

#[derive(Default)]
struct Targets {
    vm: Option<super::vm::VmStop>,
    container: Option<Arc<Mutex<AgentWriter<UnixStream>>>>,
    /// The container has a terminal: follow the size of the one on stdin.
    terminal: bool,
}

#[derive(Clone, Default)]
pub struct SignalRouter(Arc<Mutex<Targets>>);

fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

impl SignalRouter {
    /// Blocks the forwarded signals in this thread (and so in every thread
    /// started after) and starts the thread that routes them. Call first.
    pub fn install() -> anyhow::Result<SignalRouter> {
        let set = forwarded();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let router = SignalRouter::default();
        let r = router.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let Ok(sig) = set.wait() else { continue };
                r.route(sig);
            })?;
        Ok(router)
    }

    fn route(&self, sig: Signal) {
        let targets = match self.0.lock() {
            Ok(t) => t,
            Err(e) => e.into_inner(),
        };
        if sig == Signal::SIGWINCH {
            if let (Some(w), true, Some((rows, cols))) =
                (&targets.container, targets.terminal, terminal_size())
            {
                if let Ok(mut w) = w.lock() {
                    let _ = w.resize_tty(rows, cols);
                }
            }
            return;
        }
        if let Some(w) = &targets.container {
            if let Ok(mut w) = w.lock() {
                if w.signal(sig as i32).is_ok() {
                    return;
                }
            }
        }
        if let Some(vm) = &targets.vm {
            vm.stop();
        }
    }

    pub fn set_vm(&self, vm: impl Into<super::vm::VmStop>) {
        if let Ok(mut t) = self.0.lock() {
            t.vm = Some(vm.into());
        }
    }

    /// Routes signals to the container from now on; with `terminal`,
    /// SIGWINCH resizes its terminal.
    pub fn set_container(&self, writer: Arc<Mutex<AgentWriter<UnixStream>>>, terminal: bool) {
        if let Ok(mut t) = self.0.lock() {
            t.container = Some(writer);
            t.terminal = terminal;
        }
    }
}

/// The size of the terminal on stdin, if it is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let r = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}
