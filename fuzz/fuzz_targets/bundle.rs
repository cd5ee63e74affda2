//! Fuzz target: the bundle decoder must return a typed error on any input, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = xstore_format::decode::bundle(data);
});
