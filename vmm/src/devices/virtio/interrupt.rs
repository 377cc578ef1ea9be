//! The interrupt line of one virtio-mmio device.
//!
//! The device raises the line from the event loop; the guest reads the cause
//! from InterruptStatus and clears it with InterruptACK on a vCPU thread. The
//! cause bits therefore live in an atomic shared with the transport, and the
//! line itself is an eventfd the builder registers as a KVM irqfd, so raising
//! it never needs a vCPU exit or a lock.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Why the device interrupts the guest (the virtio-mmio InterruptStatus bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqKind {
    /// The device put buffers in a used ring.
    Vring,
    /// The device configuration space changed.
    Config,
}

impl IrqKind {
    fn bit(self) -> u32 {
        match self {
            IrqKind::Vring => 1,
            IrqKind::Config => 2,
        }
    }
}

/// The interrupt status bits and the eventfd that injects the interrupt.
#[derive(Debug)]
pub struct IrqTrigger {
    status: Arc<AtomicU32>,
    evt: EventFd,
}

impl IrqTrigger {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: Arc::new(AtomicU32::new(0)),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `kind` in the status register and injects the interrupt.
    pub fn trigger(&self, kind: IrqKind) -> io::Result<()> {
        self.status.fetch_or(kind.bit(), Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The status register, shared with the transport.
    pub fn status(&self) -> Arc<AtomicU32> {
        self.status.clone()
    }

    /// The eventfd to register as a KVM irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_sets_bits_and_signals() {
        let irq = IrqTrigger::new().unwrap();
        let status = irq.status();
        irq.trigger(IrqKind::Vring).unwrap();
        irq.trigger(IrqKind::Config).unwrap();
        assert_eq!(status.load(Ordering::SeqCst), 3);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        // Nothing pending: the non-blocking eventfd reports WouldBlock.
        assert_eq!(
            irq.eventfd().read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
