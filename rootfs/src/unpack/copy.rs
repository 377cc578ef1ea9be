//! Copies a plain directory tree into a root with the same safe writer layers use, keeping
//! ownership, modes, mtimes, hard links, symlinks and device nodes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::tree::{Meta, Node, Tree};

#[derive(Debug, thiserror::Error)]
#[error("copying {path}: {source}")]
pub struct CopyError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Copies the contents of `src` into the existing directory `dst`.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<(), CopyError> {
    let tree = Tree::open(dst).map_err(|source| CopyError {
        path: dst.to_path_buf(),
        source,
    })?;
    let mut links = HashMap::new();
    let mut dirs = Vec::new();
    copy_dir(&tree, src, Path::new(""), &mut links, &mut dirs)?;
    // Directory mtimes last, deepest first, after their children stopped changing them.
    for (rel, mtime) in dirs.iter().rev() {
        tree.set_mtime(rel, *mtime).map_err(|source| CopyError {
            path: src.join(rel),
            source,
        })?;
    }
    Ok(())
}

fn copy_dir(
    tree: &Tree,
    src_root: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
    dirs: &mut Vec<(PathBuf, i64)>,
) -> Result<(), CopyError> {
    let src = src_root.join(rel);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CopyError { path, source }
    };
    let m = fs::symlink_metadata(&src).map_err(err(&src))?;
    tree.create(rel, Node::Dir, &meta_of(&m))
        .map_err(err(&src))?;
    dirs.push((rel.to_path_buf(), m.mtime()));

    let mut names: Vec<_> = fs::read_dir(&src)
        .map_err(err(&src))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err(&src))?;
    names.sort();
    for name in names {
        let child_rel = rel.join(&name);
        let path = src_root.join(&child_rel);
        let m = fs::symlink_metadata(&path).map_err(err(&path))?;
        let ft = m.file_type();
        if ft.is_dir() {
            copy_dir(tree, src_root, &child_rel, links, dirs)?;
            continue;
        }
        if m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                tree.create(&child_rel, Node::HardLink(first), &meta_of(&m))
                    .map_err(err(&path))?;
                continue;
            }
            links.insert((m.dev(), m.ino()), child_rel.clone());
        }
        let meta = meta_of(&m);
        let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
        let result = if ft.is_file() {
            let mut f = File::open(&path).map_err(err(&path))?;
            tree.create(&child_rel, Node::File(&mut f), &meta)
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(err(&path))?;
            tree.create(&child_rel, Node::Symlink(&target), &meta)
        } else if ft.is_char_device() {
            tree.create(&child_rel, Node::CharDevice { major, minor }, &meta)
        } else if ft.is_block_device() {
            tree.create(&child_rel, Node::BlockDevice { major, minor }, &meta)
        } else if ft.is_fifo() {
            tree.create(&child_rel, Node::Fifo, &meta)
        } else {
            // Sockets only mean something to a live process.
            continue;
        };
        result.map_err(err(&path))?;
    }
    Ok(())
}

fn meta_of(m: &fs::Metadata) -> Meta {
    Meta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        xattrs: Vec::new(),
    }
}
