//! A way into the receive path for fuzz/: the device only runs it on frames
//! read from a TAP, and a fuzz target has none, yet the rx buffers it fills
//! are as guest-controlled as the tx chains.

use super::device::{Net, F_MRG_RXBUF, RXQ};
use super::rx::{Delivery, RxChains};

impl Net {
    /// Delivers `frame` (virtio-net header first) into the guest's rx
    /// buffers as if the TAP had produced it. `None` while inactive;
    /// otherwise whether the frame reached the used ring.
    pub fn fuzz_receive(&mut self, frame: &mut [u8]) -> Option<bool> {
        let mem = self.core.mem.as_ref()?;
        let mergeable = self.core.acked_features & F_MRG_RXBUF != 0;
        let delivery = RxChains::default().deliver(
            &mut self.core.queues[RXQ],
            mem,
            frame,
            mergeable,
            &mut |_, _| {},
        );
        Some(matches!(delivery, Ok(Delivery::Delivered { .. })))
    }
}
