//! Builds small OCI image layouts on disk for tests: busybox-based layers
//! with whiteouts, and an image config with Entrypoint/Cmd/Env/WorkingDir/User.

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// One entry of a layer tarball.
pub enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
    },
    Symlink {
        path: String,
        target: String,
    },
}

pub fn file(path: &str, data: &[u8], mode: u32) -> Entry {
    Entry::File {
        path: path.into(),
        data: data.to_vec(),
        mode,
    }
}

pub fn dir(path: &str) -> Entry {
    Entry::Dir { path: path.into() }
}

pub fn symlink(path: &str, target: &str) -> Entry {
    Entry::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

/// Whiteout of `path` (a file or dir of a lower layer).
pub fn whiteout(path: &str) -> Entry {
    let p = Path::new(path);
    let name = format!(".wh.{}", p.file_name().unwrap().to_string_lossy());
    let wh = p.parent().unwrap().join(name);
    file(wh.to_str().unwrap(), b"", 0o644)
}

/// A tarball of `entries` (a layer, or a whole root file system).
pub fn tar_layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            Entry::File { path, data, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice()).unwrap();
            }
            Entry::Dir { path } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Entry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The base layer: busybox-static with sh/env/cat/... links and /etc files.
pub fn busybox_layer() -> Vec<Entry> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut e = vec![dir("bin"), dir("etc"), dir("tmp"), dir("srv"), dir("root")];
    e.push(file("bin/busybox", &busybox, 0o755));
    for applet in [
        "sh", "cat", "echo", "env", "id", "ls", "pwd", "test", "hostname", "sleep", "true", "false",
    ] {
        e.push(symlink(&format!("bin/{applet}"), "busybox"));
    }
    e.push(file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n", 0o644));
    e.push(file(
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\n",
        0o644,
    ));
    e
}

fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Writes an OCI layout at `dir` with `layers` (bottom first) and the
/// given image `config` section (Entrypoint, Cmd, ...), tagged `tag`.
pub fn write_layout(
    dir: &Path,
    layers: &[Vec<Entry>],
    config: serde_json::Value,
    tag: &str,
) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha256(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        (format!("sha256:{d}"), data.len())
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let tar = tar_layer(l);
        let (digest, size) = put(&tar);
        diff_ids.push(digest.clone());
        layer_descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}));
    }
    let cfg = json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (cfg_digest, cfg_size) = put(cfg.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_size},
        "layers": layer_descs
    });
    let (m_digest, m_size) = put(manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_size,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    dir.to_path_buf()
}
