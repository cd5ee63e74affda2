//! Pack files on disk: the writer that seals them, the journal of packs not yet committed or
//! retired, and packs of the target size written from many threads. The byte layout is `xstore_format::pack`.

pub(crate) mod journal;
pub(crate) mod rolling;
mod writer;

pub(crate) use writer::{NewBlob, PackWriter, SealedPack};
