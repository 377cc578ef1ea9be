//! A volume's sub-path (how an OCI bind of a single host file arrives: its
//! directory is the share, the file name the sub-path), looked up by the
//! agent once the volume is mounted and before the clone: whether it is a
//! directory decides what the init creates to bind it on, and the init
//! cannot look (or allocate) itself.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// A sub-path found inside its volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where it is in the agent's view, symlinks resolved.
    pub path: PathBuf,
    /// A directory; anything else (a file, a socket, a device node) is
    /// bound onto an empty file.
    pub is_dir: bool,
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Finds `subpath` inside the volume at `root`. Symlinks resolve as if
/// `root` were `/` (openat2's RESOLVE_IN_ROOT): a link left in a writable
/// share by an earlier container cannot make a later one bind the guest's
/// own files.
pub fn resolve(root: &Path, subpath: &Path) -> Result<Resolved, Errno> {
    let dir = File::open(root).map_err(io_errno)?;
    let c_path = CString::new(subpath.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the path and an open_how of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_path.as_ptr(),
            &how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: openat2 just returned this descriptor; nobody else owns it.
    let found = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let is_dir = nix::sys::stat::fstat(found.as_raw_fd())?.st_mode & libc::S_IFMT == libc::S_IFDIR;
    // The bind needs a path; the descriptor's link names what it resolved
    // to, in our mount namespace, which the init's is a copy of.
    let path =
        std::fs::read_link(format!("/proc/self/fd/{}", found.as_raw_fd())).map_err(io_errno)?;
    Ok(Resolved { path, is_dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_directories_and_links_inside_the_volume() {
        let root = std::env::temp_dir().join(format!("bulkhead-subpath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("dir/inner")).unwrap();
        std::fs::write(root.join("hosts"), "127.0.0.1 box\n").unwrap();
        let root = root.canonicalize().unwrap();

        let file = resolve(&root, Path::new("hosts")).unwrap();
        assert_eq!(
            file,
            Resolved {
                path: root.join("hosts"),
                is_dir: false
            }
        );
        let dir = resolve(&root, Path::new("dir/inner")).unwrap();
        assert_eq!(
            dir,
            Resolved {
                path: root.join("dir/inner"),
                is_dir: true
            }
        );

        // An absolute link means the volume's own /hosts, not the agent's.
        std::os::unix::fs::symlink("/hosts", root.join("dir/link")).unwrap();
        assert_eq!(
            resolve(&root, Path::new("dir/link")).unwrap().path,
            root.join("hosts")
        );
        // So does climbing out with `..`.
        std::os::unix::fs::symlink("../../../../etc", root.join("up")).unwrap();
        assert_eq!(resolve(&root, Path::new("up")), Err(Errno::ENOENT));
        assert_eq!(resolve(&root, Path::new("missing")), Err(Errno::ENOENT));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
