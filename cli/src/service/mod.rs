//! The Docker-like commands on containers that `bulkhead run -d` started:
//! `ps`, `logs`, `stop`, `rm`, `inspect` (with `exec` and `kill` shared
//! with the runc personality in `oci`). Same lifecycle, same state root.

mod inspect;
mod logs;
mod ps;
mod rm;
mod stop;

pub use inspect::inspect;
pub use logs::{logs, LogsArgs};
pub use ps::{ps, PsArgs};
pub use rm::{rm, RmArgs};
pub use stop::{stop, StopArgs};
