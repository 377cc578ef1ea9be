//! Reading images from their transports: what the config is, which layer blobs to apply and
//! how to verify them.

mod archive;
mod docker_archive;
mod oci_layout;

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex};
use serde::Deserialize;

use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::unpack::LayerSpec;
use archive::{Archive, DirArchive, TarArchive};

/// Manifests, indexes and configs are small; anything bigger is not one.
const MAX_JSON: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image {0} not found")]
    NotFound(PathBuf),
    #[error("image {location}: {path} not found")]
    Missing { location: PathBuf, path: String },
    #[error("reading {location}: {source}")]
    Io {
        location: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location} is not an image: {reason}")]
    NotAnImage { location: PathBuf, reason: String },
    #[error("image {location}: bad JSON in {path}: {source}")]
    BadJson {
        location: PathBuf,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {location}: bad manifest: {reason}")]
    BadManifest { location: PathBuf, reason: String },
    #[error("image {location}: no image tagged {tag:?} (available: {available})")]
    NoSuchTag {
        location: PathBuf,
        tag: String,
        available: String,
    },
    #[error(
        "image {location} holds {count} images; choose one with :TAG (available: {available})"
    )]
    Ambiguous {
        location: PathBuf,
        count: usize,
        available: String,
    },
    #[error("image {location} is for platform {found}, but this host runs linux/{host}")]
    WrongPlatform {
        location: PathBuf,
        found: String,
        host: &'static str,
    },
    #[error("corrupt image: blob {path} in {location} has digest {actual}, expected {expected}")]
    DigestMismatch {
        location: PathBuf,
        path: String,
        expected: Digest,
        actual: Digest,
    },
}

/// An image ready to be unpacked.
pub(crate) struct ImageSource {
    archive: Box<dyn Archive>,
    /// The image ID: the digest of the config blob, as Docker defines it.
    pub id: Digest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfiguration,
    /// Archive path of each layer blob, bottom first, with what to verify it against.
    pub layers: Vec<(String, LayerSpec)>,
}

impl ImageSource {
    pub(crate) fn open_layer(&self, path: &str) -> Result<Box<dyn Read + '_>, SourceError> {
        self.archive.open(path)
    }
}

/// Opens an `oci:`, `oci-archive:` or `docker-archive:` reference (other kinds have no source).
pub(crate) fn open(reference: &ImageRef) -> Result<ImageSource, SourceError> {
    match reference {
        ImageRef::OciLayout { dir, tag } => {
            oci_layout::load(Box::new(DirArchive::open_dir(dir)?), tag.as_deref())
        }
        ImageRef::OciArchive { file, tag } => {
            oci_layout::load(Box::new(TarArchive::open_file(file)?), tag.as_deref())
        }
        ImageRef::DockerArchive { file, reference } => {
            docker_archive::load(Box::new(TarArchive::open_file(file)?), reference.as_deref())
        }
        ImageRef::Dir(path) => Err(SourceError::NotAnImage {
            location: path.clone(),
            reason: "a dir: reference is a plain directory, not an image archive".into(),
        }),
        ImageRef::Name(name) => Err(SourceError::NotAnImage {
            location: PathBuf::from(name),
            reason: "a store name is not an image archive".into(),
        }),
    }
}

/// For fuzz/: opens `reference` as an import does (index, manifest and config parsed and
/// checked, no layer read) and returns its layer count and runtime config.
#[cfg(feature = "fuzzing")]
pub fn fuzz_open(reference: &ImageRef) -> Result<(usize, crate::ImageConfig), SourceError> {
    let source = open(reference)?;
    Ok((source.layers.len(), (&source.config).into()))
}

/// One manifest an index points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestChoice {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// True when `json` is an image index or a Docker manifest list rather than an image manifest.
pub fn is_index_json(json: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, rename = "mediaType")]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(json) {
        Ok(p) => match p.media_type {
            Some(t) => oci_layout::is_index(&t.as_str().into()),
            None => p.manifests.is_some(),
        },
        Err(_) => false,
    }
}

/// From an image index (fetched from anywhere), the manifest for linux on this host's
/// architecture. `what` names the image in errors.
pub fn platform_manifest(index_json: &[u8], what: &str) -> Result<ManifestChoice, SourceError> {
    let location = PathBuf::from(what);
    let index: ImageIndex =
        serde_json::from_slice(index_json).map_err(|source| SourceError::BadJson {
            location: location.clone(),
            path: "index".into(),
            source,
        })?;
    let desc = oci_layout::select_platform(&location, index.manifests())?;
    Ok(ManifestChoice {
        digest: desc
            .digest()
            .to_string()
            .parse()
            .map_err(|e| SourceError::BadManifest {
                location: location.clone(),
                reason: format!("index entry: {e}"),
            })?,
        media_type: desc.media_type().to_string(),
        size: desc.size(),
    })
}

/// The image of a manifest kept in the store's blobs (a pulled image): `root` holds
/// `blobs/sha256/`, where the manifest, the config and every layer already are.
pub(crate) fn open_stored(
    root: &Path,
    manifest: &ManifestChoice,
) -> Result<ImageSource, SourceError> {
    let desc: Descriptor = serde_json::from_value(serde_json::json!({
        "mediaType": manifest.media_type,
        "digest": manifest.digest.to_string(),
        "size": manifest.size,
    }))
    .map_err(|source| SourceError::BadJson {
        location: root.to_path_buf(),
        path: manifest.digest.to_string(),
        source,
    })?;
    oci_layout::from_manifest(Box::new(DirArchive::open_dir(root)?), &desc)
}

/// The GOARCH name of this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    archive: &dyn Archive,
    path: &str,
    bytes: &[u8],
) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|source| SourceError::BadJson {
        location: archive.location().to_path_buf(),
        path: path.to_string(),
        source,
    })
}

/// Parses and checks the config blob, and pairs layer blobs with the config's diff_ids.
fn finish(
    archive: Box<dyn Archive>,
    config_path: &str,
    config_bytes: Vec<u8>,
    layers: Vec<(String, LayerSpec)>,
) -> Result<ImageSource, SourceError> {
    #[derive(Deserialize)]
    struct Platform {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
    }
    let location = archive.location().to_path_buf();
    let platform: Platform = parse_json(&*archive, config_path, &config_bytes)?;
    if platform.os != "linux" || platform.architecture != host_arch() {
        return Err(SourceError::WrongPlatform {
            location,
            found: format!("{}/{}", platform.os, platform.architecture),
            host: host_arch(),
        });
    }
    let config: ImageConfiguration = parse_json(&*archive, config_path, &config_bytes)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(SourceError::BadManifest {
            location,
            reason: format!(
                "the manifest lists {} layers but the config has {} diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        });
    }
    let mut with_ids = Vec::with_capacity(layers.len());
    for ((path, mut spec), diff_id) in layers.into_iter().zip(diff_ids) {
        spec.diff_id = Some(diff_id.parse().map_err(|e| SourceError::BadManifest {
            location: location.clone(),
            reason: format!("config diff_id: {e}"),
        })?);
        with_ids.push((path, spec));
    }
    Ok(ImageSource {
        archive,
        id: Digest::of(&config_bytes),
        config_bytes,
        config,
        layers: with_ids,
    })
}
