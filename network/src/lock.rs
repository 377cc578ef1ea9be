//! The one lock around the network state: an exclusive flock on
//! `<root>/networks/lock`, held by every command while it reads or changes
//! networks, leases or the nftables table, so that two `bulkhead run`s
//! cannot take the same address or rebuild the table from different
//! views. The kernel drops it when its holder dies, even by SIGKILL.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{io, NetworkError};

pub(crate) struct StateLock {
    _held: Flock<File>,
}

impl StateLock {
    /// Blocks until this process holds the lock at `path`.
    pub(crate) fn acquire(path: &Path) -> Result<StateLock, NetworkError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io("cannot open", path))?;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(held) => return Ok(StateLock { _held: held }),
                // A signal the caller handles (SIGCHLD, SIGWINCH) is no reason to fail.
                Err((again, nix::errno::Errno::EINTR)) => file = again,
                Err((_, errno)) => return Err(io("cannot lock", path)(errno.into())),
            }
        }
    }
}
