//! Image layers (tar, possibly compressed: the unpacker sniffs gzip and
//! zstd itself) applied into a fresh directory, the lower layer first, then
//! the upper one over it, so whiteouts and replacements meet real content.
//! Nothing may be written outside the directory: the scratch's sentinel
//! sibling must stay empty, and the directory is gone after each input.
//!
//! Input: a flags byte (bit 0: gzip the upper layer here, so its tar goes
//! through the gzip decoder; bit 1: the same for the lower), the lower
//! layer's length (u32 LE), the lower layer, then the upper layer.

#![no_main]

use std::io::Write;

use bulkhead_fuzz::scratch::Scratch;
use bulkhead_rootfs::{apply_layer, LayerSpec};
use flate2::write::GzEncoder;
use flate2::Compression;
use libfuzzer_sys::fuzz_target;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_at_checked(4) else {
        return;
    };
    let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
    let (lower, upper) = rest.split_at(len.min(rest.len()));
    let scratch = Scratch::new();
    for (layer, zip) in [(lower, flags & 2 != 0), (upper, flags & 1 != 0)] {
        if layer.is_empty() {
            continue;
        }
        let blob = if zip { gzip(layer) } else { layer.to_vec() };
        let spec = LayerSpec {
            name: "fuzz".into(),
            ..LayerSpec::default()
        };
        let _ = apply_layer(&scratch.root, &blob[..], &spec);
        scratch.assert_contained();
    }
});
