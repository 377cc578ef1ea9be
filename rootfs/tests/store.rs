//! The image store end to end: transports, caching, names, root disks, volumes and the
//! built-in busybox image. Needs root (device nodes, ownership) and e2fsprogs.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use bulkhead_rootfs::*;
use common::*;
use serde_json::json;

fn oci_image(dir: &Path) -> (Vec<Blob>, Vec<u8>) {
    let layers = sample_layers();
    let config = sample_config(&layers);
    write_oci_layout(dir, &[("v1", &layers, &config)]);
    (layers, config)
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("/usr/sbin/debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fsck_clean(image: &Path) {
    let out = Command::new("/usr/sbin/e2fsck")
        .args(["-fn"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oci_layout_import_list_resolve_remove() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (_, config) = oci_image(&layout);
    let store = Store::open(work.path().join("store")).unwrap();

    let reference = ImageRef::parse(&format!("oci:{}:v1", layout.display())).unwrap();
    let image = store.import(&reference, "sample:1.0").unwrap();
    assert_eq!(
        image.digest,
        Digest::of(&config),
        "image ID is the config digest"
    );
    assert_sample_tree(&image.rootfs);
    assert_eq!(image.config.entrypoint, ["/bin/entry"]);
    assert_eq!(image.config.cmd, ["--serve"]);
    assert_eq!(image.config.env, ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/home/user"));
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));

    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), &list[0].digest),
        ("sample:1.0", &image.digest)
    );
    assert!(list[0].size > 0 && list[0].created > 0);

    // By name, and the user lookup against its /etc files works on the stored root.
    let again = store
        .resolve(&ImageRef::parse("sample:1.0").unwrap())
        .unwrap();
    assert_eq!(again, image);
    let process = resolve_process_with(&again.config, &RunOverrides::default(), |_| None).unwrap();
    assert_eq!(process.args, ["/bin/entry", "--serve"]);
    let user = resolve_user(&again.rootfs, &process.user).unwrap();
    assert_eq!((user.uid, user.gid), (1000, 1000));

    // A second name shares the unpacked files; removing one name keeps them.
    store
        .import(&ImageRef::parse("sample:1.0").unwrap(), "alias")
        .unwrap();
    store.remove("sample:1.0").unwrap();
    assert!(image.rootfs.exists());
    store.remove("alias").unwrap();
    assert!(!image.dir().exists(), "last name gone: files gone");
    assert!(store.list().unwrap().is_empty());
    let err = store.remove("alias").unwrap_err();
    assert!(matches!(err, StoreError::NoSuchImage(_)), "{err}");
    let err = store
        .resolve(&ImageRef::parse("alias").unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("no such image \"alias\""), "{err}");
}

#[test]
fn ad_hoc_references_are_cached_by_digest() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci_image(&layout);
    let store = Store::open(work.path().join("store")).unwrap();
    let reference = ImageRef::parse(&format!("oci:{}", layout.display())).unwrap();
    let first = store.resolve(&reference).unwrap();
    let marker = first.rootfs.join("marker-from-first-unpack");
    fs::write(&marker, "").unwrap();
    let second = store.resolve(&reference).unwrap();
    assert_eq!(first, second);
    assert!(
        marker.exists(),
        "second resolve must reuse the unpacked image"
    );
    assert!(
        store.list().unwrap().is_empty(),
        "ad hoc images get no name"
    );
    assert_eq!(store.prune().unwrap(), 1);
    assert!(!first.dir().exists());
}

#[test]
fn docker_archive_gives_the_same_image() {
    let work = tempfile::tempdir().unwrap();
    let layers = sample_layers();
    // `docker save` writes uncompressed layer tars; keep the sample's mix anyway: detection is
    // by magic bytes.
    let config = sample_config(&layers);
    let archive = work.path().join("sample.tar");
    write_docker_archive(&archive, "example.com/sample:v2", &layers, &config);
    let store = Store::open(work.path().join("store")).unwrap();

    for r in [
        "docker-archive:{}",
        "docker-archive:{}:example.com/sample:v2",
    ] {
        let reference = ImageRef::parse(&r.replace("{}", archive.to_str().unwrap())).unwrap();
        let image = store.resolve(&reference).unwrap();
        assert_eq!(image.digest, Digest::of(&config));
        assert_sample_tree(&image.rootfs);
    }
    let err = store
        .resolve(
            &ImageRef::parse(&format!("docker-archive:{}:other:v1", archive.display())).unwrap(),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("no image tagged \"other:v1\""),
        "{err}"
    );
    assert!(
        err.to_string().contains("example.com/sample:v2"),
        "lists what is there: {err}"
    );
}

#[test]
fn docker25_and_oci_archives() {
    let work = tempfile::tempdir().unwrap();
    let layers = sample_layers();
    let config = sample_config(&layers);
    let store = Store::open(work.path().join("store")).unwrap();

    let docker25 = work.path().join("docker25.tar");
    write_docker25_archive(&docker25, "sample:v3", &layers, &config);
    let image = store
        .resolve(
            &ImageRef::parse(&format!("docker-archive:{}:sample:v3", docker25.display())).unwrap(),
        )
        .unwrap();
    assert_eq!(image.digest, Digest::of(&config));
    assert_sample_tree(&image.rootfs);
    store.prune().unwrap();

    // The same layout without manifest.json, as oci-archive: and as docker-archive:.
    let layout = work.path().join("layout");
    write_oci_layout(&layout, &[("v1", &layers, &config)]);
    let oci_archive = work.path().join("oci.tar");
    tar_dir(&layout, &oci_archive);
    for r in [
        format!("oci-archive:{}:v1", oci_archive.display()),
        format!("docker-archive:{}", oci_archive.display()),
    ] {
        let image = store.resolve(&ImageRef::parse(&r).unwrap()).unwrap();
        assert_sample_tree(&image.rootfs);
        store.prune().unwrap();
    }

    // Layers in blobs/ are content-addressed: tampering is caught by digest, not just diff_id.
    let mut bytes = fs::read(&docker25).unwrap();
    // Layer 3 is a plain tar, so its file content appears verbatim in the archive.
    let pos = bytes.windows(5).position(|w| w == b"stays").unwrap();
    bytes[pos] ^= 1;
    fs::write(&docker25, &bytes).unwrap();
    let err = store
        .resolve(&ImageRef::parse(&format!("docker-archive:{}", docker25.display())).unwrap())
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unpack(UnpackError::DigestMismatch { .. })),
        "{err}"
    );

    let gz = work.path().join("x.tar.gz");
    fs::write(&gz, b"\x1f\x8b\x08rest").unwrap();
    let err = store
        .resolve(&ImageRef::parse(&format!("docker-archive:{}", gz.display())).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("compressed"), "{err}");
}

#[test]
fn oci_tags_are_selected() {
    let work = tempfile::tempdir().unwrap();
    let a = vec![Layer::new()
        .file("which", b"a", 0o644, 0, 0)
        .finish(Compress::Gzip)];
    let b = vec![Layer::new()
        .file("which", b"b", 0o644, 0, 0)
        .finish(Compress::Zstd)];
    let ca = config_json(&a, json!({"Cmd": ["a"]}));
    let cb = config_json(&b, json!({"Cmd": ["b"]}));
    let layout = work.path().join("layout");
    write_oci_layout(&layout, &[("first", &a, &ca), ("latest", &b, &cb)]);
    let store = Store::open(work.path().join("store")).unwrap();
    let get = |r: String| store.resolve(&ImageRef::parse(&r).unwrap());
    let which = |img: &Image| fs::read_to_string(img.rootfs.join("which")).unwrap();
    assert_eq!(
        which(&get(format!("oci:{}:first", layout.display())).unwrap()),
        "a"
    );
    assert_eq!(
        which(&get(format!("oci:{}", layout.display())).unwrap()),
        "b",
        "default is latest"
    );
    let err = get(format!("oci:{}:nope", layout.display())).unwrap_err();
    assert!(
        err.to_string()
            .contains("no image tagged \"nope\" (available: first, latest)"),
        "{err}"
    );
    let err = get(format!("oci:{}", work.path().join("missing").display())).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn corrupt_images_are_rejected_and_leave_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (layers, config) = oci_image(&layout);
    let store = Store::open(work.path().join("store")).unwrap();
    let reference = ImageRef::parse(&format!("oci:{}", layout.display())).unwrap();

    // Same size, different bytes: flip one bit of the zstd layer.
    let blob = layout.join("blobs/sha256").join(layers[1].digest.hex());
    let mut bytes = fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 1;
    fs::write(&blob, &bytes).unwrap();
    let err = store.resolve(&reference).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt image") && msg.contains(layers[1].digest.hex()),
        "{msg}"
    );
    assert!(!store
        .root()
        .join("images")
        .join(Digest::of(&config).hex())
        .exists());
    assert_eq!(
        fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0,
        "work dir cleaned up"
    );

    // A tampered config is caught before anything is unpacked.
    let config_blob = layout.join("blobs/sha256").join(Digest::of(&config).hex());
    fs::write(
        &config_blob,
        String::from_utf8(config.clone())
            .unwrap()
            .replace("--serve", "--pwned"),
    )
    .unwrap();
    let err = store.resolve(&reference).unwrap_err();
    assert!(
        matches!(err, StoreError::Source(SourceError::DigestMismatch { .. })),
        "{err}"
    );

    // Bad JSON names the file.
    fs::write(layout.join("index.json"), "{").unwrap();
    let err = store.resolve(&reference).unwrap_err();
    assert!(err.to_string().contains("bad JSON in index.json"), "{err}");
}

#[test]
fn dir_images_in_place_and_imported() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(src.join("hello"), "hi").unwrap();
    fs::hard_link(src.join("hello"), src.join("hello2")).unwrap();
    std::os::unix::fs::symlink("hello", src.join("link")).unwrap();
    let store = Store::open(work.path().join("store")).unwrap();
    let reference = ImageRef::parse(&format!("dir:{}", src.display())).unwrap();

    let in_place = store.resolve(&reference).unwrap();
    assert_eq!(in_place.rootfs, fs::canonicalize(&src).unwrap());
    assert_eq!(in_place.config, ImageConfig::default());
    assert_eq!(
        store.resolve(&reference).unwrap().digest,
        in_place.digest,
        "stable while unchanged"
    );
    let err = resolve_process(&in_place.config, &RunOverrides::default()).unwrap_err();
    assert_eq!(err, ConfigError::NoCommand);

    let imported = store.import(&reference, "tree").unwrap();
    assert_ne!(imported.rootfs, in_place.rootfs);
    assert_eq!(fs::read(imported.rootfs.join("hello")).unwrap(), b"hi");
    let m = |p: &str| fs::symlink_metadata(imported.rootfs.join(p)).unwrap();
    assert_eq!(m("hello").ino(), m("hello2").ino());
    assert!(m("link").file_type().is_symlink());

    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(src.join("hello"), "changed").unwrap();
    assert_ne!(
        store.resolve(&reference).unwrap().digest,
        in_place.digest,
        "edits give a new image"
    );
}

#[test]
fn root_disk_is_built_once_and_holds_the_tree() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci_image(&layout);
    let store = Store::open(work.path().join("store")).unwrap();
    let image = store
        .resolve(&ImageRef::parse(&format!("oci:{}", layout.display())).unwrap())
        .unwrap();
    let disk = store.root_disk(&image).unwrap();
    assert_eq!(disk, image.dir().join("rootfs-v2.ext4"));
    fsck_clean(&disk);

    let root = debugfs(&disk, "ls -l /");
    assert!(
        !root.contains("lost+found"),
        "mke2fs's lost+found is not part of the image:\n{root}"
    );
    for name in ["etc", "usr", "home", "dev", "bin", "opaque", "same-layer"] {
        assert!(root.contains(name), "{name} missing from:\n{root}");
    }
    assert!(!root.contains("to-delete"));
    let su = debugfs(&disk, "stat /usr/bin/su");
    assert!(su.contains("Mode:  04755"), "{su}");
    assert!(su.contains("Links: 2"), "{su}");
    let data = debugfs(&disk, "stat /home/user/data");
    assert!(
        data.contains("User:  1000") && data.contains("Group:  1000"),
        "{data}"
    );
    assert!(data.contains("Mode:  0640"), "{data}");
    let null = debugfs(&disk, "stat /dev/null");
    assert!(
        null.contains("Type: character special")
            && null.contains("Device major/minor number: 01:03"),
        "{null}"
    );
    assert_eq!(debugfs(&disk, "cat /etc/hosts"), "127.0.0.1 new\n");
    let features = debugfs(&disk, "stats");
    assert!(
        !features.contains("has_journal"),
        "read-only root disks have no journal"
    );

    let built = fs::metadata(&disk).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(store.root_disk(&image).unwrap(), disk);
    assert_eq!(
        fs::metadata(&disk).unwrap().modified().unwrap(),
        built,
        "cached, not rebuilt"
    );
}

#[test]
fn lost_found_stays_only_when_the_tree_has_one() {
    let work = tempfile::tempdir().unwrap();
    let without = work.path().join("without");
    fs::create_dir_all(without.join("etc")).unwrap();
    let out = work.path().join("without.ext4");
    ext4_from_dir(&without, &out, true).unwrap();
    fsck_clean(&out);
    let root = debugfs(&out, "ls /");
    assert!(!root.contains("lost+found"), "{root}");
    assert!(root.contains("etc"), "{root}");

    let with = work.path().join("with");
    fs::create_dir_all(with.join("lost+found")).unwrap();
    fs::write(with.join("lost+found/kept"), b"mine").unwrap();
    let out = work.path().join("with.ext4");
    ext4_from_dir(&with, &out, false).unwrap();
    fsck_clean(&out);
    assert_eq!(debugfs(&out, "cat /lost+found/kept"), "mine");
}

#[test]
fn ext4_from_dir_sizes_to_content() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big");
    fs::create_dir(&src).unwrap();
    for i in 0..200 {
        fs::write(src.join(format!("f{i}")), vec![i as u8; 100_000]).unwrap();
    }
    for i in 0..3000 {
        fs::write(src.join(format!("small{i}")), b"x").unwrap();
    }
    let out = work.path().join("big.ext4");
    ext4_from_dir(&src, &out, true).unwrap();
    fsck_clean(&out);
    let size = fs::metadata(&out).unwrap().len();
    // 20 MB of data plus 3000 one-block files: well under twice that.
    assert!(size > 30 << 20 && size < 64 << 20, "{size}");
    assert_eq!(debugfs(&out, "cat /small2999"), "x");

    let rw = work.path().join("rw.ext4");
    ext4_from_dir(&src, &rw, false).unwrap();
    fsck_clean(&rw);
    assert!(debugfs(&rw, "stats").contains("has_journal"));
}

#[test]
fn scratch_disk_is_sparse_and_empty() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("scratch.ext4");
    scratch_disk(&path, 512).unwrap();
    let m = fs::metadata(&path).unwrap();
    assert_eq!(m.len(), 512 << 20);
    assert!(
        m.blocks() * 512 < 16 << 20,
        "sparse: {} bytes used",
        m.blocks() * 512
    );
    fsck_clean(&path);
    assert!(debugfs(&path, "ls -l /").contains("lost+found"));
    assert!(matches!(
        scratch_disk(&path, 1),
        Err(DiskError::TooSmall(1))
    ));
}

#[test]
fn volumes_through_the_store() {
    let work = tempfile::tempdir().unwrap();
    let store = Store::open(work.path().join("store")).unwrap();
    let disk = store.ensure_volume("data", Some(32)).unwrap();
    assert_eq!(disk, store.root().join("volumes/data.ext4"));
    fsck_clean(&disk);
    assert_eq!(
        store
            .list_volumes()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["data"]
    );
    store.remove_volume("data").unwrap();
    assert!(store.list_volumes().unwrap().is_empty());
    assert!(matches!(
        store.ensure_volume("../x", None),
        Err(StoreError::Volume(VolumeError::InvalidName(_)))
    ));
}

#[test]
fn busybox_default_image() {
    let work = tempfile::tempdir().unwrap();
    let store = Store::open(work.path().join("store")).unwrap();
    // Resolving the name builds it on first use.
    let image = store.resolve(&ImageRef::parse("busybox").unwrap()).unwrap();
    assert_eq!(ensure_default_image(&store).unwrap(), image);
    assert_eq!(
        store
            .resolve(&ImageRef::parse("busybox:latest").unwrap())
            .unwrap(),
        image
    );
    let root = &image.rootfs;
    assert_eq!(
        fs::read(root.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(fs::symlink_metadata(root.join("bin/ls"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    for d in ["root", "home", "etc", "proc", "sys", "dev"] {
        assert!(root.join(d).is_dir(), "{d}");
    }
    let process = resolve_process_with(&image.config, &RunOverrides::default(), |_| None).unwrap();
    assert_eq!(process.args, ["sh"]);
    assert_eq!(process.env, [config::DEFAULT_PATH]);
    assert_eq!(process.user, "root");
    let nobody = resolve_user(root, "nobody").unwrap();
    assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
    assert_eq!(store.list().unwrap()[0].name, "busybox");

    let disk = store.root_disk(&image).unwrap();
    fsck_clean(&disk);
    assert!(debugfs(&disk, "stat /bin/sh").contains("Type: symlink"));

    // Removing and rebuilding gives the same digest.
    store.remove("busybox").unwrap();
    assert_eq!(ensure_default_image(&store).unwrap().digest, image.digest);
}

#[test]
fn concurrent_imports_share_one_copy() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci_image(&layout);
    let store_root = work.path().join("store");
    let reference = ImageRef::parse(&format!("oci:{}", layout.display())).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (root, reference) = (store_root.clone(), reference.clone());
            std::thread::spawn(move || {
                let store = Store::open(root).unwrap();
                let image = store.import(&reference, &format!("name{i}")).unwrap();
                store.root_disk(&image).unwrap();
                image
            })
        })
        .collect();
    let images: Vec<Image> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(images.windows(2).all(|w| w[0] == w[1]));
    let store = Store::open(&store_root).unwrap();
    assert_eq!(store.list().unwrap().len(), 4);
    assert_eq!(fs::read_dir(store_root.join("images")).unwrap().count(), 1);
    assert_eq!(fs::read_dir(store_root.join("tmp")).unwrap().count(), 0);
    assert_sample_tree(&images[0].rootfs);
    fsck_clean(&store.root_disk(&images[0]).unwrap());
}
