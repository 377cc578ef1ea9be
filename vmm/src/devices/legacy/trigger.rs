//! An EventFd as a `vm_superio::Trigger`: how the legacy devices raise an
//! interrupt (through a KVM irqfd) or signal the VMM (reset).

use vmm_sys_util::eventfd::EventFd;

pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
