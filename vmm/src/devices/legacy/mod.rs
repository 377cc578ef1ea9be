//! The legacy PC devices a Linux guest expects: the 16550 UART on COM1 and
//! the i8042 controller, whose only job here is the reset line.

pub mod i8042;
pub mod persist;
pub mod serial;
pub mod trigger;
