//! Fuzz target: the server's reader of the `zstd-segments` transport (plain frames between
//! pieces of one zstd stream) with the agent-message decoder on top. A hostile client must
//! get a typed error, never a panic or an allocation beyond the frame limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = xstore_format::decode::segmented_agent_stream(data);
});
