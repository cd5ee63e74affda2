//! The operations over one repository, each a set of `impl Repository` methods with its
//! options and report types: what the CLI's subcommands call.

pub(crate) mod attach;
pub(crate) mod backup;
pub(crate) mod bundling;
pub(crate) mod check;
pub(crate) mod compact;
pub(crate) mod diff;
pub(crate) mod dump;
pub(crate) mod find;
pub(crate) mod gc;
pub(crate) mod globs;
pub(crate) mod listing;
pub(crate) mod repair;
pub(crate) mod restore;
pub(crate) mod retention;
pub(crate) mod runs;
pub(crate) mod safe_fs;
pub(crate) mod serve;
pub(crate) mod shared_ingest;
pub(crate) mod sync;
pub(crate) mod usage;
pub(crate) mod verify;
