//! Templates: snapshots of a booted guest whose agent is ready, so that
//! `bulkhead run` restores one instead of booting a kernel.
//!
//! A template depends only on what shapes the booted guest — kernel, agent
//! initramfs, vCPUs, memory size, the VMM build — never on the image,
//! volumes or shared directories: its block and virtio-fs devices are
//! empty slots that each run fills at restore. Templates live in
//! `<root>/templates/<key>/` (`state`, `memory`, `template.json`), are made
//! on first use under a lock, and are only ever read afterwards, so any
//! number of runs can restore one at once.

mod build;
pub mod command;
pub mod ready;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::paths;

/// Block slots every template has: image, scratch, then volumes.
pub const DISK_SLOTS: usize = 8;
/// Volumes a warm run can attach (the rest of the slots).
pub const MAX_WARM_VOLUMES: usize = DISK_SLOTS - 2;
/// virtio-fs slots every template has, tagged `share0`, `share1`, …; a
/// run connects its virtiofsd sockets to the first ones.
pub const SHARE_SLOTS: usize = 4;
/// Host directories a warm run can share.
pub const MAX_WARM_SHARES: usize = SHARE_SLOTS;
/// The MAC of every template's virtio-net slot (locally administered);
/// no container keeps it.
pub const NET_SLOT_MAC: [u8; 6] = [0x02, 0xb7, 0x00, 0x00, 0x00, 0x01];

const META_FILE: &str = "template.json";

/// What a template is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub mem_mib: u64,
}

/// What `template ls` shows, kept beside the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub key: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub mem_mib: u64,
    /// Identifies the bulkhead binary that made it.
    pub vmm_build: String,
    pub created_unix: u64,
    /// How long the boot to a ready agent took.
    pub boot_ms: u64,
}

/// A file's identity without reading it: path, size, modification time.
/// The kernel sits in a directory named by its build hash, so this is
/// enough for it.
fn file_identity(path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(format!("{}:{}:{}", real.display(), meta.len(), mtime))
}

/// The initramfs is named by the agent's digest, wherever a state root
/// keeps its copy: its name and size identify it across roots.
fn content_named_identity(path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(format!("{name}:{}", meta.len()))
}

/// The bulkhead binary that runs now, with the snapshot format it writes:
/// by its GNU build ID (a digest the linker makes of its contents), so
/// copies of one build (`target/release/bulkhead` and an installed one)
/// share templates; by path, size and mtime where it has none.
fn vmm_build() -> String {
    let exe = std::env::current_exe().ok();
    let exe = exe
        .as_deref()
        .and_then(|p| build_id(p).map(|id| format!("build-id {id}")))
        .or_else(|| exe.as_deref().and_then(|p| file_identity(p).ok()))
        .unwrap_or_default();
    format!(
        "{} format {} {}",
        bulkhead_vmm::snapshot::VMM_VERSION,
        bulkhead_vmm::snapshot::format::FORMAT_VERSION,
        exe
    )
}

impl TemplateSpec {
    /// The key naming this template: a digest of everything that shapes it.
    pub fn key(&self) -> anyhow::Result<String> {
        let text = format!(
            "kernel {}\ninitramfs {}\nvcpus {}\nmem {}\nslots {DISK_SLOTS}\nfs_slots {SHARE_SLOTS}\nnet_slot 1\n\
             pvm {}\nvmm {}\n",
            file_identity(&self.kernel)?,
            content_named_identity(&self.initramfs)?,
            self.vcpus,
            self.mem_mib,
            bulkhead_vmm::boot::pvm::PvmCompat::Auto.enabled(),
            vmm_build(),
        );
        Ok(bulkhead_rootfs::Digest::of(text.as_bytes()).hex()[..16].to_string())
    }
}

/// The GNU build ID of the ELF file at `path`, in hex: the descriptor of
/// its NT_GNU_BUILD_ID note, found through the PT_NOTE program headers.
fn build_id(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const PT_NOTE: u32 = 4;
    const NT_GNU_BUILD_ID: u32 = 3;
    let mut f = std::fs::File::open(path).ok()?;
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh).ok()?;
    // ELF64, little-endian: what this x86_64 binary is.
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at =
        |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let u64_at =
        |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let (phoff, phentsize, phnum) = (u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    for i in 0..u64::from(phnum) {
        let mut ph = vec![0u8; usize::from(phentsize).max(56)];
        f.seek(SeekFrom::Start(phoff + i * u64::from(phentsize)))
            .ok()?;
        f.read_exact(&mut ph[..usize::from(phentsize)]).ok()?;
        if u32_at(&ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(&ph, 8), u64_at(&ph, 32).min(1 << 16));
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset)).ok()?;
        f.read_exact(&mut notes).ok()?;
        let mut at = 0usize;
        let align4 = |n: usize| (n + 3) & !3;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) = (
                u32_at(&notes, at) as usize,
                u32_at(&notes, at + 4) as usize,
                u32_at(&notes, at + 8),
            );
            let name_at = at + 12;
            let desc_at = name_at + align4(namesz);
            let end = desc_at + align4(descsz);
            if desc_at + descsz > notes.len() {
                break;
            }
            if kind == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                let desc = &notes[desc_at..desc_at + descsz];
                return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
            }
            at = end;
        }
    }
    None
}

/// `$BULKHEAD_TEMPLATES`, or `templates/` under the state root. Tests
/// point every private root at one directory so they share templates.
/// Whether template notices ("making template …") are kept off stderr:
/// in a monitor, stderr is the container's, which an engine logs as the
/// container's own output.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_quiet() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A notice about templates, on stderr unless [`set_quiet`] (then at
/// debug level, for `$BULKHEAD_LOG`).
pub fn notice(message: std::fmt::Arguments<'_>) {
    if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        log::debug!("{message}");
    } else {
        eprintln!("bulkhead: {message}");
    }
}

pub fn templates_dir() -> PathBuf {
    std::env::var_os("BULKHEAD_TEMPLATES")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::root().join("templates"))
}

/// A template ready to restore.
#[derive(Debug, Clone)]
pub struct Template {
    pub key: String,
    pub dir: PathBuf,
    /// Made by this call (the first use), rather than found.
    pub built: bool,
}

/// Told the stop handle of a template VM while it boots, so the caller's
/// signal handling can end it (and the build) on Ctrl-C.
pub type OnBoot<'a> = &'a dyn Fn(bulkhead_vmm::vmm::StopHandle);

/// Finds the template for `spec`, making it first if there is none.
/// Concurrent callers wait for one build instead of each booting.
pub fn ensure(spec: &TemplateSpec, on_boot: OnBoot<'_>) -> anyhow::Result<Template> {
    let key = spec.key()?;
    let base = templates_dir();
    let dir = base.join(&key);
    if is_complete(&dir) {
        return Ok(Template {
            key,
            dir,
            built: false,
        });
    }
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let _lock = lock(&key_lock(&base, &key))?;
    if is_complete(&dir) {
        return Ok(Template {
            key,
            dir,
            built: false,
        });
    }
    notice(format_args!(
        "making template {key} (first use: boots the guest once)"
    ));
    remove_made_by_other_builds(&base);
    remove_dead_builds(&base, &key);
    build::build(spec, &key, &dir, on_boot)?;
    Ok(Template {
        key,
        dir,
        built: true,
    })
}

/// Replaces a template that failed to restore, under the same lock.
pub fn rebuild(
    spec: &TemplateSpec,
    broken: &Template,
    why: &str,
    on_boot: OnBoot<'_>,
) -> anyhow::Result<Template> {
    notice(format_args!(
        "template {} is unusable ({why}); rebuilding it",
        broken.key
    ));
    let base = templates_dir();
    let _lock = lock(&key_lock(&base, &broken.key))?;
    remove_dir(&broken.dir)?;
    build::build(spec, &broken.key, &broken.dir, on_boot)?;
    Ok(Template {
        built: true,
        ..broken.clone()
    })
}

fn is_complete(dir: &Path) -> bool {
    dir.join(META_FILE).is_file()
}

/// The lock every build, repair and sweep of `key` holds.
fn key_lock(base: &Path, key: &str) -> PathBuf {
    base.join(format!(".{key}.lock"))
}

fn lock(path: &Path) -> anyhow::Result<Flock<File>> {
    lock_with(path, FlockArg::LockExclusive)
}

/// The lock at `path` if no one holds it now.
fn try_lock(path: &Path) -> anyhow::Result<Flock<File>> {
    lock_with(path, FlockArg::LockExclusiveNonblock)
}

fn lock_with(path: &Path, how: FlockArg) -> anyhow::Result<Flock<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Flock::lock(file, how).map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", path.display()))
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// The work directories of builds of `key` that died (killed mid-boot):
/// the caller holds the key's lock, so no live build owns any of them.
fn remove_dead_builds(base: &Path, key: &str) -> usize {
    let prefix = format!("{}{key}-", build::WORK_PREFIX);
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|e| remove_dir(&e.path()).is_ok())
        .count()
}

/// Removes the work directories of dead template builds, for `bulkhead
/// gc`: those of a key whose lock is free (no build of it is running).
pub fn sweep_dead_builds() -> usize {
    let base = templates_dir();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return 0;
    };
    let keys: std::collections::BTreeSet<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(build::WORK_PREFIX)?;
            Some(rest.rsplit_once('-')?.0.to_string())
        })
        .collect();
    let mut swept = 0;
    for key in keys {
        if let Ok(_lock) = try_lock(&key_lock(&base, &key)) {
            swept += remove_dead_builds(&base, &key);
        }
    }
    swept
}

/// Templates of another bulkhead build can never be restored by this one.
fn remove_made_by_other_builds(base: &Path) {
    let current = vmm_build();
    for meta in list().unwrap_or_default() {
        if meta.vmm_build != current {
            let _ = remove_dir(&base.join(&meta.key));
        }
    }
}

/// Every complete template, oldest first.
pub fn list() -> anyhow::Result<Vec<TemplateMeta>> {
    let base = templates_dir();
    let entries = match std::fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", base.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let meta_path = entry.path().join(META_FILE);
        let Ok(bytes) = std::fs::read(&meta_path) else {
            continue;
        };
        match serde_json::from_slice::<TemplateMeta>(&bytes) {
            Ok(meta) => out.push(meta),
            Err(e) => eprintln!("bulkhead: ignoring {}: {e}", meta_path.display()),
        }
    }
    out.sort_by_key(|m| m.created_unix);
    Ok(out)
}

/// Removes the template `key` (a unique prefix will do).
pub fn remove(key: &str) -> anyhow::Result<String> {
    let matches: Vec<_> = list()?
        .into_iter()
        .filter(|m| m.key.starts_with(key))
        .collect();
    match matches.as_slice() {
        [one] => {
            remove_dir(&templates_dir().join(&one.key))?;
            Ok(one.key.clone())
        }
        [] => bail!("no template {key}"),
        _ => bail!("template prefix {key} is ambiguous"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_one_build_share_its_build_id() {
        let exe = std::env::current_exe().unwrap();
        let id = build_id(&exe).expect("the test binary has a GNU build ID");
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        std::fs::copy(&exe, &copy).unwrap();
        assert_eq!(build_id(&copy), Some(id));
        std::fs::write(dir.path().join("not-elf"), b"#!/bin/sh\n").unwrap();
        assert_eq!(build_id(&dir.path().join("not-elf")), None);
        assert!(vmm_build().contains("build-id "));
    }

    fn spec(dir: &Path, initramfs: &Path) -> TemplateSpec {
        TemplateSpec {
            kernel: dir.join("vmlinux"),
            initramfs: initramfs.to_path_buf(),
            vcpus: 1,
            mem_mib: 128,
        }
    }

    /// Every state root keeps its own copy of the agent initramfs: copies
    /// of one agent must name one template, another agent another.
    #[test]
    fn key_follows_the_agent_not_the_state_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for root in [&a, &b] {
            std::fs::create_dir(root).unwrap();
            std::fs::write(root.join("0123abcd.cpio"), b"agent one").unwrap();
        }
        std::fs::write(a.join("4567ef01.cpio"), b"agent two").unwrap();
        let key = |p: &Path| spec(dir.path(), p).key().unwrap();
        assert_eq!(key(&a.join("0123abcd.cpio")), key(&b.join("0123abcd.cpio")));
        assert_ne!(key(&a.join("0123abcd.cpio")), key(&a.join("4567ef01.cpio")));
        let mut more_memory = spec(dir.path(), &a.join("0123abcd.cpio"));
        more_memory.mem_mib = 256;
        assert_ne!(more_memory.key().unwrap(), key(&a.join("0123abcd.cpio")));
    }
}
