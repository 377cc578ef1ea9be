//! `bulkhead image import|ls|rm`: the local image store.

use anyhow::Context;
use bulkhead_rootfs::{ImageRef, Store};
use clap::Subcommand;

use crate::paths;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import an image (oci:DIR[:TAG], docker-archive:FILE, dir:PATH) under NAME.
    Import { source: String, name: String },
    /// List images.
    Ls,
    /// Remove an image name (and the blobs no other image uses).
    Rm { names: Vec<String> },
    /// Write an image's root as a tar (to FILE, or stdout), for
    /// `podman import`, `docker import` and the like.
    Export {
        name: String,
        #[arg(short = 'o', long)]
        output: Option<std::path::PathBuf>,
    },
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    let store = Store::open(paths::root()).context("cannot open the image store")?;
    match cmd {
        ImageCommand::Import { source, name } => {
            let reference = ImageRef::parse(&source)
                .with_context(|| format!("invalid image reference {source:?}"))?;
            let image = store
                .import(&reference, &name)
                .with_context(|| format!("cannot import {source}"))?;
            println!("{name} {}", image.digest.short());
        }
        ImageCommand::Ls => {
            println!("{:<40} {:<14} {:>10}  SOURCE", "NAME", "IMAGE ID", "SIZE");
            for image in store.list()? {
                println!(
                    "{:<40} {:<14} {:>10}  {}",
                    image.name,
                    image.digest.short(),
                    human(image.size),
                    image.source
                );
            }
        }
        ImageCommand::Export { name, output } => {
            let image = crate::pull::image_for(
                &store,
                &name,
                crate::pull::PullPolicy::Never,
                &Default::default(),
            )?;
            let written = match &output {
                Some(path) => std::fs::File::create(path).and_then(|f| {
                    bulkhead_rootfs::export_tar(&image.rootfs, std::io::BufWriter::new(f))
                }),
                None => bulkhead_rootfs::export_tar(&image.rootfs, std::io::stdout().lock()),
            };
            match written {
                // A reader that stopped early (`| tar -t | head`) is no failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.with_context(|| format!("cannot export image {name}"))?,
            }
        }
        ImageCommand::Rm { names } => {
            for name in names {
                let stored = crate::pull::stored_name(&store, &name)?;
                store
                    .remove(&stored)
                    .with_context(|| format!("cannot remove image {name}"))?;
                println!("{name}");
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// List named volumes.
    Ls,
    /// Remove named volumes (their data is lost).
    Rm { names: Vec<String> },
}

pub fn run_volume(cmd: VolumeCommand) -> anyhow::Result<()> {
    let store = Store::open(paths::root()).context("cannot open the image store")?;
    match cmd {
        VolumeCommand::Ls => {
            println!("{:<30} {:>10} {:>10}", "NAME", "SIZE", "USED");
            for v in store.list_volumes()? {
                println!(
                    "{:<30} {:>10} {:>10}",
                    v.name,
                    human(v.size_bytes),
                    human(v.used_bytes)
                );
            }
        }
        VolumeCommand::Rm { names } => {
            for name in names {
                store
                    .remove_volume(&name)
                    .with_context(|| format!("cannot remove volume {name}"))?;
                println!("{name}");
            }
        }
    }
    Ok(())
}
