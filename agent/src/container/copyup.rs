//! `tmpcopyup` (as runc and crun mean it): a fresh tmpfs volume starts with
//! a copy of what the container's root has at its destination, such as
//! the image's /run or /etc under podman's `--read-only`. Done by the agent
//! once the root and the tmpfs are mounted, before the clone.

use std::fs::{self, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{chown, lchown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{mknod, Mode, SFlag};

use super::subpath::{self, Resolved};

/// The path a copy failed on, and why.
pub type CopyUpError = (PathBuf, io::Error);

fn at(path: &Path) -> impl FnOnce(io::Error) -> CopyUpError + '_ {
    move |e| (path.to_path_buf(), e)
}

/// Copies the directory at `path` in `root` into the empty directory `to`
/// (a fresh tmpfs), which takes the directory's own mode and owner.
/// `path` resolves as if `root` were `/` (as a sub-path does), so a link
/// in the image cannot make the agent copy its own files. Nothing there,
/// or something other than a directory, leaves `to` as it is.
///
/// Modes, owners and symlinks are kept, fifos and device nodes made
/// anew; sockets are left out (nothing listens on a copy), hard links
/// become separate files, and times and extended attributes are not kept.
pub fn copy_up(root: &Path, path: &Path, to: &Path) -> Result<(), CopyUpError> {
    let from = match subpath::resolve(root, path) {
        Ok(Resolved { path, is_dir: true }) => path,
        Ok(_) | Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
        Err(e) => return Err((root.join(path), e.into())),
    };
    copy_dir(&from, to)?;
    let meta = fs::symlink_metadata(&from).map_err(at(&from))?;
    set_owner_and_mode(to, &meta).map_err(at(to))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), CopyUpError> {
    for entry in fs::read_dir(from).map_err(at(from))? {
        let entry = entry.map_err(at(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&src).map_err(at(&src))?;
        copy_entry(&src, &dst, &meta)?;
    }
    Ok(())
}

fn copy_entry(src: &Path, dst: &Path, meta: &Metadata) -> Result<(), CopyUpError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        symlink(fs::read_link(src).map_err(at(src))?, dst).map_err(at(dst))?;
        return lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(at(dst));
    }
    if kind.is_dir() {
        fs::create_dir(dst).map_err(at(dst))?;
        copy_dir(src, dst)?;
    } else if kind.is_file() {
        fs::copy(src, dst).map_err(at(src))?;
    } else if kind.is_socket() {
        return Ok(());
    } else {
        // A fifo or a device node.
        mknod(
            dst,
            SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT),
            Mode::from_bits_truncate(meta.mode() & 0o7777),
            meta.rdev(),
        )
        .map_err(|e| (dst.to_path_buf(), e.into()))?;
    }
    set_owner_and_mode(dst, meta).map_err(at(dst))
}

/// Owner first: chown clears the set-id bits.
fn set_owner_and_mode(path: &Path, meta: &Metadata) -> io::Result<()> {
    chown(path, Some(meta.uid()), Some(meta.gid()))?;
    fs::set_permissions(path, Permissions::from_mode(meta.mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn copies_a_tree_with_its_modes_and_links() {
        let base = std::env::temp_dir().join(format!("bulkhead-copyup-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        let base = base.canonicalize().unwrap();
        let (root, to) = (base.join("root"), base.join("tmpfs"));
        let run = root.join("run");
        fs::create_dir_all(run.join("lock/sub")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir(&to).unwrap();
        fs::write(run.join("motd"), "hello\n").unwrap();
        fs::write(run.join("lock/sub/pid"), "1\n").unwrap();
        fs::write(root.join("etc/secret"), "agent's own\n").unwrap();
        symlink("lock/sub/pid", run.join("pid")).unwrap();
        // Left as a link, never followed.
        symlink("/etc", run.join("etc")).unwrap();
        nix::unistd::mkfifo(&run.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(run.join("sock")).unwrap();
        for (path, m) in [
            ("run", 0o1755),
            ("run/motd", 0o640),
            ("run/lock", 0o700),
            ("run/lock/sub/pid", 0o4755),
            ("run/fifo", 0o620),
        ] {
            fs::set_permissions(root.join(path), Permissions::from_mode(m)).unwrap();
        }

        copy_up(&root, Path::new("run"), &to).unwrap();
        assert_eq!(fs::read_to_string(to.join("motd")).unwrap(), "hello\n");
        assert_eq!(fs::read_to_string(to.join("pid")).unwrap(), "1\n");
        assert_eq!(
            fs::read_link(to.join("pid")).unwrap(),
            Path::new("lock/sub/pid")
        );
        assert_eq!(fs::read_link(to.join("etc")).unwrap(), Path::new("/etc"));
        assert!(fs::symlink_metadata(to.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(!to.join("sock").exists());
        for (path, m) in [
            ("", 0o1755),
            ("motd", 0o640),
            ("lock", 0o700),
            ("lock/sub/pid", 0o4755),
            ("fifo", 0o620),
        ] {
            assert_eq!(mode(&to.join(path)), m, "{path:?}");
        }
        let owner = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner(&to.join("motd")), owner(&run.join("motd")));

        // A link out of the root resolves inside it: its /etc, not ours.
        let to2 = base.join("tmpfs2");
        fs::create_dir(&to2).unwrap();
        symlink("../../../../../../etc", root.join("up")).unwrap();
        copy_up(&root, Path::new("up"), &to2).unwrap();
        assert_eq!(
            fs::read_to_string(to2.join("secret")).unwrap(),
            "agent's own\n"
        );
        assert!(!to2.join("passwd").exists());
        // Nothing there, or a file: nothing to copy.
        let to3 = base.join("tmpfs3");
        fs::create_dir(&to3).unwrap();
        fs::set_permissions(&to3, Permissions::from_mode(0o711)).unwrap();
        for missing in ["missing", "run/motd", "run/motd/x"] {
            copy_up(&root, Path::new(missing), &to3).unwrap();
        }
        assert_eq!(fs::read_dir(&to3).unwrap().count(), 0);
        assert_eq!(mode(&to3), 0o711);

        // Errors name the path.
        let (path, e) = copy_up(&root, Path::new("etc"), &base.join("gone")).unwrap_err();
        assert_eq!(path, root.join("etc/secret"));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        fs::remove_dir_all(&base).unwrap();
    }
}
