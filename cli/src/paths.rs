//! Where bulkhead keeps things on the host, and where it finds the guest
//! kernel and agent. Environment variables override every default so tests
//! and packagers can point elsewhere.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The store and state root (images, volumes, run dirs): `$BULKHEAD_ROOT`
/// or /var/lib/bulkhead.
pub fn root() -> PathBuf {
    std::env::var_os("BULKHEAD_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(bulkhead_rootfs::DEFAULT_STORE_ROOT))
}

fn existing(env: &str, candidates: &[PathBuf], what: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.exists() {
            bail!("{what} {} (from ${env}) does not exist", p.display());
        }
        return Ok(p);
    }
    if let Some(p) = candidates.iter().find(|p| p.exists()) {
        return Ok(p.clone());
    }
    bail!(
        "{what} not found (looked in {}); run scripts/build.sh or set ${env}",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The guest kernel: `$BULKHEAD_KERNEL`, or the one scripts/build.sh
/// installed into the root.
pub fn kernel() -> anyhow::Result<PathBuf> {
    existing("BULKHEAD_KERNEL", &[root().join("vmlinux")], "guest kernel")
}

/// The static guest agent: `$BULKHEAD_AGENT`, beside this binary's cargo
/// target dir, or installed into the root.
pub fn agent() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let (Some(dir), Some(target)) = (exe.parent(), exe.parent().and_then(Path::parent)) {
            let profile = dir.file_name().unwrap_or_default();
            candidates.push(
                target
                    .join("x86_64-unknown-linux-gnu")
                    .join(profile)
                    .join("bulkhead-agent"),
            );
            candidates.push(dir.join("bulkhead-agent"));
        }
    }
    candidates.push(root().join("bulkhead-agent"));
    existing("BULKHEAD_AGENT", &candidates, "guest agent")
}

/// The initramfs holding `agent` as /init, built once per agent binary.
pub fn agent_initramfs(agent: &Path) -> anyhow::Result<PathBuf> {
    let bytes = std::fs::read(agent)
        .with_context(|| format!("cannot read guest agent {}", agent.display()))?;
    let digest = bulkhead_rootfs::Digest::of(&bytes);
    let dir = root().join("initramfs");
    let out = dir.join(format!("{}.cpio", digest.short()));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", digest.short(), std::process::id()));
    bulkhead_rootfs::build_initramfs(agent, &[], &tmp)
        .context("cannot build the agent initramfs")?;
    std::fs::rename(&tmp, &out).with_context(|| format!("cannot install {}", out.display()))?;
    Ok(out)
}
