//! virtio-blk request chains from a hostile guest: descriptor tables, avail
//! rings, indirect tables and headers all come from the fuzz input (see
//! `bulkhead_fuzz::virtq`), served by the real device on a small image.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bulkhead_fuzz::virtq::{start, Input};
use bulkhead_vmm::devices::virtio::block::{Block, BLOCK_QUEUE_SIZE};
use libfuzzer_sys::fuzz_target;

/// One disk for the whole run: reopening it per input is cheap, creating it
/// is not, and what earlier inputs wrote to it changes no parsing decision.
fn disk() -> &'static PathBuf {
    static DISK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DISK
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.img");
            std::fs::write(&path, vec![0x5a; 64 << 10]).unwrap();
            (dir, path)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    // The low bit of the last byte picks a read-only disk, which refuses writes.
    let read_only = data.last().is_some_and(|b| b & 1 == 1);
    let block = Block::new(disk(), read_only).unwrap();
    let Some(mut driver) = start(&input, block, BLOCK_QUEUE_SIZE) else {
        return;
    };
    // A second kick serves whatever the first pass left, e.g. after the
    // device wrote over the rings.
    driver.kick(0);
});
