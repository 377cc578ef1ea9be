//! Small filesystem helpers shared by the store, the unpacker and the disk builders.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Opens `rel` inside `root` as if `root` were `/`: symlinks (absolute or `..`) are resolved
/// against `root` and can never reach the host. Used to read guest-controlled trees.
pub(crate) fn open_in_root(root: &Path, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let root_fd = File::open(root)?;
    open_beneath(&root_fd, rel, flags)
}

const OPENAT2_RETRIES: u32 = 64;

/// [`open_in_root`] against an already open root directory.
pub(crate) fn open_beneath(root: &impl AsRawFd, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // A `..` resolved in the root fails with EAGAIN whenever any rename or
    // mount happens on the host meanwhile (the kernel cannot tell it was
    // harmless); openat2(2) asks callers to retry, a few times suffices.
    let mut tries = 0;
    let fd = loop {
        match openat2(root.as_raw_fd(), rel, how) {
            Err(nix::errno::Errno::EAGAIN) if tries < OPENAT2_RETRIES => tries += 1,
            result => break result.map_err(io::Error::from)?,
        }
    };
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A path naming `name` inside the directory open as `dir`, through /proc's fd links, so that
/// path-based APIs (std's `remove_dir_all`, `read_dir`) work on an fd we resolved safely.
pub(crate) fn fd_path(dir: &impl AsRawFd, name: &Path) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if !name.as_os_str().is_empty() {
        p.push(name);
    }
    p
}

/// Writes `bytes` to `path` so that readers see either the old or the new content: write a
/// temporary sibling, fsync it, rename it over.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Renames `from` to `to` unless `to` exists; returns false if it did (another process won).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    match nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EEXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes a file or a whole tree, without following symlinks; a missing path is fine.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn open_in_root_keeps_symlinks_inside_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/hostname"), "inside").unwrap();
        symlink("/etc/hostname", root.path().join("abs")).unwrap();
        symlink("../../../../etc/hostname", root.path().join("rel")).unwrap();
        for link in ["abs", "rel", "/abs"] {
            let fd = open_in_root(root.path(), Path::new(link), OFlag::O_RDONLY).unwrap();
            let mut s = String::new();
            File::from(fd).read_to_string(&mut s).unwrap();
            assert_eq!(s, "inside", "{link}");
        }
    }

    #[test]
    fn atomic_write_and_rename_noreplace() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        atomic_write(&target, b"one").unwrap();
        atomic_write(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let other = dir.path().join("g");
        fs::write(&other, "g").unwrap();
        assert!(!rename_noreplace(&other, &target).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let fresh = dir.path().join("h");
        assert!(rename_noreplace(&other, &fresh).unwrap());
        assert_eq!(fs::read(&fresh).unwrap(), b"g");
    }
}
