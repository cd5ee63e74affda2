//! Pack files on disk: the writer that seals them, the journal of packs not yet committed or
//! retired, and read-only maps of sealed packs. The byte layout is `xstore_format::pack`.

pub(crate) mod journal;
pub(crate) mod mmap;
pub(crate) mod rolling;
mod writer;

pub(crate) use writer::{PackWriter, SealedPack};
pub(crate) use xstore_format::pack::*;
