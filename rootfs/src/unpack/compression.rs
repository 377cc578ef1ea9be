//! Layer compression, detected from the stream's magic bytes: media types in manifests are
//! often wrong (docker-archive layers have none, some tools label gzip as plain tar).

use std::io::{self, BufReader, Read};

use flate2::read::MultiGzDecoder;

use super::zstd::ZstdReader;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Recognised but not supported; named in the error.
    Unsupported(&'static str),
}

const MAGIC_LEN: usize = 6;

impl Compression {
    fn from_magic(m: &[u8]) -> Compression {
        match m {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Unsupported("xz"),
            [b'B', b'Z', b'h', ..] => Compression::Unsupported("bzip2"),
            _ => Compression::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Unsupported(name) => name,
        }
    }
}

/// Reads the first bytes of `r` to detect its compression, and returns a reader over the
/// decompressed stream (which still starts at the very first byte).
pub(crate) fn decompress<'a, R: Read + 'a>(
    mut r: R,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut magic = Vec::with_capacity(MAGIC_LEN);
    (&mut r).take(MAGIC_LEN as u64).read_to_end(&mut magic)?;
    let compression = Compression::from_magic(&magic);
    let stream = io::Cursor::new(magic).chain(r);
    let reader: Box<dyn Read + 'a> = match compression {
        Compression::None | Compression::Unsupported(_) => Box::new(stream),
        Compression::Gzip => Box::new(Labelled {
            inner: MultiGzDecoder::new(stream),
            what: "gzip",
        }),
        Compression::Zstd => Box::new(Labelled {
            inner: ZstdReader::new(BufReader::new(stream)),
            what: "zstd",
        }),
    };
    Ok((compression, reader))
}

/// Prefixes decoder errors with the format, so "invalid block type" reads as corrupt gzip.
struct Labelled<R> {
    inner: R,
    what: &'static str,
}

impl<R: Read> Read for Labelled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("corrupt {} data: {e}", self.what)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(data: &[u8]) -> (Compression, io::Result<Vec<u8>>) {
        let (c, mut r) = decompress(data).unwrap();
        let mut out = Vec::new();
        let res = r.read_to_end(&mut out).map(|_| out);
        (c, res)
    }

    #[test]
    fn detects_by_magic_and_decodes() {
        let plain = b"plain tar bytes, or anything else".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &plain[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );

        assert_eq!(roundtrip(&plain).0, Compression::None);
        assert_eq!(roundtrip(&plain).1.unwrap(), plain);
        assert_eq!(roundtrip(&gz).0, Compression::Gzip);
        assert_eq!(roundtrip(&gz).1.unwrap(), plain);
        assert_eq!(roundtrip(&zst).0, Compression::Zstd);
        assert_eq!(roundtrip(&zst).1.unwrap(), plain);
        assert_eq!(
            roundtrip(b"\xfd7zXZ\x00...").0,
            Compression::Unsupported("xz")
        );
        assert_eq!(roundtrip(b"x").1.unwrap(), b"x");
        assert_eq!(roundtrip(b"").1.unwrap(), b"");
    }

    #[test]
    fn corrupt_gzip_names_the_format() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[42u8; 10_000]).unwrap();
        let mut gz = gz.finish().unwrap();
        let n = gz.len();
        gz[n - 6] ^= 0xff; // inside the CRC32 trailer
        let err = roundtrip(&gz).1.unwrap_err();
        assert!(err.to_string().starts_with("corrupt gzip data"), "{err}");
    }
}
