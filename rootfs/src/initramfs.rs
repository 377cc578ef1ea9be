//! The guest's initramfs: an uncompressed newc cpio (the guest kernel has no decompressors on
//! purpose) holding the agent as `/init` and the few nodes it needs before mounting anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Directories the agent mounts on or writes to before the container exists.
const BASE_DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("mnt", 0o755),
];

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("invalid guest path {0:?}: it must name a file below / without '..'")]
    InvalidGuestPath(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is {size} bytes; newc cpio entries are limited to 4 GiB")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path} changed size while being archived")]
    Changed { path: PathBuf },
}

enum Item<'a> {
    Dir(u32),
    CharDev { mode: u32, major: u32, minor: u32 },
    File { host: &'a Path, mode: u32 },
}

/// Writes `out`: `/init` from `init_binary` (mode 0755), the base directories, `/dev/console`
/// (char 5:1), and each `(guest_path, host_path)` of `extra_files` with its host permission
/// bits (parent directories are added as needed). Owners are root and mtimes 0, so the same
/// inputs give the same bytes.
pub fn build_initramfs(
    init_binary: &Path,
    extra_files: &[(&str, &Path)],
    out: &Path,
) -> Result<(), InitramfsError> {
    let mut items: BTreeMap<String, Item<'_>> = BTreeMap::new();
    for (dir, mode) in BASE_DIRS {
        items.insert(dir.to_string(), Item::Dir(*mode));
    }
    items.insert(
        "dev/console".into(),
        Item::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );
    items.insert(
        "init".into(),
        Item::File {
            host: init_binary,
            mode: 0o755,
        },
    );
    for (guest, host) in extra_files {
        let rel = guest_rel(guest)?;
        let mode = std::fs::metadata(host)
            .map_err(|source| InitramfsError::Io {
                path: host.to_path_buf(),
                source,
            })?
            .permissions()
            .mode()
            & 0o7777;
        let mut parent = Path::new(&rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            items
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Item::Dir(0o755));
            parent = p.parent();
        }
        items.insert(rel, Item::File { host, mode });
    }

    let dir = out.parent().unwrap_or(Path::new("."));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitramfsError::Io { path, source }
    };
    let tmp = tempfile::Builder::new()
        .prefix(".initramfs-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let mut w = BufWriter::new(tmp.as_file());
    // A path sorts before everything below it, so parents are written before their children.
    for (ino, (name, item)) in (1u32..).zip(&items) {
        let b = cpio::newc::Builder::new(name)
            .ino(ino)
            .uid(0)
            .gid(0)
            .mtime(0);
        match item {
            Item::Dir(mode) => {
                b.mode(S_IFDIR | mode)
                    .nlink(2)
                    .write(&mut w, 0)
                    .finish()
                    .map_err(io_err(out))?;
            }
            Item::CharDev { mode, major, minor } => {
                b.mode(S_IFCHR | mode)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(&mut w, 0)
                    .finish()
                    .map_err(io_err(out))?;
            }
            Item::File { host, mode } => {
                let file = File::open(host).map_err(io_err(host))?;
                let size = file.metadata().map_err(io_err(host))?.len();
                let size32 = u32::try_from(size).map_err(|_| InitramfsError::TooLarge {
                    path: host.to_path_buf(),
                    size,
                })?;
                let mut entry = b.mode(S_IFREG | mode).nlink(1).write(&mut w, size32);
                let copied = io::copy(&mut file.take(size), &mut entry).map_err(io_err(host))?;
                // The header already promised `size` bytes; a shrunken file would corrupt
                // every entry after it.
                if copied != size {
                    return Err(InitramfsError::Changed {
                        path: host.to_path_buf(),
                    });
                }
                entry.finish().map_err(io_err(out))?;
            }
        }
    }
    cpio::newc::trailer(&mut w).map_err(io_err(out))?;
    w.flush().map_err(io_err(out))?;
    drop(w);
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(out))?;
    tmp.persist(out).map_err(|e| InitramfsError::Io {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

fn guest_rel(guest: &str) -> Result<String, InitramfsError> {
    let mut parts = Vec::new();
    for c in Path::new(guest).components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| InitramfsError::InvalidGuestPath(guest.into()))?,
            ),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(InitramfsError::InvalidGuestPath(guest.into()))
            }
        }
    }
    if parts.is_empty() {
        return Err(InitramfsError::InvalidGuestPath(guest.into()));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::process::Command;

    #[test]
    fn archive_extracts_with_gnu_cpio() {
        let work = tempfile::tempdir().unwrap();
        let init = work.path().join("agent");
        fs::write(&init, b"\x7fELF pretend agent").unwrap();
        let extra = work.path().join("extra.conf");
        fs::write(&extra, b"odd length!").unwrap();
        fs::set_permissions(&extra, fs::Permissions::from_mode(0o640)).unwrap();
        let out = work.path().join("initramfs.cpio");
        build_initramfs(&init, &[("/etc/bulkhead/extra.conf", &extra)], &out).unwrap();

        let bytes = fs::read(&out).unwrap();
        assert_eq!(&bytes[..6], b"070701", "newc magic");
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));

        // Same inputs, same bytes.
        let again = work.path().join("again.cpio");
        build_initramfs(&init, &[("/etc/bulkhead/extra.conf", &extra)], &again).unwrap();
        assert_eq!(fs::read(&again).unwrap(), bytes);

        let root = work.path().join("x");
        fs::create_dir(&root).unwrap();
        let status = Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(&root)
            .stdin(File::open(&out).unwrap())
            .status()
            .expect("cpio (Debian package cpio) must be installed");
        assert!(status.success());

        let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mode();
        assert_eq!(
            fs::read(root.join("init")).unwrap(),
            b"\x7fELF pretend agent"
        );
        assert_eq!(mode("init"), S_IFREG | 0o755);
        assert_eq!(
            fs::read(root.join("etc/bulkhead/extra.conf")).unwrap(),
            b"odd length!"
        );
        assert_eq!(mode("etc/bulkhead/extra.conf") & 0o7777, 0o640);
        assert_eq!(mode("etc/bulkhead"), S_IFDIR | 0o755);
        for (dir, perm) in BASE_DIRS {
            assert_eq!(mode(dir), S_IFDIR | perm, "{dir}");
        }
        let console = fs::symlink_metadata(root.join("dev/console")).unwrap();
        assert!(console.file_type().is_char_device());
        assert_eq!(
            (libc::major(console.rdev()), libc::minor(console.rdev())),
            (5, 1)
        );

        let mut names: Vec<String> = Vec::new();
        let listing = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(File::open(&out).unwrap())
            .output()
            .unwrap();
        names.extend(
            String::from_utf8(listing.stdout)
                .unwrap()
                .lines()
                .map(String::from),
        );
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "etc",
                "etc/bulkhead",
                "etc/bulkhead/extra.conf",
                "init",
                "mnt",
                "proc",
                "run",
                "sys",
                "tmp"
            ]
        );
    }

    #[test]
    fn rejects_bad_guest_paths() {
        let work = tempfile::tempdir().unwrap();
        let init = work.path().join("init");
        fs::write(&init, "x").unwrap();
        for bad in ["", "/", "../etc/x", "/a/../../b"] {
            let err = build_initramfs(&init, &[(bad, &init)], &work.path().join("o")).unwrap_err();
            assert!(
                matches!(err, InitramfsError::InvalidGuestPath(_)),
                "{bad:?}: {err}"
            );
        }
        let err =
            build_initramfs(&work.path().join("missing"), &[], &work.path().join("o")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
