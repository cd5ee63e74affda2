//! # xstore-browse
//!
//! Read-only views of a repository for people: [`fsview`] lays snapshots out as
//! `/<tier>.<n>/<host>/…` and `/hosts/<host>/<time>/…` (with a byte cache), [`mount`] serves
//! that view over FUSE and [`nfs`] over NFSv3, one export per account open only to its
//! hosts' addresses. Nothing here writes to the repository; a view keeps reading snapshots
//! that gc retires during the grace period (ARCHITECTURE.md, invariants).

#![warn(missing_docs)]

pub mod access;
mod cache;
pub mod fsview;
#[cfg(feature = "fuse")]
pub mod mount;
#[cfg(feature = "nfs")]
pub mod nfs;
