//! COM1: a 16550 UART (vm-superio) on ports 0x3f8-0x3ff with IRQ 4 through
//! an irqfd. Guest output goes to a host writer; host input is queued into
//! the receive FIFO from the event loop as the guest drains it.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::trigger::EventFdTrigger;
use crate::devices::bus::{lock, BusDevice};

pub const COM1_PORT_BASE: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;

/// Tells the input side when the guest has emptied the receive FIFO.
pub struct FifoDrained(EventFd);

impl FifoDrained {
    pub fn new(evt: EventFd) -> Self {
        FifoDrained(evt)
    }
}

impl SerialEvents for FifoDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

pub type Uart = Serial<EventFdTrigger, FifoDrained, Box<dyn Write + Send>>;

/// The UART as seen from the buses.
pub struct SerialDevice {
    uart: Uart,
}

impl SerialDevice {
    /// `irq` is registered as an irqfd for COM1's IRQ; `drained` wakes the
    /// input handler.
    pub fn new(irq: EventFd, drained: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self::from_uart(Serial::with_events(
            EventFdTrigger::new(irq),
            FifoDrained(drained),
            out,
        ))
    }

    pub(super) fn from_uart(uart: Uart) -> Self {
        SerialDevice { uart }
    }

    pub(super) fn uart(&self) -> &Uart {
        &self.uart
    }

    /// Queues host input; returns how many bytes fit in the FIFO.
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let n = room.min(bytes.len());
        if n > 0 && self.uart.enqueue_raw_bytes(&bytes[..n]).is_err() {
            return 0;
        }
        n
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let [b] = data {
            *b = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [b] = data {
            // Output errors (a closed stdout) must not stop the guest.
            let _ = self.uart.write(offset as u8, *b);
        }
    }
}

/// Feeds host input (stdin) into the UART on the event loop: reads only
/// when the FIFO has room, waits for the guest to drain it otherwise.
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    input: Box<dyn InputSource>,
    drained: EventFd,
    pending: Vec<u8>,
    input_registered: bool,
    eof: bool,
}

/// Something readable and pollable: stdin in practice.
pub trait InputSource: AsRawFd + Send {
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl InputSource for std::io::Stdin {
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(self, buf)
    }
}

impl SerialInput {
    pub fn new(
        serial: Arc<Mutex<SerialDevice>>,
        input: Box<dyn InputSource>,
        drained: EventFd,
    ) -> Self {
        SerialInput {
            serial,
            input,
            drained,
            pending: Vec::new(),
            input_registered: false,
            eof: false,
        }
    }

    /// A fresh eventfd for [`SerialDevice::new`]'s `drained` argument.
    pub fn drained_event() -> std::io::Result<EventFd> {
        EventFd::new(EFD_NONBLOCK)
    }

    fn input_fd(&self) -> RawFd {
        self.input.as_raw_fd()
    }

    /// Pushes pending bytes into the FIFO; true when all went in.
    fn flush_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let n = lock(&self.serial).enqueue(&self.pending);
        self.pending.drain(..n);
        self.pending.is_empty()
    }

    fn set_input_interest(&mut self, ops: &mut EventOps, want: bool) {
        if want == self.input_registered || self.eof {
            return;
        }
        let fd = self.input_fd();
        let res = if want {
            ops.add(Events::with_data_raw(fd, fd as u32, EventSet::IN))
        } else {
            ops.remove(Events::with_data_raw(fd, fd as u32, EventSet::IN))
        };
        match res {
            Ok(()) => self.input_registered = want,
            // Regular files and /dev/null cannot be polled: no input then.
            Err(e) => {
                log::debug!("serial input not pollable: {e:?}");
                self.eof = true;
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::warn!("serial input disabled: {e:?}");
            return;
        }
        self.set_input_interest(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
            if self.flush_pending() {
                self.set_input_interest(ops, true);
            }
            return;
        }
        let mut buf = [0u8; 64];
        match self.input.read_some(&mut buf) {
            Ok(0) => {
                self.set_input_interest(ops, false);
                self.eof = true;
            }
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                if !self.flush_pending() {
                    self.set_input_interest(ops, false);
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::Interrupted
                    || e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.set_input_interest(ops, false);
                self.eof = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_writer_and_input_reaches_guest() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), drained, Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");

        // Enable the receive-data interrupt, then queue input.
        dev.write(1, &[0x01]);
        assert_eq!(dev.enqueue(b"ab"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'a');
    }

    #[test]
    fn fifo_bounds_enqueue() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, drained, Box::new(std::io::sink()));
        let big = vec![b'x'; 1000];
        let n = dev.enqueue(&big);
        assert!(n > 0 && n < 1000);
        assert_eq!(dev.enqueue(&big), 0);
    }
}
