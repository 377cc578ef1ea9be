//! Test helpers: every test runs in a fresh network namespace of its own.

use std::fs::File;
use std::panic;
use std::thread;

use nix::sched::{unshare, CloneFlags};

/// Runs `f` on a new thread that has first unshared into a fresh network
/// namespace; a panic in `f` fails the calling test.
pub(crate) fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        let t = s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET): run the tests as root");
            f()
        });
        match t.join() {
            Ok(v) => v,
            Err(p) => panic::resume_unwind(p),
        }
    })
}

/// A second fresh network namespace, kept alive by the returned fd.
pub(crate) fn fresh_netns() -> File {
    in_fresh_netns(|| File::open("/proc/thread-self/ns/net").expect("open own netns"))
}

/// The inode of this thread's network namespace.
pub(crate) fn own_netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}
