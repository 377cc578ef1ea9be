//! A streaming zstd decoder over ruzstd that, unlike ruzstd's `StreamingDecoder`, reads every
//! frame of the stream (layers may be written as several frames) and skips skippable frames
//! (zstd:chunked puts its metadata in them).

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// Decode at least this much per step so small reads do not decode block by block.
const DECODE_STEP: usize = 128 * 1024;

pub(crate) struct ZstdReader<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    pub(crate) fn new(source: R) -> Self {
        ZstdReader {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }

    /// Starts the next frame; false at a clean end of stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped =
                        io::copy(&mut (&mut self.source).take(length.into()), &mut io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "zstd skippable frame is truncated",
                        ));
                    }
                }
                Err(e) => return Err(invalid(e)),
            }
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                self.decoder
                    .decode_blocks(
                        &mut self.source,
                        BlockDecodingStrategy::UptoBytes(buf.len().max(DECODE_STEP)),
                    )
                    .map_err(invalid)?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            // The frame is decoded and drained: only now is the computed checksum complete.
            if let (Some(stored), Some(computed)) = (
                self.decoder.get_checksum_from_data(),
                self.decoder.get_calculated_checksum(),
            ) {
                if stored != computed {
                    return Err(invalid(format!(
                        "zstd frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                    )));
                }
            }
            self.in_frame = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    fn decode(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ZstdReader::new(data).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decodes_concatenated_and_skippable_frames() {
        let a: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let b = b"second frame".to_vec();
        let mut stream = compress_to_vec(&a[..], CompressionLevel::Fastest);
        // A skippable frame: magic 0x184D2A50..5F, little-endian length, payload.
        stream.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        stream.extend_from_slice(&5u32.to_le_bytes());
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&compress_to_vec(&b[..], CompressionLevel::Fastest));
        let mut want = a.clone();
        want.extend_from_slice(&b);
        assert_eq!(decode(&stream).unwrap(), want);
        assert_eq!(decode(&[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let data = vec![7u8; 100_000];
        let mut stream = compress_to_vec(&data[..], CompressionLevel::Fastest);
        let truncated = &stream[..stream.len() / 2];
        assert!(decode(truncated).is_err());
        let last = stream.len() - 8;
        stream[last] ^= 0xff;
        assert!(decode(&stream).is_err());
        assert!(decode(b"\x28\xb5\x2f\xfd garbage").is_err());
    }
}
