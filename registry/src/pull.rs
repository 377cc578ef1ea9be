//! `pull`: a reference in, an image in the store out. The steps: credentials, a session,
//! the manifest, the config (platform checked before any layer is fetched), the layers in
//! parallel, then the image made from the blobs and named.

use std::path::PathBuf;

use bulkhead_rootfs::{host_arch, Image, Store};
use futures_util::{StreamExt, TryStreamExt};

use crate::auth_file::{AuthFile, Credentials};
use crate::download;
use crate::error::PullError;
use crate::manifest::{self, BlobRef};
use crate::progress::{Progress, ProgressMode};
use crate::reference::RemoteRef;
use crate::session::Session;
use crate::transport::{Transport, TransportOptions};

/// Layers fetched at once, as Docker does by default.
const PARALLEL_DOWNLOADS: usize = 3;

#[derive(Clone, Debug)]
pub struct PullOptions {
    pub transport: TransportOptions,
    /// `--authfile`; else the usual places (see [`AuthFile::locate`]).
    pub authfile: Option<PathBuf>,
    pub progress: ProgressMode,
}

/// Pulls `reference` (Docker-style) into `store` and names it there by its normalised
/// reference. Nothing becomes an image unless every blob arrived and verified.
pub fn pull(store: &Store, reference: &str, opts: &PullOptions) -> Result<Image, PullError> {
    let remote = RemoteRef::parse(reference)?;
    let transport = Transport::new(&opts.transport)?;
    let creds = credentials(opts, remote.registry())?;
    runtime()?.block_on(pull_remote(
        store,
        &remote,
        &transport,
        creds,
        opts.progress,
    ))
}

/// The credentials for `registry` in the auth file, if it has any.
pub(crate) fn credentials(
    opts: &PullOptions,
    registry: &str,
) -> Result<Option<Credentials>, PullError> {
    let file = match AuthFile::locate(opts.authfile.as_deref()) {
        Ok(f) => f,
        // Without $HOME and without an explicit file there are simply no credentials.
        Err(_) if opts.authfile.is_none() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(file.get(registry)?)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, PullError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| PullError::Io {
            path: PathBuf::from("tokio runtime"),
            source,
        })
}

async fn pull_remote(
    store: &Store,
    remote: &RemoteRef,
    transport: &Transport,
    creds: Option<Credentials>,
    mode: ProgressMode,
) -> Result<Image, PullError> {
    let progress = Progress::new(mode);
    progress.say(&format!("Pulling {remote}"));
    let session = Session::open(transport, remote, creds).await?;
    let (choice, manifest, manifest_bytes) = manifest::resolve(&session).await?;

    let blobs = store.blobs();
    let lease = blobs.lease().map_err(|source| PullError::Io {
        path: store.root().join("blobs.lock"),
        source,
    })?;
    download::fetch(&session, blobs, &manifest.config, &progress).await?;
    check_platform(remote, blobs, &manifest.config)?;
    futures_util::stream::iter(manifest.layers.iter())
        .map(|layer| download::fetch(&session, blobs, layer, &progress))
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect::<Vec<_>>()
        .await?;

    // Every blob is in: only now does the store change.
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        download::commit(blobs, blob)?;
    }
    blobs
        .put(&choice.digest, &manifest_bytes)
        .map_err(|source| PullError::Io {
            path: blobs.path(&choice.digest),
            source,
        })?;

    progress.say(&format!("Unpacking {}", choice.digest));
    let installed = store.install_pulled(
        &choice,
        &remote.source_with(&choice.digest.to_string()),
        &remote.store_name(),
    );
    drop(lease);
    if installed.is_err() {
        // Blobs that verified but do not make an image (a layer that is not a tar) are
        // nobody's: take them out again, so a failed pull leaves the store as it was.
        let _ = store.sweep_blobs();
    }
    Ok(installed?)
}

/// Refuses an image for another platform once its (small) config is in, before its layers.
fn check_platform(
    remote: &RemoteRef,
    blobs: &bulkhead_rootfs::Blobs,
    config: &BlobRef,
) -> Result<(), PullError> {
    let bytes = download::read(blobs, config)?;
    match manifest::config_platform(&bytes) {
        Some((os, arch)) if os == "linux" && arch == host_arch() => Ok(()),
        Some((os, arch)) => Err(PullError::Unsupported(format!(
            "{remote} is for platform {os}/{arch}, but this host runs linux/{}",
            host_arch()
        ))),
        None => Err(PullError::Unsupported(format!(
            "{remote}: its config blob {} is not an image config",
            config.digest
        ))),
    }
}
