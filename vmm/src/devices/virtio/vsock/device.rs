//! The virtio side of vsock: moves packets between the guest's queues and
//! the [`Muxer`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::muxer::Muxer;
use super::packet::{TxHeader, HEADER_LEN, MAX_PKT_DATA};
use crate::devices::virtio::device::{read_config_bytes, DeviceCore, VirtioDevice};
use crate::devices::virtio::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::devices::virtio::interrupt::{IrqKind, IrqTrigger};
use crate::devices::virtio::queue::{drain_queue, pop_chain, GuestChain};

const VIRTIO_ID_VSOCK: u32 = 19;
/// The guest fills the whole rx queue with 4 KiB buffers when its driver
/// starts, each a page it must allocate and fault in; 64 buffers (256 KiB
/// in flight) keep streams fast and that start-up short.
pub const VSOCK_QUEUE_SIZE: u16 = 64;
pub const DEFAULT_GUEST_CID: u32 = 3;

pub(super) const RXQ: usize = 0;
pub(super) const TXQ: usize = 1;
pub(super) const EVQ: usize = 2;
pub(super) const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;

/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, the only event of struct
/// virtio_vsock_event { le32 id }: every connection is gone, re-read the CID.
const EVENT_TRANSPORT_RESET: u32 = 0;
const EVENT_LEN: u32 = 4;

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved: use 3 to 4294967294")]
    InvalidCid(u32),
    #[error("vsock socket path {} exists and is not a Unix socket", .path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove stale vsock socket {}: {source}", .path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on vsock socket {}: {source}", .path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set up virtio-vsock: {0}")]
    Setup(#[source] io::Error),
}

/// A virtio-vsock device whose host side is a Unix socket.
#[derive(Debug)]
pub struct Vsock {
    pub(super) core: DeviceCore,
    pub(super) muxer: Muxer,
    cid: u32,
    config: [u8; 8],
    pub(super) queue_events_registered: bool,
    /// Set by restore: the guest still believes in connections the snapshot
    /// could not keep, and must be sent a transport reset on the event queue.
    pub(super) reset_pending: bool,
    /// The reset went out and the guest has not handled it yet: it resets
    /// every connection it has when it does (in a workqueue, which can run
    /// late on a slow host), so no new stream starts until then. Holds the
    /// guest's event-queue avail index when the reset was sent: the guest
    /// re-posts the buffer right after handling the event.
    pub(super) awaiting_reset_ack: Option<std::num::Wrapping<u16>>,
}

impl Vsock {
    /// Gives the guest CID `cid` and listens for host connections on `uds_path`.
    pub fn new(cid: u32, uds_path: impl AsRef<Path>) -> Result<Self, VsockError> {
        check_cid(cid)?;
        let core = DeviceCore::new(FEATURES, &[VSOCK_QUEUE_SIZE; 3]).map_err(VsockError::Setup)?;
        Self::with_core(core, cid, uds_path.as_ref())
    }

    /// Puts `core` behind a fresh muxer listening on `uds_path`; `cid` must
    /// already have passed [`check_cid`].
    pub(super) fn with_core(
        core: DeviceCore,
        cid: u32,
        uds_path: &Path,
    ) -> Result<Self, VsockError> {
        let muxer = Muxer::new(cid, uds_path)?;
        Ok(Self {
            core,
            muxer,
            cid,
            config: u64::from(cid).to_le_bytes(),
            queue_events_registered: false,
            reset_pending: false,
            awaiting_reset_ack: None,
        })
    }

    pub fn cid(&self) -> u32 {
        self.cid
    }

    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Live guest<->host streams.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Handles what the guest sent, then fills rx buffers with what is pending.
    pub(super) fn process_tx(&mut self) {
        let Some(mem) = self.core.mem.as_ref() else {
            return;
        };
        let muxer = &mut self.muxer;
        let queue = &mut self.core.queues[TXQ];
        match drain_queue(queue, mem, |chain| {
            send_to_muxer(muxer, mem, chain);
            0
        }) {
            Ok(true) => signal(&self.core.irq),
            Ok(false) => {}
            Err(e) => log::error!("virtio-vsock: tx queue is broken: {e}"),
        }
    }

    /// Moves pending packets into the guest's rx buffers while both exist.
    pub(super) fn process_rx(&mut self) {
        let Some(mem) = self.core.mem.as_ref() else {
            return;
        };
        let queue = &mut self.core.queues[RXQ];
        let guest_cid = u64::from(self.cid);
        let mut used = false;
        let mut rearmed = false;
        while self.muxer.has_pending_rx() {
            let chain = match pop_chain(queue, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    // Out of buffers: ask to be kicked when the guest adds one,
                    // and look once more in case it just did.
                    match queue.enable_notification(mem) {
                        Ok(true) if !rearmed => {
                            rearmed = true;
                            continue;
                        }
                        Ok(_) => break,
                        Err(e) => {
                            log::error!("virtio-vsock: rx queue is broken: {e}");
                            break;
                        }
                    }
                }
                Err(e) => {
                    log::error!("virtio-vsock: rx queue is broken: {e}");
                    break;
                }
            };
            let head = chain.head_index();
            let Some(len) = fill_from_muxer(&mut self.muxer, mem, chain, guest_cid) else {
                // Nothing could be produced after all: keep the buffer.
                queue.go_to_previous_position();
                break;
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::error!("virtio-vsock: cannot return rx buffer: {e}");
                break;
            }
            used = true;
        }
        if used && queue.needs_notification(mem).unwrap_or(true) {
            signal(&self.core.irq);
        }
    }
}

impl Vsock {
    /// Delivers a pending transport reset into the next event buffer the
    /// guest posted. With none posted yet, asks to be kicked when one is and
    /// stays pending; the event-queue handler calls this again.
    /// Holds new streams until the guest has handled the reset just sent,
    /// and makes sure its re-posting of the event buffer notifies us.
    fn await_reset_ack(&mut self) {
        let Some(mem) = self.core.mem.as_ref() else {
            return;
        };
        let queue = &mut self.core.queues[EVQ];
        let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
            return;
        };
        if let Err(e) = queue.enable_notification(mem) {
            log::error!("virtio-vsock: event queue is broken: {e}");
            return;
        }
        // The guest posted several event buffers at probe, so "one more is
        // available" says nothing; with EVENT_IDX, ask to be notified when
        // the avail index moves past where it is now.
        if queue.event_idx_enabled() {
            let avail_event = queue.used_ring() + 4 + 8 * u64::from(queue.size());
            if let Err(e) = mem.write_obj(avail.0.to_le(), GuestAddress(avail_event)) {
                log::error!("virtio-vsock: cannot arm the event queue: {e}");
                return;
            }
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        self.awaiting_reset_ack = Some(avail);
        self.muxer.hold_host_connections(true);
    }

    /// Whether the guest has handled the transport reset: it re-posted the
    /// event buffer. Then streams may start again.
    pub(super) fn check_reset_ack(&mut self) -> bool {
        let (Some(at), Some(mem)) = (self.awaiting_reset_ack, self.core.mem.as_ref()) else {
            return false;
        };
        match self.core.queues[EVQ].avail_idx(mem, Ordering::Acquire) {
            Ok(now) if now != at => {
                self.release_after_reset();
                true
            }
            _ => false,
        }
    }

    fn release_after_reset(&mut self) {
        self.awaiting_reset_ack = None;
        self.muxer.hold_host_connections(false);
    }

    /// Whether streams are held until the guest handles a transport reset.
    pub(super) fn holding_for_reset(&self) -> bool {
        self.awaiting_reset_ack.is_some()
    }

    pub(super) fn send_transport_reset(&mut self) {
        let Some(mem) = self.core.mem.as_ref() else {
            return;
        };
        let queue = &mut self.core.queues[EVQ];
        let mut used = false;
        let mut rearmed = false;
        while self.reset_pending {
            let chain = match pop_chain(queue, mem) {
                Ok(Some(chain)) => chain,
                // The guest may post one while we re-arm: look once more.
                Ok(None) if !rearmed => match queue.enable_notification(mem) {
                    Ok(true) => {
                        rearmed = true;
                        continue;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        log::error!("virtio-vsock: event queue is broken: {e}");
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    log::error!("virtio-vsock: event queue is broken: {e}");
                    break;
                }
            };
            let head = chain.head_index();
            let written = write_reset_event(mem, chain);
            if let Err(e) = queue.add_used(mem, head, written) {
                log::error!("virtio-vsock: cannot return event buffer: {e}");
                break;
            }
            used = true;
            // A buffer too small to hold the event went back empty: try the next.
            self.reset_pending = written != EVENT_LEN;
        }
        let notify = used && queue.needs_notification(mem).unwrap_or(true);
        if used && !self.reset_pending {
            self.await_reset_ack();
        }
        if notify {
            signal(&self.core.irq);
        }
    }
}

/// Writes a TRANSPORT_RESET event into `chain`'s first device-writable
/// buffer; returns the bytes written, 0 when it does not fit.
fn write_reset_event(mem: &GuestMemoryMmap, chain: GuestChain<'_>) -> u32 {
    let Some(desc) = chain.writable().next() else {
        log::warn!("virtio-vsock: event buffer has no device-writable descriptor");
        return 0;
    };
    if desc.len() < EVENT_LEN {
        log::warn!(
            "virtio-vsock: event buffer of {} bytes is too small",
            desc.len()
        );
        return 0;
    }
    match mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), desc.addr()) {
        Ok(()) => EVENT_LEN,
        Err(e) => {
            log::warn!("virtio-vsock: cannot write the transport reset event: {e}");
            0
        }
    }
}

/// CIDs 0-2 and u32::MAX are reserved (hypervisor, local, host, any).
pub(super) fn check_cid(cid: u32) -> Result<(), VsockError> {
    if cid < 3 || cid == u32::MAX {
        return Err(VsockError::InvalidCid(cid));
    }
    Ok(())
}

fn signal(irq: &IrqTrigger) {
    if let Err(e) = irq.trigger(IrqKind::Vring) {
        log::error!("virtio-vsock: cannot interrupt the guest: {e}");
    }
}

fn send_to_muxer(muxer: &mut Muxer, mem: &GuestMemoryMmap, mut chain: GuestChain<'_>) {
    match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
        Ok(pkt) => muxer.send_pkt(&TxHeader::from_packet(&pkt), pkt.data_slice()),
        Err(e) => log::warn!("virtio-vsock: dropping malformed tx packet: {e}"),
    }
}

/// Fills one rx chain; `None` if the muxer had nothing after all, otherwise
/// the used length (0 for a chain too broken to hold a packet).
fn fill_from_muxer(
    muxer: &mut Muxer,
    mem: &GuestMemoryMmap,
    mut chain: GuestChain<'_>,
    guest_cid: u64,
) -> Option<u32> {
    let mut pkt = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
        Ok(pkt) => pkt,
        Err(e) => {
            log::warn!("virtio-vsock: returning malformed rx buffer: {e}");
            return Some(0);
        }
    };
    let Some(data) = pkt.data_slice().copied() else {
        log::warn!("virtio-vsock: returning rx buffer with no room for data");
        return Some(0);
    };
    let header = muxer.recv_pkt(&data)?;
    if let Err(e) = pkt.set_header_from_raw(&header.to_bytes(guest_cid)) {
        log::error!("virtio-vsock: cannot write packet header: {e}");
        return Some(0);
    }
    Some(HEADER_LEN + header.len)
}

impl VirtioDevice for Vsock {
    fn core(&self) -> &DeviceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::warn!("virtio-vsock: ignoring write to read-only config at {offset:#x}");
    }
    fn reset(&mut self) {
        // Connections belong to the driver that just went away. A device
        // that never ran (the reset every driver does while probing) keeps
        // host connections still waiting for the guest.
        if self.core.is_activated() {
            self.muxer.reset();
        }
        // A new driver has no connections to reset.
        self.reset_pending = false;
        self.release_after_reset();
        self.core.reset();
    }
}
