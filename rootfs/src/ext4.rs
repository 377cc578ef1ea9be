//! ext4 disk images built with e2fsprogs' `mkfs.ext4` (`-d` copies a directory tree in, keeping
//! owners, modes, mtimes, hard links, device nodes and xattrs).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::walk::{self, WalkError};

const MIB: u64 = 1 << 20;
const INODE_SIZE: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{tool} not found in PATH, /usr/sbin or /sbin: install e2fsprogs")]
    ToolMissing { tool: &'static str },
    #[error("mkfs.ext4 failed for {path} ({status}): {stderr}")]
    Mkfs {
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error("disk size must be at least 8 MiB, got {0} MiB")]
    TooSmall(u64),
    #[error("debugfs could not {request:?} in {path}: {stderr}")]
    Debugfs {
        path: PathBuf,
        request: &'static str,
        stderr: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Finds an e2fsprogs tool even when /usr/sbin is not in a non-root user's PATH.
pub(crate) fn find_tool(tool: &'static str) -> Result<PathBuf, DiskError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .ok_or(DiskError::ToolMissing { tool })
}

/// Builds an ext4 image of `dir` at `out`, sized to the content plus a margin. With
/// `read_only_hint` the image has no journal and little free space (the guest mounts it
/// read-only); otherwise it gets a journal and room to grow.
///
/// The image is written next to `out` and renamed into place, so a reader never sees a partial
/// file and concurrent builders of the same image do not clash.
pub fn ext4_from_dir(dir: &Path, out: &Path, read_only_hint: bool) -> Result<(), DiskError> {
    let (stats, _) = walk::scan(dir, None)?;
    let (inodes, mut bytes) = if read_only_hint {
        let inodes = stats.inodes + stats.inodes / 8 + 64;
        let bytes =
            stats.ext4_data_bytes + stats.ext4_data_bytes / 16 + inodes * INODE_SIZE + 8 * MIB;
        (inodes, bytes)
    } else {
        let inodes = (stats.inodes * 2).max(16_384);
        let bytes = stats.ext4_data_bytes * 3 / 2 + inodes * INODE_SIZE + 128 * MIB;
        (inodes, bytes)
    };
    let features = if read_only_hint {
        "^has_journal,^resize_inode"
    } else {
        "^resize_inode"
    };
    let parent = out.parent().unwrap_or(Path::new("."));
    // The estimate ignores per-file extent blocks and allocator slack; if mkfs runs out of
    // space, grow and retry rather than guess huge margins for every image.
    for _attempt in 0..3 {
        let tmp = tempfile::Builder::new()
            .prefix(".ext4-")
            .tempfile_in(parent)
            .map_err(io_err(parent))?;
        let size = bytes.div_ceil(MIB) * MIB;
        tmp.as_file().set_len(size).map_err(io_err(tmp.path()))?;
        match mkfs(
            tmp.path(),
            &["-N", &inodes.to_string(), "-O", features],
            Some(dir),
        ) {
            Ok(()) => {
                remove_lost_found(tmp.path(), dir)?;
                tmp.persist(out).map_err(|e| DiskError::Io {
                    path: out.to_path_buf(),
                    source: e.error,
                })?;
                return Ok(());
            }
            Err(DiskError::Mkfs { ref stderr, .. }) if is_out_of_space(stderr) => {
                bytes = bytes * 3 / 2;
            }
            Err(e) => return Err(e),
        }
    }
    Err(DiskError::Io {
        path: out.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::StorageFull,
            "image still too small after resizing",
        ),
    })
}

/// mke2fs always makes `lost+found`; the disk is a copy of `dir`, and a container whose `/`
/// shows a directory its image does not have is not that image. It goes unless `dir` has one.
fn remove_lost_found(image: &Path, dir: &Path) -> Result<(), DiskError> {
    const LOST_FOUND: &str = "lost+found";
    const REQUEST: &str = "rmdir lost+found";
    if fs::symlink_metadata(dir.join(LOST_FOUND)).is_ok() {
        return Ok(());
    }
    let output = Command::new(find_tool("debugfs")?)
        .args(["-w", "-R", REQUEST])
        .arg(image)
        .output()
        .map_err(io_err(image))?;
    // debugfs exits 0 even when its request fails; the failure is a "rmdir: ..." line.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failure = stderr.lines().find(|l| l.starts_with("rmdir:"));
    if !output.status.success() || failure.is_some() {
        return Err(DiskError::Debugfs {
            path: image.to_path_buf(),
            request: REQUEST,
            stderr: failure.unwrap_or(stderr.trim()).to_string(),
        });
    }
    Ok(())
}

fn is_out_of_space(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("could not allocate")
        || s.contains("no space")
        || s.contains("inode") && s.contains("not enough")
}

/// Creates `path` as an empty, sparse ext4 filesystem of `size_mib` MiB without a journal:
/// the scratch disk holds a container's throwaway overlay upper layer.
pub fn scratch_disk(path: &Path, size_mib: u64) -> Result<(), DiskError> {
    empty_ext4(path, size_mib, false)
}

/// Creates an empty sparse ext4 at `path` (replacing it atomically).
pub(crate) fn empty_ext4(path: &Path, size_mib: u64, journal: bool) -> Result<(), DiskError> {
    if size_mib < 8 {
        return Err(DiskError::TooSmall(size_mib));
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".ext4-")
        .tempfile_in(parent)
        .map_err(io_err(parent))?;
    tmp.as_file()
        .set_len(size_mib * MIB)
        .map_err(io_err(tmp.path()))?;
    let features = if journal {
        "has_journal"
    } else {
        "^has_journal"
    };
    mkfs(tmp.path(), &["-O", features], None)?;
    tmp.persist(path).map_err(|e| DiskError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

fn mkfs(image: &Path, extra: &[&str], source_dir: Option<&Path>) -> Result<(), DiskError> {
    let mut cmd = Command::new(find_tool("mkfs.ext4")?);
    // 4 KiB blocks and 256-byte inodes whatever mke2fs.conf says for small filesystems; inode
    // tables zeroed now, so the guest kernel has no lazy-init thread to run.
    cmd.args(["-q", "-F", "-b", "4096", "-I", "256", "-m", "0"])
        .args([
            "-E",
            "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
        ])
        .args(extra);
    if let Some(dir) = source_dir {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(image);
    let output = cmd.output().map_err(io_err(image))?;
    if !output.status.success() {
        return Err(DiskError::Mkfs {
            path: image.to_path_buf(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Creates the file `path` with `size_mib` of ext4 if it does not exist yet; returns true if it
/// was created. Losing a creation race to another process is fine.
pub(crate) fn ensure_empty_ext4(
    path: &Path,
    size_mib: u64,
    journal: bool,
) -> Result<bool, DiskError> {
    if path.exists() {
        return Ok(false);
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".new-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    empty_ext4(&staging, size_mib, journal)?;
    let created = crate::fsutil::rename_noreplace(&staging, path).map_err(io_err(path))?;
    if !created {
        fs::remove_file(&staging).map_err(io_err(&staging))?;
    }
    Ok(created)
}
