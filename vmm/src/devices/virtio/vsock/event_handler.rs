//! Event-loop glue for vsock: queue kicks, activation and host sockets.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Vsock, EVQ, RXQ, TXQ};

impl Vsock {
    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if self.queue_events_registered {
            return;
        }
        for evt in &self.core.queue_events {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-vsock: cannot watch a queue: {e}");
                return;
            }
        }
        self.queue_events_registered = true;
    }

    fn queue_index(&self, fd: i32) -> Option<usize> {
        self.core
            .queue_events
            .iter()
            .position(|evt| evt.as_raw_fd() == fd)
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.core.activate_evt, EventSet::IN)) {
            log::error!("virtio-vsock: cannot watch the activation event: {e}");
        }
        // Host programs may connect before the guest driver is up.
        self.muxer.sync_epoll(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.core.activate_evt.as_raw_fd() {
            let _ = self.core.activate_evt.read();
            if self.core.is_activated() {
                self.register_queue_events(ops);
                self.send_transport_reset();
                if !self.holding_for_reset() {
                    self.process_tx();
                    self.process_rx();
                }
            }
        } else if let Some(index) = self.queue_index(fd) {
            let _ = self.core.queue_events[index].read();
            match index {
                // The guest's packets wait (in its queue) until it has
                // handled the reset, which would kill streams they start.
                RXQ | TXQ if self.holding_for_reset() => {}
                RXQ => self.process_rx(),
                TXQ => {
                    self.process_tx();
                    self.process_rx();
                }
                // A buffer for a transport reset still waiting after
                // restore, or the guest re-posting one after handling it.
                EVQ => {
                    self.send_transport_reset();
                    if self.check_reset_ack() {
                        self.process_tx();
                        self.process_rx();
                    }
                }
                _ => unreachable!("vsock has three queues"),
            }
        } else {
            self.muxer.handle_event(fd, events.event_set());
            self.process_rx();
        }
        self.muxer.sync_epoll(ops);
    }
}
