//! Fuzz target: the pack decoder must return a typed error on any input, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = xstore_format::decode::pack(data);
    // The trailer read from the header and a tail agrees with the whole-pack read whenever
    // the tail reaches back to the trailer (and is a typed error otherwise).
    let plain = xstore_format::encryption::Encryption::Plain;
    let whole_trailer = xstore_format::pack::read_trailer(&plain, data);
    for cut in [0, data.len() / 2, data.len().saturating_sub(200), data.len()] {
        let header = data.get(..16).unwrap_or(data);
        let tail = data.get(cut..).unwrap_or_default();
        let split = xstore_format::pack::read_trailer_from_tail(&plain, header, tail, cut as u64);
        if let (Ok(a), Ok(b)) = (&whole_trailer, &split) {
            assert_eq!(a, b, "tail from {cut}");
        }
        if split.is_ok() {
            assert!(whole_trailer.is_ok(), "tail from {cut} decoded what the whole pack did not");
        }
    }
    let _ = whole;
    if data.len() >= 8 {
        let offset = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8])) % (data.len() as u64 + 64);
        let _ = xstore_format::decode::blob_header(&plain, &data[8..], offset);
    }
});
