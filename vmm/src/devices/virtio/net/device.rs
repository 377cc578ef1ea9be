//! The virtio-net device (virtio 1.x section 5.1): an rx and a tx queue
//! served on the event loop against a host TAP, config space with the MAC
//! and the link status.

use std::io;

use virtio_bindings::virtio_net;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::buffers::MAX_FRAME_LEN;
use super::log_limit::LogLimit;
use super::rx::{Delivery, RxChains};
use super::tap::{Offloads, Tap, TapError, VNET_HDR_LEN};
use super::tx::{transmit, TxError};
use crate::config::NetConfig;
use crate::devices::virtio::device::{read_config_bytes, ActivateError, DeviceCore, VirtioDevice};
use crate::devices::virtio::features::{
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::devices::virtio::interrupt::IrqKind;
use crate::devices::virtio::queue::drain_queue;

const VIRTIO_ID_NET: u32 = 1;
pub const NET_QUEUE_SIZE: u16 = 256;
pub(super) const RXQ: usize = 0;
pub(super) const TXQ: usize = 1;
pub(super) const QUEUE_SIZES: [u16; 2] = [NET_QUEUE_SIZE; 2];

const fn bit(b: u32) -> u64 {
    1 << b
}
pub(super) const F_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_CSUM);
pub(super) const F_GUEST_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_CSUM);
pub(super) const F_MAC: u64 = bit(virtio_net::VIRTIO_NET_F_MAC);
pub(super) const F_GUEST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO4);
pub(super) const F_GUEST_TSO6: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO6);
pub(super) const F_GUEST_UFO: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_UFO);
pub(super) const F_HOST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO4);
pub(super) const F_HOST_TSO6: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO6);
pub(super) const F_HOST_UFO: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_UFO);
pub(super) const F_MRG_RXBUF: u64 = bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF);
pub(super) const F_STATUS: u64 = bit(virtio_net::VIRTIO_NET_F_STATUS);

/// What every net device offers, an empty slot included (its TAP, and so
/// what the host can take, is chosen at restore; every TAP takes all of
/// these). Checksum and segmentation offloads both ways let a guest TCP
/// stream move 64 KiB per frame; MRG_RXBUF lets the driver post page-sized
/// rx buffers instead of 64 KiB ones.
pub(super) const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | F_MAC
    | F_STATUS
    | F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_UFO
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_UFO
    | F_MRG_RXBUF;

/// mac[6] and status (le16) of struct virtio_net_config; the fields after
/// them belong to features not offered.
const CONFIG_LEN: usize = 8;
/// Frames the TAP may hand over per wake-up before the event loop serves
/// other devices (the TAP stays watched, so it wakes us again).
const RX_BUDGET: usize = 256;

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("MAC address {0} is not a unicast address")]
    InvalidMac(String),
    #[error("cannot set up virtio-net: {0}")]
    Setup(#[source] io::Error),
    #[error("cannot duplicate the descriptor of TAP {name}: {source}")]
    CloneTap { name: String, source: io::Error },
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// What went through the device since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest, and their bytes (without header).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the TAP the guest could not be given.
    pub rx_dropped: u64,
    /// Frames the guest sent that went out the TAP, and their bytes.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the guest sent that the TAP refused (or that had no TAP).
    pub tx_dropped: u64,
    /// Descriptor chains refused as malformed, rx and tx.
    pub bad_chains: u64,
}

/// A virtio-net device on a TAP, or an empty slot (a NIC with no cable)
/// that a restore can plug a TAP into.
#[derive(Debug)]
pub struct Net {
    pub(super) core: DeviceCore,
    pub(super) tap: Option<Tap>,
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    /// The frame read from the TAP that waits for rx buffers; its length in
    /// `rx_frame` (0: none). It is there only while the TAP is not
    /// watched, so the loop never wakes for frames it has no room for.
    rx_frame: Box<[u8]>,
    pub(super) rx_pending: usize,
    rx_chains: RxChains,
    tx_frame: Box<[u8]>,
    pub(super) queue_events_registered: bool,
    /// The TAP is in the event loop's interest set.
    pub(super) tap_watched: bool,
    /// The TAP failed (read error, offloads refused): it is not read again.
    pub(super) tap_failed: bool,
    stats: NetStats,
    /// Complaints about the guest's buffers, and about the TAP.
    guest_log: LogLimit,
    host_log: LogLimit,
}

/// What the receive path left to the event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RxOutcome {
    /// The TAP is drained (or out of budget): keep watching it.
    Flowing,
    /// A frame waits for rx buffers: stop watching the TAP until a kick.
    NoBuffers,
    /// The TAP cannot be read: stop watching it for good.
    TapFailed,
    /// The device is not active (or has no TAP): nothing to watch.
    Idle,
}

impl Net {
    /// A device on `tap` (or an empty slot) whose config space shows `mac`.
    pub fn new(tap: Option<Tap>, mac: [u8; 6]) -> Result<Self, NetError> {
        let core = DeviceCore::new(FEATURES, &QUEUE_SIZES).map_err(NetError::Setup)?;
        Self::with_parts(core, tap, mac)
    }

    /// A device for `config`, on its own descriptor of the TAP (the
    /// config keeps its own, so a failed build or restore can be retried).
    pub fn from_config(config: &NetConfig) -> Result<Self, NetError> {
        Self::new(clone_tap(config)?, config.mac)
    }

    pub(super) fn with_parts(
        core: DeviceCore,
        tap: Option<Tap>,
        mac: [u8; 6],
    ) -> Result<Self, NetError> {
        check_mac(mac)?;
        Ok(Self {
            core,
            tap,
            mac,
            config: config_space(mac),
            rx_frame: vec![0; MAX_FRAME_LEN].into_boxed_slice(),
            rx_pending: 0,
            rx_chains: RxChains::default(),
            tx_frame: vec![0; MAX_FRAME_LEN].into_boxed_slice(),
            queue_events_registered: false,
            tap_watched: false,
            tap_failed: false,
            stats: NetStats::default(),
            guest_log: LogLimit::default(),
            host_log: LogLimit::default(),
        })
    }

    /// The MAC address config space reports.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The TAP; `None` for an empty slot.
    pub fn tap(&self) -> Option<&Tap> {
        self.tap.as_ref()
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The offloads the driver accepted, to be let through the TAP.
    pub(super) fn offloads(acked: u64) -> Offloads {
        let has = |f| acked & f != 0;
        Offloads {
            csum: has(F_GUEST_CSUM),
            tso4: has(F_GUEST_TSO4),
            tso6: has(F_GUEST_TSO6),
            ufo: has(F_GUEST_UFO),
        }
    }

    /// Tells the TAP what the driver accepted, so the host kernel finishes
    /// checksums and segments whatever the guest cannot take.
    pub(super) fn apply_offloads(&self) -> Result<(), TapError> {
        match &self.tap {
            Some(tap) => tap.set_offloads(Self::offloads(self.core.acked_features)),
            None => Ok(()),
        }
    }

    /// Sends every frame the driver queued.
    pub(super) fn process_tx(&mut self) {
        let Some(mem) = self.core.mem.as_ref() else {
            return;
        };
        let tap = self.tap.as_ref();
        let buf = &mut self.tx_frame;
        let stats = &mut self.stats;
        let guest_log = &mut self.guest_log;
        let host_log = &mut self.host_log;
        let drained = drain_queue(&mut self.core.queues[TXQ], mem, |chain| {
            match transmit(mem, chain, &mut buf[..], tap) {
                Ok(len) => {
                    stats.tx_frames += 1;
                    stats.tx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Err(TxError::NoTap) => stats.tx_dropped += 1,
                Err(e @ TxError::Chain(_)) => {
                    stats.bad_chains += 1;
                    guest_log.warn(format_args!("{e}"));
                }
                Err(e @ TxError::Tap { .. }) => {
                    stats.tx_dropped += 1;
                    host_log.warn(format_args!("{e}"));
                }
            }
            // The driver only reclaims tx buffers; it reads no length.
            0
        });
        match drained {
            Ok(true) => self.signal(),
            Ok(false) => {}
            Err(e) => self.guest_log.warn(format_args!("tx queue is broken: {e}")),
        }
    }

    /// Moves frames from the TAP into rx buffers until the TAP is drained,
    /// the guest runs out of buffers, or the budget is spent.
    pub(super) fn process_rx(&mut self) -> RxOutcome {
        let (Some(mem), Some(tap)) = (self.core.mem.as_ref(), self.tap.as_ref()) else {
            return RxOutcome::Idle;
        };
        if self.tap_failed {
            return RxOutcome::TapFailed;
        }
        let mergeable = self.core.acked_features & F_MRG_RXBUF != 0;
        let queue = &mut self.core.queues[RXQ];
        let used_before = queue.next_used();
        let stats = &mut self.stats;
        let guest_log = &mut self.guest_log;
        let mut outcome = RxOutcome::Flowing;
        for _ in 0..RX_BUDGET {
            if self.rx_pending == 0 {
                match read_frame(tap, &mut self.rx_frame) {
                    Ok(Some(len)) => self.rx_pending = len,
                    Ok(None) => break,
                    Err(e) => {
                        self.host_log.warn(format_args!(
                            "cannot read TAP {}, no longer receiving: {e}",
                            tap.name()
                        ));
                        outcome = RxOutcome::TapFailed;
                        break;
                    }
                }
            }
            let frame = &mut self.rx_frame[..self.rx_pending];
            let delivery = self
                .rx_chains
                .deliver(queue, mem, frame, mergeable, &mut |head, e| {
                    stats.bad_chains += 1;
                    guest_log.warn(format_args!("returning rx buffer {head} unused: {e}"));
                });
            match delivery {
                Ok(Delivery::Delivered { .. }) => {
                    stats.rx_frames += 1;
                    stats.rx_bytes += (self.rx_pending - VNET_HDR_LEN) as u64;
                }
                Ok(Delivery::NoBuffers) => {
                    outcome = RxOutcome::NoBuffers;
                    break;
                }
                Ok(Delivery::Dropped(why)) => {
                    stats.rx_dropped += 1;
                    guest_log.warn(format_args!("dropping a received frame: {why}"));
                }
                Err(e) => {
                    // Wait for the driver to kick the queue (or reset it);
                    // retrying now would fail the same way.
                    guest_log.warn(format_args!("rx queue is broken: {e}"));
                    outcome = RxOutcome::NoBuffers;
                    break;
                }
            }
            self.rx_pending = 0;
        }
        let used = queue.next_used() != used_before;
        if used && queue.needs_notification(mem).unwrap_or(true) {
            self.signal();
        }
        outcome
    }

    fn signal(&self) {
        if let Err(e) = self.core.irq.trigger(IrqKind::Vring) {
            log::error!("virtio-net: cannot interrupt the guest: {e}");
        }
    }
}

/// Reads one frame from `tap` into `buf`: `None` once the TAP is drained.
/// A frame too short to have a virtio-net header (the TAP never sends
/// one) is skipped.
fn read_frame(tap: &Tap, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match tap.read(buf) {
            Ok(len) if len >= VNET_HDR_LEN => return Ok(Some(len)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Another descriptor of `config`'s TAP, if it has one.
pub(crate) fn clone_tap(config: &NetConfig) -> Result<Option<Tap>, NetError> {
    config
        .tap
        .as_ref()
        .map(|t| {
            t.try_clone().map_err(|source| NetError::CloneTap {
                name: t.name().to_string(),
                source,
            })
        })
        .transpose()
}

/// A NIC's address must be unicast and not all zeros; the guest driver
/// would otherwise replace it with a random one.
pub(super) fn check_mac(mac: [u8; 6]) -> Result<(), NetError> {
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(NetError::InvalidMac(format_mac(mac)));
    }
    Ok(())
}

pub fn format_mac(mac: [u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

fn config_space(mac: [u8; 6]) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[..6].copy_from_slice(&mac);
    // Always up: a TAP plugged in at restore needs no link change.
    let status = virtio_net::VIRTIO_NET_S_LINK_UP as u16;
    config[6..8].copy_from_slice(&status.to_le_bytes());
    config
}

impl VirtioDevice for Net {
    fn core(&self) -> &DeviceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // A virtio 1.x driver never writes the MAC (only legacy ones did).
        self.guest_log.warn(format_args!(
            "ignoring write to read-only config at {offset:#x}"
        ));
    }
    fn activate(&mut self, mem: GuestMemoryMmap) -> Result<(), ActivateError> {
        // Before the first read: frames the guest did not accept must not
        // come through. Without offloads the TAP still works (the host
        // kernel checksums and segments) but its state is unknown now.
        if let Err(e) = self.apply_offloads() {
            log::error!("virtio-net: no longer receiving: {e}");
            self.tap_failed = true;
        }
        self.core.activate(mem)
    }
    fn reset(&mut self) {
        // The frame was for the driver that went away.
        self.rx_pending = 0;
        self.core.reset();
    }
}
