//! OCI image layouts: `index.json` pointing (maybe through nested indexes) at manifests whose
//! blobs live in `blobs/<alg>/<hex>`.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use super::archive::Archive;
use super::{finish, host_arch, parse_json, ImageSource, SourceError, MAX_JSON};
use crate::digest::Digest;
use crate::unpack::LayerSpec;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Nested indexes deeper than this are a loop or an attack.
const MAX_INDEX_DEPTH: usize = 4;
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub(super) fn load(
    archive: Box<dyn Archive>,
    tag: Option<&str>,
) -> Result<ImageSource, SourceError> {
    let location = archive.location().to_path_buf();
    if !archive.contains("index.json") {
        return Err(SourceError::NotAnImage {
            location,
            reason: "index.json not found (not an OCI image layout)".into(),
        });
    }
    let bytes = archive.read_small("index.json", MAX_JSON)?;
    let index: ImageIndex = parse_json(&*archive, "index.json", &bytes)?;
    let mut desc = select_tagged(&location, index.manifests(), tag)?.clone();

    for _ in 0..MAX_INDEX_DEPTH {
        if !is_index(desc.media_type()) {
            break;
        }
        let bytes = read_blob(&*archive, &desc)?;
        let nested: ImageIndex = parse_json(&*archive, &blob_path(&location, &desc)?, &bytes)?;
        desc = select_platform(&location, nested.manifests())?.clone();
    }
    if is_index(desc.media_type()) {
        return Err(SourceError::BadManifest {
            location,
            reason: "image indexes nested too deeply".into(),
        });
    }

    from_manifest(archive, &desc)
}

/// The image a manifest describes, its config and layers read from `blobs/sha256/` of
/// `archive`.
pub(super) fn from_manifest(
    archive: Box<dyn Archive>,
    desc: &Descriptor,
) -> Result<ImageSource, SourceError> {
    let location = archive.location().to_path_buf();
    let manifest_bytes = read_blob(&*archive, desc)?;
    let manifest: ImageManifest =
        parse_json(&*archive, &blob_path(&location, desc)?, &manifest_bytes)?;
    let config_desc = manifest.config();
    let config_bytes = read_blob(&*archive, config_desc)?;
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for layer in manifest.layers() {
        if layer.media_type().to_string().contains("+encrypted") {
            return Err(SourceError::BadManifest {
                location,
                reason: format!("layer {} is encrypted", layer.digest()),
            });
        }
        let path = blob_path(&location, layer)?;
        let digest = digest_of(&location, layer)?;
        layers.push((
            path,
            LayerSpec {
                name: digest.to_string(),
                digest: Some(digest),
                size: Some(layer.size()),
                diff_id: None,
            },
        ));
    }
    finish(
        archive,
        &blob_path(&location, config_desc)?,
        config_bytes,
        layers,
    )
}

pub(super) fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex) || media_type.to_string() == DOCKER_MANIFEST_LIST
}

fn digest_of(location: &Path, desc: &Descriptor) -> Result<Digest, SourceError> {
    desc.digest()
        .to_string()
        .parse()
        .map_err(|e| SourceError::BadManifest {
            location: location.to_path_buf(),
            reason: format!("descriptor: {e}"),
        })
}

fn blob_path(location: &Path, desc: &Descriptor) -> Result<String, SourceError> {
    Ok(format!("blobs/sha256/{}", digest_of(location, desc)?.hex()))
}

/// Reads a small blob and checks it against its descriptor.
fn read_blob(archive: &dyn Archive, desc: &Descriptor) -> Result<Vec<u8>, SourceError> {
    let path = blob_path(archive.location(), desc)?;
    let expected = digest_of(archive.location(), desc)?;
    let bytes = archive.read_small(&path, MAX_JSON)?;
    let actual = Digest::of(&bytes);
    if actual != expected || bytes.len() as u64 != desc.size() {
        return Err(SourceError::DigestMismatch {
            location: archive.location().to_path_buf(),
            path,
            expected,
            actual,
        });
    }
    Ok(bytes)
}

fn tag_names(desc: &Descriptor) -> Vec<&str> {
    let Some(a) = desc.annotations() else {
        return Vec::new();
    };
    [REF_NAME, CONTAINERD_NAME]
        .iter()
        .filter_map(|k| a.get(*k).map(String::as_str))
        .collect()
}

fn matches_tag(desc: &Descriptor, tag: &str) -> bool {
    tag_names(desc)
        .iter()
        .any(|name| *name == tag || name.ends_with(&format!(":{tag}")))
}

fn available(manifests: &[Descriptor]) -> String {
    let mut names: Vec<&str> = manifests.iter().flat_map(tag_names).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        "no tagged images".to_string()
    } else {
        names.join(", ")
    }
}

fn select_tagged<'a>(
    location: &Path,
    manifests: &'a [Descriptor],
    tag: Option<&str>,
) -> Result<&'a Descriptor, SourceError> {
    if let Some(tag) = tag {
        return manifests
            .iter()
            .find(|d| matches_tag(d, tag))
            .ok_or_else(|| SourceError::NoSuchTag {
                location: location.to_path_buf(),
                tag: tag.to_string(),
                available: available(manifests),
            });
    }
    match manifests {
        [] => Err(SourceError::BadManifest {
            location: location.to_path_buf(),
            reason: "index.json lists no manifests".into(),
        }),
        [only] => Ok(only),
        _ => manifests
            .iter()
            .find(|d| matches_tag(d, "latest"))
            .ok_or_else(|| SourceError::Ambiguous {
                location: location.to_path_buf(),
                count: manifests.len(),
                available: available(manifests),
            }),
    }
}

/// Picks this host's linux manifest from a multi-platform index.
pub(super) fn select_platform<'a>(
    location: &Path,
    manifests: &'a [Descriptor],
) -> Result<&'a Descriptor, SourceError> {
    let platform_of = |d: &Descriptor| {
        d.platform().as_ref().map(|p| {
            let v = serde_json::to_value(p).unwrap_or_default();
            let get = |k: &str| v.get(k).and_then(|s| s.as_str()).unwrap_or("").to_string();
            (get("os"), get("architecture"))
        })
    };
    let wanted = ("linux".to_string(), host_arch().to_string());
    manifests
        .iter()
        .find(|d| platform_of(d).as_ref() == Some(&wanted))
        .or(match manifests {
            [only] if only.platform().is_none() => Some(only),
            _ => None,
        })
        .ok_or_else(|| {
            let found: HashMap<String, ()> = manifests
                .iter()
                .filter_map(platform_of)
                .map(|(os, arch)| (format!("{os}/{arch}"), ()))
                .collect();
            let mut found: Vec<String> = found.into_keys().collect();
            found.sort();
            SourceError::WrongPlatform {
                location: location.to_path_buf(),
                found: if found.is_empty() {
                    "no platform".into()
                } else {
                    found.join(", ")
                },
                host: host_arch(),
            }
        })
}
