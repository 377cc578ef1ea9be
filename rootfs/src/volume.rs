//! Named volumes: persistent ext4 images at `volumes/<name>.ext4`, created on first use.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::ext4::{ensure_empty_ext4, DiskError};

/// Size of a volume created without an explicit size: sparse, so it costs nothing until used.
pub const DEFAULT_VOLUME_MIB: u64 = 1024;
const SUFFIX: &str = ".ext4";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name {0:?}: use [a-zA-Z0-9] followed by [a-zA-Z0-9_.-], at most 128 characters")]
    InvalidName(String),
    #[error("no such volume {0:?}")]
    NoSuchVolume(String),
    #[error("volume {name:?}: {source}")]
    Disk {
        name: String,
        #[source]
        source: DiskError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub path: PathBuf,
    /// The disk's capacity.
    pub size_bytes: u64,
    /// Space the sparse file really takes on the host.
    pub used_bytes: u64,
}

/// The volumes directory of a store.
#[derive(Clone, Debug)]
pub struct Volumes {
    dir: PathBuf,
}

pub fn validate_volume_name(name: &str) -> Result<(), VolumeError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(VolumeError::InvalidName(name.to_string()))
    }
}

impl Volumes {
    pub fn new(dir: impl Into<PathBuf>) -> Volumes {
        Volumes { dir: dir.into() }
    }

    /// Where volume `name` lives (whether or not it exists yet).
    pub fn path(&self, name: &str) -> Result<PathBuf, VolumeError> {
        validate_volume_name(name)?;
        Ok(self.dir.join(format!("{name}{SUFFIX}")))
    }

    /// Returns the volume's disk image, creating an empty ext4 of `size_mib` (default
    /// [`DEFAULT_VOLUME_MIB`]) on first use. An existing volume keeps its size.
    pub fn ensure(&self, name: &str, size_mib: Option<u64>) -> Result<PathBuf, VolumeError> {
        let path = self.path(name)?;
        fs::create_dir_all(&self.dir).map_err(|source| VolumeError::Io {
            path: self.dir.clone(),
            source,
        })?;
        ensure_empty_ext4(&path, size_mib.unwrap_or(DEFAULT_VOLUME_MIB), true).map_err(
            |source| VolumeError::Disk {
                name: name.to_string(),
                source,
            },
        )?;
        Ok(path)
    }

    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VolumeError::Io { path, source }
        };
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut volumes = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            // Skips half-created files (".new-…") and anything else that is not ours.
            if validate_volume_name(name).is_err() {
                continue;
            }
            let m = entry.metadata().map_err(io_err(&entry.path()))?;
            if !m.is_file() {
                continue;
            }
            volumes.push(VolumeInfo {
                name: name.to_string(),
                path: entry.path(),
                size_bytes: m.len(),
                used_bytes: m.blocks() * 512,
            });
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(VolumeError::NoSuchVolume(name.to_string()))
            }
            Err(source) => Err(VolumeError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["data", "my-vol_1.2", "A"] {
            validate_volume_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(
                matches!(validate_volume_name(bad), Err(VolumeError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn create_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let vols = Volumes::new(dir.path().join("volumes"));
        assert!(vols.list().unwrap().is_empty());
        let p = vols.ensure("data", Some(64)).unwrap();
        assert_eq!(p, dir.path().join("volumes/data.ext4"));
        // Second use returns the same disk untouched.
        fs::write(dir.path().join("marker"), "").unwrap();
        let before = fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(vols.ensure("data", Some(128)).unwrap(), p);
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), before);

        let list = vols.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "data");
        assert_eq!(list[0].size_bytes, 64 << 20);
        assert!(
            list[0].used_bytes < list[0].size_bytes / 2,
            "volume should be sparse: {list:?}"
        );

        vols.remove("data").unwrap();
        assert!(matches!(
            vols.remove("data"),
            Err(VolumeError::NoSuchVolume(_))
        ));
        assert!(matches!(
            vols.ensure("../etc", None),
            Err(VolumeError::InvalidName(_))
        ));
    }
}
