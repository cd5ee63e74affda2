//! Fuzz target: the tree decoder must return a typed error on any input, never panic; the
//! edge-only walk must accept and refuse exactly what the decoder does, with the same ids.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut ids = Vec::new();
    let walked = xstore_format::tree::for_each_tree_child(data, |id| ids.push(id));
    match xstore_format::decode::tree(data) {
        Ok(tree) => {
            // Whatever decodes must re-encode to the same bytes (the encoding is canonical).
            assert_eq!(tree.encode(), data);
            assert!(walked.is_ok());
            assert_eq!(xstore_format::tree::distinct(ids), tree.children());
        }
        Err(e) => assert_eq!(walked.map_err(|w| w.to_string()), Err(e.to_string())),
    }
});
