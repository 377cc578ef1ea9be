//! Frames from the host as the agent parses them (`HostMessage`): a
//! compromised or buggy host must not crash the guest's PID 1. A decoded
//! container spec is also validated, as the agent does before using it.

#![no_main]

use bulkhead_fuzz::frames::decode_both;
use bulkhead_protocol::HostMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decode_both::<HostMessage>(data, |msg| {
        if let HostMessage::CreateContainer { spec } = msg {
            let _ = spec.validate();
        }
    });
});
