//! The receive path's descriptor logic: one frame (virtio-net header
//! first) into the guest's rx buffers.
//!
//! With VIRTIO_NET_F_MRG_RXBUF the driver posts small buffers and a frame
//! takes as many as it needs, the `num_buffers` of its header saying how
//! many; without it every buffer must hold a whole frame (the driver then
//! posts 64 KiB ones when it accepts GSO frames).
//!
//! Buffers only reach the used ring once the whole frame has a place: the
//! ones taken for a frame that does not fit yet go back to the avail ring
//! (the device's position in it is rewound; nothing was used), and the
//! frame waits for the driver to post more.

use std::ops::Range;

use virtio_queue::{Error as QueueError, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::buffers::{rx_buffers, write_to, ChainError, Segment};
use crate::devices::virtio::queue::pop_chain;

/// `num_buffers` in `struct virtio_net_hdr_v1`.
const NUM_BUFFERS: Range<usize> = 10..12;

/// What became of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// In the used ring, spread over this many buffers.
    Delivered { buffers: u16 },
    /// Not enough buffers yet: notifications are enabled, so the driver
    /// kicks the rx queue when it posts more. The caller keeps the frame.
    NoBuffers,
    /// The frame cannot be delivered and is gone.
    Dropped(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum DropReason {
    #[error("a {frame}-byte frame does not fit the {buffer}-byte rx buffer")]
    BufferTooSmall { frame: usize, buffer: usize },
    #[error("a {frame}-byte frame does not fit the whole rx ring ({capacity} bytes)")]
    RingTooSmall { frame: usize, capacity: usize },
    #[error("a broken rx buffer among those taken for the frame")]
    BadBuffer,
}

/// A buffer taken for the frame being delivered.
struct Taken {
    head: u16,
    segs: Range<usize>,
    capacity: usize,
}

/// Scratch space for [`RxChains::deliver`], kept across frames so the
/// receive path does not allocate.
#[derive(Default)]
pub(super) struct RxChains {
    segs: Vec<Segment>,
    taken: Vec<Taken>,
}

impl std::fmt::Debug for RxChains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxChains").finish_non_exhaustive()
    }
}

impl RxChains {
    /// Puts `frame` into the next buffers of `queue`. A broken buffer
    /// (reported to `bad`) goes back to the driver with length 0; one found
    /// after others were taken for this frame costs the frame too (the
    /// buffers already taken go back empty), so the frame's buffers are
    /// always consecutive in the used ring, as the driver reads them.
    ///
    /// The caller signals the driver if the used ring moved. An error
    /// means the queue is broken (the driver published a bad avail index).
    pub(super) fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        frame: &mut [u8],
        mergeable: bool,
        bad: &mut dyn FnMut(u16, ChainError),
    ) -> Result<Delivery, QueueError> {
        self.segs.clear();
        self.taken.clear();
        let mut capacity = 0usize;
        let mut rechecked = false;
        let has_room = |taken: &[Taken], capacity: usize| {
            !taken.is_empty() && (!mergeable || capacity >= frame.len())
        };
        while !has_room(&self.taken, capacity) {
            // A queue's worth of buffers is all the driver can ever post.
            if self.taken.len() >= usize::from(queue.size()) {
                rewind(queue, self.taken.len());
                return Ok(Delivery::Dropped(DropReason::RingTooSmall {
                    frame: frame.len(),
                    capacity,
                }));
            }
            let Some(chain) = pop_chain(queue, mem)? else {
                // Ask for a kick, then look once more: the driver may have
                // posted buffers just before it saw the request.
                if !rechecked && queue.enable_notification(mem)? {
                    rechecked = true;
                    continue;
                }
                rewind(queue, self.taken.len());
                return Ok(Delivery::NoBuffers);
            };
            let head = chain.head_index();
            let first = self.segs.len();
            match rx_buffers(mem, chain, &mut self.segs) {
                Ok(size) => {
                    self.taken.push(Taken {
                        head,
                        segs: first..self.segs.len(),
                        capacity: size,
                    });
                    capacity += size;
                }
                Err(e) => {
                    self.segs.truncate(first);
                    bad(head, e);
                    for t in &self.taken {
                        queue.add_used(mem, t.head, 0)?;
                    }
                    queue.add_used(mem, head, 0)?;
                    if !self.taken.is_empty() {
                        return Ok(Delivery::Dropped(DropReason::BadBuffer));
                    }
                }
            }
        }
        if !mergeable && capacity < frame.len() {
            // Keep the buffer for a frame that fits it.
            rewind(queue, 1);
            return Ok(Delivery::Dropped(DropReason::BufferTooSmall {
                frame: frame.len(),
                buffer: capacity,
            }));
        }
        // At most a queue's worth (checked above), so it fits in u16.
        let buffers = self.taken.len() as u16;
        if let Some(field) = frame.get_mut(NUM_BUFFERS) {
            field.copy_from_slice(&buffers.to_le_bytes());
        }
        let mut rest: &[u8] = frame;
        for t in &self.taken {
            let n = rest.len().min(t.capacity);
            let written = write_to(mem, &self.segs[t.segs.clone()], &rest[..n]);
            queue.add_used(mem, t.head, written as u32)?;
            rest = &rest[n..];
        }
        Ok(Delivery::Delivered { buffers })
    }
}

/// Hands the last `n` buffers taken back to the avail ring.
fn rewind(queue: &mut Queue, n: usize) {
    let n = n as u16; // at most a queue's worth
    queue.set_next_avail(queue.next_avail().wrapping_sub(n));
}
