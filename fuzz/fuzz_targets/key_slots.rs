//! Fuzz target: the key-slot file, key file and recovery text decoders must return a typed
//! error on any input, never panic (a slot file comes from disk or a bucket).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = xstore_keys::KeySlots::decode(data);
    let _ = xstore_keys::KeyFileKey::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = xstore_keys::MasterKey::from_recovery_text(text);
    }
});
