//! virtio-vsock tx and rx chains from a hostile guest (see
//! `bulkhead_fuzz::virtq`): packets the guest sends through the real
//! device and muxer, with a host listening on port 1024, and rx buffers the
//! device fills with replies and host data.

#![no_main]

use bulkhead_fuzz::virtq::{start, Input};
use bulkhead_fuzz::vsock::{accept_all, uds_path};
use bulkhead_vmm::devices::virtio::vsock::{Vsock, DEFAULT_GUEST_CID, VSOCK_QUEUE_SIZE};
use libfuzzer_sys::fuzz_target;

const RXQ: u32 = 0;
const TXQ: u32 = 1;
const EVQ: u32 = 2;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    // Connections a crashed-out earlier input left in the backlog.
    drop(accept_all(b""));
    let vsock = Vsock::new(DEFAULT_GUEST_CID, uds_path()).unwrap();
    let Some(mut driver) = start(&input, vsock, VSOCK_QUEUE_SIZE) else {
        return;
    };
    driver.kick(TXQ);
    let _streams = accept_all(b"host data");
    driver.run();
    driver.kick(RXQ);
    driver.kick(EVQ);
});
