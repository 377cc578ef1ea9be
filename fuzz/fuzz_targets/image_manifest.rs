//! Image indexes, manifests and configs as an import reads them from an
//! `oci:` layout directory, an `oci-archive:` tarball or a
//! `docker-archive:` tarball, and an index as a registry pull reads it
//! (`is_index_json`, `platform_manifest`).
//!
//! Input: a mode byte (0: oci dir, 1: oci archive, 2: docker archive), then
//! up to four NUL-separated documents: the top document (`index.json`, or
//! docker's `manifest.json`), an image manifest, a config, and a nested
//! index. Blobs are stored under their real digests; since the fuzzer
//! cannot compute sha256, documents name them with placeholders the
//! harness fills in: `@C@`/`@CS@`/`@CH@` (config digest, size, bare hex),
//! `@M@`/`@MS@` (manifest) and `@N@`/`@NS@` (nested index).

#![no_main]

use std::fs;
use std::path::Path;

use bulkhead_fuzz::scratch::Scratch;
use bulkhead_rootfs::source::fuzz_open;
use bulkhead_rootfs::{is_index_json, platform_manifest, Digest, ImageRef};
use libfuzzer_sys::fuzz_target;

fn fill(doc: &[u8], names: &[(&str, String)]) -> Vec<u8> {
    let mut s = String::from_utf8_lossy(doc).into_owned();
    for (from, to) in names {
        s = s.replace(from, to);
    }
    s.into_bytes()
}

/// The blob files of a layout: `blobs/sha256/<hex>`.
fn blob(docs: &mut Vec<(String, Vec<u8>)>, bytes: &[u8]) -> String {
    let digest = Digest::of(bytes).to_string();
    let hex = digest.trim_start_matches("sha256:").to_string();
    docs.push((format!("blobs/sha256/{hex}"), bytes.to_vec()));
    hex
}

fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &bytes[..]).unwrap();
    }
    b.finish().unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |&b| b == 0);
    let top = parts.next().unwrap_or_default();
    let manifest = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    let nested = parts.next().unwrap_or_default();

    // As a registry pull sees an index.
    if is_index_json(top) {
        let _ = platform_manifest(top, "fuzz");
    }

    let mut files = Vec::new();
    let mut names = Vec::new();
    let hex = blob(&mut files, config);
    names.push(("@CS@", config.len().to_string()));
    names.push(("@CH@", hex.clone()));
    names.push(("@C@", format!("sha256:{hex}")));
    let manifest = fill(manifest, &names);
    let hex = blob(&mut files, &manifest);
    names.push(("@MS@", manifest.len().to_string()));
    names.push(("@M@", format!("sha256:{hex}")));
    let nested = fill(nested, &names);
    let hex = blob(&mut files, &nested);
    names.push(("@NS@", nested.len().to_string()));
    names.push(("@N@", format!("sha256:{hex}")));
    let top = fill(top, &names);

    let scratch = Scratch::new();
    let reference = match mode % 3 {
        0 => {
            files.push(("index.json".into(), top));
            files.push((
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ));
            for (name, bytes) in &files {
                let path = scratch.root.join(name);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, bytes).unwrap();
            }
            ImageRef::OciLayout {
                dir: scratch.root.clone(),
                tag: None,
            }
        }
        1 => {
            files.push(("index.json".into(), top));
            let file = scratch.root.join("image.tar");
            write_tar(&file, &files);
            ImageRef::OciArchive { file, tag: None }
        }
        _ => {
            // docker save names the config `<hex>.json` beside manifest.json.
            let config_hex = names[1].1.clone();
            files.push((format!("{config_hex}.json"), config.to_vec()));
            files.push(("manifest.json".into(), top));
            let file = scratch.root.join("image.tar");
            write_tar(&file, &files);
            ImageRef::DockerArchive {
                file,
                reference: None,
            }
        }
    };
    if let Ok((layers, config)) = fuzz_open(&reference) {
        let _ = (layers, config.entrypoint.len());
    }
    scratch.assert_contained();
});
