//! SIGKILL's deadline. A signal to the container goes to the guest agent,
//! which kills the process and reports its exit; SIGKILL also gets a
//! deadline on the host. If the guest has not reported the exit within
//! [`KILL_GRACE`] (too slow, overloaded, or unwilling), the monitor ends
//! the VM itself and reports death by SIGKILL; if it has, the deadline
//! still bounds the teardown (the guest's flush of the volumes), so the
//! VM is gone within the grace either way. runc's SIGKILL always wins
//! at once, and engines count on that: podman gives the container 5 s to
//! die after `kill KILL` before it fails `rm -f`.
//!
//! On a real host the guest reports the exit within milliseconds, long
//! before the deadline. The forced end skips the guest's flush of
//! block-device volumes. virtio-fs writes are already on the host by then.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the guest has to report a SIGKILLed process's exit.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// Overrides [`KILL_GRACE`], in milliseconds (0 tests the forced end).
pub const KILL_GRACE_ENV: &str = "BULKHEAD_KILL_GRACE_MS";

const RUNNING: u8 = 0;
const EXITED: u8 = 1;
const FORCED: u8 = 2;

/// Shared by the thread waiting for the exit and the one serving `kill`.
#[derive(Clone)]
pub struct KillDeadline {
    grace: Duration,
    state: Arc<AtomicU8>,
    /// The grace is over.
    expired: Arc<AtomicBool>,
    /// The agent connection: shutting it down ends the wait for the exit.
    socket: Arc<UnixStream>,
}

impl KillDeadline {
    /// A deadline of [`KILL_GRACE`] or what the environment says.
    pub fn new(socket: UnixStream) -> KillDeadline {
        let grace = std::env::var(KILL_GRACE_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(KILL_GRACE, Duration::from_millis);
        Self::with_grace(socket, grace)
    }

    pub fn with_grace(socket: UnixStream, grace: Duration) -> KillDeadline {
        KillDeadline {
            grace,
            state: Arc::new(AtomicU8::new(RUNNING)),
            expired: Arc::new(AtomicBool::new(false)),
            socket: Arc::new(socket),
        }
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Starts the clock: when the grace is over the agent connection is
    /// shut, which ends the wait for the exit (then [`forced`](Self::forced)
    /// holds) or the teardown after it, whichever is still going on.
    pub fn arm(&self) {
        let deadline = self.clone();
        let grace = self.grace;
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            if deadline
                .state
                .compare_exchange(RUNNING, FORCED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                log::debug!("the guest did not kill the container within {grace:?}: ending its VM");
            }
            deadline.expired.store(true, Ordering::Release);
            let _ = deadline.socket.shutdown(Shutdown::Both);
        });
    }

    /// The exit was reported: the deadline no longer forces it (but still
    /// bounds the teardown). Returns false if the deadline had already
    /// ended the wait.
    pub fn exited(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, EXITED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the deadline ended the wait (the agent connection is gone).
    pub fn forced(&self) -> bool {
        self.state.load(Ordering::Acquire) == FORCED
    }

    /// Whether the grace is over: the guest gets no more time.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_deadline_that_passes_ends_the_wait() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let deadline = KillDeadline::with_grace(ours, Duration::from_millis(10));
        deadline.arm();
        let mut buf = [0u8; 1];
        assert_eq!(theirs.read(&mut buf).unwrap(), 0);
        assert!(deadline.forced());
        assert!(!deadline.exited());
    }

    #[test]
    fn an_exit_in_time_is_not_forced_and_the_teardown_is_still_bounded() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let deadline = KillDeadline::with_grace(ours, Duration::from_millis(200));
        deadline.arm();
        assert!(deadline.exited());
        theirs.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let open_meanwhile = (&theirs).read(&mut buf).unwrap_err().kind();
        assert_eq!(open_meanwhile, std::io::ErrorKind::WouldBlock);
        theirs.set_nonblocking(false).unwrap();
        // The grace over, the connection (a flush still waited for) ends.
        assert_eq!(theirs.read(&mut buf).unwrap(), 0);
        assert!(deadline.expired());
        assert!(!deadline.forced());
    }
}
