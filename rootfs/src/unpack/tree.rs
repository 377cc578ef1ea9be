//! Creates entries inside a root directory without ever leaving it.
//!
//! Parent directories are resolved with `openat2(RESOLVE_IN_ROOT)`, so a symlink planted by an
//! earlier entry (`etc -> /etc`, `x -> ../../..`) resolves inside the root exactly as it would in
//! the guest, never on the host. The final component is always created with `*at` calls that
//! do not follow symlinks (`O_NOFOLLOW | O_EXCL`, `AT_SYMLINK_NOFOLLOW`, `linkat` without
//! `AT_SYMLINK_FOLLOW`).
//!
//! The root is a private directory this process is filling: nothing else writes to it
//! concurrently, which is what makes path-based metadata calls on a name we just created safe.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat,
    Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::fsutil::{fd_path, open_beneath};

/// Ownership, permission bits (including setuid/setgid/sticky), mtime and xattrs of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) enum Node<'a> {
    Dir,
    File(&'a mut dyn Read),
    Symlink(&'a Path),
    /// Target path relative to the root.
    HardLink(&'a Path),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

pub(crate) struct Tree {
    root: File,
}

impl Tree {
    pub(crate) fn open(root: &Path) -> io::Result<Tree> {
        let root = File::open(root)?;
        if !root.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(Tree { root })
    }

    /// Creates (or replaces) the entry at `rel`, a normalized relative path ("" is the root,
    /// which only accepts `Node::Dir` and then just takes the metadata).
    pub(crate) fn create(&self, rel: &Path, node: Node<'_>, meta: &Meta) -> io::Result<()> {
        if rel.as_os_str().is_empty() {
            return match node {
                Node::Dir => self.apply_meta(&self.root, OsStr::new(""), meta, false),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only a directory can replace the root",
                )),
            };
        }
        let (parent, name) = self.parent(rel, true)?;
        let existing = lstat_at(&parent, name)?;
        let existing_is_dir = existing.is_some_and(|st| is_type(&st, SFlag::S_IFDIR));

        if let Node::Dir = node {
            if !existing_is_dir {
                if existing.is_some() {
                    remove_at(&parent, name, false)?;
                }
                mkdirat(
                    Some(parent.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o700),
                )?;
            }
            return self.apply_meta(&parent, name, meta, false);
        }

        if let Node::HardLink(target) = node {
            if target == rel {
                return Ok(());
            }
            // Resolve the target first: replacing `name` could remove it.
            let (target_parent, target_name) = self.parent(target, false)?;
            if lstat_at(&target_parent, target_name)?.is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("hard link target {} does not exist", target.display()),
                ));
            }
            if existing.is_some() {
                remove_at(&parent, name, existing_is_dir)?;
            }
            linkat(
                Some(target_parent.as_raw_fd()),
                target_name,
                Some(parent.as_raw_fd()),
                name,
                AtFlags::empty(),
            )?;
            return Ok(());
        }

        if existing.is_some() {
            remove_at(&parent, name, existing_is_dir)?;
        }
        match node {
            Node::File(content) => {
                let fd = openat(
                    Some(parent.as_raw_fd()),
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                // SAFETY: openat just returned this descriptor and nothing else owns it.
                let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                io::copy(content, &mut file)?;
                // Ownership first: chown clears setuid/setgid bits, chmod then restores them.
                fchown(
                    file.as_raw_fd(),
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                )?;
                fchmod(file.as_raw_fd(), mode_bits(meta.mode))?;
                set_xattrs(&fd_path(&file, Path::new("")), &meta.xattrs);
                let t = TimeSpec::new(meta.mtime, 0);
                futimens(file.as_raw_fd(), &t, &t)?;
                Ok(())
            }
            Node::Symlink(target) => {
                symlinkat(target, Some(parent.as_raw_fd()), name)?;
                self.apply_meta(&parent, name, meta, true)
            }
            Node::CharDevice { major, minor } => {
                self.mknod(&parent, name, SFlag::S_IFCHR, major, minor, meta)
            }
            Node::BlockDevice { major, minor } => {
                self.mknod(&parent, name, SFlag::S_IFBLK, major, minor, meta)
            }
            Node::Fifo => self.mknod(&parent, name, SFlag::S_IFIFO, 0, 0, meta),
            Node::Dir | Node::HardLink(_) => unreachable!("handled above"),
        }
    }

    fn mknod(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        kind: SFlag,
        major: u32,
        minor: u32,
        meta: &Meta,
    ) -> io::Result<()> {
        let dev = libc::makedev(major, minor);
        mknodat(
            Some(parent.as_raw_fd()),
            name,
            kind,
            Mode::from_bits_truncate(0o600),
            dev,
        )?;
        self.apply_meta(parent, name, meta, false)
    }

    /// Sets ownership, mode, xattrs and mtime of `name` in `dir` ("" means `dir` itself).
    fn apply_meta(
        &self,
        dir: &impl AsRawFd,
        name: &OsStr,
        meta: &Meta,
        is_symlink: bool,
    ) -> io::Result<()> {
        let at = Some(dir.as_raw_fd());
        let name_or_dot = if name.is_empty() {
            OsStr::new(".")
        } else {
            name
        };
        fchownat(
            at,
            name_or_dot,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if !is_symlink {
            // Linux cannot chmod without following; `name` was just created (or checked) as a
            // non-symlink in our private tree, so following it is following nothing.
            fchmodat(
                at,
                name_or_dot,
                mode_bits(meta.mode),
                FchmodatFlags::FollowSymlink,
            )?;
            set_xattrs(&fd_path(dir, Path::new(name)), &meta.xattrs);
        }
        let t = TimeSpec::new(meta.mtime, 0);
        utimensat(at, name_or_dot, &t, &t, UtimensatFlags::NoFollowSymlink)?;
        Ok(())
    }

    /// Sets just the mtime: directories get theirs last, after their children were written.
    pub(crate) fn set_mtime(&self, rel: &Path, mtime: i64) -> io::Result<()> {
        let (dir, name) = if rel.as_os_str().is_empty() {
            (
                open_beneath(
                    &self.root,
                    Path::new(""),
                    OFlag::O_PATH | OFlag::O_DIRECTORY,
                )?,
                OsStr::new("."),
            )
        } else {
            self.parent(rel, false)?
        };
        let t = TimeSpec::new(mtime, 0);
        utimensat(
            Some(dir.as_raw_fd()),
            name,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )?;
        Ok(())
    }

    /// Removes `rel` and everything below it; a missing entry is not an error.
    pub(crate) fn remove(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = match self.parent(rel, false) {
            Ok(p) => p,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        match lstat_at(&parent, name)? {
            Some(st) => remove_at(&parent, name, is_type(&st, SFlag::S_IFDIR)),
            None => Ok(()),
        }
    }

    /// Names in directory `rel` (empty if it does not exist or is not a directory).
    pub(crate) fn children(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let dir = match self.open_dir(rel, false) {
            Ok(d) => d,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        fs::read_dir(fd_path(&dir, Path::new("")))?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    /// Whether `rel` exists and is a directory (not a symlink to one).
    pub(crate) fn is_dir(&self, rel: &Path) -> io::Result<bool> {
        if rel.as_os_str().is_empty() {
            return Ok(true);
        }
        match self.parent(rel, false) {
            Ok((parent, name)) => {
                Ok(lstat_at(&parent, name)?.is_some_and(|st| is_type(&st, SFlag::S_IFDIR)))
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn parent<'p>(&self, rel: &'p Path, create: bool) -> io::Result<(OwnedFd, &'p OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        let dir = self.open_dir(rel.parent().unwrap_or(Path::new("")), create)?;
        Ok((dir, name))
    }

    /// Opens directory `rel` resolved inside the root, creating missing components (root-owned,
    /// 0755, as Docker does for parents a layer does not list) when `create` is set.
    fn open_dir(&self, rel: &Path, create: bool) -> io::Result<OwnedFd> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        match open_beneath(&self.root, rel, flags) {
            Err(e)
                if create && e.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() =>
            {
                let (parent, name) = self.parent(rel, true)?;
                match mkdirat(
                    Some(parent.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open_beneath(&self.root, rel, flags)
            }
            other => other,
        }
    }
}

fn mode_bits(mode: u32) -> Mode {
    Mode::from_bits_truncate(mode & 0o7777)
}

fn is_type(st: &FileStat, kind: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

fn lstat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn remove_at(dir: &OwnedFd, name: &OsStr, is_dir: bool) -> io::Result<()> {
    if is_dir {
        // std's remove_dir_all never follows symlinks below the directory it is given.
        fs::remove_dir_all(fd_path(dir, Path::new(name)))
    } else {
        unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir).map_err(Into::into)
    }
}

/// Xattrs (file capabilities, SELinux labels) are best effort: the host filesystem may not
/// support a namespace, and a missing label must not fail the whole image.
fn set_xattrs(path: &Path, xattrs: &[(Vec<u8>, Vec<u8>)]) {
    if xattrs.is_empty() {
        return;
    }
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    for (name, value) in xattrs {
        let Ok(cname) = CString::new(name.clone()) else {
            continue;
        };
        // SAFETY: both strings are NUL-terminated and live across the call; value's pointer and
        // length describe one initialized buffer. lsetxattr does not follow a final symlink.
        let rc = unsafe {
            libc::lsetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            log::warn!(
                "cannot set xattr {} on {}: {}",
                String::from_utf8_lossy(name),
                path.display(),
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_000_000,
            xattrs: vec![],
        }
    }

    #[test]
    fn creates_parents_and_replaces_entries() {
        let root = tempfile::tempdir().unwrap();
        let tree = Tree::open(root.path()).unwrap();
        let mut content: &[u8] = b"one";
        tree.create(Path::new("a/b/f"), Node::File(&mut content), &meta(0o644))
            .unwrap();
        assert_eq!(fs::read(root.path().join("a/b/f")).unwrap(), b"one");
        assert_eq!(
            fs::metadata(root.path().join("a/b"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );

        // A file replaces a directory, a directory replaces a file.
        let mut content: &[u8] = b"two";
        tree.create(Path::new("a/b"), Node::File(&mut content), &meta(0o600))
            .unwrap();
        assert_eq!(fs::read(root.path().join("a/b")).unwrap(), b"two");
        tree.create(Path::new("a/b"), Node::Dir, &meta(0o711))
            .unwrap();
        let m = fs::symlink_metadata(root.path().join("a/b")).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, 0o711);
        assert_eq!(m.mtime(), 1_000_000);
    }

    #[test]
    fn never_writes_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let tree = Tree::open(root.path()).unwrap();
        symlink(outside.path(), root.path().join("abs")).unwrap();
        symlink("../../../../../../..", root.path().join("up")).unwrap();
        // A name that is a symlink to outside: the file replaces the link.
        symlink(outside.path().join("victim"), root.path().join("leaf")).unwrap();

        let mut c: &[u8] = b"x";
        // `abs` resolves to <root>/<outside path>, which does not exist: parents get created
        // inside the root or the call fails, but nothing lands in `outside`.
        let _ = tree.create(
            &Path::new("abs").join("f"),
            Node::File(&mut c),
            &meta(0o644),
        );
        let mut c: &[u8] = b"x";
        tree.create(Path::new("up/g"), Node::File(&mut c), &meta(0o644))
            .unwrap();
        let mut c: &[u8] = b"x";
        tree.create(Path::new("leaf"), Node::File(&mut c), &meta(0o644))
            .unwrap();
        tree.create(
            Path::new("up/h"),
            Node::CharDevice { major: 1, minor: 3 },
            &meta(0o666),
        )
        .unwrap();

        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(fs::read(root.path().join("g")).unwrap(), b"x");
        assert!(fs::symlink_metadata(root.path().join("leaf"))
            .unwrap()
            .is_file());
        assert!(fs::symlink_metadata(root.path().join("h")).is_ok());
    }

    #[test]
    fn remove_and_children() {
        let root = tempfile::tempdir().unwrap();
        let tree = Tree::open(root.path()).unwrap();
        tree.create(Path::new("d/e"), Node::Dir, &meta(0o755))
            .unwrap();
        tree.create(Path::new("d/f"), Node::Fifo, &meta(0o644))
            .unwrap();
        let mut names = tree.children(Path::new("d")).unwrap();
        names.sort();
        assert_eq!(names, vec![OsString::from("e"), OsString::from("f")]);
        tree.remove(Path::new("d")).unwrap();
        tree.remove(Path::new("d")).unwrap();
        tree.remove(Path::new("nope/deeper")).unwrap();
        assert!(!root.path().join("d").exists());
        assert!(tree.children(Path::new("d")).unwrap().is_empty());
    }
}
