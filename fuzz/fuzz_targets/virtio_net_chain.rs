//! virtio-net tx chains and rx buffers from a hostile guest (see
//! `bulkhead_fuzz::virtq`), on a device with no TAP: tx frames are parsed
//! and dropped, rx frames are injected through the fuzzing hook.

#![no_main]

use bulkhead_fuzz::virtq::{start, Input};
use bulkhead_vmm::devices::virtio::net::{Net, MAX_FRAME_LEN, NET_QUEUE_SIZE};
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [0x02, 0xb4, 0, 0, 0, 1];
const RXQ: u32 = 0;
const TXQ: u32 = 1;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let net = Net::new(None, MAC).unwrap();
    let Some(mut driver) = start(&input, net, NET_QUEUE_SIZE) else {
        return;
    };
    driver.kick(TXQ);
    driver.kick(RXQ);
    // Frames the size of the last two bytes (a virtio-net header and up to a
    // maximal frame), twice: the second finds the ring as the first left it.
    let len = match data {
        [.., a, b] => usize::from(u16::from_le_bytes([*a, *b])),
        _ => 0,
    };
    let mut frame = vec![0xa5; (12 + len).min(MAX_FRAME_LEN)];
    for _ in 0..2 {
        let _ = driver.dev.lock().unwrap().fuzz_receive(&mut frame);
    }
});
