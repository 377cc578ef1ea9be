//! The virtio-fs device as the transport sees it: tag and queue count in
//! config space, two queues (hiprio and one request queue), and the
//! optional vhost-user backend that serves them.

use std::path::Path;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, FsError};
use crate::config::FS_TAG_MAX;
use crate::devices::virtio::device::{read_config_bytes, ActivateError, DeviceCore, VirtioDevice};
use crate::devices::virtio::features::{
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

const VIRTIO_ID_FS: u32 = 26;
pub const FS_QUEUE_SIZE: u16 = 256;
/// The hiprio queue (FUSE_INTERRUPT, FUSE_FORGET) and one request queue.
pub(super) const QUEUE_SIZES: [u16; 2] = [FS_QUEUE_SIZE; 2];
/// What the device offers the driver. A slot offers it before any backend
/// exists, so these are what every backend must have (virtiofsd has all).
pub(super) const FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;
/// struct virtio_fs_config: tag[36], num_request_queues (le32).
const CONFIG_LEN: usize = FS_TAG_MAX + 4;

/// A virtio-fs device, connected to a backend or an empty slot.
#[derive(Debug)]
pub struct Fs {
    pub(super) core: DeviceCore,
    pub(super) tag: String,
    config: [u8; CONFIG_LEN],
    pub(super) backend: Option<Backend>,
    /// One per queue: the backend signals these, the event loop raises
    /// the interrupt (virtio-mmio needs InterruptStatus set first).
    pub(super) calls: Vec<EventFd>,
}

impl Fs {
    /// A device showing `tag`, served by the backend listening at `socket`
    /// (connected and checked now, started when the driver is ready), or
    /// an empty slot without one.
    pub fn new(tag: &str, socket: Option<&Path>) -> Result<Self, FsError> {
        let core = DeviceCore::new(FEATURES, &QUEUE_SIZES).map_err(FsError::Setup)?;
        let backend = socket.map(|s| Backend::connect(s, FEATURES)).transpose()?;
        Self::with_parts(core, tag, backend)
    }

    pub(super) fn with_parts(
        core: DeviceCore,
        tag: &str,
        backend: Option<Backend>,
    ) -> Result<Self, FsError> {
        Ok(Self {
            config: config_space(tag)?,
            tag: tag.to_string(),
            calls: QUEUE_SIZES
                .iter()
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<_, _>>()
                .map_err(FsError::Setup)?,
            core,
            backend,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether a backend is connected (a snapshot cannot hold its state).
    pub fn is_connected(&self) -> bool {
        self.backend.is_some()
    }

    /// Starts the backend on the driver's queues if the device is active
    /// and the backend is not serving them yet.
    pub(super) fn start_backend(&mut self) -> Result<(), FsError> {
        let (Some(backend), Some(mem)) = (self.backend.as_mut(), self.core.mem.as_ref()) else {
            return Ok(());
        };
        if backend.is_started() {
            return Ok(());
        }
        backend.start(
            self.core.acked_features,
            mem,
            &self.core.queues,
            &self.core.queue_events,
            &self.calls,
        )
    }
}

fn config_space(tag: &str) -> Result<[u8; CONFIG_LEN], FsError> {
    if tag.is_empty() || tag.len() > FS_TAG_MAX || tag.contains('\0') {
        return Err(FsError::InvalidTag(tag.to_string()));
    }
    let mut config = [0u8; CONFIG_LEN];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[FS_TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
    Ok(config)
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn core(&self) -> &DeviceCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field of virtio_fs_config is read-only.
    }

    fn activate(&mut self, mem: GuestMemoryMmap) -> Result<(), ActivateError> {
        // The event loop starts the backend: its replies must not hold up
        // the vCPU that wrote DRIVER_OK.
        self.core.activate(mem)
    }

    fn reset(&mut self) {
        if let Some(backend) = self.backend.as_mut() {
            backend.stop(QUEUE_SIZES.len());
        }
        self.core.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_holds_tag_and_one_request_queue() {
        let fs = Fs::new("share0", None).unwrap();
        assert_eq!(fs.device_type(), 26);
        let mut tag = [0xffu8; FS_TAG_MAX];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..6], b"share0");
        assert!(tag[6..].iter().all(|&b| b == 0));
        let mut n = [0u8; 4];
        fs.read_config(FS_TAG_MAX as u64, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1);
        assert_eq!(fs.queues().len(), 2);
        assert!(!fs.is_connected());
    }

    #[test]
    fn rejects_bad_tags_and_missing_backends() {
        for tag in ["", "a\0b", &"x".repeat(37)] {
            assert!(matches!(Fs::new(tag, None), Err(FsError::InvalidTag(_))));
        }
        let err = Fs::new("t", Some(Path::new("/nonexistent/fs.sock"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/fs.sock"), "{err}");
    }
}
