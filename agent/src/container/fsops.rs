//! Filesystem operations as data.
//!
//! The rootfs and /dev setups are built as lists of [`FsOp`] by pure
//! functions (unit-tested without privileges) and then executed here in the
//! container's mount namespace.

use std::os::unix::fs::symlink;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    /// Creates one directory; an existing one is fine.
    Mkdir {
        path: PathBuf,
        mode: u32,
    },
    /// Creates a directory and its missing parents.
    MkdirAll {
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
}

#[derive(Debug, Error)]
pub enum FsOpError {
    #[error("cannot create directory {path}: {source}")]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
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
}

impl FsOp {
    /// Runs the operation. Mode bits are exact only under umask 0, which
    /// the container setup sets.
    pub fn apply(&self) -> Result<(), FsOpError> {
        match self {
            FsOp::Mkdir { path, mode } => {
                match nix::unistd::mkdir(path, Mode::from_bits_truncate(*mode)) {
                    Ok(()) | Err(Errno::EEXIST) => Ok(()),
                    Err(e) => Err(FsOpError::Mkdir {
                        path: path.clone(),
                        source: e.into(),
                    }),
                }
            }
            FsOp::MkdirAll { path } => {
                std::fs::create_dir_all(path).map_err(|source| FsOpError::Mkdir {
                    path: path.clone(),
                    source,
                })
            }
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
            )
            .map_err(|e| FsOpError::Mount {
                what: describe_mount(source.as_ref(), fstype.as_deref(), *flags),
                target: target.clone(),
                source: e,
            }),
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
                Err(e) => Err(FsOpError::Mknod {
                    path: path.clone(),
                    source: e,
                }),
            },
            FsOp::Symlink { target, link } => match symlink(target, link) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    Err(FsOpError::Symlink {
                        link: link.clone(),
                        source: e,
                    })
                }
                _ => Ok(()),
            },
        }
    }
}

fn describe_mount(source: Option<&PathBuf>, fstype: Option<&str>, flags: MsFlags) -> String {
    let source = source.map(|s| s.display().to_string());
    match (fstype, source) {
        _ if flags.contains(MsFlags::MS_REMOUNT) => "a read-only remount".to_string(),
        (_, Some(s)) if flags.contains(MsFlags::MS_BIND) => format!("a bind mount of {s}"),
        (Some(t), Some(s)) if s != t => format!("{t} from {s}"),
        (Some(t), _) => t.to_string(),
        (None, Some(s)) => s,
        (None, None) => "a mount".to_string(),
    }
}

/// Runs operations in order, stopping at the first failure.
pub fn apply_all(ops: &[FsOp]) -> Result<(), FsOpError> {
    ops.iter().try_for_each(FsOp::apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_on_a_plain_directory() {
        let dir = std::env::temp_dir().join(format!("bulkhead-fsops-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ops = vec![
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
        apply_all(&ops).unwrap();
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
