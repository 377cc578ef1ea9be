//! One pass over a directory tree: its size, an ext4 space estimate, and (optionally) a
//! fingerprint of its metadata used as a cache key for plain-directory images.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};

const BLOCK: u64 = 4096;
/// ext4 keeps symlink targets shorter than this inside the inode.
const FAST_SYMLINK_MAX: u64 = 60;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TreeStats {
    /// Inodes (hard links counted once).
    pub inodes: u64,
    /// Sum of regular file sizes.
    pub file_bytes: u64,
    /// Data and directory blocks ext4 needs for this tree, in bytes.
    pub ext4_data_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("scanning {path}: {source}")]
pub struct WalkError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Walks `root` without following symlinks. With `fingerprint`, also hashes every entry's
/// path, type, mode, owner, size, mtime (ns), device number and link target: any edit that
/// goes through the filesystem changes at least the mtime, so this is a cheap stand-in for
/// hashing all content.
pub(crate) fn scan(
    root: &Path,
    fingerprint: Option<&str>,
) -> Result<(TreeStats, Option<Digest>), WalkError> {
    let mut stats = TreeStats::default();
    let mut hasher = fingerprint.map(|domain| {
        let mut h = Hasher::default();
        h.update(domain.as_bytes());
        h.update(b"\0");
        h
    });
    let mut seen = HashSet::new();
    scan_dir(root, Path::new(""), &mut stats, &mut hasher, &mut seen)?;
    Ok((stats, hasher.map(Hasher::finish)))
}

fn scan_dir(
    root: &Path,
    rel: &Path,
    stats: &mut TreeStats,
    hasher: &mut Option<Hasher>,
    seen: &mut HashSet<(u64, u64)>,
) -> Result<(), WalkError> {
    let dir = root.join(rel);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WalkError { path, source }
    };
    let m = fs::symlink_metadata(&dir).map_err(err(&dir))?;
    record(hasher, rel, &m, None);
    stats.inodes += 1;
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(err(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err(&dir))?;
    names.sort();
    // "." and ".." records, then one record per name: 8 bytes of header plus the name
    // padded to 4.
    let dirent_bytes: u64 = 24
        + names
            .iter()
            .map(|n| 8 + (n.len() as u64).div_ceil(4) * 4)
            .sum::<u64>();
    stats.ext4_data_bytes += dirent_bytes.div_ceil(BLOCK).max(1) * BLOCK;

    for name in names {
        let child_rel = rel.join(&name);
        let path = root.join(&child_rel);
        let m = fs::symlink_metadata(&path).map_err(err(&path))?;
        if m.is_dir() {
            scan_dir(root, &child_rel, stats, hasher, seen)?;
            continue;
        }
        let target = if m.file_type().is_symlink() {
            Some(fs::read_link(&path).map_err(err(&path))?)
        } else {
            None
        };
        record(hasher, &child_rel, &m, target.as_deref());
        if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        stats.inodes += 1;
        if m.is_file() {
            stats.file_bytes += m.len();
            stats.ext4_data_bytes += m.len().div_ceil(BLOCK) * BLOCK;
        } else if target.is_some() && m.len() >= FAST_SYMLINK_MAX {
            stats.ext4_data_bytes += BLOCK;
        }
    }
    Ok(())
}

fn record(hasher: &mut Option<Hasher>, rel: &Path, m: &fs::Metadata, target: Option<&Path>) {
    let Some(h) = hasher else { return };
    h.update(rel.as_os_str().as_bytes());
    h.update(b"\0");
    let ino = if m.nlink() > 1 { m.ino() } else { 0 };
    for v in [
        u64::from(m.mode()),
        u64::from(m.uid()),
        u64::from(m.gid()),
        m.len(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.rdev(),
        ino,
    ] {
        h.update(&v.to_le_bytes());
    }
    if let Some(t) = target {
        h.update(t.as_os_str().as_bytes());
    }
    h.update(b"\0");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_content_edits_and_stats_add_up() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/a"), vec![1u8; 5000]).unwrap();
        fs::hard_link(d.path().join("sub/a"), d.path().join("b")).unwrap();
        std::os::unix::fs::symlink("x".repeat(70), d.path().join("long")).unwrap();
        let (stats, fp1) = scan(d.path(), Some("t")).unwrap();
        assert_eq!(stats.inodes, 4); // root, sub, a(=b), long
        assert_eq!(stats.file_bytes, 5000);
        assert_eq!(
            stats.ext4_data_bytes,
            2 * BLOCK /* dirs */ + 2 * BLOCK /* a */ + BLOCK /* long */
        );

        let (_, again) = scan(d.path(), Some("t")).unwrap();
        assert_eq!(fp1, again);
        let (_, other_domain) = scan(d.path(), Some("u")).unwrap();
        assert_ne!(fp1, other_domain);
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(d.path().join("sub/a"), vec![2u8; 5000]).unwrap();
        let (_, fp2) = scan(d.path(), Some("t")).unwrap();
        assert_ne!(fp1, fp2);
    }
}
