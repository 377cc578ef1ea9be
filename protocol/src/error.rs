use std::io;

use thiserror::Error;

/// Everything that can go wrong while speaking the protocol.
#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("I/O error on the agent connection: {0}")]
    Io(#[from] io::Error),

    #[error("connection closed by the peer")]
    Closed,

    #[error("connection closed in the middle of a frame")]
    Truncated,

    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },

    #[error("empty frame (no kind byte)")]
    EmptyFrame,

    #[error("unknown frame kind {0}")]
    UnknownFrameKind(u8),

    #[error("frame kind {0} is not valid in this direction")]
    WrongDirection(u8),

    #[error("malformed message: {0}")]
    Malformed(#[source] serde_json::Error),

    #[error("cannot encode message: {0}")]
    Encode(#[source] serde_json::Error),

    #[error("protocol version mismatch: host speaks version {host}, agent speaks version {agent}")]
    VersionMismatch { host: u32, agent: u32 },

    #[error("agent error: {0}")]
    Agent(String),

    #[error("unexpected message from the peer: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
}

impl ProtocolError {
    /// True when the byte stream can no longer be trusted to be at a frame
    /// boundary, so the connection must be dropped.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ProtocolError::Io(_)
                | ProtocolError::Closed
                | ProtocolError::Truncated
                | ProtocolError::FrameTooLarge { .. }
                | ProtocolError::VersionMismatch { .. }
        )
    }
}
