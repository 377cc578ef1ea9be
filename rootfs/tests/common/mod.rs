//! Builds real image files for tests: layer tars (plain, gzip, zstd), OCI layouts and
//! docker-archive tarballs.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use bulkhead_rootfs::Digest;
use serde_json::json;

pub const MTIME: u64 = 1_600_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    None,
    Gzip,
    Zstd,
}

pub struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: &'static str,
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, uid, gid);
        self.tar.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(mut self, path: &str, content: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, uid, gid);
        h.set_size(content.len() as u64);
        self.tar.append_data(&mut h, path, content).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(
        mut self,
        path: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Self {
        let mut h = header(kind, mode, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.tar.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn whiteout(self, dir: &str, name: &str) -> Self {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&path, b"", 0o644, 0, 0)
    }

    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644, 0, 0)
    }

    /// An entry whose name bypasses the tar crate's own `..` checks, as a hostile image would.
    pub fn raw(
        mut self,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        content: &[u8],
    ) -> Self {
        let mut h = header(kind, 0o644, 0, 0);
        h.set_size(content.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            gnu.linkname = [0; 100];
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        self.tar.append(&h, content).unwrap();
        self
    }

    pub fn finish(self, compress: Compress) -> Blob {
        let tar = self.tar.into_inner().unwrap();
        let diff_id = Digest::of(&tar);
        let (bytes, media_type) = match compress {
            Compress::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Compress::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).unwrap();
                (
                    e.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compress::Zstd => (
                ruzstd::encoding::compress_to_vec(
                    &tar[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Blob {
            digest: Digest::of(&bytes),
            bytes,
            diff_id,
            media_type,
        }
    }
}

pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An image config JSON for `layers` with the given runtime `config` object.
pub fn config_json(layers: &[Blob], config: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "created": "2024-05-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(d.hex()), bytes).unwrap();
    d
}

/// Writes an OCI image layout at `dir` holding one image per `(tag, layers, config)`.
pub fn write_oci_layout(dir: &Path, images: &[(&str, &[Blob], &[u8])]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (tag, layers, config) in images {
        let config_digest = put_blob(dir, config);
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|l| {
                put_blob(dir, &l.bytes);
                json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.bytes.len()})
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
            "layers": layer_descs,
        }))
        .unwrap();
        let manifest_digest = put_blob(dir, &manifest);
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Writes a classic `docker save` tarball: `<config hex>.json`, `<n>/layer.tar`, manifest.json.
pub fn write_docker_archive(file: &Path, repo_tag: &str, layers: &[Blob], config: &[u8]) {
    let mut b = tar::Builder::new(fs::File::create(file).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(MTIME);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    let config_name = format!("{}.json", Digest::of(config).hex());
    add(&config_name, config);
    let mut layer_names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{i:064x}/layer.tar");
        add(&name, &l.bytes);
        layer_names.push(name);
    }
    let manifest = json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap();
}

/// Three layers exercising every entry kind and both whiteout forms:
/// 1 (gzip): the base tree; 2 (zstd): whiteouts, an opaque dir, replacements, a write through a
/// symlinked directory; 3 (plain): a directory whiteout and a same-layer whiteout that must not
/// apply.
pub fn sample_layers() -> Vec<Blob> {
    use tar::EntryType::{Block, Char, Fifo};
    let l1 = Layer::new()
        .dir("./", 0o755, 0, 0)
        .dir("etc", 0o755, 0, 0)
        .file("etc/hosts", b"127.0.0.1 old\n", 0o644, 0, 0)
        .dir("usr", 0o755, 0, 0)
        .dir("usr/bin", 0o755, 0, 0)
        .file("usr/bin/su", b"#!su\n", 0o4755, 0, 0)
        .hardlink("usr/bin/su-again", "usr/bin/su")
        .file("usr/bin/sgid", b"g", 0o2711, 0, 42)
        .symlink("bin", "usr/bin")
        .dir("home", 0o755, 0, 0)
        .dir("home/user", 0o750, 1000, 1000)
        .file("home/user/data", b"user data", 0o640, 1000, 1000)
        .dir("dev", 0o755, 0, 0)
        .device("dev/null", Char, 1, 3, 0o666)
        .device("dev/loop0", Block, 7, 0, 0o660)
        .device("run-fifo", Fifo, 0, 0, 0o600)
        .file("to-delete", b"bye", 0o644, 0, 0)
        .dir("opaque", 0o755, 0, 0)
        .file("opaque/a", b"a", 0o644, 0, 0)
        .dir("opaque/sub", 0o755, 0, 0)
        .file("opaque/sub/b", b"b", 0o644, 0, 0)
        .dir("keep", 0o755, 0, 0)
        .file("keep/x", b"x", 0o644, 0, 0)
        .dir("tmp", 0o1777, 0, 0)
        .finish(Compress::Gzip);
    let l2 = Layer::new()
        .whiteout("", "to-delete")
        .dir("opaque", 0o700, 0, 0)
        .opaque("opaque")
        .file("opaque/c", b"c", 0o644, 0, 0)
        .file("etc/hosts", b"127.0.0.1 new\n", 0o644, 0, 0)
        // `bin` is a symlink to usr/bin from layer 1: the file lands in usr/bin.
        .file("bin/newtool", b"new", 0o755, 0, 0)
        .finish(Compress::Zstd);
    let l3 = Layer::new()
        .whiteout("", "keep")
        .file("same-layer", b"stays", 0o644, 0, 0)
        .whiteout("", "same-layer")
        .finish(Compress::None);
    vec![l1, l2, l3]
}

pub fn sample_config(layers: &[Blob]) -> Vec<u8> {
    config_json(
        layers,
        json!({
            "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
            "Entrypoint": ["/bin/entry"],
            "Cmd": ["--serve"],
            "WorkingDir": "/home/user",
            "User": "1000:1000",
        }),
    )
}

/// Checks that `root` holds exactly what `sample_layers` describes.
pub fn assert_sample_tree(root: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let perm = |p: &str| meta(p).mode() & 0o7777;

    assert_eq!(
        fs::read(root.join("etc/hosts")).unwrap(),
        b"127.0.0.1 new\n"
    );
    assert_eq!(perm("usr/bin/su"), 0o4755, "setuid survives");
    assert_eq!(perm("usr/bin/sgid"), 0o2711, "setgid survives chown");
    assert_eq!(meta("usr/bin/sgid").gid(), 42);
    assert_eq!(
        meta("usr/bin/su").ino(),
        meta("usr/bin/su-again").ino(),
        "hard link"
    );
    assert_eq!(meta("usr/bin/su").nlink(), 2);
    assert_eq!(
        fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert!(meta("bin").file_type().is_symlink());
    assert_eq!(fs::read(root.join("usr/bin/newtool")).unwrap(), b"new");

    let home = meta("home/user");
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    let data = meta("home/user/data");
    assert_eq!(
        (data.uid(), data.gid(), data.mode() & 0o7777),
        (1000, 1000, 0o640)
    );
    assert_eq!(data.mtime() as u64, MTIME);
    assert_eq!(
        meta("home").mtime() as u64,
        MTIME,
        "directory mtimes restored after children"
    );

    let null = meta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    let lp = meta("dev/loop0");
    assert!(lp.file_type().is_block_device());
    assert_eq!((libc::major(lp.rdev()), libc::minor(lp.rdev())), (7, 0));
    assert!(meta("run-fifo").file_type().is_fifo());
    assert_eq!(perm("tmp"), 0o1777);

    assert!(!root.join("to-delete").exists(), "whiteout");
    assert!(!root.join("keep").exists(), "directory whiteout");
    assert_eq!(
        fs::read(root.join("same-layer")).unwrap(),
        b"stays",
        "same-layer whiteout ignored"
    );
    let mut opaque: Vec<String> = fs::read_dir(root.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    opaque.sort();
    assert_eq!(
        opaque,
        ["c"],
        "opaque dir keeps only the upper layer's entries"
    );
    assert_eq!(perm("opaque"), 0o700);
    let names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".wh."))
        .collect();
    assert!(
        names.is_empty(),
        "whiteout markers must not be materialized: {names:?}"
    );
}

/// Tars up a directory (an OCI layout, possibly with a docker manifest.json) into `file`.
pub fn tar_dir(dir: &Path, file: &Path) {
    let mut b = tar::Builder::new(fs::File::create(file).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap();
}

/// What `docker save` writes since Docker 25: an OCI layout plus a manifest.json whose paths
/// point into `blobs/sha256/`.
pub fn write_docker25_archive(file: &Path, repo_tag: &str, layers: &[Blob], config: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path(), &[(repo_tag, layers, config)]);
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let manifest = json!([{
        "Config": blob(&Digest::of(config)),
        "RepoTags": [repo_tag],
        "Layers": layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
    }]);
    fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    tar_dir(dir.path(), file);
}
