//! `docker save` / `podman save` tarballs: `manifest.json` names the config and the layer tars.
//! Archives that only carry an OCI layout (`index.json`) are read as such.

use serde::Deserialize;

use super::archive::Archive;
use super::{finish, oci_layout, parse_json, ImageSource, SourceError, MAX_JSON};
use crate::digest::Digest;
use crate::unpack::LayerSpec;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub(super) fn load(
    archive: Box<dyn Archive>,
    reference: Option<&str>,
) -> Result<ImageSource, SourceError> {
    let location = archive.location().to_path_buf();
    if !archive.contains("manifest.json") {
        if archive.contains("index.json") {
            return oci_layout::load(archive, reference);
        }
        return Err(SourceError::NotAnImage {
            location,
            reason: "neither manifest.json nor index.json found (not a docker-archive)".into(),
        });
    }
    let bytes = archive.read_small("manifest.json", MAX_JSON)?;
    let entries: Vec<Entry> = parse_json(&*archive, "manifest.json", &bytes)?;
    let entry = select(&location, &entries, reference)?;

    let config_bytes = archive.read_small(&entry.config, MAX_JSON)?;
    // The config's name is its digest (`<hex>.json`, or `blobs/sha256/<hex>` since docker 25).
    if let Some(expected) = content_address(&entry.config) {
        let actual = Digest::of(&config_bytes);
        if actual != expected {
            return Err(SourceError::DigestMismatch {
                location,
                path: entry.config.clone(),
                expected,
                actual,
            });
        }
    }
    let layers = entry
        .layers
        .iter()
        .map(|path| {
            let spec = LayerSpec {
                name: path.clone(),
                digest: content_address(path),
                size: None,
                diff_id: None,
            };
            (path.clone(), spec)
        })
        .collect();
    finish(archive, &entry.config, config_bytes, layers)
}

fn content_address(path: &str) -> Option<Digest> {
    let name = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))?;
    Digest::from_hex(name).ok()
}

/// `docker.io/library/busybox:latest`, `library/busybox:latest` and `busybox:latest` name the
/// same image; a missing tag means `latest`.
fn canonical(name: &str) -> String {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn select<'a>(
    location: &std::path::Path,
    entries: &'a [Entry],
    reference: Option<&str>,
) -> Result<&'a Entry, SourceError> {
    let tags = |e: &'a Entry| e.repo_tags.iter().flatten();
    let available = || {
        let names: Vec<&str> = entries.iter().flat_map(tags).map(String::as_str).collect();
        if names.is_empty() {
            "no tagged images".to_string()
        } else {
            names.join(", ")
        }
    };
    match reference {
        Some(r) => {
            let wanted = canonical(r);
            entries
                .iter()
                .find(|e| tags(e).any(|t| canonical(t) == wanted))
                .ok_or_else(|| SourceError::NoSuchTag {
                    location: location.to_path_buf(),
                    tag: r.to_string(),
                    available: available(),
                })
        }
        None => match entries {
            [] => Err(SourceError::BadManifest {
                location: location.to_path_buf(),
                reason: "manifest.json lists no images".into(),
            }),
            [only] => Ok(only),
            _ => Err(SourceError::Ambiguous {
                location: location.to_path_buf(),
                count: entries.len(),
                available: available(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("busybox"), "busybox:latest");
        assert_eq!(canonical("docker.io/library/busybox:1.36"), "busybox:1.36");
        assert_eq!(canonical("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(canonical("quay.io/x/y:v1"), "quay.io/x/y:v1");
    }

    #[test]
    fn content_addresses() {
        let hex = "a".repeat(64);
        assert_eq!(content_address(&format!("{hex}.json")).unwrap().hex(), hex);
        assert_eq!(
            content_address(&format!("blobs/sha256/{hex}"))
                .unwrap()
                .hex(),
            hex
        );
        assert!(content_address(&format!("{hex}/layer.tar")).is_none());
    }
}
