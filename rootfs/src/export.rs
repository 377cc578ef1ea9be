//! An image's root as a plain tar stream: what `podman import`, `docker
//! import` and `ctr images import`-style tools take, so an image bulkhead
//! has (the built-in busybox among them) can be handed to an engine.

use std::io::Write;
use std::path::Path;

/// Writes the tree at `rootfs` to `out` as a tar archive: paths relative
/// to the root, symlinks as symlinks, owners and modes kept.
pub fn export_tar(rootfs: &Path, out: impl Write) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    tar.append_dir_all(".", rootfs)?;
    tar.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_round_trips_with_its_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/busybox"), b"elf").unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        let mut bytes = Vec::new();
        export_tar(&root, &mut bytes).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            if path == "./bin/sh" || path == "bin/sh" {
                assert_eq!(
                    entry.link_name().unwrap().unwrap().to_str(),
                    Some("busybox")
                );
            }
            seen.push(path.trim_start_matches("./").to_string());
        }
        assert!(seen.contains(&"bin/busybox".to_string()), "{seen:?}");
        assert!(seen.contains(&"bin/sh".to_string()), "{seen:?}");
    }
}
