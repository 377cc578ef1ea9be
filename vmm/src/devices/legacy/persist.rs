//! Snapshot state of the legacy devices.
//!
//! Only the UART has state worth keeping: its registers and whatever host
//! input the guest has not read yet. The i8042 is stateless for us: it only
//! forwards the CPU reset command to the reset eventfd, so a restored VM
//! simply gets a new `I8042` on a new eventfd.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::serial::{FifoDrained, SerialDevice};
use super::trigger::EventFdTrigger;
use crate::devices::persist::RestoreError;

/// A serde mirror of vm-superio's `SerialState`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialDeviceState {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(s: &SerialDeviceState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl SerialDevice {
    pub fn save(&self) -> SerialDeviceState {
        self.uart().state().into()
    }

    /// Rebuilds COM1 from `state` on new eventfds (see [`SerialDevice::new`]).
    /// vm-superio re-raises an interrupt the guest had not yet serviced.
    pub fn restore(
        state: &SerialDeviceState,
        irq: EventFd,
        drained: EventFd,
        out: Box<dyn Write + Send>,
    ) -> Result<SerialDevice, RestoreError> {
        let uart = Serial::from_state(
            &SerialState::from(state),
            EventFdTrigger::new(irq),
            FifoDrained::new(drained),
            out,
        )
        .map_err(RestoreError::Serial)?;
        Ok(SerialDevice::from_uart(uart))
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::test_utils::round_trip;

    fn eventfd() -> EventFd {
        EventFd::new(EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn registers_and_unread_input_survive() {
        let mut dev = SerialDevice::new(eventfd(), eventfd(), Box::new(std::io::sink()));
        dev.write(7, &[0x5a]); // scratch
        dev.write(3, &[0x03]); // line control: 8n1
        dev.write(1, &[0x01]); // interrupt on received data
        assert_eq!(dev.enqueue(b"xy"), 2);

        let state = round_trip(&dev.save());
        let irq = eventfd();
        let mut restored = SerialDevice::restore(
            &state,
            irq.try_clone().unwrap(),
            eventfd(),
            Box::new(std::io::sink()),
        )
        .unwrap();
        // The guest had not serviced the received-data interrupt: raised again.
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8; 1];
        restored.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        restored.read(3, &mut b);
        assert_eq!(b[0], 0x03);
        restored.read(0, &mut b);
        assert_eq!(b[0], b'x');
        restored.read(0, &mut b);
        assert_eq!(b[0], b'y');
        assert_eq!(restored.save().in_buffer, Vec::<u8>::new());
    }

    #[test]
    fn overfull_fifo_is_an_error() {
        let dev = SerialDevice::new(eventfd(), eventfd(), Box::new(std::io::sink()));
        let mut state = dev.save();
        state.in_buffer = vec![b'z'; 100_000];
        let err = SerialDevice::restore(&state, eventfd(), eventfd(), Box::new(std::io::sink()))
            .err()
            .unwrap();
        assert!(matches!(err, RestoreError::Serial(_)), "{err}");
        assert!(err.to_string().starts_with("serial:"), "{err}");
    }
}
