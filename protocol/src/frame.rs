//! Framing: how messages are delimited on the byte stream.
//!
//! A frame is `len: u32 big-endian`, then `len` bytes: one kind byte and the
//! payload. Kind [`kind::JSON`] carries a JSON-encoded control message; the
//! data kinds carry raw stdio bytes, so bulk output is never inflated by an
//! encoding. Frames larger than [`MAX_FRAME_LEN`] are rejected before their
//! body is read, so a garbage length cannot make either side allocate
//! gigabytes.

use std::io::{ErrorKind, Read, Write};

use crate::error::ProtocolError;
use crate::message::Message;

/// Largest accepted frame body (kind byte + payload).
pub const MAX_FRAME_LEN: usize = 4 << 20;

/// Largest stdio chunk senders put in one data frame.
pub const MAX_DATA_CHUNK: usize = 64 << 10;

const HEADER_LEN: usize = 4;

/// The frame kinds.
pub mod kind {
    pub const JSON: u8 = 0;
    pub const STDIN: u8 = 1;
    pub const STDOUT: u8 = 2;
    pub const STDERR: u8 = 3;
}

/// Appends a complete frame of `kind` around the payload written by `body`.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    kind: u8,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(kind);
    if let Err(e) = body(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // `len` fits in u32: MAX_FRAME_LEN does.
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

fn decode_frame<M: Message>(body: &[u8]) -> Result<M, ProtocolError> {
    match body.split_first() {
        Some((&kind, payload)) => M::decode(kind, payload),
        None => Err(ProtocolError::EmptyFrame),
    }
}

fn check_len(len: usize) -> Result<(), ProtocolError> {
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(())
}

/// Writes one message as a single `write_all`, so a message is never
/// interleaved with another writer's bytes at the syscall level.
pub fn write_message<W: Write + ?Sized, M: Message>(
    w: &mut W,
    msg: &M,
) -> Result<(), ProtocolError> {
    let mut buf = Vec::new();
    msg.encode(&mut buf)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

/// Reads one message from a blocking stream. A clean end of stream before
/// the frame starts is [`ProtocolError::Closed`]; one inside a frame is
/// [`ProtocolError::Truncated`].
pub fn read_message<R: Read + ?Sized, M: Message>(r: &mut R) -> Result<M, ProtocolError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Err(ProtocolError::Closed),
        HEADER_LEN => {}
        _ => return Err(ProtocolError::Truncated),
    }
    let len = u32::from_be_bytes(header) as usize;
    check_len(len)?;
    let mut body = vec![0u8; len];
    if read_full(r, &mut body)? != len {
        return Err(ProtocolError::Truncated);
    }
    decode_frame(&body)
}

/// Incremental decoder for event loops that read whatever bytes are
/// available and must not block waiting for the rest of a frame.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet consumed as complete frames. Non-zero at
    /// end of stream means the peer hung up mid-frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Decodes the next complete message, or `Ok(None)` if more bytes are
    /// needed. A frame whose body fails to decode is consumed, so the
    /// stream stays in sync; an oversized length is not (the stream is
    /// then unusable, see [`ProtocolError::is_fatal`]).
    pub fn next_message<M: Message>(&mut self) -> Result<Option<M>, ProtocolError> {
        let avail = &self.buf[self.pos..];
        let Some(header) = avail.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        check_len(len)?;
        let Some(body) = avail.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let result = decode_frame(body);
        self.pos += HEADER_LEN + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        result.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AgentMessage, HostMessage};

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(kind);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn blocking_round_trip() {
        let msgs = vec![
            HostMessage::Hello { version: 7 },
            HostMessage::Stdin(b"abc\0\xff".to_vec()),
            HostMessage::Stdin(Vec::new()),
            HostMessage::Signal {
                signal: 15,
                all: false,
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_message(&mut wire, m).unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            assert_eq!(&read_message::<_, HostMessage>(&mut r).unwrap(), m);
        }
        assert!(matches!(
            read_message::<_, HostMessage>(&mut r),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn data_frames_are_raw() {
        let mut wire = Vec::new();
        write_message(&mut wire, &AgentMessage::Stdout(b"hi".to_vec())).unwrap();
        assert_eq!(wire, frame(kind::STDOUT, b"hi"));
    }

    #[test]
    fn truncated_header_and_body() {
        let mut wire = Vec::new();
        write_message(&mut wire, &HostMessage::Start).unwrap();
        for cut in [1, 3, 5, wire.len() - 1] {
            let mut r = &wire[..cut];
            assert!(
                matches!(
                    read_message::<_, HostMessage>(&mut r),
                    Err(ProtocolError::Truncated)
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_frame_rejected_before_reading_body() {
        let wire = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let err = read_message::<_, HostMessage>(&mut &wire[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
        assert!(err.is_fatal());

        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            d.next_message::<HostMessage>(),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn oversized_message_not_encoded() {
        let mut buf = vec![1, 2, 3];
        let err = HostMessage::Stdin(vec![0; MAX_FRAME_LEN])
            .encode(&mut buf)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
        assert_eq!(buf, [1, 2, 3]);
    }

    #[test]
    fn garbage_frames() {
        let mut r = &frame(kind::JSON, b"{not json")[..];
        let err = read_message::<_, HostMessage>(&mut r).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)));
        assert!(!err.is_fatal());

        let mut r = &frame(kind::JSON, br#"{"type":"no_such_message"}"#)[..];
        assert!(matches!(
            read_message::<_, HostMessage>(&mut r),
            Err(ProtocolError::Malformed(_))
        ));

        let mut r = &frame(200, b"")[..];
        assert!(matches!(
            read_message::<_, HostMessage>(&mut r),
            Err(ProtocolError::UnknownFrameKind(200))
        ));

        let mut r = &0u32.to_be_bytes()[..];
        assert!(matches!(
            read_message::<_, HostMessage>(&mut r),
            Err(ProtocolError::EmptyFrame)
        ));

        // Output data is only valid from the agent.
        let mut r = &frame(kind::STDOUT, b"x")[..];
        assert!(matches!(
            read_message::<_, HostMessage>(&mut r),
            Err(ProtocolError::WrongDirection(kind::STDOUT))
        ));
    }

    #[test]
    fn decoder_handles_byte_by_byte_input() {
        let msgs = vec![
            AgentMessage::Hello { version: 1 },
            AgentMessage::Stdout(vec![7; 1000]),
            AgentMessage::Stderr(b"e".to_vec()),
            AgentMessage::Error {
                message: "x".into(),
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_message(&mut wire, m).unwrap();
        }
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_message::<AgentMessage>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decoder_skips_bad_frame_and_stays_in_sync() {
        let mut wire = frame(kind::JSON, b"garbage");
        write_message(&mut wire, &HostMessage::Wait).unwrap();
        let mut d = FrameDecoder::new();
        d.push(&wire);
        assert!(d.next_message::<HostMessage>().is_err());
        assert_eq!(
            d.next_message::<HostMessage>().unwrap(),
            Some(HostMessage::Wait)
        );
        assert_eq!(d.next_message::<HostMessage>().unwrap(), None);
    }

    #[test]
    fn decoder_reports_partial_frame() {
        let mut wire = Vec::new();
        write_message(&mut wire, &HostMessage::Wait).unwrap();
        let mut d = FrameDecoder::new();
        d.push(&wire[..wire.len() - 1]);
        assert_eq!(d.next_message::<HostMessage>().unwrap(), None);
        assert_eq!(d.buffered(), wire.len() - 1);
    }
}
