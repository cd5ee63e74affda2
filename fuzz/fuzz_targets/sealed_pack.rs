//! Fuzz target: the decoder of an encrypted repository's packs (FORMAT.md §Encryption) must
//! return a typed error on any input, never panic. Fixed keys, and seeds sealed with them
//! (`fuzz/corpus/sealed_pack`), so that mutations keep reaching the parsers behind the seals.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use xstore_format::encryption::{Encryption, RepositoryKeys};

fuzz_target!(|data: &[u8]| {
    let keys = Encryption::Encrypted(Arc::new(RepositoryKeys::new(&[1; 32], &[2; 32], &[3; 32])));
    let whole = xstore_format::decode::pack_with(&keys, data);
    let whole_trailer = xstore_format::pack::read_trailer(&keys, data);
    for cut in [0, data.len() / 2, data.len().saturating_sub(200), data.len()] {
        let header = data.get(..16).unwrap_or(data);
        let tail = data.get(cut..).unwrap_or_default();
        let split = xstore_format::pack::read_trailer_from_tail(&keys, header, tail, cut as u64);
        if let (Ok(a), Ok(b)) = (&whole_trailer, &split) {
            assert_eq!(a, b, "tail from {cut}");
        }
    }
    let _ = whole;
    // Every blob the trailer lists reads the same from the pack and opened in a copy of
    // its record (restore's path), or fails the same way.
    if let Ok(entries) = &whole_trailer {
        for want in entries.iter().take(64) {
            let by_slice = xstore_format::pack::read_blob(&keys, data, want);
            let mut record = data.get(want.offset as usize..).unwrap_or_default().to_vec();
            let in_place = xstore_format::pack::read_record_in_place(&keys, &mut record, want);
            assert_eq!(by_slice.is_ok(), in_place.is_ok());
            if let (Ok(a), Ok(b)) = (by_slice, in_place) {
                assert_eq!(a, b);
            }
        }
    }
    let _ = xstore_format::pack::scan_blobs(&keys, data);
    if data.len() >= 8 {
        let offset =
            u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8])) % (data.len() as u64 + 64);
        let _ = xstore_format::decode::blob_header(&keys, &data[8..], offset);
    }
});
