//! Finding the image manifest a reference means: fetched raw (its bytes are what its digest
//! covers), checked against the digest asked for, and an index resolved to this host's
//! platform.

use bulkhead_rootfs::{is_index_json, platform_manifest, Digest, ManifestChoice};
use oci_client::Reference;
use serde::Deserialize;

use crate::error::PullError;
use crate::session::Session;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT: &[&str] = &[
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// A blob a manifest names.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct BlobRef {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Parsed as bulkhead's digest type: only sha256, only hex, so it is safe as a file name.
    pub digest: Digest,
    pub size: u64,
}

/// The parts of an image manifest a pull fetches.
#[derive(Debug, Deserialize)]
pub(crate) struct ImageManifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: BlobRef,
    #[serde(default)]
    pub layers: Vec<BlobRef>,
}

/// The image manifest `session`'s reference names, and its bytes.
pub(crate) async fn resolve(
    session: &Session<'_>,
) -> Result<(ManifestChoice, ImageManifest, Vec<u8>), PullError> {
    let remote = session.remote;
    let what = remote.to_string();
    let bytes = fetch(session, remote.oci(), &what).await?;
    let digest = Digest::of(&bytes);
    if let Some(wanted) = remote.digest() {
        if digest.to_string() != wanted {
            return Err(PullError::DigestMismatch {
                digest: wanted.to_string(),
                actual: digest.to_string(),
            });
        }
    }
    let (choice, bytes) = if is_index_json(&bytes) {
        let choice = platform_manifest(&bytes, &what).map_err(PullError::Image)?;
        let chosen = fetch(
            session,
            &remote.at_digest(&choice.digest.to_string()),
            &format!("{what} ({})", choice.digest),
        )
        .await?;
        let actual = Digest::of(&chosen);
        if actual != choice.digest || chosen.len() as u64 != choice.size {
            return Err(PullError::DigestMismatch {
                digest: choice.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if is_index_json(&chosen) {
            return Err(PullError::Unsupported(format!(
                "{what}: an index inside an index"
            )));
        }
        (choice, chosen)
    } else {
        let size = bytes.len() as u64;
        (
            ManifestChoice {
                digest,
                media_type: String::new(),
                size,
            },
            bytes,
        )
    };
    let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
        PullError::Unsupported(format!(
            "{what}: the manifest is not an image manifest: {e}"
        ))
    })?;
    let media_type = manifest
        .media_type
        .clone()
        .or_else(|| (!choice.media_type.is_empty()).then(|| choice.media_type.clone()))
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    if DOCKER_SCHEMA1.contains(&media_type.as_str()) {
        return Err(PullError::Unsupported(format!(
            "{what}: Docker schema 1 manifests are not supported (push the image again with a current client)"
        )));
    }
    Ok((
        ManifestChoice {
            media_type,
            ..choice
        },
        manifest,
        bytes,
    ))
}

async fn fetch(
    session: &Session<'_>,
    reference: &Reference,
    what: &str,
) -> Result<Vec<u8>, PullError> {
    let (bytes, _) = session
        .client
        .pull_manifest_raw(reference, &session.auth, ACCEPT)
        .await
        .map_err(|e| session.ctx(what).classify(e))?;
    Ok(bytes.to_vec())
}

/// The `os/architecture` a config blob declares, to refuse a foreign image before its layers
/// are fetched.
pub(crate) fn config_platform(config: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Platform {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
    }
    let p: Platform = serde_json::from_slice(config).ok()?;
    Some((p.os, p.architecture))
}
