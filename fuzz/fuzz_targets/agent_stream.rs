//! Fuzz target: the server's decoder of what an agent sends. A hostile client must get a
//! typed error, never a panic; whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xstore_format::protocol::{read_frame, AgentMsg};

fuzz_target!(|data: &[u8]| {
    let _ = xstore_format::decode::agent_stream(data);
    let mut rest = data;
    while let Ok(Some(body)) = read_frame(&mut rest) {
        if let Ok(msg) = AgentMsg::decode(&body) {
            assert_eq!(msg.encode(), body);
        }
    }
});
