//! Fuzz target: the pack decoder must return a typed error on any input, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = xstore_format::decode::pack(data);
    if data.len() >= 8 {
        let offset = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8])) % (data.len() as u64 + 64);
        let _ = xstore_format::decode::blob_header(&data[8..], offset);
    }
});
