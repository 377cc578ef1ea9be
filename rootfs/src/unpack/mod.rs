//! Unpacking image layers into a directory.

mod compression;
pub(crate) mod copy;
mod layer;
pub(crate) mod tree;
mod zstd;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use compression::Compression;
pub use copy::CopyError;

use crate::digest::{Digest, HashingReader};

/// One layer blob and what the image says about it. Every known value is verified.
#[derive(Clone, Debug, Default)]
pub struct LayerSpec {
    /// How errors name the layer: its digest, or its path in an archive.
    pub name: String,
    /// Digest of the blob as stored (compressed), from the manifest.
    pub digest: Option<Digest>,
    /// Size of the blob as stored, from the manifest.
    pub size: Option<u64>,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("opening unpack target {path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: reading the layer stream: {source}")]
    Read {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: {format} compression is not supported (use gzip, zstd or plain tar)")]
    UnsupportedCompression { layer: String, format: &'static str },
    #[error("layer {layer}: refusing tar entry {path:?}: it escapes the root ('..' components)")]
    UnsafePath { layer: String, path: PathBuf },
    #[error("layer {layer}: creating {path:?}: {source}")]
    Entry {
        layer: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt image: blob {layer} has digest {actual}, but the manifest says {expected}")]
    DigestMismatch {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("corrupt image: blob {layer} is {actual} bytes, but the manifest says {expected}")]
    SizeMismatch {
        layer: String,
        expected: u64,
        actual: u64,
    },
    #[error("corrupt image: layer {layer} unpacks to content {actual}, but the config's diff_id is {expected}")]
    DiffIdMismatch {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
}

/// Applies one layer blob (gzip, zstd or plain tar, detected from its first bytes) on top of
/// `target`, verifying its digest, size and diff_id when `spec` knows them.
pub fn apply_layer(target: &Path, blob: impl Read, spec: &LayerSpec) -> Result<(), UnpackError> {
    let tree = tree::Tree::open(target).map_err(|source| UnpackError::Target {
        path: target.to_path_buf(),
        source,
    })?;
    let read_err = |source| UnpackError::Read {
        layer: spec.name.clone(),
        source,
    };
    let mut blob = HashingReader::new(blob);
    let result = (|| {
        let (compression, stream) = compression::decompress(&mut blob).map_err(read_err)?;
        if let Compression::Unsupported(format) = compression {
            return Err(UnpackError::UnsupportedCompression {
                layer: spec.name.clone(),
                format,
            });
        }
        let mut uncompressed = HashingReader::new(stream);
        if let Err(tar_err) = layer::apply_tar(&tree, &mut uncompressed, &spec.name) {
            // Garbage out of a damaged compressed stream trips the tar parser before the
            // decoder reaches its checksum; the decoder's diagnosis is the useful one.
            if let Err(e) = io::copy(&mut uncompressed, &mut io::sink()) {
                return Err(read_err(e));
            }
            return Err(tar_err);
        }
        let (diff_id, _) = uncompressed.finish().map_err(read_err)?;
        Ok(diff_id)
    })();
    // A damaged blob usually shows up as a decoding error first; if the digest is known, the
    // precise diagnosis is that the blob is not what the manifest promised.
    let (digest, size) = match blob.finish() {
        Ok(v) => v,
        Err(e) => return Err(result.err().unwrap_or_else(|| read_err(e))),
    };
    if let Some(expected) = &spec.digest {
        if *expected != digest {
            return Err(UnpackError::DigestMismatch {
                layer: spec.name.clone(),
                expected: expected.clone(),
                actual: digest,
            });
        }
    }
    let diff_id = result?;
    if let Some(expected) = spec.size {
        if expected != size {
            return Err(UnpackError::SizeMismatch {
                layer: spec.name.clone(),
                expected,
                actual: size,
            });
        }
    }
    if let Some(expected) = &spec.diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DiffIdMismatch {
                layer: spec.name.clone(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(())
}
