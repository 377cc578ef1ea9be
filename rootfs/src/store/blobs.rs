//! The store's content-addressed blobs: the manifests, configs and compressed layers of pulled
//! images, kept so a layer two images share is fetched once and an image can be re-verified.
//!
//! ```text
//! <root>/blobs/sha256/<hex>    verified blobs, renamed in whole
//! <root>/blobs/partial/<hex>   a download in progress, or one an interrupted pull left to resume
//! <root>/blobs.lock            shared while a pull writes or relies on blobs, exclusive to sweep
//! ```
//!
//! Nothing outside `sha256/` counts as present, so a crash mid-download never leaves a blob
//! that looks complete.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::digest::{named_entries, Digest};
use crate::fsutil::atomic_write;

pub struct Blobs {
    dir: PathBuf,
    lock_path: PathBuf,
}

/// Held while blobs are being written or an image is being made from them: the sweep that frees
/// unused blobs waits for it.
pub struct BlobLease {
    _lock: Flock<File>,
}

impl Blobs {
    pub(crate) fn open(root: &Path) -> io::Result<Blobs> {
        let dir = root.join("blobs");
        for sub in ["sha256", "partial"] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join(sub))?;
        }
        Ok(Blobs {
            dir,
            lock_path: root.join("blobs.lock"),
        })
    }

    /// Where the verified blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    /// True when the blob is stored with the expected size. Stored blobs were verified on the
    /// way in and are only ever replaced whole.
    pub fn contains(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Where a download of `digest` accumulates before it is verified.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("partial").join(digest.hex())
    }

    /// Moves a verified download into place. The caller has checked its digest and size.
    pub fn commit_partial(&self, digest: &Digest) -> io::Result<PathBuf> {
        let partial = self.partial_path(digest);
        File::open(&partial)?.sync_all()?;
        let path = self.path(digest);
        fs::rename(&partial, &path)?;
        Ok(path)
    }

    /// Stores a small blob (a manifest, a config) held in memory; `digest` must be its digest.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> io::Result<PathBuf> {
        debug_assert_eq!(&Digest::of(bytes), digest);
        let path = self.path(digest);
        atomic_write(&path, bytes)?;
        Ok(path)
    }

    /// Reads a stored blob whole (manifests and configs only: callers bound their size).
    pub fn read(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        fs::read(self.path(digest))
    }

    /// Taken by a pull for as long as it writes blobs and makes its image from them.
    pub fn lease(&self) -> io::Result<BlobLease> {
        self.flock(FlockArg::LockShared)
    }

    fn flock(&self, arg: FlockArg) -> io::Result<BlobLease> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)?;
        let lock = Flock::lock(file, arg).map_err(|(_, e)| io::Error::from(e))?;
        Ok(BlobLease { _lock: lock })
    }

    /// Deletes every stored blob not in `keep` (once no pull holds a lease). `keep` is read
    /// only after the lock is taken, so a pull that finished meanwhile is counted.
    pub(crate) fn sweep(
        &self,
        keep: impl FnOnce() -> io::Result<HashSet<Digest>>,
    ) -> io::Result<usize> {
        let _exclusive = self.flock(FlockArg::LockExclusive)?;
        let keep = keep()?;
        let mut removed = 0;
        for (digest, path) in named_entries(&self.dir.join("sha256"))? {
            if !keep.contains(&digest) {
                match fs::remove_file(path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_blobs_are_not_present_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let data = b"layer bytes";
        let digest = Digest::of(data);
        fs::write(blobs.partial_path(&digest), data).unwrap();
        assert!(!blobs.contains(&digest, data.len() as u64));
        blobs.commit_partial(&digest).unwrap();
        assert!(blobs.contains(&digest, data.len() as u64));
        assert!(!blobs.contains(&digest, 1), "a wrong size is not the blob");
        assert!(!blobs.partial_path(&digest).exists());
    }

    #[test]
    fn sweep_keeps_what_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        blobs.put(&a, b"a").unwrap();
        blobs.put(&b, b"b").unwrap();
        let removed = blobs.sweep(|| Ok(HashSet::from([a.clone()]))).unwrap();
        assert_eq!(removed, 1);
        assert!(blobs.contains(&a, 1));
        assert!(!blobs.path(&b).exists());
    }
}
