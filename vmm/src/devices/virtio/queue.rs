//! Safe consumption of a split virtqueue whose contents the guest controls.

use virtio_queue::{DescriptorChain, Error as QueueError, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// A descriptor chain reading guest memory.
pub type GuestChain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Takes the next available chain, if any.
///
/// An error means the driver published an avail index more than a queue's
/// worth ahead of the device: the queue is broken and must not be retried
/// until the driver resets it, or the caller would spin on it.
pub fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Result<Option<GuestChain<'a>>, QueueError> {
    Ok(queue.iter(mem)?.next())
}

/// Hands every available chain to `handle`, which returns the number of bytes
/// it wrote into the chain, and puts each chain in the used ring.
///
/// Keeps going until the driver has nothing more to publish, re-checking
/// after re-enabling notifications so a chain added in between is not missed
/// (the EVENT_IDX protocol). Returns whether the driver must be interrupted.
pub fn drain_queue<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: F,
) -> Result<bool, QueueError>
where
    F: FnMut(GuestChain<'_>) -> u32,
{
    let mut used = false;
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = pop_chain(queue, mem)? {
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len)?;
            used = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used && queue.needs_notification(mem)?)
}
