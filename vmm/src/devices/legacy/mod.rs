//! The legacy PC devices a Linux guest expects: the 16550 UART and the
//! i8042 controller's reset line.
