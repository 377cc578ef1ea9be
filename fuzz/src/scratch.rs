//! A fresh directory per input, with a sentinel sibling: whatever an input
//! writes outside its own directory shows up there (or somewhere else in
//! the parent) and fails the run.

use std::fs;
use std::path::{Path, PathBuf};

pub struct Scratch {
    parent: tempfile::TempDir,
    pub root: PathBuf,
    sentinel: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let parent = tempfile::Builder::new()
            .prefix("bulkhead-fuzz")
            .tempdir_in(base())
            .unwrap();
        let root = parent.path().join("root");
        let sentinel = parent.path().join("sentinel");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&sentinel).unwrap();
        Self {
            parent,
            root,
            sentinel,
        }
    }

    pub fn parent(&self) -> &Path {
        self.parent.path()
    }

    /// Panics if anything appeared beside `root`, or inside the sentinel.
    pub fn assert_contained(&self) {
        let inside: Vec<_> = fs::read_dir(&self.sentinel).unwrap().collect();
        assert!(inside.is_empty(), "wrote into the sentinel: {inside:?}");
        let mut names: Vec<_> = fs::read_dir(self.parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["root", "sentinel"], "wrote beside the root");
    }
}

/// tmpfs where there is one: on a disk filesystem, creating and removing
/// a tree per input is bound by the journal (tens of inputs a second on a
/// busy disk, thousands on tmpfs). `TMPDIR` still wins when set.
fn base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    match std::env::var_os("TMPDIR") {
        Some(dir) => PathBuf::from(dir),
        None if shm.is_dir() => shm.to_path_buf(),
        None => std::env::temp_dir(),
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Layers may leave read-only directories behind, which TempDir's
        // own removal cannot empty.
        make_writable(self.parent.path());
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
            make_writable(&entry.path());
        }
    }
}
