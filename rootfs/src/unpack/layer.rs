//! Applies one uncompressed layer tar stream on top of a root directory, with OCI/AUFS whiteouts.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::tree::{Meta, Node, Tree};
use super::UnpackError;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Normalizes a tar entry path to a relative path: a leading `/` or `./` is dropped (absolute
/// names mean "from the image root"), `..` anywhere is refused.
pub(crate) fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What this layer itself created, so whiteouts only hide lower layers (as the OCI spec says)
/// however the tar orders its entries.
#[derive(Default)]
struct LayerState {
    created: HashSet<PathBuf>,
    dir_mtimes: Vec<(PathBuf, i64)>,
}

pub(crate) fn apply_tar(tree: &Tree, stream: impl Read, layer: &str) -> Result<(), UnpackError> {
    let read_err = |source| UnpackError::Read {
        layer: layer.to_string(),
        source,
    };
    let mut archive = tar::Archive::new(stream);
    let mut state = LayerState::default();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path().map_err(read_err)?.into_owned();
        let unsafe_path = |path: &Path| UnpackError::UnsafePath {
            layer: layer.to_string(),
            path: path.to_path_buf(),
        };
        let rel = normalize(&raw).ok_or_else(|| unsafe_path(&raw))?;
        let entry_err = |source| UnpackError::Entry {
            layer: layer.to_string(),
            path: rel.clone(),
            source,
        };

        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        if let Some(name) = rel.file_name().map(|n| n.as_bytes()) {
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let dir = rel.parent().unwrap_or(Path::new(""));
                if name == OPAQUE_MARKER {
                    make_opaque(tree, dir, &state.created).map_err(entry_err)?;
                } else if !hidden.starts_with(WHITEOUT_PREFIX) {
                    let target = dir.join(OsStr::from_bytes(hidden));
                    if !state.created.contains(&target) {
                        tree.remove(&target).map_err(entry_err)?;
                    }
                }
                // Other `.wh..wh.*` names are AUFS bookkeeping, not content.
                continue;
            }
        }

        let meta = entry_meta(&mut entry).map_err(read_err)?;
        let link_target;
        let node = match kind {
            EntryType::Directory => Node::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                Node::File(&mut entry)
            }
            EntryType::Symlink => {
                link_target = entry
                    .link_name()
                    .map_err(read_err)?
                    .unwrap_or_default()
                    .into_owned();
                Node::Symlink(&link_target)
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name()
                    .map_err(read_err)?
                    .unwrap_or_default()
                    .into_owned();
                link_target = normalize(&raw_target)
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| unsafe_path(&raw_target))?;
                Node::HardLink(&link_target)
            }
            EntryType::Char | EntryType::Block => {
                let h = entry.header();
                let major = h.device_major().map_err(read_err)?.unwrap_or(0);
                let minor = h.device_minor().map_err(read_err)?.unwrap_or(0);
                if kind == EntryType::Char {
                    Node::CharDevice { major, minor }
                } else {
                    Node::BlockDevice { major, minor }
                }
            }
            EntryType::Fifo => Node::Fifo,
            other => {
                log::warn!(
                    "layer {layer}: skipping {} with unsupported tar entry type {other:?}",
                    rel.display()
                );
                continue;
            }
        };
        let is_dir = matches!(node, Node::Dir);
        tree.create(&rel, node, &meta).map_err(entry_err)?;
        if is_dir {
            state.dir_mtimes.push((rel.clone(), meta.mtime));
        }
        state.created.insert(rel);
    }
    // Children change their directory's mtime; put the recorded ones back, deepest first.
    state
        .dir_mtimes
        .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (dir, mtime) in &state.dir_mtimes {
        if let Err(source) = tree.set_mtime(dir, *mtime) {
            // A later entry of this layer may have replaced the directory: nothing to restore.
            if !tree.is_dir(dir).unwrap_or(false) {
                continue;
            }
            return Err(UnpackError::Entry {
                layer: layer.to_string(),
                path: dir.clone(),
                source,
            });
        }
    }
    Ok(())
}

/// Removes everything in `dir` that lower layers put there, keeping what this layer created.
fn make_opaque(tree: &Tree, dir: &Path, created: &HashSet<PathBuf>) -> std::io::Result<()> {
    for name in tree.children(dir)? {
        let child = dir.join(&name);
        if !created.contains(&child) {
            tree.remove(&child)?;
        } else if tree.is_dir(&child)? {
            make_opaque(tree, &child, created)?;
        }
    }
    Ok(())
}

/// Metadata from the tar header, with PAX records taking precedence (they carry ids that do not
/// fit the header, and xattrs such as `security.capability`).
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<Meta> {
    let h = entry.header();
    let to_u32 = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{what} {v} out of range"),
            )
        })
    };
    let mut meta = Meta {
        mode: h.mode()?,
        uid: to_u32(h.uid()?, "uid")?,
        gid: to_u32(h.gid()?, "gid")?,
        mtime: i64::try_from(h.mtime()?).unwrap_or(i64::MAX),
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value().ok().map(str::trim);
            match key {
                "uid" => {
                    if let Some(v) = value.and_then(|v| v.parse().ok()) {
                        meta.uid = to_u32(v, "uid")?;
                    }
                }
                "gid" => {
                    if let Some(v) = value.and_then(|v| v.parse().ok()) {
                        meta.gid = to_u32(v, "gid")?;
                    }
                }
                "mtime" => {
                    if let Some(v) = value
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse().ok())
                    {
                        meta.mtime = v;
                    }
                }
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        meta.xattrs
                            .push((name.as_bytes().to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_roots_and_refuses_parent_dirs() {
        let ok = |s: &str| normalize(Path::new(s)).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(ok("./a/b/"), Some("a/b".into()));
        assert_eq!(ok("/etc/passwd"), Some("etc/passwd".into()));
        assert_eq!(ok("a/./b"), Some("a/b".into()));
        assert_eq!(ok("./"), Some("".into()));
        assert_eq!(ok("../x"), None);
        assert_eq!(ok("a/../../x"), None);
        assert_eq!(ok("a/.."), None);
    }
}
