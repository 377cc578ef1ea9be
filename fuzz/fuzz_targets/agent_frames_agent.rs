//! Frames from the agent as the host parses them (`AgentMessage`): the
//! guest is untrusted, so nothing it sends may crash the host.

#![no_main]

use bulkhead_fuzz::frames::decode_both;
use bulkhead_protocol::AgentMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decode_both::<AgentMessage>(data, |msg| {
        if let AgentMessage::Exit { status, .. } = msg {
            let _ = status.code();
        }
    });
});
