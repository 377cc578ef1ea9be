//! Read access to the files of an image, whether it is a directory (OCI layout) or a tarball
//! (docker-archive, oci-archive), without extracting the tarball.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::SourceError;

/// Symlinks followed inside a tarball before giving up (docker 25 links legacy layer paths
/// to blobs; nothing needs more than one hop).
const MAX_LINK_HOPS: usize = 8;

pub(crate) trait Archive {
    /// Opens the file at `path` (relative, `/`-separated).
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, SourceError>;
    fn contains(&self, path: &str) -> bool;
    /// The directory or file the image came from, for error messages.
    fn location(&self) -> &Path;

    /// Reads a small metadata file (JSON) whole, refusing anything over `limit` bytes.
    fn read_small(&self, path: &str, limit: u64) -> Result<Vec<u8>, SourceError> {
        let mut bytes = Vec::new();
        self.open(path)?
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| self.io_error(path, source))?;
        if bytes.len() as u64 > limit {
            return Err(SourceError::BadManifest {
                location: self.location().to_path_buf(),
                reason: format!("{path} is larger than {limit} bytes"),
            });
        }
        Ok(bytes)
    }

    fn io_error(&self, path: &str, source: io::Error) -> SourceError {
        SourceError::Io {
            location: self.location().join(path),
            source,
        }
    }
}

/// Lexically normalizes an archive path; `None` if it climbs above the archive root.
fn clean(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

pub(crate) struct DirArchive {
    root: PathBuf,
}

impl DirArchive {
    pub(crate) fn open_dir(root: &Path) -> Result<DirArchive, SourceError> {
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(DirArchive {
                root: root.to_path_buf(),
            }),
            Ok(_) => Err(SourceError::NotAnImage {
                location: root.to_path_buf(),
                reason: "not a directory".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SourceError::NotFound(root.to_path_buf()))
            }
            Err(source) => Err(SourceError::Io {
                location: root.to_path_buf(),
                source,
            }),
        }
    }

    fn resolve(&self, path: &str) -> Option<PathBuf> {
        // Paths come from manifests: keep them inside the layout directory.
        let cleaned = clean(path)?;
        (!cleaned.is_empty() && !path.split('/').any(|p| p == ".."))
            .then(|| self.root.join(cleaned))
    }
}

impl Archive for DirArchive {
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, SourceError> {
        let missing = || SourceError::Missing {
            location: self.root.clone(),
            path: path.to_string(),
        };
        let full = self.resolve(path).ok_or_else(missing)?;
        match File::open(&full) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
            Err(source) => Err(SourceError::Io {
                location: full,
                source,
            }),
        }
    }

    fn contains(&self, path: &str) -> bool {
        self.resolve(path).is_some_and(|p| p.is_file())
    }

    fn location(&self) -> &Path {
        &self.root
    }
}

enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
}

/// An uncompressed tarball indexed once (headers only; data is skipped with seeks), then read
/// member by member with seek + take.
pub(crate) struct TarArchive {
    path: PathBuf,
    members: HashMap<String, Member>,
}

impl TarArchive {
    pub(crate) fn open_file(path: &Path) -> Result<TarArchive, SourceError> {
        let io_err = |source| SourceError::Io {
            location: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                SourceError::NotFound(path.to_path_buf())
            } else {
                io_err(e)
            }
        })?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(io_err)?;
        if n >= 2 && magic[..2] == [0x1f, 0x8b] || n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(SourceError::NotAnImage {
                location: path.to_path_buf(),
                reason: "the archive is compressed; decompress it first (gunzip / unzstd)".into(),
            });
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;

        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(file);
        let bad = |e: io::Error| SourceError::NotAnImage {
            location: path.to_path_buf(),
            reason: format!("not a readable tar archive: {e}"),
        };
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = entry.path().map_err(bad)?;
            let Some(name) = name.to_str().and_then(clean) else {
                continue;
            };
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Some(target) = entry.link_name().map_err(bad)? else {
                        continue;
                    };
                    let target = target.to_string_lossy().into_owned();
                    // Hard link names are archive paths; symlink targets are relative to the link.
                    if entry.header().entry_type() == tar::EntryType::Link {
                        Member::Symlink(format!("/{target}"))
                    } else {
                        Member::Symlink(target)
                    }
                }
                _ => continue,
            };
            members.insert(name, member);
        }
        Ok(TarArchive {
            path: path.to_path_buf(),
            members,
        })
    }

    fn lookup(&self, path: &str) -> Option<(u64, u64)> {
        let mut current = clean(path)?;
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&current)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Symlink(target) => {
                    let base = if target.starts_with('/') {
                        String::new()
                    } else {
                        current
                            .rsplit_once('/')
                            .map(|(dir, _)| dir.to_string())
                            .unwrap_or_default()
                    };
                    current = clean(&format!("{base}/{target}"))?;
                }
            }
        }
        None
    }
}

impl Archive for TarArchive {
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, SourceError> {
        let (offset, size) = self.lookup(path).ok_or_else(|| SourceError::Missing {
            location: self.path.clone(),
            path: path.to_string(),
        })?;
        let io_err = |source| SourceError::Io {
            location: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        Ok(Box::new(io::BufReader::with_capacity(
            256 * 1024,
            file.take(size),
        )))
    }

    fn contains(&self, path: &str) -> bool {
        self.lookup(path).is_some()
    }

    fn location(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean("./a/b").as_deref(), Some("a/b"));
        assert_eq!(clean("/a/./b/../c").as_deref(), Some("a/c"));
        assert_eq!(clean("../x"), None);
    }

    #[test]
    fn tar_archive_reads_members_and_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("./manifest.json", b"[]");
        add("blobs/sha256/abc", b"layer bytes");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "legacy/layer.tar", "../blobs/sha256/abc")
            .unwrap();
        b.into_inner().unwrap();

        let a = TarArchive::open_file(&path).unwrap();
        let read = |p: &str| {
            let mut s = String::new();
            a.open(p).unwrap().read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(read("manifest.json"), "[]");
        assert_eq!(read("legacy/layer.tar"), "layer bytes");
        assert!(a.contains("blobs/sha256/abc"));
        assert!(matches!(a.open("nope"), Err(SourceError::Missing { .. })));
    }
}
