//! Fuzz target: the tree decoder must return a typed error on any input, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = xstore_format::decode::tree(data) {
        // Whatever decodes must re-encode to the same bytes (the encoding is canonical).
        assert_eq!(tree.encode(), data);
    }
});
