//! Image config JSON as an import parses it (oci-spec's
//! `ImageConfiguration`, then bulkhead's `ImageConfig`), combined with `run`
//! overrides the way `bulkhead run` does, and bulkhead's stored form of the
//! config read back. The overrides come from the first lines of the input.
//!
//! Input: up to four lines (entrypoint, one argument, one `-e`, working
//! dir; `-` for none), then the JSON.

#![no_main]

use bulkhead_rootfs::{resolve_process_with, ImageConfig, RunOverrides};
use libfuzzer_sys::fuzz_target;
use oci_spec::image::ImageConfiguration;

fn field(line: Option<&str>) -> Option<String> {
    line.filter(|l| *l != "-").map(str::to_string)
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let mut lines = Vec::new();
    for _ in 0..4 {
        lines.push(parts.next().and_then(|l| std::str::from_utf8(l).ok()));
    }
    let Some(json) = parts.next() else {
        return;
    };
    let overrides = RunOverrides {
        entrypoint: field(lines[0]),
        args: field(lines[1]).into_iter().collect(),
        env: field(lines[2]).into_iter().collect(),
        working_dir: field(lines[3]),
        user: None,
    };
    // What an import reads out of an image.
    if let Ok(oci) = serde_json::from_slice::<ImageConfiguration>(json) {
        let config = ImageConfig::from(&oci);
        check(&config, &overrides);
    }
    // What the store keeps and reads back for every `run`.
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(json) {
        check(&config, &overrides);
    }
});

fn check(config: &ImageConfig, overrides: &RunOverrides) {
    let host = |name: &str| (name == "HOME").then(|| "/root".to_string());
    if let Ok(p) = resolve_process_with(config, overrides, host) {
        assert!(!p.args.is_empty(), "a process with no command");
        assert!(p.cwd.starts_with('/'), "a relative working directory");
        assert!(p.env.iter().any(|e| e.starts_with("PATH=")), "no PATH");
    }
    let stored = serde_json::to_vec(config).unwrap();
    let back: ImageConfig = serde_json::from_slice(&stored).unwrap();
    assert_eq!(&back, config, "the stored config reads back differently");
}
