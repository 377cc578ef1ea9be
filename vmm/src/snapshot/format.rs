//! The snapshot state file: a fixed header, the state as JSON, and a
//! checksum over both.
//!
//! ```text
//! magic "BULKSNAP" | format version u32 LE | payload length u64 LE | payload | CRC-32 u32 LE
//! ```
//!
//! The checksum covers everything before it, so a truncated or flipped
//! file is refused before a byte of it is trusted.

use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

const MAGIC: &[u8; 8] = b"BULKSNAP";
/// Bumped whenever the layout of the state changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8;
const CRC_LEN: usize = 4;
/// A state file is a few hundred KiB; anything far larger is not ours.
const MAX_PAYLOAD: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read snapshot {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write snapshot {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} is not a bulkhead snapshot (bad magic)", .0.display())]
    NotASnapshot(PathBuf),
    #[error("snapshot {} has format version {found}, this bulkhead reads version {FORMAT_VERSION}", .path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("snapshot {} is truncated ({len} bytes)", .path.display())]
    Truncated { path: PathBuf, len: usize },
    #[error("snapshot {} is corrupt: checksum mismatch", .0.display())]
    Checksum(PathBuf),
    #[error("snapshot {} is corrupt: {source}", .path.display())]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot encode snapshot state: {0}")]
    Encode(serde_json::Error),
}

/// Encodes `state` into the file format.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FormatError> {
    let payload = serde_json::to_vec(state).map_err(FormatError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks and decodes a state file's bytes; `path` only names it in errors.
pub fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, FormatError> {
    let path_buf = || path.to_path_buf();
    let truncated = || FormatError::Truncated {
        path: path_buf(),
        len: bytes.len(),
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FormatError::NotASnapshot(path_buf()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(truncated());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(FormatError::Version {
            path: path_buf(),
            found: version,
        });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(FormatError::Checksum(path_buf()));
    }
    let end = HEADER_LEN + len as usize;
    if bytes.len() < end + CRC_LEN {
        return Err(truncated());
    }
    if bytes.len() > end + CRC_LEN {
        return Err(FormatError::Checksum(path_buf()));
    }
    let stored = u32::from_le_bytes(bytes[end..end + CRC_LEN].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..end]) != stored {
        return Err(FormatError::Checksum(path_buf()));
    }
    serde_json::from_slice(&bytes[HEADER_LEN..end]).map_err(|source| FormatError::Decode {
        path: path_buf(),
        source,
    })
}

pub fn write_file<T: Serialize>(path: &Path, state: &T) -> Result<(), FormatError> {
    let bytes = encode(state)?;
    std::fs::write(path, bytes).map_err(|source| FormatError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, FormatError> {
    let bytes = std::fs::read(path).map_err(|source| FormatError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "vm".into(),
            values: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        let back: Sample = decode(Path::new("s"), &bytes).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn refuses_other_versions() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[8] = 9;
        let err = decode::<Sample>(Path::new("s"), &bytes).unwrap_err();
        assert!(
            matches!(err, FormatError::Version { found: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("format version 9"), "{err}");
    }

    #[test]
    fn refuses_truncated_files_at_every_length() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            let err = decode::<Sample>(Path::new("s"), &bytes[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::Truncated { .. } | FormatError::NotASnapshot(_)
                ),
                "length {len}: {err}"
            );
        }
    }

    #[test]
    fn refuses_any_flipped_byte() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                decode::<Sample>(Path::new("s"), &bad).is_err(),
                "flip at {i} accepted"
            );
        }
    }

    #[test]
    fn refuses_trailing_garbage_and_foreign_files() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(Path::new("s"), &bytes),
            Err(FormatError::Checksum(_))
        ));
        assert!(matches!(
            decode::<Sample>(Path::new("s"), b"\x7fELF\x02\x01\x01\x00........"),
            Err(FormatError::NotASnapshot(_))
        ));
    }
}
