//! Filesystem operations as data.
//!
//! The rootfs and /dev setups are built as lists of [`FsOp`] by pure
//! functions (unit-tested without privileges) and then executed here in the
//! container's mount namespace.

use std::os::unix::fs::symlink;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use thiserror::Error;

use super::copyup::copy_up;
use super::disk::{await_disk, DiskError, ATTACH_TIMEOUT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    /// Waits until the block device has a capacity (it may be attached
    /// only after a restore) and flushes its buffer cache. Agent-side only.
    AwaitDisk {
        device: PathBuf,
    },
    /// Creates one directory; an existing one is fine.
    Mkdir {
        path: PathBuf,
        mode: u32,
    },
    /// Creates a directory and its missing parents.
    MkdirAll {
        path: PathBuf,
    },
    /// Creates an empty file unless something is there already: the mount
    /// point of a file bind.
    CreateFile {
        path: PathBuf,
    },
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    /// A character device node.
    Mknod {
        path: PathBuf,
        mode: u32,
        major: u64,
        minor: u64,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    /// Copies what the container's root at `root` has at `path` (relative,
    /// resolved inside `root`) into the fresh tmpfs at `to`: a volume's
    /// `tmpcopyup`. Agent-side only.
    CopyUp {
        root: PathBuf,
        path: PathBuf,
        to: PathBuf,
    },
}

#[derive(Debug, Error)]
pub enum FsOpError {
    #[error("cannot create directory {path}: {source}")]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create file {path}: {source}")]
    CreateFile { path: PathBuf, source: Errno },
    #[error("cannot mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: Errno,
    },
    #[error("cannot create device {path}: {source}")]
    Mknod { path: PathBuf, source: Errno },
    #[error("cannot create symlink {link}: {source}")]
    Symlink {
        link: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot copy up {path}: {source}")]
    CopyUp {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Disk(#[from] DiskError),
}

impl FsOp {
    /// Runs the operation. Mode bits are exact only under umask 0, which
    /// the container setup sets.
    pub fn apply(&self) -> Result<(), FsOpError> {
        if let FsOp::AwaitDisk { device } = self {
            return Ok(await_disk(device, ATTACH_TIMEOUT)?);
        }
        if let FsOp::CopyUp { root, path, to } = self {
            return copy_up(root, path, to)
                .map_err(|(path, source)| FsOpError::CopyUp { path, source });
        }
        self.apply_raw().map_err(|e| self.error(e))
    }

    /// Runs a syscall operation, reporting only the errno: allocation-free
    /// on both paths, for the container's init, which shares the agent's
    /// memory until it execs. [`error`](Self::error) makes the full error.
    pub fn apply_raw(&self) -> Result<(), Errno> {
        match self {
            // Need the agent's clock and sleeps, or allocate: never in the
            // init's plan.
            FsOp::AwaitDisk { .. } | FsOp::CopyUp { .. } => Err(Errno::EINVAL),
            FsOp::Mkdir { path, mode } => {
                match nix::unistd::mkdir(path, Mode::from_bits_truncate(*mode)) {
                    Ok(()) | Err(Errno::EEXIST) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            FsOp::MkdirAll { path } => std::fs::create_dir_all(path).map_err(io_errno),
            // O_RDONLY: an existing file is left as it is, and a directory
            // there fails (EISDIR) rather than taking a file bind.
            FsOp::CreateFile { path } => nix::fcntl::open(
                path.as_path(),
                OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .and_then(nix::unistd::close),
            FsOp::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => mount(
                source.as_deref(),
                target,
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            ),
            FsOp::Mknod {
                path,
                mode,
                major,
                minor,
            } => match mknod(
                path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(*mode),
                makedev(*major, *minor),
            ) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e),
            },
            FsOp::Symlink { target, link } => match symlink(target, link) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_errno(e)),
                _ => Ok(()),
            },
        }
    }

    /// The error of this operation failing with `errno`.
    pub fn error(&self, errno: Errno) -> FsOpError {
        match self {
            FsOp::Mkdir { path, .. }
            | FsOp::MkdirAll { path }
            | FsOp::AwaitDisk { device: path } => FsOpError::Mkdir {
                path: path.clone(),
                source: errno.into(),
            },
            FsOp::Mount {
                source,
                target,
                fstype,
                flags,
                ..
            } => FsOpError::Mount {
                what: describe_mount(source.as_ref(), fstype.as_deref(), *flags),
                target: target.clone(),
                source: errno,
            },
            FsOp::CreateFile { path } => FsOpError::CreateFile {
                path: path.clone(),
                source: errno,
            },
            FsOp::Mknod { path, .. } => FsOpError::Mknod {
                path: path.clone(),
                source: errno,
            },
            FsOp::Symlink { link, .. } => FsOpError::Symlink {
                link: link.clone(),
                source: errno.into(),
            },
            FsOp::CopyUp { to, .. } => FsOpError::CopyUp {
                path: to.clone(),
                source: errno.into(),
            },
        }
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn describe_mount(source: Option<&PathBuf>, fstype: Option<&str>, flags: MsFlags) -> String {
    let source = source.map(|s| s.display().to_string());
    match (fstype, source) {
        _ if flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY) => {
            "a read-only remount".to_string()
        }
        _ if flags.contains(MsFlags::MS_REMOUNT) => "a remount".to_string(),
        (_, Some(s)) if flags.contains(MsFlags::MS_BIND) => format!("a bind mount of {s}"),
        (Some(t), Some(s)) if s != t => format!("{t} from {s}"),
        (Some(t), _) => t.to_string(),
        (None, Some(s)) => s,
        (None, None) => "a mount".to_string(),
    }
}

/// Runs `ops` in order for the container's init: the failing op's index and
/// errno, without allocating.
pub fn apply_all_raw(ops: &[FsOp]) -> Result<(), (usize, Errno)> {
    for (i, op) in ops.iter().enumerate() {
        op.apply_raw().map_err(|e| (i, e))?;
    }
    Ok(())
}

/// A short, stable name for the step an agent-side op ends, if it is one
/// worth timing on its own: the disk waits, the mounts and the copy-ups,
/// named after their mount point (`mount:lower`, `mount:volume0`,
/// `copyup:volume0`) or device (`disk:vda`). Directory creation is
/// counted in the step it precedes.
pub fn step_name(op: &FsOp) -> Option<String> {
    let leaf = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match op {
        FsOp::AwaitDisk { device } => Some(format!("disk:{}", leaf(device))),
        FsOp::Mount { target, .. } => Some(format!("mount:{}", leaf(target))),
        FsOp::CopyUp { to, .. } => Some(format!("copyup:{}", leaf(to))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_on_a_plain_directory() {
        let dir = std::env::temp_dir().join(format!("bulkhead-fsops-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ops = [
            FsOp::Mkdir {
                path: dir.clone(),
                mode: 0o755,
            },
            FsOp::Mkdir {
                path: dir.clone(),
                mode: 0o755,
            },
            FsOp::MkdirAll {
                path: dir.join("a/b/c"),
            },
            FsOp::Symlink {
                target: "/proc/self/fd".into(),
                link: dir.join("fd"),
            },
            FsOp::Symlink {
                target: "/proc/self/fd".into(),
                link: dir.join("fd"),
            },
        ];
        ops.iter().try_for_each(FsOp::apply).unwrap();
        assert!(dir.join("a/b/c").is_dir());
        assert_eq!(
            std::fs::read_link(dir.join("fd")).unwrap(),
            PathBuf::from("/proc/self/fd")
        );
        let err = FsOp::Mkdir {
            path: dir.join("missing/parent"),
            mode: 0o755,
        }
        .apply()
        .unwrap_err();
        assert!(err.to_string().contains("missing/parent"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_file_keeps_what_is_there() {
        let dir = std::env::temp_dir().join(format!("bulkhead-fsops-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let new = FsOp::CreateFile {
            path: dir.join("new"),
        };
        new.apply().unwrap();
        assert_eq!(std::fs::read(dir.join("new")).unwrap(), b"");
        std::fs::write(dir.join("kept"), "content").unwrap();
        FsOp::CreateFile {
            path: dir.join("kept"),
        }
        .apply()
        .unwrap();
        assert_eq!(std::fs::read(dir.join("kept")).unwrap(), b"content");
        let on_dir = FsOp::CreateFile { path: dir.clone() };
        assert_eq!(on_dir.apply_raw(), Err(Errno::EISDIR));
        let err = on_dir.apply().unwrap_err().to_string();
        assert!(err.starts_with("cannot create file "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn raw_errors_become_the_same_typed_errors() {
        let op = FsOp::Mkdir {
            path: "/nonexistent-parent/x".into(),
            mode: 0o755,
        };
        assert_eq!(op.apply_raw(), Err(Errno::ENOENT));
        let ops = [
            FsOp::MkdirAll {
                path: std::env::temp_dir(),
            },
            op.clone(),
        ];
        assert_eq!(apply_all_raw(&ops), Err((1, Errno::ENOENT)));
        assert_eq!(
            op.error(Errno::ENOENT).to_string(),
            op.apply().unwrap_err().to_string()
        );
        assert_eq!(
            FsOp::AwaitDisk {
                device: "/dev/vda".into()
            }
            .apply_raw(),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn step_names() {
        let m = FsOp::Mount {
            source: Some("/dev/vda".into()),
            target: "/run/bulkhead/c1/lower".into(),
            fstype: Some("ext4".into()),
            flags: MsFlags::MS_RDONLY,
            data: None,
        };
        assert_eq!(step_name(&m).as_deref(), Some("mount:lower"));
        let d = FsOp::AwaitDisk {
            device: "/dev/vdb".into(),
        };
        assert_eq!(step_name(&d).as_deref(), Some("disk:vdb"));
        let c = FsOp::CopyUp {
            root: "/run/bulkhead/c1/rootfs".into(),
            path: "run".into(),
            to: "/run/bulkhead/c1/volume2".into(),
        };
        assert_eq!(step_name(&c).as_deref(), Some("copyup:volume2"));
        assert_eq!(c.apply_raw(), Err(Errno::EINVAL));
        assert_eq!(step_name(&FsOp::MkdirAll { path: "/x".into() }), None);
    }

    #[test]
    fn mount_errors_name_the_mount() {
        let err = FsOp::Mount {
            source: Some("/dev/does-not-exist".into()),
            target: "/nonexistent-target".into(),
            fstype: Some("ext4".into()),
            flags: MsFlags::MS_RDONLY,
            data: None,
        }
        .apply()
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ext4 from /dev/does-not-exist"), "{msg}");
        assert!(msg.contains("/nonexistent-target"), "{msg}");
    }
}
