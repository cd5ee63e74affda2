//! Many hosts: the inventory (hosts, accounts, allocations) and pulls over SSH, with the
//! record each pull leaves for monitoring.

pub(crate) mod inventory;
pub(crate) mod pull;
