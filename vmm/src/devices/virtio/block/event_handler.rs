//! Event-loop glue for the block device.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Block;
use crate::devices::virtio::interrupt::IrqKind;

impl Block {
    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if self.queue_events_registered {
            return;
        }
        match ops.add(Events::new(&self.core.queue_events[0], EventSet::IN)) {
            Ok(()) => self.queue_events_registered = true,
            Err(e) => log::error!("virtio-blk: cannot watch the request queue: {e}"),
        }
    }

    /// Tells the driver that restore changed the capacity under it.
    fn raise_pending_config_change(&mut self) {
        if !std::mem::take(&mut self.config_change_pending) {
            return;
        }
        if let Err(e) = self.core.irq.trigger(IrqKind::Config) {
            log::error!("virtio-blk: cannot raise the config interrupt: {e}");
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.core.activate_evt, EventSet::IN)) {
            log::error!("virtio-blk: cannot watch the activation event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.core.activate_evt.as_raw_fd() {
            // Drained before acting so a later activation signals afresh.
            let _ = self.core.activate_evt.read();
            if self.core.is_activated() {
                self.register_queue_events(ops);
                self.raise_pending_config_change();
                // The driver may have queued requests before we watched the queue.
                self.process_queue();
            }
        } else if fd == self.core.queue_events[0].as_raw_fd() {
            let _ = self.core.queue_events[0].read();
            self.process_queue();
        } else {
            log::warn!("virtio-blk: event on unknown fd {fd}");
        }
    }
}
