//! Fetching one blob: downloaded into `blobs/partial/`, verified while it streams, resumed
//! where an interrupted pull stopped. A pull moves its downloads into `blobs/sha256/` (the
//! store proper) only once every blob of its image is in ([`commit`]), so a failed pull
//! leaves the store as it was and the next one finds its downloads.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bulkhead_rootfs::{Blobs, Hasher};
use futures_util::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;

use crate::error::PullError;
use crate::manifest::BlobRef;
use crate::progress::Progress;
use crate::session::Session;

/// Where a blob is once [`fetch`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// Already in the store.
    Stored,
    /// Verified in `blobs/partial/`, to [`commit`].
    Downloaded,
}

/// Makes `blob` present, in the store or verified in `blobs/partial/`, downloading what is
/// missing.
pub(crate) async fn fetch(
    session: &Session<'_>,
    blobs: &Blobs,
    blob: &BlobRef,
    progress: &Progress,
) -> Result<Fetched, PullError> {
    if blobs.contains(&blob.digest, blob.size) {
        progress.present(&blob.digest);
        return Ok(Fetched::Stored);
    }
    let partial = blobs.partial_path(&blob.digest);
    let Some((mut file, mut hasher, mut have)) = open_partial(&partial, blobs, blob)? else {
        progress.present(&blob.digest);
        return Ok(Fetched::Stored);
    };
    if have == blob.size {
        progress.say(&format!(
            "Blob sha256:{} already downloaded",
            blob.digest.short()
        ));
        return Ok(Fetched::Downloaded);
    }
    if have > 0 {
        progress.resuming(&blob.digest, have);
    }
    let what = blob.digest.to_string();
    let ctx = session.ctx(&what);
    let desc = OciDescriptor {
        media_type: blob.media_type.clone(),
        digest: blob.digest.to_string(),
        size: blob.size as i64,
        ..Default::default()
    };
    let response = if have == 0 {
        // A plain GET: not every registry (or the CDN it redirects to) honours ranges.
        session
            .client
            .pull_blob_stream(session.remote.oci(), &desc)
            .await
            .map(BlobResponse::Full)
    } else {
        session
            .client
            .pull_blob_stream_partial(session.remote.oci(), &desc, have, None)
            .await
    }
    .map_err(|e| ctx.classify(e))?;
    let mut stream = match response {
        BlobResponse::Partial(s) => s,
        BlobResponse::Full(s) => {
            // The registry ignored the range: start over.
            if have > 0 {
                file.set_len(0).map_err(io_err(&partial))?;
                file.seek(SeekFrom::Start(0)).map_err(io_err(&partial))?;
                hasher = Hasher::default();
                have = 0;
            }
            s
        }
    };
    let shown = progress.blob(&blob.digest, blob.size);
    shown.set(have);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            // oci-client checks the digest of a whole response too; a mismatch found there is
            // reported below, as one found here.
            Err(_) if have == blob.size => break,
            Err(e) => return Err(PullError::from_stream(&ctx, e)),
        };
        if have + chunk.len() as u64 > blob.size {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(PullError::SizeMismatch {
                digest: what,
                expected: blob.size,
                actual: have + chunk.len() as u64,
            });
        }
        file.write_all(&chunk).map_err(io_err(&partial))?;
        hasher.update(&chunk);
        have += chunk.len() as u64;
        shown.set(have);
    }
    drop(file);
    let actual = hasher.finish();
    if have != blob.size || actual != blob.digest {
        // A short body is a transfer that stopped; keep it to resume. Wrong content is not.
        if have == blob.size {
            let _ = std::fs::remove_file(&partial);
            return Err(PullError::DigestMismatch {
                digest: what,
                actual: actual.to_string(),
            });
        }
        return Err(PullError::Unreachable {
            registry: session.remote.registry().to_string(),
            cause: format!(
                "the download of blob {what} stopped after {have} of {} bytes",
                blob.size
            ),
        });
    }
    shown.finish();
    Ok(Fetched::Downloaded)
}

/// Moves a verified download into the store.
pub(crate) fn commit(blobs: &Blobs, blob: &BlobRef) -> Result<(), PullError> {
    match blobs.commit_partial(&blob.digest) {
        Ok(_) => Ok(()),
        // A concurrent pull of the same blob moved it first.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound && blobs.contains(&blob.digest, blob.size) =>
        {
            Ok(())
        }
        Err(e) => Err(io_err(&blobs.partial_path(&blob.digest))(e)),
    }
}

/// The bytes of a small fetched blob (a config), wherever [`fetch`] left it.
pub(crate) fn read(blobs: &Blobs, blob: &BlobRef) -> Result<Vec<u8>, PullError> {
    let stored = blobs.path(&blob.digest);
    let path = if stored.exists() {
        stored
    } else {
        blobs.partial_path(&blob.digest)
    };
    std::fs::read(&path).map_err(io_err(&path))
}

/// The partial download at `path`, locked against another pull of the same blob, with the
/// hash and length of what it holds; `None` if the blob arrived in the store meanwhile. A
/// whole partial (a failed pull's download) is kept if it verifies; anything else as long
/// or longer starts over.
fn open_partial(
    path: &Path,
    blobs: &Blobs,
    blob: &BlobRef,
) -> Result<Option<(Flock<File>, Hasher, u64)>, PullError> {
    let mut file = loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let file =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io_err(path)(e.into()))?;
        if blobs.contains(&blob.digest, blob.size) {
            return Ok(None);
        }
        // Another pull may have finished and renamed this very file into place between our
        // open and our lock: then it is the verified blob, not ours to write.
        let ours = file.metadata().map_err(io_err(path))?.ino();
        if std::fs::metadata(path).is_ok_and(|m| m.ino() == ours) {
            break file;
        }
    };
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut hasher = Hasher::default();
    if len == 0 || len > blob.size {
        file.set_len(0).map_err(io_err(path))?;
        return Ok(Some((file, hasher, 0)));
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    if read == blob.size && hasher.clone().finish() != blob.digest {
        file.set_len(0).map_err(io_err(path))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        return Ok(Some((file, Hasher::default(), 0)));
    }
    file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    Ok(Some((file, hasher, read)))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}
