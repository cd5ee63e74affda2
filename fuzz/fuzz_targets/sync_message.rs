//! Fuzz target: the sync protocol's request and reply decoders must return a typed error on
//! any input, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = xstore_format::decode::sync_message(data);
});
