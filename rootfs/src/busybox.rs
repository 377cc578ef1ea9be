//! The built-in default image: Debian's static busybox with one symlink per applet and just
//! enough of /etc for users and groups to resolve.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{ImageConfig, DEFAULT_PATH};
use crate::digest::{Digest, Hasher};
use crate::store::{io_err, now, Image, ImageMeta, Store, StoreError};
use crate::walk;

/// The name the default image is stored under.
pub const DEFAULT_IMAGE: &str = "busybox";
/// Where Debian's `busybox-static` package installs the binary.
const BUSYBOX_PATHS: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];
/// Bump when the layout below changes, so stores get a fresh image.
const LAYOUT_VERSION: &str = "bulkhead busybox image v1";

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("root", 0o700),
    ("home", 0o755),
    ("tmp", 0o1777),
    ("var", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("mnt", 0o755),
];

#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("busybox not found at {}: install Debian's busybox-static package", BUSYBOX_PATHS.join(" or "))]
    NotFound,
    #[error("{0} is dynamically linked and cannot run in the guest: install Debian's busybox-static package")]
    NotStatic(PathBuf),
    #[error("{0} is not a 64-bit little-endian ELF executable")]
    NotElf(PathBuf),
    #[error("running {path} --list-full: {reason}")]
    List { path: PathBuf, reason: String },
}

pub fn is_default_name(name: &str) -> bool {
    name == DEFAULT_IMAGE || name == "busybox:latest"
}

/// Returns the stored `busybox` image, building it from the host's static busybox and
/// recording the name if the store does not have it yet.
pub fn ensure_default_image(store: &Store) -> Result<Image, StoreError> {
    if let Some(image) = store.lookup(DEFAULT_IMAGE)? {
        return Ok(image);
    }
    let binary = BUSYBOX_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(BusyboxError::NotFound)?;
    for _ in 0..3 {
        let image = build(store, &binary)?;
        if let Some(image) = store.record_name(DEFAULT_IMAGE, image)? {
            return Ok(image);
        }
    }
    Err(StoreError::NoSuchImage(DEFAULT_IMAGE.to_string()))
}

fn build(store: &Store, binary: &Path) -> Result<Image, StoreError> {
    let bytes = fs::read(binary).map_err(io_err(binary))?;
    match is_static_elf(&bytes) {
        Some(true) => {}
        Some(false) => return Err(BusyboxError::NotStatic(binary.to_path_buf()).into()),
        None => return Err(BusyboxError::NotElf(binary.to_path_buf()).into()),
    }
    let applets = list_applets(binary)?;
    // Same binary and layout, same digest: rebuilding after `rm busybox` reuses the cache.
    let mut h = Hasher::default();
    h.update(LAYOUT_VERSION.as_bytes());
    h.update(Digest::of(&bytes).hex().as_bytes());
    for a in &applets {
        h.update(a.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finish();
    store.install(&digest, |work| {
        let rootfs = work.join("rootfs");
        populate(&rootfs, &bytes, &applets)?;
        let (stats, _) = walk::scan(&rootfs, None)?;
        Ok(ImageMeta {
            digest: digest.clone(),
            source: format!("built-in (busybox {})", binary.display()),
            size: stats.file_bytes,
            created: now(),
            config: ImageConfig {
                cmd: vec!["sh".into()],
                env: vec![DEFAULT_PATH.into()],
                ..Default::default()
            },
            external_rootfs: None,
            blobs: Vec::new(),
        })
    })
}

/// Applet paths relative to `/`, e.g. `bin/sh`, `usr/bin/awk`, `sbin/ifconfig`.
fn list_applets(binary: &Path) -> Result<Vec<String>, BusyboxError> {
    let err = |reason: String| BusyboxError::List {
        path: binary.to_path_buf(),
        reason,
    };
    let out = Command::new(binary)
        .arg("--list-full")
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        // Only plain names in the standard directories: this output decides where we create
        // symlinks.
        .filter(|l| {
            l.rsplit_once('/').is_some_and(|(dir, name)| {
                ["bin", "sbin", "usr/bin", "usr/sbin"].contains(&dir)
                    && !name.is_empty()
                    && name != "."
                    && name != ".."
            })
        })
        .filter(|l| l != "bin/busybox")
        .collect();
    applets.sort();
    applets.dedup();
    if applets.is_empty() {
        return Err(err("no applets listed".into()));
    }
    Ok(applets)
}

fn populate(rootfs: &Path, busybox: &[u8], applets: &[String]) -> Result<(), StoreError> {
    let mkdir = |rel: &str, mode: u32| -> Result<(), StoreError> {
        let path = rootfs.join(rel);
        DirBuilder::new()
            .mode(mode)
            .create(&path)
            .map_err(io_err(&path))?;
        // DirBuilder's mode passes through the umask; the sticky /tmp must be exact.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))
    };
    mkdir("", 0o755)?;
    for (dir, mode) in DIRS {
        mkdir(dir, *mode)?;
    }
    let write = |rel: &str, bytes: &[u8], mode: u32| -> Result<(), StoreError> {
        let path = rootfs.join(rel);
        fs::write(&path, bytes).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))
    };
    write("bin/busybox", busybox, 0o755)?;
    write("etc/passwd", PASSWD.as_bytes(), 0o644)?;
    write("etc/group", GROUP.as_bytes(), 0o644)?;
    for applet in applets {
        let path = rootfs.join(applet);
        match symlink("/bin/busybox", &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(())
}

/// Some(true) for an ELF64 little-endian file without a PT_INTERP program header (no dynamic
/// loader needed), Some(false) with one, None if it is not such an ELF file.
fn is_static_elf(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        assert_eq!(
            is_static_elf(&fs::read("/bin/busybox").unwrap()),
            Some(true)
        );
        // The test binary itself is dynamically linked against glibc.
        let me = std::env::current_exe().unwrap();
        assert_eq!(is_static_elf(&fs::read(me).unwrap()), Some(false));
        assert_eq!(is_static_elf(b"#!/bin/sh\n"), None);
        assert_eq!(is_static_elf(b"\x7fELF\x02\x01"), None);
    }

    #[test]
    fn applet_list_is_sane() {
        let applets = list_applets(Path::new("/bin/busybox")).unwrap();
        assert!(applets.contains(&"bin/sh".to_string()), "{applets:?}");
        assert!(applets
            .iter()
            .all(|a| !a.contains("..") && !a.starts_with('/')));
        assert!(applets.len() > 100);
    }
}
