//! Tests of the net device: the descriptor logic against guest memory,
//! the event loop, and frames through a real TAP to a packet socket, in a
//! network namespace of the test's own.

mod chains;
pub(crate) mod host;
mod persist;
mod rig;
mod tap;
mod tx;
