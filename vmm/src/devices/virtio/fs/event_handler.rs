//! Event-loop glue for virtio-fs: start the backend once the driver is
//! ready, and turn the backend's call signals into guest interrupts. The
//! queues' kick eventfds belong to the backend and are never read here.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Fs;
use crate::devices::virtio::interrupt::IrqKind;

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.core.activate_evt, EventSet::IN)) {
            log::error!(
                "virtio-fs {}: cannot watch the activation event: {e}",
                self.tag
            );
        }
        for call in &self.calls {
            if let Err(e) = ops.add(Events::new(call, EventSet::IN)) {
                log::error!("virtio-fs {}: cannot watch a call eventfd: {e}", self.tag);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.core.activate_evt.as_raw_fd() {
            let _ = self.core.activate_evt.read();
            if let Err(e) = self.start_backend() {
                // The guest's requests stay unanswered; the run's own
                // deadlines report it, and the log says why.
                log::error!("virtio-fs {}: {e}", self.tag);
            }
        } else if let Some(call) = self.calls.iter().find(|c| c.as_raw_fd() == fd) {
            let _ = call.read();
            if let Err(e) = self.core.irq.trigger(IrqKind::Vring) {
                log::error!("virtio-fs {}: cannot interrupt the guest: {e}", self.tag);
            }
        } else {
            log::warn!("virtio-fs {}: event on unknown fd {fd}", self.tag);
        }
    }
}
