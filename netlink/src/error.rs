//! The one error type of this crate.

use std::io;

/// Everything that can go wrong talking to the kernel. Each message names the
/// operation and, where there is one, the link: "cannot set bulkhead0 up: ...".
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel answered a request with `NLMSG_ERROR` (a NACK).
    #[error("cannot {op}: {}", nix::errno::Errno::from_raw(*errno).desc())]
    Kernel {
        /// What was asked, with its link ("set bulkhead0 up").
        op: String,
        /// The positive errno the kernel returned.
        errno: i32,
    },
    /// The socket itself failed (open, bind, send, receive).
    #[error("cannot {op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded, or made no sense.
    #[error("cannot {op}: {reason}")]
    Protocol { op: String, reason: String },
    /// A link looked up by name does not exist.
    #[error("no link named {name:?}")]
    NoSuchLink { name: String },
    /// A link exists under the name, but it is not what was asked for.
    #[error("cannot {op}: {name} exists and is a {kind} link")]
    WrongKind {
        op: String,
        name: String,
        kind: String,
    },
    /// Text that should have been `a.b.c.d/p`.
    #[error("invalid IPv4 CIDR {input:?}: {reason}")]
    InvalidCidr { input: String, reason: &'static str },
    /// `in_netns`: the thread could not enter the namespace (nothing ran).
    #[error("cannot enter network namespace: {0}")]
    EnterNetns(#[source] io::Error),
    /// `in_netns`: the closure ran, but the thread is stuck in the other
    /// namespace; it should not be used for anything namespace-dependent.
    #[error("cannot return this thread to its own network namespace: {0}")]
    RestoreNetns(#[source] io::Error),
}

impl NetlinkError {
    /// The errno behind this error, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io { source, .. }
            | NetlinkError::EnterNetns(source)
            | NetlinkError::RestoreNetns(source) => source.raw_os_error(),
            NetlinkError::NoSuchLink { .. } => Some(libc::ENODEV),
            _ => None,
        }
    }
}

/// A failure of the socket layer, before it is given its operation.
#[derive(Debug)]
pub(crate) enum Failure {
    Kernel(i32),
    Io(io::Error),
    Protocol(String),
}

impl Failure {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel(e) => Some(*e),
            _ => None,
        }
    }

    pub(crate) fn context(self, op: impl Into<String>) -> NetlinkError {
        let op = op.into();
        match self {
            Failure::Kernel(errno) => NetlinkError::Kernel { op, errno },
            Failure::Io(source) => NetlinkError::Io { op, source },
            Failure::Protocol(reason) => NetlinkError::Protocol { op, reason },
        }
    }
}
