//! The local image store.
//!
//! ```text
//! <root>/images.json             NAME -> digest (replaced atomically, updated under images.lock)
//! <root>/images/<hex>/meta.json  what the image is: config, size, origin
//! <root>/images/<hex>/config.json  the image's original config blob (OCI and docker images)
//! <root>/images/<hex>/rootfs/    the unpacked root (absent for in-place dir: images)
//! <root>/images/<hex>/rootfs-v2.ext4  the read-only root disk, built on first use
//! <root>/volumes/<name>.ext4     named volumes
//! <root>/blobs/                  pulled images' manifests, configs and layers (see `blobs`)
//! <root>/tmp/                    work areas; finished images are renamed out of here
//! ```
//!
//! An image directory appears in `images/` only complete (it is filled in `tmp/` and renamed),
//! so concurrent runs can share the store without locks except for the small name index.

mod blobs;
mod index;

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use blobs::{BlobLease, Blobs};
pub use index::IndexError;
use index::{Index, IndexEntry};

use crate::busybox::{self, BusyboxError};
use crate::config::ImageConfig;
use crate::digest::{named_entries, Digest};
use crate::ext4::{self, DiskError};
use crate::fsutil::{remove_any, rename_noreplace};
use crate::reference::{validate_name, ImageRef, ReferenceError};
use crate::source::{self, ImageSource, ManifestChoice, SourceError};
use crate::unpack::copy::copy_tree;
use crate::unpack::CopyError;
use crate::unpack::{apply_layer, UnpackError};
use crate::volume::{VolumeError, VolumeInfo, Volumes};
use crate::walk::{self, WalkError};

/// Where the store lives unless configured otherwise.
pub const DEFAULT_STORE_ROOT: &str = "/var/lib/bulkhead";

const META: &str = "meta.json";
const ROOTFS: &str = "rootfs";
/// Versioned so that disks built by older code (with `lost+found`) are rebuilt, not reused.
const ROOT_DISK: &str = "rootfs-v2.ext4";
/// Work areas older than this belong to a process that died mid-import.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such image {0:?} in the local store (pull it, or import one from an oci:, oci-archive:, docker-archive: or dir: reference)")]
    NoSuchImage(String),
    #[error("image {digest} in the store is damaged: {reason}")]
    Damaged { digest: Digest, reason: String },
    #[error("dir: image {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("default image: {0}")]
    DefaultImage(#[from] BusyboxError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image ready to run: an unpacked root directory and its runtime config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The image ID (config digest; for `dir:` images a fingerprint of the tree).
    pub digest: Digest,
    /// The root directory to run from.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// Sum of the regular file sizes in the root.
    pub size: u64,
    /// The reference the image was first made from.
    pub source: String,
    dir: PathBuf,
}

impl Image {
    /// The image's directory in the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub name: String,
    pub digest: Digest,
    pub size: u64,
    /// When the name was recorded, seconds since the epoch.
    pub created: u64,
    /// Where the image came from: a registry reference with its manifest digest, an import
    /// reference, or `built-in`.
    pub source: String,
}

/// meta.json of an image directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ImageMeta {
    pub digest: Digest,
    pub source: String,
    pub size: u64,
    pub created: u64,
    #[serde(default)]
    pub config: ImageConfig,
    /// For in-place `dir:` images: where the root lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_rootfs: Option<PathBuf>,
    /// For pulled images: the blobs in `blobs/` they were made from (manifests, config,
    /// layers), which the blob sweep keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<Digest>,
}

pub struct Store {
    root: PathBuf,
    index: Index,
    blobs: Blobs,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for dir in [
            root.clone(),
            root.join("images"),
            root.join("tmp"),
            root.join("volumes"),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(&dir))?;
        }
        let blobs = Blobs::open(&root).map_err(io_err(&root.join("blobs")))?;
        let store = Store {
            index: Index::new(&root),
            blobs,
            root,
        };
        store.clean_stale_tmp();
        Ok(store)
    }

    /// Opens the store at [`DEFAULT_STORE_ROOT`].
    pub fn open_default() -> Result<Store, StoreError> {
        Store::open(DEFAULT_STORE_ROOT)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content-addressed blobs pulls download into.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Makes the image a pulled manifest describes (its manifest, config and layers all in
    /// [`Store::blobs`]), unpacked once per image ID, and records `name` for it. The caller
    /// holds a [`BlobLease`] so the blobs cannot be swept meanwhile.
    pub fn install_pulled(
        &self,
        manifest: &ManifestChoice,
        source: &str,
        name: &str,
    ) -> Result<Image, StoreError> {
        validate_name(name)?;
        let src = source::open_stored(&self.root, manifest)?;
        let mut used = vec![manifest.digest.clone(), src.id.clone()];
        used.extend(
            src.layers
                .iter()
                .filter_map(|(_, spec)| spec.digest.clone()),
        );
        for _ in 0..3 {
            let image = self.install(&src.id, |work| {
                let mut meta = unpack_image(&src, work, source)?;
                meta.blobs = used.clone();
                Ok(meta)
            })?;
            // The image may have been made before, from another manifest (another name, other
            // compression): it now also keeps this manifest's blobs.
            self.add_blobs(&image.digest, &used)?;
            if let Some(image) = self.record_name(name, image)? {
                return Ok(image);
            }
        }
        Err(StoreError::Damaged {
            digest: src.id.clone(),
            reason: format!("{name}: the image kept disappearing while being pulled"),
        })
    }

    fn add_blobs(&self, digest: &Digest, used: &[Digest]) -> Result<(), StoreError> {
        let _lock = self.index.lock()?;
        let mut meta = self.read_meta(digest)?;
        let before = meta.blobs.len();
        for d in used {
            if !meta.blobs.contains(d) {
                meta.blobs.push(d.clone());
            }
        }
        if meta.blobs.len() == before {
            return Ok(());
        }
        let path = self.image_dir(digest).join(META);
        let json = serde_json::to_vec_pretty(&meta).expect("image metadata always serializes");
        crate::fsutil::atomic_write(&path, &json).map_err(io_err(&path))
    }

    /// Deletes the blobs no stored image was made from. Returns how many went.
    pub fn sweep_blobs(&self) -> Result<usize, StoreError> {
        let images = self.root.join("images");
        self.blobs
            .sweep(|| {
                let mut keep = std::collections::HashSet::new();
                for (digest, _) in named_entries(&images)? {
                    if let Ok(meta) = self.read_meta(&digest) {
                        keep.extend(meta.blobs);
                    }
                }
                Ok(keep)
            })
            .map_err(io_err(&self.root.join("blobs")))
    }

    /// Makes `source` available as `name` (e.g. `alpine:3.20`): unpacks it into the store once
    /// (or reuses the unpacked copy with the same digest) and records the name. `dir:` sources
    /// are copied in. A `NAME` source just adds another name for a stored image.
    pub fn import(&self, source: &ImageRef, name: &str) -> Result<Image, StoreError> {
        validate_name(name)?;
        // `remove` may delete an unnamed image between our unpack and our taking the lock;
        // then unpack again.
        for _ in 0..3 {
            let image = match source {
                ImageRef::Dir(path) => self.copy_dir_image(path)?,
                _ => self.resolve(source)?,
            };
            if let Some(image) = self.record_name(name, image)? {
                return Ok(image);
            }
        }
        Err(StoreError::Damaged {
            digest: Digest::of(name.as_bytes()),
            reason: format!("{name}: the image kept disappearing while being imported"),
        })
    }

    /// Records `name -> image`, unless the image directory vanished (then `None`).
    pub(crate) fn record_name(
        &self,
        name: &str,
        image: Image,
    ) -> Result<Option<Image>, StoreError> {
        let lock = self.index.lock()?;
        if !image.dir.join(META).exists() {
            return Ok(None);
        }
        let entry = IndexEntry {
            digest: image.digest.clone(),
            created: now(),
        };
        self.index
            .update(&lock, |f| f.images.insert(name.to_string(), entry))?;
        Ok(Some(image))
    }

    /// Finds the image a reference means: a stored name (the built-in `busybox` is created on
    /// first use), or an `oci:` / `oci-archive:` / `docker-archive:` / `dir:` reference,
    /// unpacked on first use and cached by digest.
    pub fn resolve(&self, reference: &ImageRef) -> Result<Image, StoreError> {
        match reference {
            ImageRef::Name(name) => match self.lookup(name)? {
                Some(image) => Ok(image),
                None if busybox::is_default_name(name) => busybox::ensure_default_image(self),
                None => Err(StoreError::NoSuchImage(name.clone())),
            },
            ImageRef::Dir(path) => self.dir_image_in_place(path),
            _ => self.unpack_source(reference),
        }
    }

    /// The stored image called `name` (`x` and `x:latest` are the same name).
    pub fn lookup(&self, name: &str) -> Result<Option<Image>, StoreError> {
        let index = self.index.read()?;
        let entry = candidates(name).iter().find_map(|n| index.images.get(n));
        match entry {
            Some(e) => self.load(&e.digest).map(Some),
            None => Ok(None),
        }
    }

    /// Names in the store, sorted.
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let index = self.index.read()?;
        let mut out = Vec::with_capacity(index.images.len());
        for (name, e) in index.images {
            let (size, source) = match self.read_meta(&e.digest) {
                Ok(m) => (m.size, m.source),
                Err(_) => (0, "(damaged)".to_string()),
            };
            out.push(ImageSummary {
                name,
                digest: e.digest,
                size,
                created: e.created,
                source,
            });
        }
        Ok(out)
    }

    /// Forgets `name`; the image's files go too when no other name refers to them, and so do
    /// the blobs no other image was made from.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.forget(name)?;
        self.sweep_blobs()?;
        Ok(())
    }

    fn forget(&self, name: &str) -> Result<(), StoreError> {
        let lock = self.index.lock()?;
        let removed = self.index.update(&lock, |f| {
            let key = candidates(name)
                .into_iter()
                .find(|n| f.images.contains_key(n))?;
            let entry = f.images.remove(&key)?;
            let still_used = f.images.values().any(|e| e.digest == entry.digest);
            Some((entry.digest, still_used))
        })?;
        // The blob sweep that may follow takes the blob lock, which pulls hold while they
        // take this one: release it first.
        drop(lock);
        match removed {
            None => Err(StoreError::NoSuchImage(name.to_string())),
            Some((_, true)) => Ok(()),
            Some((digest, false)) => self.delete_image_dir(&digest),
        }
    }

    /// Deletes every image directory no name refers to (ad hoc `oci:`/`dir:` caches, images
    /// whose name moved on). Returns how many were removed.
    pub fn prune(&self) -> Result<usize, StoreError> {
        let lock = self.index.lock()?;
        let index = self.index.read()?;
        let images = self.root.join("images");
        let mut removed = 0;
        for (digest, _) in named_entries(&images).map_err(io_err(&images))? {
            if !index.images.values().any(|e| e.digest == digest) {
                self.delete_image_dir(&digest)?;
                removed += 1;
            }
        }
        drop(lock);
        self.sweep_blobs()?;
        Ok(removed)
    }

    /// The read-only ext4 root disk of `image`, built on first use and cached next to it.
    pub fn root_disk(&self, image: &Image) -> Result<PathBuf, StoreError> {
        let disk = image.dir.join(ROOT_DISK);
        if !disk.exists() {
            ext4::ext4_from_dir(&image.rootfs, &disk, true)?;
        }
        Ok(disk)
    }

    pub fn volumes(&self) -> Volumes {
        Volumes::new(self.root.join("volumes"))
    }

    /// The disk of volume `name`, created (`size_mib`, default 1 GiB, sparse) on first use.
    pub fn ensure_volume(&self, name: &str, size_mib: Option<u64>) -> Result<PathBuf, StoreError> {
        Ok(self.volumes().ensure(name, size_mib)?)
    }

    pub fn list_volumes(&self) -> Result<Vec<VolumeInfo>, StoreError> {
        Ok(self.volumes().list()?)
    }

    pub fn remove_volume(&self, name: &str) -> Result<(), StoreError> {
        Ok(self.volumes().remove(name)?)
    }

    fn image_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("images").join(digest.hex())
    }

    fn read_meta(&self, digest: &Digest) -> Result<ImageMeta, StoreError> {
        let path = self.image_dir(digest).join(META);
        let bytes = fs::read(&path).map_err(|e| StoreError::Damaged {
            digest: digest.clone(),
            reason: format!("{}: {e}", path.display()),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
            digest: digest.clone(),
            reason: format!("{}: {e}", path.display()),
        })
    }

    fn load(&self, digest: &Digest) -> Result<Image, StoreError> {
        let meta = self.read_meta(digest)?;
        let dir = self.image_dir(digest);
        let rootfs = meta
            .external_rootfs
            .clone()
            .unwrap_or_else(|| dir.join(ROOTFS));
        Ok(Image {
            digest: meta.digest,
            rootfs,
            config: meta.config,
            size: meta.size,
            source: meta.source,
            dir,
        })
    }

    /// Returns the stored image `digest`, or builds it: `fill` populates a private work
    /// directory (`rootfs/`, `config.json`) and describes it; the directory is then renamed
    /// into place. If another process got there first, its copy is used and ours dropped.
    pub(crate) fn install(
        &self,
        digest: &Digest,
        fill: impl FnOnce(&Path) -> Result<ImageMeta, StoreError>,
    ) -> Result<Image, StoreError> {
        let final_dir = self.image_dir(digest);
        if final_dir.join(META).exists() {
            return self.load(digest);
        }
        let tmp_root = self.root.join("tmp");
        let work = tempfile::Builder::new()
            .prefix("image-")
            .tempdir_in(&tmp_root)
            .map_err(io_err(&tmp_root))?;
        let meta = fill(work.path())?;
        let json = serde_json::to_vec_pretty(&meta).expect("image metadata always serializes");
        let meta_path = work.path().join(META);
        fs::write(&meta_path, json).map_err(io_err(&meta_path))?;
        let work = work.keep();
        match rename_noreplace(&work, &final_dir) {
            Ok(true) => {}
            Ok(false) => remove_any(&work).map_err(io_err(&work))?,
            Err(e) => {
                let _ = remove_any(&work);
                return Err(io_err(&final_dir)(e));
            }
        }
        self.load(digest)
    }

    /// Unpacks an `oci:`, `oci-archive:` or `docker-archive:` image (once per digest).
    fn unpack_source(&self, reference: &ImageRef) -> Result<Image, StoreError> {
        let src = source::open(reference)?;
        if self.image_dir(&src.id).join(META).exists() {
            return self.load(&src.id);
        }
        self.install(&src.id, |work| {
            unpack_image(&src, work, &reference.to_string())
        })
    }

    /// A `dir:` image used where it is; keyed by its path and a fingerprint of its tree, so
    /// editing the directory gives a new image (and a new root disk).
    fn dir_image_in_place(&self, path: &Path) -> Result<Image, StoreError> {
        let path = canonical_dir(path)?;
        let domain = format!("bulkhead dir: in place v1\0{}", path.display());
        let (stats, fingerprint) = walk::scan(&path, Some(&domain))?;
        let digest = fingerprint.expect("scan returns a fingerprint when asked");
        self.install(&digest, |_| {
            Ok(ImageMeta {
                digest: digest.clone(),
                source: format!("dir:{}", path.display()),
                size: stats.file_bytes,
                created: now(),
                config: ImageConfig::default(),
                external_rootfs: Some(path.clone()),
                blobs: Vec::new(),
            })
        })
    }

    /// A `dir:` image copied into the store, for `import`.
    fn copy_dir_image(&self, path: &Path) -> Result<Image, StoreError> {
        let path = canonical_dir(path)?;
        let (stats, fingerprint) = walk::scan(&path, Some("bulkhead dir: copy v1"))?;
        let digest = fingerprint.expect("scan returns a fingerprint when asked");
        self.install(&digest, |work| {
            let rootfs = work.join(ROOTFS);
            DirBuilder::new()
                .mode(0o755)
                .create(&rootfs)
                .map_err(io_err(&rootfs))?;
            copy_tree(&path, &rootfs)?;
            Ok(ImageMeta {
                digest: digest.clone(),
                source: format!("dir:{}", path.display()),
                size: stats.file_bytes,
                created: now(),
                config: ImageConfig::default(),
                external_rootfs: None,
                blobs: Vec::new(),
            })
        })
    }

    fn delete_image_dir(&self, digest: &Digest) -> Result<(), StoreError> {
        let dir = self.image_dir(digest);
        // Move it out of `images/` first so nobody sees a half-deleted image.
        let grave =
            self.root
                .join("tmp")
                .join(format!("deleted-{}-{}", digest.hex(), std::process::id()));
        match fs::rename(&dir, &grave) {
            Ok(()) => remove_any(&grave).map_err(io_err(&grave)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    /// Removes work areas and downloads that processes which died long ago left.
    fn clean_stale_tmp(&self) {
        let dirs = [self.root.join("tmp"), self.root.join("blobs/partial")];
        let entries = dirs.iter().filter_map(|d| fs::read_dir(d).ok()).flatten();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                let _ = remove_any(&entry.path());
            }
        }
    }
}

/// Fills an image work directory from `src`: its layers unpacked into `rootfs/`, its config.
fn unpack_image(src: &ImageSource, work: &Path, source: &str) -> Result<ImageMeta, StoreError> {
    let rootfs = work.join(ROOTFS);
    DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .map_err(io_err(&rootfs))?;
    for (path, spec) in &src.layers {
        apply_layer(&rootfs, src.open_layer(path)?, spec)?;
    }
    let config_path = work.join("config.json");
    fs::write(&config_path, &src.config_bytes).map_err(io_err(&config_path))?;
    let (stats, _) = walk::scan(&rootfs, None)?;
    Ok(ImageMeta {
        digest: src.id.clone(),
        source: source.to_string(),
        size: stats.file_bytes,
        created: now(),
        config: ImageConfig::from(&src.config),
        external_rootfs: None,
        blobs: Vec::new(),
    })
}

fn canonical_dir(path: &Path) -> Result<PathBuf, StoreError> {
    let canonical = fs::canonicalize(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            StoreError::Source(SourceError::NotFound(path.to_path_buf()))
        } else {
            io_err(path)(e)
        }
    })?;
    if !canonical.is_dir() {
        return Err(StoreError::NotADirectory(path.to_path_buf()));
    }
    Ok(canonical)
}

/// `x` and `x:latest` name the same image.
fn candidates(name: &str) -> Vec<String> {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        None => vec![name.to_string(), format!("{name}:latest")],
        Some((_, "latest")) => vec![
            name.to_string(),
            name[..name.len() - ":latest".len()].to_string(),
        ],
        Some(_) => vec![name.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_is_implied() {
        assert_eq!(candidates("busybox"), ["busybox", "busybox:latest"]);
        assert_eq!(candidates("busybox:latest"), ["busybox:latest", "busybox"]);
        assert_eq!(candidates("a/b:1.0"), ["a/b:1.0"]);
    }
}

#[cfg(test)]
mod pulled_tests {
    use super::*;
    use crate::source::ManifestChoice;

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Puts an image's blobs in the store as a pull would, returning its manifest.
    fn put_image(store: &Store, layers: &[Vec<u8>]) -> ManifestChoice {
        let put = |bytes: &[u8]| {
            let d = Digest::of(bytes);
            store.blobs().put(&d, bytes).unwrap();
            d
        };
        let layer_digests: Vec<Digest> = layers.iter().map(|l| put(l)).collect();
        let config = serde_json::json!({
            "architecture": crate::source::host_arch(), "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": layer_digests.iter().map(|d| d.to_string()).collect::<Vec<_>>()}
        })
        .to_string();
        let config_digest = put(config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers.iter().zip(&layer_digests).map(|(l, d)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": l.len()
            })).collect::<Vec<_>>()
        })
        .to_string();
        ManifestChoice {
            digest: put(manifest.as_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: manifest.len() as u64,
        }
    }

    #[test]
    fn pulled_images_keep_their_blobs_until_no_image_uses_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let base = layer(&[("etc/base", b"base")]);
        let a = put_image(&store, &[base.clone(), layer(&[("a", b"a")])]);
        let b = put_image(&store, &[base.clone(), layer(&[("b", b"b")])]);
        let image_a = store
            .install_pulled(&a, "reg:5000/a@x", "reg:5000/a:1")
            .unwrap();
        store
            .install_pulled(&b, "reg:5000/b@x", "reg:5000/b:1")
            .unwrap();
        assert_eq!(fs::read(image_a.rootfs.join("etc/base")).unwrap(), b"base");
        assert!(image_a.rootfs.join("a").exists());
        let listed = store.list().unwrap();
        assert!(listed
            .iter()
            .any(|i| i.name == "reg:5000/a:1" && i.source == "reg:5000/a@x"));

        let base_digest = Digest::of(&base);
        store.remove("reg:5000/a:1").unwrap();
        assert!(
            store.blobs().contains(&base_digest, base.len() as u64),
            "b still uses the base layer"
        );
        assert!(
            !store.blobs().path(&a.digest).exists(),
            "a's manifest is freed"
        );
        store.remove("reg:5000/b:1").unwrap();
        let left: Vec<_> = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_blob_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let l = layer(&[("x", b"x")]);
        let m = put_image(&store, std::slice::from_ref(&l));
        // Damage the stored layer behind the store's back.
        let mut bad = l.clone();
        bad[600] ^= 0xff;
        fs::write(store.blobs().path(&Digest::of(&l)), bad).unwrap();
        let err = store.install_pulled(&m, "s", "reg/x:1").unwrap_err();
        assert!(
            matches!(err, StoreError::Unpack(UnpackError::DigestMismatch { .. })),
            "{err}"
        );
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("images")).unwrap().count(), 0);
    }
}
