//! Getting the guest kernel going: loading the ELF and initrd, building the
//! command line, and adapting both to the host.

pub mod cmdline;
pub mod loader;
pub mod pvm;
