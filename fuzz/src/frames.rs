//! Decoding a byte stream of protocol frames both ways the code base does
//! (the blocking `read_message` and the event-loop `FrameDecoder`), which
//! must agree, and checking that whatever decodes re-encodes to itself.

use std::fmt::Debug;
use std::io::Cursor;

use bulkhead_protocol::{read_message, FrameDecoder, Message, ProtocolError};

/// The messages in `stream` (errors that keep the stream in sync skipped),
/// each handed to `check`; the first byte of `data` says how the stream
/// arrives in pieces for the decoder.
pub fn decode_both<M>(data: &[u8], mut check: impl FnMut(&M))
where
    M: Message + PartialEq + Debug,
{
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let blocking = blocking::<M>(stream);
    let incremental = incremental::<M>(stream, usize::from(chunk) + 1);
    assert_eq!(
        blocking, incremental,
        "read_message and FrameDecoder disagree"
    );
    for msg in &blocking {
        check(msg);
        let mut wire = Vec::new();
        msg.encode(&mut wire).expect("a decoded message encodes");
        let back: M = read_message(&mut Cursor::new(&wire)).expect("re-decodes");
        assert_eq!(&back, msg, "round trip changed the message");
    }
}

fn blocking<M: Message>(stream: &[u8]) -> Vec<M> {
    let mut r = Cursor::new(stream);
    let mut out = Vec::new();
    loop {
        match read_message::<_, M>(&mut r) {
            Ok(m) => out.push(m),
            Err(e) if stop(&e) => return out,
            Err(_) => {}
        }
    }
}

fn incremental<M: Message>(stream: &[u8], chunk: usize) -> Vec<M> {
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_message::<M>() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) if stop(&e) => return out,
                Err(_) => {}
            }
        }
    }
    out
}

/// An error after which the stream is not read on.
fn stop(e: &ProtocolError) -> bool {
    e.is_fatal()
}
