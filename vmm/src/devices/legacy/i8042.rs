//! The i8042 keyboard controller, reduced to what `reboot=k` uses: the CPU
//! reset command (0xfe to port 0x64) signals the VMM to end the VM.
//!
//! It has no snapshot state: nothing the guest writes is kept, so a restored
//! VM just gets a new `I8042` on its new reset eventfd.

use vm_superio::I8042Device;

use super::trigger::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// Ports 0x60-0x64; the device sees offsets 0-4.
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

pub struct I8042(I8042Device<EventFdTrigger>);

impl I8042 {
    pub fn new(reset: EventFdTrigger) -> Self {
        I8042(I8042Device::new(reset))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let [b] = data {
            *b = self.0.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [b] = data {
            if let Err(e) = self.0.write(offset as u8, *b) {
                log::warn!("i8042: cannot signal reset: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        assert!(evt.read().is_err());
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
