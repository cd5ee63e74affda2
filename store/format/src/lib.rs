//! # xstore-format
//!
//! The bytes of xstore on disk and on the wire, and nothing else: no I/O besides the
//! `Read`/`Write` the protocol streams are given, no RocksDB. Every decoder here takes
//! hostile input and returns a typed [`DecodeError`]; none panics (the crate denies
//! indexing, `unwrap`, `expect` and `panic`). The byte layout is specified in `FORMAT.md` at
//! the repository root; this crate is its executable form, and the fuzz targets link only it.
//!
//! | module | bytes |
//! |---|---|
//! | [`bundle`] | bundles: small data blobs compressed together |
//! | [`bytes`] | little-endian and varint readers and writers, hex |
//! | [`codec`] | the bincode configuration of index values |
//! | [`config`] | the repository's `config` file |
//! | [`host`] | host names |
//! | [`meta`] | metadata of a filesystem entry |
//! | [`tree`] | tree and chunk-list blobs |
//! | [`pack`] | pack files: blob headers, trailer, compression |
//! | [`encryption`] | blob ids and sealing: plain or keyed and encrypted |
//! | [`snapshot`] | snapshot records |
//! | [`records`] | index values (blob locations, pack and host records) |
//! | [`protocol`] | the agent protocol: frames, transports, messages, digests |
//! | [`decode`] | one entry point per decoder, for fuzzing and tools |

#![warn(missing_docs)]
// Decoders take hostile bytes: no indexing, unwrap, expect or panic outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod bundle;
pub mod bytes;
pub mod codec;
pub mod config;
pub mod decode;
pub mod encryption;
mod error;
pub mod host;
pub mod meta;
pub mod pack;
pub mod protocol;
pub mod records;
pub mod snapshot;
pub mod tree;

pub use error::DecodeError;
pub use host::HostName;
