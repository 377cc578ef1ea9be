//! The vhost-user session with one virtiofsd: connection and feature check
//! when the device is made, then the memory table and rings once the
//! driver has started the device.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes")]
    InvalidTag(String),
    #[error("cannot connect to the virtio-fs backend at {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the virtio-fs backend at {} failed {step}: {source}", .socket.display())]
    Backend {
        socket: PathBuf,
        step: &'static str,
        source: vhost::Error,
    },
    #[error("the virtio-fs backend at {} lacks features {missing:#x}", .socket.display())]
    MissingFeatures { socket: PathBuf, missing: u64 },
    #[error("the virtio-fs backend at {} serves {found} queues, the device needs {needed}", .socket.display())]
    QueueCount {
        socket: PathBuf,
        found: u64,
        needed: usize,
    },
    #[error("guest memory is not shareable with the virtio-fs backend at {} (no memory file)", .socket.display())]
    NotShareable { socket: PathBuf },
    #[error("virtio-fs queue {queue} for the backend at {} has rings outside guest memory", .socket.display())]
    RingOutsideMemory { socket: PathBuf, queue: usize },
    #[error("cannot create the virtio-fs device's eventfds: {0}")]
    Setup(#[source] std::io::Error),
}

/// Protocol features bulkhead uses when the backend has them: replies to
/// every request (so a failure is seen at the request that caused it) and
/// the queue count.
const WANTED_PROTOCOL: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::REPLY_ACK.union(VhostUserProtocolFeatures::MQ);

/// A connected virtiofsd.
pub struct Backend {
    frontend: Frontend,
    socket: PathBuf,
    /// The virtio features the backend offers.
    features: u64,
    protocol: VhostUserProtocolFeatures,
    /// The memory table and rings have been handed over.
    started: bool,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("socket", &self.socket)
            .field("features", &format_args!("{:#x}", self.features))
            .field("started", &self.started)
            .finish()
    }
}

impl Backend {
    /// Connects to the listening socket at `socket`, takes ownership of the
    /// session and checks that the backend offers every feature in
    /// `device_features` (what the guest may have acked).
    pub fn connect(socket: &Path, device_features: u64) -> Result<Self, FsError> {
        let stream = UnixStream::connect(socket).map_err(|source| FsError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        let mut backend = Backend {
            frontend: Frontend::from_stream(stream, 0),
            socket: socket.to_path_buf(),
            features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            started: false,
        };
        backend.step("SET_OWNER", |f| f.set_owner())?;
        backend.features = backend.step("GET_FEATURES", |f| f.get_features())?;
        let missing = device_features & !backend.features;
        if missing != 0 {
            return Err(FsError::MissingFeatures {
                socket: socket.to_path_buf(),
                missing,
            });
        }
        Ok(backend)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    fn step<T>(
        &mut self,
        step: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, FsError> {
        f(&mut self.frontend).map_err(|source| FsError::Backend {
            socket: self.socket.clone(),
            step,
            source,
        })
    }

    /// Hands the backend what it needs to serve the driver's queues:
    /// `acked` features, the memory table, and for each queue its size,
    /// ring addresses, where the device left off (`next_avail`), its kick
    /// eventfd (the guest's QueueNotify) and call eventfd (watched by the
    /// event loop). Then enables the rings.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), FsError> {
        self.negotiate(acked, queues.len())?;
        self.set_mem_table(mem)?;
        for (index, queue) in queues.iter().enumerate() {
            self.set_up_vring(index, queue, mem, &kicks[index], &calls[index])?;
        }
        self.started = true;
        Ok(())
    }

    fn negotiate(&mut self, acked: u64, queue_count: usize) -> Result<(), FsError> {
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let with_protocol = self.features & protocol_bit != 0;
        let features = acked | if with_protocol { protocol_bit } else { 0 };
        self.step("SET_FEATURES", |f| f.set_features(features))?;
        if !with_protocol {
            return Ok(());
        }
        let offered = self.step("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
        self.protocol = offered & WANTED_PROTOCOL;
        let protocol = self.protocol;
        self.step("SET_PROTOCOL_FEATURES", |f| {
            f.set_protocol_features(protocol)
        })?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let found = self.step("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            if found < queue_count as u64 {
                return Err(FsError::QueueCount {
                    socket: self.socket.clone(),
                    found,
                    needed: queue_count,
                });
            }
        }
        Ok(())
    }

    fn set_mem_table(&mut self, mem: &GuestMemoryMmap) -> Result<(), FsError> {
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| FsError::NotShareable {
                socket: self.socket.clone(),
            })?;
        self.step("SET_MEM_TABLE", |f| f.set_mem_table(&regions).map(|_| ()))
    }

    fn set_up_vring(
        &mut self,
        index: usize,
        queue: &Queue,
        mem: &GuestMemoryMmap,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), FsError> {
        // vhost-user rings are addressed in the frontend's virtual address
        // space, which the memory table maps for the backend.
        let host_addr = |gpa: u64| {
            mem.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|_| FsError::RingOutsideMemory {
                    socket: self.socket.clone(),
                    queue: index,
                })
        };
        let config = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: host_addr(queue.desc_table())?,
            used_ring_addr: host_addr(queue.used_ring())?,
            avail_ring_addr: host_addr(queue.avail_ring())?,
            log_addr: None,
        };
        let next_avail = queue.next_avail();
        self.step("SET_VRING_NUM", |f| f.set_vring_num(index, queue.size()))?;
        self.step("SET_VRING_ADDR", |f| f.set_vring_addr(index, &config))?;
        self.step("SET_VRING_BASE", |f| f.set_vring_base(index, next_avail))?;
        self.step("SET_VRING_CALL", |f| f.set_vring_call(index, call))?;
        self.step("SET_VRING_KICK", |f| f.set_vring_kick(index, kick))?;
        if self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            self.step("SET_VRING_ENABLE", |f| f.set_vring_enable(index, true))?;
        }
        Ok(())
    }

    /// Stops the backend's rings (the driver reset the device); a later
    /// activation starts them again from the reset queues.
    pub fn stop(&mut self, queue_count: usize) {
        if !std::mem::take(&mut self.started) {
            return;
        }
        for index in 0..queue_count {
            // GET_VRING_BASE is what stops a ring in vhost-user.
            if let Err(e) = self.frontend.get_vring_base(index) {
                log::warn!(
                    "virtio-fs: cannot stop ring {index} of {}: {e}",
                    self.socket.display()
                );
            }
        }
    }
}
