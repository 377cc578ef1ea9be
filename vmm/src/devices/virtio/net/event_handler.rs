//! Event-loop glue for virtio-net: activation, the two queue kicks and
//! the TAP.
//!
//! The TAP is watched (level-triggered) only while the device can take
//! frames: active, not failed, and not holding a frame for want of rx
//! buffers. When the guest runs out, the TAP leaves the interest set and
//! the next rx kick (notifications were enabled when the buffers ran out)
//! brings it back, so a full guest never makes the loop spin.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Net, RxOutcome, RXQ, TXQ};

impl Net {
    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if self.queue_events_registered {
            return;
        }
        for evt in &self.core.queue_events {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-net: cannot watch a queue: {e}");
                return;
            }
        }
        self.queue_events_registered = true;
    }

    /// Puts the TAP in the interest set or takes it out.
    fn watch_tap(&mut self, ops: &mut EventOps, watch: bool) {
        let watch = watch && !self.tap_failed && self.core.is_activated();
        if watch == self.tap_watched {
            return;
        }
        let Some(tap) = self.tap.as_ref() else {
            return;
        };
        let done = if watch {
            ops.add(Events::new(tap, EventSet::IN))
        } else {
            ops.remove(Events::empty(tap))
        };
        match done {
            Ok(()) => self.tap_watched = watch,
            Err(e) => log::error!(
                "virtio-net: cannot change the watch on TAP {}: {e}",
                tap.name()
            ),
        }
    }

    /// Receives what the TAP has, then watches it as the outcome says.
    fn receive(&mut self, ops: &mut EventOps) {
        match self.process_rx() {
            RxOutcome::Flowing => self.watch_tap(ops, true),
            RxOutcome::NoBuffers | RxOutcome::Idle => self.watch_tap(ops, false),
            RxOutcome::TapFailed => {
                self.tap_failed = true;
                self.watch_tap(ops, false);
            }
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.core.activate_evt, EventSet::IN)) {
            log::error!("virtio-net: cannot watch the activation event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.core.activate_evt.as_raw_fd() {
            // Drained before acting so a later activation signals afresh.
            let _ = self.core.activate_evt.read();
            if self.core.is_activated() {
                self.register_queue_events(ops);
                // The driver may have queued frames before we watched.
                self.process_tx();
                self.receive(ops);
            } else {
                // Reset: nobody to receive for until the next activation.
                self.watch_tap(ops, false);
            }
        } else if fd == self.core.queue_events[RXQ].as_raw_fd() {
            let _ = self.core.queue_events[RXQ].read();
            // New buffers matter only to a receive path that ran out; a
            // watched TAP finds them with its next frame.
            if !self.tap_watched {
                self.receive(ops);
            }
        } else if fd == self.core.queue_events[TXQ].as_raw_fd() {
            let _ = self.core.queue_events[TXQ].read();
            self.process_tx();
        } else if self.tap.as_ref().is_some_and(|t| t.as_raw_fd() == fd) {
            self.receive(ops);
        } else {
            log::warn!("virtio-net: event on unknown fd {fd}");
        }
    }
}
