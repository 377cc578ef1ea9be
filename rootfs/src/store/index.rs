//! The NAME -> digest index (`images.json`): read without locking (it is only ever replaced by
//! rename), updated under an exclusive flock so concurrent imports do not lose each other's
//! names.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::fsutil::atomic_write;

const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    pub digest: Digest,
    /// When the name was recorded, seconds since the epoch.
    pub created: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub images: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image index {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image index {path} has version {found}; this bulkhead understands version {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

pub(crate) struct Index {
    path: PathBuf,
    lock_path: PathBuf,
}

/// Held while the index is being changed.
pub(crate) struct IndexLock {
    _lock: Flock<File>,
}

impl Index {
    pub(crate) fn new(root: &Path) -> Index {
        Index {
            path: root.join("images.json"),
            lock_path: root.join("images.lock"),
        }
    }

    pub(crate) fn read(&self) -> Result<IndexFile, IndexError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(IndexFile {
                    version: VERSION,
                    ..Default::default()
                })
            }
            Err(source) => {
                return Err(IndexError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let file: IndexFile =
            serde_json::from_slice(&bytes).map_err(|source| IndexError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        if file.version != VERSION {
            return Err(IndexError::Version {
                path: self.path.clone(),
                found: file.version,
            });
        }
        Ok(file)
    }

    pub(crate) fn lock(&self) -> Result<IndexLock, IndexError> {
        let io_err = |source| IndexError::Io {
            path: self.lock_path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io_err)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io_err(e.into()))?;
        Ok(IndexLock { _lock: lock })
    }

    /// Reads, changes and writes back the index; the caller must hold [`Index::lock`].
    pub(crate) fn update<T>(
        &self,
        _held: &IndexLock,
        f: impl FnOnce(&mut IndexFile) -> T,
    ) -> Result<T, IndexError> {
        let mut file = self.read()?;
        let result = f(&mut file);
        file.version = VERSION;
        let json = serde_json::to_vec_pretty(&file).map_err(|source| IndexError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        atomic_write(&self.path, &json).map_err(|source| IndexError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_updates_keep_every_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let index = Index::new(&root);
                    for j in 0..10 {
                        let lock = index.lock().unwrap();
                        index
                            .update(&lock, |f| {
                                f.images.insert(
                                    format!("img{i}-{j}"),
                                    IndexEntry {
                                        digest: Digest::of(&[i, j]),
                                        created: 0,
                                    },
                                )
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(Index::new(&root).read().unwrap().images.len(), 80);
    }

    #[test]
    fn corrupt_index_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("images.json"), "{not json").unwrap();
        let err = Index::new(dir.path()).read().unwrap_err();
        assert!(matches!(err, IndexError::Corrupt { .. }), "{err}");
    }
}
