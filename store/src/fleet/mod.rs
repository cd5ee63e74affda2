//! Many hosts: the inventory (hosts, accounts, allocations) and pulls over SSH, with the
//! record each pull leaves for monitoring, and the migration of an rsnapshot service.

pub(crate) mod inventory;
pub(crate) mod pull;
pub(crate) mod rsnapshot;
