//! bulkhead's image side: image references and transports, image configs and Docker's override
//! rules, layer unpacking, the local image store, ext4 root/scratch/volume disks, the guest
//! initramfs, the built-in busybox image and user lookup.
//!
//! The usual flow for `bulkhead run IMAGE CMD`:
//!
//! ```no_run
//! use bulkhead_rootfs::{resolve_process, resolve_user, scratch_disk, ImageRef, RunOverrides, Store};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open_default()?;
//! let image = store.resolve(&ImageRef::parse("busybox")?)?;
//! let root_disk = store.root_disk(&image)?;
//! let process = resolve_process(&image.config, &RunOverrides { args: vec!["ls".into()], ..Default::default() })?;
//! let user = resolve_user(&image.rootfs, &process.user)?;
//! scratch_disk(std::path::Path::new("/run/bulkhead/vm1/scratch.ext4"), 1024)?;
//! # Ok(()) }
//! ```

pub mod busybox;
pub mod config;
pub mod digest;
pub mod export;
pub mod ext4;
mod fsutil;
pub mod initramfs;
pub mod reference;
pub mod source;
pub mod store;
pub mod unpack;
pub mod user;
pub mod volume;
mod walk;

pub use busybox::{ensure_default_image, is_default_name, BusyboxError, DEFAULT_IMAGE};
pub use config::{
    merge_env, resolve_command, resolve_process, resolve_process_with, ConfigError, ImageConfig,
    ProcessSpec, RunOverrides,
};
pub use digest::{Digest, DigestError, Hasher};
pub use export::export_tar;
pub use ext4::{ext4_from_dir, scratch_disk, DiskError};
pub use initramfs::{build_initramfs, InitramfsError};
pub use reference::{ImageRef, ReferenceError};
pub use source::{host_arch, is_index_json, platform_manifest, ManifestChoice, SourceError};
pub use store::{BlobLease, Blobs, Image, ImageSummary, Store, StoreError, DEFAULT_STORE_ROOT};
pub use unpack::{apply_layer, CopyError, LayerSpec, UnpackError};
pub use user::{resolve_user, ResolvedUser, UserError};
pub use volume::{validate_volume_name, VolumeError, VolumeInfo, Volumes, DEFAULT_VOLUME_MIB};
pub use walk::WalkError;
